"""The Ga+ column IOC over CA: optics, real-time raster, refusals and the SIMS interlock.

Two instruments per module: the column and bias alone (no stage, no TEM: every
interlock must refuse, fail safe), and the column with the real stage, TEM and bias
IOCs for the paths that need SIMS geometry (tilt -68 deg, objective lens off).
"""

from __future__ import annotations

import math
import threading
import time

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
    skip_unless_served,
    wait_for,
)
from instrument_support import stop_instrument

from temsims.ioc.column import APERTURES, probe_diameter_nm


# --------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fib(start_instrument, slot_pool):
    """Column and bias IOCs alone: no stage, no TEM."""
    procs = start_instrument(iocs=("column", "bias"))
    yield procs
    stop_instrument(procs, slot_pool)


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
@pytest.mark.parametrize(
    ("nx", "ny", "dwell", "per_line"),
    [(100, 200, 1e-4, False),  # 10 ms lines: batched progress
     (20, 50, 2e-3, True)],    # 40 ms lines: one update per line
)
def test_raster_lasts_nx_ny_dwell_and_reports_progress(fib, nx, ny, dwell, per_line):
    F = fib.prefix("column")
    set_raster(F, nx, ny, dwell)
    expected = nx * ny * dwell
    assert caget(F + "SCAN:FRAME_TIME") == pytest.approx(expected)
    frames = caget(F + "SCAN:FRAME")
    rec = {name: Monitor(F + "SCAN:" + name) for name in
           ("PIXEL", "LINE", "ACQUIRE", "START_TIME")}
    try:
        wall0 = time.time()
        t0 = time.monotonic()
        caput(F + "SCAN:ACQUIRE", "Start", timeout=expected + 5)
        elapsed = time.monotonic() - t0
        time.sleep(0.1)
        ratio = elapsed / expected
        print(f"raster {nx}x{ny} dwell {dwell}: {elapsed:.4f} s for {expected:.4f} s, "
              f"ratio {ratio:.4f}")
        assert 0.99 < ratio < 1.03
        assert caget(F + "SCAN:FRAME") == frames + 1
        assert caget(F + "SCAN:LINE") == ny
        assert caget(F + "SCAN:PIXEL") == nx * ny
        assert caget(F + "SCAN:PROGRESS") == pytest.approx(100.0)
        assert caget_str(F + "SCAN:ACQUIRE") == "Stop"
        assert caget_str(F + "SCAN:ACQUIRE_RBV") == "Stop"

        # START_TIME is written before ACQUIRE goes to Start, and is the frame's start.
        start_time = caget(F + "SCAN:START_TIME")
        assert wall0 <= start_time <= wall0 + 0.1
        (t_start_pv, _), = rec["START_TIME"].since(wall0)
        acq = rec["ACQUIRE"].since(wall0)
        assert [v for _, v in acq] == [1, 0]  # Start, then Stop
        assert t_start_pv <= acq[0][0]
        assert acq[1][0] - start_time == pytest.approx(expected, abs=0.03)

        # Counters advance with the beam: pixel k is reached at START_TIME + k*DWELL.
        pixels = rec["PIXEL"].since(wall0)
        values = [v for _, v in pixels]
        assert values == sorted(values) and values[-1] == nx * ny
        for ts, value in pixels[1:-1]:
            assert (ts - start_time) / dwell == pytest.approx(value, abs=max(20, 0.01 * nx * ny))
        lines = [v for _, v in rec["LINE"].since(wall0)]
        if per_line:
            assert set(range(ny + 1)) - set(lines) <= {0}  # every line end published
            assert len(lines) <= ny + 1
        else:
            rate = len(pixels) / expected
            print(f"progress updates: {rate:.1f} Hz")
            assert 10 < rate < 55  # batched, never a flood
    finally:
        for monitor in rec.values():
            monitor.clear()


def start_in_background(pv_name: str, result: dict) -> threading.Thread:
    """Put Start with completion from another thread; result["t"] = its duration."""
    channel = pv(pv_name)

    def start():
        t = time.monotonic()
        channel.write([1], wait=True, timeout=30)  # 1 = Start
        result["t"] = time.monotonic() - t

    thread = threading.Thread(target=start)
    thread.start()
    return thread


def test_stop_aborts_a_frame(fib):
    F = fib.prefix("column")
    set_raster(F, 100, 100, 1e-3)  # a 10 s frame
    frames = caget(F + "SCAN:FRAME")
    done: dict = {}
    thread = start_in_background(F + "SCAN:ACQUIRE", done)
    wait_for(lambda: caget_str(F + "SCAN:ACQUIRE_RBV") == "Start", 2, "the frame to start")
    time.sleep(0.5)
    t_stop = time.monotonic()
    caput(F + "SCAN:ACQUIRE", "Stop")
    stop_latency = time.monotonic() - t_stop
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert done["t"] < 2.0  # the Start completion returned on Stop, not after 10 s
    assert stop_latency < 0.2
    assert caget(F + "SCAN:FRAME") == frames
    assert 3.0 < caget(F + "SCAN:PROGRESS") < 15.0
    assert caget_str(F + "SCAN:ACQUIRE") == "Stop"
    assert caget_str(F + "SCAN:ACQUIRE_RBV") == "Stop"


def test_parameter_puts_refused_during_a_frame(fib):
    F = fib.prefix("column")
    set_raster(F, 50, 40, 1e-3)  # a 2 s frame
    before = {name: caget(F + name) for name in
              ("SCAN:NX", "SCAN:NY", "SCAN:DWELL", "SCAN:FOV", "SCAN:ROTATION", "HV")}
    result: dict = {}
    thread = start_in_background(F + "SCAN:ACQUIRE", result)
    wait_for(lambda: caget_str(F + "SCAN:ACQUIRE_RBV") == "Start", 2, "the frame to start")
    for name, value in [("SCAN:NX", 10), ("SCAN:NY", 10), ("SCAN:DWELL", 1e-5),
                        ("SCAN:FOV", 1.0), ("SCAN:ROTATION", 45.0), ("SCAN:MODE", "Spot"),
                        ("SCAN:SPOT_X", 0.1), ("HV", 10.0), ("APERTURE", "1 nA"),
                        ("SCAN:ACQUIRE", "Start")]:
        assert_refused(F + name, value)
    thread.join(timeout=10)
    assert result["t"] == pytest.approx(2.0, rel=0.03)  # the raster was not disturbed
    assert {name: caget(F + name) for name in before} == before
    assert caget(F + "SCAN:PIXEL") == 50 * 40
    caput(F + "SCAN:NX", 64)  # accepted again once the frame is over
    assert caget(F + "SCAN:NX") == 64


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
    # A raster with the beam blanked (dark counts only) is allowed.
    set_raster(F, 16, 16, 1e-3)
    t0 = time.monotonic()
    caput(F + "SCAN:ACQUIRE", "Start")
    assert time.monotonic() - t0 == pytest.approx(0.256, abs=0.03)


# --------------------------------------------------------------------------------------
# Interlock with the real stage and TEM IOCs
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sims(start_instrument, slot_pool):
    """Stage, TEM, column and bias; skips if the stage or TEM IOC is a placeholder."""
    procs = start_instrument(iocs=("stage", "tem", "column", "bias"))
    try:
        skip_unless_served(procs.prefix("stage") + "A.RBV", procs.prefix("tem") + "OBJ_RBV",
                           why="stage/TEM IOC still a placeholder")
        wait_links_up(procs)
        yield procs
    finally:
        stop_instrument(procs, slot_pool)


def wait_links_up(procs) -> None:
    """Wait until the column and bias see the stage and TEM (a peer that starts after
    its follower is found within caproto's search back-off, <= 5 s)."""
    for part in ("column", "bias"):
        reason = procs.prefix(part) + "INTERLOCK_REASON"
        wait_for(lambda reason=reason: "link down" not in caget(reason), 20,
                 f"{reason} to see its peers")


def move_alpha(procs, target: float) -> None:
    move_motor(procs.prefix("stage") + "A", target, velocity=30.0)


def sims_geometry(procs) -> None:
    move_alpha(procs, -68.0)
    caput(procs.prefix("tem") + "OBJ", "Off")
    F = procs.prefix("column")
    wait_for(lambda: caget_str(F + "INTERLOCK_RBV") == "Permit", 2, "the interlock permit")


def test_unblank_needs_tilt_and_objective_off(sims):
    F, T = sims.prefix("column"), sims.prefix("tem")
    move_alpha(sims, 0.0)
    caput(T + "OBJ", "On")
    time.sleep(0.2)
    assert_refused(F + "BLANK", "Unblanked")
    assert caget_str(F + "STATUS").startswith("Refused: alpha 0.0 deg")
    move_alpha(sims, -68.0)
    time.sleep(0.2)
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


def test_stage_ioc_down_blanks_the_beam_fail_safe(sims):
    F = sims.prefix("column")
    sims_geometry(sims)
    caput(F + "BLANK", "Unblanked")
    sims.stop_one("stage")
    try:
        wait_for(lambda: caget_str(F + "BLANK_RBV") == "Blanked", 2, "auto-blank, stage down")
        assert caget_str(F + "STATUS") == "Blanked: stage link down"
        assert_refused(F + "BLANK", "Unblanked")
    finally:
        sims.restart("stage")
        wait_links_up(sims)
