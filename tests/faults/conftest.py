"""Fixtures of the fault tests that run on one bench per module (test_arcs.py,
test_control.py): the fault tests' own instrument, one RunEngine with the suspenders
and one catalog for the module, and per test that bench in SIMS mode at 4500 V.
test_part_faults.py makes its own bench per test."""

from __future__ import annotations

import pytest
from fault_scenarios import make_bench


@pytest.fixture(scope="module")
def fault_instrument(instruments):
    """An instrument of the fault tests' own: parts are killed and hung on it."""
    return instruments.get(specimen="li2co3-particles", seed=1, purpose="faults")


@pytest.fixture(scope="module")
def module_bench(request, fault_instrument, tmp_path_factory):
    from caproto.client import common as client_common
    from instrument_support import connect_fast

    # One RunEngine and catalog for the module: each costs 1.5-5 s to open.
    name = request.module.__name__.rpartition(".")[2]
    b = make_bench(fault_instrument, connect_fast(fault_instrument, camera_size=64),
                   tmp_path_factory.mktemp(name) / "catalog")
    # caproto's client searches for a lost PV ever less often, up to every 5 s: a
    # part back after 1 s was found again 6-7 s later. Searching every 0.25 s at most
    # finds it within a second; the benchmark keeps caproto's default.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(client_common, "MAX_RETRY_SEARCHES_INTERVAL", 0.25)
        yield b
    b.close()


@pytest.fixture
def sims_bench(module_bench, fault_instrument):
    from instrument_support import connect_fast

    from temsims.plans import to_sims_mode

    b = module_bench
    connect_fast(fault_instrument, camera_size=64)  # a reset restores the slow ramps
    b.RE(to_sims_mode(b.d.mode, voltage_v=4500.0))
    yield b
    if b.RE.state != "idle":  # a failed test must not leave the next one paused
        b.RE.abort("test teardown")
    fault_instrument.reset()
