"""Catalog read path: a SIMS map's visibility from another process, and reading it back.

Into a fresh embedded catalog (``open_catalog(DIR)``, the session's buffered writer), a
map run shaped as ``sims_map`` stores it (the start document's ``map`` block, one
event per line, ``imager_line`` and four ``imager_<species>`` (1, NX) int32 lines) is
written as the flyer emits it at ``--dwell`` per pixel: every ``--flush`` s (the
plan's collect period) a page of the lines acquired meanwhile. Three
figures, each against its target (issue 12, item 5):

- ``visible_after_last_line_s``: from the last line's document to the moment another
  process, polling the catalog every 20 ms, sees the run complete (its stop document);
- ``read_map_s``: in that other process, the map read back as arrays
  (``temsims.app.loaders``' direct, concurrent read of the line and collector columns,
  then ``RunData.maps()``: the one line assembler), the best of two reads after a
  first (``first_read_s``, which pays the process's first requests and imports);
- ``open_s``: that process's ``open_catalog(DIR)`` (its imports included).

Writes ``benchmarks/results/catalog_read.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "catalog_read.json"
SPECIES = ("6Li", "7Li", "12C", "16O")

READER = textwrap.dedent("""
    import json, sys, time
    t0 = time.time()
    from temsims.catalog import open_catalog
    cat = open_catalog(sys.argv[1])
    opened = time.time()
    print(json.dumps({"open_s": opened - t0}), flush=True)
    uid = sys.stdin.readline().strip()
    while True:
        try:
            run = cat.runs[uid]
            if run.metadata.get("stop"):
                break
        except KeyError:
            pass
        time.sleep(0.02)
    seen = time.time()
    from temsims.app.loaders import _read_tiled_run
    reads = []
    for _ in range(3):  # the first pays this process's first requests and imports
        t1 = time.perf_counter()
        maps = _read_tiled_run(cat.runs[uid]).maps()
        reads.append(time.perf_counter() - t1)
    shape = [list(m.shape) for m in maps.values()]
    print(json.dumps({"seen": seen, "first_read_s": reads[0], "read_map_s": min(reads[1:]),
                      "shapes": shape}), flush=True)
    cat.close()
""")


def _documents(nx: int, ny: int, page: int):
    import event_model
    import numpy as np

    from temsims.callbacks.maps import map_block

    rng = np.random.default_rng(0)
    md = {"plan_name": "sims_map", "mode": "SIMS", "sample": "read-bench",
          "specimen": "li2co3-particles", "operator": "benchmark", "correlation_id": "rb",
          "detectors": ["imager"],
          "map": map_block(imager="imager", species=SPECIES, pixels=(nx, ny), fov_um=4.0,
                           dwell_s=1e-4, frames=1, centre_um=(0.0, 0.0))}
    bundle = event_model.compose_run(metadata=md)
    keys = {"imager_line": {"source": "SIM:line", "dtype": "integer", "shape": [],
                            "dtype_numpy": "<i8"}}
    for n, s in enumerate(SPECIES, start=1):
        keys[f"imager_{s}"] = {"source": f"PV:MS:COL{n}:MAP", "dtype": "array",
                               "shape": [1, nx], "dims": ["line", "x"], "dtype_numpy": "<i4",
                               "units": "counts"}
    desc = bundle.compose_descriptor(name="primary", data_keys=keys)
    pages = []
    for row0 in range(0, ny, page):
        events = []
        for row in range(row0, min(row0 + page, ny)):
            data = {"imager_line": row}
            data.update({f"imager_{s}": rng.poisson(50, (1, nx)).astype(np.int32)
                         for s in SPECIES})
            t = time.time()
            events.append(desc.compose_event(data=data, timestamps=dict.fromkeys(data, t)))
        pages.append(event_model.pack_event_page(*events))
    return bundle, desc, pages


def one_run(directory: Path, nx: int, ny: int, page: int, period: float) -> dict:
    from temsims.catalog import open_catalog

    reader = subprocess.Popen([sys.executable, "-c", READER, str(directory)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    opened = json.loads(reader.stdout.readline())
    cat = open_catalog(directory)
    writer = cat.writer()
    bundle, desc, pages = _documents(nx, ny, page)
    writer("start", bundle.start_doc)
    reader.stdin.write(bundle.start_doc["uid"] + "\n")
    reader.stdin.flush()
    writer("descriptor", desc.descriptor_doc)
    for p in pages:
        writer("event_page", p)
        time.sleep(period)
    t_last = time.time()
    writer("stop", bundle.compose_stop())
    seen = json.loads(reader.stdout.readline())
    reader.wait(60)
    cat.close(timeout=120)
    return {"open_s": opened["open_s"], "visible_after_last_line_s": seen["seen"] - t_last,
            "first_read_s": seen["first_read_s"], "read_map_s": seen["read_map_s"],
            "shapes": seen["shapes"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Catalog read path: a SIMS map's visibility from another process and "
        "its read-back.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--nx", type=int, default=512, help="pixels per line")
    parser.add_argument("--ny", type=int, default=512, help="lines")
    parser.add_argument("--dwell", type=float, default=1e-4, help="dwell per pixel (s)")
    parser.add_argument("--flush", type=float, default=0.2,
                        help="seconds between collects (temsims.plans.sims.FLUSH_PERIOD_S)")
    parser.add_argument("--repeat", type=int, default=3, help="runs, each in a fresh catalog")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON result")
    args = parser.parse_args(argv)
    line_s = args.nx * args.dwell
    args.page = max(1, round(args.flush / line_s))
    args.period = args.page * line_s
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="catalog-read-bench-") as tmp:
            runs.append(one_run(Path(tmp) / "catalog", args.nx, args.ny, args.page,
                                args.period))
    result = {"nx": args.nx, "ny": args.ny, "species": list(SPECIES), "dwell_s": args.dwell,
              "page": args.page, "period_s": args.period, "runs": runs,
              **{f"{k}_median": statistics.median_high(r[k] for r in runs)
                 for k in ("open_s", "visible_after_last_line_s", "read_map_s",
                           "first_read_s")},
              "python": sys.version.split()[0], "cpus": os.cpu_count()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"map {args.nx}x{args.ny}x{len(SPECIES)} int32 at {args.dwell:g} s dwell: pages of "
          f"{args.page} lines every {args.period:g} s")
    for r in runs:
        print(f"  open {r['open_s']:.2f} s; visible {r['visible_after_last_line_s']:.3f} s "
              f"after the last line; read back in {r['read_map_s']:.3f} s (first read "
              f"{r['first_read_s']:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
