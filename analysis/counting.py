"""Dead time of a pulse-counting chain from count rates against beam current.

A non-paralyzable counter with true rate ``N`` registers ``M = N / (1 + N tau)``; over
a count of ``T`` the registered counts have mean ``M T`` and variance
``M T / (1 + N tau)^2`` (a renewal process: Mueller 1973, Nucl. Instrum. Methods 112,
47; Knoll, Radiation Detection and Measurement, ch. 4). With the true rate
proportional to the primary current, ``N_ij = k_j I_i s_i`` for collector ``j`` at
count ``i``, the counts of a current series fix ``tau`` by their bend away from the
line ``k I``.

``s_i`` is the count's relative probe current (and sputter yield): 1 on average,
fluctuating by ``scale_rms`` (the Ga source's noise, ~1 %; the implanted Ga's growth
during the series). It is common to every collector of the count, so with two or more
collectors of different rates at each count ``s_i`` is fitted per count: their ratio
bends with ``tau`` whatever the current did (the isotope-ratio method), and the
currents add the bend of each rate. With one collector ``scale_rms`` only widens the
counts' weights.

Pure numpy/scipy; used by :func:`temsims.plans.counting.calibrate_dead_time`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

__all__ = ["DeadTimeFit", "fit_dead_time", "registered_counts"]


@dataclass(frozen=True)
class DeadTimeFit:
    """Result of :func:`fit_dead_time`.

    Attributes
    ----------
    tau_s, tau_sigma_s
        Fitted dead time (s) and its standard error (from the fit's curvature, scaled
        by sqrt(chi2/dof) when that exceeds 1).
    k_per_s_pa, k_sigma_per_s_pa
        True count rate per pA of each collector (1/s/pA) and its standard error.
    scales
        Fitted relative current of each count (1 without per-count scales).
    chi2, dof
        Weighted sum of squared residuals and degrees of freedom.
    max_loss
        Largest ``N tau / (1 + N tau)`` of the series (the fraction of counts lost at
        the brightest count): tau is measured only if this reaches several per cent.
    residuals
        (counts - model) / sigma per count and collector.
    """

    tau_s: float
    tau_sigma_s: float
    k_per_s_pa: tuple[float, ...]
    k_sigma_per_s_pa: tuple[float, ...]
    scales: np.ndarray
    chi2: float
    dof: int
    max_loss: float
    residuals: np.ndarray = field(repr=False)

    def as_dict(self) -> dict:
        return {"tau_s": self.tau_s, "tau_sigma_s": self.tau_sigma_s,
                "k_per_s_pa": list(self.k_per_s_pa),
                "k_sigma_per_s_pa": list(self.k_sigma_per_s_pa),
                "chi2": self.chi2, "dof": self.dof, "max_loss": self.max_loss}


def registered_counts(true_rate_per_s, count_time_s: float, tau_s: float) -> np.ndarray:
    """Expected registered counts ``N T / (1 + N tau)`` of true rate ``N`` over ``T``."""
    n = np.asarray(true_rate_per_s, dtype=float)
    return n * count_time_s / (1.0 + n * tau_s)


def _checked(currents_pa, counts, count_time_s) -> tuple[np.ndarray, np.ndarray, float]:
    cur = np.asarray(currents_pa, dtype=float)
    cnt = np.asarray(counts, dtype=float)
    if cur.ndim != 1 or cur.size < 3:
        raise ValueError(f"currents_pa must be 1-D with >= 3 counts, got shape {cur.shape}")
    if cnt.ndim == 1:
        cnt = cnt[:, None]
    if cnt.ndim != 2 or cnt.shape[0] != cur.size:
        raise ValueError(f"counts must be (n,) or (n, collectors) with n = {cur.size}, "
                         f"got shape {np.shape(counts)}")
    if not (np.all(np.isfinite(cur)) and np.all(cur > 0)):
        raise ValueError("currents_pa must be finite and > 0")
    if not (np.all(np.isfinite(cnt)) and np.all(cnt >= 0)):
        raise ValueError("counts must be finite and >= 0")
    t = float(count_time_s)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"count_time_s must be > 0, got {count_time_s!r}")
    if np.unique(np.round(cur, 9)).size < 2:
        raise ValueError("currents_pa must hold at least two different currents")
    return cur, cnt, t


def fit_dead_time(currents_pa, counts, count_time_s: float, *, scale_rms: float = 0.01,
                  tau_guess_s: float = 30e-9, per_count_scale: bool | None = None
                  ) -> DeadTimeFit:
    """Fit ``M_ij = k_j I_i s_i T / (1 + k_j I_i s_i tau)`` for ``tau`` and ``k_j``.

    Parameters
    ----------
    currents_pa : array (n,)
        Beam current of each count (pA, > 0), at least two different ones.
    counts : array (n,) or (n, c)
        Registered counts of each count on each of ``c`` collectors.
    count_time_s : float
        Duration of each count (s).
    scale_rms : float
        Relative rms of the probe current (and yield) between counts, >= 0 (the
        per-count factor ``s_i`` has a Gaussian prior of this width about 1).
    tau_guess_s : float
        Starting dead time (s).
    per_count_scale : bool, optional
        Fit ``s_i`` per count (default: with two or more collectors); otherwise the
        current noise enters each count's variance as ``(scale_rms M / (1 + N tau))^2``.

    Returns
    -------
    DeadTimeFit

    Raises
    ------
    ValueError
        Bad shapes or values; RuntimeError if the fit does not converge.
    """
    cur, cnt, t = _checked(currents_pa, counts, count_time_s)
    if not (math.isfinite(scale_rms) and scale_rms >= 0):
        raise ValueError(f"scale_rms must be >= 0, got {scale_rms!r}")
    n, c = cnt.shape
    free = (c >= 2) if per_count_scale is None else bool(per_count_scale)
    if free and scale_rms == 0:
        free = False
    # Start: k from the lowest-current counts (least loss), tau from the guess.
    low = cur <= np.quantile(cur, 0.34)
    tau0 = max(float(tau_guess_s), 1e-12)
    m_low = cnt[low].sum(axis=0) / t
    k0 = m_low / max(1.0 - float(np.max(m_low)) * tau0, 0.05) / cur[low].mean()
    k0 = np.maximum(k0, 1e-9)
    # Parameters: log tau, log k_j, and (free) the scale offsets u_i = s_i - 1.
    p0 = np.concatenate([[math.log(tau0)], np.log(k0), np.zeros(n if free else 0)])

    def model(p):
        tau = math.exp(p[0])
        k = np.exp(p[1:1 + c])
        s = 1.0 + p[1 + c:] if free else np.ones(n)
        true = k[None, :] * (cur * s)[:, None]
        x = true * tau
        mean = true * t / (1.0 + x)
        var = mean / np.square(1.0 + x)
        if not free:
            var = var + np.square(scale_rms * mean / (1.0 + x))
        return mean, np.maximum(var, 1.0), x, s

    def residuals(p):
        mean, var, _, s = model(p)
        r = ((cnt - mean) / np.sqrt(var)).ravel()
        if free:
            r = np.concatenate([r, (s - 1.0) / scale_rms])
        return r

    sol = optimize.least_squares(residuals, p0, method="trf", x_scale="jac",
                                 max_nfev=2000)
    if not sol.success:
        raise RuntimeError(f"fit_dead_time: {sol.message}")
    mean, var, x, s = model(sol.x)
    r = (cnt - mean) / np.sqrt(var)
    chi2 = float(np.sum(r**2) + (np.sum(((s - 1.0) / scale_rms) ** 2) if free else 0.0))
    dof = max(int(cnt.size + (n if free else 0) - sol.x.size), 1)
    jac = sol.jac
    try:
        cov = np.linalg.inv(jac.T @ jac)
    except np.linalg.LinAlgError as exc:
        raise RuntimeError("fit_dead_time: the currents do not determine tau") from exc
    inflate = max(1.0, chi2 / dof)
    tau = math.exp(sol.x[0])
    k = np.exp(sol.x[1:1 + c])
    sig_log = np.sqrt(np.maximum(np.diag(cov), 0.0) * inflate)
    return DeadTimeFit(
        tau_s=tau, tau_sigma_s=tau * float(sig_log[0]),
        k_per_s_pa=tuple(float(v) for v in k),
        k_sigma_per_s_pa=tuple(float(v * sl) for v, sl in zip(k, sig_log[1:1 + c],
                                                              strict=True)),
        scales=np.asarray(s, dtype=float), chi2=chi2, dof=dof,
        max_loss=float(np.max(x / (1.0 + x))), residuals=r)
