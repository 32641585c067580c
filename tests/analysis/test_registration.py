"""Registration of SIMS maps onto TEM images, scored against the simulator's truth.

The TEM image and the SIMS map are rendered by the simulator's physics
(:mod:`temsims.ioc.physics.tem_optics`, :mod:`temsims.ioc.physics.sims`) of one
li2co3-particles specimen, at known stage positions, scan rotation and 45 deg
incidence. The geometry handed to the registration is the truth with a stage
readback error of a few SIMS pixels; the refined transform must put the SIMS pixel
centres (map corners and centre) where the true geometry puts them on the TEM image,
to better than 0.5 SIMS pixel (RMS).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scoring import fresh_rng
from skimage.transform import AffineTransform

from temsims.analysis.geometry import SimsMapGeometry, TemImageGeometry, pixel_transform_matrix
from temsims.analysis.registration import (
    RegistrationResult,
    register_sims_to_tem,
    warp_sims_to_tem,
    warp_tem_to_sims,
)
from temsims.ioc.physics import sims as sp
from temsims.ioc.physics.ion_optics import true_raster
from temsims.ioc.physics.materials import isotope_mass_u
from temsims.ioc.physics.specimen import build_specimen
from temsims.ioc.physics.tem_optics import ImageGeometry, ImageRenderer

#: Stage readback error given to the registration, in SIMS pixels (x, y on the specimen).
STAGE_ERROR_PX = (3.2, -2.7)
TOLERANCE_SIMS_PX = 0.5


def render_scene(seed: int, *, mode: str = "TEM", tem_size: int = 1024, nx: int = 128,
                 ny: int = 96, rotation_deg: float = 12.0, fov_error_pct: float = 0.0,
                 rotation_error_deg: float = 0.0, incidence_deg: float = 45.0):
    """TEM image and Li maps (6Li, 7Li) of one specimen, with their true geometries.

    The map is written with the true raster
    (:func:`temsims.ioc.physics.ion_optics.true_raster`: field and rotation off by
    ``fov_error_pct`` and ``rotation_error_deg``) at ``incidence_deg`` (50 deg: the
    beam bent by +4.5 kV of bias); the nominal geometry is :func:`nominal`.
    """
    specimen = build_specimen("li2co3-particles", seed=seed)
    rng = np.random.default_rng(100 + seed)
    tem_truth = ImageGeometry(centre_x_um=0.1, centre_y_um=-0.05, fov_um=3.2, size=tem_size)
    tem = ImageRenderer(specimen).acquire(tem_truth, 200.0, rng, mode=mode)
    fov_um, true_rotation_deg = true_raster(1.6, rotation_deg, fov_error_pct=fov_error_pct,
                                            rotation_error_deg=rotation_error_deg)
    scan = sp.ScanGeometry(nx, ny, fov_um, rotation_deg=true_rotation_deg, centre_x_nm=250.0,
                           centre_y_nm=-200.0, incidence_deg=incidence_deg)
    params = sp.SimsParameters(drift_nm_per_min=0.0)  # truth without drift
    plan = sp.FramePlan(specimen, scan, (isotope_mass_u("6Li"), isotope_mass_u("7Li")),
                        5.0, 1e-3, 20.0, 25.5, 1, True, np.zeros(specimen.shape, np.float32),
                        params=params)
    li6, li7 = plan.render(rng)
    sims_truth = SimsMapGeometry(nx, ny, scan.fov_um, scan.centre_x_nm / 1000.0,
                                 scan.centre_y_nm / 1000.0, true_rotation_deg,
                                 scan.incidence_deg)
    tem_geometry = TemImageGeometry(tem_size, tem_truth.fov_um, tem_truth.centre_x_um,
                                    tem_truth.centre_y_um)
    return tem, np.stack([li6, li7]).astype(np.float32), sims_truth, tem_geometry, scan, \
        tem_truth


def nominal(truth: SimsMapGeometry, fov_error_pct: float, rotation_error_deg: float
            ) -> SimsMapGeometry:
    """The geometry the plans record for a map written with a raster off by these
    errors (and at another incidence): the nominal field, rotation and 45 deg."""
    return dataclasses.replace(truth, fov_um=truth.fov_um / (1 + fov_error_pct / 100),
                               rotation_deg=truth.rotation_deg - rotation_error_deg,
                               incidence_deg=45.0)


def with_stage_error(geometry: SimsMapGeometry, error_px=STAGE_ERROR_PX) -> SimsMapGeometry:
    p = geometry.pixel_size_um
    return dataclasses.replace(geometry, centre_x_um=geometry.centre_x_um + error_px[0] * p,
                               centre_y_um=geometry.centre_y_um
                               + error_px[1] * p * geometry.stretch)


def rms_error_sims_px(transform: AffineTransform, sims_truth: SimsMapGeometry,
                      tem_truth: TemImageGeometry) -> float:
    """RMS over the map corners and centre of |true^-1(transform(p)) - p| (SIMS px)."""
    true = AffineTransform(matrix=pixel_transform_matrix(sims_truth, tem_truth))
    points = sims_truth.corners_px()
    d = true.inverse(transform(points)) - points
    return math.sqrt(float((d ** 2).sum(axis=1).mean()))


# ============================================================================ geometry
def test_sims_geometry_reproduces_the_simulator_convention():
    scan = sp.ScanGeometry(40, 30, 1.3, rotation_deg=17.0, centre_x_nm=120.0,
                           centre_y_nm=-340.0, incidence_deg=45.0)
    geo = SimsMapGeometry(40, 30, 1.3, 0.12, -0.34, rotation_deg=17.0)
    rows, cols = np.mgrid[0:30, 0:40]
    x_nm, y_nm = scan.to_specimen(*scan.beam_coords(rows, cols))
    x_um, y_um = geo.pixel_to_specimen_um(rows, cols)
    np.testing.assert_allclose(x_um * 1000, x_nm, atol=1e-9)
    np.testing.assert_allclose(y_um * 1000, y_nm, atol=1e-9)
    back_rows, back_cols = geo.specimen_to_pixel(x_um, y_um)
    np.testing.assert_allclose(back_rows, rows, atol=1e-9)
    np.testing.assert_allclose(back_cols, cols, atol=1e-9)
    m = geo.affine_to_specimen()
    xy = m @ np.array([cols.ravel(), rows.ravel(), np.ones(rows.size)])
    np.testing.assert_allclose(xy[0] * 1000, x_nm.ravel(), atol=1e-9)
    # Foreshortening: a map pixel covers 1/cos 45 times its beam-normal area.
    assert abs(np.linalg.det(m[:2, :2])) == pytest.approx(geo.pixel_size_um ** 2 * math.sqrt(2))


def test_tem_geometry_reproduces_the_simulator_convention():
    truth = ImageGeometry(centre_x_um=0.3, centre_y_um=-0.2, fov_um=2.0, size=64,
                          tilt_a_deg=10.0, tilt_b_deg=-5.0)
    geo = TemImageGeometry(64, 2.0, 0.3, -0.2, tilt_alpha_deg=10.0, tilt_beta_deg=-5.0)
    x_nm, y_nm = truth.pixel_coordinates_nm()
    rows, cols = np.mgrid[0:64, 0:64]
    x_um, y_um = geo.pixel_to_specimen_um(rows, cols)
    np.testing.assert_allclose(x_um * 1000, np.broadcast_to(x_nm, (64, 64)), atol=1e-9)
    np.testing.assert_allclose(y_um * 1000, np.broadcast_to(y_nm, (64, 64)), atol=1e-9)


def test_from_metadata_of_plan_start_documents():
    from temsims.analysis.maps import map_block

    block = map_block(imager="imager", species=["6Li"], pixels=(64, 45), fov_um=2.0,
                      dwell_s=1e-3, frames=1, centre_um=(0.5, -0.25), scan_rotation_deg=5.0)
    sims_doc = {"plan_name": "sims_map", "map": block,
                "region": {"x_um": 9.0, "y_um": 9.0, "fov_um": 9.0}}  # not read
    geo = SimsMapGeometry.from_metadata(sims_doc)
    assert geo == SimsMapGeometry(64, 45, 2.0, 0.5, -0.25, 5.0, 45.0)
    np.testing.assert_allclose(geo.affine_to_specimen(), block["pixel_to_specimen"], atol=1e-11)
    assert SimsMapGeometry.from_metadata(sims_doc, incidence_deg=30.0).incidence_deg == 30.0
    with pytest.raises(ValueError, match="no 'map' block"):
        SimsMapGeometry.from_metadata({"region": {"x_um": 0, "y_um": 0, "fov_um": 1.0}})
    with pytest.raises(ValueError, match="centre_um"):
        SimsMapGeometry.from_metadata({"map": {k: v for k, v in block.items()
                                               if k != "centre_um"}})

    image = {"size": None, "fov_um": 3.0, "x_um": 1.0, "y_um": 2.0, "tilt_alpha_deg": 0.0,
             "tilt_beta_deg": 0.0}
    tem_doc = {"plan_name": "tem_image", "image": image}
    with pytest.raises(ValueError, match="size"):
        TemImageGeometry.from_metadata(tem_doc)  # a simulated run records no size
    assert TemImageGeometry.from_metadata(tem_doc, size=256) == TemImageGeometry(
        256, 3.0, 1.0, 2.0)
    assert TemImageGeometry.from_metadata({"image": dict(image, size=512)}).size == 512
    with pytest.raises(ValueError, match="no 'image' block"):
        TemImageGeometry.from_metadata({"region": {"x_um": 1.0}}, size=8)


# ============================================================================ registration
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_refined_transform_finds_the_true_pixel_positions(seed):
    tem, li, sims_truth, tem_geo, _, _ = render_scene(seed)
    recorded = with_stage_error(sims_truth)
    # Total Li: labelled (6Li) and natural (7Li) particles alike, as on the TEM image.
    result = register_sims_to_tem(li.sum(axis=0), tem, recorded, tem_geo)
    initial = rms_error_sims_px(result.initial_transform, sims_truth, tem_geo)
    error = rms_error_sims_px(result.transform, sims_truth, tem_geo)
    print(f"seed {seed}: initial {initial:.2f} SIMS px -> refined {error:.3f} SIMS px; "
          f"shift {result.shift_px}, ncc {result.quality['ncc']:.3f}, "
          f"residual estimate {result.residual_sims_px:.3f} px")
    assert initial > 3.0
    assert error < TOLERANCE_SIMS_PX
    assert result.refined
    assert result.quality["tem_inverted"]  # bright field: particles dark, Li bright
    assert result.quality["ncc"] > 0.8 > result.quality["ncc_initial"]
    assert result.residual_sims_px < 1.0


def test_haadf_contrast_is_not_inverted_and_registers():
    tem, li, sims_truth, tem_geo, _, _ = render_scene(2, mode="STEM")
    result = register_sims_to_tem(li.sum(axis=0), tem, with_stage_error(sims_truth), tem_geo)
    assert not result.quality["tem_inverted"]
    assert rms_error_sims_px(result.transform, sims_truth, tem_geo) < TOLERANCE_SIMS_PX


def test_unacquired_pixels_are_ignored():
    tem, li, sims_truth, tem_geo, _, _ = render_scene(1)
    total = li.sum(axis=0)
    total[-20:] = -1  # an interrupted map: the last rows were not acquired
    result = register_sims_to_tem(total, tem, with_stage_error(sims_truth), tem_geo)
    assert rms_error_sims_px(result.transform, sims_truth, tem_geo) < TOLERANCE_SIMS_PX
    assert result.quality["overlap_fraction"] == pytest.approx(1 - 20 / total.shape[0],
                                                               abs=0.01)


def test_without_refinement_the_recorded_geometry_is_used():
    tem, li, sims_truth, tem_geo, _, _ = render_scene(1)
    result = register_sims_to_tem(li.sum(axis=0), tem, sims_truth, tem_geo, refine=False)
    assert not result.refined and result.shift_px == (0.0, 0.0)
    assert rms_error_sims_px(result.transform, sims_truth, tem_geo) < 1e-9


def test_warps_between_the_grids():
    tem, li, sims_truth, tem_geo, _, _ = render_scene(1)
    result = register_sims_to_tem(li.sum(axis=0), tem, with_stage_error(sims_truth), tem_geo)
    on_tem = warp_sims_to_tem(li, result, tem.shape)
    assert on_tem.shape == (2, *tem.shape) and on_tem.dtype == np.float32
    # The map covers part of the TEM field only: NaN outside.
    inside = np.isfinite(on_tem[0])
    assert 0.1 < inside.mean() < 0.6
    # Where the map is, Li is where the bright-field image is dark.
    total = on_tem.sum(axis=0)
    r = np.corrcoef(total[inside], tem[inside])[0, 1]
    assert r < -0.5
    on_sims = warp_tem_to_sims(tem, result, li.shape[1:])
    assert on_sims.shape == li.shape[1:] and np.isfinite(on_sims).all()
    assert np.corrcoef(on_sims.ravel(), li.sum(axis=0).ravel())[0, 1] < -0.6
    assert isinstance(result, RegistrationResult)
    rows, cols = result.sims_to_tem_px([0, 10], [0, 5])
    xy = result.transform([[0, 0], [5, 10]])
    np.testing.assert_allclose(cols, xy[:, 0])
    np.testing.assert_allclose(rows, xy[:, 1])


def test_bad_input_is_refused_with_clear_errors():
    tem_geo = TemImageGeometry(64, 1.0, 0.0, 0.0)
    sims_geo = SimsMapGeometry(16, 12, 0.5, 0.0, 0.0)
    with pytest.raises(ValueError, match="2-D"):
        register_sims_to_tem(np.zeros((2, 12, 16)), np.zeros((64, 64)), sims_geo, tem_geo)
    with pytest.raises(ValueError, match="does not match"):
        register_sims_to_tem(np.zeros((12, 15)), np.zeros((64, 64)), sims_geo, tem_geo)
    with pytest.raises(ValueError, match="does not match"):
        register_sims_to_tem(np.zeros((12, 16)), np.zeros((60, 64)), sims_geo, tem_geo)
    with pytest.raises(ValueError, match="invert_tem"):
        register_sims_to_tem(np.zeros((12, 16)), np.zeros((64, 64)), sims_geo, tem_geo,
                             invert_tem="yes")
    with pytest.raises(ValueError, match="model"):
        register_sims_to_tem(np.zeros((12, 16)), np.zeros((64, 64)), sims_geo, tem_geo,
                             model="similarity")
    far = dataclasses.replace(sims_geo, centre_x_um=50.0)
    with pytest.raises(ValueError, match="overlap"):
        register_sims_to_tem(np.ones((12, 16)), np.ones((64, 64)), far, tem_geo)
    with pytest.raises(ValueError):
        SimsMapGeometry(0, 12, 0.5, 0.0, 0.0)
    with pytest.raises(ValueError):
        TemImageGeometry(64, -1.0, 0.0, 0.0)


@pytest.mark.parametrize("seed", [1, 3])
def test_a_wrong_scan_rotation_or_field_is_flagged_not_hidden(seed):
    """A translation-only refinement (decision 0011) leaves the local misfits of a wrong
    recorded rotation or field, which ``residual_sims_px`` reports; the raster-model one
    (the default, decision 0029) corrects them and reports how far off the recorded
    geometry was (``linear_error_sims_px``)."""
    tem, li, sims_truth, tem_geo, _, _ = render_scene(seed)
    shifted = with_stage_error(sims_truth)
    good = register_sims_to_tem(li.sum(axis=0), tem, shifted, tem_geo)
    assert good.residual_sims_px < 0.3
    assert good.quality["model"] == "translation"  # nothing for an affine to correct
    assert good.linear_error_sims_px < 1e-9
    for rotation_error_deg, fov_scale in [(2.0, 1.03), (-3.0, 0.97)]:
        wrong = dataclasses.replace(shifted, rotation_deg=shifted.rotation_deg
                                    + rotation_error_deg, fov_um=shifted.fov_um * fov_scale)
        result = register_sims_to_tem(li.sum(axis=0), tem, wrong, tem_geo,
                                      model="translation")
        error = rms_error_sims_px(result.transform, sims_truth, tem_geo)
        print(f"seed {seed}: rotation error {rotation_error_deg:+.0f} deg, field x{fov_scale}: "
              f"translation only {error:.2f} SIMS px, residual estimate "
              f"{result.residual_sims_px:.2f} px")
        assert error > 2.0  # a translation cannot absorb it ...
        assert result.residual_sims_px > 0.9  # ... and the result says so
        assert result.linear_error_sims_px < 1e-9
        if (rotation_error_deg > 0) == (seed == 1):  # one case each, for the test's time
            affine = register_sims_to_tem(li.sum(axis=0), tem, wrong, tem_geo)
            error = rms_error_sims_px(affine.transform, sims_truth, tem_geo)
            print(f"  affine: {error:.2f} SIMS px, recorded linear geometry off by "
                  f"{affine.linear_error_sims_px:.2f} px, {affine.quality['affine']}")
            fit = affine.quality["affine"]
            if affine.quality["model"] == "raster":
                assert error < TOLERANCE_SIMS_PX and affine.residual_sims_px < 0.3
                assert affine.linear_error_sims_px > 2.0  # flagged, not hidden
            else:
                # Refused on its own 95 % bound, possible with 4-5 features (seed 3 has
                # 4: predicted 0.35 px, bound 0.53 px once the TEM weighed Li2CO3's
                # elements and the counts became sub-Poissonian): still flagged.
                assert fit["features"] <= 5 and not fit["applied"]
                assert fit["predicted_error_95_px"] > TOLERANCE_SIMS_PX
                assert affine.residual_sims_px > 0.9


def test_raster_fit_recovers_field_rotation_and_bias_stretch_on_fresh_seeds():
    """Issue 15: maps written with a raster 2-4 % off in field and 1-2 deg in rotation
    (a fresh specimen), and one at the 50 deg incidence of a bias-bent beam
    (stretch 1.556, the geometry records 45 deg: 1.414) with such errors too; the
    recorded geometry also carries a stage readback error. Every accepted raster fit
    is within 0.75 SIMS px of the truth (the median 0.5 px target is scored over 30
    seeds per setting by the benchmark) and reports the recorded geometry as off; a map
    whose features cannot constrain it keeps the translation and is flagged by
    ``residual_sims_px`` or by the refused fit's predicted corner error. The figures over 30 seeds
    per setting are ``benchmarks/registration_benchmark.py``'s (decision 0029)."""
    rng = fresh_rng("registration under raster calibration errors")
    applied = 0
    # With the intensity fallback (decision 0029, 2026-12-05 amendment) a map whose
    # features are too few for their bound is fitted by intensity: the loop below
    # rarely needs its third scene.
    # Two scenes; more, up to eight, only until a fit is accepted: the benchmark
    # accepts 253-257 of 360 maps (decision 0029, 95 % bound amendment), so four
    # scenes all refused came in ~1 run of 100 (entropy
    # 327525488223333358711042944951148916438: 4, 7, 4 and 4 features); eight in
    # ~1 of 15000.
    for index, incidence_deg in enumerate((45.0, 50.0) * 4):
        if index >= 2 and applied:
            break
        seed = int(rng.integers(10, 100_000))
        fov_error = float(rng.uniform(2, 4) * rng.choice([-1, 1]))
        rotation_error = float(rng.uniform(1, 2) * rng.choice([-1, 1]))
        tem, li, truth, tem_geo, _, _ = render_scene(
            seed, fov_error_pct=fov_error, rotation_error_deg=rotation_error,
            incidence_deg=incidence_deg)
        recorded = with_stage_error(nominal(truth, fov_error, rotation_error))
        result = register_sims_to_tem(li.sum(axis=0), tem, recorded, tem_geo)
        initial = rms_error_sims_px(result.initial_transform, truth, tem_geo)
        error = rms_error_sims_px(result.transform, truth, tem_geo)
        print(f"seed {seed}: field {fov_error:+.2f} %, rotation {rotation_error:+.2f} deg, "
              f"incidence {incidence_deg:.0f} deg: recorded geometry {initial:.2f} -> "
              f"{error:.3f} SIMS px ({result.quality['model']}; residual "
              f"{result.residual_sims_px:.2f} px, linear error {result.linear_error_sims_px:.2f}"
              f" px; {result.quality['affine']})")
        # Measured on this test's population (benchmark, base seeds 60413 and 90211,
        # the two random settings, 240 maps; decision 0029, 2026-12-05 amendments):
        # the recorded geometry 4.54-7.50 px off (median 5.4).
        assert initial > 2.0
        if result.quality["model"] == "raster":
            applied += 1
            # 0.75, not 0.5: the 0.5 px target is on the median and 90th percentile
            # (0.09 and 0.18-0.26 px). Feature fits: 209 of 240 maps, 0.01-0.48 px
            # (0.57 px the largest of 253 in the 95 % bound amendment). Fits by
            # intensity (the features too few for their bound): 31 of 240, 0.04-0.58 px
            # (median 0.09), 80 forced on every map 0.02-0.31 px; 1.0 px is what their
            # predicted-error bound (0.6 px, at most 1.5x under) lets through. With a
            # linear gain they had reached 1.03 px (CI entropy
            # 173026354654654560835066377031215771290).
            assert error < (0.75 if result.quality["affine"]["method"] == "features"
                            else 1.0)
            # 0.00-0.27 px (median 0.05-0.06) over the 240 maps' accepted fits.
            assert result.residual_sims_px < TOLERANCE_SIMS_PX
            # 1.99-7.18 px (median 3.5): the recorded raster is 2-4 % and 1-2 deg off.
            assert result.linear_error_sims_px > 1.0
        else:
            # Refused, and flagged: by the quadrant residual, or (when the features
            # are too few or too bunched for the quadrants to see the error either)
            # by the fit's own predicted corner error (CI: residual 0.39 px with a
            # predicted 0.84 px; the kept translation is no worse than recorded).
            # None of the 240 maps of the two random settings (base seeds 60413 and
            # 90211) was refused (2 with a linear gain: residual 0.71 and 0.83 px,
            # 2.7 and 6.0 px off).
            affine = result.quality["affine"]
            assert affine["why"] and not affine["applied"]
            # An intensity fit contradicting the features' fit is refused as such
            # (1 of 480 fresh maps, 90235: kept 4.13 px off, residual 0.46 px, the
            # features' predicted error 4.14 px).
            assert (result.residual_sims_px > TOLERANCE_SIMS_PX
                    or affine.get("predicted_error_px", float("inf")) > TOLERANCE_SIMS_PX
                    or "from the features' fit" in affine["why"])
            if result.refined:
                # (Fewer than 4 features constrain no raster; the cross-correlation's
                # translation then absorbs what it can of a wrong field and stretch,
                # sometimes worse: seed 32321, 3 features, 6.98 -> 7.45 px, flagged.)
                assert error < initial or affine.get("features", 0) < 4
            else:
                # Even the tapered translation was refused: the recorded geometry is
                # kept unchanged (CI, seed 93521, before the tapered retry existed).
                assert error == pytest.approx(initial)
    assert applied >= 1  # 240 of 240 maps accepted


def test_quadrants_without_a_feature_do_not_make_the_residual():
    """A CI draw (entropy 311812389061408148076152598608656942010, its second scene:
    seed 26779, field +2.51 %, rotation -1.45 deg, 50 deg) put every particle in the
    map's top half: the raster fit was 0.04 px off but the two empty quadrants locked
    their cross-correlations onto noise 27-29 px away and the median residual read
    19 px. Quadrants whose peak correlation is below 0.5 are now left out."""
    rng = np.random.default_rng(311812389061408148076152598608656942010)
    for _ in range(2):  # the test's draws, in its order: the second scene
        seed = int(rng.integers(10, 100_000))
        fov_error = float(rng.uniform(2, 4) * rng.choice([-1, 1]))
        rotation_error = float(rng.uniform(1, 2) * rng.choice([-1, 1]))
    assert seed == 26779
    tem, li, truth, tem_geo, _, _ = render_scene(
        seed, fov_error_pct=fov_error, rotation_error_deg=rotation_error, incidence_deg=50.0)
    recorded = with_stage_error(nominal(truth, fov_error, rotation_error))
    result = register_sims_to_tem(li.sum(axis=0), tem, recorded, tem_geo)
    error = rms_error_sims_px(result.transform, truth, tem_geo)
    print(f"seed {seed}: {error:.3f} px, quadrants {result.quality['quadrant_shifts_px']}, "
          f"residual {result.residual_sims_px:.3f} px")
    assert error < TOLERANCE_SIMS_PX
    assert len(result.quality["quadrant_shifts_px"]) == 2  # the top two
    assert result.residual_sims_px < TOLERANCE_SIMS_PX


def test_intensity_fit_when_the_features_cannot_constrain_the_raster():
    """Decision 0029, 2026-12-05 amendment: where the features are too few (forced
    here: ``min_features`` beyond any map's), the raster model is fitted to the
    intensities: a fresh map written with calibration errors registers to within
    1 px, or the fit is refused on its predicted error and the result is flagged.
    Forced on 80 fresh maps (benchmark ``--min-features 1000``, base seed 71977,
    decision 0029, 2026-12-05 amendments): all accepted, 0.02-0.31 px (median 0.08,
    p99 0.30; 0.03-0.80 px with a linear gain), predicted 0.15-0.44 px."""
    from temsims.analysis.registration import MAX_INTENSITY_PREDICTED_ERROR_PX

    rng = fresh_rng("registration by intensity")
    seed = int(rng.integers(10, 100_000))
    fov_error = float(rng.uniform(2, 4) * rng.choice([-1, 1]))
    rotation_error = float(rng.uniform(1, 2) * rng.choice([-1, 1]))
    incidence_deg = float(rng.choice([45.0, 50.0]))
    tem, li, truth, tem_geo, _, _ = render_scene(
        seed, fov_error_pct=fov_error, rotation_error_deg=rotation_error,
        incidence_deg=incidence_deg)
    recorded = with_stage_error(nominal(truth, fov_error, rotation_error))
    result = register_sims_to_tem(li.sum(axis=0), tem, recorded, tem_geo, min_features=1000)
    initial = rms_error_sims_px(result.initial_transform, truth, tem_geo)
    error = rms_error_sims_px(result.transform, truth, tem_geo)
    affine = result.quality["affine"]
    print(f"seed {seed}: field {fov_error:+.2f} %, rotation {rotation_error:+.2f} deg, "
          f"incidence {incidence_deg:.0f} deg: {initial:.2f} -> {error:.3f} SIMS px "
          f"({result.quality['model']}, {affine.get('method')}; intensity fit "
          f"{affine.get('intensity')}; residual {result.residual_sims_px:.2f} px)")
    assert "intensity" in affine
    if affine["applied"]:
        assert affine["method"] == "intensity" and result.quality["model"] == "raster"
        assert error < 1.0  # 0.02-0.31 px over the 80 maps
        assert result.linear_error_sims_px > 1.0  # 2.03-7.13 px
    else:
        # Not met on the 80 maps; both refusals are tested on fixed scenes below. The
        # features (too few for min_features, but fitted from 4 on) contradicting it
        # (seed 84188, entropy 326772527469787470230151267987615526837) flag it by
        # their own predicted error, 2.6 px.
        assert (affine["intensity"]["predicted_error_px"] > MAX_INTENSITY_PREDICTED_ERROR_PX
                or "from the features' fit" in affine["why"])
        assert (result.residual_sims_px > TOLERANCE_SIMS_PX
                or affine.get("predicted_error_px", 0.0) > TOLERANCE_SIMS_PX)


def _first_fresh_scene(entropy: int, expected_seed: int):
    """The first scene the fresh-seed raster test draws from ``entropy`` (45 deg, 2-4 %
    field and 1-2 deg rotation errors): (tem, li, truth, tem_geo, recorded)."""
    rng = np.random.default_rng(entropy)
    seed = int(rng.integers(10, 100_000))
    fov_error = float(rng.uniform(2, 4) * rng.choice([-1, 1]))
    rotation_error = float(rng.uniform(1, 2) * rng.choice([-1, 1]))
    assert seed == expected_seed
    tem, li, truth, tem_geo, _, _ = render_scene(
        seed, fov_error_pct=fov_error, rotation_error_deg=rotation_error, incidence_deg=45.0)
    return tem, li, truth, tem_geo, with_stage_error(nominal(truth, fov_error, rotation_error))


def test_intensity_fit_of_a_sparse_map_and_its_refusal(monkeypatch):
    """A CI draw (entropy 173026354654654560835066377031215771290, its first scene: seed
    19274, field -3.71 %, rotation -1.81 deg, 45 deg) holds 3 features: fitted by
    intensity with a linear gain, the scale and stretch absorbed the contrasts' shape
    mismatch (bright field dome-shaped over a particle, its Li signal flat-topped) and
    the fit came out 1.03 px off while predicting 0.60 px. With the map a quadratic of
    the TEM signal (decision 0029, 2026-12-05 amendments) it is 0.43 px off, predicted
    0.33 px. Refused on its predicted error (the bound forced to 0 here), the
    translation is kept and flagged."""
    from temsims.analysis import registration

    tem, li, truth, tem_geo, recorded = _first_fresh_scene(
        173026354654654560835066377031215771290, 19274)
    result = register_sims_to_tem(li.sum(axis=0), tem, recorded, tem_geo)
    error = rms_error_sims_px(result.transform, truth, tem_geo)
    affine = result.quality["affine"]
    print(f"seed 19274: {error:.3f} px ({affine.get('method')}, predicted "
          f"{affine['intensity']['predicted_error_px']:.2f} px)")
    assert affine["features"] < 4 and affine["method"] == "intensity"
    assert error < 0.6  # 0.43 px (1.03 px with a linear gain)
    assert affine["intensity"]["predicted_error_px"] < 0.5  # 0.33 px
    monkeypatch.setattr(registration, "MAX_INTENSITY_PREDICTED_ERROR_PX", 0.0)
    refused = register_sims_to_tem(li.sum(axis=0), tem, recorded, tem_geo)
    error = rms_error_sims_px(refused.transform, truth, tem_geo)
    print(f"refused: {error:.2f} px, residual {refused.residual_sims_px:.2f} px, "
          f"{refused.quality['affine']['why']}")
    assert refused.quality["model"] == "translation" and not refused.quality["affine"]["applied"]
    assert "predicted corner error" in refused.quality["affine"]["why"]
    assert refused.linear_error_sims_px < 1e-9
    assert error > 2.0 and refused.residual_sims_px > 1.0  # 3.95 px, flagged by 3.29 px


def test_an_intensity_fit_contradicting_the_features_is_refused():
    """A fresh draw (entropy 326772527469787470230151267987615526837, its first scene:
    seed 84188, field -3.63 %, rotation +1.26 deg, 45 deg) holds 4 bunched features,
    whose fit is refused (predicted 2.6 px, bound 7.6 px); the intensities paired the
    map's particles with others of the TEM image (stretch 0.80, rotation -3.6 deg; the
    objective lower there than at the truth): 10.5 px off, predicting 0.46 px. It lies
    15.4 px from the features' fit, beyond both bounds: refused, the translation kept
    (3.29 px off) and flagged (decision 0029, 2026-12-05 amendments)."""
    tem, li, truth, tem_geo, recorded = _first_fresh_scene(
        326772527469787470230151267987615526837, 84188)
    result = register_sims_to_tem(li.sum(axis=0), tem, recorded, tem_geo)
    initial = rms_error_sims_px(result.initial_transform, truth, tem_geo)
    error = rms_error_sims_px(result.transform, truth, tem_geo)
    affine = result.quality["affine"]
    print(f"seed 84188: {initial:.2f} -> {error:.2f} px, residual "
          f"{result.residual_sims_px:.2f} px: {affine['why']}")
    assert result.quality["model"] == "translation" and not affine["applied"]
    assert "from the features' fit" in affine["why"]
    assert affine["intensity"]["features_disagree_px"] > 10.0  # 15.4 px
    assert error < initial  # 3.29 < 5.34 px
    assert affine["predicted_error_px"] > TOLERANCE_SIMS_PX  # flagged: 2.59 px
