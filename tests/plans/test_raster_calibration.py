"""The ion raster's calibration (decision 0029, 2026-12-05 raster-calibration
amendment): the column's SCAN:FOV_CAL / SCAN:ROT_CAL, which the twin applies before
its field and rotation errors, and ``calibrate_raster``, which measures those errors
on a TEM image and writes the calibration that takes them out.

The model is checked without an IOC, then over CA: an instrument on a fresh specimen
seed with a fresh field error (2-4 %) and rotation error (1-2 deg), either sign, and a
fresh working bias (printed; the entropy reproduces them). After the plan the raster
the twin really writes must match the nominal one (field within 0.3 %, rotation
within 0.1 deg), and a map made afterwards must lie where its recorded geometry says.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
from scoring import fresh_rng

from temsims.analysis.geometry import SimsMapGeometry
from temsims.analysis.registration import _raster_linear, raster_model_parameters
from temsims.ioc.physics import ion_optics
from temsims.ioc.physics import sims as sp
from temsims.ioc.spectrometer import SpectrometerIOC

#: Calibration map (the plan's default): 4 um over 256 x 192 (15.6 nm pixels along x).
FOV_UM, PIXELS = 4.0, (256, 192)
SNAP = {"nx": 64, "ny": 48, "fov": 8.0, "rotation": 10.0, "x": 1.0, "y": -2.0,
        "incidence": 45.0}


# ============================================================================ the model
def test_the_column_calibration_acts_before_the_raster_error():
    ioc = SimpleNamespace(params=sp.SimsParameters(), fov_error_pct=3.0,
                          raster_rotation_deg=-1.5)
    g = SpectrometerIOC.geometry(ioc, SNAP)
    assert (g.fov_um, g.rotation_deg) == pytest.approx((8.0 * 1.03, 8.5))
    # The calibration that takes the errors out gives back the nominal raster.
    g = SpectrometerIOC.geometry(ioc, {**SNAP, "fov_cal": 1 / 1.03, "rot_cal": 1.5})
    assert (g.fov_um, g.rotation_deg) == pytest.approx((8.0, 10.0))


def test_the_raster_model_parameters_are_read_back():
    for theta in (0.0, 12.0, -95.0):
        correction = np.eye(3)
        correction[:2, :2] = _raster_linear(
            np.array([math.log(0.97), math.radians(1.7), math.log(1.02)]), math.radians(theta))
        parts = raster_model_parameters(correction, theta)
        assert (parts["scale"], parts["rotation_deg"], parts["stretch"]) == pytest.approx(
            (0.97, 1.7, 1.02))


# ============================================================================ over CA
def _true_geometry(recorded: SimsMapGeometry, errors: dict, fov_cal: float, rot_cal: float,
                   incidence_deg: float) -> SimsMapGeometry:
    """Where the twin really wrote a map recorded as ``recorded``."""
    fov, rotation = ion_optics.true_raster(
        recorded.fov_um * fov_cal, recorded.rotation_deg + rot_cal,
        fov_error_pct=errors["fov"], rotation_error_deg=errors["rotation"])
    return dataclasses.replace(recorded, fov_um=fov, rotation_deg=rotation,
                               incidence_deg=incidence_deg)


def _corner_error_px(recorded: SimsMapGeometry, true: SimsMapGeometry) -> float:
    """Largest distance between where the recorded and the true raster put the map's
    corner pixels, in recorded SIMS px (the specimen y divided by the stretch)."""
    corners = recorded.corners_px()
    xr, yr = recorded.pixel_to_specimen_um(corners[:, 0], corners[:, 1])
    xt, yt = true.pixel_to_specimen_um(corners[:, 0], corners[:, 1])
    return float(np.max(np.hypot((xt - xr), (yt - yr) / recorded.stretch))
                 / recorded.pixel_size_um)


@pytest.mark.slow
def test_calibrate_raster_takes_out_the_field_and_rotation_errors(instruments):
    """A fresh specimen, fresh raster errors and a fresh bias: after the plan the true
    raster is the nominal one within 0.3 % and 0.1 deg, and a later map's pixels lie
    where its recorded geometry puts them.

    ~18-33 s (a new instrument's start, then a TEM image and three maps): slow tier."""
    from bluesky import RunEngine
    from documents import DocumentCollector
    from instrument_support import connect_fast

    from temsims.plans import calibrate_raster, sims_map
    from temsims.plans.mode import to_sims_mode, to_tem_mode

    rng = fresh_rng("test_calibrate_raster")
    seed = int(rng.integers(2, 1_000_000))
    errors = {"fov": float(rng.uniform(2.0, 4.0) * rng.choice([-1, 1])),
              "rotation": float(rng.uniform(1.0, 2.0) * rng.choice([-1, 1]))}
    bias_v = float(rng.choice([2500.0, 3500.0, 4500.0]))
    print(f"li2co3-particles seed {seed}, field error {errors['fov']:+.3f} %, rotation "
          f"error {errors['rotation']:+.3f} deg, bias {bias_v:+.0f} V")
    args = ["--drift-nm-per-min", "0", "--fov-error-pct", str(errors["fov"]),
            "--raster-rotation-deg", str(errors["rotation"])]
    procs = instruments.get(specimen="li2co3-particles", seed=seed,
                            extra_args={"spectrometer": args})
    d = connect_fast(procs, camera_size=512)
    RE = RunEngine({"sample": f"li2co3-particles seed {seed}",
                    "specimen": "li2co3-particles", "operator": "pytest"},
                   call_returns_result=True)
    docs = DocumentCollector()
    RE.subscribe(docs)
    d.column.aperture.set("100 pA").wait(10)
    result = RE(calibrate_raster(d, center=(0.0, 0.0), voltage_v=bias_v,
                                 species=("6Li", "7Li"), sims_fov_um=FOV_UM,
                                 sims_pixels=PIXELS, passes=2)).plan_result

    fov_cal, rot_cal = result["fov_cal"], result["rot_cal_deg"]
    field_left_pct = 100.0 * (fov_cal * (1 + errors["fov"] / 100.0) - 1.0)
    rotation_left = rot_cal + errors["rotation"]
    first, second = result["passes"]
    print(f"pass 1 measured scale {first['scale']:.5f} (truth {1 + errors['fov'] / 100:.5f}), "
          f"rotation {first['rotation_deg']:+.3f} deg, stretch {first['stretch']:.4f}, "
          f"{first['method']} ({first['features']} features); pass 2 measured scale "
          f"{second['scale']:.5f}, rotation {second['rotation_deg']:+.3f} deg ({second['method']},"
          f" {second['features']} features); left: field {field_left_pct:+.3f} %, "
          f"rotation {rotation_left:+.3f} deg")
    assert abs(field_left_pct) < 0.3
    assert abs(rotation_left) < 0.1
    # The calibration is on the column and in every later map's start document.
    assert (d.column.fov_cal.get(), d.column.rot_cal.get()) == pytest.approx(
        (fov_cal, rot_cal), abs=1e-4)
    starts = {s["uid"]: s for s in docs.docs["start"]}
    sims_starts = [starts[u] for u in result["uids"]["sims"]]
    assert sims_starts[0]["raster_cal"] == {"fov_factor": 1.0, "rotation_deg": 0.0}
    assert sims_starts[1]["raster_cal"]["fov_factor"] == pytest.approx(
        first["fov_cal"] / first["scale"], abs=1e-4)
    assert [s["raster_calibration"]["index"] for s in sims_starts] == [0, 1]

    # A wider map after the calibration: its recorded geometry against where the twin
    # wrote it. The raster's part is what the calibration answers for; the stretch
    # along y is the extraction field's (its true strength differs from the lab's
    # model by ~3 %, decision 0036), a property of the bias that stays uncorrected.
    def later_map():
        yield from to_sims_mode(d.mode, voltage_v=bias_v)
        uid = yield from sims_map(d.imager, d.spectrometer, d.column, d.stage, d.bias,
                                  species=("7Li",), fov_um=6.0, pixels=(64, 48),
                                  dwell_s=1e-4)
        yield from to_tem_mode(d.mode)
        return uid

    uid = RE(later_map()).plan_result
    start = next(s for s in docs.docs["start"] if s["uid"] == uid)
    assert start["raster_cal"]["fov_factor"] == pytest.approx(fov_cal, abs=1e-4)
    recorded = SimsMapGeometry.from_metadata(start)
    nm = recorded.pixel_size_um * 1000.0
    incidence = ion_optics.landing_incidence_deg(
        start["beam_energy_keV"], bias_v,
        field_factor=ion_optics.draw_extraction_field_factor(seed))
    before = _corner_error_px(recorded, _true_geometry(
        recorded, errors, 1.0, 0.0, recorded.incidence_deg))
    after = _corner_error_px(recorded, _true_geometry(
        recorded, errors, fov_cal, rot_cal, recorded.incidence_deg))
    total = _corner_error_px(recorded, _true_geometry(
        recorded, errors, fov_cal, rot_cal, incidence))
    print(f"6 um map: corner pixels {before * nm:.0f} nm ({before:.2f} px) off uncalibrated, "
          f"{after * nm:.1f} nm ({after:.3f} px) after; with the extraction field's true "
          f"stretch (incidence {incidence:.3f} deg, recorded {recorded.incidence_deg:.3f}) "
          f"{total * nm:.1f} nm")
    assert after < 0.25 * before
    assert after * nm < 20.0


# ============================================================ relief: the beam's view
def _relief_scene(rng: np.random.Generator, *, parallax: bool):
    """A particle field (spheres: chord heights) as a 512 px TEM bright-field image of
    6 um and a 256 x 192 SIMS map of 4 um at +4.5 kV's 50.08 deg, written with a 3 %
    field and -1.5 deg rotation error; with ``parallax`` the map sees each raised point
    ``h tan(theta)`` down-beam (the twin's relief, decision 0041), else the projection.
    Returns (sims, tem, recorded SimsMapGeometry, TemImageGeometry)."""
    from scipy import ndimage

    from temsims.analysis.geometry import TemImageGeometry
    from temsims.analysis.parallax import beam_view
    from temsims.plans._parallax import LI2CO3_SCATTERING_DENSITY_G_CM3

    step_nm, half_um = 4.0, 3.2
    n = int(2e3 * half_um / step_nm)
    axis = (np.arange(n) - (n - 1) / 2) * step_nm / 1e3
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    h = np.zeros((n, n))
    for _ in range(45):
        x0, y0 = rng.uniform(-2.6, 2.6, 2)
        r = rng.uniform(0.04, 0.15)
        rho2 = (xx - x0) ** 2 + (yy - y0) ** 2
        h = np.maximum(h, 2e3 * np.sqrt(np.clip(r * r - rho2, 0, None)))
    incidence = 50.08
    signal = np.where(h > 0, 100.0, 2.0)
    seen = beam_view(signal, h, step_nm, incidence) if parallax else signal
    seen = ndimage.gaussian_filter(seen, 20.0 / 2.355 / step_nm)  # the ~20 nm probe
    tem_geometry = TemImageGeometry(size=512, fov_um=6.0, centre_x_um=0.0, centre_y_um=0.0)
    recorded = SimsMapGeometry(nx=PIXELS[0], ny=PIXELS[1], fov_um=FOV_UM, centre_x_um=0.0,
                               centre_y_um=0.0, rotation_deg=0.0, incidence_deg=incidence)
    true = dataclasses.replace(recorded, fov_um=FOV_UM * 1.03, rotation_deg=-1.5)

    def sample(image, geometry, shape):
        r, c = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        x, y = geometry.pixel_to_specimen_um(r.ravel(), c.ravel())
        return ndimage.map_coordinates(
            image, [(np.asarray(y) + half_um) / step_nm * 1e3 - 0.5,
                    (np.asarray(x) + half_um) / step_nm * 1e3 - 0.5], order=1
        ).reshape(shape)

    sims = rng.poisson(sample(seen, true, (PIXELS[1], PIXELS[0]))).astype(float)
    mt = 0.1 * LI2CO3_SCATTERING_DENSITY_G_CM3 * ndimage.gaussian_filter(h, 1.5)
    tem = rng.poisson(2000.0 * np.exp(-sample(mt, tem_geometry, (512, 512)) / 30.0))
    return sims, tem.astype(float), recorded, tem_geometry


@pytest.mark.parametrize("parallax", [True, False])
def test_the_raster_is_measured_against_what_the_beam_sees(parallax):
    """Decision 0042's amendment "Relief": a map of raised particles is measured
    against the TEM image as the tilted beam sees it (and a flat one against the
    projection), and the raster errors come out within the calibration's 0.3 % and
    0.1 deg; against the projection alone the features of the map with parallax scatter
    with the particles' sizes (0.8 px rms on the twin's seed 487878, refused).

    With parallax the redrawn view still leaves the features 0.25-0.38 px rms apart
    (flat: the probe's noise), so one scene's rotation scatters: 42 fresh scenes, mean
    +0.002 deg, sd 0.040, largest 0.106 (the projection: sd ~0.08); 0.1 deg failed
    ~1 % of runs, the bound is 4 sd. Flat scenes: sd 0.008 deg; the scale, sd 0.0002
    either way."""
    from temsims.plans._tem_referenced import measure_against_tem
    from temsims.plans.raster_calibration import measure_raster

    rng = fresh_rng(f"test_raster_calibration relief scene, parallax {parallax}")
    sims, tem, recorded, tem_geometry = _relief_scene(rng, parallax=parallax)
    m = measure_against_tem(measure_raster, sims, tem, recorded, tem_geometry,
                            contrast_ug_cm2=30.0)
    plain = measure_raster(sims, tem, recorded, tem_geometry)
    print(f"parallax {parallax}: chosen beam_view {m['beam_view']:g}, ncc {m['ncc']:.3f} "
          f"(projection {plain['ncc']:.3f}), scale {m['scale']:.4f}, rotation "
          f"{m['rotation_deg']:+.3f} deg, features {m['features']}")
    assert m["beam_view"] == (1.0 if parallax else 0.0)
    assert m["measured"] and m["ncc"] > plain["ncc"] - 1e-9
    assert m["scale"] == pytest.approx(1.03, abs=0.003)
    assert m["rotation_deg"] == pytest.approx(-1.5, abs=0.16 if parallax else 0.1)
