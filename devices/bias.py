"""Holder bias supply (``BIAS:``): a positioner in volts whose move ends when the ramp has settled."""

from __future__ import annotations

import math
import numbers

from ophyd import Component as Cpt
from ophyd import Device

from temsims.devices.common import (
    Readback,
    SwitchSignal,
    ValidatedSignal,
    chain,
    is_state,
    wait_until,
)

#: Extra seconds on top of |dV| / RAMP_RATE for a ramp's put completion.
RAMP_SLACK_S = 30.0
#: The output is at the target when within this (V).
SETTLED_TOLERANCE_V = 1.0


#: How long ``enable.set("On")`` waits for the supply's interlock to permit (s): the
#: stage's end of move and the interlock's Permit reach a client on different circuits.
PERMIT_WAIT_S = 2.0


class OutputSwitch(SwitchSignal):
    """The supply's output Off/On. ``set("On")`` raises ``ValueError`` at once with an
    arc fault latched, and puts only once the supply's interlock permits (waiting up
    to ``PERMIT_WAIT_S``; the status fails naming the supply's reason otherwise): the
    IOC would refuse, and caproto's client would not say why. ``set("Off")`` is
    always accepted. The status finishes when ENABLE_RBV shows the new state."""

    def set(self, value, **kwargs):
        supply = self.parent
        states = tuple(self.enum_strs or ("Off", "On"))
        turning_on = is_state(value, "On", states)
        if supply is None:
            return super().set(value, **kwargs)
        if turning_on and is_state(supply.fault.get(), "Arc", ("OK", "Arc")):
            raise ValueError(f"{supply.name}: arc fault latched; reset_fault() first")
        if kwargs.get("timeout") is None:
            target = float(supply.setpoint.get()) if turning_on else 0.0
            kwargs["timeout"] = supply._ramp_timeout(target)
        if not turning_on:
            return super().set(value, **kwargs)

        def permitted():
            return wait_until(
                supply.interlock, lambda v: is_state(v, "Permit", ("Blocked", "Permit")),
                timeout=PERMIT_WAIT_S,
                what=f"{supply.name}: output enable refused, not in SIMS geometry",
                explain=lambda: f"the supply says: {supply.interlock_reason.get()}")

        def switch():
            return SwitchSignal.set(self, value, **kwargs)

        return chain(self, [permitted, switch])


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
    enable = Cpt(OutputSwitch, "ENABLE_RBV", write_pv="ENABLE", kind="normal",
                 doc="Output Off/On (set() checks the interlock; ends at the readback)")
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
        """Switch the output on (``enable.set("On")``: refused unless permitted)."""
        return self.enable.set("On")

    def disable_output(self):
        """Switch the output off (always accepted); finishes when it has settled."""
        return self.enable.set("Off")

    def reset_fault(self):
        return self.reset.set("Reset")

    def stop(self, *, success: bool = False) -> None:
        """Hold the output where it is now (setpoint := readback)."""
        if self.output_on():
            self.setpoint.put(round(self.position, 1), use_complete=False)
