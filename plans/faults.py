"""Suspenders: a run waits out a dead or hung part and a bias arc, safely.

:func:`install_suspenders` (called by the session factory and by the tests) installs
on a RunEngine, for a connected microscope (:func:`temsims.devices.connect`):

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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


class PartDownSuspender(SuspendBoolHigh):
    """``SuspendBoolHigh`` on a :class:`~temsims.devices.heartbeat.PartWatchdog`'s
    ``down`` signal, whose justification says why the part is down."""

    def __init__(self, watchdog: Any, **kwargs: Any) -> None:
        super().__init__(watchdog.down, **kwargs)
        self.watchdog = watchdog

    def _get_justification(self) -> str:
        if not self.tripped:
            return ""
        return f"part down: {self.watchdog.reason or self.watchdog.part}"


class BiasArcSuspender(SuspenderBase):
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

    def _get_justification(self) -> str:
        if not self.tripped:
            return ""
        return f"bias arc {self.arcs + 1} of at most {self.max_arcs} waited out in this run"


@dataclass
class FaultGuard:
    """What :func:`install_suspenders` installed; :meth:`remove` takes it all off."""

    RE: Any
    watchdogs: dict[str, Any] = field(default_factory=dict)
    suspenders: dict[str, SuspenderBase] = field(default_factory=dict)
    arc: BiasArcSuspender | None = None
    _token: int | None = None

    def is_down(self, part: str) -> bool:
        dog = self.watchdogs.get(part)
        return bool(dog is not None and dog.down.get())

    def remove(self) -> None:
        """Uninstall the suspenders and stop the watchdogs."""
        for suspender in self.suspenders.values():
            self.RE.remove_suspender(suspender)
        if self._token is not None:
            self.RE.unsubscribe(self._token)
            self._token = None
        for dog in self.watchdogs.values():
            dog.stop()
        self.suspenders.clear()
        self.watchdogs.clear()


def install_suspenders(RE: Any, microscope: Any, *, parts: Iterable[str] = WATCHED_PARTS,
                       hung_after_s: float | None = None, max_arcs: int = MAX_ARCS,
                       resume_sleep_s: float = RESUME_SLEEP_S,
                       prefixes: Mapping[str, str] | None = None) -> FaultGuard:
    """Suspend ``RE``'s runs while a part is dead or hung, or the bias has arced.

    Parameters
    ----------
    RE : bluesky.RunEngine
    microscope
        The connected devices (:func:`temsims.devices.connect`): ``column`` and
        ``bias`` are made safe on a suspension, every device is waited for before a
        run resumes, and ``prefixes`` (part -> PV prefix) locate the heartbeats.
    parts
        The parts whose heartbeat is watched (default all five).
    hung_after_s
        Heartbeat silence after which a part counts as hung (s, wall; default
        :data:`temsims.devices.heartbeat.HUNG_AFTER_S`).
    max_arcs
        Arcs a run survives (:class:`BiasArcSuspender`).
    resume_sleep_s
        Wait after a condition clears before the plan goes on (s).
    prefixes
        PV prefix per part, overriding ``microscope.prefixes``.

    Returns
    -------
    FaultGuard
        The watchdogs (``guard.watchdogs[part].history`` holds the detection times)
        and suspenders; ``guard.remove()`` uninstalls them.
    """
    from temsims.devices.heartbeat import HUNG_AFTER_S, PartWatchdog

    known = dict(getattr(microscope, "prefixes", {}) or {})
    known.update(prefixes or {})
    parts = tuple(parts)
    unknown = [p for p in parts if p not in WATCHED_PARTS]
    if unknown:
        raise ValueError(f"parts {unknown}: expected some of {WATCHED_PARTS}")
    missing = [p for p in parts if p not in known]
    if missing:
        raise ValueError(f"no PV prefix for part(s) {missing}: pass microscope "
                         "(temsims.devices.connect()) or prefixes={part: prefix}")
    column = getattr(microscope, "column", None)
    bias = getattr(microscope, "bias", None)
    all_devices = getattr(microscope, "all_devices", None)
    devices = list(all_devices().values()) if callable(all_devices) else []
    guard = FaultGuard(RE=RE)

    def pre_plan():
        return (yield from make_safe(column, bias, is_down=guard.is_down))

    def post_plan():
        ok = yield from wait_connected_plan(devices)
        if not ok:
            logger.warning("resuming although some devices are not connected yet")

    after = HUNG_AFTER_S if hung_after_s is None else hung_after_s
    for part in parts:
        guard.watchdogs[part] = PartWatchdog(part, known[part], hung_after_s=after).start()
    for part, dog in guard.watchdogs.items():
        suspender = PartDownSuspender(dog, sleep=resume_sleep_s, pre_plan=pre_plan,
                                      post_plan=post_plan)
        RE.install_suspender(suspender)
        guard.suspenders[part] = suspender
    if bias is not None and hasattr(bias, "fault"):
        guard.arc = BiasArcSuspender(bias.fault, max_arcs=max_arcs, sleep=resume_sleep_s,
                                     pre_plan=pre_plan, post_plan=post_plan)
        RE.install_suspender(guard.arc)
        guard.suspenders["bias_arc"] = guard.arc

        def on_document(name: str, doc: Mapping) -> None:
            if name == "start" and guard.arc is not None:
                guard.arc.new_run()

        guard._token = RE.subscribe(on_document, "start")
    return guard


__all__ = ["ArcLimitExceeded", "BiasArcSuspender", "FaultGuard", "MAX_ARCS",
           "PartDownSuspender", "install_suspenders", "make_safe", "wait_connected_plan"]
