"""Install the fault suspenders on a RunEngine: the session's side of decision 0026.

The suspenders and the safe-state plan live in :mod:`temsims.plans.faults` (plans
import no devices, decision 0024); this module connects them to the parts' heartbeat
watchdogs (:class:`temsims.devices.heartbeat.PartWatchdog`). The session factory and
the queue server's worker call :func:`install_suspenders`; so do the fault tests.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bluesky.suspenders import SuspenderBase

from temsims.devices.heartbeat import HUNG_AFTER_S, PartWatchdog
from temsims.plans.faults import (
    MAX_ARCS,
    RESUME_SLEEP_S,
    WATCHED_PARTS,
    BiasArcSuspender,
    PartDownSuspender,
    make_safe,
    wait_connected_plan,
)

logger = logging.getLogger(__name__)

#: A message that met a disconnected part is sent again after this wait (s): the same
#: circuit drop that made it fail tells the part's watchdog, whose suspension then runs
#: during the wait (and rewinds the plan) instead of the error ending the run.
RETRY_WAIT_S = 0.5
#: Sends of such a message before its error goes to the plan.
RETRIES = 4


@dataclass
class FaultGuard:
    """What :func:`install_suspenders` installed; :meth:`remove` takes it all off."""

    RE: Any
    watchdogs: dict[str, Any] = field(default_factory=dict)
    suspenders: dict[str, SuspenderBase] = field(default_factory=dict)
    arc: BiasArcSuspender | None = None
    _token: int | None = None
    _preprocessor: Any = None
    _imager: Any = None

    def is_down(self, part: str) -> bool:
        dog = self.watchdogs.get(part)
        return bool(dog is not None and dog.down.get())

    def interruption_pending(self) -> bool:
        """Whether the run is being suspended or paused: a suspender has tripped (its
        suspension is requested or running) or the RunEngine is pausing.

        The imager asks when it sees its raster stopped: the suspension stops the
        objects a plan moved before it calls the imager's pause(), and that Stop is the
        suspension's, not a failed frame.
        """
        if any(s.tripped for s in list(self.suspenders.values())):
            return True
        return str(getattr(self.RE, "state", "")) in ("pausing", "paused", "suspending")

    def remove(self) -> None:
        """Uninstall the suspenders and stop the watchdogs."""
        for suspender in self.suspenders.values():
            self.RE.remove_suspender(suspender)
        if self._token is not None:
            self.RE.unsubscribe(self._token)
            self._token = None
        if self._preprocessor in self.RE.preprocessors:
            self.RE.preprocessors.remove(self._preprocessor)
        if self._imager is not None and \
                getattr(self._imager, "interruption_pending", None) == self.interruption_pending:
            self._imager.interruption_pending = None
        self._imager = None
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
    imager = getattr(microscope, "imager", None)
    if imager is not None and hasattr(imager, "interruption_pending"):
        imager.interruption_pending = guard.interruption_pending
        guard._imager = imager
    guard._preprocessor = make_retry_on_disconnect(RE)
    RE.preprocessors.append(guard._preprocessor)
    return guard


def make_retry_on_disconnect(RE: Any) -> Any:
    """:func:`retry_on_disconnect` for ``RE``: a preprocessor (``RE.preprocessors``)."""
    return functools.partial(retry_on_disconnect, run_engine=RE)


def retry_on_disconnect(plan: Any, *, run_engine: Any = None) -> Any:
    """Plan preprocessor: a message that fails on a disconnected part is sent again.

    A part that dies while a plan reads or moves it fails that message before the
    suspension its watchdog raises has reached the RunEngine (both learn it from the
    same circuit drop, milliseconds apart). Waiting :data:`RETRY_WAIT_S` lets the
    suspension run (the RunEngine rewinds the plan to its checkpoint and replays it
    when the part is back); the message is then sent again. Without a suspension (a
    part that stays away) the error reaches the plan after :data:`RETRIES` waits.

    A ``read`` the rewind has already replayed into the open event (``run_engine``
    given) is not sent again: its reading is handed to the plan from that event (a
    second read of the same object into one event is refused by bluesky).

    A move whose status fails later because its part's connection was lost (bluesky
    throws the ``FailedStatus`` at the ``set`` or at the ``wait`` of its group) is sent
    again the same way: every ``set`` of that group, under a new group that the
    plan's ``wait`` is then pointed at (the failed status stays in the old one).
    """
    import bluesky.plan_stubs as bps
    from bluesky.utils import FailedStatus
    from ophyd.signal import ConnectionTimeoutError
    from ophyd.utils.errors import DisconnectedError

    gen = iter(plan)
    response: Any = None
    error: BaseException | None = None
    #: Moves sent with a group and not waited for yet, by group (sent again on a lost
    #: connection), and the groups they were sent again under.
    sets: dict[Any, list] = {}
    statuses: dict[Any, list] = {}
    renamed: dict[Any, str] = {}
    while True:
        try:
            msg = gen.throw(error) if error is not None else gen.send(response)
        except StopIteration as stop:
            return stop.value
        error, response = None, None
        group = _group_of(msg)
        if msg.command == "set" and group is not None:
            sets.setdefault(group, []).append(msg)
        for attempt in range(RETRIES + 1):
            try:
                try:
                    if attempt and msg.command == "read":
                        replayed = _reading_in_open_event(run_engine, msg)
                        if replayed is not None:
                            response = replayed
                            break
                    response = yield _in_group(msg, renamed.get(group))
                    if msg.command == "set" and group is not None:
                        statuses.setdefault(group, []).append(response)
                    if msg.command == "wait":
                        for book in (sets, statuses, renamed):
                            book.pop(group, None)
                    break
                except (DisconnectedError, ConnectionTimeoutError) as exc:
                    if attempt == RETRIES or msg.obj is None:
                        raise
                    logger.info("%s on %s: %s; sent again in %.1f s", msg.command,
                                getattr(msg.obj, "name", msg.obj), exc, RETRY_WAIT_S)
                    yield from bps.sleep(RETRY_WAIT_S)
                except FailedStatus as exc:
                    if (attempt == RETRIES or msg.command not in ("set", "wait")
                            or group not in sets or not _lost_connection(exc)
                            or not _failed_in(exc, msg, group, statuses)):
                        raise
                    logger.info("%s of group %s failed on a lost connection (%s); its "
                                "moves sent again in %.1f s", msg.command, group, exc,
                                RETRY_WAIT_S)
                    yield from bps.sleep(RETRY_WAIT_S)
                    renamed[group] = new_group = f"{group}-again-{attempt + 1}"
                    statuses[group] = []
                    for move in sets[group]:
                        status = yield _in_group(move, new_group)
                        statuses[group].append(status)
                        if move is msg:
                            response = status
                    if msg.command == "set":
                        break  # this move was sent again: its new status is the answer
            except GeneratorExit:
                gen.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - the plan's own to handle
                error = exc
                break


def _group_of(msg: Any) -> Any:
    """The group of a ``set`` or ``wait`` message (None: none, or another command)."""
    if msg.command not in ("set", "wait"):
        return None
    group = msg.kwargs.get("group")
    if group is None and msg.command == "wait" and msg.args:
        group = msg.args[0]
    return group


def _in_group(msg: Any, group: str | None) -> Any:
    """``msg`` with its group replaced by ``group`` (``msg`` itself for None)."""
    if group is None:
        return msg
    args = msg.args[1:] if msg.command == "wait" and "group" not in msg.kwargs else msg.args
    return msg._replace(args=args, kwargs={**msg.kwargs, "group": group})


def _failed_in(exc: BaseException, msg: Any, group: Any, statuses: dict) -> bool:
    """Whether the status ``exc`` reports is one of ``group``'s moves: a status sent
    back for one of them, or (thrown at the ``set`` before its status was sent back)
    the status of ``msg``'s own object. A failure of another group's move thrown at
    this message is not sent again here: its own ``wait`` would pass over it."""
    failed = exc.args[0] if exc.args else None
    if any(st is failed for st in statuses.get(group, ())):
        return True
    if any(st is failed for g, sts in statuses.items() if g != group for st in sts):
        return False
    return msg.command == "set" and getattr(failed, "device", None) is msg.obj


def _lost_connection(exc: BaseException) -> bool:
    """Whether a failed status failed because its part's connection was lost."""
    from ophyd.signal import ConnectionTimeoutError
    from ophyd.utils.errors import DisconnectedError

    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, (DisconnectedError, ConnectionTimeoutError)):
            return True
        if isinstance(err, TimeoutError) and "could not connect" in str(err):
            return True  # caproto's CaprotoTimeoutError for a PV searched for again
        todo += [err.__cause__, err.__context__]
        status = err.args[0] if err.args else None
        inner = getattr(status, "exception", None)
        if callable(inner):
            try:
                todo.append(inner())
            except Exception:  # noqa: BLE001 - not a status after all
                pass
    return False


def _reading_in_open_event(run_engine: Any, msg: Any) -> dict | None:
    """The reading of ``msg.obj`` in the event ``run_engine`` is bundling for
    ``msg.run``, or None (no such event, or the object not read into it yet).

    Reads bluesky's bundler (1.15) by its private names: if they change, None (the
    read is sent again, as before this check).
    """
    bundlers = getattr(run_engine, "_run_bundlers", None) or {}
    bundler = bundlers.get(msg.run)
    if bundler is None or not getattr(bundler, "bundling", False):
        return None
    read_objects = list(getattr(bundler, "_objs_read", ()))
    cache = getattr(getattr(bundler, "_current_stream_cache", None), "read_cache", None)
    if msg.obj not in read_objects or cache is None or len(cache) != len(read_objects):
        return None
    return cache[read_objects.index(msg.obj)]


__all__ = ["FaultGuard", "install_suspenders", "make_retry_on_disconnect",
           "retry_on_disconnect"]
