"""Benchmark: the depth resolution recovered from sputter depth profiles, over seeds.

Issue 15 ("Sputtering and depth"): the twin's depth profiles have a real depth
resolution (Hofmann's mixing-roughness-information response, docs/physics-sputtering.md)
and :func:`temsims.analysis.depth.depth_resolution` must recover it within 20 %.

Per seed (drawn at run time and printed unless given), ``tests/depth_sims.py`` makes a
depth profile with the IOC physics (no IOCs): Li2CO3 with a buried 6Li-enriched layer
(depth 70-110 nm, thickness 40-80 nm, 6Li 0.5-0.95, drawn from the seed), 16 x 16 maps
of 80 nm at 1 pA, ~2 nm per frame, each frame rendered at the depth its start dose
left and then sputtered. The analysis sees only the frames' doses and counts (6Li/(6Li
+ 7Li) in the central pixels) and the layer's nominal thickness; its 16-84 % width is
compared with the twin's response (its own truth). Prints and writes JSON: the error
per seed, median, mean, sd, 10th/90th percentiles, worst, and the fraction within 20 %.

Run: ``.venv/bin/python benchmarks/depth_resolution_benchmark.py [--seeds 30]
[--first-seed N] [--nm-per-frame 2] [--output F]``
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from depth_sims import label_fraction, simulate_profile  # noqa: E402  (the tests' own)

BOUND = 0.20


def run_seed(seed: int, nm_per_frame: float) -> dict:
    from temsims.analysis.depth import depth_resolution

    t0 = time.monotonic()
    p = simulate_profile(seed, nm_per_frame=nm_per_frame)
    t_sim = time.monotonic() - t0
    x, s = label_fraction(p)
    t = p["truth"]
    t1 = time.monotonic()
    r = depth_resolution(p["dose_start"], p["dose_end"], x, s, thickness_nm=t["thickness_nm"])
    t_fit = time.monotonic() - t1
    return {"seed": seed, "frames": int(len(x)), "model_nm": t["resolution_nm"],
            "recovered_nm": r.resolution_nm, "recovered_sd_nm": r.resolution_sd_nm,
            "error": r.resolution_nm / t["resolution_nm"] - 1,
            "w_nm": r.w_nm, "model_w_nm": t["w_nm"], "sigma_nm": r.sigma_nm,
            "model_sigma_nm": t["sigma_nm"], "nm_per_dose": r.nm_per_dose,
            "model_nm_per_dose": t["nm_per_dose"], "chi2_dof": r.fit.chi2_dof,
            "layer": {"top_nm": t["top_nm"], "thickness_nm": t["thickness_nm"],
                      "li6": t["li6_abundance"]},
            "simulate_s": t_sim, "fit_s": t_fit}


def _spread(vals: list[float]) -> dict:
    s = sorted(vals)
    return {"n": len(s), "median": statistics.median(s), "mean": statistics.fmean(s),
            "sd": statistics.stdev(s) if len(s) > 1 else None,
            "p10": float(np.percentile(s, 10)), "p90": float(np.percentile(s, 90)),
            "min": s[0], "max": s[-1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, default=30, help="how many seeds")
    p.add_argument("--first-seed", type=int, default=None,
                   help="seeds first..first+N-1; unset: drawn at run time (printed)")
    p.add_argument("--nm-per-frame", type=float, default=2.0,
                   help="sputtered depth per frame at steady state (nm)")
    p.add_argument("--output", default=str(HERE / "results" / "depth_resolution.json"),
                   help="JSON result")
    args = p.parse_args(argv)
    first = args.first_seed if args.first_seed is not None else random.randrange(1, 10**6)
    seeds = list(range(first, first + args.seeds))
    print(f"depth resolution over seeds {first}..{seeds[-1]} ({args.nm_per_frame:g} nm/frame)")
    rows = []
    for seed in seeds:
        row = run_seed(seed, args.nm_per_frame)
        rows.append(row)
        print(f"seed {seed}: {row['frames']} frames, dz {row['recovered_nm']:.2f} +- "
              f"{row['recovered_sd_nm']:.2f} nm for {row['model_nm']:.2f} "
              f"({100 * row['error']:+.1f} %), w {row['w_nm']:.2f}/{row['model_w_nm']:.2f}, "
              f"sigma {row['sigma_nm']:.2f}/{row['model_sigma_nm']:.2f}, "
              f"chi2/dof {row['chi2_dof']:.2f}", flush=True)
    errors = [r["error"] for r in rows]
    abs_err = [abs(e) for e in errors]
    within = sum(a < BOUND for a in abs_err)
    pulls = [(r["recovered_nm"] - r["model_nm"]) / r["recovered_sd_nm"] for r in rows
             if r["recovered_sd_nm"] and r["recovered_sd_nm"] > 0]
    result = {
        "benchmark": "depth_resolution", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seeds": seeds, "nm_per_frame": args.nm_per_frame, "bound": BOUND,
        "model_nm": rows[0]["model_nm"],
        "error": _spread(errors), "abs_error": _spread(abs_err),
        "within_bound": within, "n": len(rows),
        "pull": _spread(pulls) if len(pulls) > 1 else None,
        "seconds_per_seed": statistics.median(r["simulate_s"] + r["fit_s"] for r in rows),
        "rows": rows,
    }
    e, a = result["error"], result["abs_error"]
    print(f"\ndepth resolution (model {result['model_nm']:.2f} nm), {len(rows)} seeds: "
          f"error median {100 * e['median']:+.1f} %, mean {100 * e['mean']:+.1f} %, sd "
          f"{100 * (e['sd'] or 0):.1f} %, {100 * e['min']:+.1f}..{100 * e['max']:+.1f} %; "
          f"|error| p90 {100 * a['p90']:.1f} %, worst {100 * a['max']:.1f} %; within "
          f"{100 * BOUND:.0f} %: {within} of {len(rows)}")
    if result["pull"]:
        print(f"pull (error / stated sd): median {result['pull']['median']:+.2f}, sd "
              f"{result['pull']['sd']:.2f}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"written {out}")
    return 0 if within == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
