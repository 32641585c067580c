"""Benchmark: the simulator's SIMS frame set-up against a baseline revision's.

The set-up is ``FramePlan._prepare`` and the sputter after each map; the baseline is
``ioc/physics/sims.py`` at a git revision; the frames are those the demo and the
tests make (decision 0048).

Two sessions, each run with the present module and with the baseline's (loaded from
``git show REV:ioc/physics/sims.py``), interleaved, on the same specimens:

- ``alignment``: ``align_ion_beam``'s three maps (6 um 128 x 96, 4 um 256 x 192, 2 um
  128 x 96 at 100 pA, a 39 nm probe, 50.2 deg incidence) on ``li2co3-particles``, each
  prepared with the prepare loop's 120 s of drift slack and then sputtered;
- ``depth_profile``: the solar-cell case's 22-frame profile (1.5 um, 64 x 45, 30 pA,
  a 25 nm probe; 23Na, 69Ga, 114Cd, 115In) on ``solar-cell``, frame by frame.

Times are CPU seconds of this process (``time.process_time``: the machines are
shared, and CPU is what the suite pays), best of ``--repeat`` each, and the
new / baseline ratio of each repeat (median, min..max). Then the equality check: on
those sessions and on single frames of ``livo-cathode`` and ``diffusion-couple``
(several depths, fields, both polarities, three incidences) every array a prepared
plan holds (each collector's blurred map) and every depth map after a sputter must
equal the baseline's within ``--rtol`` (max relative difference, per element), the
plans' windows, blocks and collector weights exactly, and one render of each plan with
a seeded generator must give the same counts and leave the generator in the same
state. Writes ``benchmarks/results/frame_prep.json``.

Run: ``.venv/bin/python benchmarks/frame_prep_benchmark.py [--repeat 3] [--baseline REV]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "frame_prep.json"
#: The last revision before the frame set-up work of decision 0048.
DEFAULT_BASELINE = "2146073"
SIMS_PATH = "ioc/physics/sims.py"


def load_baseline(rev: str):
    """The baseline's ``sims`` module, imported under its own name."""
    source = subprocess.run(["git", "show", f"{rev}:{SIMS_PATH}"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    tmp = Path(tempfile.mkdtemp(prefix="frame_prep_")) / "sims_baseline.py"
    tmp.write_text(source)
    spec = importlib.util.spec_from_file_location("temsims_sims_baseline", tmp)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _masses(names):
    from temsims.ioc.physics.materials import isotope_mass_u

    return tuple(isotope_mass_u(s) for s in names)


ALIGNMENT_MAPS = ((6.0, 128, 96), (4.0, 256, 192), (2.0, 128, 96))


def alignment(sp, spec):
    """(plans, depth maps after each sputter, prepare CPU s, sputter CPU s)."""
    params = sp.SimsParameters(dead_time_s=30e-9)
    depth = np.zeros(spec.shape, np.float32)
    masses = _masses(("6Li", "7Li", "69Ga", "71Ga"))
    frames = [(sp.ScanGeometry(nx, ny, fov * 1.02, rotation_deg=1.3, centre_x_nm=300.0,
                               centre_y_nm=-200.0, incidence_deg=50.2),
               (100.0, 1e-4, 39.0), {"drift_slack_s": 120.0})
              for fov, nx, ny in ALIGNMENT_MAPS]
    return _prepare_and_sputter(sp, spec, masses, params, depth, frames)


def _prepare_and_sputter(sp, spec, masses, params, depth, frames):
    """Each frame ``(geometry, (current_pa, dwell_s, probe_fwhm_nm), extra FramePlan
    keywords)`` prepared, then sputtered into ``depth``: (plans, depth maps after each
    sputter, prepare CPU s, sputter CPU s)."""
    plans, depths, prep, sput = [], [], 0.0, 0.0
    for geo, (current, dwell, probe), extra in frames:
        t0 = time.process_time()
        plan = sp.FramePlan(spec, geo, masses, current, dwell, probe, 25.5, 1, True, depth,
                            params=params, species=sp.candidate_species(spec), **extra)
        t1 = time.process_time()
        sp.sputter(spec, depth, geo, plan.ions_per_pixel, params=params, landing_kev=25.5)
        t2 = time.process_time()
        prep, sput = prep + t1 - t0, sput + t2 - t1
        plans.append(plan)
        depths.append(depth.copy())
    return plans, depths, prep, sput


def depth_profile(sp, spec, frames: int = 22):
    params = sp.SimsParameters(dead_time_s=30e-9)
    depth = np.zeros(spec.shape, np.float32)
    masses = _masses(("23Na", "69Ga", "114Cd", "115In"))
    geo = sp.ScanGeometry(64, 45, 1.5, rotation_deg=0.7, incidence_deg=50.2)
    return _prepare_and_sputter(sp, spec, masses, params, depth,
                                [(geo, (30.0, 5e-4, 25.0), {})] * frames)


def single_frames(sp, specs):
    """Frames on the other specimens: depths, fields, polarities, incidences (the same
    depth maps for both modules: they are made here, not sputtered)."""
    plans = []
    rng = np.random.default_rng(48)
    for name, spec in specs.items():
        masses = _masses({"livo-cathode": ("7Li", "27Al", "51V", "16O"),
                          "diffusion-couple": ("63Cu", "65Cu", "58Ni", "60Ni"),
                          "li2co3-particles": ("6Li", "7Li", "12C", "16O"),
                          "solar-cell": ("23Na", "69Ga", "71Ga", "115In")}[name])
        for depth_nm, fov, pol, inc in ((0.0, 2.0, 1, 50.2), (3.0, 1.0, -1, 45.0),
                                        (35.0, 3.0, 1, 55.0), (80.0, 1.5, 1, 50.2)):
            depth = np.full(spec.shape, depth_nm, np.float32)
            # A rough, partly sputtered patch: a non-uniform depth map.
            depth[700:1300, 800:1500] += rng.uniform(0.0, 4.0, (600, 700)).astype(np.float32)
            geo = sp.ScanGeometry(96, 64, fov, rotation_deg=2.0, centre_x_nm=-150.0,
                                  centre_y_nm=250.0, incidence_deg=inc)
            plans.append(sp.FramePlan(spec, geo, masses, 50.0, 2e-4, 30.0, 25.5, pol, True,
                                      depth, params=sp.SimsParameters(dead_time_s=30e-9),
                                      species=sp.candidate_species(spec)))
    return plans


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    """Max over elements of |a - b| / |a| (0 where both are 0)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    diff = np.abs(a - b)
    if not diff.size or not diff.any():
        return 0.0
    return float(np.max(np.where(diff > 0, diff / np.maximum(np.abs(a), 1e-300), 0.0)))


def compare_plans(old_plans, new_plans) -> dict:
    """Worst relative difference over the plans' arrays, exact checks, render check."""
    worst, arrays, bitwise = 0.0, 0, True
    for a, b in zip(old_plans, new_plans, strict=True):
        assert a.window == b.window, (a.window, b.window)
        assert a.block == b.block and a.blurred_shape == b.blurred_shape
        assert a.weights == b.weights
        for x, y in zip(a.blurred, b.blurred, strict=True):
            assert (x is None) == (y is None)
            if x is None:
                continue
            assert x.shape == y.shape and x.dtype == y.dtype
            worst = max(worst, max_rel(x, y))
            bitwise &= bool(np.array_equal(x, y))
            arrays += 1
        # The same counts from the same seed, the generator left in the same state.
        ra, rb = np.random.default_rng(7), np.random.default_rng(7)
        ca = a.render_lines(0, a.geometry.ny, ra)
        cb = b.render_lines(0, b.geometry.ny, rb)
        assert all(np.array_equal(p, q) for p, q in zip(ca, cb, strict=True))
        assert ra.bit_generator.state == rb.bit_generator.state
    return {"max_rel_diff": worst, "arrays": arrays, "bitwise_equal": bitwise,
            "renders_equal": len(new_plans)}


def compare_depths(old_depths, new_depths) -> dict:
    worst = max(max_rel(a, b) for a, b in zip(old_depths, new_depths, strict=True))
    return {"max_rel_diff": worst, "arrays": len(new_depths),
            "bitwise_equal": all(np.array_equal(a, b)
                                 for a, b in zip(old_depths, new_depths, strict=True))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each session")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE,
                        help="git revision of the baseline ioc/physics/sims.py")
    parser.add_argument("--rtol", type=float, default=1e-5,
                        help="largest relative difference allowed (float32 rounding)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON result")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")

    from temsims.ioc.physics import sims as new
    from temsims.ioc.physics.specimen import build_specimen

    old = load_baseline(args.baseline)
    specs = {name: build_specimen(name, seed=1) for name in
             ("li2co3-particles", "livo-cathode", "diffusion-couple", "solar-cell")}
    sessions = {"alignment": (alignment, specs["li2co3-particles"]),
                "depth_profile": (depth_profile, specs["solar-cell"])}
    # Warm both (tables, caches), then interleave: old, new, old, new...
    for run, spec in sessions.values():
        for mod in (old, new):
            run(mod, spec)
    out: dict = {"baseline": args.baseline, "repeat": args.repeat, "rtol": args.rtol,
                 "sessions": {}, "equality": {}}
    kept: dict = {}
    for name, (run, spec) in sessions.items():
        rows = {"old": [], "new": []}
        for _ in range(args.repeat):
            for label, mod in (("old", old), ("new", new)):
                plans, depths, prep, sput = run(mod, spec)
                rows[label].append((prep + sput, prep, sput))
                kept[(name, label)] = (plans, depths)
        ratios = [n[0] / o[0] for o, n in zip(rows["old"], rows["new"], strict=True)]
        best = {k: min(v, key=lambda r: r[0]) for k, v in rows.items()}
        res = {
            "old_s": best["old"][0], "new_s": best["new"][0],
            "old_prepare_s": best["old"][1], "new_prepare_s": best["new"][1],
            "old_sputter_s": best["old"][2], "new_sputter_s": best["new"][2],
            "ratio_best": best["new"][0] / best["old"][0],
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "runs": {k: [list(r) for r in v] for k, v in rows.items()},
        }
        out["sessions"][name] = res
        print(f"{name}: {res['old_s']:.2f} -> {res['new_s']:.2f} CPU s (prepare "
              f"{res['old_prepare_s']:.2f} -> {res['new_prepare_s']:.2f}, sputter "
              f"{res['old_sputter_s']:.2f} -> {res['new_sputter_s']:.2f}); new/old "
              f"{res['ratio_best']:.2f} best of {args.repeat}, per run median "
              f"{res['ratio_median']:.2f} ({res['ratio_min']:.2f}..{res['ratio_max']:.2f})")
    ok = True
    for name in sessions:
        (po, do), (pn, dn) = kept[(name, "old")], kept[(name, "new")]
        eq = {"plans": compare_plans(po, pn), "depths": compare_depths(do, dn)}
        out["equality"][name] = eq
        ok &= eq["plans"]["max_rel_diff"] <= args.rtol and eq["depths"]["max_rel_diff"] <= args.rtol
    eq = compare_plans(single_frames(old, specs), single_frames(new, specs))
    out["equality"]["single_frames"] = {"plans": eq}
    ok &= eq["max_rel_diff"] <= args.rtol
    for name, eq in out["equality"].items():
        for what, e in eq.items():
            print(f"equality, {name} {what}: {e['arrays']} arrays, max rel diff "
                  f"{e['max_rel_diff']:.3g}{' (bit for bit)' if e['bitwise_equal'] else ''}")
    out["equal_within_rtol"] = bool(ok)
    print(f"equal within {args.rtol:g}: {'yes' if ok else 'NO'}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written {args.output}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
