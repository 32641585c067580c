"""Quasi-simultaneous arrival in the twin's counting chain (decision 0043): the ions
one primary impact delivers to one collector count as one pulse, so a collector counts
``(1 - exp(-K)) / K`` of what arrives, ``K`` the ions per primary ion. Per primary ion:
the same factor at every current (unlike the dead time); the major isotope loses
more, so a natural pad's 6Li/7Li reads high by ``(K7 - K6) / 2``; COUNT and maps
alike; the analysis' correction undoes it; the dead-time calibration against current
does not absorb it (its per-collector slope does)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from temsims.analysis.counting import fit_dead_time
from temsims.analysis.isotopes import dead_time_correct, qsa_correct
from temsims.ioc.physics import sims as sp
from temsims.ioc.physics.materials import isotope_mass_u
from temsims.ioc.physics.qsa import pulses_per_primary, qsa_factor
from temsims.ioc.physics.specimen import Layer, Specimen

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scoring import fresh_rng  # noqa: E402

LI = (isotope_mass_u("6Li"), isotope_mass_u("7Li"))
DWELL_S = 1e-3


def _li2co3(n: int = 128, li6: float | None = None) -> Specimen:
    """A uniform 100 nm Li2CO3 film (natural Li unless ``li6``), ``n`` 2 nm pixels
    wide."""
    spec = Specimen("uniform", 0, [], shape=(n, n))
    abundance = {} if li6 is None else {"6Li": np.float32(li6)}
    spec.layers = [Layer("film", 100.0, {"Li2CO3": 1.0}, isotope_abundance=abundance)]
    return spec


def _expected(spec, params, current_pa=100.0, pixels=(16, 16), fov_um=0.1):
    """Expected pulses (no dead time, no dark) of a small map in the film's middle."""
    geo = sp.ScanGeometry(pixels[0], pixels[1], fov_um)
    plan = sp.FramePlan(spec, geo, LI, current_pa, DWELL_S, 10.0, 25.5, 1, True,
                        np.zeros(spec.shape, np.float32),
                        params=params.with_(dead_time_s=0.0, dark_rate_per_s=0.0))
    return [e.mean() for e in plan.expected_lines(0, geo.ny)], plan.ions_per_pixel


def test_qsa_formula():
    k = np.array([0.0, 1e-9, 0.01, 0.1, 1.0])
    np.testing.assert_allclose(qsa_factor(k), [1.0, 1.0, *(-np.expm1(-k[2:]) / k[2:])])
    assert float(qsa_factor(0.01)) == pytest.approx(1 - 0.01 / 2, abs=2e-5)  # first order
    # The analysis' correction inverts the twin's thinning exactly.
    ions = 6.2e5
    for kk in (1e-3, 6e-3, 0.05, 0.3):
        pulses = ions * float(pulses_per_primary(kk))
        assert qsa_correct([pulses], 1e-3, ions * 1.602176634e-19 / 1e-15)[0] == \
            pytest.approx(kk * ions, rel=1e-9)


@pytest.mark.parametrize("current_pa", [10.0, 100.0, 1000.0])
def test_map_counts_lose_k_over_2_per_primary_ion_at_any_current(current_pa):
    """On a uniform natural film: each collector's pulses over the arrived ions is
    ``(1 - exp(-K)) / K`` with K = arrived ions per primary ion, the same at 10 pA and
    1 nA (per primary ion); K of 7Li ~5e-3, of 6Li 12 times less."""
    spec = _li2co3()
    on, ions = _expected(spec, sp.SimsParameters(), current_pa)
    off, _ = _expected(spec, sp.SimsParameters(qsa=False), current_pa)
    ks = [o / ions for o in off]
    print(f"{current_pa:g} pA: K6 {ks[0]:.2e}, K7 {ks[1]:.2e}; measured/arrived "
          f"{on[0] / off[0]:.5f}, {on[1] / off[1]:.5f}")
    assert 3e-3 < ks[1] < 1e-2 and ks[0] < ks[1] / 8
    for a, b, k in zip(on, off, ks, strict=True):
        assert a / b == pytest.approx(float(qsa_factor(k)), rel=2e-5)
    # The 6Li/7Li ratio reads high by about (K7 - K6) / 2.
    bias = (on[0] / on[1]) / (off[0] / off[1]) - 1
    assert bias == pytest.approx((ks[1] - ks[0]) / 2, rel=0.01)


def test_count_and_map_agree():
    """COUNT's footprint emission (per isotope) and a map (per collector) thin alike."""
    spec = _li2co3()
    geo = sp.ScanGeometry(16, 16, 0.1)
    species = sp.candidate_species(spec)
    out = {}
    for q in (True, False):
        params = sp.SimsParameters(qsa=q)
        e = sp.footprint_emission(spec, np.zeros(spec.shape, np.float32), geo, species, 1,
                                  25.5, params)
        out[q] = sp.collector_expectation(LI, e, sp.primary_ion_rate(100.0), DWELL_S, params)
    m_on, _ = _expected(spec, sp.SimsParameters())
    m_off, _ = _expected(spec, sp.SimsParameters(qsa=False))
    for i in range(2):
        assert out[True][i] / out[False][i] == pytest.approx(m_on[i] / m_off[i], rel=1e-4)


def test_labelled_film_loses_on_6li():
    """A 6Li-enriched film (95 %): 6Li is now the major isotope and loses K6/2; a
    natural pad's bracket (its 7Li losing) would push the ratio the wrong way."""
    on, ions = _expected(_li2co3(li6=0.95), sp.SimsParameters())
    off, _ = _expected(_li2co3(li6=0.95), sp.SimsParameters(qsa=False))
    k6, k7 = off[0] / ions, off[1] / ions
    assert k6 > 10 * k7
    assert (on[0] / on[1]) / (off[0] / off[1]) - 1 == pytest.approx(-(k6 - k7) / 2, rel=0.01)


def test_drawn_pad_ratio_is_biased_by_k_and_the_correction_removes_it():
    """Fresh seeds (printed): a natural film mapped (64 x 64 at 1 ms, 100 pA, the
    instrument's hidden dead time, its IMF and collector yields) gives 6Li/7Li high by
    (K7 - K6)/2 ~ 0.3 % against the same instrument without QSA, pooled over 8 seeds
    (~0.05 % per seed); after ``qsa_correct`` with the nominal current it is the
    QSA-free truth."""
    rng = fresh_rng("test_drawn_pad_ratio_is_biased_by_k")
    spec = _li2co3(n=256)  # 512 nm: the map (200 x 310 nm) and its blur inside
    geo = sp.ScanGeometry(64, 64, 0.2)
    raw_dev, fixed_dev, var, shift = [], [], [], []
    for inst in rng.integers(1, 1_000_000, 8):
        tau = sp.true_dead_time_s(int(inst))
        params = sp.SimsParameters(dead_time_s=tau).with_(**sp.mass_bias_parameters(int(inst)))
        plans = {q: sp.FramePlan(spec, geo, LI, 100.0, DWELL_S, 10.0, 25.5, 1, True,
                                 np.zeros(spec.shape, np.float32), params=params.with_(qsa=q))
                 for q in (True, False)}
        truth = [e.sum() for e in plans[False].expected_lines(0, geo.ny)]
        arrived_k = [t / (plans[False].ions_per_pixel * geo.nx * geo.ny) for t in truth]
        n6, n7 = plans[True].render(np.random.default_rng(int(inst) + 17))
        c6, c7 = (dead_time_correct(n, DWELL_S, tau) for n in (n6, n7))
        q6, q7 = (qsa_correct(c, DWELL_S, 100.0) for c in (c6, c7))
        r_true = truth[0] / truth[1]
        raw_dev.append(c6.sum() / c7.sum() / r_true - 1)
        fixed_dev.append(q6.sum() / q7.sum() / r_true - 1)
        var.append(1 / c6.sum() + 1 / c7.sum())
        shift.append((arrived_k[1] - arrived_k[0]) / 2)
    raw_dev, fixed_dev, shift = np.array(raw_dev), np.array(fixed_dev), np.array(shift)
    se = math.sqrt(np.sum(var)) / len(var)
    print(f"K7 - K6 over 2: {shift.mean():.5f}; ratio/truth - 1: uncorrected "
          f"{raw_dev.mean():+.5f}, QSA-corrected {fixed_dev.mean():+.5f} (+- {se:.5f}); "
          f"per seed uncorrected {np.round(raw_dev, 5).tolist()}")
    assert raw_dev.mean() == pytest.approx(shift.mean(), abs=4 * se)
    assert abs(fixed_dev.mean()) < 4 * se
    assert raw_dev.mean() > 4 * se  # the bias is resolved


def test_dead_time_calibration_does_not_absorb_qsa():
    """Counts of a natural film at 30 pA-1 nA (the pad calibration's currents), QSA on:
    the dead time fitted against current is the truth (QSA scales each collector's
    slope k by (1 - exp(-K))/K at every current, so tau cannot see it), and the slopes'
    ratio k6/k7 carries the QSA bias, which the dead-time correction leaves for
    ``qsa_correct``."""
    spec = _li2co3()
    tau = 35e-9
    params = sp.SimsParameters(dead_time_s=tau)
    currents = np.array([30.0, 100.0, 300.0, 1000.0, 1000.0, 300.0, 100.0, 30.0])
    count_s = 1.0  # long counts (no sputtering here): the k ratio to 0.04 %
    rng = np.random.default_rng(2043)
    counts = []
    for cur in currents:
        on, _ = _expected(spec, params, cur)  # per pixel of DWELL_S
        counts.append(sp.detect(np.array(on) * count_s / DWELL_S, count_s, params, rng))
    fit = fit_dead_time(currents, np.array(counts, float), count_s, scale_rms=1e-6)
    off, ions = _expected(spec, sp.SimsParameters(qsa=False), 100.0)
    ks = [o / ions for o in off]
    print(f"tau {fit.tau_s * 1e9:.2f} +- {fit.tau_sigma_s * 1e9:.2f} ns (truth 35); "
          f"k6/k7 {fit.k_per_s_pa[0] / fit.k_per_s_pa[1]:.5f}")
    assert fit.tau_s == pytest.approx(tau, abs=4 * fit.tau_sigma_s)
    ratio_qsa = (off[0] / off[1]) * float(qsa_factor(ks[0]) / qsa_factor(ks[1]))
    k_ratio = fit.k_per_s_pa[0] / fit.k_per_s_pa[1]
    sigma = k_ratio * math.hypot(fit.k_sigma_per_s_pa[0] / fit.k_per_s_pa[0],
                                 fit.k_sigma_per_s_pa[1] / fit.k_per_s_pa[1])
    assert k_ratio == pytest.approx(ratio_qsa, abs=4 * sigma)
    assert k_ratio / (off[0] / off[1]) - 1 > 3 * sigma / k_ratio  # QSA left in k
