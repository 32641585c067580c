"""The stage IOC: motor records that move in real time, over Channel Access.

Most tests share one stage IOC of their own (module scope, own prefix and ports);
an autouse fixture puts every axis back (calibration, limits, speed, position) after
each test. One test uses the session's shared instrument and restores what it moves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
from caproto import AlarmSeverity, AlarmStatus, CaprotoTimeoutError
from catools import Monitor, get, put, read, refused, wait_for
from instrument_support import stop_instrument

from temsims.ioc.stage import STAGE_AXES

FAST = {"X": 200.0, "Y": 200.0, "Z": 50.0, "A": 30.0, "B": 30.0}  # VMAX of each axis


# ------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------
def wait_done(motor: str, timeout: float = 10.0) -> None:
    """Wait until DMOV is 1 (polling; motion takes a tick at least)."""
    wait_for(lambda: get(motor + ".DMOV") == 1, timeout, f"{motor} to stop moving")


def reset_axis(motor: str, name: str) -> None:
    """Put one axis back to its defaults and to dial 0 (quickly)."""
    spec = STAGE_AXES[name]
    if get(motor + ".DMOV") != 1:
        put(motor + ".STOP", 1)
        wait_done(motor)
    put(motor + ".SET", "Use")
    put(motor + ".FOFF", "Variable")
    put(motor + ".DIR", "Pos")
    put(motor + ".OFF", 0.0)
    put(motor + ".DLLM", spec.soft_limits[0])
    put(motor + ".DHLM", spec.soft_limits[1])
    put(motor + ".ACCL", spec.acceleration_s)
    if get(motor + ".RBV") != 0.0:
        put(motor + ".VELO", FAST[name])
        put(motor, 0.0)
        wait_done(motor)
    put(motor + ".VELO", spec.velocity)
    assert get(motor + ".RBV") == 0.0


# ------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stage_prefix(start_instrument, slot_pool) -> Iterator[str]:
    """A stage IOC of this module's own; stopped (by PID) when the module is done."""
    procs = start_instrument(iocs=("stage",))
    yield procs.prefix("stage")
    stop_instrument(procs, slot_pool)


@pytest.fixture(autouse=True)
def _restore_stage(request) -> Iterator[None]:
    yield
    if "stage_prefix" in request.fixturenames:
        prefix = request.getfixturevalue("stage_prefix")
        for name in STAGE_AXES:
            reset_axis(prefix + name, name)


@pytest.fixture(scope="module")
def ophyd_motor(stage_prefix):
    """Factory: an ophyd EpicsMotor on the caproto control layer, connected."""
    import ophyd

    if ophyd.get_cl().name != "caproto":
        ophyd.set_cl("caproto")
    from ophyd import EpicsMotor

    def _make(axis: str, cls: type = EpicsMotor) -> EpicsMotor:
        motor = cls(stage_prefix + axis, name=f"stage_{axis.lower()}")
        motor.wait_for_connection(timeout=5)
        return motor

    return _make


# ------------------------------------------------------------------------------------
# Metadata and defaults
# ------------------------------------------------------------------------------------
def test_records_carry_units_limits_and_realistic_defaults(stage_prefix):
    for name, spec in STAGE_AXES.items():
        motor = stage_prefix + name
        assert get(motor + ".RTYP") == "motor"
        assert get(motor + ".EGU") == spec.egu
        md = read(motor, data_type="control").metadata
        assert md.units.decode() == spec.egu
        assert md.precision == spec.precision
        assert (md.lower_ctrl_limit, md.upper_ctrl_limit) == spec.soft_limits
        rbv_md = read(motor + ".RBV", data_type="control").metadata
        assert rbv_md.units.decode() == spec.egu
        assert get(motor + ".DMOV") == 1 and get(motor + ".MOVN") == 0
        assert get(motor + ".LVIO") == 0
        assert (get(motor + ".LLS"), get(motor + ".HLS")) == (0, 0)
    assert get(stage_prefix + "X.VELO") == 5.0 and get(stage_prefix + "Y.VELO") == 5.0
    assert get(stage_prefix + "Z.VELO") == 1.0
    assert get(stage_prefix + "A.VELO") == 5.0
    # Alpha reaches the SIMS geometry (-68 deg) and the TEM geometry (0 deg).
    assert get(stage_prefix + "A.LLM") <= -68.0 <= 0.0 <= get(stage_prefix + "A.HLM")
    assert get(stage_prefix + "A.DLLM") >= STAGE_AXES["A"].hard_limits[0]


# ------------------------------------------------------------------------------------
# Motion
# ------------------------------------------------------------------------------------
def test_move_takes_distance_over_velocity_and_rbv_updates(stage_prefix):
    motor = stage_prefix + "X"
    velocity, accel_s, distance = 20.0, 0.2, 30.0
    put(motor + ".VELO", velocity)
    put(motor + ".ACCL", accel_s)
    rbv = Monitor(motor + ".RBV", clock="arrival")
    dmov = Monitor(motor + ".DMOV", clock="arrival")
    try:
        t0 = time.monotonic()
        put(motor, distance)
        dmov.wait_for(lambda u: len(u) >= 3 and u[-1][1] == 1.0, timeout=10)
        elapsed = dmov.updates[-1][0] - t0
    finally:
        rbv.clear()
        dmov.clear()
    expected = distance / velocity + accel_s  # trapezoid: ramp up + cruise + ramp down
    error = (elapsed - expected) / expected
    print(f"\nmove of {distance} um at {velocity} um/s, ACCL {accel_s} s: "
          f"{elapsed:.3f} s, expected {expected:.3f} s, error {100 * error:+.1f} %")
    assert abs(elapsed - expected) < 0.15 * expected + accel_s
    assert abs(error) < 0.15
    assert get(motor + ".RBV") == pytest.approx(distance, abs=1e-9)
    # Readback during the move: at least 20 Hz, monotonic, between start and target.
    during = [(t, v) for t, v in rbv.updates[1:] if t0 < t < t0 + elapsed]
    assert len(during) >= 20 * expected * 0.9
    values = [v for _, v in during]
    assert values == sorted(values)
    assert 0.0 < values[len(values) // 2] < distance


def test_stop_halts_mid_move_short_of_target(stage_prefix):
    motor = stage_prefix + "Y"
    velocity, accel_s = 20.0, 0.2
    put(motor + ".VELO", velocity)
    put(motor + ".ACCL", accel_s)
    rbv = Monitor(motor + ".RBV", clock="arrival")
    try:
        put(motor, 100.0)  # 5.2 s
        rbv.wait_for(lambda u: u[-1][1] > 10.0)
        time.sleep(0.1)
        at_stop = get(motor + ".RBV")
        put(motor + ".STOP", 1)
        wait_done(motor, timeout=2)
    finally:
        rbv.clear()
    final = get(motor + ".RBV")
    # Deceleration from VELO at VELO/ACCL covers VELO * ACCL / 2.
    predicted = at_stop + velocity * accel_s / 2
    print(f"\nstop: rest at {final:.3f} um, predicted {predicted:.3f} um, "
          f"error {final - predicted:+.3f} um")
    assert 10.0 < final < 50.0
    assert abs(final - predicted) < velocity * 0.1  # within 0.1 s of travel
    assert get(motor + ".VAL") == pytest.approx(final)  # VAL follows the rest position
    assert get(motor + ".STOP") == 0 and get(motor + ".MOVN") == 0
    time.sleep(0.2)
    assert get(motor + ".RBV") == final  # and it stays there


def test_move_to_current_position_toggles_dmov(stage_prefix):
    motor = stage_prefix + "Z"
    dmov = Monitor(motor + ".DMOV", clock="arrival")
    try:
        put(motor, get(motor + ".RBV"))
        dmov.wait_for(lambda u: [v for _, v in u] == [1.0, 0.0, 1.0], timeout=2)
    finally:
        dmov.clear()


def test_new_setpoint_during_move_goes_to_the_new_target(stage_prefix):
    motor = stage_prefix + "X"
    put(motor + ".VELO", 50.0)
    put(motor, 50.0)
    time.sleep(0.3)
    put(motor, -5.0)
    wait_done(motor)
    assert get(motor + ".RBV") == pytest.approx(-5.0, abs=1e-9)


# ------------------------------------------------------------------------------------
# Limits and bad input
# ------------------------------------------------------------------------------------
def test_soft_limits_refuse_and_the_motor_does_not_move(stage_prefix):
    motor = stage_prefix + "A"
    assert refused(motor, 31.0)  # HLM 30 deg
    assert get(motor + ".LVIO") == 1
    assert refused(motor, -69.5)  # LLM -69 deg
    dmov = Monitor(motor + ".DMOV", clock="arrival")
    time.sleep(0.3)
    dmov.clear()
    assert [v for _, v in dmov.updates] == [1.0]  # no motion started
    assert get(motor + ".RBV") == 0.0 and get(motor + ".VAL") == 0.0
    # A new HLM moves the limit and the VAL ctrl limit (what ophyd checks) with it.
    put(motor + ".HLM", 40.0)
    assert read(motor, data_type="control").metadata.upper_ctrl_limit == 40.0
    assert get(motor + ".DHLM") == 40.0
    put(motor + ".VELO", 30.0)
    put(motor, 35.0)
    assert get(motor + ".LVIO") == 0
    wait_done(motor)
    assert get(motor + ".RBV") == pytest.approx(35.0)


def test_bad_input_is_refused_and_the_ioc_keeps_answering(stage_prefix):
    motor = stage_prefix + "X"
    assert refused(motor, math.nan)
    assert refused(motor, math.inf)
    for bad in (0.0, -1.0, math.nan):
        assert refused(motor + ".VELO", bad)
    assert get(motor + ".VELO") == 5.0
    assert refused(motor + ".ACCL", -0.1)
    assert refused(motor + ".HLM", math.nan)
    assert refused(motor + ".OFF", math.nan)
    assert refused(motor + ".EGU", "mm")
    assert get(motor + ".HLM") == 990.0 and get(motor + ".EGU") == "um"
    # Above VMAX: clamped, as the motor record does.
    put(motor + ".VELO", 1e6)
    assert get(motor + ".VELO") == STAGE_AXES["X"].max_velocity
    # Refusals alarm the refused PV only, never the readback ophyd judges moves by.
    rbv_md = read(motor + ".RBV", data_type="time").metadata
    assert rbv_md.severity == 0
    assert get(motor + ".DMOV") == 1 and get(motor + ".RBV") == 0.0
    put(motor, 1.0)  # still moves normally
    wait_done(motor)
    assert get(motor + ".RBV") == pytest.approx(1.0)
    assert read(motor, data_type="time").metadata.severity == 0
    assert get(stage_prefix + "UPTIME") > 0.0


def test_hard_limit_switch_stops_the_move(stage_prefix):
    motor = stage_prefix + "B"
    put(motor + ".LLM", -40.0)  # soft limit beyond the -30 deg switch
    put(motor + ".VELO", 30.0)
    put(motor, -35.0)
    wait_done(motor)
    assert get(motor + ".RBV") == pytest.approx(-30.0)
    assert get(motor + ".LLS") == 1 and get(motor + ".HLS") == 0
    assert get(motor + ".TDIR") == 0
    assert get(motor + ".VAL") == pytest.approx(-30.0)  # VAL follows the rest position
    rbv = read(motor + ".RBV", data_type="time").metadata
    assert (rbv.status, rbv.severity) == (AlarmStatus.HWLIMIT, AlarmSeverity.MAJOR_ALARM)
    put(motor, -25.0)
    wait_done(motor)
    assert get(motor + ".LLS") == 0
    assert read(motor + ".RBV", data_type="time").metadata.severity == 0


# ------------------------------------------------------------------------------------
# User/dial calibration
# ------------------------------------------------------------------------------------
def test_set_mode_changes_offset_not_position(stage_prefix):
    motor = stage_prefix + "Z"
    put(motor + ".VELO", 50.0)
    put(motor, 2.0)
    wait_done(motor)
    dmov = Monitor(motor + ".DMOV", clock="arrival")
    put(motor + ".SET", "Set")
    put(motor, 100.0)
    put(motor + ".SET", "Use")
    time.sleep(0.1)
    dmov.clear()
    assert [v for _, v in dmov.updates] == [1.0]  # calibration moves nothing
    assert get(motor + ".OFF") == pytest.approx(98.0)
    assert get(motor + ".RBV") == pytest.approx(100.0)
    assert get(motor + ".DRBV") == pytest.approx(2.0)
    # Soft limits are dial limits: in user coordinates they shift with OFF.
    assert get(motor + ".HLM") == pytest.approx(290.0 + 98.0)
    put(motor, 101.0)
    wait_done(motor)
    assert get(motor + ".DRBV") == pytest.approx(3.0)
    # A SET-mode put outside the old limits is a calibration, not a limit violation.
    put(motor + ".SET", "Set")
    put(motor, 1000.0)
    put(motor + ".SET", "Use")
    assert get(motor + ".RBV") == pytest.approx(1000.0)
    assert get(motor + ".DRBV") == pytest.approx(3.0)


def test_dir_negative_inverts_user_coordinates(stage_prefix):
    motor = stage_prefix + "Y"
    put(motor + ".OFF", 10.0)
    put(motor + ".DIR", "Neg")
    assert get(motor + ".RBV") == pytest.approx(10.0)  # dial 0
    # User limits: HLM = -DLLM + OFF, LLM = -DHLM + OFF.
    assert get(motor + ".HLM") == pytest.approx(990.0 + 10.0)
    assert get(motor + ".LLM") == pytest.approx(-990.0 + 10.0)
    put(motor + ".VELO", 50.0)
    put(motor, 15.0)  # +5 in user is -5 in dial
    wait_done(motor)
    assert get(motor + ".RBV") == pytest.approx(15.0)
    assert get(motor + ".DRBV") == pytest.approx(-5.0)
    assert get(motor + ".TDIR") == 1


# ------------------------------------------------------------------------------------
# ophyd EpicsMotor on top
# ------------------------------------------------------------------------------------
def test_ophyd_epics_motor_moves_and_calibrates(stage_prefix, ophyd_motor):
    from ophyd.utils import LimitError

    x = ophyd_motor("X")
    x.velocity.put(100.0, wait=True)
    t0 = time.monotonic()
    x.set(12.5).wait(timeout=5)
    assert time.monotonic() - t0 >= 12.5 / 100.0
    assert x.position == pytest.approx(12.5)
    assert x.egu == "um" and x.precision == 4
    assert x.limits == (-990.0, 990.0)
    x.set(12.5).wait(timeout=2)  # a move to where it is finishes too

    x.set_current_position(50.0)
    # The put returns when the IOC has acted; caproto posts the monitors from a
    # separate queue, so ophyd's cached values follow a few ms later.
    wait_for(lambda: x.position == pytest.approx(50.0), 1.0, "ophyd's X position")
    assert x.user_offset.get() == pytest.approx(37.5)
    assert x.offset_freeze_switch.get() == 0 and x.set_use_switch.get() == 0
    assert get(stage_prefix + "X.DRBV") == pytest.approx(12.5)

    with pytest.raises(LimitError):
        x.set(2000.0)
    assert get(stage_prefix + "X.DMOV") == 1 and x.position == pytest.approx(50.0)


@pytest.mark.parametrize("motor_class", ["EpicsMotor", "StageMotor"])
def test_ophyd_reports_a_move_into_a_limit_switch_as_failed(stage_prefix, ophyd_motor,
                                                            motor_class):
    """Also temsims' StageMotor, which reads the switch from its monitor (devices/stage.py)."""
    from ophyd import EpicsMotor

    from temsims.devices.stage import StageMotor

    b = ophyd_motor("B", {"EpicsMotor": EpicsMotor, "StageMotor": StageMotor}[motor_class])
    b.velocity.put(30.0, wait=True)
    b.high_limit_travel.put(40.0, wait=True)  # beyond the +30 deg switch
    wait_for(lambda: b.limits == (-25.0, 40.0), 5.0, "ophyd's B limits")  # re-read from VAL
    status = b.set(35.0)
    with pytest.raises(Exception):  # noqa: B017 - ophyd raises its own failure type
        status.wait(timeout=5)
    assert status.done and not status.success
    assert b.high_limit_switch.get() == 1
    assert b.position == pytest.approx(30.0)
    # On failure ophyd's MoveStatus calls stop() from its callback thread (STOP put,
    # then it drops the pending done-subscriptions); a move started at that instant
    # can be stopped or lose its status. Give that handler time to finish.
    time.sleep(0.2)
    b.set(20.0).wait(timeout=5)  # away from the switch: a normal, successful move
    assert b.position == pytest.approx(20.0)


# ------------------------------------------------------------------------------------
# The shared instrument
# ------------------------------------------------------------------------------------
def test_shared_instrument_stage_moves_and_is_restored(instrument):
    motor = instrument.prefix("stage") + "B"
    start, velo = get(motor + ".RBV"), get(motor + ".VELO")
    try:
        put(motor + ".VELO", 20.0)
        put(motor, start + 2.0)
        wait_done(motor)
        assert get(motor + ".RBV") == pytest.approx(start + 2.0)
    finally:
        put(motor, start)
        wait_done(motor)
        put(motor + ".VELO", velo)
    assert get(motor + ".RBV") == pytest.approx(start)


def test_ioc_answers_after_all_of_the_above(stage_prefix):
    try:
        assert get(stage_prefix + "UPTIME") > 0.0
    except CaprotoTimeoutError:  # pragma: no cover - the failure message is the point
        pytest.fail("the stage IOC stopped answering")
