"""What the case benchmarks share: one ``temsims demo --case CASE`` per seed in its own
process, the seeds drawn at run time (printed) unless given, and the spread of a
figure over the seeds.

Imported by name by ``cathode_case_benchmark.py``, ``quantification_case_benchmark.py``
and ``solar_cell_case_benchmark.py`` (run as scripts from this folder).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def add_seed_options(parser: argparse.ArgumentParser, *, base_port: int,
                     output: str) -> None:
    """The options every case benchmark takes (``output``: file name in results/)."""
    parser.add_argument("--seeds", type=int, default=10, help="how many seeds")
    parser.add_argument("--first-seed", type=int, default=None,
                        help="seeds first..first+N-1; unset: drawn at run time (printed)")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick sizes")
    parser.add_argument("--time-scale", type=float, default=20.0,
                        help="instrument time scale")
    parser.add_argument("--base-port", type=int, default=base_port,
                        help="CA ports from here")
    parser.add_argument("--output", default=str(RESULTS / output), help="JSON result")


def seeds_of(args: argparse.Namespace) -> list[int]:
    """``args.seeds`` consecutive seeds from ``--first-seed``, or from a random one."""
    first = args.first_seed if args.first_seed is not None else random.randrange(1, 10**6)
    return list(range(first, first + args.seeds))


def run_case_seed(case: str, seed: int, *, quick: bool, time_scale: float,
                  base_port: int, workdir: Path, prefix: str,
                  extra: Sequence[str] = (), timeout: float = 600.0) -> dict:
    """``temsims demo --case CASE`` for one seed, on IOCs of its own (PV prefix
    ``prefix<seed>:``); ``{"seed", "wall_s", "report"}`` (its ``report.json``) or
    ``{"seed", "wall_s", "error"}`` (the end of its output) when it failed."""
    out = workdir / f"seed{seed}"
    cmd = [sys.executable, "-m", "temsims.app.cli", "demo", "--case", case,
           "--seed", str(seed), "--prefix", f"{prefix}{seed % 100000}:", "--base-port",
           str(base_port), "--catalog", str(out / "catalog"), "--out", str(out / "report"),
           "--time-scale", f"{time_scale:g}", *extra] + (["--quick"] if quick else [])
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        return {"seed": seed, "wall_s": wall, "error": (proc.stdout + proc.stderr)[-2000:]}
    report = json.loads((out / "report" / "report.json").read_text())
    return {"seed": seed, "wall_s": wall, "report": report}


def spread(values: Sequence[float | None]) -> dict:
    """Median, 90th percentile (linear, as numpy's), mean, sd, min and max of the values
    that are not None; ``{"n": 0}`` when none is."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return {"n": 0}
    rank = 0.9 * (len(v) - 1)
    lo = int(rank)
    p90 = v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (rank - lo)
    return {"n": len(v), "median": statistics.median(v), "p90": p90,
            "mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else None,
            "min": v[0], "max": v[-1]}


def seed_reports(case: str, seeds: Sequence[int], args: argparse.Namespace, *,
                 prefix: str, rows: list, workdir: Path, extra: Sequence[str] = (),
                 timeout: float = 600.0):
    """Run the case for each seed in turn; yield ``(seed, report, wall_s)`` of each run
    that worked. A failed run is printed with the end of its output and recorded in
    ``rows`` as ``{"seed", "wall_s", "failed": True}``."""
    for seed in seeds:
        r = run_case_seed(case, seed, quick=args.quick, time_scale=args.time_scale,
                          base_port=args.base_port, workdir=workdir, prefix=prefix,
                          extra=extra, timeout=timeout)
        if "error" in r:
            print(f"seed {seed}: FAILED after {r['wall_s']:.1f} s\n{r['error']}", flush=True)
            rows.append({"seed": seed, "wall_s": r["wall_s"], "failed": True})
            continue
        yield seed, r["report"], r["wall_s"]


__all__ = ["add_seed_options", "run_case_seed", "seed_reports", "seeds_of", "spread"]
