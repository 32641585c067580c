"""Mode changes, mass spectra, calibration, SIMS maps and depth profiles on the real IOCs.

One module-scoped sequence on the shared instrument (reset for the module): TEM -> SIMS
(to_sims_mode), the SIMS plans, then back to TEM (to_tem_mode).
"""

from __future__ import annotations

import time

import bluesky.preprocessors as bpp
import numpy as np
import pytest
from faults import raise_at

from temsims.catalog import check_start_metadata
from temsims.constants import species_mass
from temsims.plans import (
    calibrate_masses,
    depth_profile,
    mass_spectrum,
    sims_map,
    to_sims_mode,
    to_tem_mode,
)

GA = {"69Ga": species_mass("69Ga"), "71Ga": species_mass("71Ga")}
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def sims(pdev):
    from bluesky import RunEngine

    d = pdev
    RunEngine({})(to_sims_mode(d.mode, voltage_v=4500.0))
    assert d.mode.infer() == "SIMS"
    yield d
    RunEngine({})(to_tem_mode(d.mode))
    assert d.mode.infer() == "TEM"


def _goto(d, p):
    d.stage.x.set(p["x_nm"] / 1000.0).wait(30)
    d.stage.y.set(p["y_nm"] / 1000.0).wait(30)


def _clear_field(particles, field_um: float) -> dict:
    """The largest natural particle whose raster of ``field_um`` keeps clear of the
    particles the other tests here and in test_plans_tem image: the Ga calibration
    sputters over 100 nm at 1 nA over its field (too much of the 200 nm-thick map particle
    to compare maps on it), and a 2 um field round its neighbour reached it."""
    labelled, natural = particles
    others = [labelled[0], labelled[1], natural[0]]
    half_x = 500.0 * field_um
    # The raster's stretch on the specimen: the beam lands at ~50 deg on +4.5 kV; 51 deg
    # keeps the check on the safe side of any instrument's extraction field.
    half_y = half_x / np.cos(np.radians(51.0))
    for p in natural:
        if all(abs(p["x_nm"] - o["x_nm"]) > half_x + 2 * o["radius_nm"]
               or abs(p["y_nm"] - o["y_nm"]) > half_y + 2 * o["radius_nm"] for o in others):
            return p
    raise AssertionError("no natural particle with a clear field")


def _maps(events, label):
    return np.concatenate([np.asarray(e["data"][f"imager_{label}"]) for e in events])


def test_mode_plans_reached_sims(sims):
    d = sims
    assert d.stage.alpha.position == pytest.approx(-68.0, abs=0.05)
    assert d.bias.position == pytest.approx(4500.0, abs=1.0)
    assert d.column.blank.get() == "Blanked"


def test_mass_spectrum_finds_ga_and_calibration_fixes_masses(RE, sims, particles):
    d = sims
    field_um = 2.0
    _goto(d, _clear_field(particles, field_um))
    d.column.aperture.set("1 nA").wait(5)
    d.column.scan.fov.set(field_um).wait(5)
    # Pre-sputter: implant the primary beam's Ga (it builds up with sputtered depth).
    d.spectrometer.count_time.set(2.0).wait(5)
    d.column.blank.set("Unblanked").wait(5)
    d.spectrometer.trigger().wait(30)
    d.column.blank.set("Blanked").wait(5)

    kw = dict(start_u=67.5, stop_u=72.5, step_u=0.01, dwell_s=1e-3, column=d.column,
              bias=d.bias, stage=d.stage)
    uid = RE(mass_spectrum(d.spectrometer, **kw)).plan_result
    start = RE.docs.start()
    assert uid == start["uid"]
    assert check_start_metadata(start) == [] and start["mode"] == "SIMS"
    assert start["bias_kV"] == pytest.approx(4.5, abs=0.01)
    assert start["polarity"] == "positive" and start["beam_current_pA"] > 500
    pk = RE.docs.events("peaks")[0]["data"]
    assert pk["peaks_count"] >= 2
    peaks = [{"mass_u": m} for m in pk["peaks_mass_u"]]  # strongest first
    before = {s: min(abs(p["mass_u"] - m) for p in peaks[:2]) for s, m in GA.items()}
    print(f"Ga peaks before calibration: {[round(p['mass_u'], 4) for p in peaks[:2]]}, "
          f"errors {before}")
    assert all(err < 0.6 for err in before.values())
    assert d.column.blank.get() == "Blanked"

    RE.docs.clear()
    uid = RE(calibrate_masses(d.spectrometer, column=d.column, bias=d.bias, stage=d.stage)
             ).plan_result
    assert uid == RE.docs.start()["uid"]
    assert check_start_metadata(RE.docs.start()) == []
    (event,) = RE.docs.events("calibration")
    cal = {k[len("calibration_"):]: v for k, v in event["data"].items()}
    print(f"calibration: a {cal['a_old']:.4f} -> {cal['a']:.4f} u/T^2, "
          f"b0 {cal['b0_old']:.6f} -> {cal['b0']:.6f} T; errors before {cal['errors_before_u']}")
    assert d.spectrometer.cal_a.get() == pytest.approx(cal["a"], rel=1e-6)

    RE.docs.clear()
    RE(mass_spectrum(d.spectrometer, **kw))
    peaks = [{"mass_u": m} for m in RE.docs.events("peaks")[0]["data"]["peaks_mass_u"]]
    after = {s: min(abs(p["mass_u"] - m) for p in peaks[:2]) for s, m in GA.items()}
    print(f"Ga peaks after calibration: {[round(p['mass_u'], 4) for p in peaks[:2]]}, "
          f"errors {after}")
    assert all(err < 0.05 for err in after.values())
    d.column.aperture.set("10 pA").wait(5)


#: Pre-sputtered depth before the fly/step comparison, in Ga build-up lengths: after
#: five, implanted Ga is 99 % of its steady state (62 nm at 25.5 keV landing). A fresh
#: surface is in the transient: one 8x8 map at 100 pA and 2 ms on this particle
#: sputters ~12 nm (one build-up length), and the second map then read 12-15 % less
#: 6Li than the first, whichever mode went first.
PRESPUTTER_BUILDUP_LENGTHS = 5


@pytest.fixture(scope="module")
def map_particle(sims, particles):
    """The largest labelled particle, pre-sputtered over the map's field to the Ga
    steady state (what an analyst does before comparing maps)."""
    from temsims.ioc.physics.materials import ELEMENTARY_CHARGE_C, MATERIALS
    from temsims.ioc.physics.sims import ga_buildup_nm

    d = sims
    p = particles[0][0]
    _goto(d, p)
    fov = 4 * p["radius_nm"] / 1000.0
    d.column.aperture.set("100 pA").wait(5)
    d.column.scan.fov.set(fov).wait(5)
    d.column.scan.mode.set("Raster").wait(5)
    depth_nm = PRESPUTTER_BUILDUP_LENGTHS * ga_buildup_nm(float(d.column.landing.get()))
    li2co3 = MATERIALS["Li2CO3"]
    ions = (depth_nm * li2co3.atomic_density_per_nm3 / li2co3.sputter_yield
            * (fov * 1000.0) ** 2)
    d.spectrometer.count_time.set(ions * ELEMENTARY_CHARGE_C / 100e-12).wait(5)  # ~0.65 s
    d.column.blank.set("Unblanked").wait(5)
    d.spectrometer.trigger().wait(30)
    d.column.blank.set("Blanked").wait(5)
    return p


@pytest.mark.parametrize("fly", [True, False])
def test_sims_map_fly_and_step(RE, sims, map_particle, fly):
    d = sims
    p = map_particle
    _goto(d, p)
    d.column.aperture.set("100 pA").wait(5)
    fov = 4 * p["radius_nm"] / 1000.0
    t0 = time.monotonic()
    uid = RE(sims_map(d.imager, d.spectrometer, d.column, d.stage, d.bias,
                         species=("6Li", "7Li", "12C"), fov_um=fov, pixels=(8, 8),
                         dwell_s=2e-3, fly=fly, md={"correlation_id": "map-cmp"})).plan_result
    TIMINGS["fly" if fly else "step"] = time.monotonic() - t0
    start = RE.docs.start()
    assert uid == start["uid"]
    assert check_start_metadata(start) == []
    assert start["acquisition"] == ("fly" if fly else "step")
    # The collectors' window read from COL:WINDOW; 6LiH+ on 7Li+ and 6Li2+ on 12C+ are
    # inside it (0.007 u and 0.030 u from them), recorded and mapped ("warn").
    found = start["interferences"]
    assert found["policy"] == "warn" and found["window_u"] == pytest.approx(0.8)
    assert not found["window_assumed"]
    assert {(i["ion"], i["target"]) for i in found["unresolved"]} >= {
        ("6LiH+", "7Li"), ("6Li2+", "12C")}
    assert [c.get("species") for c in start["collectors"][:3]] == ["6Li", "7Li", "12C"]
    assert start["region"]["x_um"] == pytest.approx(p["x_nm"] / 1000.0, abs=1e-3)
    assert start["region"]["fov_um"] == fov
    assert start["region"]["tilt_deg"] == pytest.approx(-68.0, abs=0.05)
    # The extraction field bends the 30 kV beam from 45 deg to 50.1 deg at +4.5 kV
    # (the landing energy 25.5 keV): the map is recorded 1.558 x longer along y.
    assert start["beam_energy_keV"] == pytest.approx(25.5, abs=0.01)
    assert start["map"]["incidence_deg"] == pytest.approx(50.08, abs=0.01)
    desc = RE.docs.descriptor()
    for label in ("6Li", "7Li", "12C"):  # the same description in both modes
        assert desc["data_keys"][f"imager_{label}"]["shape"] == [1, 8]
        assert desc["data_keys"][f"imager_{label}"]["dims"] == ["line", "x"]
    events = RE.docs.events()
    assert [e["data"]["imager_line"] for e in events] == list(range(8))
    maps = {label: _maps(events, label) for label in ("6Li", "7Li")}
    assert maps["6Li"].shape == (8, 8)
    np.testing.assert_array_equal(RE.docs.run().maps()["6Li"], maps["6Li"])  # one assembler
    if not fly:
        assert len(RE.docs.events("pixels")) == 64
        assert d.column.scan.mode.get() == "Raster"
    test_sims_map_fly_and_step.maps[fly] = maps
    assert d.column.blank.get() == "Blanked"
    assert d.bias.position == pytest.approx(4500.0, abs=1.0)  # left on for the next run


test_sims_map_fly_and_step.maps = {}


def test_fly_and_step_maps_agree(sims):
    """Where the map is flat (particle core) the two modes agree within Poisson noise (+ a few %).

    At the particle edges they differ on purpose: a fly pixel averages the emission
    over the pixel area, a step pixel samples the point at its centre (spot mode).
    """
    maps = test_sims_map_fly_and_step.maps
    if len(maps) < 2:
        pytest.skip("needs both maps")
    print(f"wall time 8x8 map, 2 ms dwell: fly {TIMINGS['fly']:.2f} s, "
          f"step {TIMINGS['step']:.2f} s")
    yy, xx = np.mgrid[:8, :8]
    for label in ("6Li", "7Li"):
        f, s = maps[True][label].astype(float), maps[False][label].astype(float)
        core = (f > 0.8 * f.max()) & (s > 0.8 * s.max())
        chi2 = ((f - s)[core] ** 2 / (f + s)[core]).mean()
        ratio = s.sum() / max(f.sum(), 1)
        cf = [(f * g).sum() / f.sum() for g in (xx, yy)]
        cs = [(s * g).sum() / s.sum() for g in (xx, yy)]
        print(f"{label}: fly total {f.sum():.0f}, step total {s.sum():.0f} (ratio {ratio:.3f}); "
              f"core {core.sum()} px chi2/px {chi2:.2f}; centroid fly {np.round(cf, 2)} "
              f"step {np.round(cs, 2)}")
        assert f.sum() > 1000 and core.sum() >= 2
        # Poisson alone gives chi2/px ~ 1, but at ~5000 counts/px a few % is many sigma:
        # the first map sputters the particle a little before the second, and a fly
        # pixel averages the curved core. So bound the relative difference per pixel.
        diff = np.abs(f - s)[core]
        assert np.all(diff < 0.08 * f[core] + 4 * np.sqrt((f + s)[core]))
        # The core sums agree within 5 % plus their Poisson noise (4 sigma): 7Li on a
        # labelled particle is ~250 counts/px, where 1 sigma of a 4 px sum is ~5 %.
        core_diff = abs(s[core].sum() - f[core].sum())
        assert core_diff < 0.05 * f[core].sum() + 4 * np.sqrt((f + s)[core].sum())
        assert 0.75 < ratio < 1.25
        assert np.allclose(cf, cs, atol=0.3)


def test_depth_profile_depth_increases(RE, sims, particles):
    d = sims
    p = particles[0][1]  # second labelled particle
    _goto(d, p)
    d.column.aperture.set("30 pA").wait(5)
    fov = 4 * p["radius_nm"] / 1000.0
    uid = RE(depth_profile(d.imager, d.spectrometer, d.column, d.stage, d.bias,
                            species=("6Li", "7Li"), fov_um=fov, pixels=(16, 16),
                            dwell_s=1e-3, frames=4)).plan_result
    start = RE.docs.start()
    assert check_start_metadata(start) == []
    assert start["depth_model"]["sputter_yield_atoms_per_ion"] == 2.5
    # The rastered area on the specimen, and so the depth, at the bent beam's 50.1 deg.
    assert start["depth_model"]["incidence_deg"] == start["map"]["incidence_deg"]
    assert start["map"]["incidence_deg"] == pytest.approx(50.08, abs=0.01)
    events = RE.docs.events("depth")
    depths = [e["data"]["depth_depth_nm"] for e in events]
    print(f"depth profile: depth per frame {np.round(depths, 2).tolist()} nm, 6Li totals "
          f"{[e['data']['depth_total_6Li'] for e in events]}")
    assert len(events) == 4 and len(RE.docs.events()) == 4 * 16
    assert all(b > a for a, b in zip(depths, depths[1:], strict=False)) and depths[0] > 0
    assert uid == start["uid"]
    assert events[0]["data"]["depth_total_6Li"] > 100
    d.column.aperture.set("10 pA").wait(5)


@pytest.mark.parametrize("plan_name,fly,command", [("sims_map", True, "collect"),
                                                   ("sims_map", False, "trigger"),
                                                   ("depth_profile", True, "collect")])
def test_injected_failure_leaves_beam_blanked_and_bias_at_zero(RE, sims, plan_name, fly,
                                                                command):
    d = sims
    devs = (d.imager, d.spectrometer, d.column, d.stage, d.bias)
    if plan_name == "sims_map":
        plan = sims_map(*devs, species=("6Li",), fov_um=1.0, pixels=(4, 4), dwell_s=1e-3,
                        fly=fly)
    else:
        plan = depth_profile(*devs, species=("6Li",), fov_um=1.0, pixels=(4, 4),
                             dwell_s=1e-3, frames=3)
    with pytest.raises(RuntimeError, match="injected"):
        RE(bpp.plan_mutator(plan, raise_at(command)))
    assert d.column.blank.get() == "Blanked"
    assert abs(d.bias.position) < 1.0
    assert d.column.scan.acquire_rbv.get() == "Stop"
    assert RE.docs.docs["stop"][-1]["exit_status"] == "fail"
    # back to a working SIMS state for what follows
    RE(to_sims_mode(d.mode))
    assert d.mode.infer() == "SIMS"


def test_a_raster_stopped_mid_map_fails_the_run_and_keeps_its_lines(RE, sims):
    """Someone stops the raster (FIB:SCAN:ACQUIRE = Stop) while a map flies: the run
    fails (the flyer's complete status), the lines collected while it flew are in the
    run, and its map reads back as incomplete: an IncompleteMapError, or with
    ``partial=True`` NaN from the first line not acquired."""
    import threading

    from bluesky.utils import FailedStatus
    from instrument_support import TEST_TIME_SCALE

    from temsims.analysis.maps import IncompleteMapError

    d = sims
    # 41 s of beam, 2 s of wall time at S = 20: the stop lands well inside the frame.
    nx, ny, dwell, stop_at = 32, 256, 5e-3, 8
    stoppers = []

    def stop_raster(value, **kwargs):
        if int(value) >= stop_at and not stoppers:  # from another thread, as a panel would
            stoppers.append(threading.Thread(target=d.imager.acquire.put, args=("Stop",),
                                             kwargs={"use_complete": False}))
            stoppers[0].start()

    cid = d.imager.lines_done.subscribe(stop_raster, run=False)
    t0 = time.monotonic()
    try:
        with pytest.raises(FailedStatus) as failed:
            RE(sims_map(d.imager, d.spectrometer, d.column, d.stage, d.bias,
                        species=("6Li", "7Li"), fov_um=1.0, pixels=(nx, ny), dwell_s=dwell))
        assert "raster stopped after" in str(failed.value.args[0].exception())
    finally:
        d.imager.lines_done.unsubscribe(cid)
        for t in stoppers:
            t.join()
    wall = time.monotonic() - t0
    assert wall < 0.8 * nx * ny * dwell / TEST_TIME_SCALE + 1.0  # it did not run on
    assert RE.docs.docs["stop"][-1]["exit_status"] == "fail"
    assert d.column.blank.get() == "Blanked" and abs(d.bias.position) < 1.0
    run = RE.docs.run()
    lines = np.asarray(run.primary["imager_line"])
    print(f"raster stopped at line {stop_at}: {len(lines)} of {ny} lines in the run, "
          f"{wall:.2f} s")
    assert stop_at <= len(lines) < ny
    np.testing.assert_array_equal(lines, np.arange(len(lines)))  # in order, none twice
    with pytest.raises(IncompleteMapError, match="lacks"):
        run.maps()
    partial = run.maps(partial=True)["7Li"]
    assert np.isfinite(partial[:len(lines)]).all() and np.isnan(partial[len(lines):]).all()
    RE(to_sims_mode(d.mode))  # back to a working SIMS state for what follows
    assert d.mode.infer() == "SIMS"
