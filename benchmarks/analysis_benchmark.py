"""Benchmark: the analysis layer on full-size data (no IOC, pure numpy/scipy/skimage).

Times (median of ``--repeat`` runs, after one warm-up):

- fusion of a 4096 x 4096 TEM image with a 512 x 512 four-species SIMS map, by IHS
  and by Laplacian pyramid (colouring included; target <= 1 s each);
- registration of a 512 x 512 map on a 4096 x 4096 TEM image (target <= 2 s);
- quantification of a 512 x 512 map (target <= 0.5 s), by running
  ``quantification_benchmark.py`` (a simulated diffusion couple) at the same size.

The data are synthetic (Gaussian blobs on a noisy background, Poisson maps) so the
benchmark runs in seconds; writes ``benchmarks/results/analysis_benchmark.json``.

Run: ``.venv/bin/python benchmarks/analysis_benchmark.py [--tem 4096 --map 512 --repeat 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from targets import FUSION_S, QUANTIFY_S, REGISTRATION_S

RESULTS = Path(__file__).resolve().parent / "results" / "analysis_benchmark.json"


def timed(fn: Callable[[], object], repeat: int) -> dict:
    """Median, min and all wall times (s) of ``fn`` over ``repeat`` runs after a warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


def synthetic_scene(tem_size: int, map_size: int, seed: int = 0):
    """A bright-field-like TEM image, four Poisson species maps of the same blobs, and
    geometries that put the map (45 deg incidence, foreshortened) inside the image."""
    from scipy import ndimage

    from temsims.analysis.geometry import SimsMapGeometry, TemImageGeometry, pixel_transform_matrix

    rng = np.random.default_rng(seed)
    tem_geo = TemImageGeometry(tem_size, 4.0, 0.0, 0.0)
    ny = int(round(map_size * 0.7071))
    sims_geo = SimsMapGeometry(map_size, ny, 2.8, 0.02, -0.03, rotation_deg=5.0)
    # Mass on a coarse grid, bilinearly enlarged: blobs of ~20-100 nm.
    coarse = np.zeros((tem_size // 4, tem_size // 4), np.float32)
    idx = rng.integers(0, coarse.size, 400)
    coarse.flat[idx] = rng.uniform(0.5, 2.0, idx.size)
    coarse = ndimage.gaussian_filter(coarse, 3.0) * 30
    from temsims.analysis.fusion import upsample_linear

    mass = upsample_linear(coarse, (tem_size, tem_size))
    tem = rng.poisson(300 * np.exp(-mass)).astype(np.float32)
    matrix = pixel_transform_matrix(sims_geo, tem_geo)
    rows, cols = np.mgrid[0:ny, 0:map_size].astype(np.float64)
    tx = matrix[0, 0] * cols + matrix[0, 1] * rows + matrix[0, 2]
    ty = matrix[1, 0] * cols + matrix[1, 1] * rows + matrix[1, 2]
    signal = ndimage.map_coordinates(mass, [ty, tx], order=1)
    maps = np.stack([rng.poisson(np.clip(k * signal, 0, None) + 0.1) for k in (2, 20, 5, 10)])
    return tem, maps.astype(np.float32), sims_geo, tem_geo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tem", type=int, default=4096, help="TEM image side (pixels)")
    parser.add_argument("--map", type=int, default=512, help="SIMS map side (pixels)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import dataclasses

    from temsims.analysis.fusion import ihs_fuse, laplacian_pyramid_fuse, species_to_rgb
    from temsims.analysis.registration import register_sims_to_tem

    t0 = time.perf_counter()
    tem, maps, sims_geo, tem_geo = synthetic_scene(args.tem, args.map)
    print(f"synthetic scene {args.tem}^2 TEM + 4 x {maps.shape[1]}x{maps.shape[2]} map "
          f"in {time.perf_counter() - t0:.1f} s")
    pan = -tem
    # Fusion inputs: a square map covering the TEM field (what warp_sims_to_tem and a
    # crop give); the colouring is part of the timed work.
    square = np.stack([np.resize(m, (args.map, args.map)) for m in maps])
    entries: dict[str, dict] = {}
    entries["fuse_ihs"] = timed(lambda: ihs_fuse(pan, species_to_rgb(square)), args.repeat)
    entries["fuse_ihs"]["target_s"] = FUSION_S.limit
    entries["fuse_laplacian"] = timed(
        lambda: laplacian_pyramid_fuse(pan, species_to_rgb(square)), args.repeat)
    entries["fuse_laplacian"]["target_s"] = FUSION_S.limit

    p = sims_geo.pixel_size_um
    recorded = dataclasses.replace(sims_geo, centre_x_um=sims_geo.centre_x_um + 3 * p,
                                   centre_y_um=sims_geo.centre_y_um - 2 * p * sims_geo.stretch)
    total = maps.sum(axis=0)
    entries["register"] = timed(lambda: register_sims_to_tem(total, tem, recorded, tem_geo),
                                args.repeat)
    entries["register"]["target_s"] = REGISTRATION_S.limit
    result = register_sims_to_tem(total, tem, recorded, tem_geo)
    entries["register"]["shift_px"] = list(result.shift_px)
    entries["register"]["expected_shift_px_about"] = "rotated (3, -2) (scan rotation 5 deg)"
    entries["register"]["ncc"] = result.quality["ncc"]

    # ---- quantification of a map: quantification_benchmark.py (same map size) ----
    import importlib.util

    path = Path(__file__).with_name("quantification_benchmark.py")
    spec = importlib.util.spec_from_file_location("quantification_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Beside this script's own output, so a --output elsewhere leaves results/ alone.
    q_output = args.output.with_name("quantification.json")
    module.main(["--n", str(args.map), "--repeat", str(args.repeat), "--output", str(q_output)])
    q = json.loads(q_output.read_text())
    entries["quantify"] = {"median_s": float(np.median(q["quantify_map_s"])),
                           "min_s": q["quantify_map_best_s"], "target_s": QUANTIFY_S.limit,
                           "runs_s": q["quantify_map_s"], "source": path.name}

    out = {"tem_size": args.tem, "map_size": args.map, "species": 4, "repeat": args.repeat,
           "entries": entries, "python": sys.version.split()[0], "numpy": np.__version__,
           "cpus": os.cpu_count()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    for name, e in entries.items():
        if "median_s" in e:
            ok = "ok" if e["median_s"] <= e["target_s"] else "OVER TARGET"
            print(f"{name:<16} median {e['median_s']:.3f} s (min {e['min_s']:.3f}; target "
                  f"<= {e['target_s']:g} s) {ok}")
        else:
            print(f"{name:<16} skipped: {e['skipped']}")
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
