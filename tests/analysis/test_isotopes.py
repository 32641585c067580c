"""Dead time, ratio maps, significance and region ratios."""

import numpy as np
import pytest

from temsims.analysis.isotopes import (
    NATURAL_LI6_LI7,
    RatioMap,
    dead_time_correct,
    primary_ions,
    qsa_correct,
    ratio_map,
    ratio_of_region,
    ratio_test,
    significance_map,
)
from temsims.ioc.physics import sims as sp


@pytest.mark.parametrize("rate, tau, loss", [(1e6, 20e-9, 0.02), (5e6, 50e-9, 0.20)])
def test_dead_time_correction_follows_the_non_paralyzable_law(rate, tau, loss):
    """instrument.md: 2 % lost at 1e6 /s with 20 ns, 20 % at 5e6 /s with 50 ns."""
    dwell = 1e-3
    measured = rate / (1 + rate * tau) * dwell
    assert 1 - measured / (rate * dwell) == pytest.approx(loss, rel=0.03)
    assert dead_time_correct([measured], dwell, tau)[0] == pytest.approx(rate * dwell)
    assert dead_time_correct(measured, dwell, 0.0) == pytest.approx(measured)


def test_dead_time_refuses_saturation_and_bad_input():
    with pytest.raises(ValueError, match="saturation"):
        dead_time_correct([10, 1e5], 1e-3, 1e-8)  # 1e8 /s x 10 ns = 1
    with pytest.raises(ValueError):
        dead_time_correct([1, 2], 0.0, 1e-8)
    with pytest.raises(ValueError):
        dead_time_correct([1, 2], 1e-3, -1e-8)
    with pytest.raises(ValueError):
        dead_time_correct([-3], 1e-3, 1e-8)
    with pytest.raises(TypeError):
        dead_time_correct([1], "1ms", 1e-8)
    assert np.isnan(dead_time_correct([np.nan, 5], 1e-3, 2e-8)[0])  # not acquired


def test_ratio_map_errors_zeros_binning_and_unacquired():
    n6 = np.array([[10, 0, 4, 4], [5, np.nan, 4, 4]])
    n7 = np.array([[100, 50, 0, 40], [0, 10, 40, 40]])
    m = ratio_map(n6, n7, min_counts=1)
    assert m.ratio[0, 0] == pytest.approx(0.1)
    assert m.sigma[0, 0] == pytest.approx(0.1 * np.sqrt(1 / 10 + 1 / 100))
    assert m.ratio[0, 1] == 0 and m.sigma[0, 1] == pytest.approx(1 / 50)  # N6 = 0: one count
    assert not m.valid[0, 2] and np.isnan(m.ratio[0, 2])  # N7 = 0
    assert not m.acquired[1, 1] and np.isnan(m.ratio[1, 1])
    b = ratio_map(n6, n7, binning=2, min_counts=1)
    assert b.ratio.shape == (1, 2)
    assert not b.valid[0, 0]  # contains an unacquired pixel
    assert b.ratio[0, 1] == pytest.approx(16 / 120)
    with pytest.raises(ValueError):
        ratio_map(n6, n7[:, :3])
    with pytest.raises(ValueError):
        ratio_map(n6, n7, binning=3)
    with pytest.raises(ValueError):
        ratio_map(n6, n7, dead_time_s=1e-8)  # no dwell
    with pytest.raises(TypeError):
        significance_map({"ratio": 1})


def test_region_ratio_reaches_the_poisson_bound():
    """Sum-then-divide over many simulated regions: (R - R_true) / sigma has unit
    spread, and p-values of natural regions are uniform (5 % below 0.05)."""
    rng = np.random.default_rng(7)
    mask = np.ones((6, 6), bool)
    pulls, pvals = [], []
    for _ in range(400):
        lam7 = rng.uniform(5, 200)
        n7 = rng.poisson(lam7, (6, 6))
        n6 = rng.poisson(lam7 * NATURAL_LI6_LI7, (6, 6))
        reg = ratio_of_region(n6, n7, mask, systematic_rel=0.0)
        pulls.append((reg.ratio - NATURAL_LI6_LI7) / reg.sigma)
        pvals.append(reg.p_natural)
    assert 0.85 < np.std(pulls) < 1.15
    assert abs(np.mean(pulls)) < 0.15
    # Discrete counts make the exact test slightly conservative.
    assert 0.02 < np.mean(np.array(pvals) < 0.05) <= 0.07


def test_systematic_term_caps_the_significance_of_a_small_bias():
    """A natural region 2 % high with 1e7 7Li counts is 'significant' by Poisson
    alone, not once a 3 % systematic is added in quadrature."""
    n7 = 1e7
    n6 = 1.02 * NATURAL_LI6_LI7 * n7
    z0, p0, _ = ratio_test(n6, n7, systematic_rel=0.0)
    z3, p3, _ = ratio_test(n6, n7, systematic_rel=0.03)
    assert z0 > 5 and p0 < 1e-6
    assert 0 < z3 < 1 and p3 > 0.2
    # A 95 % 6Li label stays overwhelming with a handful of counts.
    z, p_nat, p_lab = ratio_test(19, 1)
    assert z > 10 and p_nat < 1e-12 and p_lab > 0.01


def test_dead_time_bias_of_a_bright_natural_pixel_is_removed():
    params = sp.SimsParameters(dead_time_s=30e-9, dark_rate_per_s=0.0)
    dwell = 1e-3
    lam7 = np.full((50, 50), 5e6 * dwell)  # 5e6 /s: ~13 % lost
    rng = np.random.default_rng(3)
    n7 = sp.detect(lam7, dwell, params, rng)
    n6 = sp.detect(lam7 * NATURAL_LI6_LI7, dwell, params, rng)
    raw = ratio_of_region(n6, n7, np.ones(n7.shape, bool), systematic_rel=0.0)
    fixed = ratio_of_region(n6, n7, np.ones(n7.shape, bool), dwell_s=dwell,
                            dead_time_s=30e-9, systematic_rel=0.0)
    assert raw.ratio > 1.1 * NATURAL_LI6_LI7 and raw.z > 10
    assert abs(fixed.ratio - NATURAL_LI6_LI7) < 3 * fixed.sigma
    assert isinstance(ratio_map(n6, n7, dwell_s=dwell, dead_time_s=30e-9), RatioMap)


def test_significance_map_masks_and_signs():
    n7 = np.full((3, 3), 1000)
    n6 = np.full((3, 3), 82)
    n6 = n6.astype(float)
    n6[1, 1] = 950
    n6[0, 0] = np.nan
    z = significance_map(ratio_map(n6, n7))
    assert np.isnan(z[0, 0])
    assert z[1, 1] > 10 and abs(z[2, 2]) < 1
    with pytest.raises(ValueError):
        significance_map(ratio_map(n6, n7), reference_ratio=0.0)


def test_region_mask_must_match():
    with pytest.raises(TypeError):
        ratio_of_region(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError):
        ratio_of_region(np.ones((2, 2)), np.ones((2, 2)), np.ones((3, 2), bool))
    with pytest.raises(ValueError):
        ratio_test(1, 1, label_ratio_min=0.01)


def test_qsa_correction_inverts_one_pulse_per_impact():
    """Quasi-simultaneous arrival (decision 0043): P pulses of I primary ions are
    ``I (1 - exp(-K))``; ``qsa_correct`` returns ``K I`` (``P (1 + K/2)`` to first
    order), ratio maps and regions apply it per pixel before the ratio, and it needs a
    dwell and fewer pulses than primary ions."""
    ions = primary_ions(100.0, 1e-3)
    assert ions == pytest.approx(100e-12 * 1e-3 / 1.602176634e-19)
    k7, k6 = 6e-3, 5e-4
    n7, n6 = ions * -np.expm1(-k7), ions * -np.expm1(-k6)
    assert qsa_correct([n7], 1e-3, 100.0)[0] == pytest.approx(k7 * ions, rel=1e-12)
    assert qsa_correct([n7], 1e-3, 100.0)[0] == pytest.approx(n7 * (1 + k7 / 2), rel=2e-5)
    maps = [np.full((4, 4), n) for n in (n6, n7)]
    plain = ratio_map(*maps, min_counts=0)
    fixed = ratio_map(*maps, min_counts=0, dwell_s=1e-3, primary_current_pa=100.0)
    assert fixed.ratio[0, 0] == pytest.approx(k6 / k7, rel=1e-9)
    assert fixed.ratio[0, 0] / plain.ratio[0, 0] - 1 == pytest.approx((k6 - k7) / 2, rel=0.01)
    reg = ratio_of_region(*maps, np.ones((4, 4), bool), dwell_s=1e-3,
                          primary_current_pa=100.0)
    assert reg.ratio == pytest.approx(k6 / k7, rel=1e-9)
    with pytest.raises(ValueError, match="dwell_s"):
        ratio_map(*maps, primary_current_pa=100.0)
    with pytest.raises(ValueError, match="primary ions"):
        qsa_correct([2 * ions], 1e-3, 100.0)
    with pytest.raises(ValueError):
        qsa_correct([1.0], 1e-3, 0.0)
