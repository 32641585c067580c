"""Fixtures: real instruments (one process each, five CA servers) on loopback.

At start-up the session reserves a block of free ports on 127.0.0.1 for several
instruments ("slots") and exports one Channel Access client environment that lists
every server address of every slot (nothing else: no broadcast, no other host). An
instrument runs in a free slot with a random PV prefix and is stopped by PID, so two
test runs on one machine never collide and no test reaches beyond loopback.

Instruments are shared (decision 0013): ``instruments.get(specimen=..., seed=...)``
returns the session's running instrument of that configuration, reset to its
start-up state (``SIM:RESET``: beam blanked, bias off, TEM mode, stage home,
pristine specimen), and starts it on first use. Tests run the instrument at
``TEST_TIME_SCALE`` (``$TEMSIMS_TEST_TIME_SCALE``, default 20): every PV and
timestamp keeps nominal values, so timing is asserted on the IOCs' timestamps.
``fresh_instrument`` is for the few tests that need one of their own (a missing
part, a part killed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from instrument_support import TEST_TIME_SCALE, stop_instrument

from temsims.channel_access import CALayout, find_free_base_port
from temsims.ioc.common import repeater_running
from temsims.ioc.launcher import ALL_IOCS, InstrumentProcesses

N_SLOTS = 16
PORTS_PER_SLOT = 10


#: Workers of a ``pytest -n N`` run that get a port block from the controller's
#: reservation (a further worker reserves its own).
MAX_WORKERS = 4
_BLOCK_VARIABLE = "TEMSIMS_TEST_PORT_BLOCK"


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _is_controller(config: pytest.Config) -> bool:
    """True in the process that hands tests to xdist workers (it runs none itself)."""
    return not _is_worker(config) and bool(getattr(config.option, "numprocesses", None)) \
        and getattr(config.option, "dist", "no") != "no"


def _reserve_base_port(config: pytest.Config) -> int:
    """This process's block of ``N_SLOTS`` instrument slots.

    Under xdist the controller reserves one block for ``MAX_WORKERS`` workers before
    they start and each takes its own part of it by worker number, so that two
    workers never pick overlapping ports (a check-then-bind per worker could).
    """
    span = N_SLOTS * PORTS_PER_SLOT
    if _is_worker(config):
        number = int(config.workerinput["workerid"].removeprefix("gw"))
        block = os.environ.get(_BLOCK_VARIABLE)
        if block is not None and number < MAX_WORKERS:
            return int(block) + number * span
    return find_free_base_port(span)


class SlotPool:
    """Free CA port layouts for the instruments started by tests."""

    def __init__(self, base: int) -> None:
        self.layouts = [CALayout(base_port=base + i * PORTS_PER_SLOT) for i in range(N_SLOTS)]
        self.free = list(range(N_SLOTS))

    def client_environment(self) -> dict[str, str]:
        env = self.layouts[0].client_environment()
        env["EPICS_CA_ADDR_LIST"] = " ".join(lay.address_list() for lay in self.layouts)
        return env

    def take(self) -> tuple[int, CALayout]:
        if not self.free:
            raise RuntimeError(f"all {N_SLOTS} IOC slots are in use")
        slot = self.free.pop(0)
        return slot, self.layouts[slot]

    def give_back(self, slot: int) -> None:
        # Last in line: a new instrument gets the ports that rested longest (the
        # client may still be dropping its circuits to the stopped one).
        self.free.append(slot)


_POOL: SlotPool | None = None
_REPEATER: subprocess.Popen | None = None


def _repeater_log() -> Path:
    return Path(tempfile.gettempdir()) / f"temsims-test-repeater-{os.getpid()}.log"


def pytest_configure(config: pytest.Config) -> None:
    """Export the loopback CA environment before any CA context exists."""
    global _POOL, _REPEATER
    os.environ.setdefault("TEMSIMS_CATALOG_HOST_IDLE_S", "20")
    if _is_controller(config):
        # Workers inherit the environment: their port blocks and the catalog host's
        # idle time. The controller itself talks to no instrument.
        os.environ[_BLOCK_VARIABLE] = str(
            find_free_base_port(MAX_WORKERS * N_SLOTS * PORTS_PER_SLOT))
        return
    _POOL = SlotPool(_reserve_base_port(config))
    os.environ.update(_POOL.client_environment())
    os.environ.setdefault("OPHYD_CONTROL_LAYER", "caproto")
    # The client-side repeater, bound to loopback (caproto would spawn one on 0.0.0.0).
    log = _repeater_log()
    with open(log, "wb") as out:
        _REPEATER = subprocess.Popen(
            [sys.executable, "-c",
             "from caproto.sync.repeater import run; run(host='127.0.0.1')"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    # Until it listens, caproto's sync client would spawn its own repeater on 0.0.0.0.
    layout = _POOL.layouts[0]
    deadline = time.monotonic() + 20
    while not repeater_running(layout.host, layout.repeater_port):
        if time.monotonic() > deadline or _REPEATER.poll() is not None:
            raise RuntimeError(
                f"the loopback CA repeater on {layout.host}:{layout.repeater_port} did not "
                f"start (exit code {_REPEATER.poll()}); its output, {log}:\n"
                + log.read_text(errors="replace")[-2000:])
        time.sleep(0.02)


def pytest_unconfigure(config: pytest.Config) -> None:
    from temsims.catalog import stop_catalog_host

    # The catalog host (decision 0014) is shared by every process of the run: it is
    # stopped by PID once, by the process that ends last (the controller under xdist).
    if not _is_worker(config):
        stop_catalog_host()
    if _REPEATER is not None and _REPEATER.poll() is None:
        _REPEATER.terminate()
        _REPEATER.wait(timeout=5)
        _repeater_log().unlink(missing_ok=True)


@pytest.fixture(scope="session")
def slot_pool() -> SlotPool:
    assert _POOL is not None
    return _POOL


def _random_prefix() -> str:
    return f"T{uuid.uuid4().hex[:6].upper()}:"


@pytest.fixture(scope="session")
def ioc_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ioc-logs")


@pytest.fixture(scope="session")
def start_instrument(
    slot_pool: SlotPool, ioc_log_dir: Path
) -> Iterator[Callable[..., InstrumentProcesses]]:
    """Factory: ``start_instrument(iocs=..., specimen=..., seed=...)`` -> running IOCs.

    ``instrument_prefix`` (default a random ``T<hex>:``) and ``part_prefixes``
    (``{part: PV prefix}``) serve it under other PV names. ``calibration_errors``
    (``--calibration-errors``) is ``"none"`` unless a test asks for ``"typical"``:
    most modules test other physics (counts, ratios, depth, faults, the catalog)
    against the simulator's truth at the recorded position, and the geometry errors
    would only add a calibration to each; the modules that score the correlative
    pipeline (the particle search, the correlative plan, registration, the demo)
    run with the instrument's default errors and calibrate as a lab does
    (``instrument_support.calibrated``; decision 0042's 2026-12-05 amendment). Everything started through it
    is stopped by PID when the session ends, or earlier with :func:`stop_instrument`.
    """
    started: list[tuple[int, InstrumentProcesses]] = []

    def _start(
        iocs=ALL_IOCS, specimen: str = "li2co3-particles", seed: int = 1,
        extra_args: dict[str, list[str]] | None = None,
        time_scale: float = TEST_TIME_SCALE, instrument_prefix: str | None = None,
        part_prefixes: dict[str, str] | None = None, calibration_errors: str = "none",
        wait: bool = True,
    ) -> InstrumentProcesses:
        slot, layout = slot_pool.take()
        prefix = instrument_prefix or _random_prefix()
        procs = InstrumentProcesses(
            layout=layout, instrument_prefix=prefix, specimen=specimen, seed=seed,
            iocs=tuple(iocs), log_dir=ioc_log_dir / prefix.rstrip(":"),
            extra_args=extra_args or {}, time_scale=time_scale,
            part_prefixes=dict(part_prefixes or {}), calibration_errors=calibration_errors,
        )
        try:
            procs.launch()
        except Exception:
            slot_pool.give_back(slot)
            raise
        procs._slot = slot  # type: ignore[attr-defined]
        started.append((slot, procs))
        return _finish(procs) if wait else procs

    def _finish(procs: InstrumentProcesses) -> InstrumentProcesses:
        try:
            procs.finish_start(timeout=60)
        except Exception:
            stop_instrument(procs, slot_pool)  # by PID; the slot goes back
            raise
        finally:
            os.environ.update(slot_pool.client_environment())
        return procs

    # ``start_instrument(..., wait=False)`` returns at once (the process started, not
    # yet answering): ``start_instrument.finish(procs)`` waits for it.
    _start.finish = _finish  # type: ignore[attr-defined]
    yield _start
    for _slot, procs in started:
        stop_instrument(procs, slot_pool)


#: Instruments a worker keeps running for later modules besides those the current
#: module uses: an idle instrument costs 7.5 % of a core (its parts' update loops), and
#: a full run used ~10 configurations per worker, kept to the end.
MAX_IDLE_INSTRUMENTS = 2
#: ``InstrumentPool.get()``'s key with no arguments.
_DEFAULT_KEY = ("li2co3-particles", 1, tuple(ALL_IOCS), (), float(TEST_TIME_SCALE), "shared",
                "none")
#: The test module being set up or run (node id of its file).
_CURRENT_MODULE = ""


class InstrumentPool:
    """The session's shared instruments, one per configuration, reset on every get.

    At most :data:`MAX_IDLE_INSTRUMENTS` not used by the current test module stay
    running; the least recently used others are stopped (by PID) when a new one
    starts, and started again if a later module asks for them.
    """

    def __init__(self, start: Callable[..., InstrumentProcesses],
                 stop: Callable[[InstrumentProcesses], None]) -> None:
        self._start = start
        self._stop = stop
        self._running: dict[tuple, InstrumentProcesses] = {}
        self._last_module: dict[tuple, str] = {}
        #: Instruments :meth:`prestart` launched that no ``get`` has waited for yet.
        self._starting: set[tuple] = set()
        #: Wall seconds the last ``get`` of a configuration waited for it to start
        #: (cold, or launched by :meth:`prestart`); by instrument prefix.
        self.start_wait_s: dict[str, float] = {}

    @staticmethod
    def _key(specimen: str = "li2co3-particles", seed: int = 1, iocs=ALL_IOCS,
             extra_args: dict[str, list[str]] | None = None,
             time_scale: float = TEST_TIME_SCALE, purpose: str = "shared",
             calibration_errors: str = "none") -> tuple:
        extra = tuple(sorted((k, tuple(v)) for k, v in (extra_args or {}).items()))
        return (specimen, seed, tuple(iocs), extra, float(time_scale), purpose,
                calibration_errors)

    def _alive(self, key: tuple) -> InstrumentProcesses | None:
        procs = self._running.get(key)
        if procs is None or procs.process is None or procs.process.poll() is not None:
            return None
        return procs

    def prestart(self, **config) -> None:
        """Launch the instrument of ``config`` (:meth:`get`'s keywords) without waiting
        for it, unless it runs: a module that will need several starts them side by
        side, and their start-up (~2-4 s each, an interpreter and a specimen) runs
        while it tests on another. :meth:`get` then waits for it to answer."""
        key = self._key(**config)
        if self._alive(key) is not None:
            return
        self._stop_idle(keep=key)
        kwargs = {k: v for k, v in config.items() if k != "purpose"}
        self._running[key] = self._start(**kwargs, wait=False)
        self._starting.add(key)
        self._last_module.pop(key, None)
        self._last_module[key] = _CURRENT_MODULE

    def get(self, *, specimen: str = "li2co3-particles", seed: int = 1, iocs=ALL_IOCS,
            extra_args: dict[str, list[str]] | None = None,
            time_scale: float = TEST_TIME_SCALE, purpose: str = "shared",
            calibration_errors: str = "none") -> InstrumentProcesses:
        """The running instrument of this configuration, reset (started on first use).

        ``purpose`` keeps instruments apart that would otherwise be shared: the IOC
        tests kill and hang parts of theirs, which would make the devices other
        modules keep connected to the shared one reconnect.
        """
        key = self._key(specimen, seed, iocs, extra_args, time_scale, purpose,
                        calibration_errors)
        t0 = time.monotonic()
        if key in self._starting:
            # Launched by prestart: wait for it to answer (a fresh start: no reset).
            self._starting.discard(key)
            procs = self._start.finish(self._running.pop(key))
            self._running[key] = procs
            self.start_wait_s[procs.instrument_prefix] = time.monotonic() - t0
        elif (procs := self._alive(key)) is None:
            self._stop_idle(keep=key)
            procs = self._start(iocs=iocs, specimen=specimen, seed=seed,
                                extra_args=extra_args, time_scale=time_scale,
                                calibration_errors=calibration_errors)
            self._running[key] = procs
            self.start_wait_s[procs.instrument_prefix] = time.monotonic() - t0
        else:
            procs.reset()
        self._last_module.pop(key, None)
        self._last_module[key] = _CURRENT_MODULE  # (dicts keep insertion order)
        return procs

    def _stop_idle(self, keep: tuple) -> None:
        # The default one is the session's ``instrument`` fixture's: never stopped.
        idle = [key for key, module in self._last_module.items()
                if module != _CURRENT_MODULE and key not in (keep, _DEFAULT_KEY)]
        for key in idle[:max(0, len(idle) - MAX_IDLE_INSTRUMENTS + 1)]:
            self._last_module.pop(key)
            self._starting.discard(key)
            procs = self._running.pop(key, None)
            if procs is not None:
                self._stop(procs)


@pytest.fixture(scope="session")
def instruments(start_instrument, slot_pool) -> InstrumentPool:
    """``instruments.get(specimen=..., seed=..., ...)``: a shared instrument, reset."""
    return InstrumentPool(start_instrument, lambda procs: stop_instrument(procs, slot_pool))


#: Seconds each of the long test modules took (setup, calls and teardown, summed per
#: module from the JUnit XML of a full 2-worker ``bash run.sh test``, 2026-12-05, load
#: 3-7; others < 10 s). Only their order matters. Later the same day (decision 0048):
#: test_correlative, test_part_faults and catalog/test_writer less what their changes
#: saved alone (~3-8, ~6 and ~3 s), and the three unlisted modules over 10 s, measured
#: alone at load ~6
#: (JUnit of one ``-p no:xdist`` process over the 54 unlisted modules: 204 s in all).
#: run.sh hands modules to the xdist workers in collection order
#: (``--no-loadscope-reorder``: xdist's default orders them by their number of tests,
#: which put the 1-test catalog/test_demo_on_postgres.py last, one worker running it
#: alone at the end), and
#: :func:`pytest_collection_modifyitems` collects the longest first: the short ones then
#: fill in at the end, so that both workers finish together.
MODULE_SECONDS = {
    "test_demo_all.py": 137, "plans/test_correlative.py": 116, "catalog/test_serve.py": 74,
    "test_queue.py": 61, "faults/test_interlock_fuzz.py": 57,
    "faults/test_part_faults.py": 48, "faults/test_storage_faults.py": 54,
    "catalog/test_demo_on_postgres.py": 50, "test_session.py": 50,
    "catalog/test_writer.py": 42, "analysis/test_particles.py": 45, "test_lifecycle.py": 44,
    "faults/test_control.py": 39, "catalog/test_databroker_habits.py": 29,
    "ioc/test_motor_record_calibration.py": 28, "catalog/test_open.py": 28,
    "catalog/test_instrument_readback.py": 21, "ioc/test_time_scale.py": 20,
    "faults/test_bad_input.py": 20, "plans/test_dead_time.py": 19,
    "devices/test_connect.py": 19, "devices/test_plans.py": 18,
    "plans/test_raster_calibration.py": 18, "faults/test_arcs.py": 17,
    "ioc/test_spectrometer.py": 16, "plans/test_other_instrument.py": 16,
    "test_loaders.py": 16, "plans/test_plans_sims.py": 15,
    "catalog/test_roundtrip_and_queries.py": 15, "ioc/test_tem.py": 14,
    "plans/test_calibration.py": 13, "test_document_stream.py": 12, "test_cli.py": 11,
    "ioc/test_sputtering.py": 10, "analysis/test_parallax.py": 13,
    "analysis/test_registration.py": 25, "analysis/test_depth.py": 19,
    "callbacks/test_export.py": 15,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest modules first (:data:`MODULE_SECONDS`), each module's tests together
    and in their order."""
    tests = Path(__file__).parent
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        first.setdefault(item.nodeid.split("::", 1)[0], i)

    def key(item: pytest.Item) -> tuple[float, int]:
        module = item.nodeid.split("::", 1)[0]
        try:
            name = Path(item.path).relative_to(tests).as_posix()
        except ValueError:
            name = module
        return -MODULE_SECONDS.get(name, 0), first[module]

    items.sort(key=key)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failure's report names the fresh seeds this worker drew (tests/scoring.py), so
    that it can be reproduced even when the fixture that drew them printed its entropy
    with an earlier test."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        from scoring import DRAWN, ENTROPY_ENV

        if DRAWN:
            report.sections.append(("fresh seeds drawn by this worker", "\n".join(
                f"{what}: {ENTROPY_ENV}={entropy}" for what, entropy in DRAWN)))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Which module asks: the pool stops only instruments other modules used last.
    global _CURRENT_MODULE
    _CURRENT_MODULE = item.nodeid.split("::", 1)[0]


@pytest.fixture(scope="session")
def instrument(instruments) -> InstrumentProcesses:
    """All five parts on ``li2co3-particles`` (seed 1), shared by the session.

    Reset when the session first gets it; modules that change its state use
    ``instruments.get()`` for a reset one, or restore what they change.
    """
    return instruments.get()


@pytest.fixture
def fresh_instrument(start_instrument, slot_pool) -> Iterator[Callable[..., InstrumentProcesses]]:
    """Factory like ``start_instrument`` whose instrument stops when the test ends."""
    mine: list[InstrumentProcesses] = []

    def _start(**kwargs) -> InstrumentProcesses:
        procs = start_instrument(**kwargs)
        mine.append(procs)
        return procs

    yield _start
    for procs in mine:
        stop_instrument(procs, slot_pool)
