"""The Ga+ column IOC over CA: optics, raster on the IOC's clock, refusals and the SIMS
interlock.

Every test uses the session's shared instrument (``instruments.get()``). The first
part has the column and the bias supply alone (stage, TEM and spectrometer put Dead:
every interlock must refuse, fail safe); the module's end resets the instrument, which
brings them back. The interlock tests have the real stage, TEM and bias parts for the
paths that need SIMS geometry (tilt -68 deg, objective lens off). Raster timing is
asserted on the IOC's timestamps; frames are sized in wall time from the instrument's
time scale (``SIM:TIME_SCALE``), so that what must happen mid-frame does.
"""

from __future__ import annotations

import math
import threading

import pytest
from caproto import AlarmSeverity
from catools import (
    Monitor,
    assert_refused,
    caget,
    caget_str,
    caput,
    move_motor,
    pv,
    severity,
    stamped,
    wait_for,
)

from temsims.ioc.physics.ion_optics import APERTURES, probe_diameter_nm


# --------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fib(instruments):
    """The column and the bias supply alone: stage, TEM and spectrometer Dead."""
    procs = instruments.get()
    for part in ("stage", "tem", "spectrometer"):
        procs.set_part(part, "Dead")
    yield procs
    procs.reset()  # every part Up again, in its start-up state


def time_scale(procs) -> float:
    return float(caget(procs.sim_prefix + "TIME_SCALE"))


def set_raster(F: str, nx: int, ny: int, dwell: float) -> None:
    caput(F + "SCAN:NX", nx)
    caput(F + "SCAN:NY", ny)
    caput(F + "SCAN:DWELL", dwell)


# --------------------------------------------------------------------------------------
# Optics
# --------------------------------------------------------------------------------------
def test_aperture_sets_current_and_probe(fib):
    F = fib.prefix("column")
    assert caget_str(F + "APERTURE") == "1 pA"
    # ~7 nm at the lowest current and 30 kV (instrument.md)
    assert caget(F + "PROBE_RBV") == pytest.approx(7.0, abs=0.05)
    probes = []
    for label, current_pa in APERTURES.items():
        caput(F + "APERTURE", label)
        assert caget(F + "CURRENT_RBV") == pytest.approx(current_pa)
        probes.append(caget(F + "PROBE_RBV"))
        assert probes[-1] == pytest.approx(probe_diameter_nm(current_pa, 30.0), rel=1e-4)
    assert probes == sorted(probes)
    # d ~ I^(3/8): 1 pA -> 20 nA is 20000^(3/8) = 41x
    assert probes[-1] / probes[0] == pytest.approx(20000 ** 0.375, rel=1e-3)
    assert caget(F + "SAMPLE_CURRENT_RBV") == 0.0  # blanked
    # Lower energy, larger probe.
    caput(F + "APERTURE", "1 pA")
    caput(F + "HV", 5.0)
    assert caget(F + "PROBE_RBV") > 3 * 7.0
    caput(F + "HV", 30.0)
    assert caget(F + "PROBE_RBV") == pytest.approx(7.0, abs=0.05)
    assert 1.5 < caget(F + "EMISSION_RBV") < 3.0


def test_landing_energy_is_hv_minus_bias(fib):
    F, B = fib.prefix("column"), fib.prefix("bias")
    assert caget(B + "VOLTAGE_RBV") == 0.0
    for hv in (30.0, 12.5, 1.0):
        caput(F + "HV", hv)
        assert caget(F + "HV_RBV") == hv
        assert caget(F + "LANDING_RBV") == pytest.approx(hv - 0.0 / 1000)
    caput(F + "HV", 30.0)
    assert severity(F + "LANDING_RBV") == AlarmSeverity.NO_ALARM  # bias link up


# --------------------------------------------------------------------------------------
# Raster
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_line", [False, True], ids=["batched", "per-line"])
def test_raster_lasts_nx_ny_dwell_and_reports_progress(fib, per_line):
    """A frame of 0.4 s of wall time: short lines (0.5 ms of wall time) batched at
    25 Hz, or 40 ms lines published one by one (the publication cadence is a wall
    rate: ``line_publish_min_s``, ``batch_publish_s``)."""
    F = fib.prefix("column")
    scale = time_scale(fib)
    if per_line:
        nx, ny = 20, 10
        dwell = 0.04 * scale / nx
    else:
        nx, dwell = 200, 1e-4
        ny = round(0.4 * scale / (nx * dwell))
    set_raster(F, nx, ny, dwell)
    expected = nx * ny * dwell
    assert caget(F + "SCAN:FRAME_TIME") == pytest.approx(expected)
    frames = caget(F + "SCAN:FRAME")
    t_dwell_put, _ = stamped(F + "SCAN:DWELL")
    rec = {name: Monitor(F + "SCAN:" + name) for name in
           ("PIXEL", "LINE", "ACQUIRE", "ACQUIRE_RBV", "START_TIME", "FRAME")}
    try:
        caput(F + "SCAN:ACQUIRE", "Start", timeout=expected / scale + 10)
        # The put completes at the end of the frame, with every counter at its end.
        assert caget(F + "SCAN:FRAME") == frames + 1
        assert caget(F + "SCAN:LINE") == ny
        assert caget(F + "SCAN:PIXEL") == nx * ny
        assert caget(F + "SCAN:PROGRESS") == pytest.approx(100.0)
        assert caget_str(F + "SCAN:ACQUIRE") == "Stop"
        assert caget_str(F + "SCAN:ACQUIRE_RBV") == "Stop"
        rec["ACQUIRE_RBV"].wait_for(lambda u: len(u) >= 3)
        rec["FRAME"].wait_for(lambda u: len(u) >= 2)

        # START_TIME is the frame's start: written with ACQUIRE(_RBV) = Start, after the
        # last parameter put.
        start_time = caget(F + "SCAN:START_TIME")
        (t_start_pv, value), = rec["START_TIME"].updates[1:]
        assert value == start_time
        assert t_start_pv == pytest.approx(start_time, abs=1e-6)
        assert start_time > t_dwell_put
        for name in ("ACQUIRE", "ACQUIRE_RBV"):
            updates = rec[name].updates[1:]
            assert [int(v) for _, v in updates] == [1, 0], name  # Start, then Stop
            assert updates[0][0] == pytest.approx(start_time, abs=1e-6)
            # The frame lasts NX * NY * DWELL on the IOC's clock.
            duration = updates[1][0] - start_time
            assert duration == pytest.approx(expected, abs=1e-6), name
        (t_frame, _), = rec["FRAME"].updates[1:]
        assert t_frame == pytest.approx(start_time + expected, abs=1e-6)
        print(f"raster {nx}x{ny} dwell {dwell:g} s: {duration:.6f} s on the IOC's clock "
              f"for {expected:.6f} s (time scale {scale:g})")

        # Counters advance with the beam: pixel k is reached at START_TIME + k*DWELL.
        pixels = rec["PIXEL"].since(start_time)
        values = [v for _, v in pixels]
        assert values == sorted(values) and values[-1] == nx * ny
        for ts, value in pixels:
            # (1e-6 s: a timestamp's float resolution at the present epoch)
            assert -1e-6 <= ts - (start_time + value * dwell) < dwell + 1e-6, (ts, value)
        lines = [v for _, v in rec["LINE"].since(start_time)]
        wall_rate = len(pixels) / (expected / scale)
        print(f"progress: {len(pixels)} updates, {wall_rate:.1f} per second of wall time")
        if per_line:
            assert set(range(ny + 1)) - set(lines) <= {0}  # every line end published
            assert len(lines) <= ny + 1
        else:
            assert 10 < wall_rate < 55  # batched (25 Hz), never a flood
    finally:
        for monitor in rec.values():
            monitor.clear()


def start_in_background(pv_name: str, result: dict) -> threading.Thread:
    """Put Start with completion from another thread; result["done"] when it returns."""
    channel = pv(pv_name)

    def start():
        channel.write([1], wait=True, timeout=120)  # 1 = Start
        result["done"] = True

    thread = threading.Thread(target=start)
    thread.start()
    return thread


def test_stop_aborts_a_frame(fib):
    F = fib.prefix("column")
    scale = time_scale(fib)
    nx = ny = 100
    dwell = 5 * scale / (nx * ny)  # a frame of 5 s of wall time
    set_raster(F, nx, ny, dwell)
    frames = caget(F + "SCAN:FRAME")
    acquire = Monitor(F + "SCAN:ACQUIRE_RBV")
    done: dict = {}
    thread = start_in_background(F + "SCAN:ACQUIRE", done)
    try:
        wait_for(lambda: caget(F + "SCAN:PROGRESS") >= 5.0, 10, "5 % of the frame")
        caput(F + "SCAN:ACQUIRE", "Stop")
        thread.join(timeout=5)
        assert not thread.is_alive() and done  # the Start completion returned on Stop
        acquire.wait_for(lambda u: len(u) >= 3)
    finally:
        acquire.clear()
    assert caget(F + "SCAN:FRAME") == frames  # an aborted frame does not count
    progress = caget(F + "SCAN:PROGRESS")
    assert 5.0 <= progress < 25.0
    assert caget_str(F + "SCAN:ACQUIRE") == "Stop"
    assert caget_str(F + "SCAN:ACQUIRE_RBV") == "Stop"
    # On the IOC's clock the frame ended at the Stop, where the counters stopped.
    start_time = caget(F + "SCAN:START_TIME")
    t_stop = acquire.updates[-1][0]
    t_pixel, pixel = stamped(F + "SCAN:PIXEL")
    print(f"stopped at {progress:.1f} %: {t_stop - start_time:.3f} s into a "
          f"{nx * ny * dwell:.0f} s frame (time scale {scale:g})")
    assert t_pixel == pytest.approx(t_stop, abs=1e-6)
    assert pixel == math.floor((t_stop - start_time) / dwell + 1e-9)
    assert progress == pytest.approx(100.0 * pixel / (nx * ny))


def test_parameter_puts_refused_during_a_frame(fib):
    F = fib.prefix("column")
    scale = time_scale(fib)
    nx, ny = 50, 40
    dwell = 1.5 * scale / (nx * ny)  # a frame of 1.5 s of wall time
    set_raster(F, nx, ny, dwell)
    before = {name: caget(F + name) for name in
              ("SCAN:NX", "SCAN:NY", "SCAN:DWELL", "SCAN:FOV", "SCAN:ROTATION", "HV",
               "SCAN:FOV_CAL", "SCAN:ROT_CAL")}
    frames = caget(F + "SCAN:FRAME")
    result: dict = {}
    acquire = Monitor(F + "SCAN:ACQUIRE_RBV")
    thread = start_in_background(F + "SCAN:ACQUIRE", result)
    try:
        wait_for(lambda: caget_str(F + "SCAN:ACQUIRE_RBV") == "Start", 2, "the frame to start")
        for name, value in [("SCAN:NX", 10), ("SCAN:NY", 10), ("SCAN:DWELL", 1e-5),
                            ("SCAN:FOV", 1.0), ("SCAN:ROTATION", 45.0), ("SCAN:MODE", "Spot"),
                            ("SCAN:SPOT_X", 0.1), ("HV", 10.0), ("APERTURE", "1 nA"),
                            ("SCAN:FOV_CAL", 1.01), ("SCAN:ROT_CAL", 0.5),
                            ("SCAN:ACQUIRE", "Start")]:
            assert_refused(F + name, value)
        # Every refusal came while the frame ran (else this test proves nothing).
        assert caget_str(F + "SCAN:ACQUIRE_RBV") == "Start"
        thread.join(timeout=10)
        assert not thread.is_alive() and result
        acquire.wait_for(lambda u: len(u) >= 3)
    finally:
        acquire.clear()
    # The raster was not disturbed: complete, and NX * NY * DWELL on the IOC's clock.
    (t_start, _), (t_stop, _) = acquire.updates[-2:]
    assert t_stop - t_start == pytest.approx(nx * ny * dwell, abs=1e-6)
    assert caget(F + "SCAN:FRAME") == frames + 1
    assert {name: caget(F + name) for name in before} == before
    assert caget(F + "SCAN:PIXEL") == nx * ny
    caput(F + "SCAN:NX", 64)  # accepted again once the frame is over
    assert caget(F + "SCAN:NX") == 64


@pytest.mark.slow
def test_bad_puts_are_refused_and_the_ioc_keeps_answering(fib):
    F = fib.prefix("column")
    bad = [
        ("SCAN:DWELL", 0.0), ("SCAN:DWELL", -1e-3), ("SCAN:DWELL", math.nan),
        ("SCAN:DWELL", 0.5), ("SCAN:DWELL", math.inf), ("SCAN:DWELL", 1e-8),
        ("SCAN:NX", 0), ("SCAN:NX", 1025), ("SCAN:NX", -3), ("SCAN:NY", 0),
        ("SCAN:NY", 5000), ("SCAN:FOV", 0.0), ("SCAN:FOV", math.nan),
        ("SCAN:ROTATION", 500.0), ("SCAN:ROTATION", math.nan),
        ("HV", 0.5), ("HV", 31.0), ("HV", math.nan), ("HV", -30.0),
        ("APERTURE", 12), ("APERTURE", "5 pA"), ("BLANK", "Maybe"), ("BLANK", 7),
        ("SCAN:MODE", 3), ("SCAN:ACQUIRE", 9), ("SCAN:ACQUIRE", "Go"),
        ("SCAN:SPOT_X", 1e6), ("SCAN:SPOT_Y", math.nan),
        ("SCAN:FOV_CAL", 1.5), ("SCAN:FOV_CAL", math.nan), ("SCAN:ROT_CAL", -11.0),
    ]
    before = {name: caget(F + name) for name, _ in bad}
    for name, value in bad:
        assert_refused(F + name, value)
        if name not in ("APERTURE", "BLANK", "SCAN:MODE", "SCAN:ACQUIRE"):
            # (bad enum states are refused by caproto's decoding, before any alarm)
            assert severity(F + name) == AlarmSeverity.MAJOR_ALARM
    assert {name: caget(F + name) for name in before} == before
    assert caget(F + "UPTIME") >= 0.0
    caput(F + "SCAN:DWELL", 1e-6)  # a good put clears the alarm
    assert severity(F + "SCAN:DWELL") == AlarmSeverity.NO_ALARM
    assert severity(F + "HV_RBV") == AlarmSeverity.NO_ALARM  # alarms stay on their PV
    caput(F + "SCAN:DWELL", before["SCAN:DWELL"])
    # The spot stays inside the field when the field shrinks.
    caput(F + "SCAN:FOV", 4.0)
    caput(F + "SCAN:SPOT_X", 1.5)
    caput(F + "SCAN:FOV", 2.0)
    assert caget(F + "SCAN:SPOT_X") == pytest.approx(1.0)
    assert caget(F + "SCAN:PIXEL_NM") == pytest.approx(2000.0 / caget(F + "SCAN:NX"))


# --------------------------------------------------------------------------------------
# Interlock: fail safe with no peers
# --------------------------------------------------------------------------------------
def test_unblank_refused_when_peers_are_missing_but_a_blanked_raster_runs(fib):
    F = fib.prefix("column")
    assert caget_str(F + "INTERLOCK_RBV") == "Blocked"
    assert_refused(F + "BLANK", "Unblanked")
    assert caget_str(F + "STATUS") == "Refused: stage link down"
    assert caget_str(F + "BLANK_RBV") == "Blanked"
    assert severity(F + "BLANK") == AlarmSeverity.MAJOR_ALARM
    assert caget(F + "SAMPLE_CURRENT_RBV") == 0.0
    caput(F + "BLANK", "Blanked")  # always allowed; clears the alarm
    assert severity(F + "BLANK") == AlarmSeverity.NO_ALARM
    # A raster with the beam blanked (dark counts only) is allowed, and lasts its time.
    set_raster(F, 16, 16, 1e-3)
    frames = caget(F + "SCAN:FRAME")
    acquire = Monitor(F + "SCAN:ACQUIRE_RBV")
    try:
        caput(F + "SCAN:ACQUIRE", "Start")
        acquire.wait_for(lambda u: len(u) >= 3)
    finally:
        acquire.clear()
    (t_start, _), (t_stop, _) = acquire.updates[-2:]
    assert t_stop - t_start == pytest.approx(0.256, abs=1e-6)
    assert caget(F + "SCAN:FRAME") == frames + 1
    assert caget_str(F + "BLANK_RBV") == "Blanked"


# --------------------------------------------------------------------------------------
# Interlock with the real stage and TEM parts
# --------------------------------------------------------------------------------------
@pytest.fixture
def sims(instruments):
    """The shared instrument (all five parts), reset: beam blanked, stage home."""
    return instruments.get()


def move_alpha(procs, target: float) -> None:
    move_motor(procs.prefix("stage") + "A", target, velocity=30.0)


def sims_geometry(procs) -> None:
    move_alpha(procs, -68.0)
    caput(procs.prefix("tem") + "OBJ", "Off")
    F = procs.prefix("column")
    wait_for(lambda: caget_str(F + "INTERLOCK_RBV") == "Permit", 2, "the interlock permit")


def test_unblank_needs_tilt_and_objective_off(sims):
    F, T = sims.prefix("column"), sims.prefix("tem")
    # The column reads the tilt and the lens from the world: the refusal is current the
    # moment the stage's DMOV = 1 (or the lens put's completion) is.
    move_alpha(sims, 0.0)
    caput(T + "OBJ", "On")
    assert_refused(F + "BLANK", "Unblanked")
    assert caget_str(F + "STATUS").startswith("Refused: alpha 0.0 deg")
    move_alpha(sims, -68.0)
    assert_refused(F + "BLANK", "Unblanked")
    assert caget_str(F + "STATUS") == "Refused: objective lens on"
    assert caget_str(F + "BLANK_RBV") == "Blanked"
    sims_geometry(sims)
    caput(F + "BLANK", "Unblanked")
    assert caget_str(F + "BLANK_RBV") == "Unblanked"
    assert caget_str(F + "STATUS") == "OK"
    assert severity(F + "BLANK") == AlarmSeverity.NO_ALARM
    assert caget(F + "SAMPLE_CURRENT_RBV") == caget(F + "CURRENT_RBV")


def test_losing_the_geometry_blanks_the_beam(sims):
    F, T = sims.prefix("column"), sims.prefix("tem")
    sims_geometry(sims)
    caput(F + "BLANK", "Unblanked")
    move_alpha(sims, -66.0)  # 2 deg away
    wait_for(lambda: caget_str(F + "BLANK_RBV") == "Blanked", 1, "auto-blank on tilt")
    assert caget_str(F + "STATUS").startswith("Blanked: alpha")
    assert caget_str(F + "BLANK") == "Blanked"
    assert severity(F + "BLANK_RBV") == AlarmSeverity.MAJOR_ALARM
    sims_geometry(sims)
    caput(F + "BLANK", "Unblanked")
    caput(T + "OBJ", "On")  # the TEM allows it: the bias is off
    wait_for(lambda: caget_str(F + "BLANK_RBV") == "Blanked", 1, "auto-blank on the lens")
    assert caget_str(F + "STATUS") == "Blanked: objective lens on"


def test_landing_energy_with_the_bias_on(sims):
    F, B = sims.prefix("column"), sims.prefix("bias")
    sims_geometry(sims)
    caput(B + "RAMP_RATE", 10000.0)
    caput(B + "VOLTAGE", 4500.0)
    caput(B + "ENABLE", "On", timeout=5)
    try:
        wait_for(lambda: caget(F + "LANDING_RBV") == pytest.approx(25.5), 1, "landing 25.5")
        caput(F + "HV", 16.0)
        assert caget(F + "LANDING_RBV") == pytest.approx(16.0 - 4.5)
        caput(B + "VOLTAGE", -4500.0, timeout=5)
        wait_for(lambda: caget(F + "LANDING_RBV") == pytest.approx(20.5), 1, "landing 20.5")
    finally:
        caput(B + "ENABLE", "Off", timeout=5)
        caput(F + "HV", 30.0)


def test_stage_part_down_blanks_the_beam_fail_safe(sims):
    """The stage part killed (Dead) under an unblanked beam, then brought back."""
    F = sims.prefix("column")
    sims_geometry(sims)
    caput(F + "BLANK", "Unblanked")
    sims.stop_one("stage")
    try:
        wait_for(lambda: caget_str(F + "BLANK_RBV") == "Blanked", 2, "auto-blank, stage down")
        assert caget_str(F + "STATUS") == "Blanked: stage link down"
        assert caget(F + "SAMPLE_CURRENT_RBV") == 0.0
        assert_refused(F + "BLANK", "Unblanked")
    finally:
        sims.set_part("stage", "Up")
    # Back at once (the world, not a CA search): a fresh stage, at home.
    assert caget_str(F + "INTERLOCK_REASON").startswith("alpha 0.0 deg")
