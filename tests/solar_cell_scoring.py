"""The solar-cell case's report scored against the twin: :func:`check_solar_cell` is
what ``tests/test_demo_all.py`` asserts on the solar-cell case of its ``--case all``
run (a fresh seed), :func:`score` what ``benchmarks/solar_cell_case_benchmark.py``
reports over seeds. The runs are stored under one correlation id, the report is
written from the catalog and is not blank, and the figures recover the twin's truth
(``solar-cell``'s recipe, read here only):

- the Na boundary/interior ratio within 20 % of the truth's, the same band around
  the true boundaries over the true interiors, on the specimen's own grid
  (:func:`na_truth`);
- Ga/(In+Ga) of every grain on the In/Ga line within its stated 95 % bound of the
  truth averaged over the very SIMS pixels the grain's figure used (a TEM grain that
  is two true grains is scored against their mixture: the segmentation is scored
  apart, by the share of grains that are one true grain). One seed: every grain
  within 1.5 x its bound (a shift of the In/Ga line moves them all together, so the
  grains of one seed are not independent draws and their 95 % coverage is one draw
  per seed); the coverage and spread over seeds are
  ``benchmarks/solar_cell_case_benchmark.py``'s.
"""

from __future__ import annotations

import json

import numpy as np

FILES = ("solar_cell_grains.png", "solar_cell_depth_profile.png",
         "solar_cell_sims_maps.png", "solar_cell_na_ga.png")


def na_truth(spec, report: dict) -> float:
    """The twin's band / interior Na ratio over the map's area, as the report defines
    it: the mean Na atom fraction within ``band_nm`` of the true boundary line over
    the mean farther than ``interior_nm``."""
    t = spec.truth
    na = np.asarray(t["na_fraction"], float)
    # Distance to the boundary pixels; the line between the two rows of boundary
    # pixels lies half a grid pixel from their centres.
    dist = np.asarray(t["grain_boundary_distance_nm"], float)
    (x0, x1), (y0, y1) = report["map_extent_um"]["x"], report["map_extent_um"]["y"]
    x = spec.x_nm()[None, :] / 1e3
    y = spec.y_nm()[:, None] / 1e3
    inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    r = report["na_boundary_interior_ratio"]
    band = inside & (dist <= r["band_nm"] - spec.pixel_nm / 2)
    interior = inside & (dist > r["interior_nm"])
    return float(na[band].mean() / na[interior].mean())


def ga_truth(spec, grain: dict) -> tuple[float, float]:
    """Truth Ga/(In+Ga) averaged over the grain's SIMS pixels, and the share of those
    pixels in its majority true grain."""
    xy = np.asarray(grain["interior_xy_um"], float) * 1e3
    rows, cols = spec.to_index(xy[:, 0], xy[:, 1])
    rows = np.clip(np.round(rows).astype(int), 0, spec.shape[0] - 1)
    cols = np.clip(np.round(cols).astype(int), 0, spec.shape[1] - 1)
    labels = spec.truth["grains"][rows, cols]
    _, counts = np.unique(labels, return_counts=True)
    return float(spec.truth["ga_ratio"][rows, cols].mean()), float(counts.max() / counts.sum())


def score(report: dict, seed: int) -> dict:
    """One report against the truth of ``solar-cell`` seed ``seed``."""
    from temsims.ioc.physics.specimen import build_specimen

    spec = build_specimen("solar-cell", seed)
    na = report["na_boundary_interior_ratio"]
    na_true = na_truth(spec, report)
    grains = []
    for g in report["ga_fraction_per_grain"]:
        truth, purity = ga_truth(spec, g)
        grains.append({"grain": g["grain"], "value": g["ga_fraction"], "u95": g["u95"],
                       "truth": truth, "error": g["ga_fraction"] - truth,
                       "naive_error": g["naive"] - truth, "purity": purity,
                       "on_line": g["on_line"]})
    return {"na": na["value"], "na_u95": na["u95"], "na_truth": na_true,
            "na_rel_error": na["value"] / na_true - 1.0, "grains": grains}


def check_solar_cell(stdout: str, out, catalog, seed: int) -> dict:
    """Everything a solar-cell run must show: its runs, its report, its figures against
    the twin's truth (also :mod:`test_demo_all`'s check of the ``--case all`` run)."""
    from demo_support import starts_of

    assert "specimen solar-cell" in stdout
    import matplotlib.image as mpimg

    for name in FILES:
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and float(np.std(img)) > 0.0, name
        assert str(out / name) in stdout, name

    report = json.loads((out / "report.json").read_text())
    assert report["source"] == "catalog" and report["specimen"] == "solar-cell"
    starts = starts_of(catalog, report["correlation_ids"]["solar-cell"])
    plans = sorted((s["plan_name"], s["correlative"]["role"]) for s in starts)
    assert plans == [("calibrate_masses", "calibration"), ("depth_profile", "sims_map"),
                     ("sims_map", "calibration"), ("sims_map", "sims_map"),
                     ("tem_image", "overview"), ("tem_image", "tem_zoom")], plans
    assert {s["specimen"] for s in starts} == {"solar-cell"}

    s = score(report, seed)
    print(f"Na band/interior {s['na']:.1f} +- {s['na_u95']:.1f}, truth {s['na_truth']:.1f} "
          f"({100 * s['na_rel_error']:+.1f} %)")
    for g in s["grains"]:
        print(f"grain {g['grain']}: Ga/(In+Ga) {g['value']:.3f} +- {g['u95']:.3f}, truth "
              f"{g['truth']:.3f} (implant left in "
              f"{g['value'] + g['naive_error'] - g['error']:.3f}), purity {g['purity']:.2f}")
    assert abs(s["na_rel_error"]) <= 0.20, s
    fitted = [g for g in s["grains"] if g["on_line"]]
    assert len(fitted) >= 5, s["grains"]
    # One seed: every grain within 1.5 x its bound (3 sigma), not "90 % within 1 x":
    # the bound is mostly the In/Ga line's and the yield's, common to every grain, so
    # the grains of one seed fall in or out together and "within 1 x" is one 95 % draw
    # per run (it failed 1 run in ~17: seed 870233, every grain 0.029-0.042 low with the
    # line's intercept 1.2 x its u95 off). The 95 % coverage is scored over seeds by
    # benchmarks/solar_cell_case_benchmark.py (244 of 244 grains, 10 seeds).
    assert all(abs(g["error"]) <= 1.5 * g["u95"] for g in fitted), fitted
    # The bound means something: it is tighter than what the implant does.
    assert all(abs(g["naive_error"]) > 2 * g["u95"] for g in fitted)
    # The segmentation: most grains the Ga figure uses are one true grain.
    assert np.mean([g["purity"] >= 0.9 for g in fitted]) >= 0.8
    return s

