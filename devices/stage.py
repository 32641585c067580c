"""Specimen stage (``STAGE:``): five EPICS motor records as ophyd ``EpicsMotor`` axes.

``x``, ``y`` (um), ``z`` (um), ``alpha`` (PV ``A``, deg) and ``beta`` (PV ``B``, deg)
in a ``MotorBundle``. Alpha = 0 deg is the TEM geometry, -68 deg the SIMS geometry
(``docs/interlocks.md``).
"""

from __future__ import annotations

import collections
import copy
import math
import numbers
import threading
import time

from ophyd import Component as Cpt
from ophyd import EpicsMotor, EpicsSignalRO, MotorBundle
from ophyd.positioner import PositionerBase
from ophyd.status import wait as status_wait
from ophyd.utils.errors import LimitError

from temsims.devices.common import Reading, RecordField


class LimitSwitch(Reading):
    """A limit-switch field (HLS/LLS) read from its monitor, even when asked not to.

    ``EpicsMotor`` reads the switch with ``use_monitor=False`` (one CA round trip,
    0.9 ms here) when DMOV returns to 1, at every point of a step scan. The stage IOC
    publishes HLS/LLS before it sets DMOV = 1, on the same circuit, and CA delivers
    one circuit's monitors in order: the monitored value at that moment is already
    the one the round trip would fetch.
    """

    def get(self, *, use_monitor: bool | None = None, **kwargs):
        return super().get(use_monitor=True, **kwargs)


def _describing(cpt: Cpt) -> Cpt:
    """``EpicsMotor``'s component ``cpt`` on the temsims signal class that describes its
    ``dtype_numpy`` (:class:`~temsims.devices.common.Reading` or
    :class:`~temsims.devices.common.RecordField`).

    A copy, not a new ``Cpt``: it keeps the PV, the options and ``EpicsMotor``'s own
    subscriptions (the position on ``user_readback``, the end of a move on
    ``motor_done_move``), which a component declared again would lose.
    """
    described = copy.copy(cpt)
    described.cls = Reading if issubclass(cpt.cls, EpicsSignalRO) else RecordField
    described._subscriptions = collections.defaultdict(
        list, {event: list(funcs) for event, funcs in cpt._subscriptions.items()})
    return described


class StageMotor(EpicsMotor):
    """``EpicsMotor`` that refuses non-numbers, NaN and moves beyond the soft limits,
    and whose next move cannot lose its status to the end of the previous one.

    ``EpicsMotor`` already checks the ctrl limits (the IOC publishes LLM/HLM there);
    this adds a clear message for NaN/inf, which the record would refuse silently
    over caproto's client (the move status would then never finish).

    ophyd's ``PositionerBase._done_moving`` finishes the pending move statuses and
    then clears *all* of them. A RunEngine woken by the first step issues the next
    move from its own thread at once; when that move subscribes its status between
    the two, the status is cleared unfinished and the scan hangs (ophyd PR #783;
    measured here: 4 of 1000 back-to-back 10 nm moves under a RunEngine). Here the
    pending statuses are taken and cleared under a lock that ``move`` also holds,
    and finished after it is released.

    The record fields are ``EpicsMotor``'s, on signal classes that describe their
    ``dtype_numpy`` (:func:`_describing`).
    """

    user_readback = _describing(EpicsMotor.user_readback)
    user_setpoint = _describing(EpicsMotor.user_setpoint)
    user_offset = _describing(EpicsMotor.user_offset)
    user_offset_dir = _describing(EpicsMotor.user_offset_dir)
    offset_freeze_switch = _describing(EpicsMotor.offset_freeze_switch)
    set_use_switch = _describing(EpicsMotor.set_use_switch)
    velocity = _describing(EpicsMotor.velocity)
    acceleration = _describing(EpicsMotor.acceleration)
    motor_egu = _describing(EpicsMotor.motor_egu)
    motor_is_moving = _describing(EpicsMotor.motor_is_moving)
    motor_done_move = _describing(EpicsMotor.motor_done_move)
    high_limit_travel = _describing(EpicsMotor.high_limit_travel)
    low_limit_travel = _describing(EpicsMotor.low_limit_travel)
    direction_of_travel = _describing(EpicsMotor.direction_of_travel)
    motor_stop = _describing(EpicsMotor.motor_stop)
    home_forward = _describing(EpicsMotor.home_forward)
    home_reverse = _describing(EpicsMotor.home_reverse)
    high_limit_switch = Cpt(LimitSwitch, ".HLS", kind="omitted", auto_monitor=True)
    low_limit_switch = Cpt(LimitSwitch, ".LLS", kind="omitted", auto_monitor=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._move_lock = threading.RLock()
        # The axis's signals, fixed once built (none is lazy): see ``connected``.
        self._connection_signals = (
            None if any(cpt.lazy for cpt in self._sig_attrs.values())
            else tuple(walk.item for walk in self.walk_signals(include_lazy=False)))

    @property
    def connected(self):
        # ophyd's Device.connected walks the component tree at every call (20 us
        # here), and EpicsMotor asks for it five times a move (move, limits,
        # position twice in MoveStatus, ...). The same answer from the signals'
        # list, built once: every signal connected, no connection callback pending.
        signals = self._connection_signals
        if signals is None:
            return super().connected
        return (all(signal.connected for signal in signals)
                and not self._required_for_connection)

    def _repr_info(self):
        # ophyd's MoveStatus puts repr(positioner) in its tracing attributes at every
        # move; Device's repr walks ~30 components for read_attrs and
        # configuration_attrs (0.65 ms a move here). Name and prefix identify an axis.
        yield ("prefix", self.prefix)
        yield ("name", self.name)
        if self.parent is not None:
            yield ("parent", self.parent.name)

    def check_value(self, pos):
        if isinstance(pos, bool) or not isinstance(pos, numbers.Real) or not math.isfinite(pos):
            raise ValueError(f"{self.name}: position must be a finite number, got {pos!r}")
        low, high = self.limits
        if low < high and not low <= pos <= high:
            raise LimitError(
                f"{self.name}: {pos} {self.egu} outside the soft limits [{low}, {high}]")

    def move(self, position, wait: bool = True, **kwargs):
        with self._move_lock:
            status = super().move(position, wait=False, **kwargs)
        if wait:
            try:
                status_wait(status)
            except KeyboardInterrupt:
                self.stop()
                raise
        return status

    def stop(self, *, success: bool = False):
        """Stop the motion; the move's status finishes even when the part is down.

        ophyd's ``EpicsMotor.stop`` finishes the status only after its STOP put: on a
        dead part that put raises, the status stays open and fails when the part is
        back, and bluesky throws the failure into the plan it rewound after a
        suspension (decision 0026), ending a run that would have resumed.
        """
        try:
            self.motor_stop.put(1, wait=False)
        finally:
            PositionerBase.stop(self, success=success)

    def _done_moving(self, success=True, timestamp=None, value=None, **kwargs):
        with self._move_lock:
            if success:
                self._run_subs(sub_type=self.SUB_DONE, timestamp=timestamp, value=value)
            finish = list(self._callbacks[self._SUB_REQ_DONE].values())
            self._reset_sub(self._SUB_REQ_DONE)
        for callback in finish:  # ophyd wraps each to log, not raise, its exceptions
            callback(success=success, timestamp=timestamp or time.time(),
                     sub_type=self._SUB_REQ_DONE, obj=self)


class Stage(MotorBundle):
    """The specimen stage: x, y, z (um), alpha and beta tilt (deg).

    Each axis reads back (hinted) and sets like any ``EpicsMotor``: ``set()`` returns
    a status that finishes when the record reports DMOV = 1 at the target.
    """

    # Labelled for the session's %wa/%mov magics (bluesky finds labelled children).
    x = Cpt(StageMotor, "X", labels={"motors"}, doc="Stage x (um)")
    y = Cpt(StageMotor, "Y", labels={"motors"}, doc="Stage y (um)")
    z = Cpt(StageMotor, "Z", labels={"motors"}, doc="Stage height z (um)")
    alpha = Cpt(StageMotor, "A", labels={"motors"}, doc="Alpha tilt (deg): 0 TEM, -68 SIMS")
    beta = Cpt(StageMotor, "B", labels={"motors"}, doc="Beta tilt (deg)")
