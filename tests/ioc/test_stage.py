"""The stage IOC: motor records that move on the instrument's clock, over Channel Access.

The tests share the session's shared instrument with the stage alone (the other four
parts put Dead for the module; its end resets the instrument, which brings them back).
An autouse fixture puts every axis back (calibration, limits, speed, position) after
each test. Motion timing is asserted on the IOC's timestamps: a move of ``d`` takes
``d / VELO + ACCL`` nominal seconds (a triangle profile below ``VELO * ACCL``), and
the readbacks are published at 50 Hz of wall time whatever the time scale.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Iterator

import pytest
from caproto import AlarmSeverity, AlarmStatus, CaprotoTimeoutError, ChannelType
from catools import Monitor, get, put, pv, read, refused, stamped, wait_for

from temsims.ioc.stage import MSTA_DONE, MSTA_MOVING, STAGE_AXES

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
def stage_procs(instruments):
    """The stage alone: the shared instrument with the other four parts Dead."""
    procs = instruments.get()
    for part in ("tem", "column", "bias", "spectrometer"):
        procs.set_part(part, "Dead")
    yield procs
    procs.reset()  # every part Up again, in its start-up state


@pytest.fixture(scope="module")
def stage_prefix(stage_procs) -> str:
    return stage_procs.prefix("stage")


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

    made: list[EpicsMotor] = []

    def _make(axis: str, cls: type = EpicsMotor) -> EpicsMotor:
        motor = cls(stage_prefix + axis, name=f"stage_{axis.lower()}")
        motor.wait_for_connection(timeout=5)
        made.append(motor)
        return motor

    yield _make
    # Their subscriptions would otherwise outlive the module and share the process
    # with later EpicsMotors on the same PVs (test_motor_record_calibration.py).
    for motor in made:
        motor.destroy()


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
def trapezoid(distance: float, velocity: float, accel_s: float):
    """Position (from rest, towards +distance) t seconds into a trapezoidal move, and
    the move's duration: ramp to ``velocity`` in ``accel_s``, cruise, ramp down."""
    a = velocity / accel_s
    if distance < velocity * accel_s:  # a triangle: VELO never reached
        ramp = math.sqrt(distance / a)
        duration = 2 * ramp

        def x(t):
            t = min(max(t, 0.0), duration)
            return 0.5 * a * t * t if t <= ramp else distance - 0.5 * a * (duration - t) ** 2
    else:
        duration = distance / velocity + accel_s

        def x(t):
            t = min(max(t, 0.0), duration)
            if t <= accel_s:
                return 0.5 * a * t * t
            if t <= duration - accel_s:
                return 0.5 * velocity * accel_s + velocity * (t - accel_s)
            return distance - 0.5 * a * (duration - t) ** 2
    return x, duration


def test_move_takes_distance_over_velocity_and_rbv_updates(stage_procs, stage_prefix):
    motor = stage_prefix + "X"
    scale = get(stage_procs.sim_prefix + "TIME_SCALE")
    velocity, accel_s, distance = 20.0, 0.2, 100.0
    put(motor + ".VELO", velocity)
    put(motor + ".ACCL", accel_s)
    rbv = Monitor(motor + ".RBV")
    dmov = Monitor(motor + ".DMOV")
    try:
        put(motor, distance)
        dmov.wait_for(lambda u: len(u) >= 3 and u[-1][1] == 1.0, timeout=10)
        rbv.wait_for(lambda u: u[-1][1] == distance)
    finally:
        rbv.clear()
        dmov.clear()
    assert [v for _, v in dmov.updates] == [1, 0, 1]
    t_put, t_done = dmov.updates[1][0], dmov.updates[2][0]
    t_end = rbv.updates[-1][0]
    profile, expected = trapezoid(distance, velocity, accel_s)
    elapsed = t_end - t_put
    print(f"\nmove of {distance} um at {velocity} um/s, ACCL {accel_s} s: {elapsed:.4f} s on "
          f"the IOC's clock, expected {expected:.4f} s (time scale {scale:g})")
    # From the put (DMOV -> 0) to the readback at the target: d / VELO + ACCL.
    assert elapsed == pytest.approx(expected, abs=1e-4)
    assert t_done >= t_end - 1e-6  # DMOV = 1 never before the motion ended
    assert get(motor + ".RBV") == pytest.approx(distance, abs=1e-9)
    # Every readback during the move lies on the trapezoid (on the IOC's clock).
    during = rbv.updates[1:]
    worst = max(abs(x - profile(t - t_put)) for t, x in during)
    print(f"{len(during)} readbacks, worst {worst:.2e} um off the profile")
    assert worst < 1e-3
    values = [x for _, x in during]
    assert values == sorted(values)
    assert 0.0 < values[len(values) // 2] < distance
    # Published at 50 Hz of wall time (the IOC's interval over the time scale): the
    # median interval, as a stall of the loaded machine drops a tick or two.
    intervals = [(b[0] - a[0]) / scale for a, b in zip(during, during[1:-1], strict=False)]
    median = statistics.median(intervals)
    print(f"median readback interval {median:.4f} s of wall time")
    assert len(during) >= 5
    assert 0.018 < median < 0.03


def test_stop_halts_mid_move_short_of_target(stage_procs, stage_prefix):
    motor = stage_prefix + "Y"
    scale = get(stage_procs.sim_prefix + "TIME_SCALE")
    velocity, accel_s = 20.0, 0.2
    put(motor + ".VELO", velocity)
    put(motor + ".ACCL", accel_s)
    rbv = Monitor(motor + ".RBV")
    stop = Monitor(motor + ".STOP")
    try:
        put(motor, 500.0)  # 25.2 s
        rbv.wait_for(lambda u: u[-1][1] > 10.0)
        put(motor + ".STOP", 1)
        wait_done(motor, timeout=2)
        stop.wait_for(lambda u: len(u) >= 2)
    finally:
        rbv.clear()
        stop.clear()
    final = get(motor + ".RBV")
    t_stop = stop.updates[-1][0]  # when the IOC took the STOP put
    t_rest, x_rest = rbv.updates[-1]
    assert x_rest == final
    # Braking at VELO / ACCL takes ACCL seconds and covers VELO * ACCL / 2: it began
    # ACCL before the rest, where the cruise (the last readback before the STOP, at
    # VELO) had brought the axis.
    t_brake = t_rest - accel_s
    t_cruise, x_cruise = [(t, x) for t, x in rbv.updates if t <= t_stop][-1]
    assert x_cruise > velocity * accel_s  # past the acceleration
    predicted = x_cruise + velocity * (t_brake - t_cruise) + velocity * accel_s / 2
    print(f"\nstop: rest at {final:.4f} um, predicted {predicted:.4f} um; braking began "
          f"{1000 * (t_brake - t_stop) / scale:.2f} ms of wall time after the STOP "
          f"(time scale {scale:g})")
    assert final == pytest.approx(predicted, abs=1e-3)
    # It began after the STOP, within a 50 Hz tick (of wall time) of it.
    assert t_brake >= t_stop - 1e-6
    assert (t_brake - t_stop) / scale < 0.02
    assert 10.0 < final < 50.0
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


def test_a_short_move_posts_dmov_0_val_rbv_dmov_1_in_order_and_msta_stays_done(stage_prefix):
    """A 10 nm step at VMAX with ACCL 0 (50 us of motion, a step scan's point): the
    client sees DMOV 0, VAL, RBV at the target, DMOV 1, in this order (ophyd's
    EpicsMotor needs DMOV 0 before 1, and VAL and RBV before the end); MSTA, like MOVN,
    never shows such a move as moving (decision 0019)."""
    motor = stage_prefix + "X"
    put(motor + ".VELO", 200.0)
    put(motor + ".ACCL", 0.0)
    updates: list[tuple[str, object]] = []
    initial = threading.Event()
    keep = []  # caproto holds callbacks weakly
    subs = []
    for field in ("DMOV", "VAL", "RBV", "MSTA", "MOVN"):
        def on_update(sub, response, field=field):
            updates.append((field, response.data[0]))
            if len(updates) == 5:
                initial.set()
        sub = pv(f"{motor}.{field}").subscribe(data_type="time")
        subs.append((sub, sub.add_callback(on_update)))
        keep.append(on_update)
    try:
        assert initial.wait(5)
        for step in (1, 2, 3):
            del updates[:]
            put(motor, 0.01 * step)
            wait_for(lambda: ("DMOV", 1) in updates, 5, "DMOV 1")
            time.sleep(0.05)  # anything posted after DMOV 1 would show here
            moved = [(f, v) for f, v in updates if f in ("DMOV", "VAL", "RBV")]
            assert moved == [("DMOV", 0), ("VAL", pytest.approx(0.01 * step)),
                             ("RBV", pytest.approx(0.01 * step)), ("DMOV", 1)]
            assert ("MOVN", 1) not in updates
            assert all(v & MSTA_DONE and not v & MSTA_MOVING
                       for f, v in updates if f == "MSTA")
    finally:
        for sub, token in subs:
            sub.remove_callback(token)


def test_new_setpoint_during_move_goes_to_the_new_target(stage_prefix):
    motor = stage_prefix + "X"
    put(motor + ".VELO", 50.0)
    rbv, dmov = Monitor(motor + ".RBV"), Monitor(motor + ".DMOV")
    try:
        put(motor, 500.0)  # 10.2 s
        rbv.wait_for(lambda u: u[-1][1] > 20.0)
        put(motor, -5.0)
        wait_done(motor)
        rbv.wait_for(lambda u: u[-1][1] == -5.0)
    finally:
        rbv.clear()
        dmov.clear()
    assert get(motor + ".RBV") == pytest.approx(-5.0, abs=1e-9)
    assert [v for _, v in dmov.updates] == [1, 0, 1]  # one move: DMOV stayed 0
    turn = max(x for _, x in rbv.updates)
    assert 20.0 < turn < 100.0  # it turned mid-move, after decelerating


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
    dmov = Monitor(stage_prefix + "X.DMOV")
    try:
        x.set(12.5).wait(timeout=5)
        # ophyd's status finished with the IOC's move: at rest, at the target.
        assert get(stage_prefix + "X.DMOV") == 1
        t_end, position = stamped(stage_prefix + "X.RBV")
        assert position == pytest.approx(12.5)
        dmov.wait_for(lambda u: len(u) >= 3)
    finally:
        dmov.clear()
    # 12.5 um < VELO * ACCL = 20 um: a triangle, 2 sqrt(d ACCL / VELO) on the IOC's clock.
    _, expected = trapezoid(12.5, 100.0, STAGE_AXES["X"].acceleration_s)
    assert t_end - dmov.updates[1][0] == pytest.approx(expected, abs=1e-4)
    assert x.position == pytest.approx(12.5)
    assert x.egu == "um" and x.precision == 4
    assert x.limits == (-990.0, 990.0)
    x.set(12.5).wait(timeout=2)  # a move to where it is finishes too

    x.set_current_position(50.0)
    # The calibration's own updates are in ophyd's cache when it returns (the IOC
    # answers a SET-mode put after a settle; test_motor_record_calibration.py); the
    # last put's (SET = Use) monitor follows its reply by a few ms.
    assert x.position == pytest.approx(50.0)
    assert x.user_offset.get() == pytest.approx(37.5)
    wait_for(lambda: x.set_use_switch.get() == 0, 1.0, "SET back to Use")
    assert x.offset_freeze_switch.get() == 0
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
# The reset the shared instrument gets between tests
# ------------------------------------------------------------------------------------
def test_sim_reset_puts_every_axis_home_with_its_defaults(stage_procs, stage_prefix):
    """``SIM:RESET`` (what ``instruments.get()`` does): every axis at rest at 0 with its
    default speed, limits and calibration (it also brings the other parts back Up)."""
    put(stage_prefix + "A.VELO", 30.0)
    put(stage_prefix + "A", -20.0)
    put(stage_prefix + "X.OFF", 5.0)
    put(stage_prefix + "Y.DIR", "Neg")
    put(stage_prefix + "B.HLM", 20.0)
    put(stage_prefix + "Z.VELO", 7.0)
    put(stage_prefix + "Z.ACCL", 0.7)
    wait_done(stage_prefix + "A")
    stage_procs.reset()
    for name, spec in STAGE_AXES.items():
        motor = stage_prefix + name
        assert get(motor + ".RBV") == 0.0 and get(motor + ".VAL") == 0.0, name
        assert get(motor + ".DMOV") == 1 and get(motor + ".OFF") == 0.0, name
        assert get(motor + ".DIR") == 0, name
        assert get(motor + ".VELO") == spec.velocity, name
        assert get(motor + ".ACCL") == spec.acceleration_s, name
        assert (get(motor + ".DLLM"), get(motor + ".DHLM")) == spec.soft_limits, name
        md = read(motor, data_type="control").metadata
        assert (md.lower_ctrl_limit, md.upper_ctrl_limit) == spec.soft_limits, name
    for part in ("tem", "column", "bias", "spectrometer"):
        assert get(stage_procs.sim_prefix + part.upper(), data_type=ChannelType.STRING) == "Up"


def test_ioc_answers_after_all_of_the_above(stage_prefix):
    try:
        assert get(stage_prefix + "UPTIME") > 0.0
    except CaprotoTimeoutError:  # pragma: no cover - the failure message is the point
        pytest.fail("the stage IOC stopped answering")
