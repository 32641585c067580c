"""The through-focus analysis (decision 0044): an edge's width from a map across it, and
the best focus from the widths against the focus setting. Synthetic edges (a Gaussian-
blurred step with the probe's 3 % halo, Poisson counts) over 40 seeds each, and one
series rendered by the twin's SIMS physics on the halo measurement's edge."""

from __future__ import annotations

import math

import numpy as np
import pytest
from analysis_sims import LI_MASSES, edge_specimen, harder_twin
from scipy import special

from temsims.analysis.focus import SIGMA_TO_FWHM, edge_width, fit_focus_curve
from temsims.ioc.physics import ion_optics
from temsims.ioc.physics import sims as sp


def _edge(rng, sigma_nm, *, nx=64, ny=6, pitch=2.5, level=30.0, background=0.5,
          halo=(0.03, 127.0), x0=None):
    """Counts (ny, nx) across a step at ``x0`` (nm) blurred by ``sigma_nm``, plus the
    halo's share of the step through its own Gaussian."""
    x = pitch * (np.arange(nx) + 0.5)
    x0 = 0.5 * pitch * nx if x0 is None else x0
    f, h = halo
    core = 0.5 * special.erfc((x0 - x) / (math.sqrt(2) * sigma_nm))
    wide = 0.5 * special.erfc((x0 - x) / (math.sqrt(2) * h))
    mean = background + level * ((1 - f) * core + f * wide)
    return rng.poisson(np.broadcast_to(mean, (ny, nx))).astype(float)


def test_edge_width_recovers_the_blur_over_seeds():
    rng = np.random.default_rng(20261205)
    for sigma in (4.0, 8.0, 15.0):
        fits = [edge_width(_edge(rng, sigma, x0=rng.uniform(60, 100)), 2.5)
                for _ in range(40)]
        assert all(f.ok for f in fits)
        s = np.array([f.sigma_nm for f in fits])
        pulls = (s - sigma) / np.array([f.sigma_err_nm for f in fits])
        assert abs(np.mean(s) / sigma - 1) < 0.05, (sigma, np.mean(s))
        assert 0.6 < np.std(pulls) < 1.5, (sigma, np.std(pulls))
        assert abs(fits[0].fwhm_nm - SIGMA_TO_FWHM * fits[0].sigma_nm) < 1e-9
    # Either way up (the bright side left or right).
    fit = edge_width(_edge(rng, 6.0)[:, ::-1], 2.5)
    assert fit.ok and fit.sigma_nm == pytest.approx(6.0, rel=0.25)


def test_a_profile_without_an_edge_is_not_ok_and_bad_input_refused():
    rng = np.random.default_rng(1)
    assert not edge_width(rng.poisson(20.0, (6, 64)).astype(float), 2.5).ok
    with pytest.raises(ValueError):
        edge_width(np.ones(5), 2.5)
    with pytest.raises(ValueError):
        edge_width(np.ones((4, 64)), 0.0)
    with pytest.raises(ValueError):
        fit_focus_curve([0.0, 1.0, 2.0], [10.0, 9.0, 10.0])


def test_the_best_focus_from_a_synthetic_series_over_seeds():
    """Widths from the cone's hyperbola (7 nm probe, 8 nm interaction, 2.5 nm pixels,
    1 mrad) at 9 settings +-20 um about 0: the minimum within its stated error."""
    rng = np.random.default_rng(44)
    settings = np.linspace(-20.0, 20.0, 9)
    pulls, errors = [], []
    for _ in range(40):
        truth = rng.uniform(-12.0, 12.0)
        fits = []
        for f in settings:
            probe = ion_optics.probe_at_specimen_nm(7.0, truth - f)
            sigma = math.sqrt((probe / SIGMA_TO_FWHM) ** 2 + (8.0 / SIGMA_TO_FWHM) ** 2
                              + 2.5 ** 2 / 12)
            fits.append(edge_width(_edge(rng, sigma), 2.5))
        fit = fit_focus_curve(settings, [e.fwhm_nm for e in fits],
                              [e.fwhm_err_nm for e in fits])
        assert fit.inside
        errors.append(fit.best_focus_um - truth)
        pulls.append(errors[-1] / fit.best_focus_err_um)
        # The far-from-focus slope is the cone's: 1.18 nm per um at 1 mrad.
        assert fit.slope_nm_per_um == pytest.approx(1.177, rel=0.35)
    print(f"best focus error sd {np.std(errors):.3f} um, max {np.max(np.abs(errors)):.3f}; "
          f"pull sd {np.std(pulls):.2f}")
    assert np.max(np.abs(errors)) < 2.5
    assert np.std(errors) < 1.0
    assert 0.5 < np.std(pulls) < 1.6
    # A minimum beyond the series is flagged as an extrapolation.
    w = [float(np.hypot(10.0, 1.18 * (f - 35.0))) for f in settings]
    assert not fit_focus_curve(settings, w).inside


def test_the_best_focus_on_the_twins_edge():
    """A series rendered by the twin's SIMS physics (halo, interaction spread, dead time,
    Poisson) across the halo measurement's Li2CO3 edge, 1 pA: the minimum found within
    1.5 um of the true one, and the edge there as wide as the in-focus probe makes it."""
    spec = edge_specimen()
    params = harder_twin(7)
    rng = np.random.default_rng(7)
    truth, settings = -6.0, np.linspace(-20.0, 20.0, 9)
    d0 = ion_optics.probe_diameter_nm(1.0, 30.0)
    fits = []
    for k, f in enumerate(settings):
        geo = sp.ScanGeometry(64, 6, 0.16, centre_x_nm=0.0, centre_y_nm=-400.0 + 60.0 * k,
                              incidence_deg=50.08)
        plan = sp.FramePlan(spec, geo, LI_MASSES, 1.0, 1e-3,
                            ion_optics.probe_at_specimen_nm(d0, truth - f), 25.5, 1, True,
                            np.zeros(spec.shape, np.float32), params=params)
        n6, n7 = plan.render(rng)
        fits.append(edge_width(n6 + n7, 2.5))
    fit = fit_focus_curve(settings, [e.fwhm_nm for e in fits], [e.fwhm_err_nm for e in fits])
    in_focus = math.sqrt(d0 ** 2 + params.interaction_fwhm_nm ** 2
                         + SIGMA_TO_FWHM ** 2 * 2.5 ** 2 / 12)
    print(f"best focus {fit.best_focus_um:+.3f} +- {fit.best_focus_err_um:.3f} um (truth "
          f"{truth}), edge {fit.width_at_best_nm:.2f} nm (in-focus footprint {in_focus:.2f})")
    assert abs(fit.best_focus_um - truth) < 1.5
    assert fit.width_at_best_nm == pytest.approx(in_focus, rel=0.2)
