"""A part dies or hangs mid-run: the run suspends, the instrument is made safe, and
when the part is back the run resumes and stores a complete map (issue 14, item 1).

Real instrument, real CA, a real catalog; the part is killed or hung through
``SIM:<PART>`` (decision 0013: to a client exactly a SIGKILLed / SIGSTOPped IOC).
Figures are printed (``-s``) and collected by benchmarks/fault_benchmark.py.
"""

from __future__ import annotations

import pytest
from fault_scenarios import (
    HUNG_AFTER_S,
    fly_map_with_part_fault,
    instrument_safe,
    make_bench,
    mosaic_with_stage_fault,
)


@pytest.fixture(scope="module")
def fault_instrument(instruments):
    """An instrument of the fault tests' own: parts are killed and hung on it."""
    return instruments.get(specimen="li2co3-particles", seed=1, purpose="faults")


@pytest.fixture(scope="module")
def fdev(fault_instrument):
    from instrument_support import connect_fast

    return connect_fast(fault_instrument, camera_size=64)


@pytest.fixture(scope="module")
def fault_catalog(tmp_path_factory):
    """One catalog for the module's runs (each test reads back its own run by uid): a
    new directory's catalog costs ~1.5 s to open, the first in a process ~4.5 s."""
    from temsims.catalog import open_catalog

    cat = open_catalog(tmp_path_factory.mktemp("part_faults") / "catalog")
    yield cat
    cat.close(timeout=60)


@pytest.fixture
def bench(fault_instrument, fdev, fault_catalog):
    """A RunEngine with the suspenders, and a writer, of the test's own."""
    b = make_bench(fault_instrument, fdev, catalog=fault_catalog)
    yield b
    b.close()


@pytest.fixture
def sims_bench(bench):
    from temsims.plans import to_sims_mode

    bench.RE(to_sims_mode(bench.d.mode, voltage_v=4500.0))
    assert bench.d.mode.infer() == "SIMS"
    yield bench
    bench.procs.reset()


def _report(fig: dict) -> None:
    print(f"\n{fig['part']} {fig['kind']} during {fig['plan']}: detected in "
          f"{fig['detect_s']:.3f} s ({fig['state']}), safe while suspended: "
          f"{fig.get('safe_while_suspended')}, {fig['events']}/{fig['expected']} lines, "
          f"lost {fig['lost']}, duplicated {fig['duplicated']}, exit {fig['exit_status']}, "
          f"{fig['wall_s']:.1f} s")


@pytest.mark.parametrize("kind", ["Dead", "Hung"])
def test_spectrometer_fault_mid_fly_map_suspends_and_resumes_complete(sims_bench, kind):
    fig = fly_map_with_part_fault(sims_bench, "spectrometer", kind)
    _report(fig)
    # Detected while the map ran (a fault after the run's end suspends nothing).
    assert fig["run_state_at_detection"] in ("running", "suspending"), fig
    assert fig["detected"] and kind.lower() in fig["states"], fig["states"]
    if kind == "Dead":
        assert fig["dead_detect_s"] < 1.0  # the circuit drops at once
    else:  # no heartbeat for HUNG_AFTER_S; beats come once a second
        assert fig["detect_s"] < HUNG_AFTER_S + 1.5
    assert fig["safe_while_suspended"], fig.get("unsafe_state")
    assert fig["exit_status"] == "success"
    assert fig["complete"] and fig["lost"] == 0 and fig["duplicated"] == 0
    assert fig["events"] == fig["expected"]


@pytest.mark.parametrize("kind", ["Dead", "Hung"])
def test_stage_fault_mid_mosaic_suspends_and_resumes_complete(bench, kind):
    fig = fly = mosaic_with_stage_fault(bench, kind)
    del fly
    print(f"\nstage {kind} during tem_mosaic: detected in {fig['detect_s']:.3f} s, "
          f"{fig['events']}/{fig['expected']} tiles, lost {fig['lost']}, duplicated "
          f"{fig['duplicated']}, {fig['wall_s']:.1f} s")
    assert fig["detected"] and kind.lower() in fig["states"], fig["states"]
    assert fig["exit_status"] == "success"
    assert fig["complete"] and fig["lost"] == 0 and fig["duplicated"] == 0
    assert fig["events"] == fig["expected"]


def test_instrument_safe_helper_reads_the_devices(bench):
    assert instrument_safe(bench.d)  # a reset instrument: beam blanked, bias off


def test_without_suspenders_a_hung_spectrometer_fails_the_map_in_bounded_time(
        fault_instrument, fdev, monkeypatch):
    """No suspenders (a bare RunEngine): the spectrometer hangs mid-frame, the column
    rasters the frame to its end (4 s: a hang asked for at line 8 of a shorter frame
    landed after its last line 1 run in 5), and the frame fails once the spectrometer has
    neither counted it nor sent a line for FRAME_COUNT_TIMEOUT_S, naming that; the
    plan used to collect every 0.2 s for ever."""
    import threading
    import time

    from bluesky import RunEngine
    from fault_scenarios import on_line

    from temsims.devices import imager as imager_module
    from temsims.plans import sims_map, to_sims_mode

    monkeypatch.setattr(imager_module, "FRAME_COUNT_TIMEOUT_S", 2.0)
    d = fdev
    RE = RunEngine({}, call_returns_result=True)
    RE(to_sims_mode(d.mode, voltage_v=4500.0))
    token = on_line(d.imager, 8, lambda: threading.Thread(
        target=fault_instrument.set_part, args=("spectrometer", "Hung"), daemon=True).start())
    t0 = time.monotonic()
    try:
        with pytest.raises(Exception) as info:  # noqa: PT011 - the message is asserted
            RE(sims_map(d.imager, d.spectrometer, d.column, d.stage, d.bias,
                        species=("6Li", "7Li"), fov_um=1.0, pixels=(16, 128), dwell_s=0.04))
        elapsed = time.monotonic() - t0
    finally:
        d.imager.lines_done.unsubscribe(token)
        fault_instrument.set_part("spectrometer", "Up")
        fault_instrument.reset()
    chain, exc = [], info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    print(f"\nhung spectrometer, no suspenders: failed after {elapsed:.1f} s: {chain[-1]}")
    assert any("has neither counted it nor sent a line for 2 s" in m for m in chain), chain
    assert elapsed < 25.0  # a 4 s frame, 2 s without lines, the safe state
    assert str(d.column.blank.get()) == "Blanked"  # the plan's safe state ran
