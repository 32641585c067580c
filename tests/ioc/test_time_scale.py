"""The simulated clock: a map at time scale 20 holds the counts of the same map at 1,
and takes about 1/20 of the wall time; the IOCs' timestamps keep nominal durations."""

from __future__ import annotations

import numpy as np
import pytest
from catools import Monitor
from test_spectrometer import Client, move_stage, sims_geometry

NX, NY, DWELL_S = 64, 48, 2e-3  # 6.1 s of beam
SPECIMEN_AREA_UM = (0.4, -0.3)


def _map(procs) -> tuple[list[np.ndarray], float, float]:
    """One frame over a particle-rich field: the maps, the wall time from the put to
    the counted frame, and the frame's duration on the IOC's own timestamps."""
    c = Client(procs.instrument_prefix)
    sims_geometry(c, current="100 pA")
    move_stage(c, *SPECIMEN_AREA_UM)
    c.put("FIB:SCAN:FOV", 4.0)
    c.put("MS:MODE", "Imaging")
    progress = Monitor(procs.prefix("column") + "SCAN:ACQUIRE_RBV")
    try:
        wall = c.raster(NX, NY, DWELL_S)
        progress.wait_for(lambda updates: len(updates) >= 3)
        # Start -> Stop of the column's raster, stamped by the instrument's clock.
        stamps = [t for t, _ in progress.updates if t is not None]
        nominal = stamps[-1] - stamps[-2] if len(stamps) >= 2 else float("nan")
    finally:
        progress.clear()
    maps = [np.asarray(c.get(f"MS:COL{n}:MAP")).reshape(NY, NX) for n in (1, 2)]
    return maps, wall, nominal


@pytest.mark.slow
def test_a_map_at_time_scale_20_has_the_counts_of_real_time_in_a_20th_of_the_time(
        instruments):
    drift0 = {"spectrometer": ["--drift-nm-per-min", "0"]}
    slow = instruments.get(extra_args=drift0, time_scale=1.0)
    maps1, wall1, nominal1 = _map(slow)
    fast = instruments.get(extra_args=drift0, time_scale=20.0)
    maps20, wall20, nominal20 = _map(fast)
    beam_s = NX * NY * DWELL_S
    print(f"map {NX}x{NY} at {DWELL_S} s: wall {wall1:.2f} s at 1, {wall20:.2f} s at 20 "
          f"(ratio {wall1 / wall20:.1f}); nominal {nominal1:.3f} / {nominal20:.3f} s")
    for name, m1, m20 in zip(("6Li", "7Li"), maps1, maps20, strict=True):
        n1, n20 = float(m1.sum()), float(m20.sum())
        assert n1 > 1000, f"{name}: too few counts to compare ({n1})"
        # Same expectation, independent Poisson draws.
        assert abs(n1 - n20) < 4 * np.sqrt(n1 + n20), (name, n1, n20)
        var = m1 + m20
        ok = var > 0
        chi2 = float(((m1 - m20)[ok] ** 2 / var[ok]).mean())
        assert chi2 < 1.3, (name, chi2)
    # The raster keeps its nominal duration on the IOC clock at both scales.
    assert nominal1 == pytest.approx(beam_s, rel=0.02)
    assert nominal20 == pytest.approx(beam_s, rel=0.02)
    assert wall1 >= beam_s * 0.98
    # "About 1/20": the frame's own time scales; a fixed few-ms overhead does not.
    assert wall1 / wall20 > 10.0
    assert wall20 < beam_s / 20 + 0.5
