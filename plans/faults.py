"""Suspenders: a run waits out a dead or hung part and a bias arc, safely.

:func:`temsims.app.faults.install_suspenders` (called by the session factory, the queue
server's worker and the tests) installs on a RunEngine, for a connected microscope
(:func:`temsims.devices.connect`):

- one :class:`PartDownSuspender` per part: a
  :class:`~temsims.devices.heartbeat.PartWatchdog` turns the part's ``UPTIME``
  heartbeat and CA connection into a ``down`` signal (dead: its circuit dropped,
  detected at once; hung: no heartbeat for ``hung_after_s``), watched by bluesky's
  stock ``SuspendBoolHigh``;
- one :class:`BiasArcSuspender` on ``BIAS:FAULT``: an arc suspends the run until the
  fault is reset (``BIAS:RESET``); the ``max_arcs + 1``-th arc of a run stops it,
  exit status "fail" with the reason, the instrument left safe.

Every suspension first makes the instrument safe through the parts that still answer
(:func:`make_safe`: raster stopped, beam blanked, bias ramped to 0 V; a part that is
down is skipped and named in the log), then waits; when the condition clears, it
waits until every device is connected again and lets the plan go on. Putting back
what the plan needs (bias voltage, beam) is the plan's job: it knows what its data
needs (:func:`temsims.plans.sims.sims_map` re-acquires an interrupted frame from its
first missing line; step plans are rewound to their last checkpoint by the
RunEngine). Nothing here is specific to one plan (decision 0026).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from functools import partial
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.suspenders import SuspendBoolHigh, SuspenderBase

from temsims.plans.types import Plan

logger = logging.getLogger(__name__)

#: Parts watched, in the order :func:`install_suspenders` starts their watchdogs.
WATCHED_PARTS = ("stage", "tem", "column", "bias", "spectrometer")
#: Arcs a run survives; the next one stops it.
MAX_ARCS = 2
#: How long each step of :func:`make_safe` may take before it is given up (s).
SAFE_STEP_TIMEOUT_S = 30.0
#: After the condition clears: wait this long (s) before the plan goes on, and at most
#: ``RECONNECT_TIMEOUT_S`` for every device to be connected again.
RESUME_SLEEP_S = 0.5
RECONNECT_TIMEOUT_S = 20.0


class ArcLimitExceeded(RuntimeError):
    """The bias supply arced more often in one run than the suspender allows."""


def make_safe(column: Any = None, bias: Any = None, *, is_down=lambda part: False,
              timeout: float = SAFE_STEP_TIMEOUT_S) -> Plan[list[str]]:
    """Plan: stop the raster and blank the beam, ramp the bias to 0 V, through the parts
    that answer.

    Unlike :func:`temsims.plans.safe_state` (a plan's own clean-up), each step is
    independent and bounded: a part that is down (``is_down(part)``) is skipped, a
    step that fails or takes longer than ``timeout`` is logged and the next one is
    tried. Returns what could not be done ("" entries never).
    """
    problems: list[str] = []
    steps = []
    if column is not None:
        steps.append(("column", column, "Blanked"))
    if bias is not None:
        steps.append(("bias", bias, 0.0))
    for part, device, value in steps:
        if is_down(part):
            problems.append(f"{part}: down, not made safe by the plan")
            continue
        group = f"_make_safe_{part}"
        try:
            if part == "column":
                yield from bps.stop(device)  # aborts a raster (no-op when idle)
                yield from bps.abs_set(device.blank, value, group=group)
            else:
                yield from bps.abs_set(device, value, group=group)
            yield from bps.wait(group=group, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - the next part is still made safe
            problems.append(f"{part}: {exc!r}")
    for problem in problems:
        logger.warning("make_safe: %s", problem)
    return problems


def wait_connected_plan(devices: Iterable[Any], timeout: float = RECONNECT_TIMEOUT_S,
                        poll_s: float = 0.05) -> Plan[bool]:
    """Plan: sleep until every device reports ``connected`` (at most ``timeout``).

    A part that comes back is searched for afresh, PV by PV: its heartbeat may answer
    a moment before the PVs a plan reads next.
    """
    signals = [w.item for d in devices if d is not None for w in d.walk_signals()]
    waited = 0.0
    while not _all_connected(signals):
        if waited >= timeout:
            return False
        yield from bps.sleep(poll_s)
        waited += poll_s
    return True


def _all_connected(signals: list[Any]) -> bool:
    """Whether every signal's PVs answer now and ophyd knows it (ophyd's ``connected``
    flag can stay True for an unmonitored PV whose circuit dropped, and turns True a
    moment after a monitored one is back; ``wait_for_connection`` asks the PV)."""
    for sig in signals:
        if not getattr(sig, "connected", True):  # ophyd's flag follows a moment later
            return False
        try:
            sig.wait_for_connection(timeout=0.001)
        except (TimeoutError, Exception):  # noqa: BLE001 - caproto's own timeout class too
            return False
    return True


#: Longest wait for the RunEngine's event loop to make a tripped suspender's event
#: when a run starts (s); bluesky's own gives up after 0.1 s.
EVENT_LOOP_WAIT_S = 10.0


class InLoopSuspender:
    """Mixin before a bluesky suspender: its signal's updates are judged in the
    RunEngine's event-loop thread.

    bluesky's ``SuspenderBase`` judges an update in the thread that delivers it (a CA
    monitor or a watchdog thread) and, on a trip, waits only 0.1 s for the event loop
    to make the asyncio event the suspension waits on; when the loop is busier than
    that it raises ``Could not create the suspender event`` in the callback and the
    suspension is never requested. Under load (2 cores, load 6-8) that lost 1 arc in
    2 of 6 runs of tests/faults/test_arcs.py: the map went on at 0 V with the beam
    blanked by the IOC's interlock, and ended "success". In the loop thread the event
    is made at once, and the updates are still judged in the order they came.
    """

    def _loop(self):
        RE = self.RE
        loop = getattr(RE, "_loop", None) if RE is not None else None
        if loop is None or loop.is_closed() or not loop.is_running():
            return None
        if threading.get_ident() == getattr(loop, "_thread_id", None):
            return None  # already there
        return loop

    def __call__(self, value: Any, **kwargs: Any) -> None:
        loop = self._loop()
        if loop is None:
            super().__call__(value, **kwargs)
        else:
            loop.call_soon_threadsafe(partial(super().__call__, value, **kwargs))

    def get_futures(self):
        # RunEngine.__call__ asks from its caller's thread: make the event in the loop.
        loop = self._loop()
        if loop is not None and self.tripped:
            made = threading.Event()

            def make() -> None:
                with self._lock:
                    self._SuspenderBase__make_event()
                made.set()

            loop.call_soon_threadsafe(make)
            made.wait(EVENT_LOOP_WAIT_S)
        return super().get_futures()


class PartDownSuspender(InLoopSuspender, SuspendBoolHigh):
    """``SuspendBoolHigh`` on a :class:`~temsims.devices.heartbeat.PartWatchdog`'s
    ``down`` signal, whose justification says why the part is down."""

    def __init__(self, watchdog: Any, **kwargs: Any) -> None:
        super().__init__(watchdog.down, **kwargs)
        self.watchdog = watchdog

    def _get_justification(self) -> str:
        if not self.tripped:
            return ""
        return f"part down: {self.watchdog.reason or self.watchdog.part}"


class BiasArcSuspender(InLoopSuspender, SuspenderBase):
    """Suspend on ``BIAS:FAULT`` = Arc, resume once it reads OK (after ``RESET``).

    Parameters
    ----------
    fault : ophyd signal
        The supply's FAULT (string "OK"/"Arc").
    max_arcs : int
        Arcs a run survives; at the next one the pre-plan makes the instrument safe
        and raises :class:`ArcLimitExceeded`, so the run ends "fail" with the reason.
    **kwargs
        ``sleep``, ``pre_plan``, ``post_plan`` of ``SuspenderBase``; ``pre_plan`` is
        wrapped to count and to stop at the limit.
    """

    def __init__(self, fault: Any, *, max_arcs: int = MAX_ARCS, **kwargs: Any) -> None:
        if isinstance(max_arcs, bool) or not isinstance(max_arcs, int) or max_arcs < 0:
            raise ValueError(f"max_arcs must be an integer >= 0, got {max_arcs!r}")
        safe = kwargs.pop("pre_plan", None)
        super().__init__(fault, pre_plan=self._pre_plan_counting, **kwargs)
        self._safe = safe
        self.max_arcs = max_arcs
        #: Arcs that suspended the present run (reset by :meth:`new_run`).
        self.arcs = 0
        #: Every arc seen while a run was going: total over the suspender's life.
        self.total_arcs = 0

    def new_run(self) -> None:
        self.arcs = 0

    @staticmethod
    def _is_arc(value: Any) -> bool:
        return str(value) in ("Arc", "1")

    def _should_suspend(self, value: Any) -> bool:
        return self._is_arc(value)

    def _should_resume(self, value: Any) -> bool:
        return not self._is_arc(value)

    def _pre_plan_counting(self):
        self.arcs += 1
        self.total_arcs += 1
        if self._safe is not None:
            yield from self._safe()
        if self.arcs > self.max_arcs:
            raise ArcLimitExceeded(
                f"the bias supply arced {self.arcs} times in this run (at most "
                f"{self.max_arcs} are waited out); the run is stopped with the beam "
                "blanked and the bias at 0 V")

    def __repr__(self) -> str:
        # SuspenderBase's repr shows pre_plan, here a bound method whose repr is this
        # one: endless recursion. bluesky formats it when the fault clears, in the
        # event-loop callback that releases the suspension, which then never ran and
        # the run waited forever (the arc tests "hung").
        return (f"{type(self).__name__}({getattr(self._sig, 'name', self._sig)!r}, "
                f"max_arcs={self.max_arcs}, arcs={self.arcs}, sleep={self._sleep})")

    def _get_justification(self) -> str:
        if not self.tripped:
            return ""
        arc = self.arcs + 1  # the pre-plan counts it once the suspension runs
        if arc > self.max_arcs:
            return (f"bias arc {arc} in this run, more than the {self.max_arcs} waited "
                    "out: the run stops")
        return f"bias arc {arc} of at most {self.max_arcs} waited out in this run"


__all__ = ["ArcLimitExceeded", "BiasArcSuspender", "MAX_ARCS", "PartDownSuspender",
           "RESUME_SLEEP_S", "WATCHED_PARTS", "make_safe", "wait_connected_plan"]
