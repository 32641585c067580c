"""Interlock fuzzing at length (issue 14 item 7): >= 10,000 random steps, 0 violations.

Runs ``tests/faults/interlock_machine.InterlockMachine`` (its docstring: the rules,
the three invariants read from the IOCs, part restarts) against an instrument of its
own at ``--time-scale`` (default 200), example after example (hypothesis seeds
``--seed``, ``--seed + 1``, ...) until ``--steps`` steps have run, and writes
``benchmarks/results/interlock_fuzz.json``: steps, checks, re-reads, restarts,
violations (count and the first ones in words), wall time, steps per rule.

    python benchmarks/interlock_fuzz_benchmark.py [--steps 10000] [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def run(steps: int, time_scale: float, seed: int, examples_steps: int) -> dict:
    """Fuzz until ``steps`` steps ran; the figures."""
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "faults")]
    import interlock_machine as machine  # tests/faults: shared with the CI test
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.stateful import run_state_machine_as_test

    from temsims.channel_access import CALayout, find_free_base_port
    from temsims.ioc.common import ensure_loopback_repeater
    from temsims.ioc.launcher import InstrumentProcesses

    layout = CALayout(base_port=find_free_base_port(10))
    os.environ.update(layout.client_environment())
    ensure_loopback_repeater(layout.host, layout.repeater_port)
    procs = InstrumentProcesses(layout=layout, instrument_prefix="FUZZ:",
                                time_scale=time_scale)
    procs.start(timeout=120)
    try:
        machine.bind(procs)
        figures = machine.reset_figures()
        t0 = time.monotonic()
        rounds = 0
        while figures.steps < steps:
            rounds += 1
            # One hypothesis seed per round: reproducible, and never the same sequences.
            _run(run_state_machine_as_test, machine, settings, HealthCheck, Phase,
                 seed + rounds, steps - figures.steps, examples_steps)
        wall = time.monotonic() - t0
    finally:
        procs.stop()
    return {
        "steps": figures.steps, "checks": figures.checks, "rechecks": figures.rechecks,
        "straddles": figures.straddles,
        "restarts": figures.restarts, "violations": len(figures.violations),
        "violations_first": figures.violations[:10], "wall_s": round(wall, 1),
        "steps_per_s": round(figures.steps / wall, 1), "time_scale": time_scale,
        "seed": seed, "rounds": rounds, "steps_per_example": examples_steps,
        "by_rule": figures.by_rule,
        "rule_wall_s": {k: round(v, 2) for k, v in figures.rule_s.items()},
    }


def _run(run_machine, machine, settings, health, phase, seed: int, left: int,
         per_example: int) -> None:
    from hypothesis import seed as hypothesis_seed

    @hypothesis_seed(seed)
    def go() -> None:
        run_machine(machine.InterlockMachine, settings=settings(
            max_examples=max(1, left // per_example + 1), stateful_step_count=per_example,
            deadline=None, database=None, suppress_health_check=list(health),
            phases=(phase.explicit, phase.generate)))

    go()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10000, help="steps to run at least")
    parser.add_argument("--time-scale", type=float, default=200.0)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--steps-per-example", type=int, default=100)
    parser.add_argument("--output", default=str(HERE / "results" / "interlock_fuzz.json"))
    args = parser.parse_args(argv)
    result = run(args.steps, args.time_scale, args.seed, args.steps_per_example)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "violations_first"}))
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
