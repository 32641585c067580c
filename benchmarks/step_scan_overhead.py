"""Benchmark: per-point cost of a bluesky step scan over Channel Access vs ophyd.sim.

Starts its own stage and ion-column IOCs (a free block of loopback ports, a random
prefix), connects ``temsims.devices`` (caproto control layer), sets the x axis fast
(VELO = VMAX, ACCL = 0) and runs, in one RunEngine, the same N-point ``scan`` twice:
the CA stage x axis against a cheap CA detector (the column's beam-current readback),
and ``ophyd.sim``'s ``motor`` against ``det``. Prints the per-point times and their
ratio (target <= 2) and writes them to ``benchmarks/results/step_scan_overhead.json``.

A CA point is a put of the motor record's VAL, its four monitor updates (DMOV 0, VAL,
RBV, DMOV 1, one TCP message) and one CA read of the detector, each through caproto's
server and threading client and ophyd; where that time goes, and what was cut, is
decision 0019 (``docs/decisions/0019-step-scan-overhead.md``). The ratio varies by
run on a shared 2-vCPU machine (the CA scan has four cross-process wake-ups a point):
compare ratios within one run.

Run: ``.venv/bin/python benchmarks/step_scan_overhead.py [--points 200 --repeat 3]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench_instrument import start_instrument
from targets import STEP_SCAN_RATIO

RESULTS = Path(__file__).resolve().parent / "results" / "step_scan_overhead.json"


def time_scan(RE, plan_factory, points: int) -> float:
    t0 = time.perf_counter()
    RE(plan_factory())
    return (time.perf_counter() - t0) / points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    procs = start_instrument("B", iocs=("stage", "column"))
    prefix = procs.instrument_prefix
    try:
        import bluesky.plans as bp
        from bluesky import RunEngine
        from ophyd.sim import det, motor

        from temsims.devices import connect

        inst = connect(prefix, parts=["stage", "column"], timeout=10.0)
        x = inst.stage.x
        x.velocity.set(200.0).wait(5)  # VMAX
        x.acceleration.set(0.0).wait(5)
        x.set(0.0).wait(30)
        cheap_det = inst.column.current  # one CA read (round trip) per point
        RE = RunEngine({})
        n = args.points
        span = 0.01 * (n - 1)  # 10 nm steps: motion time ~50 us per step
        ca, sim = [], []
        for _ in range(args.repeat):
            ca.append(time_scan(RE, lambda: bp.scan([cheap_det], x, 0.0, span, n), n))
            sim.append(time_scan(RE, lambda: bp.scan([det], motor, 0.0, span, n), n))
        x.set(0.0).wait(30)
        ca_ms, sim_ms = statistics.median(ca) * 1e3, statistics.median(sim) * 1e3
        ratio = ca_ms / sim_ms
        result = {
            "points": n, "repeat": args.repeat,
            "ca_motor_ms_per_point": round(ca_ms, 3),
            "sim_motor_ms_per_point": round(sim_ms, 3),
            "ratio": round(ratio, 2), "target_ratio": STEP_SCAN_RATIO.limit,
            "ca_runs_ms": [round(v * 1e3, 3) for v in ca],
            "sim_runs_ms": [round(v * 1e3, 3) for v in sim],
            "control_layer": "caproto", "python": sys.version.split()[0],
            "notes": "CA: temsims stage X (VELO 200 um/s, ACCL 0) vs column CURRENT_RBV; "
                     "sim: ophyd.sim motor vs det; same RunEngine, no callbacks.",
        }
        print(f"step scan, {n} points: CA {ca_ms:.2f} ms/point, ophyd.sim {sim_ms:.2f} "
              f"ms/point, ratio {ratio:.2f} (target {STEP_SCAN_RATIO.describe()})")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    finally:
        procs.stop()


if __name__ == "__main__":
    sys.exit(main())
