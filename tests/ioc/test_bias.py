"""The holder bias supply IOC over CA: limits, ramp on the IOC's clock, arc fault, interlock.

Every test uses the session's shared instrument (``instruments.get()``, reset). The
"lone" tests put the stage and the TEM Dead first (enabling must then be refused,
fail safe); the module's end resets the instrument, which brings them back. The
others have the real stage and TEM parts for the paths that need SIMS geometry (tilt
-68 deg, objective lens off). Ramp timing is asserted on the IOC's timestamps.
"""

from __future__ import annotations

import math
import statistics

import catools as ca
import pytest
from caproto import AlarmSeverity


# --------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lone(instruments):
    """The bias supply with no stage and no TEM: the shared instrument with both Dead."""
    procs = instruments.get()
    for part in ("stage", "tem"):
        procs.set_part(part, "Dead")
    yield procs
    procs.reset()  # every part Up again, in its start-up state


@pytest.fixture
def sims(instruments):
    """The shared instrument (all five parts), reset: bias off at 0 V, stage home."""
    return instruments.get()


def move_alpha(procs, target: float) -> None:
    ca.move_motor(procs.prefix("stage") + "A", target, velocity=30.0)


def sims_geometry(procs) -> None:
    move_alpha(procs, -68.0)
    ca.caput(procs.prefix("tem") + "OBJ", "Off")
    B = procs.prefix("bias")
    ca.wait_for(lambda: ca.caget_str(B + "INTERLOCK_RBV") == "Permit", 2, "the interlock permit")


def switch_off(B: str) -> None:
    ca.caput(B + "RAMP_RATE", 10000.0)
    ca.caput(B + "ENABLE", "Off", timeout=5)
    ca.caput(B + "VOLTAGE", 0.0)
    if ca.caget_str(B + "FAULT") == "Arc":
        ca.caput(B + "RESET", "Reset")


# --------------------------------------------------------------------------------------
# Alone: refusals and the fault latch
# --------------------------------------------------------------------------------------
def test_bad_puts_are_refused_and_the_ioc_keeps_answering(lone):
    B = lone.prefix("bias")
    ca.caput(B + "VOLTAGE", 1234.5)  # disabled: stored at once, output stays at 0
    assert ca.caget(B + "VOLTAGE") == 1234.5
    assert ca.caget(B + "VOLTAGE_RBV") == 0.0
    for name, value in [("VOLTAGE", 4500.1), ("VOLTAGE", -4501.0), ("VOLTAGE", 1e9),
                        ("VOLTAGE", math.nan), ("VOLTAGE", math.inf),
                        ("RAMP_RATE", 0.0), ("RAMP_RATE", -5.0), ("RAMP_RATE", math.nan),
                        ("RAMP_RATE", 1e6)]:
        ca.assert_refused(B + name, value)
        assert ca.severity(B + name) == AlarmSeverity.MAJOR_ALARM
    for name, value in [("ENABLE", 2), ("ENABLE", "Maybe"), ("FAULT", 5), ("FAULT", "Fire"),
                        ("RESET", 9), ("RESET", "Now")]:
        ca.assert_refused(B + name, value)
    assert ca.caget(B + "VOLTAGE") == 1234.5
    assert ca.caget(B + "UPTIME") >= 0.0
    ca.caput(B + "VOLTAGE", 4500.0)  # the limits themselves are accepted; clears the alarm
    ca.caput(B + "VOLTAGE", -4500.0)
    assert ca.severity(B + "VOLTAGE") == AlarmSeverity.NO_ALARM
    assert ca.severity(B + "VOLTAGE_RBV") == AlarmSeverity.NO_ALARM  # alarms stay on their PV
    ca.caput(B + "VOLTAGE", 0.0)


def test_enable_refused_fail_safe_without_peers(lone):
    B = lone.prefix("bias")
    assert ca.caget_str(B + "INTERLOCK_RBV") == "Blocked"
    assert ca.caget(B + "INTERLOCK_REASON") == "stage link down"
    ca.caput(B + "VOLTAGE", 2000.0)
    ca.assert_refused(B + "ENABLE", "On")
    assert ca.caget(B + "STATUS") == "Refused: stage link down"
    assert ca.caget_str(B + "ENABLE_RBV") == "Off"
    assert ca.severity(B + "ENABLE") == AlarmSeverity.MAJOR_ALARM
    assert ca.caget(B + "VOLTAGE_RBV") == 0.0
    assert ca.caget_str(B + "RAMPING") == "Idle"  # nothing was started
    ca.caput(B + "ENABLE", "Off")  # always allowed; clears the alarm
    assert ca.severity(B + "ENABLE") == AlarmSeverity.NO_ALARM
    ca.caput(B + "VOLTAGE", 0.0)


def test_arc_fault_latches_until_reset(lone):
    B = lone.prefix("bias")
    ca.caput(B + "FAULT", "Arc")
    assert ca.caget_str(B + "FAULT") == "Arc"
    assert ca.caget(B + "STATUS") == "Tripped: arc; RESET to clear"
    assert ca.severity(B + "FAULT") == AlarmSeverity.MAJOR_ALARM
    ca.assert_refused(B + "FAULT", "OK")  # only RESET clears it
    ca.assert_refused(B + "ENABLE", "On")
    assert ca.caget(B + "STATUS") == "Refused: fault latched, RESET first"
    ca.caput(B + "RESET", "Reset")
    assert ca.caget_str(B + "RESET") == "Idle"
    assert ca.caget_str(B + "FAULT") == "OK"
    assert ca.severity(B + "FAULT") == AlarmSeverity.NO_ALARM
    assert ca.caget(B + "STATUS").startswith("OK")
    assert ca.caget_str(B + "ENABLE_RBV") == "Off"


# --------------------------------------------------------------------------------------
# With the real stage and TEM
# --------------------------------------------------------------------------------------
def test_enable_needs_tilt_and_objective_off(sims):
    B, T = sims.prefix("bias"), sims.prefix("tem")
    # The bias reads the tilt and the lens from the world: the refusal is current the
    # moment the stage's DMOV = 1 (or the lens put's completion) is.
    move_alpha(sims, 0.0)
    ca.caput(T + "OBJ", "On")
    ca.assert_refused(B + "ENABLE", "On")
    assert ca.caget(B + "STATUS").startswith("Refused: alpha 0.0 deg")
    move_alpha(sims, -68.0)
    ca.assert_refused(B + "ENABLE", "On")
    assert ca.caget(B + "STATUS") == "Refused: objective lens on"
    sims_geometry(sims)
    ca.caput(B + "ENABLE", "On")
    assert ca.caget_str(B + "ENABLE_RBV") == "On"
    assert ca.caget(B + "STATUS") == "OK"
    assert ca.severity(B + "ENABLE") == AlarmSeverity.NO_ALARM
    switch_off(B)


def _ramp(updates, t_cmd: float, v_from: float, v_to: float) -> list[tuple[float, float]]:
    """The readback updates of one ramp: stamped after its command, up to its target."""
    out = []
    for t, v in updates:
        if t < t_cmd:
            continue
        out.append((t, float(v)))
        if float(v) == v_to:
            break
    assert out and out[-1][1] == v_to, (v_from, v_to, out)
    return out


def test_output_ramps_at_ramp_rate_on_the_ioc_clock(sims):
    B = sims.prefix("bias")
    scale = ca.caget(sims.sim_prefix + "TIME_SCALE")
    sims_geometry(sims)
    rate = 2000.0
    ca.caput(B + "RAMP_RATE", rate)
    ca.caput(B + "ENABLE", "On")  # at 0 V: nothing to ramp
    rbv, ramping = ca.Monitor(B + "VOLTAGE_RBV"), ca.Monitor(B + "RAMPING")
    setpoint, enable = ca.Monitor(B + "VOLTAGE"), ca.Monitor(B + "ENABLE")
    try:
        ca.caput(B + "VOLTAGE", 3000.0, timeout=10)
        # The put completes when the ramp has settled, never before.
        assert ca.caget(B + "VOLTAGE_RBV") == 3000.0
        assert ca.caget_str(B + "RAMPING") == "Idle"
        ca.caput(B + "VOLTAGE", -1000.0, timeout=10)
        assert ca.caget(B + "VOLTAGE_RBV") == -1000.0
        # Disabled: the output ramps to 0 (slowly here, to count the updates).
        slow = 100.0
        ca.caput(B + "RAMP_RATE", slow)
        ca.caput(B + "ENABLE", "Off", timeout=10)
        assert ca.caget(B + "VOLTAGE_RBV") == 0.0
        assert ca.caget(B + "VOLTAGE") == -1000.0  # the setpoint is kept
        rbv.wait_for(lambda u: float(u[-1][1]) == 0.0 and len(u) > 3)
        ramping.wait_for(lambda u: int(u[-1][1]) == 0)

        # Each ramp, timed from the command's timestamp (the setpoint or ENABLE put) to
        # the readback's landing on the target: |dV| / rate.
        (t_up, _), = [(t, v) for t, v in setpoint.updates[1:] if v == 3000.0]
        (t_down, _), = [(t, v) for t, v in setpoint.updates[1:] if v == -1000.0]
        (t_off, _), = [(t, v) for t, v in enable.updates[1:] if int(v) == 0]
        ramps = [("0 -> 3000 V", t_up, 0.0, 3000.0, rate),
                 ("3000 -> -1000 V", t_down, 3000.0, -1000.0, rate),
                 ("-1000 -> 0 V, disabled", t_off, -1000.0, 0.0, slow)]
        for what, t_cmd, v0, v1, r in ramps:
            points = _ramp(rbv.updates, t_cmd, v0, v1)
            duration = points[-1][0] - t_cmd
            expected = abs(v1 - v0) / r
            # Every published step lies on V = V0 +- rate (t - t_cmd) (IOC stamps).
            worst = max(abs(v - (v0 + math.copysign(r, v1 - v0) * (t - t_cmd)))
                        for t, v in points)
            print(f"ramp {what} at {r:g} V/s: {duration:.4f} s on the IOC's clock "
                  f"(expected {expected:.4f}), {len(points)} updates, worst step off the "
                  f"line by {worst:.3f} V")
            assert duration == pytest.approx(expected, abs=1e-3)
            assert worst < 1.0
        # The readback is published at 20 Hz of wall time (the IOC's nominal interval
        # over the time scale), whatever the time scale.
        slow_points = _ramp(rbv.updates, t_off, -1000.0, 0.0)
        wall_intervals = [(b[0] - a[0]) / scale for a, b in
                          zip(slow_points, slow_points[1:-1], strict=False)]
        median = statistics.median(wall_intervals)
        print(f"time scale {scale:g}: median update interval {median:.4f} s of wall time")
        assert 0.045 < median < 0.07
        states = [int(v) for v in ramping.values()]
        assert states[0] == 0 and states.count(1) == 3 and states[-1] == 0  # Ramping x3
    finally:
        for monitor in (rbv, ramping, setpoint, enable):
            monitor.clear()
        switch_off(B)


def test_arc_drops_the_output_at_once(sims):
    B = sims.prefix("bias")
    sims_geometry(sims)
    ca.caput(B + "RAMP_RATE", 10000.0)
    ca.caput(B + "VOLTAGE", 2000.0)
    ca.caput(B + "ENABLE", "On", timeout=5)
    assert ca.caget(B + "VOLTAGE_RBV") == 2000.0
    ca.caput(B + "RAMP_RATE", 100.0)  # a trip does not ramp
    rbv = ca.Monitor(B + "VOLTAGE_RBV")
    try:
        ca.caput(B + "FAULT", "Arc")
        assert ca.caget(B + "VOLTAGE_RBV") == 0.0
        # The monitor's thread can deliver the 0 after the read's reply (load 11-14: it
        # had not when the recording stopped); a ramp would also end at 0, in steps.
        rbv.wait_for(lambda updates: float(updates[-1][1]) == 0.0, timeout=5.0)
    finally:
        rbv.clear()
    assert [float(v) for v in rbv.values()] == [2000.0, 0.0]  # one step, no ramp
    assert ca.caget_str(B + "ENABLE_RBV") == "Off"
    assert ca.caget_str(B + "ENABLE") == "Off"
    assert ca.severity(B + "ENABLE_RBV") == AlarmSeverity.MAJOR_ALARM
    ca.assert_refused(B + "ENABLE", "On")  # latched, even in SIMS geometry
    ca.caput(B + "RESET", "Reset")
    ca.caput(B + "RAMP_RATE", 10000.0)
    ca.caput(B + "ENABLE", "On", timeout=5)
    assert ca.caget(B + "VOLTAGE_RBV") == 2000.0
    switch_off(B)


def test_losing_the_geometry_trips_the_output(sims):
    B, T = sims.prefix("bias"), sims.prefix("tem")
    sims_geometry(sims)
    ca.caput(B + "VOLTAGE", 1000.0)
    ca.caput(B + "ENABLE", "On", timeout=5)
    ca.caput(B + "RAMP_RATE", 100.0)  # a trip does not ramp
    move_alpha(sims, -66.0)
    ca.wait_for(lambda: ca.caget_str(B + "ENABLE_RBV") == "Off", 1, "the trip")
    assert ca.caget(B + "VOLTAGE_RBV") == 0.0
    assert ca.caget(B + "STATUS").startswith("Tripped: alpha")
    assert ca.severity(B + "ENABLE_RBV") == AlarmSeverity.MAJOR_ALARM
    ca.assert_refused(B + "ENABLE", "On")
    # Not latched: once the geometry is back, enabling works again.
    sims_geometry(sims)
    ca.caput(B + "RAMP_RATE", 10000.0)
    ca.caput(B + "ENABLE", "On", timeout=5)
    assert ca.caget(B + "VOLTAGE_RBV") == 1000.0
    # The objective lens cannot come on while the bias is on (TEM interlock), so
    # the lens path is checked with the bias off: enabling is refused.
    switch_off(B)
    ca.caput(T + "OBJ", "On")
    ca.assert_refused(B + "ENABLE", "On")
    assert ca.caget(B + "STATUS") == "Refused: objective lens on"


def test_stage_part_down_trips_the_output_fail_safe(sims):
    """The stage part killed (Dead) under an enabled supply, then brought back."""
    B = sims.prefix("bias")
    sims_geometry(sims)
    ca.caput(B + "VOLTAGE", 500.0)
    ca.caput(B + "ENABLE", "On", timeout=5)
    sims.stop_one("stage")
    try:
        ca.wait_for(lambda: ca.caget_str(B + "ENABLE_RBV") == "Off", 2, "the trip, stage down")
        assert ca.caget(B + "VOLTAGE_RBV") == 0.0
        assert ca.caget(B + "STATUS") == "Tripped: stage link down"
        ca.assert_refused(B + "ENABLE", "On")
    finally:
        sims.set_part("stage", "Up")
