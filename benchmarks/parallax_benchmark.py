"""Benchmark: labelled particles of relief maps (shadows, parallax) and their correction.

Decision 0041's amendment "Parallax": the demo's particle-search maps made with the
simulator (no IOCs) on the bracketed harder twin, as ``tests/analysis/
test_particles.py`` makes them (IMF and collector yields of a fresh instrument, the
natural-Li pad's bracket, LiH+/Li+ counted on the pad, the halo measured on an edge,
quasi-simultaneous arrival corrected), with the twin's relief on or off and the maps at
+4.5 kV's 50.08 deg (the affine at the same angle). The labelled particles are scored
per particle by their reported centroids (``tests/scoring.py``): as reported, and (relief
on) moved back to the TEM projection by :func:`temsims.analysis.parallax.correct_parallax`
with heights from the TEM's mass-thickness (``analysis_sims.tem_heights``), uniform or
weighted by Yamamura's yield, two reports of one TEM particle merged. Prints recall and
precision pooled over the seeds, the labelled centroids' offsets from the truth along
the beam (in radii: median and quartiles) and the isolated particles' ratio pulls;
writes ``benchmarks/results/parallax.json``.

Run: ``.venv/bin/python benchmarks/parallax_benchmark.py [--seeds 8] [--relief off]``
(seeds drawn from fresh entropy, printed; ``TEMSIMS_TEST_ENTROPY`` reproduces a run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "parallax.json"
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent / "tests" / "analysis")]
#: +4.5 kV on the 30 kV column (decision 0036).
THETA = 50.08
#: Yamamura's (f, theta_opt) of Li2CO3 at 25.5 keV (decision 0041's table).
LI2CO3_YAMAMURA = (1.89, 79.3)


def run_map(seed: int, inst: int, pixels, relief: bool):
    """(truth, labelled reports, isolated pulls, tem heights, their affine) of one map."""
    from analysis_sims import (
        DEMO,
        HYDRIDE_COUNT_S,
        bracketed_particle_maps,
        dead_time_of,
        map_time_s,
        measured_halo,
        pad_hydride_counts,
        score,
        tem_heights,
    )

    from temsims.analysis.geometry import SimsMapGeometry
    from temsims.analysis.isotopes import hydride_ratio
    from temsims.analysis.particles import find_particles

    spec, geo, n6, n7, bracket, _ = bracketed_particle_maps(
        seed, pixels, instrument_seed=inst, relief=relief, incidence_deg=THETA)
    n8_pad, n7_pad = pad_hydride_counts(seed, instrument_seed=inst)
    tau = dead_time_of(inst)
    hydride = hydride_ratio(n8_pad, n7_pad, dwell_s=HYDRIDE_COUNT_S, dead_time_s=tau,
                            primary_current_pa=DEMO["current_pa"])
    affine = SimsMapGeometry(nx=pixels[0], ny=pixels[1], fov_um=geo.fov_um, centre_x_um=0.0,
                             centre_y_um=0.0, incidence_deg=THETA).affine_to_specimen()
    halo = measured_halo(inst, rng_seed=7000 + seed).halo(1000.0 * geo.fov_um / pixels[0])
    table = find_particles(n6, n7, pixel_to_specimen=affine, dwell_s=DEMO["dwell_s"],
                           dead_time_s=tau, correction=bracket.factor(map_time_s(geo)),
                           hydride=hydride, halo=halo, primary_current_pa=DEMO["current_pa"])
    truth = spec.truth["particles"]
    h, h_affine = tem_heights(spec) if relief else (None, None)
    return truth, table.labelled(), score(table, affine, truth)["errors"], h, h_affine


def corrected(reports, h, h_affine, yamamura):
    """Reports moved back to the TEM projection, two reports of one particle merged."""
    from temsims.analysis.parallax import correct_parallax

    x, y, lab = correct_parallax([p.x_um for p in reports], [p.y_um for p in reports], h,
                                 h_affine, THETA, yamamura=yamamura)
    first = [i for i in range(len(reports)) if not lab[i] or lab[i] not in lab[:i]]
    return [{"x_um": float(x[i]), "y_um": float(y[i])} for i in first]


def offsets(reports, truth) -> list[float]:
    """Each report's offset from the labelled particle it finds, along y, in radii."""
    lab = [t for t in truth if t["labelled"]]
    out = []
    for p in reports:
        x = 1e3 * (p["x_um"] if isinstance(p, dict) else p.x_um)
        y = 1e3 * (p["y_um"] if isinstance(p, dict) else p.y_um)
        t = min(lab, key=lambda t: math.hypot(x - t["x_nm"], y - t["y_nm"]))
        if math.hypot(x - t["x_nm"], y - t["y_nm"]) < t["radius_nm"] + 60.0:
            out.append((y - t["y_nm"]) / t["radius_nm"])
    return out


def main() -> None:
    from analysis_sims import DEMO_FULL_PIXELS, DEMO_QUICK_PIXELS
    from scoring import fresh_rng, score_centroids

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--relief", choices=("on", "off"), default="on")
    args = ap.parse_args()
    relief = args.relief == "on"
    rng = fresh_rng(f"parallax benchmark (relief {args.relief})")
    seeds = [int(s) for s in rng.choice(np.arange(10, 1_000_000), args.seeds, replace=False)]
    insts = [int(s) for s in rng.integers(1, 1_000_000, args.seeds)]
    print(f"specimen seeds {seeds}, instrument seeds {insts}")
    variants = {"reported": None}
    if relief:
        variants.update({"corrected_uniform": "uniform", "corrected_yamamura": "yamamura"})
    results = {"relief": relief, "incidence_deg": THETA, "seeds": seeds, "instruments": insts}
    for name, pixels in (("full", DEMO_FULL_PIXELS), ("quick", DEMO_QUICK_PIXELS)):
        totals = {v: np.zeros(4) for v in variants}
        offs = {v: [] for v in variants}
        pulls = []
        for seed, inst in zip(seeds, insts, strict=True):
            truth, rep, errors, h, h_affine = run_map(seed, inst, pixels, relief)
            pulls.extend(errors)
            for v, how in variants.items():
                out = rep if how is None else corrected(
                    rep, h, h_affine, LI2CO3_YAMAMURA if how == "yamamura" else None)
                c = score_centroids(out, truth)
                totals[v] += [c["found"], c["n_labelled"], c["tp"], c["reported"]]
                offs[v].extend(offsets(out, truth))
        pulls = np.asarray(pulls)
        results[name] = {"pulls": {"n": len(pulls), "mean": float(pulls.mean()),
                                   "std": float(pulls.std())}}
        print(f"{name} {pixels[0]}x{pixels[1]}: {len(pulls)} isolated pulls, mean "
              f"{pulls.mean():+.2f}, std {pulls.std():.2f}")
        for v in variants:
            t, o = totals[v], np.asarray(offs[v])
            q = [float(np.percentile(o, p)) for p in (25, 50, 75)]
            results[name][v] = {"recall": t[0] / t[1], "precision": t[2] / max(t[3], 1),
                                "counts": t.tolist(), "offset_y_r_quartiles": q}
            print(f"  {v:20s} recall {t[0] / t[1]:.3f} ({t[0]:.0f}/{t[1]:.0f}), precision "
                  f"{t[2] / max(t[3], 1):.3f} ({t[2]:.0f}/{t[3]:.0f}); centroid - truth along "
                  f"the beam {q[1]:+.3f} r (IQR {q[0]:+.3f}..{q[2]:+.3f})")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
