"""RunEngine control mid-map (issue 14, item 5), on a real instrument with the
suspenders installed: a pause mid-frame and a resume store a complete map."""

from __future__ import annotations

import threading

import pytest
from fault_scenarios import make_bench, on_line, stored_lines


@pytest.fixture(scope="module")
def fault_instrument(instruments):
    return instruments.get(specimen="li2co3-particles", seed=1, purpose="faults")


@pytest.fixture(scope="module")
def fdev(fault_instrument):
    from instrument_support import connect_fast

    return connect_fast(fault_instrument, camera_size=64)


@pytest.fixture
def sims_bench(fault_instrument, fdev, tmp_path):
    from temsims.plans import to_sims_mode

    b = make_bench(fault_instrument, fdev, tmp_path / "catalog")
    b.RE(to_sims_mode(b.d.mode, voltage_v=4500.0))
    yield b
    b.close()
    fault_instrument.reset()


def _map(b, pixels=(16, 64), dwell_s=0.02):
    from temsims.plans import sims_map

    d = b.d
    return sims_map(d.imager, d.spectrometer, d.column, d.stage, d.bias,
                    species=("6Li", "7Li"), fov_um=1.0, pixels=pixels, dwell_s=dwell_s)


def _pause_at(b, line: int):
    return on_line(b.d.imager, line, lambda: threading.Thread(
        target=b.RE.request_pause, kwargs={"defer": False}, daemon=True).start())


def test_pause_mid_map_then_resume_stores_a_complete_map(sims_bench):
    from bluesky.utils import RunEngineInterrupted

    b = sims_bench
    token = _pause_at(b, 32)
    try:
        with pytest.raises(RunEngineInterrupted):
            b.RE(_map(b))
    finally:
        b.d.imager.lines_done.unsubscribe(token)
    assert b.RE.state == "paused"
    uid = b.RE.resume().plan_result
    fig = stored_lines(b, uid)
    print(f"\npause + resume: {fig['events']}/{fig['expected']} lines, duplicated "
          f"{fig['duplicated']}")
    assert fig["exit_status"] == "success" and fig["complete"] and fig["duplicated"] == 0
