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


@pytest.fixture
def bench(fault_instrument, fdev, tmp_path):
    b = make_bench(fault_instrument, fdev, tmp_path / "catalog")
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
