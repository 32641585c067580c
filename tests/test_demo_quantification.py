"""``temsims demo --case quantification --quick`` in a subprocess, scored against the twin.

One end-to-end run on a fresh seed (``tests/scoring.py``: drawn at run time, printed,
``TEMSIMS_TEST_ENTROPY`` reproduces it): the EDX line, the calibration map and the
quantified map are stored under one correlation id, the report (read back from the
catalog) is written and not blank, and the quantified Cu profile of the quantified
map, an absolute concentration from the EDX-calibrated RSF, matches the
``diffusion-couple`` truth from 10 at.% down to 0.1 at.%, below the EDX detection
limit.

The instrument runs at time scale 20 with the drift at 3 / 20 nm/min: the specimen
then drifts per wall second as it does at time scale 1 (README), where the seconds of
start-up, catalog and RunEngine before the maps are real seconds; at 20 x the default
3 nm/min those seconds alone drift the maps 8-13 nm off the EDX line, +7-10 % at
0.1 at.% (decision 0031).

The scored figure, p90 over seeds of the worst error over 0.1-10 at.% (< 10 %), is
``benchmarks/quantification_case_benchmark.py``'s (>= 10 seeds); one seed here is held
to 12 %, as ``tests/plans/test_calibration.py`` holds its single pair.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from demo_support import TIME_SCALE, run_demo, starts_of
from scoring import fresh_rng, score_quantified_profile

FILES = ("quantification_calibration.png", "quantification_profile.png",
         "quantification_map.png")
#: Drift per nominal minute that drifts per wall second as the default does at scale 1.
DRIFT_NM_PER_MIN = 3.0 / TIME_SCALE
#: One seed's worst error over 0.1-10 at.% (the p90 over seeds is the benchmark's).
SINGLE_SEED_WORST = 0.12


@pytest.mark.slow
def test_demo_quantification_quick_matches_the_couple(slot_pool, tmp_path):
    seed = int(fresh_rng("test_demo_quantification").integers(1, 10**6))
    print(f"diffusion-couple seed {seed}")
    run = run_demo(slot_pool, tmp_path, "--case", "quantification", "--quick", "--seed",
                   str(seed), "--drift-nm-per-min", f"{DRIFT_NM_PER_MIN:g}")
    assert run.proc.returncode == 0, run.failure()
    assert run.wall_s < 180
    assert "IOCs stopped" in run.stdout and "specimen diffusion-couple" in run.stdout
    import matplotlib.image as mpimg

    for name in FILES:
        img = mpimg.imread(run.out / name)
        assert img.ndim == 3 and float(np.std(img)) > 0.0, name
        assert str(run.out / name) in run.stdout, name

    report = json.loads((run.out / "report.json").read_text())
    assert report["source"] == "catalog" and report["specimen"] == "diffusion-couple"
    cid = report["correlation_ids"]["quantification"]
    starts = starts_of(run.catalog, cid)
    roles = sorted((s.get("calibration") or s.get("quantification") or {}).get("role", "")
                   for s in starts)
    assert roles == ["edx_line", "quantified_map", "sims_map"], roles
    assert {s["correlation_id"] for s in starts} == {cid}
    assert {s["specimen"] for s in starts} == {"diffusion-couple"}
    q = next(s for s in starts if "quantification" in s)
    assert q["quantification"]["calibration_id"] == report["calibration"]["calibration_id"]

    # Where EDX stops and SIMS continues: EDX quantitative down to a few tenths of an
    # at.%, the quantified map's bins detected far beyond it.
    dl = report["edx_detection_limit_fraction"]
    stop, cont = report["edx_stops"], report["sims_continues_to"]
    assert 1e-3 < dl < 1e-2, dl
    assert stop["x_nm"] is not None and cont["x_nm"] is not None
    assert cont["x_nm"] > stop["x_nm"] + 300.0 and cont["concentration"] < dl / 10

    worst = {}
    for key in ("quantified_profile", "calibration_profile"):
        s = score_quantified_profile(report[key], seed)
        worst[key] = s
        print(f"{key}: worst |C/C_true - 1| over 0.1-10 at.% {100 * s['worst']:.1f} % at "
              f"x = {s['worst_x_nm']:.0f} nm ({s['n']} bins, mean {100 * s['mean']:+.1f} %, "
              f"rms z {s['rms_z']:.2f})")
        assert s["n"] >= 20 and s["nan"] == 0, s
        assert s["worst"] < SINGLE_SEED_WORST, (key, s)
        # The stated errors describe the scatter (bias included) within a factor 3.
        assert s["rms_z"] < 3.0, (key, s)
    # Part of the scored band is below the EDX limit (~0.2 at.%: 0.1-0.2 at.% is ~130 nm
    # of the couple, three 40 nm bins), and the map quantifies far below it.
    qp = report["quantified_profile"]
    c = np.array([np.nan if v is None else v for v in qp["concentration"]], float)
    assert np.sum((c > 1e-3) & (c < dl)) >= 2
    assert report["quantified_below_edx_limit"]["bins"] >= 10
