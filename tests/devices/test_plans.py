"""bluesky's own plans (count, scan, grid_scan, mass scan) on the devices, real IOCs."""

from __future__ import annotations

import bluesky.plans as bp
import numpy as np
import pytest


@pytest.fixture
def fast_setup(devices):
    """Small, fast acquisitions and fast x/y axes; everything restored afterwards."""
    d = devices
    sigs = {d.camera.size: 64, d.camera.exposure: 0.01, d.edx.live_time: 0.01,
            d.spectrometer.count_time: 0.05, d.stage.x.velocity: 200.0,
            d.stage.y.velocity: 200.0}
    before = {sig: sig.get() for sig in sigs}
    for sig, value in sigs.items():
        sig.set(value).wait(10)
    yield d
    for sig, value in before.items():
        sig.set(value).wait(10)
    for axis in (d.stage.x, d.stage.y):
        axis.set(0.0).wait(30)


def test_count_camera_edx_spectrometer(RE, fast_setup):
    d = fast_setup
    RE(bp.count([d.camera, d.edx, d.spectrometer], num=2))
    desc = RE.docs.descriptor()
    keys = desc["data_keys"]
    assert keys["camera_image"]["shape"] == [64, 64]
    assert keys["camera_image"]["dtype_numpy"] == "<f4"
    nchan = int(d.edx.nchan.get())
    assert keys["edx_spectrum"]["shape"] == [nchan]
    assert "spectrometer_collectors_col2_counts" in keys
    assert "camera_exposure" in desc["configuration"]["camera"]["data"]
    events = RE.docs.events()
    assert len(events) == 2
    for ev in events:
        image = np.asarray(ev["data"]["camera_image"])
        assert image.shape == (64, 64) and image.mean() > 0
        spectrum = np.asarray(ev["data"]["edx_spectrum"])
        assert spectrum.shape == (nchan,) and spectrum.sum() > 0
        assert ev["data"]["spectrometer_sims_ready"] == "No"  # TEM geometry: dark only
    assert events[1]["data"]["camera_counter"] == events[0]["data"]["camera_counter"] + 1


def test_edx_line_mode_gives_npts_spectra(RE, fast_setup):
    edx = fast_setup.edx
    mode, npts = edx.mode.get(), edx.npts.get()
    try:
        edx.mode.set("Line").wait(5)
        edx.npts.set(5).wait(5)
        RE(bp.count([edx]))
        keys = RE.docs.descriptor()["data_keys"]
        nchan = int(edx.nchan.get())
        assert keys["edx_line_spectra"]["shape"] == [5, nchan]
        assert "edx_spectrum" not in keys
        data = np.asarray(RE.docs.events()[0]["data"]["edx_line_spectra"])
        assert data.shape == (5, nchan) and (data.sum(axis=1) > 0).all()
    finally:
        edx.mode.set(mode).wait(5)
        edx.npts.set(npts).wait(5)


def test_scan_stage_axis_against_detectors(RE, fast_setup):
    d = fast_setup
    RE(bp.scan([d.camera, d.spectrometer], d.stage.x, -2.0, 2.0, 5))
    events = RE.docs.events()
    assert len(events) == 5
    xs = [ev["data"]["stage_x"] for ev in events]
    assert xs == pytest.approx([-2.0, -1.0, 0.0, 1.0, 2.0], abs=1e-3)
    centres = [ev["data"]["camera_center_x"] for ev in events]
    assert centres == pytest.approx(xs, abs=1e-3)  # the image was taken where the stage was
    assert RE.docs.docs["stop"][0]["exit_status"] == "success"


def test_grid_scan_xy_with_camera(RE, fast_setup):
    d = fast_setup
    RE(bp.grid_scan([d.camera], d.stage.y, -1.0, 1.0, 2, d.stage.x, -1.0, 1.0, 3))
    events = RE.docs.events()
    assert len(events) == 6
    points = {(round(ev["data"]["stage_y"], 3), round(ev["data"]["stage_x"], 3))
              for ev in events}
    assert points == {(y, x) for y in (-1.0, 1.0) for x in (-1.0, 0.0, 1.0)}
    assert all(np.asarray(ev["data"]["camera_image"]).shape == (64, 64) for ev in events)


def test_mass_scan_gives_spectrum_and_mass_axis(RE, devices):
    scanner = devices.spectrometer.mass_scan
    before = {s: s.get() for s in (scanner.first, scanner.last, scanner.step, scanner.dwell)}
    mode = devices.spectrometer.mode.get()
    try:
        scanner.set_range(6.5, 7.5, 0.01, 1e-3).wait(10)
        RE(bp.count([scanner]))
        keys = RE.docs.descriptor()["data_keys"]
        assert keys["spectrometer_mass_scan_spectrum"]["shape"] == [101]
        data = RE.docs.events()[0]["data"]
        masses = np.asarray(data["spectrometer_mass_scan_mass_axis"])
        assert masses.shape == (101,)
        assert masses[0] == pytest.approx(6.5, abs=0.1) and masses[-1] == pytest.approx(7.5,
                                                                                       abs=0.1)
        assert np.asarray(data["spectrometer_mass_scan_spectrum"]).shape == (101,)
        with pytest.raises(ValueError, match="above"):
            scanner.set_range(7.0, 6.0, 0.01, 1e-3)
    finally:
        for sig, value in before.items():
            sig.set(value).wait(10)
        devices.spectrometer.mode.set(mode).wait(10)


@pytest.mark.slow  # 1000 moves: 6-12 s
def test_back_to_back_moves_under_a_run_engine_all_finish(fast_setup):
    """1000 10-nm moves, each issued by the RunEngine as soon as the previous status
    finished: none may lose its status (plain ``EpicsMotor`` lost 18 of 3000 here,
    each a step scan hung for good; see ``StageMotor``)."""
    import bluesky.plan_stubs as bps
    from bluesky import RunEngine

    x = fast_setup.stage.x
    acceleration = x.acceleration.get()
    x.acceleration.set(0.0).wait(5)
    RE = RunEngine({})
    done, lost = [0], []
    n = 1000

    def moves(k):
        for _ in range(k):
            yield from bps.abs_set(x, 0.01 * (done[0] % 50), group="move")
            yield from bps.wait("move", timeout=5)
            done[0] += 1

    while done[0] < n:
        try:
            RE(moves(n - done[0]))
        except TimeoutError:  # bluesky's WaitForTimeoutError
            lost.append(done[0])
            done[0] += 1
    x.acceleration.set(acceleration).wait(5)
    assert lost == []
    assert x.position == pytest.approx(0.01 * ((n - 1) % 50), abs=1e-6)
