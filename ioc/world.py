"""The instrument as one world: the state every part acts on, and the simulated clock.

The five IOCs of an instrument are Channel Access views of one physical object
(decision 0013): the specimen in the holder, the stage that carries it, the ion
beam, the holder bias and the TEM objective lens. :class:`World` holds that shared
state in memory. Each part *owns* the quantities it drives (the stage owns the axis
positions, the bias supply its output, the column the beam and its raster) and
publishes them here the moment it writes the matching readback PV; every other part
reads them here directly, where in the real instrument a wire or the specimen itself
couples them. No physics crosses Channel Access between parts.

A quantity of a part that is down reads ``None``: interlocks built on it refuse
(fail safe), as they did when the parts followed each other over CA.

:class:`Clock` is the simulated time of the whole instrument: at ``scale`` S every
move, ramp, exposure and raster runs S times faster in wall time, while every PV,
timestamp and duration keeps its nominal physical value.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from temsims.ioc.physics.holder import Holder

logger = logging.getLogger(__name__)


class Clock:
    """Nominal (physical) time of the instrument, running ``scale`` times wall time.

    ``now()`` is an epoch time in seconds that starts at the wall time of the clock's
    creation and advances ``scale`` seconds per wall second; it is monotonic (it is
    derived from ``time.monotonic``). Every duration an IOC waits is nominal and
    divided by ``scale`` here, and only here.

    Parameters
    ----------
    scale
        Simulated seconds per wall-clock second (1 = real time; > 0).
    """

    def __init__(self, scale: float = 1.0) -> None:
        scale = float(scale)
        if not (scale > 0.0 and np.isfinite(scale)):
            raise ValueError(f"time scale must be a finite number > 0, got {scale!r}")
        self.scale = scale
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def now(self) -> float:
        """Nominal epoch time (s)."""
        return self._wall0 + (time.monotonic() - self._mono0) * self.scale

    def wall(self, seconds: float) -> float:
        """Wall-clock seconds that ``seconds`` of nominal time take."""
        return max(0.0, float(seconds)) / self.scale

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of nominal time."""
        await asyncio.sleep(self.wall(seconds))

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait for ``event`` at most ``seconds`` of nominal time; True if it was set."""
        try:
            await asyncio.wait_for(event.wait(), self.wall(seconds))
        except TimeoutError:
            return event.is_set()
        return True


class _NominalTime:
    """Stand-in for the ``time`` module inside caproto's data layer (see install_clock)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def time(self) -> float:
        return self._clock.now()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def install_clock(clock: Clock) -> None:
    """Stamp every PV of this process with the nominal time of ``clock``.

    Why: caproto stamps a write with ``time.time()`` unless given a timestamp, and a
    client times what an IOC did from these stamps (the tests time a bias ramp by its
    VOLTAGE_RBV updates). At a time scale S the stamps must keep the physical
    durations, so caproto's data module is given the clock instead of the wall time.
    One process serves one instrument, so one clock per process is enough.
    """
    import caproto._data as ca_data

    ca_data.time = _NominalTime(clock)


@dataclass
class _Subscriber:
    keys: frozenset[str]
    callback: Callable[[str, Any], Any]
    loop: asyncio.AbstractEventLoop


class World:
    """Shared state of one instrument: quantities owned by parts, the holder, the clock.

    Parameters
    ----------
    clock
        The instrument's simulated clock.
    specimen, seed
        The virtual specimen loaded in the holder (:attr:`holder`, a
        :class:`~temsims.ioc.physics.holder.Holder`: built once, on first use, with
        its sputtered depth); ``seed`` also seeds the parts' noise.

    Notes
    -----
    Parts run in their own threads and event loops (decision 0013). A quantity is
    written by its owner's thread and read by any; subscribers are called in their
    own event loop, in the order the quantities were written.
    """

    def __init__(self, clock: Clock | None = None, *, specimen: str = "li2co3-particles",
                 seed: int = 1) -> None:
        self.clock = clock or Clock()
        self.seed = seed
        self.holder = Holder(specimen, seed)
        self._values: dict[str, Any] = {}
        self._timestamps: dict[str, float] = {}
        self._owner: dict[str, str] = {}
        self._subscribers: list[_Subscriber] = []
        self._down: set[str] = set()
        self._lock = threading.RLock()
        self._shared: dict[str, Any] = {}

    # ---- the specimen -------------------------------------------------------------
    def shared(self, name: str, factory: Callable[[], Any]) -> Any:
        """An object derived from the specimen, built once and shared (e.g. renderers)."""
        with self._lock:
            if name not in self._shared:
                self._shared[name] = factory()
            return self._shared[name]

    # ---- quantities ---------------------------------------------------------------
    def publish(self, part: str, key: str, value: Any, timestamp: float | None = None) -> None:
        """Set ``key`` (owned by ``part``) and notify its subscribers.

        Ignored while ``part`` is down (:meth:`part_down` until :meth:`part_up`).
        """
        with self._lock:
            owner = self._owner.setdefault(key, part)
            if owner != part:
                raise ValueError(f"{key!r} is owned by {owner!r}, not {part!r}")
            if part in self._down:
                # A part being stopped still runs its cancelled tasks' cleanup (a
                # stage's move publishes where it stopped): that must not bring its
                # quantities back while its peers take it as down.
                return
            self._values[key] = value
            self._timestamps[key] = self.clock.now() if timestamp is None else timestamp
            subscribers = [s for s in self._subscribers if key in s.keys]
        for sub in subscribers:
            self._dispatch(sub, key, value)

    def get(self, key: str, default: Any = None) -> Any:
        """Present value of ``key``; ``default`` when unset or its part is down."""
        value = self._values.get(key)
        return default if value is None else value

    def timestamp(self, key: str) -> float | None:
        return self._timestamps.get(key)

    def subscribe(self, keys: Iterable[str], callback: Callable[[str, Any], Any],
                  loop: asyncio.AbstractEventLoop | None = None) -> Callable[[], None]:
        """Call ``callback(key, value)`` in ``loop`` after each write of one of ``keys``.

        ``value`` is None when the owning part goes down. A coroutine function is run
        as a task. Exceptions are logged, never raised into the writer. Returns a
        function that unsubscribes.
        """
        sub = _Subscriber(frozenset(keys), callback, loop or asyncio.get_running_loop())
        with self._lock:
            self._subscribers.append(sub)

        def unsubscribe() -> None:
            with self._lock:
                if sub in self._subscribers:
                    self._subscribers.remove(sub)

        return unsubscribe

    def _dispatch(self, sub: _Subscriber, key: str, value: Any) -> None:
        def call() -> None:
            try:
                result = sub.callback(key, value)
                if asyncio.iscoroutine(result):
                    task = sub.loop.create_task(result)
                    task.add_done_callback(_log_failure)
            except Exception:
                logger.exception("world subscriber of %s failed", key)

        try:
            sub.loop.call_soon_threadsafe(call)
        except RuntimeError:  # that part's loop is closed: it is down
            pass

    # ---- parts ----------------------------------------------------------------------
    def part_down(self, part: str) -> None:
        """Every quantity of ``part`` reads None, and its subscribers hear it; what
        ``part`` publishes from now on is ignored until :meth:`part_up`."""
        with self._lock:
            self._down.add(part)
            keys = [k for k, owner in self._owner.items() if owner == part]
            self._subscribers = [s for s in self._subscribers if s.loop.is_running()]
            now = self.clock.now()
            for key in keys:
                self._values[key] = None
                self._timestamps[key] = now
            subscribers = [(s, k) for k in keys for s in self._subscribers if k in s.keys]
        for sub, key in subscribers:
            self._dispatch(sub, key, None)

    def part_up(self, part: str) -> None:
        """``part`` is starting: what it publishes counts again (its quantities read
        None until it does)."""
        with self._lock:
            self._down.discard(part)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("world subscriber failed", exc_info=task.exception())


class WorldLink:
    """What one part reads of the world: named quantities, with an optional callback.

    The successor of the CA peer links: the part reads the quantities with
    ``World.get`` (``None`` = the owning part is down); this link calls it back when
    one of them is written.

    Parameters
    ----------
    world
        The instrument's world.
    keys
        World quantities this part follows.
    on_update
        Optional ``on_update(key, value)`` run in this part's event loop after each
        write of one of ``keys`` (awaited if it is a coroutine function).
    """

    def __init__(self, world: World, keys: Iterable[str],
                 on_update: Callable[[str, Any], Any] | None = None) -> None:
        self.world = world
        self.keys = list(keys)
        self._on_update = on_update
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        """Start hearing updates; call from inside this part's running event loop."""
        if self._on_update is not None and self._unsubscribe is None:
            self._unsubscribe = self.world.subscribe(self.keys, self._on_update)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


def mirror_pv(world: World, part: str, key: str, instance: Any) -> None:
    """Publish every write of the PV ``instance`` into the world as ``key``.

    The owner's readback PV and the world quantity are then one thing: the world holds
    the new value before the PV's monitor goes out, so a client that saw a readback
    (DMOV = 1, ENABLE_RBV = On) can never find another part acting on an older one.
    """
    world.publish(part, key, instance.value, instance.timestamp)
    publish_to_clients = instance.publish

    async def publish(flags, *args, **kwargs):
        world.publish(part, key, instance.value, instance.timestamp)
        return await publish_to_clients(flags, *args, **kwargs)

    instance.publish = publish
