"""Interlock fuzzing in CI (issue 14 item 7): a few hundred derandomised steps.

The state machine is :class:`interlock_machine.InterlockMachine` (its docstring says
what it drives and how the three invariants are read). Here it runs on an instrument
of its own purpose at time scale :data:`FUZZ_TIME_SCALE` (moves and ramps 200 times
faster than real time; the parts are restarted through ``SIM:<PART>``, which other
modules' connected devices must not see). ``benchmarks/interlock_fuzz_benchmark.py``
runs the same machine for >= 10,000 steps.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

sys.path.insert(0, str(Path(__file__).resolve().parent))

import interlock_machine  # noqa: E402

#: Simulated seconds per wall second of the fuzzed instrument.
FUZZ_TIME_SCALE = 200.0
#: Examples x steps per example: up to 8 x 50 = 400 steps (hypothesis ends some
#: examples early).
CI_EXAMPLES, CI_STEPS = 8, 50


@pytest.fixture(scope="module")
def fuzzed(instruments):
    procs = instruments.get(time_scale=FUZZ_TIME_SCALE, purpose="interlock-fuzz")
    interlock_machine.bind(procs)
    return procs


def test_random_sequences_never_break_an_interlock(fuzzed):
    figures = interlock_machine.reset_figures()
    t0 = time.monotonic()
    run_state_machine_as_test(
        interlock_machine.InterlockMachine,
        settings=settings(derandomize=True, max_examples=CI_EXAMPLES,
                          stateful_step_count=CI_STEPS, deadline=None,
                          suppress_health_check=list(HealthCheck), database=None,
                          # no shrinking: a replay against live IOCs never times alike;
                          # the violations are collected with their readings instead
                          phases=(Phase.explicit, Phase.generate)))
    wall = time.monotonic() - t0
    print(f"interlock fuzz: {figures.steps} steps, {figures.checks} checks "
          f"({figures.rechecks} re-read, {figures.straddles} straddled), "
          f"{figures.restarts} restarts, "
          f"{len(figures.violations)} violations, {wall:.1f} s; {figures.by_rule}")
    assert figures.steps >= 200
    assert figures.violations == [], figures.violations[:5]


def test_a_restarted_part_comes_back_and_the_interlocks_hold(fuzzed):
    """Regression: every part restarted in turn, from the SIMS geometry with the beam
    unblanked and the bias on, then the three invariants read again."""
    ca = interlock_machine.CA(fuzzed)
    figures = interlock_machine.reset_figures()
    for part in interlock_machine.PARTS_RESTARTED:
        ca.put("sim", "RESET", "Reset", wait=True, timeout=60)
        ca.put("stage", "A.VELO", 30.0, wait=True)
        ca.put("tem", "OBJ", "Off", wait=True)
        ca.put("stage", "A", interlock_machine.SIMS_TILT_DEG, wait=True)
        deadline = time.monotonic() + 10  # (the VAL put may complete before DMOV = 1)
        while not (int(ca.read("stage", "A.DMOV")[1]) == 1 and abs(
                float(ca.read("stage", "A.RBV")[1]) - interlock_machine.SIMS_TILT_DEG) < 0.05):
            assert time.monotonic() < deadline, "alpha never reached -68 deg"
            time.sleep(0.01)
        ca.put("bias", "RAMP_RATE", 10000.0, wait=True)
        # (the threading client reports no put error: a refusal would only time out)
        _put_and_see(ca, "bias", "ENABLE", "On", "ENABLE_RBV")
        ca.put("bias", "VOLTAGE", 4500.0, wait=True)
        _put_and_see(ca, "column", "BLANK", "Unblanked", "BLANK_RBV")
        ca.put("sim", part.upper(), "Dead", wait=True, timeout=60)
        ca.put("sim", part.upper(), "Up", wait=True, timeout=60)
        assert interlock_machine.check_invariants(ca, figures, f"restart {part}") == []
    ca.put("sim", "RESET", "Reset", wait=True, timeout=60)


def _put_and_see(ca, part: str, pv: str, value: str, readback: str) -> None:
    ca.put(part, pv, value)
    deadline = time.monotonic() + 10
    while ca.read(part, readback, string=True)[1] != value:
        assert time.monotonic() < deadline, (
            f"{part} {pv} {value} not taken: {ca.read('bias', 'STATUS', string=True)}, "
            f"{ca.read('column', 'STATUS', string=True)}, alpha {ca.read('stage', 'A.RBV')}")
        time.sleep(0.02)


def _readings(alpha, objective="Off", blank="Unblanked", enable="Off", volts=0.0):
    """A read_state result: each argument (nominal timestamp, value)."""
    return {"alpha": alpha, "objective": objective, "blank": blank, "enable": enable,
            "volts": volts}


def test_an_unblank_is_judged_against_the_tilt_at_its_own_timestamp():
    """Regression (no IOC): a CI run under load reported "beam unblanked at alpha
    29.994 deg, accepted while broken" after step 142 (tilt to -67.2 from 30 with no
    wait, then an unblank): alpha was read as the move began, the move ended and the
    column took the unblank at -67.2 before BLANK_RBV was read. The second reading
    shows the tilt changed after the first, so the unblank is not judged against
    29.994 deg; the IOC-side checks of that window are tests/ioc/test_interlock_races.py."""
    judge = interlock_machine.broken
    t = 1000.0
    moving = _readings(alpha=(t, 29.994), objective=(t - 50, "Off"),
                       blank=(t + 11.0, "Unblanked"), enable=(t - 50, "Off"),
                       volts=(t - 50, 0.0))
    arrived = dict(moving, alpha=(t + 3.7, -67.2))
    assert [late for _, late in judge(moving, arrived)] == [None]  # cannot tell: straddle
    # What a single reading concluded, and what still counts as accepted while broken:
    assert [late for _, late in judge(moving)] == [True]
    assert [late for _, late in judge(moving, moving)] == [True]
    left = dict(moving, alpha=(t + 2.0, 15.0))  # still outside at the unblank's time
    assert True in [late for _, late in judge(moving, left)]
    lens_on = dict(arrived, objective=(t + 5.0, "On"))  # lens on before the unblank
    assert True in [late for _, late in judge(dict(moving, objective=(t - 50, "Off")),
                                              lens_on)]
    # Unblanked first, the tilt left later: the auto-blank is in flight (re-read).
    leaving = _readings(alpha=(t + 12.0, 29.994), objective=(t - 50, "Off"),
                        blank=(t + 11.0, "Unblanked"), enable=(t - 50, "Off"),
                        volts=(t - 50, 0.0))
    assert {late for _, late in judge(leaving, leaving)} == {False}
    # The bias enabled while the lens was on, and the lens switched on over the bias.
    bias_on = _readings(alpha=(t, -68.0), objective=(t, "On"), blank=(t, "Blanked"),
                        enable=(t + 1.0, "On"), volts=(t + 1.0, 0.0))
    assert True in [late for _, late in judge(bias_on, bias_on)]
    lens_after = dict(bias_on, objective=(t + 2.0, "On"))
    assert True in [late for _, late in judge(lens_after, lens_after)]

