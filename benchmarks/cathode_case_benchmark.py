"""The cathode case scored against the twin's truth over many seeds (issue 16).

``temsims demo --case cathode`` runs once per seed in its own process (its own IOCs,
catalog and report); its ``report.json`` (written from the catalog only) is compared
with the truth of ``livo-cathode`` built here from the same seed:

- the V decay length in the LiPON and the V atom fraction at the LiPON side of its
  interface (the recipe's ``v_in_lipon_decay_nm`` and ``v_in_lipon``), each "recovered"
  when the truth lies within the stated 95 % interval;
- each interface's SIMS position within one SIMS pixel (along the normal) of the TEM
  one, and both against the truth (the recipe's rough interface averaged over the
  map's columns).

The issue's claim is >= 90 % of seeds; this script prints and records the fraction
and the spread over the seeds. Seeds are drawn at run time (printed) unless given.

Run: ``python benchmarks/cathode_case_benchmark.py [--seeds 10] [--quick] [--output F]``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from case_seeds import add_seed_options, seed_reports, seeds_of, spread


def truth(seed: int, x_lo_um: float, x_hi_um: float) -> dict:
    """The twin's truth of ``livo-cathode`` seed ``seed``: decay length, V level, and
    each interface's mean y (um) over the columns ``x_lo_um .. x_hi_um``."""
    import numpy as np

    from temsims.ioc.physics.specimen import build_specimen, livo_cathode

    defaults = {k: p.default for k, p in inspect.signature(livo_cathode).parameters.items()}
    spec = build_specimen("livo-cathode", seed)
    x = spec.x_nm() / 1e3
    cols = (x >= x_lo_um) & (x <= x_hi_um)
    return {"decay_nm": float(defaults["v_in_lipon_decay_nm"]),
            "level": float(defaults["v_in_lipon"]),
            "interfaces_y_um": {k: float(np.mean(np.asarray(v)[cols]) / 1e3)
                                for k, v in spec.truth["interfaces_y_nm"].items()}}


def score(report: dict, t: dict) -> dict:
    """One seed's report against its truth."""
    dl = report.get("v_decay_length_nm") or {}
    lv = report.get("v_level_lipon_atom_fraction") or {}
    pix = report["sims_pixel_nm"]["along_normal"]
    pull = width = None
    if dl:
        # The pull in ln(decay): the error against the half-width (over k = 2) of the
        # interval on the truth's side (the interval is asymmetric: decision 0027).
        lo, hi = dl["interval95"]
        half = math.log(hi / dl["value"]) if t["decay_nm"] > dl["value"] \
            else math.log(dl["value"] / lo)
        pull = 2.0 * math.log(dl["value"] / t["decay_nm"]) / half
        width = hi - lo
    out = {"decay_nm": dl.get("value"), "decay_u95_nm": dl.get("u95"),
           "decay_pull_log": pull, "decay_interval95_width_nm": width,
           "blur_sigma_nm": (report.get("v_blur_sigma_nm") or {}).get("value"),
           "level": lv.get("value"), "level_u95": lv.get("u95"),
           "decay_interval95_nm": dl.get("interval95"),
           # The decay's interval is symmetric in log(decay) (decision 0027's amendment).
           "decay_recovered": bool(dl) and dl["interval95"][0] <= t["decay_nm"]
           <= dl["interval95"][1],
           "decay_recovered_symmetric": bool(dl) and abs(dl["value"] - t["decay_nm"])
           <= dl["u95"],
           "level_recovered": bool(lv) and abs(lv["value"] - t["level"]) <= lv["u95"],
           "pixel_nm": pix, "interfaces": {}}
    for name, e in report["interfaces"].items():
        true_y = t["interfaces_y_um"][name]
        sims = (e["sims"].get(e["sims_edge"]) or {}).get("y_um")
        out["interfaces"][name] = {
            "sims_minus_tem_nm": e["offset_nm"], "within_one_pixel": e["within_one_pixel"],
            "tem_minus_truth_nm": 1e3 * (e["tem_y_um"] - true_y),
            "sims_minus_truth_nm": None if sims is None else 1e3 * (sims - true_y)}
    out["interfaces_ok"] = all(v["within_one_pixel"] for v in out["interfaces"].values())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_seed_options(p, base_port=18064, output="cathode_case.json")
    p.add_argument("--keep", default=None,
                   help="keep each seed's catalog and report in this folder (default: a "
                        "temporary one, removed): to analyse the same runs again offline")
    args = p.parse_args(argv)
    seeds = seeds_of(args)
    print(f"cathode case over seeds {seeds} (quick={args.quick}, time scale "
          f"{args.time_scale:g})", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cathode-bench-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for seed, rep, wall_s in seed_reports("cathode", seeds, args, prefix="CB", rows=rows,
                                              workdir=workdir):
            fov = rep["sizes"]["map_fov_um"]
            cx = rep["sizes"]["center_um"][0]
            t = truth(seed, cx - fov / 2, cx + fov / 2)
            s = score(rep, t)
            s.update(seed=seed, wall_s=wall_s, failed=False)
            rows.append(s)
            ints = "; ".join(f"{n}: SIMS-TEM {v['sims_minus_tem_nm']:+.1f}, TEM-truth "
                             f"{v['tem_minus_truth_nm']:+.1f} nm"
                             for n, v in s["interfaces"].items())
            lo, hi = s["decay_interval95_nm"]
            print(f"seed {seed}: decay {s['decay_nm']:.1f} nm ({lo:.1f}-{hi:.1f}) "
                  f"(truth {t['decay_nm']:g}, {'ok' if s['decay_recovered'] else 'MISSED'}); "
                  f"level {100 * s['level']:.2f} +- {100 * s['level_u95']:.2f} at.% (truth "
                  f"{100 * t['level']:g}, {'ok' if s['level_recovered'] else 'MISSED'}); "
                  f"{ints} (pixel {s['pixel_nm']:.1f} nm); {wall_s:.1f} s", flush=True)
    good = [r for r in rows if not r["failed"]]
    n = len(rows)

    def frac(key):
        return sum(bool(r.get(key)) for r in good) / n if n else 0.0

    def over_seeds(key):
        return spread([r.get(key) for r in good])

    offsets = [abs(v["sims_minus_tem_nm"]) for r in good for v in r["interfaces"].values()]
    result = {
        "seeds": seeds, "quick": args.quick, "time_scale": args.time_scale,
        "ncpu": os.cpu_count(), "failed": n - len(good),
        "decay_recovered_fraction": frac("decay_recovered"),
        "decay_recovered_symmetric_fraction": frac("decay_recovered_symmetric"),
        "level_recovered_fraction": frac("level_recovered"),
        "interfaces_within_pixel_fraction": frac("interfaces_ok"),
        "decay_nm": over_seeds("decay_nm"), "decay_u95_nm": over_seeds("decay_u95_nm"),
        "decay_pull_log": over_seeds("decay_pull_log"),
        "decay_interval95_width_nm": over_seeds("decay_interval95_width_nm"),
        "blur_sigma_nm": over_seeds("blur_sigma_nm"),
        "level": over_seeds("level"), "level_u95": over_seeds("level_u95"),
        "max_abs_sims_minus_tem_nm": max(offsets) if offsets else None,
        "pixel_nm": good[0]["pixel_nm"] if good else None,
        "wall_s": over_seeds("wall_s"), "rows": rows,
        "target_fraction": 0.9,
    }
    print(f"decay recovered in {100 * result['decay_recovered_fraction']:.0f} % of "
          f"{n} seeds ({100 * result['decay_recovered_symmetric_fraction']:.0f} % within "
          f"value +- u95), level in {100 * result['level_recovered_fraction']:.0f} %, "
          f"interfaces within one SIMS pixel in "
          f"{100 * result['interfaces_within_pixel_fraction']:.0f} % (max |SIMS - TEM| "
          f"{result['max_abs_sims_minus_tem_nm']} nm); case wall "
          f"{result['wall_s'].get('mean')} s mean", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    return 0 if n and len(good) == n else 1


if __name__ == "__main__":
    sys.exit(main())
