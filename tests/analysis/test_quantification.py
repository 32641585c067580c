"""EDX-guided SIMS quantification on the simulated Cu-Ni diffusion couple.

An EDX line scan across the gradient (``EDXModel`` on the specimen's areal densities)
and a SIMS map of the same zone (``FramePlan``, 63Cu and 58Ni collectors, default
instrument parameters: drift, dead time, dark counts and the unresolved 62NiH on 63Cu
included) are made with the simulator, without IOCs. The RSF is calibrated where EDX
is above its detection limit and applied to the SIMS counts; the result is scored
against the true C(x) of the specimen, also well below the EDX limit.

The EDX twin has its detector and column effects on (decision 0037: probe broadening,
absorption, escape peaks, sum peaks at 1 nA, system Cu and Fe peaks); the analysis
subtracts the sum peaks (live time, pulse-pair time) and the system peaks (a reference
spectrum of 100 nA x 10 s in a hole, Fe as the indicator), as a lab would.

Seeds (issue 15): the module's experiment uses a fresh (EDX, SIMS) seed pair, and the
accuracy is scored over 30 more fresh pairs (median and 90th percentile), all drawn at
run time and printed with their entropy (``TEMSIMS_TEST_ENTROPY`` reproduces a run).
The sweep over 100 pairs and the plan's geometry is
``benchmarks/quantification_benchmark.py``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scoring import fresh_rng

from temsims.analysis import edx
from temsims.analysis import quantification as qn
from temsims.app import calibration_data as cd
from temsims.ioc.physics import sims as sp
from temsims.ioc.physics.edx import EDXModel, areal_densities_at, beam_electrons
from temsims.ioc.physics.materials import (
    ELEMENTARY_CHARGE_C,
    MATERIALS,
    isotope_mass_u,
    natural_abundances,
)
from temsims.ioc.physics.specimen import build_specimen

BEAM_KV = 200.0
EDX_ELECTRONS = 1e-9 * 1.0 / ELEMENTARY_CHARGE_C  # 1 nA x 1 s per point
EDX_LIVE_S = 1.0
#: The system-peak reference in a hole: 100 nA x 10 s.
REFERENCE_NA_S = (100.0, 10.0)
EDX_STEP_NM = 20.0
SIMS = {"nx": 512, "ny": 256, "fov_um": 2.56, "centre_x_nm": 700.0,
        "current_pa": 300.0, "dwell_s": 1e-3, "probe_nm": 30.0}


#: Pairs of the scored sweep (about 75 ms each).
PAIRS = 30
BAND = (1e-3, 0.1)


class Experiment:
    """The simulated couple, EDX line and SIMS raster of this module; :meth:`run` makes
    one noise realisation and the analysis up to the calibration (what a user would
    run on the catalog data)."""

    def __init__(self):
        self.spec = spec = build_specimen("diffusion-couple", 1)
        self.geo = geo = sp.ScanGeometry(SIMS["nx"], SIMS["ny"], SIMS["fov_um"],
                                         centre_x_nm=SIMS["centre_x_nm"])
        half = geo.nx * geo.pixel_nm / 2
        self.positions = np.arange(SIMS["centre_x_nm"] - half + EDX_STEP_NM,
                                   SIMS["centre_x_nm"] + half - EDX_STEP_NM / 2, EDX_STEP_NM)
        # EDX line along x at y = 0.
        self.model = EDXModel(["Cu", "Ni"], ht_kv=BEAM_KV)
        self.dens = [areal_densities_at(spec, x, 0.0, 1.0, ht_kv=BEAM_KV)
                     for x in self.positions]
        self.k_factors = {"Cu": self.model.k_factor("Cu", "Ni"), "Ni": 1.0}
        self.axis = edx.EnergyAxis.from_centres(self.model.axis.centres)
        # SIMS map of the same zone: 63Cu (analyte) and 58Ni (matrix reference).
        self.plan = sp.FramePlan(spec, geo, (isotope_mass_u("63Cu"), isotope_mass_u("58Ni")),
                                 SIMS["current_pa"], SIMS["dwell_s"], SIMS["probe_nm"], 25.5, 1,
                                 True, np.zeros(spec.shape, np.float32))
        p = geo.pixel_nm
        self.transform = qn.pixel_transform(
            p, pixel_nm_y=p * geo.stretch,
            origin_nm=(geo.centre_x_nm - (geo.nx - 1) / 2 * p,
                       geo.centre_y_nm - (geo.ny - 1) / 2 * p * geo.stretch))
        self.truth = np.interp(self.positions, spec.truth["x_nm"], spec.truth["solute_fraction"])
        # The map compared with the EDX points at their resolution, as the pipeline does
        # (decision 0045): the probe the run records and the lab's measured halo.
        self.blur = cd.probe_blur({"probe_nm": SIMS["probe_nm"]})

    def run(self, edx_seed: int, sims_seed: int) -> dict:
        rng = np.random.default_rng(edx_seed)
        spectra = np.array([self.model.acquire(d, EDX_ELECTRONS, rng, live_time_s=EDX_LIVE_S)
                            for d in self.dens])
        ref_electrons = beam_electrons(*REFERENCE_NA_S)
        reference = edx.SystemReference(
            self.model.acquire({}, ref_electrons, rng, live_time_s=REFERENCE_NA_S[1]),
            ref_electrons, REFERENCE_NA_S[1])
        profile = edx.quantify_line_scan(
            spectra, self.axis, self.k_factors, beam_kev=BEAM_KV, live_time_s=EDX_LIVE_S,
            pulse_pair_time_s=self.model.detector.pulse_pair_time_s, system_elements=("Fe",),
            system_reference=reference, electrons=EDX_ELECTRONS)
        cu_map, ni_map = self.plan.render(np.random.default_rng(sims_seed))
        cu_prof = qn.map_profile(cu_map, self.transform, self.positions)
        ni_prof = qn.map_profile(ni_map, self.transform, self.positions)
        cu_total, ni_total = (
            prof.total / qn.blur_factor(m, self.transform, self.positions, **self.blur)
            for prof, m in ((cu_prof, cu_map), (ni_prof, ni_map)))
        mask = profile.detected["Cu"] & profile.detected["Ni"]
        calibration = qn.calibrate_rsf(profile.fractions["Cu"], profile.sigma["Cu"],
                                       cu_total, ni_total, mask=mask)
        return {"spec": self.spec, "geo": self.geo, "positions": self.positions,
                "edx": profile, "cu_map": cu_map, "ni_map": ni_map,
                "transform": self.transform, "cu": cu_prof, "ni": ni_prof,
                "cu_total": cu_total, "ni_total": ni_total, "blur": self.blur,
                "calibration": calibration, "truth": self.truth, "plan": self.plan,
                "seeds": (edx_seed, sims_seed)}

    def worst_error(self, edx_seed: int, sims_seed: int) -> tuple[float, int]:
        """Worst |relative error| of the quantified profile over 0.1-10 at.%, and the
        degree the calibration chose."""
        e = self.run(edx_seed, sims_seed)
        res = qn.quantify_map(e["cu_total"], e["ni_total"], e["calibration"])
        band = (self.truth >= BAND[0]) & (self.truth <= BAND[1])
        return (float(np.max(np.abs(res.concentration[band] / self.truth[band] - 1))),
                e["calibration"].degree)


def _pairs(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in rng.integers(0, 2**31, 2)) for _ in range(n)]


@pytest.fixture(scope="module")
def simulation():
    return Experiment()


@pytest.fixture(scope="module")
def experiment(simulation):
    """One fresh (EDX, SIMS) seed pair, printed."""
    (pair,) = _pairs(fresh_rng("test_quantification experiment"), 1)
    print(f"EDX seed {pair[0]}, SIMS seed {pair[1]}")
    return simulation.run(*pair)


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
    # Not 3: over 300 fresh pairs one reached 3.9 (a point of EDX noise near its limit).
    assert cal.reduced_chi2 < 5.0


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
    """Relative error < 12 % from 10 at.% down to 0.1 at.%, i.e. below the EDX limit,
    on this fresh pair (the 90th percentile over pairs is the sweep's, < 10 %);
    reported (not asserted) down to ~10 ppm."""
    cal, truth = experiment["calibration"], experiment["truth"]
    res = qn.quantify_map(experiment["cu_total"], experiment["ni_total"], cal)
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
    # One pair's sanity bound; the scored figure is the sweep of
    # test_worst_error_over_fresh_seed_pairs (10 % was exceeded by 1 pair in 300).
    assert np.max(np.abs(rel[band])) < 0.12
    # Error bars tell the truth where counting dominates (>= 100 ppm).
    ok = truth >= 1e-4
    z = rel[ok] / rel_sigma[ok]
    print(f"   z (>= 100 ppm): mean {z.mean():+.2f}, std {z.std():.2f}")
    assert 0.5 < z.std() < 2.3 and abs(z.mean()) < 1.5  # 2.0 was reached in 1 of 400 pairs
    # Flagged: pixels well below the calibration, i.e. below half the true C of its
    # most dilute point (not of its lowest C_EDX, which EDX noise near the detection
    # limit can put well above the truth there).
    used = experiment["edx"].detected["Cu"] & experiment["edx"].detected["Ni"]
    assert np.all(res.extrapolated[truth < truth[used].min() / 2])


def test_worst_error_over_fresh_seed_pairs(simulation):
    """The scored figure (issue 15): over 30 fresh seed pairs, the worst relative error
    over 0.1-10 at.% has a 90th percentile below 10 % (measured over 300 fresh pairs,
    at the EDX points' resolution: median 4.6-4.7 %, p90 6.6-6.8 %, max 9.9-11.0 %,
    1 in 300 over 10 %; decision 0045). The p90 of 30 exceeds 10 % only with 4 pairs
    over it: ~1e-5 of runs."""
    pairs = _pairs(fresh_rng("test_worst_error_over_fresh_seed_pairs"), PAIRS)
    worst, degrees = zip(*(simulation.worst_error(*p) for p in pairs), strict=True)
    w = np.array(worst)
    order = np.argsort(w)[::-1]
    print(f"worst |rel. error| over 0.1-10 at.%, {PAIRS} pairs: median "
          f"{np.median(w) * 100:.1f} %, p90 {np.percentile(w, 90) * 100:.1f} %, max "
          f"{w.max() * 100:.1f} % (pair {pairs[order[0]]}); degrees chosen "
          f"{ {d: degrees.count(d) for d in sorted(set(degrees))} }")
    assert np.percentile(w, 90) < 0.10
    assert np.median(w) < 0.07


def test_quantified_map_pixel_by_pixel(experiment):
    """The whole map, pixel by pixel: columns averaged agree with the truth within their
    quoted errors, and the per-pixel uncertainty matches the scatter where counts are
    plentiful. (Not "every column within 5 %": a maximum over 178 columns of 1-2 %
    noise each, which 11-26 % of fresh seed pairs exceed, before and after decision
    0027.)"""
    cal, geo, spec = experiment["calibration"], experiment["geo"], experiment["spec"]
    e = experiment
    cu, ni = (m / qn.blur_factor(m, e["transform"], **e["blur"]) for m in (e["cu_map"], e["ni_map"]))
    res = qn.quantify_map(cu, ni, cal,
                          dwell_s=SIMS["dwell_s"], dead_time_s=sp.SimsParameters().dead_time_s)
    assert res.concentration.shape == (geo.ny, geo.nx)
    x = geo.centre_x_nm + (np.arange(geo.nx) - (geo.nx - 1) / 2) * geo.pixel_nm
    truth = np.interp(x, spec.truth["x_nm"], spec.truth["solute_fraction"])
    col_mean = np.nanmean(res.concentration, axis=0)
    rich = (truth > 0.01) & (truth < 0.3)
    rel = col_mean[rich] / truth[rich] - 1
    # A column mean's 1-sigma: counting averages down over the column, the
    # calibration's error (common to its pixels) does not.
    _, sigma_ln_rsf = cal.ln_rsf(truth[rich])
    fit = truth[rich] * (1 - truth[rich]) * sigma_ln_rsf
    pixel = np.nanmean(res.sigma[:, rich], axis=0)
    col_sigma = np.sqrt(np.maximum(pixel**2 - fit**2, 0.0) / geo.ny + fit**2)
    z = rel * truth[rich] / col_sigma
    print(f"map columns at 1-30 at.%: mean rel. error {rel.mean() * 100:+.2f} %, "
          f"max {np.max(np.abs(rel)) * 100:.1f} %; z of the column means: std {z.std():.2f}, "
          f"max {np.max(np.abs(z)):.1f}")
    assert abs(rel.mean()) < 0.025
    assert 0.5 < z.std() < 1.6 and np.max(np.abs(z)) < 5.0
    scatter = np.nanstd(res.concentration[:, rich], axis=0)
    quoted = np.nanmean(res.sigma[:, rich], axis=0)
    assert np.median(scatter / quoted) == pytest.approx(1.0, abs=0.25)


def _couple_map(spec, geo, probe_fwhm_nm: float, params: sp.SimsParameters):
    """The twin's expected 63Cu and 58Ni counts (no noise) of the case's map."""
    plan = sp.FramePlan(spec, geo, (isotope_mass_u("63Cu"), isotope_mass_u("58Ni")),
                        1000.0, 1e-3, probe_fwhm_nm, 25.5, 1, True,
                        np.zeros(spec.shape, np.float32), params=params)
    return plan.render(None)


def test_blur_factor_frees_the_couples_tail_of_the_probe(simulation):
    """The quantification case's map (1 nA: a 93 nm probe with the 3 % halo of 300 nm;
    10 nm pixels, 40 nm bins) on the couple, rendered by the twin without noise: its
    Cu/Ni ratio per bin reads +1 % at 10 at.% and +4 % at 0.1 at.% above the same map
    seen by a 1 nm probe without a halo (the convex erfc tail); divided by each
    species' ``blur_factor`` it is within 0.5 % of it over 0.1-10 at.% (decision 0045).
    Per pixel too."""
    spec = simulation.spec
    geo = sp.ScanGeometry(240, 24, 2.4, centre_x_nm=800.0)
    p = geo.pixel_nm
    t = qn.pixel_transform(p, pixel_nm_y=p * geo.stretch,
                           origin_nm=(geo.centre_x_nm - (geo.nx - 1) / 2 * p,
                                      geo.centre_y_nm - (geo.ny - 1) / 2 * p * geo.stretch))
    probe = 7.0 * 1000.0 ** 0.375  # ion_optics.probe_diameter_nm at 1 nA, 30 kV
    seen = _couple_map(spec, geo, probe, sp.SimsParameters())
    sharp = _couple_map(spec, geo, 1.0, sp.SimsParameters(halo_fraction=0.0))
    x0 = geo.centre_x_nm - geo.nx / 2 * p
    centres = np.arange(x0 + 20.0, x0 + geo.nx * p - 20.0 + 1e-9, 40.0)
    blur = {"core_fwhm_nm": probe, "halo": (0.03, 300.0)}
    prof = [qn.map_profile(m, t, centres, bin_width_nm=40.0).total for m in seen]
    factors = [qn.blur_factor(m, t, centres, bin_width_nm=40.0, **blur) for m in seen]
    x_px = x0 + (np.arange(geo.nx) + 0.5) * p
    ref = np.interp(centres, x_px, sharp[0].mean(axis=0) / sharp[1].mean(axis=0))
    raw = prof[0] / prof[1] / ref - 1
    matched = prof[0] / factors[0] / (prof[1] / factors[1]) / ref - 1
    c = np.interp(centres, spec.truth["x_nm"], spec.truth["solute_fraction"])
    band = (c >= 1e-3) & (c <= 0.1)
    print(f"Cu/Ni per 40 nm bin over 0.1-10 at.% against a point probe: raw "
          f"{100 * raw[band].min():+.2f}..{100 * raw[band].max():+.2f} %, matched "
          f"{100 * matched[band].min():+.2f}..{100 * matched[band].max():+.2f} %")
    assert raw[band].max() > 0.03 and raw[band].min() > 0.005
    assert np.max(np.abs(matched[band])) < 0.005
    pixel = [m / qn.blur_factor(m, t, **blur) for m in seen]
    assert pixel[0].shape == seen[0].shape
    col = (pixel[0] / pixel[1]).mean(axis=0) / (sharp[0] / sharp[1]).mean(axis=0) - 1
    c_px = np.interp(x_px, spec.truth["x_nm"], spec.truth["solute_fraction"])
    assert np.max(np.abs(col[(c_px >= 1e-3) & (c_px <= 0.1)])) < 0.005
    with pytest.raises(ValueError):
        qn.blur_factor(seen[0], t, centres, core_fwhm_nm=-1.0)
    with pytest.raises(ValueError):
        qn.blur_factor(seen[0], t, centres, core_fwhm_nm=90.0, halo=(1.5, 300.0))
    with pytest.raises(ValueError):
        qn.blur_factor(seen[0], t, centres[::-1], core_fwhm_nm=90.0)


def test_quantify_map_is_fast():
    rng = np.random.default_rng(0)
    ia = rng.poisson(5.0, (512, 512)).astype(np.float64)
    im = rng.poisson(200.0, (512, 512)).astype(np.float64)
    pts = np.linspace(0.002, 0.5, 30)
    cal = qn.calibrate_rsf(pts, 0.05 * pts, 1e4 * pts / (1 - pts), np.full(30, 1e4), degree=3)
    best = min(_timed(qn.quantify_map, ia, im, cal) for _ in range(3))
    print(f"quantify_map 512 x 512: {best * 1000:.1f} ms")
    assert best < 0.5


def _synthetic(coef, n=60, noise=0.0, seed=0):
    """Calibration points of a binary whose ln RSF is the polynomial ``coef`` in C,
    with a relative error ``noise`` on C (quoted as its 1-sigma) and 1e9 counts."""
    c = np.geomspace(0.003, 0.7, n)
    ln_r = np.log(c / (1 - c)) - np.polynomial.polynomial.polyval(c, coef)
    ln_r = ln_r + np.random.default_rng(seed).normal(0.0, noise, n)
    return c, np.maximum(noise, 1e-9) * c * (1 - c), np.exp(ln_r) * 1e9, np.full(n, 1e9)


def test_implicit_solve_inverts_the_calibration():
    """quantify_map solves ln rho(C) - P(C) = ln r: the calibration's own curve comes
    back, inside and outside its range, for a binary and for a dilute analyte."""
    coef = np.array([-1.4, 1.1, -0.4])
    c, cs, ia, im = _synthetic(coef)
    cal = qn.calibrate_rsf(c, cs, ia, im, degree=2)
    np.testing.assert_allclose(cal.coefficients, coef, atol=1e-6)
    grid = np.array([1e-6, 1e-4, 1e-2, 0.3, 0.9, 0.999])
    r = grid / (1 - grid) / np.exp(np.polynomial.polynomial.polyval(grid, coef))
    res = qn.quantify_map(r * 1e12, np.full(grid.size, 1e12), cal)
    np.testing.assert_allclose(res.concentration, grid, rtol=1e-8)
    assert list(res.extrapolated) == [True, True, False, False, True, True]
    c = c[c < 0.2]  # a dilute analyte: rho = C
    dilute = qn.calibrate_rsf(c, c * 1e-3, c / np.exp(coef[0] + coef[1] * c) * 1e9,
                              np.full(c.size, 1e9), binary=False, degree=1)
    grid = grid[:4]
    r = grid / np.exp(coef[0] + coef[1] * grid)
    np.testing.assert_allclose(qn.quantify_map(r * 1e12, np.full(grid.size, 1e12),
                                               dilute).concentration, grid, rtol=1e-8)
    # No analyte counts: zero, with the 1-sigma of one count; no matrix counts: NaN.
    res = qn.quantify_map(np.array([0.0, 5.0]), np.array([1e4, 0.0]), cal)
    assert res.concentration[0] == 0 and res.sigma[0] > 0 and np.isnan(res.concentration[1])


def test_degree_is_chosen_by_cross_validation():
    """'auto' takes the lowest degree whose leave-one-out error (PRESS) is within
    ``SE_RULE`` (2) standard errors of the smallest: over 20 noise realisations, mostly 1 (never 0) for
    a linear ln RSF(C) and always at least 2 for a curved one; a given degree whose
    curve makes r -> C ambiguous is refused."""
    linear = [qn.calibrate_rsf(*_synthetic([-1.4, 1.1], noise=0.02, seed=s)) for s in range(20)]
    degrees = [c.degree for c in linear]
    assert degrees.count(1) >= 16 and 0 not in degrees, degrees
    assert all(c.degree_selection["method"] == f"loo-cv-{qn.SE_RULE:g}se" for c in linear)
    assert np.median([c.dilute_rsf for c in linear]) == pytest.approx(np.exp(-1.4), rel=0.01)
    for s in range(20):
        curved = qn.calibrate_rsf(*_synthetic([-1.4, 3.0, -4.0], noise=0.02, seed=s))
        assert curved.degree >= 2
        press = curved.degree_selection["press"]
        assert press[curved.degree] <= 1.5 * min(v for v in press.values() if v is not None)
    with pytest.raises(ValueError, match="non-monotonic"):
        qn.calibrate_rsf(*_synthetic([0.0, 40.0, -30.0]), degree=2)


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
        lambda: qn.calibrate_rsf(ones * 0.1, ones * 0.01, ones, ones, degree="cubic"),
        lambda: qn.calibrate_rsf(ones * 0.1, ones * 0.01, ones, ones, degree=True),
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
