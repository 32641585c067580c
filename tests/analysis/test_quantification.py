"""EDX-guided SIMS quantification on the simulated Cu-Ni diffusion couple.

An EDX line scan across the gradient (``EDXModel`` on the specimen's areal densities)
and a SIMS map of the same zone (``FramePlan``, 63Cu and 58Ni collectors, default
instrument parameters: drift, dead time, dark counts and the unresolved 62NiH on 63Cu
included) are made with the simulator, without IOCs. The RSF is calibrated where EDX
is above its detection limit and applied to the SIMS counts; the result is scored
against the true C(x) of the specimen, also well below the EDX limit.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from temsims.analysis import edx
from temsims.analysis import quantification as qn
from temsims.ioc.physics import sims as sp
from temsims.ioc.physics.edx import EDXModel
from temsims.ioc.physics.materials import (
    ELEMENTARY_CHARGE_C,
    MATERIALS,
    isotope_mass_u,
    natural_abundances,
)
from temsims.ioc.physics.specimen import build_specimen

BEAM_KV = 200.0
EDX_ELECTRONS = 1e-9 * 1.0 / ELEMENTARY_CHARGE_C  # 1 nA x 1 s per point
EDX_STEP_NM = 20.0
SIMS = {"nx": 512, "ny": 256, "fov_um": 2.56, "centre_x_nm": 700.0,
        "current_pa": 300.0, "dwell_s": 1e-3, "probe_nm": 30.0}


@pytest.fixture(scope="module")
def experiment():
    """Simulated EDX line scan + SIMS map of the couple, and the analysis up to the
    calibration (what a user would run on the catalog data)."""
    spec = build_specimen("diffusion-couple", 1)
    geo = sp.ScanGeometry(SIMS["nx"], SIMS["ny"], SIMS["fov_um"], centre_x_nm=SIMS["centre_x_nm"])
    half = geo.nx * geo.pixel_nm / 2
    positions = np.arange(SIMS["centre_x_nm"] - half + EDX_STEP_NM,
                          SIMS["centre_x_nm"] + half - EDX_STEP_NM / 2, EDX_STEP_NM)
    # EDX line along x at y = 0.
    model = EDXModel(["Cu", "Ni"], ht_kv=BEAM_KV)
    rng = np.random.default_rng(2024)
    spectra = []
    for x in positions:
        row, col = (int(np.rint(v)) for v in spec.to_index(np.array(x), np.array(0.0)))
        window = (slice(row, row + 1), slice(col, col + 1))
        dens = {el: float(spec.areal_density_per_nm2(el, window).ravel()[0]) for el in ("Cu", "Ni")}
        spectra.append(model.acquire(dens, EDX_ELECTRONS, rng))
    k_factors = {"Cu": model.k_factor("Cu", "Ni"), "Ni": 1.0}
    axis = edx.EnergyAxis.from_centres(model.axis.centres)
    profile = edx.quantify_line_scan(np.array(spectra), axis, k_factors, beam_kev=BEAM_KV)
    # SIMS map of the same zone: 63Cu (analyte) and 58Ni (matrix reference).
    plan = sp.FramePlan(spec, geo, (isotope_mass_u("63Cu"), isotope_mass_u("58Ni")),
                        SIMS["current_pa"], SIMS["dwell_s"], SIMS["probe_nm"], 25.5, 1, True,
                        np.zeros(spec.shape, np.float32))
    cu_map, ni_map = plan.render(np.random.default_rng(7))
    p = geo.pixel_nm
    transform = qn.pixel_transform(
        p, pixel_nm_y=p * geo.stretch,
        origin_nm=(geo.centre_x_nm - (geo.nx - 1) / 2 * p,
                   geo.centre_y_nm - (geo.ny - 1) / 2 * p * geo.stretch))
    cu_prof = qn.map_profile(cu_map, transform, positions)
    ni_prof = qn.map_profile(ni_map, transform, positions)
    mask = profile.detected["Cu"] & profile.detected["Ni"]
    calibration = qn.calibrate_rsf(profile.fractions["Cu"], profile.sigma["Cu"], cu_prof.total,
                                   ni_prof.total, mask=mask)
    truth = np.interp(positions, spec.truth["x_nm"], spec.truth["solute_fraction"])
    return {"spec": spec, "geo": geo, "positions": positions, "edx": profile,
            "cu_map": cu_map, "ni_map": ni_map, "transform": transform, "cu": cu_prof,
            "ni": ni_prof, "calibration": calibration, "truth": truth, "plan": plan}


def _near(truth: np.ndarray, target: float, n: int = 2) -> slice:
    i = int(np.argmin(np.abs(np.log(truth / target))))
    return slice(max(i - n, 0), i + n + 1)


# ---- geometry helpers ----------------------------------------------------------------------
def test_pixel_transform_matches_the_sims_raster_on_the_specimen(experiment):
    geo, t = experiment["geo"], experiment["transform"]
    rows, cols = np.array([0, 17, 255]), np.array([0, 300, 511])
    u, v = geo.beam_coords(rows, cols)
    x, y = geo.to_specimen(u, v)
    mapped = t @ np.stack([cols, rows, np.ones(3)])
    np.testing.assert_allclose(mapped[0], x, atol=1e-9)
    np.testing.assert_allclose(mapped[1], y, atol=1e-9)
    rotated = qn.pixel_transform(2.0, rotation_deg=90.0)
    np.testing.assert_allclose(rotated @ [1.0, 0.0, 1.0], [0.0, 2.0, 1.0], atol=1e-12)


def test_map_profile_averages_across_the_gradient():
    ny, nx = 40, 100
    image = np.tile(np.arange(nx, dtype=float), (ny, 1))  # value = column index
    t = qn.pixel_transform(5.0, origin_nm=(0.0, 0.0))
    positions = np.arange(10.0, 480.0, 20.0)  # bins of 4 columns
    prof = qn.map_profile(image, t, positions)
    np.testing.assert_allclose(prof.npixels, 4 * ny)
    np.testing.assert_allclose(prof.mean, positions / 5.0 - 0.5)
    # Along y instead (rows): the profile of a column-index map is flat.
    prof_y = qn.map_profile(image, t, np.arange(10.0, 190.0, 20.0), direction=(0.0, 1.0))
    np.testing.assert_allclose(prof_y.mean, (nx - 1) / 2)
    # A band around a line uses only the rows within it.
    band = qn.map_profile(image, t, positions, line_point_nm=(0.0, 100.0), half_width_nm=7.0)
    np.testing.assert_allclose(band.npixels, 4 * 3)
    # Bins narrower than the spacing.
    narrow = qn.map_profile(image, t, positions, bin_width_nm=10.0)
    np.testing.assert_allclose(narrow.npixels, 2 * ny)
    np.testing.assert_allclose(narrow.mean, positions / 5.0 - 0.5)


# ---- calibration ---------------------------------------------------------------------------
def test_edx_detection_limit_and_calibration_range(experiment):
    prof, cal = experiment["edx"], experiment["calibration"]
    dl = float(np.median(prof.detection_limit["Cu"]))
    print(f"EDX Cu detection limit {dl * 100:.3f} at.%; calibration over C = "
          f"{cal.c_range[0]:.4f}..{cal.c_range[1]:.3f} with {len(cal.points['c'])} points, "
          f"reduced chi2 {cal.reduced_chi2:.2f}")
    assert 5e-4 < dl < 1e-2
    assert cal.c_range[0] < 0.01 and cal.c_range[1] > 0.5
    assert cal.reduced_chi2 < 3.0


def test_rsf_depends_on_concentration_and_its_dilute_limit_is_the_truth(experiment):
    """RSF(C) = rho I_M / I_A changes along the couple (Cu ionises 3x better diluted in Ni);
    the fitted dilute limit matches the simulator's alpha_Ni x58Ni / (alpha_Cu(Ni) x63Cu)."""
    cal = experiment["calibration"]
    alpha_cu_in_ni = MATERIALS["Ni"].ionisation("Cu", 1)
    alpha_ni = MATERIALS["Ni"].ionisation("Ni", 1)
    truth = alpha_ni * natural_abundances("Ni")["58Ni"] / (
        alpha_cu_in_ni * natural_abundances("Cu")["63Cu"])
    rsf = cal.points["rsf"]
    c = cal.points["c"]
    ratio = np.median(rsf[c > 0.5]) / np.median(rsf[c < 0.05])
    print(f"dilute RSF {cal.dilute_rsf:.4f} vs truth {truth:.4f}; RSF(C > 0.5) / RSF(C < 5 %) "
          f"= {ratio:.2f}")
    assert cal.dilute_rsf == pytest.approx(truth, rel=0.08)
    assert ratio > 1.5


# ---- quantification -----------------------------------------------------------------------
def test_quantified_sims_profile_against_the_true_concentration(experiment):
    """Relative error < 10 % from 10 at.% down to 0.1 at.%, i.e. below the EDX limit;
    reported (not asserted) down to ~10 ppm."""
    cal, truth = experiment["calibration"], experiment["truth"]
    res = qn.quantify_map(experiment["cu"].total, experiment["ni"].total, cal)
    rel = res.concentration / truth - 1.0
    rel_sigma = res.sigma / truth
    dl = float(np.median(experiment["edx"].detection_limit["Cu"]))
    print("\n   C_true     rel. error   1-sigma  (5 EDX steps, 100 nm, around each value)")
    for target in (0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5):
        sel = _near(truth, target)
        print(f"   {target:8.0e}   {np.mean(rel[sel]) * 100:+7.1f} %   "
              f"{np.mean(rel_sigma[sel]) * 100:6.1f} %"
              f"{'   below EDX limit' if target < dl else ''}")
    band = (truth >= 1e-3) & (truth <= 0.1)
    assert band.sum() > 20
    assert np.any(band & (truth < dl))  # part of the asserted range is below EDX
    print(f"   max |rel. error| for 0.1-10 at.%: {np.max(np.abs(rel[band])) * 100:.1f} %")
    assert np.max(np.abs(rel[band])) < 0.10
    # Error bars tell the truth where counting dominates (>= 100 ppm).
    ok = truth >= 1e-4
    z = rel[ok] / rel_sigma[ok]
    print(f"   z (>= 100 ppm): mean {z.mean():+.2f}, std {z.std():.2f}")
    assert 0.5 < z.std() < 2.0 and abs(z.mean()) < 1.5
    assert np.all(res.extrapolated[truth < cal.c_range[0] / 2])


def test_quantified_map_pixel_by_pixel(experiment):
    """The whole map, pixel by pixel: columns averaged agree with the truth, and the
    per-pixel uncertainty matches the scatter where counts are plentiful."""
    cal, geo, spec = experiment["calibration"], experiment["geo"], experiment["spec"]
    res = qn.quantify_map(experiment["cu_map"], experiment["ni_map"], cal,
                          dwell_s=SIMS["dwell_s"], dead_time_s=sp.SimsParameters().dead_time_s)
    assert res.concentration.shape == (geo.ny, geo.nx)
    x = geo.centre_x_nm + (np.arange(geo.nx) - (geo.nx - 1) / 2) * geo.pixel_nm
    truth = np.interp(x, spec.truth["x_nm"], spec.truth["solute_fraction"])
    col_mean = np.nanmean(res.concentration, axis=0)
    rich = (truth > 0.01) & (truth < 0.3)
    rel = col_mean[rich] / truth[rich] - 1
    print(f"map columns at 1-30 at.%: mean rel. error {rel.mean() * 100:+.2f} %, "
          f"max {np.max(np.abs(rel)) * 100:.1f} %")
    assert np.max(np.abs(rel)) < 0.05
    scatter = np.nanstd(res.concentration[:, rich], axis=0)
    quoted = np.nanmean(res.sigma[:, rich], axis=0)
    assert np.median(scatter / quoted) == pytest.approx(1.0, abs=0.25)


def test_quantify_map_is_fast():
    rng = np.random.default_rng(0)
    ia = rng.poisson(5.0, (512, 512)).astype(np.float64)
    im = rng.poisson(200.0, (512, 512)).astype(np.float64)
    pts = np.linspace(0.002, 0.5, 30)
    cal = qn.calibrate_rsf(pts, 0.05 * pts, 1e4 * pts / (1 - pts), np.full(30, 1e4), degree=3)
    best = min(_timed(qn.quantify_map, ia, im, cal) for _ in range(3))
    print(f"quantify_map 512 x 512: {best * 1000:.1f} ms")
    assert best < 0.5


def _timed(f, *args) -> float:
    t0 = time.perf_counter()
    f(*args)
    return time.perf_counter() - t0


# ---- bad input ----------------------------------------------------------------------------
def test_bad_input_is_refused_with_clear_errors(experiment):
    cal = experiment["calibration"]
    t = qn.pixel_transform(1.0)
    ones = np.ones(10)
    cases = [
        lambda: qn.pixel_transform(0.0),
        lambda: qn.pixel_transform(1.0, pixel_nm_y=-1.0),
        lambda: qn.map_profile(np.ones(5), t, [1.0, 2.0]),
        lambda: qn.map_profile(np.ones((5, 5)), np.eye(2), [1.0, 2.0]),
        lambda: qn.map_profile(np.ones((5, 5)), np.zeros((3, 3)), [1.0, 2.0]),
        lambda: qn.map_profile(np.ones((5, 5)), t, [2.0, 1.0]),
        lambda: qn.map_profile(np.ones((5, 5)), t, [1.0]),
        lambda: qn.map_profile(np.ones((5, 5)), t, [1.0, 2.0], direction=(0.0, 0.0)),
        lambda: qn.map_profile(np.ones((5, 5)), t, [1.0, 2.0], half_width_nm=1.0),
        lambda: qn.calibrate_rsf(ones, ones, ones, ones[:-1]),
        lambda: qn.calibrate_rsf(ones * 0.1, ones * 0.01, ones, ones, degree=9),
        lambda: qn.calibrate_rsf(ones * 0.1, ones * 0.01, ones, ones, mask=np.zeros(10, bool)),
        lambda: qn.calibrate_rsf(ones * np.nan, ones, ones, ones),
        lambda: qn.quantify_map(np.ones((4, 4)), np.ones((4, 5)), cal),
        lambda: qn.quantify_map(-np.ones(4), np.ones(4), cal),
        lambda: qn.quantify_map(np.ones(4), np.ones(4), "not a calibration"),
        lambda: qn.quantify_map(np.ones(4), np.ones(4), cal, dead_time_s=3e-8),
        lambda: qn.quantify_map(np.ones(4), np.ones(4), cal, dark_counts=-1.0),
    ]
    for case in cases:
        with pytest.raises(ValueError):
            case()
