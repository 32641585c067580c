"""Holder bias supply (``BIAS:``): a positioner in volts whose move ends when the ramp has settled."""

from __future__ import annotations

import math
import numbers

from ophyd import Component as Cpt
from ophyd import Device

from temsims.devices.common import Readback, ValidatedSignal, chain, is_state, wait_until

#: Extra seconds on top of |dV| / RAMP_RATE for a ramp's put completion.
RAMP_SLACK_S = 30.0
#: The output is at the target when within this (V).
SETTLED_TOLERANCE_V = 1.0


class BiasSupply(Device):
    """Bias supply on the specimen holder (+/-4500 V).

    ``set(volts)`` puts the setpoint with completion: the status finishes when the
    output has ramped to it and reads it back (``readback`` hinted, V). A non-zero
    target with the output off is refused (``ValueError``): the supply would only
    store it and stay at 0 V. ``enable_output()``/``disable_output()`` switch the
    output; enabling is refused here unless the supply's interlock permits and no
    arc fault is latched (the IOC would refuse, and caproto's client would not say).
    """

    setpoint = Cpt(ValidatedSignal, "VOLTAGE", kind="normal", doc="Setpoint (V)")
    readback = Cpt(Readback, "VOLTAGE_RBV", kind="hinted", doc="Output voltage (V)")
    ramp_rate = Cpt(ValidatedSignal, "RAMP_RATE", kind="config", doc="Ramp rate (V/s)")
    enable = Cpt(ValidatedSignal, "ENABLE_RBV", write_pv="ENABLE", string=True,
                 auto_monitor=True, kind="normal", doc="Output Off/On")
    ramping = Cpt(Readback, "RAMPING", string=True, kind="omitted")
    status = Cpt(Readback, "STATUS", string=True, kind="omitted")
    fault = Cpt(ValidatedSignal, "FAULT", string=True, auto_monitor=True, kind="omitted")
    reset = Cpt(ValidatedSignal, "RESET", string=True, kind="omitted")
    interlock = Cpt(Readback, "INTERLOCK_RBV", string=True, kind="omitted")
    interlock_reason = Cpt(Readback, "INTERLOCK_REASON", string=True, kind="omitted")

    @property
    def position(self) -> float:
        return float(self.readback.get())

    @property
    def egu(self) -> str:
        return "V"

    @property
    def limits(self) -> tuple[float, float]:
        return self.setpoint.limits

    def output_on(self) -> bool:
        return str(self.enable.get()) == "On"

    def check_value(self, value) -> None:
        """Raise ``ValueError`` for a target the supply would refuse or never reach."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{self.name}: voltage must be a finite number, got {value!r}")
        self.setpoint.check_value(value)
        if abs(value) > 0 and not self.output_on():
            raise ValueError(f"{self.name}: output is off; {value} V would only be stored "
                             "(enable the output first: enable_output())")

    def _ramp_timeout(self, value: float) -> float:
        rate = max(float(self.ramp_rate.get()), 1e-3)
        return abs(value - self.position) / rate + RAMP_SLACK_S

    def set(self, value, *, timeout: float | None = None):
        """Ramp to ``value`` V; the status finishes when the output has settled there."""
        self.check_value(value)
        value = float(value)
        put_timeout = self._ramp_timeout(value) if timeout is None else timeout

        def ramp():
            return self.setpoint.set(value, timeout=put_timeout)

        def settled():
            # The put completes also when the output was switched off (a trip):
            # confirm the readback instead of trusting the completion.
            def at_target(v):
                return abs(float(v) - value) <= SETTLED_TOLERANCE_V
            st = wait_until(self.readback, at_target, timeout=3.0,
                            what=f"{self.name} output at {value} V")
            return st

        def tripped_check():
            if value != 0 and not self.output_on():
                raise RuntimeError(f"{self.name}: output went off during the ramp "
                                   f"({self.status.get()})")

        return chain(self, [ramp, settled, tripped_check])

    def enable_output(self):
        """Switch the output on (status finishes when the output has settled)."""
        if is_state(self.fault.get(), "Arc", ("OK", "Arc")):
            raise ValueError(f"{self.name}: arc fault latched; reset_fault() first")
        if str(self.interlock.get()) != "Permit":
            raise ValueError(f"{self.name}: output enable refused, not in SIMS geometry "
                             f"({self.interlock_reason.get()})")
        return self._switch("On", self._ramp_timeout(float(self.setpoint.get())))

    def disable_output(self):
        """Switch the output off (always accepted); finishes when it has settled."""
        return self._switch("Off", self._ramp_timeout(0.0))

    def _switch(self, state: str, timeout: float):
        # Put completion and the ENABLE_RBV monitor travel on different client threads:
        # finish only once the readback (which later checks use) shows the new state.
        def put():
            return self.enable.set(state, timeout=timeout)

        def readback():
            return wait_until(self.enable, lambda v: is_state(v, state, ("Off", "On")),
                              timeout=3.0, what=f"{self.name} output {state}")

        return chain(self, [put, readback])

    def reset_fault(self):
        return self.reset.set("Reset")

    def stop(self, *, success: bool = False) -> None:
        """Hold the output where it is now (setpoint := readback)."""
        if self.output_on():
            self.setpoint.put(round(self.position, 1), use_complete=False)
