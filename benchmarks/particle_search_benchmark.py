"""Benchmark: the labelled-particle search at PLAN level, over CA, on fresh seeds.

``tests/plans/test_correlative.py``'s search (issue 15: "6Li/7Li pull std <= 1.2
after the corrections"), one instrument per seed: a fresh li2co3-particles specimen
on an instrument with its own geometry errors (aligned, as a lab does at the start of
a session), its dead time calibrated on the pad, then
:func:`temsims.plans.find_labelled_particles` at the demo's dose and size (4 um,
96 x 68 px, 1 ms, 100 pA) bracketed by the natural-Li pad, LiH+/Li+ counted on it,
the probe's halo subtracted. Each seed runs in a process of its own (one CA context,
one instrument on free loopback ports, stopped by PID after), at the tests' time
scale (20).

The isolated labelled particles' 6Li/7Li pulls ``(ratio - truth) / sigma_total`` are
scored as the test scores them (:func:`isolated_pulls`): the stored maps re-analysed
with the recorded parameters and the analysis as it stands (``pulls``: the plan's
table), the table as the search stored it, and the maps re-analysed with the first
pad's K (the plan's), the bracketed K, and whole segments (``trim_fraction`` 0). The
maps do not depend on the analysis, so ``--rescore DIR`` scores kept searches again
after an analysis change. Prints and writes ``benchmarks/results/particle_search.json``:
per seed and pooled, the pulls' mean, std and robust std (1.4826 MAD), and every pull
beyond 3 with its particle, its nearest neighbours and ``halo_share``.

Run: ``.venv/bin/python benchmarks/particle_search_benchmark.py [--seeds 12]``
(seeds drawn from fresh entropy, printed; ``TEMSIMS_TEST_ENTROPY`` reproduces a run;
30-100 s a seed on a loaded machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "particle_search.json"
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
#: The search of tests/plans/test_correlative.py (the demo's FULL size and dose).
SEARCH = {"fov_um": 4.0, "pixels": (96, 68), "dwell_s": 1e-3, "aperture": "100 pA"}
PAD_APERTURES = ("30 pA", "100 pA", "300 pA", "1 nA")
#: Time scale of the instrument (the tests' TEMSIMS_TEST_TIME_SCALE default).
TIME_SCALE = 20.0


def search_one(seed: int, out: Path) -> None:
    """Run the search on a fresh instrument of specimen ``seed``; write what scoring
    needs to ``out`` (.npz: maps; .json beside it: table, parameters, bracket, truth)."""
    from bench_instrument import start_instrument
    from bluesky import RunEngine
    from documents import DocumentCollector
    from instrument_support import aligned, connect_fast

    from temsims.analysis.geometry import SimsMapGeometry
    from temsims.constants import PROBE_HALO, reference_region
    from temsims.ioc.physics import sims as sp
    from temsims.ioc.physics.specimen import build_specimen
    from temsims.plans import calibrate_dead_time, find_labelled_particles, to_sims_mode

    procs = start_instrument("P", specimen="li2co3-particles", seed=seed,
                             time_scale=TIME_SCALE, calibration_errors="typical")
    try:
        d = connect_fast(procs, camera_size=64)
        aligned(procs, d)
        engine = RunEngine({"sample": f"li2co3-particles seed {seed}",
                            "specimen": "li2co3-particles", "operator": "benchmark"},
                           call_returns_result=True)
        docs = DocumentCollector()
        engine.subscribe(docs)
        pad = reference_region("li2co3-particles")
        engine(to_sims_mode(d.mode, voltage_v=4500.0))
        engine(calibrate_dead_time(
            d.spectrometer, d.column, species=("6Li", "7Li"), apertures=PAD_APERTURES,
            count_time_s=1e-3, fov_um=0.15, stage=d.stage,
            center_um=(pad["x_um"], pad["y_um"]), bias=d.bias))
        d.column.aperture.set(SEARCH["aperture"]).wait(10)
        t0 = time.monotonic()
        res = engine(find_labelled_particles(
            d, fov_um=SEARCH["fov_um"], pixels=SEARCH["pixels"], dwell_s=SEARCH["dwell_s"],
            significance=5.0, min_counts=50, zoom_fov_um=0.4, exposure_s=0.01,
            reference="li2co3-particles", hydride="measure",
            halo=(PROBE_HALO["fraction"], PROBE_HALO["fwhm_nm"]),
            calibration="refuse")).plan_result
        wall = time.monotonic() - t0
        d.column.aperture.set("1 pA").wait(10)
        start = next(s for s in docs.docs["start"] if s["uid"] == res["uids"]["sims"][0])
        maps = docs.run(start["uid"]).maps()
        from event_model import unpack_event_page

        desc = {x["uid"] for x in docs.docs["descriptor"]
                if x["run_start"] == start["uid"] and x["name"] == "particles"}
        events = [e for e in docs.docs["event"] if e["descriptor"] in desc]
        for page in docs.docs["event_page"]:
            if page["descriptor"] in desc:
                events.extend(unpack_event_page(page))
        table = [{k[len("particle_"):]: v for k, v in e["data"].items()}
                 for e in sorted(events, key=lambda e: e["seq_num"])]
        np.savez_compressed(out, n6=maps["6Li"], n7=maps["7Li"])
        info = {"seed": seed, "wall_s": wall, "start": start, "table": table,
                "result": {k: res[k] for k in ("bracketing", "hydride")},
                "affine": SimsMapGeometry.from_metadata(start).affine_to_specimen().tolist(),
                "true_dead_time_s": sp.true_dead_time_s(seed),
                "truth": build_specimen("li2co3-particles", seed).truth["particles"]}
        out.with_suffix(".json").write_text(json.dumps(info, default=_plain))
    finally:
        procs.stop()


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def isolated_pulls(table: list[dict], truth: list[dict], pitch_nm: float) -> list[dict]:
    """The test's isolated labelled pulls: each labelled, unmerged report whose nearest
    labelled truth particle holds it within its radius, and whose every other particle's
    edge is more than two map pixels (the larger pitch, 1.42 x the x pitch) away."""
    lab = [t for t in truth if t["labelled"]]
    out = []
    for p in table:
        if p["classification"] != "labelled" or p.get("merged_into"):
            continue
        dist = [math.hypot(1e3 * p["x_um"] - t["x_nm"], 1e3 * p["y_um"] - t["y_nm"])
                for t in lab]
        t = lab[int(np.argmin(dist))]
        gaps = sorted((math.hypot(t["x_nm"] - o["x_nm"], t["y_nm"] - o["y_nm"])
                       - t["radius_nm"] - o["radius_nm"], o) for o in truth
                      if o["id"] != t["id"])
        if min(dist) < t["radius_nm"] and gaps[0][0] > 2 * pitch_nm * 1.42 \
                and p["sigma_total"] > 0:
            out.append({"label": p["label"], "truth_id": t["id"],
                        "pull": (p["ratio"] - t["li6_li7_ratio"]) / p["sigma_total"],
                        "ratio": p["ratio"], "truth": t["li6_li7_ratio"],
                        "sigma_total": p["sigma_total"], "n6": p["n6"], "n7": p["n7"],
                        "radius_nm": t["radius_nm"],
                        "halo_share": p.get("halo_share", math.nan),
                        "classification": p["classification"],
                        "neighbours": [{"gap_nm": round(g, 1), "radius_nm": o["radius_nm"],
                                        "labelled": o["labelled"]} for g, o in gaps[:2]]})
    return out


def stats(pulls) -> dict:
    x = np.asarray(pulls, float)
    if x.size == 0:
        return {"n": 0}
    return {"n": int(x.size), "mean": float(x.mean()), "std": float(x.std(ddof=1))
            if x.size > 1 else math.nan,
            "robust_std": float(1.4826 * np.median(np.abs(x - np.median(x)))),
            "median": float(np.median(x)), "max_abs": float(np.abs(x).max())}


def reanalyse(n6, n7, info: dict, **override):
    """The search's table again from its stored maps and recorded parameters
    (``override``: find_particles arguments to change): (records, ParticleTable)."""
    from temsims.analysis.particles import find_particles
    from temsims.plans.particles import particle_record

    params = info["start"]["correlative"]["particle_analysis"]
    kw = {"dwell_s": info["start"]["map"]["dwell_s"], "dead_time_s": params["dead_time_s"],
          "significance": params["significance_sigma"], "min_counts": params["min_counts"],
          "reference_ratio": params["reference_ratio"],
          "correction": None if params["correction_factor"] is None else
          (params["correction_factor"], params["correction_sigma"]),
          "hydride": None if params.get("hydride_ratio") is None else
          (params["hydride_ratio"], params["hydride_sigma"]),
          "halo": None if params.get("halo_fraction") is None else
          (params["halo_fraction"], params["halo_sigma_px"]),
          "primary_current_pa": params.get("primary_current_pa")}
    kw.update(override)
    table = find_particles(n6, n7, pixel_to_specimen=np.asarray(info["affine"]), **kw)
    return [particle_record(p) for p in table], table


def score_seed(path: Path) -> dict:
    """One kept search: its isolated labelled pulls as the plan's table gave them
    (``pulls``: the maps re-analysed with the recorded parameters and the analysis'
    defaults), as the search stored them, and re-analysed with the first pad's K, the
    bracketed K, and without the summing aperture (``trim_fraction`` 0)."""
    info = json.loads(path.with_suffix(".json").read_text())
    maps = np.load(path)
    pitch = 1e3 * SEARCH["fov_um"] / SEARCH["pixels"][0]
    br = info["result"]["bracketing"]
    params = info["start"]["correlative"]["particle_analysis"]
    # The analysis as it stands (the plan's own table where the search ran with it:
    # the maps do not depend on the analysis' version, tests/plans/test_correlative.py
    # checks that re-analysing them gives the stored table).
    records, _ = reanalyse(maps["n6"], maps["n7"], info)
    out = {"seed": info["seed"], "wall_s": info["wall_s"],
           "dead_time_s": params["dead_time_s"],
           "true_dead_time_s": info["true_dead_time_s"],
           "dead_time_source": params["dead_time_source"],
           "k_first": br["provisional"], "k_bracketed": br["factor"],
           "k_used": [params["correction_factor"], params["correction_sigma"]],
           "pulls": isolated_pulls(records, info["truth"], pitch),
           "pulls_as_stored": isolated_pulls(info["table"], info["truth"], pitch)}
    for name, kw in (("pulls_first_k", {"correction": tuple(br["provisional"])}),
                     ("pulls_bracketed_k", {"correction": tuple(br["factor"])}),
                     ("pulls_untrimmed", {"trim_fraction": 0.0})):
        again, _ = reanalyse(maps["n6"], maps["n7"], info, **kw)
        out[name] = isolated_pulls(again, info["truth"], pitch)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=Path, default=None,
                        help="directory to keep each seed's maps and table in")
    parser.add_argument("--rescore", type=Path, default=None,
                        help="score the seeds kept in this directory, run nothing")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.one is not None:
        search_one(args.one, args.out)
        return 0
    from scoring import fresh_rng

    if args.rescore is not None:
        paths = sorted(args.rescore.glob("seed-*.npz"))
        entropy = None
    else:
        rng = fresh_rng("particle_search_benchmark")
        entropy = int(os.environ.get("TEMSIMS_TEST_ENTROPY") or rng.bit_generator.seed_seq
                      .entropy)
        seeds = [int(s) for s in rng.choice(np.arange(10, 1_000_000), args.seeds,
                                            replace=False)]
        print(f"specimen seeds {seeds}")
        keep = args.keep or Path(tempfile.mkdtemp(prefix="particle-search-"))
        keep.mkdir(parents=True, exist_ok=True)
        paths = []
        for seed in seeds:
            path = keep / f"seed-{seed}.npz"
            t0 = time.monotonic()
            run = subprocess.run([sys.executable, __file__, "--one", str(seed), "--out",
                                  str(path)], capture_output=True, text=True)
            if run.returncode != 0:
                print(f"seed {seed}: failed\n{run.stderr[-3000:]}")
                continue
            print(f"seed {seed}: {time.monotonic() - t0:.0f} s")
            paths.append(path)
    per_seed = [score_seed(p) for p in paths]
    pooled = {key: [q["pull"] for s in per_seed for q in s[key]]
              for key in ("pulls", "pulls_as_stored", "pulls_first_k", "pulls_bracketed_k",
                          "pulls_untrimmed")}
    for s in per_seed:
        st = stats([q["pull"] for q in s["pulls"]])
        print(f"seed {s['seed']}: tau {s['dead_time_s'] * 1e9:.1f} ns ({s['dead_time_source']}"
              f"; true {s['true_dead_time_s'] * 1e9:.1f}), K first {s['k_first'][0]:.4f}, "
              f"bracketed {s['k_bracketed'][0]:.4f}, used {s['k_used'][0]:.4f}; "
              f"{st['n']} pulls, mean {st.get('mean', math.nan):+.2f}")
    summary = {k: stats(v) for k, v in pooled.items()}
    for k, st in summary.items():
        print(f"{k}: {st}")
    outliers = [dict(q, seed=s["seed"]) for s in per_seed for q in s["pulls"]
                if abs(q["pull"]) > 3]
    for q in outliers:
        print(f"outlier seed {q['seed']}: {q}")
    # Per seed: the pulls' figures of each variant, and the plan's pulls themselves.
    slim = [{**{k: v for k, v in s.items() if not k.startswith("pulls")},
             **{k: stats([q["pull"] for q in v]) for k, v in s.items()
                if k.startswith("pulls")},
             "pull_values": [round(q["pull"], 3) for q in s["pulls"]]} for s in per_seed]
    result = {"entropy": entropy, "seeds": [s["seed"] for s in per_seed], "search": SEARCH,
              "time_scale": TIME_SCALE, "summary": summary, "outliers": outliers,
              "per_seed": slim}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1, default=_plain) + "\n")
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
