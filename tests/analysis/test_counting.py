"""Dead-time fit (:mod:`temsims.analysis.counting`) on counts drawn by the simulator's
detector model (sub-Poissonian, with the probe current's noise), over 40 seeds."""

from __future__ import annotations

import numpy as np
import pytest

from temsims.analysis.counting import fit_dead_time, registered_counts
from temsims.ioc.physics import sims as sp

#: The plan's default series: 300 pA .. 7 nA up and down, twice; 63Cu and 65Cu on Cu.
APERTURES_PA = np.array([300.0, 1000.0, 3000.0, 7000.0])
ORDER = np.concatenate([APERTURES_PA, APERTURES_PA[::-1]] * 2)
K_PER_S_PA = np.array([2717.0, 1212.0])
COUNT_TIME_S = 1e-3


def _series(seed: int, *, drift: float = 0.05, noise: float = 0.01, collectors=(0, 1)):
    rng = np.random.default_rng(seed)
    tau = sp.true_dead_time_s(seed)
    params = sp.SimsParameters(dead_time_s=tau)
    # Per count: the current's noise, and the implanted Ga's growth dimming the Cu.
    scale = (1 + noise * rng.standard_normal(ORDER.size)) * np.linspace(1, 1 - drift, ORDER.size)
    k = K_PER_S_PA[list(collectors)]
    expected = k[None, :] * (ORDER * scale)[:, None] * COUNT_TIME_S
    return tau, sp.detect(expected, COUNT_TIME_S, params, rng)


def test_fit_recovers_tau_with_calibrated_errors_over_40_seeds():
    pulls, rel = [], []
    for seed in range(40):
        tau, counts = _series(seed)
        fit = fit_dead_time(ORDER, counts, COUNT_TIME_S, scale_rms=0.05)
        pulls.append((fit.tau_s - tau) / fit.tau_sigma_s)
        rel.append(fit.tau_sigma_s / fit.tau_s)
        assert fit.max_loss > 0.2
    pulls = np.array(pulls)
    print(f"pulls: mean {pulls.mean():+.2f}, std {pulls.std(ddof=1):.2f}; sigma/tau median "
          f"{np.median(rel):.3f}")
    # 40 pulls: the mean's standard error is 0.16, the std's 0.11.
    assert abs(pulls.mean()) < 0.5
    assert 0.7 < pulls.std(ddof=1) < 1.3
    assert np.max(np.abs(pulls)) < 4
    assert np.median(rel) < 0.06


def test_one_collector_without_drift_uses_the_currents():
    pulls = []
    for seed in range(30):
        tau, counts = _series(seed, drift=0.0, collectors=(0,))
        fit = fit_dead_time(ORDER, counts[:, 0], COUNT_TIME_S, scale_rms=0.01)
        pulls.append((fit.tau_s - tau) / fit.tau_sigma_s)
    pulls = np.array(pulls)
    assert abs(pulls.mean()) < 0.6
    assert 0.6 < pulls.std(ddof=1) < 1.4


def test_exact_counts_give_tau_and_k_back():
    counts = np.stack([registered_counts(k * ORDER, COUNT_TIME_S, 37e-9) for k in K_PER_S_PA],
                      axis=1)
    fit = fit_dead_time(ORDER, counts, COUNT_TIME_S)
    assert fit.tau_s == pytest.approx(37e-9, rel=1e-4)
    assert fit.k_per_s_pa == pytest.approx(tuple(K_PER_S_PA), rel=1e-3)


@pytest.mark.parametrize("args, match", [
    ((ORDER[:2], np.ones(2), 1e-3), "currents_pa"),
    ((ORDER, np.ones(3), 1e-3), "counts must be"),
    ((np.full(5, 100.0), np.ones(5), 1e-3), "two different"),
    ((-ORDER, np.ones(ORDER.size), 1e-3), "currents_pa"),
    ((ORDER, -np.ones(ORDER.size), 1e-3), "counts must be finite"),
    ((ORDER, np.ones(ORDER.size), 0.0), "count_time_s"),
])
def test_bad_input_refused(args, match):
    with pytest.raises(ValueError, match=match):
        fit_dead_time(*args)
