"""Fixtures: real IOCs in subprocesses on loopback, each run on its own ports.

At start-up the session reserves a block of free ports on 127.0.0.1 for a few
instruments ("slots") and exports one Channel Access client environment that lists
every IOC address of every slot (nothing else: no broadcast, no other host). Each
IOC fixture starts its processes in a free slot with a random PV prefix and stops
them by PID at teardown, so two test runs on one machine never collide and no test
reaches beyond loopback. Pattern: caproto's own ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from instrument_support import stop_instrument

from temsims.channel_access import CALayout, find_free_base_port
from temsims.ioc.common import repeater_running
from temsims.ioc.launcher import ALL_IOCS, InstrumentProcesses

N_SLOTS = 4
PORTS_PER_SLOT = 10


def _reserve_base_port() -> int:
    return find_free_base_port(N_SLOTS * PORTS_PER_SLOT)


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
        self.free.insert(0, slot)


_POOL: SlotPool | None = None
_REPEATER: subprocess.Popen | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Export the loopback CA environment before any CA context exists."""
    global _POOL, _REPEATER
    _POOL = SlotPool(_reserve_base_port())
    os.environ.update(_POOL.client_environment())
    os.environ.setdefault("OPHYD_CONTROL_LAYER", "caproto")
    # The client-side repeater, bound to loopback (caproto would spawn one on 0.0.0.0).
    _REPEATER = subprocess.Popen(
        [sys.executable, "-c", "from caproto.sync.repeater import run; run(host='127.0.0.1')"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    # Until it listens, caproto's sync client would spawn its own repeater on 0.0.0.0.
    layout = _POOL.layouts[0]
    deadline = time.monotonic() + 10
    while not repeater_running(layout.host, layout.repeater_port):
        if time.monotonic() > deadline:
            raise RuntimeError("the loopback CA repeater did not start")
        time.sleep(0.02)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _REPEATER is not None and _REPEATER.poll() is None:
        _REPEATER.terminate()
        _REPEATER.wait(timeout=5)


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

    Everything started through it is stopped by PID when the session ends, or
    earlier with :func:`stop_instrument`.
    """
    started: list[tuple[int, InstrumentProcesses]] = []

    def _start(
        iocs=ALL_IOCS, specimen: str = "li2co3-particles", seed: int = 1,
        extra_args: dict[str, list[str]] | None = None,
    ) -> InstrumentProcesses:
        slot, layout = slot_pool.take()
        prefix = _random_prefix()
        procs = InstrumentProcesses(
            layout=layout, instrument_prefix=prefix, specimen=specimen, seed=seed,
            iocs=tuple(iocs), log_dir=ioc_log_dir / prefix.rstrip(":"),
            extra_args=extra_args or {},
        )
        try:
            procs.start(timeout=60)
        except Exception:
            slot_pool.give_back(slot)
            raise
        finally:
            os.environ.update(slot_pool.client_environment())
        procs._slot = slot  # type: ignore[attr-defined]
        started.append((slot, procs))
        return procs

    yield _start
    for _slot, procs in started:
        stop_instrument(procs, slot_pool)


@pytest.fixture(scope="session")
def instrument(start_instrument) -> InstrumentProcesses:
    """All five IOCs on ``li2co3-particles`` (seed 1), shared by the session.

    Tests that leave state behind must restore it, or use ``start_instrument``.
    """
    return start_instrument()


@pytest.fixture
def fresh_instrument(start_instrument, slot_pool) -> Iterator[Callable[..., InstrumentProcesses]]:
    """Factory like ``start_instrument`` whose IOCs stop when the test ends."""
    mine: list[InstrumentProcesses] = []

    def _start(**kwargs) -> InstrumentProcesses:
        procs = start_instrument(**kwargs)
        mine.append(procs)
        return procs

    yield _start
    for procs in mine:
        stop_instrument(procs, slot_pool)
