"""Holder bias supply IOC (``BIAS:``): +/-4.5 kV on the sample, the first extraction electrode.

The supply ramps its output on the instrument's clock at ``RAMP_RATE`` towards the setpoint while
enabled and towards 0 V while disabled; ``VOLTAGE_RBV`` is updated at 20 Hz during a
ramp (in wall time) and lands on the target ``|dV| / RAMP_RATE`` nominal seconds
after the ramp began (:func:`temsims.ioc.physics.actuators.slew`). The output enable and voltage are the world's ``bias.enable``
and ``bias.voltage_v``.

Interlock (enforced here, whatever a client does; ``docs/interlocks.md``): the output
can only be enabled in SIMS geometry, i.e. the holder alpha tilt (``STAGE:A.RBV``)
within 1 deg of -68 deg and the TEM objective lens off (``TEM:OBJ_RBV`` = Off), both
read from the instrument's world; a part that is down counts as "not in SIMS
geometry" (fail safe). Losing the geometry while enabled *trips* the supply: the output is
switched off and discharged to 0 V at once (not ramped: the holder may be tilting
towards the objective pole piece), ``ENABLE_RBV`` goes Off with a STATE/MAJOR alarm
and ``STATUS`` says why. The trip is not latched: ENABLE On works again once the
geometry is back. An arc (``FAULT`` = Arc) trips the same way and *is* latched: the
supply refuses to enable until ``RESET``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from caproto import AlarmSeverity, AlarmStatus, ChannelType, SkipWrite

from temsims.ioc.common import (
    InstrumentIOC,
    SimsGeometry,
    clear_alarm,
    enum_value,
    readback_pv,
    require_range,
    serve_part,
    setpoint_pv,
    status_text,
    write_if_changed,
)
from temsims.ioc.physics.actuators import slew
from temsims.ioc.world import WorldLink

logger = logging.getLogger(__name__)

#: Output range of the supply (V); puts beyond are refused.
VOLTAGE_LIMIT_V = 4500.0
#: Accepted ramp rates (V/s) and the default.
RAMP_RATE_RANGE = (1.0, 10000.0)
DEFAULT_RAMP_RATE = 1000.0


class BiasIOC(InstrumentIOC):
    """Holder bias supply: setpoint, real-time ramp, output enable, arc fault, interlock.

    PVs (prefix ``<instrument>BIAS:``; units in EGU, limits in DRVL/DRVH)
    ------------------------------------------------------------------
    VOLTAGE (float, V, -4500..4500)
        Setpoint; beyond the range or NaN is refused. While enabled the output ramps
        to it, and a put with completion returns when the ramp has settled (or the
        output was switched off); while disabled it is stored and returns at once.
    VOLTAGE_RBV (float, V, read-only)
        Output voltage: ramps to VOLTAGE while enabled, to 0 while disabled; 0 at
        once on a trip. 20 Hz updates while ramping.
    RAMP_RATE (float, V/s, 1..10000, default 1000)
        Ramp rate; a change applies to a ramp in progress.
    ENABLE (enum: Off, On)
        Output enable. On is refused outside SIMS geometry, with a peer link down or
        with a fault latched (put error, STATUS, WRITE/MAJOR alarm on ENABLE and
        ENABLE_RBV). A put with completion returns when the output has settled.
    ENABLE_RBV (enum: Off, On, read-only)
        Output state; goes Off by itself on a trip (STATE/MAJOR alarm).
    RAMPING (enum: Idle, Ramping, read-only)
        Whether the output is moving.
    STATUS (string, read-only)
        "OK", the last refusal ("Refused: ...") or trip ("Tripped: ...").
    FAULT (enum: OK, Arc)
        Put Arc to simulate an arc: the supply trips and the fault stays latched
        (FAULT reads Arc, STATE/MAJOR alarm) until RESET. Putting OK while latched
        is refused.
    RESET (enum: Idle, Reset)
        Put Reset to clear a latched fault (the output stays off; enable again).
        Reads back Idle.
    INTERLOCK_RBV (enum: Blocked, Permit, read-only)
        Whether SIMS geometry permits the output now (10 Hz and on peer updates).
    INTERLOCK_REASON (string, read-only)
        "OK", or why the geometry blocks the output now (as the column's).
    UPTIME (float, s, read-only)
        Seconds since the IOC started.
    """

    part = "bias"
    geometry = SimsGeometry()
    #: Wall-clock period of the output updates while ramping (s).
    update_period_s = 0.05

    voltage = setpoint_pv("VOLTAGE", 0.0, units="V", precision=1,
                          lower_ctrl_limit=-VOLTAGE_LIMIT_V, upper_ctrl_limit=VOLTAGE_LIMIT_V,
                          doc="Bias setpoint (V)")
    voltage_rbv = readback_pv("VOLTAGE_RBV", 0.0, units="V", precision=1,
                              doc="Bias output (V)")
    ramp_rate = setpoint_pv("RAMP_RATE", DEFAULT_RAMP_RATE, units="V/s", precision=1,
                            lower_ctrl_limit=RAMP_RATE_RANGE[0],
                            upper_ctrl_limit=RAMP_RATE_RANGE[1], doc="Ramp rate (V/s)")
    enable = setpoint_pv("ENABLE", "Off", dtype=ChannelType.ENUM, enum_strings=("Off", "On"),
                         alarm_group="enable", doc="Output enable")
    enable_rbv = readback_pv("ENABLE_RBV", "Off", dtype=ChannelType.ENUM,
                             enum_strings=("Off", "On"), alarm_group="enable",
                             doc="Output state")
    ramping = readback_pv("RAMPING", "Idle", dtype=ChannelType.ENUM,
                          enum_strings=("Idle", "Ramping"), doc="Output is ramping")
    status = readback_pv("STATUS", "OK", dtype=ChannelType.STRING,
                         doc="OK, last refusal or trip reason")
    fault = setpoint_pv("FAULT", "OK", dtype=ChannelType.ENUM, enum_strings=("OK", "Arc"),
                        doc="Put Arc to trip the supply (latched until RESET)")
    reset = setpoint_pv("RESET", "Idle", dtype=ChannelType.ENUM,
                        enum_strings=("Idle", "Reset"), doc="Put Reset to clear a fault")
    interlock_rbv = readback_pv("INTERLOCK_RBV", "Blocked", dtype=ChannelType.ENUM,
                                enum_strings=("Blocked", "Permit"),
                                doc="SIMS geometry permits the output")
    interlock_reason = readback_pv("INTERLOCK_REASON", "starting", dtype=ChannelType.STRING,
                                   doc="Why SIMS geometry blocks the output now, or OK")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._alpha_key, self._objective_key = self.geometry.keys()
        self.world_link = WorldLink(self.world, self.geometry.keys(),
                                    on_update=self._peer_update)
        self._target_v = 0.0
        self._ramp_task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._commanded_at = 0.0  # nominal time of the last new target
        self._settled = asyncio.Event()
        self._settled.set()
        self._fault_latched = False

    async def startup_hook(self, async_lib: Any) -> None:
        """Publish the output to the world, follow the stage tilt and the objective lens."""
        self.mirror("bias.enable", self.enable_rbv)
        self.mirror("bias.voltage_v", self.voltage_rbv)
        self.world_link.start()
        self._ramp_task = asyncio.get_running_loop().create_task(self._ramp_forever())

    # ---- interlock -------------------------------------------------------------------
    def geometry_blocker(self) -> str | None:
        """Why the output may not be on now, or None."""
        return self.geometry.blocker(
            self.world.get(self._alpha_key), self.world.get(self._objective_key)
        )

    def _enable_blocker(self) -> str | None:
        """Why the output may not be switched on now, or None."""
        if self._fault_latched:
            return "fault latched, RESET first"
        return self.geometry_blocker()

    async def _check_geometry(self) -> None:
        reason = self.geometry_blocker()
        await write_if_changed(self.interlock_rbv, "Blocked" if reason else "Permit")
        await write_if_changed(self.interlock_reason, reason or "OK")
        if reason is not None and self.enable_rbv.value == "On":
            logger.warning("bias trip: %s", reason)
            await self._trip(status_text("Tripped", reason))

    async def _peer_update(self, name: str, value: Any) -> None:
        await self._check_geometry()

    @interlock_rbv.scan(period=0.1)
    async def interlock_rbv(self, instance, async_lib):
        # World updates act at once; this also re-checks after anything missed.
        await self._check_geometry()

    async def _trip(self, message: str) -> None:
        """Switch the output off and discharge it to 0 V at once."""
        self._target_v = 0.0
        await self.voltage_rbv.write(0.0)
        await write_if_changed(self.ramping, "Idle")
        await self.enable.write("Off", verify_value=False)
        await self.enable_rbv.write("Off", verify_value=False)
        await self.enable_rbv.alarm.write(status=AlarmStatus.STATE,
                                          severity=AlarmSeverity.MAJOR_ALARM)
        await self.status.write(message, verify_value=False)
        self._settled.set()

    # ---- ramp ------------------------------------------------------------------------
    def _retarget(self, target_v: float, commanded_at: float | None = None) -> None:
        """Send the output towards ``target_v`` at RAMP_RATE (wakes the ramp task),
        from ``commanded_at`` (nominal; default now: the setpoint put's timestamp)."""
        self._target_v = target_v
        self._commanded_at = self.clock.now() if commanded_at is None else commanded_at
        if self.voltage_rbv.value != target_v:
            self._settled.clear()
        self._wake.set()

    async def _ramp_forever(self) -> None:
        """The one task that moves VOLTAGE_RBV; sleeps until a new target wakes it.

        Each step covers the time actually elapsed, so a ramp's duration does not
        depend on how punctual the event loop is; the last step is timed to land on
        the target. The target may change (new setpoint, disable, trip) at any step.
        """
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.voltage_rbv.value != self._target_v:
                await write_if_changed(self.ramping, "Ramping")
                clock = self.clock
                # The output starts moving when commanded, not when this task wakes
                # (late by the loop's latency, times the time scale).
                last = min(self._commanded_at, clock.now())
                while (diff := self._target_v - self.voltage_rbv.value) != 0.0:
                    await clock.sleep(min(self.update_period_s * clock.scale,
                                          abs(diff) / float(self.ramp_rate.value)))
                    now = clock.now()
                    rate = float(self.ramp_rate.value)
                    elapsed = now - last
                    previous, last = last, now
                    out = self.voltage_rbv.value
                    if self._target_v - out == 0.0:
                        break  # a trip put the output on the target meanwhile
                    value, arrived = slew(out, self._target_v, rate, elapsed)
                    if arrived is not None:
                        # Stamped when the output reached the target, |diff| / rate
                        # after the last step, not at this wake-up (late by the event
                        # loop's latency times the time scale); each step at the time
                        # its value was computed for.
                        await self.voltage_rbv.write(value, timestamp=previous + arrived)
                    else:
                        await self.voltage_rbv.write(value, timestamp=now)
            await write_if_changed(self.ramping, "Idle")
            # Re-checked after the await: a new target may have arrived (it set _wake).
            if self.voltage_rbv.value == self._target_v:
                self._settled.set()

    async def _wait_settled(self) -> None:
        await self._settled.wait()

    # ---- putters ---------------------------------------------------------------------
    @voltage.putter
    async def voltage(self, instance, value):
        value = require_range(value, -VOLTAGE_LIMIT_V, VOLTAGE_LIMIT_V, "VOLTAGE (V)")
        # Publish the new setpoint now, not after the ramp (SkipWrite below).
        await instance.write(value, verify_value=False)
        await clear_alarm(instance)
        if self.enable_rbv.value == "On":
            self._retarget(value, instance.timestamp)
            await self._wait_settled()
        return SkipWrite

    @ramp_rate.putter
    async def ramp_rate(self, instance, value):
        value = require_range(value, *RAMP_RATE_RANGE, "RAMP_RATE (V/s)")
        await clear_alarm(instance)
        return value

    @enable.putter
    async def enable(self, instance, value):
        value = enum_value(instance, value)
        if value == "On":
            # Judged and committed with no await in between (as the column's unblank):
            # a trip condition landing later finds ENABLE_RBV On and trips it.
            reason = self._enable_blocker()
            if reason is None:
                await self.enable_rbv.write(value, verify_value=False)
                await instance.write(value, verify_value=False)
                # The writes await: an arc or the geometry may have come meanwhile.
                reason = self._enable_blocker()
                if reason is not None:
                    await self._trip(status_text("Tripped", reason))
            if reason is not None:
                await self.status.write(status_text("Refused", reason), verify_value=False)
                raise PermissionError(f"{instance.pvname}: On refused by the SIMS interlock: {reason}")
            await self.status.write("OK", verify_value=False)
        else:
            await instance.write(value, verify_value=False)
            await self.enable_rbv.write(value, verify_value=False)
        await clear_alarm(instance)
        self._retarget(float(self.voltage.value) if value == "On" else 0.0,
                       instance.timestamp)
        await self._wait_settled()
        return SkipWrite

    @fault.putter
    async def fault(self, instance, value):
        value = enum_value(instance, value)
        if value == "Arc":
            self._fault_latched = True
            await instance.write("Arc", verify_value=False)
            await instance.alarm.write(status=AlarmStatus.STATE,
                                       severity=AlarmSeverity.MAJOR_ALARM)
            logger.warning("bias trip: arc")
            await self._trip("Tripped: arc; RESET to clear")
            return SkipWrite
        if self._fault_latched:
            raise ValueError("FAULT: a latched fault is cleared with RESET")
        await clear_alarm(instance)
        return value

    @reset.putter
    async def reset(self, instance, value):
        value = enum_value(instance, value)
        if value == "Reset" and self._fault_latched:
            self._fault_latched = False
            await self.fault.write("OK", verify_value=False)
            await clear_alarm(self.fault)
            await clear_alarm(self.enable_rbv)
            await self.status.write("OK: fault reset, output off", verify_value=False)
        await clear_alarm(instance)
        return "Idle"


    async def reset_state(self) -> None:
        """Output off at 0 V, setpoint 0 V, default ramp rate, no fault (``SIM:RESET``)."""
        self._fault_latched = False
        await self._trip("OK")
        await self.enable_rbv.write("Off", verify_value=False)
        for pv in (self.fault, self.enable, self.enable_rbv, self.voltage):
            await clear_alarm(pv)
        await self.fault.write("OK", verify_value=False)
        await self.voltage.write(0.0, verify_value=False)
        await self.ramp_rate.write(DEFAULT_RAMP_RATE, verify_value=False)
        await self.status.write("OK", verify_value=False)


def main(argv=None):
    serve_part("bias", argv)


if __name__ == "__main__":
    main()
