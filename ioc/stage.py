"""Stage IOC: five EPICS motor records (X, Y, Z, alpha and beta tilt) moving in real time.

Served with the other parts by :mod:`temsims.ioc.server` (``temsims ioc all``), or
alone with ``python -m temsims.ioc.stage [--prefix TEMSIMS:]``. Each axis's physical
position (its dial less any redefinition of the dial) is the world's ``stage.<AXIS>``
quantity (decision 0013): with the default calibration (OFF = 0, DIR = Pos) it is the
user readback, and a calibration (SET, OFF, DIR) moves nothing in the world.

Every axis is a caproto ``record='motor'`` pvproperty with the semantics ophyd's
``EpicsMotor`` relies on. The motion and calibration logic lives once, in
:class:`MotorAxis` (one instance per axis); the record fields reach it through
:class:`StageMotorFields` (field putters) and :class:`MotorSetpoint` (the VAL put).

Coordinates, as in the EPICS motor record::

    user = dial * (+1 if DIR == Pos else -1) + OFF

The *dial* is the controller's position register: a SET-mode put to DVAL (or to VAL
with FOFF = Frozen) loads a new value into it without moving the stage. The hard
limits (the limit switches) are fixed on the stage, so in dial coordinates they move
with such a redefinition; soft limits are kept as dial limits DHLM/DLLM (their numbers
unchanged by it) and shown in user coordinates as HLM/LLM.

Motion is a trapezoidal velocity profile (ramp to VELO in ACCL seconds, cruise,
ramp down; :class:`temsims.ioc.physics.actuators.Ramp`), evaluated against the
instrument's simulated clock and published every ``TICK_S`` of wall time (50 Hz) by
one asyncio task per moving axis: a move of distance ``d`` takes ``d / VELO + ACCL``
nominal seconds when ``d >= VELO * ACCL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from caproto import AlarmSeverity, AlarmStatus, SkipWrite
from caproto.server import PvpropertyDouble, pvproperty
from caproto.server.records import MotorFields

from temsims.ioc.common import (
    InstrumentIOC,
    require_finite,
    serve_part,
    write_if_changed,
)
from temsims.ioc.physics.actuators import Ramp
from temsims.ioc.world import Clock

#: Wall-clock period of the readback updates during a move (s): 50 Hz.
TICK_S = 0.02
#: Shortest wait worth a trip through the event loop: epoll rounds timeouts up to
#: 1 ms, so a move with less than this left is published at its end at once.
MIN_WAIT_S = 1e-3

#: Wall time a SET-mode put waits after publishing, before it answers (s); see
#: :meth:`MotorAxis.put_setpoint`.
CALIBRATION_SETTLE_S = 0.025

# MSTA bits (motor record "motor status"), the ones this simulation drives.
MSTA_DIRECTION = 1 << 0
MSTA_DONE = 1 << 1
MSTA_PLUS_LS = 1 << 2
MSTA_MOVING = 1 << 10
MSTA_MINUS_LS = 1 << 13


# --------------------------------------------------------------------------------------
# Axis configuration
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AxisSpec:
    """Static description of one stage axis (all positions in dial coordinates).

    Parameters
    ----------
    pv
        Record name after the stage prefix (``"X"``).
    egu
        Engineering units of positions (``"um"``, ``"deg"``).
    description
        Text for the record's DESC field and the PV's doc.
    hard_limits
        (low, high) positions of the limit switches.
    soft_limits
        Default (DLLM, DHLM).
    velocity
        Default VELO (egu/s).
    max_velocity
        VMAX (egu/s): puts to VELO above it are clamped to it.
    acceleration_s
        Default ACCL (s to reach VELO).
    precision
        PREC (decimal places).
    resolution
        MRES (egu per raw step; RRBV = DRBV / MRES).
    """

    pv: str
    egu: str
    description: str
    hard_limits: tuple[float, float]
    soft_limits: tuple[float, float]
    velocity: float
    max_velocity: float
    acceleration_s: float
    precision: int
    resolution: float


STAGE_AXES: dict[str, AxisSpec] = {
    spec.pv: spec
    for spec in (
        AxisSpec("X", "um", "Stage X", (-1000.0, 1000.0), (-990.0, 990.0),
                 velocity=5.0, max_velocity=200.0, acceleration_s=0.2,
                 precision=4, resolution=1e-4),
        AxisSpec("Y", "um", "Stage Y", (-1000.0, 1000.0), (-990.0, 990.0),
                 velocity=5.0, max_velocity=200.0, acceleration_s=0.2,
                 precision=4, resolution=1e-4),
        AxisSpec("Z", "um", "Stage Z (height)", (-300.0, 300.0), (-290.0, 290.0),
                 velocity=1.0, max_velocity=50.0, acceleration_s=0.2,
                 precision=4, resolution=1e-4),
        AxisSpec("A", "deg", "Alpha tilt", (-70.0, 70.0), (-69.0, 30.0),
                 velocity=5.0, max_velocity=30.0, acceleration_s=0.5,
                 precision=3, resolution=1e-4),
        AxisSpec("B", "deg", "Beta tilt", (-30.0, 30.0), (-25.0, 25.0),
                 velocity=5.0, max_velocity=30.0, acceleration_s=0.5,
                 precision=3, resolution=1e-4),
    )
}


def _scalar(value: Any) -> Any:
    if isinstance(value, list | tuple) and len(value) == 1:
        return value[0]
    return value


def _enum_index(value: Any, strings: tuple[str, ...]) -> int:
    value = _scalar(value)
    if isinstance(value, str):
        return strings.index(value)
    return int(value)


# --------------------------------------------------------------------------------------
# One axis: motion, limits, calibration
# --------------------------------------------------------------------------------------
class MotorAxis:
    """Behaviour behind one motor record: motion, limits and user/dial calibration.

    Parameters
    ----------
    record
        The record's VAL channel (a :class:`MotorSetpoint` with
        :class:`StageMotorFields`).
    spec
        Static description of the axis.

    Notes
    -----
    Internal writes use ``verify_value=False`` so that they bypass the putters
    (which are for clients). A put that is refused raises, which caproto returns to
    the client as a put error; the state is checked before anything is changed.
    """

    def __init__(self, record: MotorSetpoint, spec: AxisSpec, clock: Clock) -> None:
        self.record = record
        self.clock = clock
        self.fields: StageMotorFields = record.field_inst
        self.fields.axis = self
        # pvproperty(record=<class>) reports the class as the record type; CA wants text.
        record.reported_record_type = "motor"
        self.spec = spec
        self.dial = 0.0  # present dial position (the controller's position register)
        # The dial reading minus the physical position: 0 until a SET-mode put
        # redefines the dial (FOFF Frozen, or DVAL). The limit switches are physical.
        self.dial_shift = 0.0
        #: Called with (physical position, nominal time) before RBV goes out when the
        #: physical position changed: the world's stage quantity (a calibration
        #: moves nothing, so the specimen does not move either).
        self.on_position: Callable[[float, float], None] | None = None
        self._published_physical: float | None = None
        self.velocity_now = 0.0  # present signed dial speed
        self.target_dial = 0.0
        self.offset = 0.0
        self.sign = 1  # DIR: +1 Pos, -1 Neg
        self.dial_low, self.dial_high = spec.soft_limits
        self.velo = spec.velocity
        self.vmax = spec.max_velocity
        self.accl = spec.acceleration_s
        self.at_high_switch = False  # dial-side switches
        self.at_low_switch = False
        self._task: asyncio.Task | None = None
        self._retarget = False
        self._stop_requested = False
        self._interrupt = asyncio.Event()  # wakes a move for STOP or a new target
        self._move_velo = self.velo
        self._move_accl = self.accl
        self._position_stamp = 0.0  # nominal time of the last published position
        self._commanded_at = 0.0  # nominal time of the last move from rest

    # ---- conversions ----------------------------------------------------------------
    def user(self, dial: float) -> float:
        return self.sign * dial + self.offset

    def to_dial(self, user: float) -> float:
        return (user - self.offset) * self.sign

    @property
    def moving(self) -> bool:
        return self._task is not None and not self._task.done()

    def user_limits(self) -> tuple[float, float]:
        """(LLM, HLM) from the dial limits, DIR and OFF."""
        a, b = self.user(self.dial_low), self.user(self.dial_high)
        return (a, b) if self.sign > 0 else (b, a)

    def hard_limits(self) -> tuple[float, float]:
        """The limit switches in dial coordinates (they move with a redefined dial)."""
        low, high = self.spec.hard_limits
        return low + self.dial_shift, high + self.dial_shift

    def soft_limits_active(self) -> bool:
        # Motor record: DHLM == DLLM == 0 disables the soft limits.
        return not (self.dial_low == 0.0 and self.dial_high == 0.0)

    # ---- start-up ----------------------------------------------------------------------
    async def initialize(self) -> None:
        """Write the defaults, units and precision into the fields (server start)."""
        f, spec = self.fields, self.spec
        position_md = dict(units=spec.egu, precision=spec.precision)
        speed_md = dict(units=f"{spec.egu}/s", precision=spec.precision)
        for channel in (self.record, f.user_readback_value, f.dial_readback_value,
                        f.dial_desired_value, f.user_offset, f.user_high_limit,
                        f.user_low_limit, f.dial_high_limit, f.dial_low_limit,
                        f.tweak_step_size, f.relative_value, f.difference_dval_drbv,
                        f.motor_step_size):
            await channel.write_metadata(**position_md)
        for channel in (f.velocity, f.max_velocity, f.base_velocity, f.home_velocity):
            await channel.write_metadata(**speed_md)
        await f.seconds_to_velocity.write_metadata(units="s", precision=3)
        await self._write(f.engineering_units, spec.egu)
        await self._write(f.description, spec.description)
        await self._write(f.velocity, self.velo)
        await self._write(f.max_velocity, self.vmax)
        await self._write(f.home_velocity, self.velo)
        await self._write(f.seconds_to_velocity, self.accl)
        await self._write(f.motor_step_size, spec.resolution)
        await self._write(f.tweak_step_size, 1.0)
        await self._write(f.user_direction, "Pos")
        await self._write(f.set_use_switch, "Use")
        await self._write(f.offset_freeze_switch, "Variable")
        await self._write(f.stop_pause_move_go, "Go")
        await self._write(f.limit_violation, 0)
        await self._write(f.done_moving_to_value, 1)
        await self._write(f.motor_is_moving, 0)
        await self._write(f.stop, 0)
        await self._publish_calibration()
        await self._publish_position(self.dial, 0.0)

    async def reset(self) -> None:
        """At rest at dial 0, with the defaults of a fresh start (``SIM:RESET``)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        spec = self.spec
        self._task = None
        self.dial = self.target_dial = self.velocity_now = 0.0
        self.dial_shift = 0.0
        self.offset, self.sign = 0.0, 1
        self.dial_low, self.dial_high = spec.soft_limits
        self.velo, self.vmax, self.accl = spec.velocity, spec.max_velocity, spec.acceleration_s
        self._retarget = self._stop_requested = False
        await self.initialize()
        await self._publish_calibration()

    # ---- helpers -----------------------------------------------------------------------
    @staticmethod
    async def _write(channel, value, **kwargs) -> None:
        await channel.write(value, verify_value=False, **kwargs)

    async def _publish_calibration(self) -> None:
        """OFF, DIR-dependent limits, VAL and RBV after a calibration change."""
        f = self.fields
        low, high = self.user_limits()
        ctrl_low, ctrl_high = (low, high) if self.soft_limits_active() else (0.0, 0.0)
        # VAL's ctrl limits and VAL itself go out before HLM/LLM, and VAL only when it
        # changes (a motor record does not post VAL for a new limit). ophyd's
        # EpicsMotor re-reads VAL's ctrl limits when it sees HLM/LLM change, but each
        # VAL monitor carries the ctrl limits its client cached earlier: a VAL update
        # that reached it after HLM put the old limits back (1 in ~20 HLM puts).
        await self.record.write_metadata(
            lower_ctrl_limit=ctrl_low, upper_ctrl_limit=ctrl_high,
            lower_disp_limit=ctrl_low, upper_disp_limit=ctrl_high,
        )
        await write_if_changed(self.record, self.user(self.target_dial))
        await write_if_changed(f.dial_desired_value, self.target_dial)
        await self._write(f.user_offset, self.offset)
        # The readbacks go out before the limits: ophyd's EpicsMotor answers an HLM/LLM
        # update with a blocking read of VAL's ctrl limits on its one monitor thread,
        # and an RBV update queued behind two of them reached `position` 1-9 ms after
        # `set_current_position` returned (ophyd's test_calibration reads it at once).
        await self._publish_position(self.dial, self.velocity_now)
        await self._write(f.dial_low_limit, self.dial_low)
        await self._write(f.dial_high_limit, self.dial_high)
        await self._write(f.user_low_limit, low)
        await self._write(f.user_high_limit, high)

    async def _publish_position(self, dial: float, velocity: float,
                                timestamp: float | None = None) -> None:
        """Readbacks, limit switches, MSTA and the readback alarm at ``dial``.

        ``timestamp``: the nominal time the axis was at ``dial`` (default: now).
        """
        f, spec = self.fields, self.spec
        self.dial, self.velocity_now = dial, velocity
        stamp = self.clock.now() if timestamp is None else timestamp
        self._position_stamp = stamp
        low, high = self.hard_limits()
        physical = dial - self.dial_shift
        if self.on_position is not None and physical != self._published_physical:
            # Before RBV's monitor: a client that saw RBV finds the world there too.
            self.on_position(physical, stamp)
            self._published_physical = physical
        self.at_high_switch = dial >= high
        self.at_low_switch = dial <= low
        user_high = self.at_high_switch if self.sign > 0 else self.at_low_switch
        user_low = self.at_low_switch if self.sign > 0 else self.at_high_switch
        await write_if_changed(f.dial_readback_value, dial, timestamp=stamp)
        await write_if_changed(f.raw_readback_value, round(dial / spec.resolution),
                               timestamp=stamp)
        await write_if_changed(f.difference_dval_drbv, self.target_dial - dial,
                               timestamp=stamp)
        await write_if_changed(f.user_high_limit_switch, int(user_high), timestamp=stamp)
        await write_if_changed(f.user_low_limit_switch, int(user_low), timestamp=stamp)
        at_switch = user_high or user_low
        # RBV's alarm is the record's (shared by its read-only fields): ophyd reads it.
        alarm = f.user_readback_value.alarm
        if at_switch:
            if alarm.status != AlarmStatus.HWLIMIT:
                await alarm.write(status=AlarmStatus.HWLIMIT,
                                  severity=AlarmSeverity.MAJOR_ALARM)
        elif alarm.status == AlarmStatus.HWLIMIT:
            await alarm.write(status=AlarmStatus.NO_ALARM, severity=AlarmSeverity.NO_ALARM)
        await write_if_changed(f.user_readback_value, self.user(dial), timestamp=stamp)
        msta = (MSTA_DIRECTION if f.direction_of_travel.value else 0)
        # At rest on the target the controller reports done, before the record's
        # DMOV = 1 (and, like MOVN, never "moving" for a move shorter than MIN_WAIT_S:
        # its one publication is its end). Stopped short of it (STOP, a switch), done
        # once the move's task has ended.
        at_target = velocity == 0.0 and dial == self.target_dial
        msta |= MSTA_MOVING if self.moving and not at_target else MSTA_DONE
        msta |= (MSTA_PLUS_LS if self.at_high_switch else 0)
        msta |= (MSTA_MINUS_LS if self.at_low_switch else 0)
        await write_if_changed(f.motor_status, msta, timestamp=stamp)

    # ---- moves -------------------------------------------------------------------------
    def check_target(self, user: float) -> float:
        """The dial target of a move to ``user``, or ValueError (NaN, soft limits)."""
        user = require_finite(user, f"{self.record.pvname}")
        if self.soft_limits_active():
            low, high = self.user_limits()
            if not low <= user <= high:
                raise ValueError(
                    f"{self.record.pvname}: {user} {self.spec.egu} outside the soft "
                    f"limits [{low}, {high}] (LVIO)"
                )
        spmg = self.fields.stop_pause_move_go.value
        if spmg in ("Stop", "Pause"):
            raise ValueError(f"{self.record.pvname}: SPMG is {spmg}; put Go to move")
        return self.to_dial(user)

    async def move_to(self, user: float) -> float:
        """Validate and start (or retarget) a move to the user position ``user``."""
        f = self.fields
        try:
            dial = self.check_target(user)
        except ValueError:
            await self._write(f.limit_violation, 1)
            raise
        await write_if_changed(f.limit_violation, 0)
        self.target_dial = dial
        await self._write(f.dial_desired_value, dial)
        # TDIR is in user coordinates: it is what ophyd pairs with HLS/LLS.
        await write_if_changed(f.direction_of_travel, int(user > self.user(self.dial)))
        if self.moving:
            self._retarget = True
            self._stop_requested = False  # a new target after STOP: go there
            self._interrupt.set()
        else:
            # DMOV goes to 0 before the put returns; the task sets it back to 1, so
            # every accepted put (to the present position too) gives DMOV 1 -> 0 -> 1.
            # The task is created first: the loop then runs it before it hands DMOV 0
            # and VAL to the clients, and a move shorter than MIN_WAIT_S goes out
            # whole, in one message, as soon as possible (its task waits for DMOV 0).
            self._commanded_at = self.clock.now()
            self._stop_requested = False
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"move-{self.record.pvname}")
            try:
                await self._write(f.done_moving_to_value, 0, timestamp=self._commanded_at)
            except BaseException:
                self._task.cancel()
                self._task = None
                raise
        return user

    async def stop(self) -> None:
        """Decelerate to rest (STOP, SPMG Stop/Pause); VAL becomes the rest position."""
        if self.moving:
            self._stop_requested = True
            self._interrupt.set()

    async def put_stop(self, value: Any) -> None:
        await self.stop()

    async def _run(self) -> None:
        f = self.fields
        while f.done_moving_to_value.value != 0:  # move_to has not written DMOV 0 yet
            await asyncio.sleep(0)
        stopped = False
        # The motion starts when the move was commanded (DMOV -> 0), not when this
        # task first runs (later by the loop's latency, times the time scale).
        start: float | None = self._commanded_at
        try:
            while not self._stop_requested:
                self._retarget = False
                if self.target_dial == self.dial:
                    break
                self._move_velo, self._move_accl = self.velo, self.accl
                ramp = Ramp.trapezoid(self.dial, self.target_dial, self._move_velo,
                                      self._move_accl)
                if ramp.duration >= MIN_WAIT_S:
                    # Like a controller polled between the start and the end of a
                    # sub-millisecond move, MOVN never sees such a move (DMOV does).
                    await write_if_changed(f.motor_is_moving, 1)
                outcome = await self._follow(ramp, interruptible=True, start=start)
                start = None
                if outcome == "interrupted":  # STOP or a new target: come to rest first
                    outcome = await self._follow(
                        Ramp.stop(self.dial, self.velocity_now, self._move_velo,
                                  self._move_accl),
                        interruptible=False, start=self._position_stamp)
                if outcome == "switch":
                    stopped = True
                    break
            stopped = stopped or self._stop_requested
        except Exception:  # never leave DMOV at 0
            stopped = True
            raise
        finally:
            self._stop_requested = False
            # Never stamped before the end of the motion (whose stamp may lead the
            # clock by less than MIN_WAIT_S of wall time, see _follow).
            stamp = max(self.clock.now(), self._position_stamp)
            if stopped:  # motor record: VAL is set to where the motor came to rest
                self.target_dial = self.dial
                await self._write(self.record, self.user(self.dial), timestamp=stamp)
                await self._write(f.dial_desired_value, self.dial, timestamp=stamp)
            self._task = None
            if stopped or self.velocity_now != 0.0 or self.dial != self.target_dial:
                await self._publish_position(self.dial, 0.0, timestamp=stamp)
            # else its last publication was at rest on the target: nothing to change
            await write_if_changed(f.motor_is_moving, 0, timestamp=stamp)
            await self._write(f.done_moving_to_value, 1, timestamp=stamp)

    async def _follow(self, ramp: Ramp, *, interruptible: bool,
                      start: float | None = None) -> str:
        """Publish ``ramp``, begun at ``start`` (nominal; default now), on the simulated
        clock; "done", "interrupted" or "switch"."""
        clock = self.clock
        low, high = self.hard_limits()
        t0 = clock.now() if start is None else min(start, clock.now())
        self._interrupt.clear()
        tick = TICK_S * clock.scale
        while True:
            t = clock.now() - t0
            if clock.wall(ramp.duration - t) < MIN_WAIT_S:  # the loop cannot wait this short
                t = ramp.duration
            x, v = ramp.at(t)
            # Stamped with the time the profile was evaluated at: the end of a move
            # is its nominal end, not the (late, by the loop's latency times the
            # time scale) wake-up that publishes it.
            if not low <= x <= high:  # a limit switch cuts the motion
                await self._publish_position(min(max(x, low), high), 0.0, timestamp=t0 + t)
                return "switch"
            await self._publish_position(x, v, timestamp=t0 + t)
            if t >= ramp.duration:
                return "done"
            if interruptible and (self._retarget or self._stop_requested):
                return "interrupted"
            if interruptible:  # sleep until the next tick, or until STOP / a new target
                await clock.wait(self._interrupt, min(tick, ramp.duration - t))
            else:
                await clock.sleep(min(tick, ramp.duration - t))

    # ---- field puts --------------------------------------------------------------------
    async def put_setpoint(self, value: Any) -> float:
        """VAL: a move (SET = Use) or a calibration (SET = Set).

        A calibration answers the put ``CALIBRATION_SETTLE_S`` after its monitors went
        out. ophyd hands monitor updates to its own thread while a put's reply wakes
        the caller directly, so ``set_current_position`` (this put and SET = Use)
        could return before ``position`` saw the new RBV: measured at load ~10 on 2
        cores, 20 of 80 calls read the old position at once (lag up to 115 ms); with
        10 ms, 0 of 80 spaced calls and 2 of 120 back-to-back ones; so 25 ms. A
        calibration is rare; 25 ms is not noticed.
        """
        value = require_finite(_scalar(value), self.record.pvname)
        if self.fields.set_use_switch.value == "Set":
            await self.calibrate(value)  # VAL written there, ahead of HLM/LLM
            await _clear_put_alarm(self.record)
            await asyncio.sleep(CALIBRATION_SETTLE_S)
            # No second VAL update after HLM/LLM: ophyd's VAL monitor carries the
            # ctrl limits its client cached when it arrived, and one processed after
            # ophyd's re-read of them (on the HLM/LLM change) put the old limits back
            # for good (measured: `limits` stale after 20 of 20 back-to-back
            # set_current_position calls).
            return SkipWrite
        value = await self.move_to(value)
        await _clear_put_alarm(self.record)
        return value

    async def calibrate(self, user: float) -> float:
        """SET mode, a VAL put: make the present position read ``user``, moving nothing.

        FOFF = Variable changes OFF (``OFF = VAL - DIR * DVAL``); FOFF = Frozen keeps
        OFF and redefines the dial instead (``DVAL = (VAL - OFF) * DIR``, the
        controller's position register loaded), as the motor record does.
        """
        self._refuse_while_moving()
        if self.fields.offset_freeze_switch.value == "Frozen":
            await self._redefine_dial(self.to_dial(user))
        else:
            self.offset = user - self.sign * self.dial
            self.target_dial = self.dial
            await self._publish_calibration()
        return user

    def _refuse_while_moving(self) -> None:
        if self.moving:
            raise ValueError(f"{self.record.pvname}: cannot calibrate while moving")

    async def _redefine_dial(self, dial: float) -> None:
        """Load ``dial`` into the position register at rest (the motor record's
        LOAD_POS): the stage stays where it is, its limit switches with it, and the
        dial limits DHLM/DLLM keep their numbers."""
        shift = dial - self.dial
        self.dial_shift += shift
        self.dial = self.target_dial = dial
        await self._publish_calibration()

    async def put_dial_setpoint(self, value: Any) -> float:
        """DVAL: a move (SET = Use) or a redefinition of the dial (SET = Set).

        In SET mode, as the motor record's ``load_pos``: with FOFF = Variable OFF
        changes so that VAL and RBV keep their values; with FOFF = Frozen OFF stays
        and VAL/RBV follow the new dial.
        """
        dial = require_finite(_scalar(value), f"{self.record.pvname}.DVAL")
        if self.fields.set_use_switch.value == "Set":
            self._refuse_while_moving()
            if self.fields.offset_freeze_switch.value != "Frozen":
                self.offset = self.user(self.dial) - self.sign * dial
            await self._redefine_dial(dial)
            return dial
        await self.move_to(self.user(dial))
        await self._write(self.record, self.user(dial))
        return dial

    async def move_relative(self, delta: Any) -> None:
        """RLV: move by ``delta`` from the present setpoint (VAL follows)."""
        delta = require_finite(_scalar(delta), f"{self.record.pvname}.RLV")
        target = self.record.value + delta
        await self.move_to(target)
        await self._write(self.record, target)

    async def tweak(self, value: Any, *, sign: int) -> None:
        """TWF/TWR: move by +-TWV."""
        await self.move_relative(sign * self.fields.tweak_step_size.value)

    async def put_offset(self, value: Any) -> float:
        self.offset = require_finite(_scalar(value), f"{self.record.pvname}.OFF")
        await self._publish_calibration()
        return self.offset

    async def put_direction(self, value: Any) -> None:
        index = _enum_index(value, ("Pos", "Neg"))
        if index not in (0, 1):
            raise ValueError(f"{self.record.pvname}.DIR: {value!r} is not Pos or Neg")
        self.sign = 1 if index == 0 else -1
        # The field must hold the new value before the limits are recomputed.
        await self._write(self.fields.user_direction, ("Pos", "Neg")[index])
        await self._publish_calibration()

    async def put_user_limit(self, value: Any, *, high: bool) -> float:
        name = "HLM" if high else "LLM"
        user = require_finite(_scalar(value), f"{self.record.pvname}.{name}")
        dial = self.to_dial(user)
        # With DIR = Neg the user high limit is the dial low limit.
        if high == (self.sign > 0):
            self.dial_high = dial
        else:
            self.dial_low = dial
        await self._publish_calibration()
        return user

    async def put_dial_limit(self, value: Any, *, high: bool) -> float:
        name = "DHLM" if high else "DLLM"
        dial = require_finite(_scalar(value), f"{self.record.pvname}.{name}")
        if high:
            self.dial_high = dial
        else:
            self.dial_low = dial
        await self._publish_calibration()
        return dial

    async def put_velocity(self, value: Any) -> float:
        velo = require_finite(_scalar(value), f"{self.record.pvname}.VELO")
        if velo <= 0.0:
            raise ValueError(f"{self.record.pvname}.VELO: {velo} must be > 0")
        if self.vmax > 0.0:
            velo = min(velo, self.vmax)  # motor record: VELO is clamped to VMAX
        self.velo = velo
        return velo

    async def put_max_velocity(self, value: Any) -> float:
        vmax = require_finite(_scalar(value), f"{self.record.pvname}.VMAX")
        if vmax < 0.0:
            raise ValueError(f"{self.record.pvname}.VMAX: {vmax} must be >= 0")
        self.vmax = vmax
        if vmax > 0.0 and self.velo > vmax:
            self.velo = vmax
            await self._write(self.fields.velocity, vmax)
        return vmax

    async def put_acceleration(self, value: Any) -> float:
        accl = require_finite(_scalar(value), f"{self.record.pvname}.ACCL")
        if accl < 0.0:
            raise ValueError(f"{self.record.pvname}.ACCL: {accl} must be >= 0")
        self.accl = accl
        return accl

    async def put_spmg(self, value: Any) -> None:
        index = _enum_index(value, ("Stop", "Pause", "Move", "Go"))
        if index in (0, 1):
            await self.stop()

    async def home(self, value: Any) -> None:
        """HOMF/HOMR: go to the home sensor at dial 0 (VAL follows)."""
        await self.move_to(self.user(0.0))
        await self._write(self.record, self.user(0.0))

    async def put_units(self, value: Any) -> None:
        raise ValueError(f"{self.record.pvname}.EGU is fixed to {self.spec.egu!r}")


# --------------------------------------------------------------------------------------
# caproto glue: the VAL channel and the record fields with putters
# --------------------------------------------------------------------------------------
class MotorSetpoint(PvpropertyDouble):
    """VAL of a stage motor record: the axis validates (limits, SET mode) and moves.

    Replaces caproto's ctrl-limit check, which would refuse a calibration (SET) put
    outside the present limits; the ctrl limits still carry LLM/HLM for clients.
    """

    async def verify_value(self, value):
        return await self.field_inst.axis.put_setpoint(value)


async def _clear_put_alarm(channel) -> None:
    """An accepted put ends the WRITE alarm a refused one left on the channel."""
    if channel.alarm.status == AlarmStatus.WRITE:
        await channel.alarm.write(status=AlarmStatus.NO_ALARM,
                                  severity=AlarmSeverity.NO_ALARM)


def _axis_field(prop: pvproperty, method: str, *, result: Any = None, **kwargs) -> pvproperty:
    """A copy of the MotorFields pvproperty ``prop`` whose put calls ``axis.<method>``.

    The putter returns the method's result (the value to store) or ``result`` when
    given (e.g. 0 for the STOP and HOMF command fields). The copy keeps caproto's
    own MotorFields untouched, and its alarm group ("puts") keeps the WRITE alarm of
    a refused put off RBV, whose alarm ophyd reads to judge a move.
    """
    field = copy.copy(prop)
    field.pvspec = field.pvspec._replace(alarm_group="puts")

    async def putter(fields, instance, value):
        returned = await getattr(fields.axis, method)(value, **kwargs)
        await _clear_put_alarm(instance)
        return returned if result is None else result

    putter.__name__ = method
    return field.putter(putter)


class StageMotorFields(MotorFields):
    """Motor-record fields whose puts reach the record's :class:`MotorAxis`."""

    _record_type = "motor"
    axis: MotorAxis

    user_offset = _axis_field(MotorFields.user_offset, "put_offset")
    user_direction = _axis_field(MotorFields.user_direction, "put_direction")
    user_high_limit = _axis_field(MotorFields.user_high_limit, "put_user_limit", high=True)
    user_low_limit = _axis_field(MotorFields.user_low_limit, "put_user_limit", high=False)
    dial_high_limit = _axis_field(MotorFields.dial_high_limit, "put_dial_limit", high=True)
    dial_low_limit = _axis_field(MotorFields.dial_low_limit, "put_dial_limit", high=False)
    dial_desired_value = _axis_field(MotorFields.dial_desired_value, "put_dial_setpoint")
    velocity = _axis_field(MotorFields.velocity, "put_velocity")
    max_velocity = _axis_field(MotorFields.max_velocity, "put_max_velocity")
    seconds_to_velocity = _axis_field(MotorFields.seconds_to_velocity, "put_acceleration")
    # Command fields read 0 again once the record has acted on them.
    stop = _axis_field(MotorFields.stop, "put_stop", result=0)
    stop_pause_move_go = _axis_field(MotorFields.stop_pause_move_go, "put_spmg")
    relative_value = _axis_field(MotorFields.relative_value, "move_relative", result=0.0)
    tweak_motor_forward = _axis_field(MotorFields.tweak_motor_forward, "tweak",
                                      result=0, sign=1)
    tweak_motor_reverse = _axis_field(MotorFields.tweak_motor_reverse, "tweak",
                                      result=0, sign=-1)
    home_forward = _axis_field(MotorFields.home_forward, "home", result=0)
    home_reverse = _axis_field(MotorFields.home_reverse, "home", result=0)
    engineering_units = _axis_field(MotorFields.engineering_units, "put_units")


def motor_property(spec: AxisSpec) -> pvproperty:
    """The pvproperty of one stage motor record (VAL with the record's fields)."""
    low, high = spec.soft_limits
    return pvproperty(
        name=spec.pv, value=0.0, dtype=MotorSetpoint, record=StageMotorFields,
        precision=spec.precision, units=spec.egu,
        lower_ctrl_limit=low, upper_ctrl_limit=high,
        # Each record has its own alarm: a refused put on one axis must not raise
        # the alarm of the others (or of UPTIME).
        alarm_group=spec.pv,
        doc=f"{spec.description} ({spec.egu}), motor record",
    )


# --------------------------------------------------------------------------------------
# The IOC
# --------------------------------------------------------------------------------------
class StageIOC(InstrumentIOC):
    """Specimen stage: five EPICS motor records moving in real time.

    PVs (records; ``X.RBV`` etc. are their fields)
    ----------------------------------------------
    X, Y (um)
        Stage position, hard limits (switches) +-1000 um, soft limits default
        -990..990 um, VELO default 5 um/s (VMAX 200), ACCL 0.2 s, PREC 4.
    Z (um)
        Height, hard +-300 um, soft -290..290 um, VELO 1 um/s (VMAX 50), ACCL 0.2 s.
    A (deg)
        Alpha tilt: 0 deg is the TEM geometry, -68 deg the SIMS geometry; hard
        -70..70 deg, soft -69..30 deg, VELO 5 deg/s (VMAX 30), ACCL 0.5 s, PREC 3.
    B (deg)
        Beta tilt, hard +-30 deg, soft -25..25 deg, VELO 5 deg/s (VMAX 30), ACCL 0.5 s.
    UPTIME (s)
        From :class:`InstrumentIOC`.

    Fields of every record (units: the record's EGU; ``EGU/s`` for speeds)
    ----------------------------------------------------------------------
    VAL (user)
        Put to move (SET = Use) or to calibrate (SET = Set). Refused with a put error,
        LVIO = 1 and no motion: NaN/inf, outside [LLM, HLM] (unless DHLM = DLLM = 0,
        which disables the soft limits), or SPMG Stop/Pause. Ctrl limits (DRVL/DRVH
        in the metadata) follow LLM/HLM, so ophyd's ``EpicsMotor`` refuses such a move
        itself with a ``LimitError``. Every accepted move toggles DMOV 1 -> 0 -> 1,
        a move to the present position included. A put during a move decelerates
        and then goes to the new target (DMOV stays 0).
    RBV, DRBV, RRBV (read-only)
        User, dial and raw (DRBV / MRES) readbacks, published at 50 Hz while moving.
        RBV's alarm (shared by DMOV, HLS and the other read-only fields) is
        HWLIMIT/MAJOR while a limit switch is active. A refused put raises a
        WRITE/MAJOR alarm on the refused PV only (VAL's also shows in SEVR/STAT),
        cleared by the next accepted put.
    DMOV, MOVN (read-only)
        Done moving (1 at rest) and moving.
    STOP
        Any put decelerates (at VELO/ACCL) to rest short of the target; VAL is then
        set to the rest position, STOP reads 0 again.
    SPMG
        Stop or Pause: as STOP, and moves are refused until Move or Go.
    VELO
        Speed; NaN, 0 or negative refused, above VMAX clamped to VMAX (as the motor
        record does). Takes effect at the next move.
    VMAX
        Maximum speed (0: none); negative/NaN refused; lowers VELO if needed.
    ACCL (s)
        Time to reach VELO; NaN or negative refused, 0 = instant.
    HLM, LLM / DHLM, DLLM
        Soft limits in user / dial coordinates (NaN refused; any finite value
        accepted, as in the motor record: limits beyond the hard limits let the motor
        run into a limit switch).
    HLS, LLS (read-only)
        1 at the hard limits (user sense: with DIR = Neg the dial high switch is LLS).
        A move stops at a switch; ophyd's ``EpicsMotor`` then reports a failed move.
    TDIR (read-only)
        Direction of the last move in user coordinates (1 = towards HLM).
    OFF, DIR, FOFF, SET
        Calibration ``user = dial * (DIR Pos ? 1 : -1) + OFF``; changing OFF or DIR
        moves nothing and shifts VAL, RBV, HLM, LLM. SET = Set: a put to VAL moves
        nothing and makes RBV read the value (``EpicsMotor.set_current_position``):
        FOFF = Variable changes OFF (``OFF = VAL - DIR * DRBV``), FOFF = Frozen keeps
        OFF and redefines the dial (``DVAL = DRBV = (VAL - OFF) * DIR``). Refused
        while moving. The world's stage position never changes with a calibration.
    DVAL
        Dial setpoint: with SET = Use a put moves like VAL. With SET = Set it loads
        the dial (no motion; the limit switches stay where they are on the stage):
        FOFF = Variable changes OFF so that VAL/RBV keep their values, FOFF = Frozen
        keeps OFF and VAL/RBV follow. Refused while moving.
    RLV, TWV, TWF, TWR
        Relative move by RLV; tweak by +-TWV.
    HOMF, HOMR
        Move to the home sensor at dial 0.
    EGU, MRES, PREC, LVIO, MSTA, DIFF, DESC
        Units (fixed: puts refused), resolution, precision, limit violation of the
        last put, status bits (direction, done, +/- limit switch, moving), DVAL-DRBV,
        description. Other motor-record fields are served with caproto's defaults and
        do nothing.
    """

    x = motor_property(STAGE_AXES["X"])
    y = motor_property(STAGE_AXES["Y"])
    z = motor_property(STAGE_AXES["Z"])
    alpha = motor_property(STAGE_AXES["A"])
    beta = motor_property(STAGE_AXES["B"])

    part = "stage"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.axes: dict[str, MotorAxis] = {
            name: MotorAxis(getattr(self, attr), STAGE_AXES[name], self.clock)
            for name, attr in (("X", "x"), ("Y", "y"), ("Z", "z"), ("A", "alpha"),
                               ("B", "beta"))
        }

    async def startup_hook(self, async_lib) -> None:
        """Called once by the server when it starts: defaults, then the world link."""
        for name, axis in self.axes.items():
            # The world follows the physical position, not RBV: a calibration moves
            # nothing (published before RBV's monitor, as mirror() would).
            axis.on_position = functools.partial(self.world.publish, self.part,
                                                 f"stage.{name}")
            await axis.initialize()

    async def reset_state(self) -> None:
        """Every axis at rest at dial 0 with its default speed, limits and calibration."""
        for axis in self.axes.values():
            await axis.reset()


def main(argv=None):
    serve_part("stage", argv)


if __name__ == "__main__":
    main()
