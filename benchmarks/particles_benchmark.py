"""Benchmark: labelled-particle search scored per particle by its reported centroid.

Makes the demo's particle-search maps with the simulator (no IOCs): li2co3-particles
specimens of fresh seeds, 6Li and 7Li at the demo's dose (4 um field, 1 ms dwell,
100 pA at 30 kV), at the demo's full (96 x 68) and quick (64 x 45) sizes; runs
:func:`temsims.analysis.particles.find_particles` with the plan's parameters
(:func:`temsims.plans.find_labelled_particles`: significance 5, min_counts 50) and
scores every map against the specimen's hidden truth with ``score_centroids``
(``tests/scoring.py``, the tests' own):

- a labelled truth particle is *found* when a reported labelled centroid lies within
  its radius + ``tolerance`` (one report finds at most one particle: the nearest);
- a reported labelled particle that finds no labelled truth particle (none near, or
  only natural ones, or one already found by a nearer report) is a *false positive*.

A merged segment therefore finds one particle, not all of those under it. Prints and
writes ``benchmarks/results/particles.json``: recall and precision per map size over
all seeds, and their spread over the seeds (median, 10th percentile, minimum).

Run: ``.venv/bin/python benchmarks/particles_benchmark.py [--seeds 30] [--seed0 N]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "particles.json"
#: The demo's particle search (temsims.core.demo) and the plan's analysis parameters.
DEMO = {"fov_um": 4.0, "dwell_s": 1e-3, "current_pa": 100.0, "column_kv": 30.0}
SIZES = {"full": (96, 68), "quick": (64, 45)}
#: Quasi-simultaneous arrival corrected from the aperture's current, as the plan does
#: (decision 0043).
ANALYSIS = {"significance": 5.0, "min_counts": 50.0, "primary_current_pa": DEMO["current_pa"]}
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from scoring import TOLERANCE_NM, score_centroids  # noqa: E402  (the tests' own scoring)


def simulate(seed: int, pixels: tuple[int, int]):
    """(truth particles, n6, n7, affine) of one demo map of specimen ``seed``."""
    from temsims.analysis.geometry import SimsMapGeometry
    from temsims.ioc.physics import sims as sp
    from temsims.ioc.physics.ion_optics import probe_diameter_nm
    from temsims.ioc.physics.materials import isotope_mass_u
    from temsims.ioc.physics.specimen import build_specimen

    spec = build_specimen("li2co3-particles", seed=seed)
    geo = sp.ScanGeometry(pixels[0], pixels[1], DEMO["fov_um"])
    plan = sp.FramePlan(spec, geo, (isotope_mass_u("6Li"), isotope_mass_u("7Li")),
                        DEMO["current_pa"], DEMO["dwell_s"],
                        probe_diameter_nm(DEMO["current_pa"], DEMO["column_kv"]), 25.5, 1,
                        True, np.zeros(spec.shape, np.float32))
    n6, n7 = plan.render(np.random.default_rng(seed + 1000))
    affine = SimsMapGeometry(nx=pixels[0], ny=pixels[1], fov_um=DEMO["fov_um"],
                             centre_x_um=0.0, centre_y_um=0.0).affine_to_specimen()
    return spec.truth["particles"], n6, n7, affine


def run_one(seed: int, pixels: tuple[int, int], tolerance_nm: float = TOLERANCE_NM) -> dict:
    """Score one seed at one map size."""
    from temsims.analysis.particles import find_particles
    from temsims.ioc.physics import sims as sp

    truth, n6, n7, affine = simulate(seed, pixels)
    table = find_particles(n6, n7, pixel_to_specimen=affine, dwell_s=DEMO["dwell_s"],
                           dead_time_s=sp.SimsParameters().dead_time_s, **ANALYSIS)
    return score_centroids(table.labelled(), truth, tolerance_nm)


def summarise(per_seed: dict[int, dict]) -> dict:
    """Pooled recall and precision, and their spread over the seeds."""
    found = sum(s["found"] for s in per_seed.values())
    n = sum(s["n_labelled"] for s in per_seed.values())
    tp = sum(s["tp"] for s in per_seed.values())
    rep = sum(s["reported"] for s in per_seed.values())
    rec = np.array([s["found"] / s["n_labelled"] for s in per_seed.values()])
    prec = np.array([s["tp"] / s["reported"] if s["reported"] else 1.0
                     for s in per_seed.values()])
    return {"recall": found / n, "precision": tp / rep if rep else 1.0,
            "found": found, "n_labelled": n, "tp": tp, "reported": rep,
            "recall_per_seed": {"median": float(np.median(rec)),
                                "p10": float(np.percentile(rec, 10)), "min": float(rec.min())},
            "precision_per_seed": {"median": float(np.median(prec)),
                                   "p10": float(np.percentile(prec, 10)),
                                   "min": float(prec.min())},
            "seeds_with_a_miss": int(np.sum(rec < 1)), "seeds_with_a_false": int(np.sum(prec < 1))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=30, help="specimen seeds per map size")
    parser.add_argument("--seed0", type=int, default=None,
                        help="first seed (default: drawn at random, printed)")
    parser.add_argument("--tolerance-nm", type=float, default=TOLERANCE_NM)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    seed0 = (int(np.random.default_rng().integers(100, 1_000_000)) if args.seed0 is None
             else args.seed0)
    seeds = list(range(seed0, seed0 + args.seeds))
    print(f"seeds {seeds[0]}..{seeds[-1]} ({len(seeds)}), tolerance radius + "
          f"{args.tolerance_nm:g} nm")
    result: dict = {"seeds": seeds, "tolerance_nm": args.tolerance_nm, "sizes": {}}
    ok = True
    for name, pixels in SIZES.items():
        t0 = time.perf_counter()
        per_seed = {s: run_one(s, pixels, args.tolerance_nm) for s in seeds}
        summ = summarise(per_seed)
        summ["pixels"] = list(pixels)
        summ["seconds"] = time.perf_counter() - t0
        summ["missed"] = {s: v["missed"] for s, v in per_seed.items() if v["missed"]}
        result["sizes"][name] = summ
        ok &= summ["recall"] >= 0.95 and summ["precision"] >= 0.95
        r, p = summ["recall_per_seed"], summ["precision_per_seed"]
        print(f"{name} {pixels[0]}x{pixels[1]}: recall {summ['recall']:.3f} "
              f"({summ['found']}/{summ['n_labelled']}; per seed median {r['median']:.2f}, "
              f"p10 {r['p10']:.2f}, min {r['min']:.2f}), precision {summ['precision']:.3f} "
              f"({summ['tp']}/{summ['reported']}; per seed min {p['min']:.2f}); "
              f"{summ['seconds']:.1f} s")
    result.update(python=sys.version.split()[0], numpy=np.__version__, cpus=os.cpu_count())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.output}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
