"""``temsims demo --case cathode --quick`` in a subprocess, scored against the twin.

One end-to-end run on a seed drawn at run time (printed): it finishes well under the
case's three minutes, stores its runs under one correlation id, writes a report that
is not blank, and recovers the twin's truth (``livo-cathode``'s recipe): the V decay
length in the LiPON and the V level at its interface within 1.5 x their stated 95 %
intervals (3 sigma: one seed), each interface's SIMS position within one SIMS pixel of the TEM one, and
the TEM one within a TEM pixel of the truth. The sweep over >= 10 seeds (the issue's
">= 90 % of seeds") is ``benchmarks/cathode_case_benchmark.py``.
"""

from __future__ import annotations

import inspect
import json
import random

import numpy as np
import pytest
from demo_support import run_demo, starts_of

FILES = ("cathode_published.png", "cathode_sims_maps.png", "cathode_profiles.png")


def _truth(seed: int, x_lo_um: float, x_hi_um: float) -> dict:
    from temsims.ioc.physics.specimen import build_specimen, livo_cathode

    defaults = {k: p.default for k, p in inspect.signature(livo_cathode).parameters.items()}
    spec = build_specimen("livo-cathode", seed)
    x = spec.x_nm() / 1e3
    cols = (x >= x_lo_um) & (x <= x_hi_um)
    return {"decay_nm": defaults["v_in_lipon_decay_nm"], "level": defaults["v_in_lipon"],
            "y_um": {k: float(np.mean(np.asarray(v)[cols])) / 1e3
                     for k, v in spec.truth["interfaces_y_nm"].items()}}


@pytest.mark.slow
def test_demo_cathode_quick_recovers_the_twins_truth(slot_pool, tmp_path):
    seed = random.randrange(1, 10**6)
    print(f"\nlivo-cathode seed {seed}")
    run = run_demo(slot_pool, tmp_path, "--case", "cathode", "--quick", "--seed", str(seed))
    out = run.out
    assert run.proc.returncode == 0, run.failure()
    assert run.wall_s < 180
    assert "IOCs stopped" in run.stdout and "specimen livo-cathode" in run.stdout
    import matplotlib.image as mpimg

    for name in FILES:
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and float(np.std(img)) > 0.0, name
        assert str(out / name) in run.stdout, name

    report = json.loads((out / "report.json").read_text())
    assert report["source"] == "catalog" and report["specimen"] == "livo-cathode"
    starts = starts_of(run.catalog, report["correlation_ids"]["cathode"])
    roles = sorted(s["correlative"]["role"] for s in starts)
    assert roles == ["overview", "sims_map", "sims_map", "tem_zoom"], roles
    assert {s["specimen"] for s in starts} == {"livo-cathode"}

    fov = report["sizes"]["map_fov_um"]
    cx = report["sizes"]["center_um"][0]
    truth = _truth(seed, cx - fov / 2, cx + fov / 2)
    # One seed: within 1.5 x the stated 95 % interval (3 sigma), so that the test fails
    # on a broken analysis and not in 1 run of 20; the 95 % coverage over seeds is
    # benchmarks/cathode_case_benchmark.py's (10 of 10 seeds).
    decay, level = report["v_decay_length_nm"], report["v_level_lipon_atom_fraction"]
    print(f"decay {decay['value']:.1f} +- {decay['u95']:.1f} nm (truth {truth['decay_nm']}), "
          f"level {level['value']:.4f} +- {level['u95']:.4f} (truth {truth['level']})")
    assert abs(decay["value"] - truth["decay_nm"]) <= 1.5 * decay["u95"], (decay, truth)
    assert abs(level["value"] - truth["level"]) <= 1.5 * level["u95"], (level, truth)
    pixel = report["sims_pixel_nm"]["along_normal"]
    tem_pixel_um = report["sizes"]["overview_fov_um"] / report["sizes"]["camera_size"]
    for name, e in report["interfaces"].items():
        assert e["within_one_pixel"], (name, e)
        assert abs(e["offset_nm"]) <= pixel
        assert abs(e["tem_y_um"] - truth["y_um"][name]) <= tem_pixel_um, (name, e, truth)
        sims_y = e["sims"][e["sims_edge"]]["y_um"]
        assert abs(sims_y - truth["y_um"][name]) <= 1e-3 * pixel, (name, sims_y, truth)
