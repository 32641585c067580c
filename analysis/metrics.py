"""Quality metrics of pan-sharpening (fused SIMS colours x TEM detail).

Images are (H, W, C) float arrays with bands last (a single band may be (H, W)).
Definitions (``x`` the reference, ``y`` the image assessed, ``k`` a band):

- ``correlation_coefficient``: Pearson correlation per band, averaged over bands.
- ``ssim``: structural similarity (Wang et al. 2004),
  :func:`skimage.metrics.structural_similarity`, bands averaged, ``data_range`` of
  the reference unless given.
- ``psnr``: ``10 log10(data_range^2 / MSE)`` (dB),
  :func:`skimage.metrics.peak_signal_noise_ratio`; infinite for identical images.
- ``spectral_angle_mapper`` (SAM, degrees): mean over pixels of the angle between the
  spectral vectors ``arccos(<x, y> / (|x| |y|))``; pixels where either vector is 0
  are left out. 0 for identical colours, insensitive to brightness.
- ``ergas`` (Wald 2002): ``100 / ratio * sqrt(mean_k (RMSE_k / mean(x_k))^2)`` with
  ``ratio`` the resolution ratio (MS pixel size / pan pixel size, e.g. 8); 0 is
  perfect, values below ~3 are considered good.
- ``q_index`` (UIQI, Wang & Bovik 2002): in each ``block x block`` sliding window
  ``Q = 4 s_xy m_x m_y / ((s_x^2 + s_y^2)(m_x^2 + m_y^2))``, averaged over windows and
  bands; windows with zero variance in both images score ``2 m_x m_y / (m_x^2 +
  m_y^2)`` (1 if both means are also 0). 1 is perfect.

:func:`fusion_metrics` applies them the Wald-protocol way (see there).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _pair(reference: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(reference, np.float64)
    y = np.asarray(image, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape}")
    if x.ndim not in (2, 3):
        raise ValueError(f"images must be (H, W) or (H, W, C), got shape {x.shape}")
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    return x, y


def _data_range(x: np.ndarray, data_range: float | None) -> float:
    if data_range is not None:
        return float(data_range)
    span = float(x.max() - x.min())
    return span if span > 0 else 1.0


def correlation_coefficient(reference: np.ndarray, image: np.ndarray) -> float:
    """Pearson correlation coefficient per band, averaged over bands."""
    x, y = _pair(reference, image)
    values = []
    for k in range(x.shape[2]):
        a = x[..., k] - x[..., k].mean()
        b = y[..., k] - y[..., k].mean()
        den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
        values.append(float((a * b).sum()) / den if den > 0 else
                      (1.0 if np.array_equal(x[..., k], y[..., k]) else 0.0))
    return float(np.mean(values))


def ssim(reference: np.ndarray, image: np.ndarray, *, data_range: float | None = None) -> float:
    """Mean structural similarity over bands (:func:`skimage.metrics.structural_similarity`)."""
    x, y = _pair(reference, image)
    return float(structural_similarity(x, y, data_range=_data_range(x, data_range),
                                       channel_axis=-1))


def psnr(reference: np.ndarray, image: np.ndarray, *, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio (dB); ``inf`` for identical images."""
    x, y = _pair(reference, image)
    if np.array_equal(x, y):
        return float("inf")
    return float(peak_signal_noise_ratio(x, y, data_range=_data_range(x, data_range)))


def spectral_angle_mapper(reference: np.ndarray, image: np.ndarray) -> float:
    """Mean spectral angle (degrees) between the band vectors of each pixel."""
    x, y = _pair(reference, image)
    dot = (x * y).sum(axis=2)
    norm = np.sqrt((x * x).sum(axis=2) * (y * y).sum(axis=2))
    valid = norm > 0
    if not valid.any():
        return 0.0
    cos = np.clip(dot[valid] / norm[valid], -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)).mean())


def ergas(reference: np.ndarray, image: np.ndarray, ratio: float) -> float:
    """ERGAS = 100 / ratio * sqrt(mean_k (RMSE_k / mean_k)^2); ``ratio`` = MS pixel
    size / pan pixel size (> 0). Bands with zero mean are left out."""
    if not ratio > 0:
        raise ValueError(f"ratio must be > 0, got {ratio!r}")
    x, y = _pair(reference, image)
    terms = []
    for k in range(x.shape[2]):
        mean = float(x[..., k].mean())
        if mean == 0:
            continue
        rmse = math.sqrt(float(((x[..., k] - y[..., k]) ** 2).mean()))
        terms.append((rmse / mean) ** 2)
    if not terms:
        return 0.0
    return float(100.0 / ratio * math.sqrt(np.mean(terms)))


def q_index(reference: np.ndarray, image: np.ndarray, *, block: int = 8) -> float:
    """Universal image quality index Q (Wang & Bovik 2002), sliding ``block`` windows,
    averaged over windows and bands."""
    x, y = _pair(reference, image)
    if block < 2 or block > min(x.shape[:2]):
        raise ValueError(f"block must be within 2..{min(x.shape[:2])}, got {block}")
    values = []
    for k in range(x.shape[2]):
        a, b = x[..., k], y[..., k]

        def mean(v):
            return ndimage.uniform_filter(v, block, mode="reflect")

        ma, mb = mean(a), mean(b)
        va = np.maximum(mean(a * a) - ma * ma, 0.0)
        vb = np.maximum(mean(b * b) - mb * mb, 0.0)
        cov = mean(a * b) - ma * mb
        # Only windows fully inside the image (as in Wang & Bovik's code).
        h = block // 2
        sl = (slice(h, a.shape[0] - (block - 1 - h)), slice(h, a.shape[1] - (block - 1 - h)))
        ma, mb, va, vb, cov = ma[sl], mb[sl], va[sl], vb[sl], cov[sl]
        var_sum, mean_sq = va + vb, ma * ma + mb * mb
        scale = max(float(np.abs(a).max()), float(np.abs(b).max()), 1e-300)
        eps_v, eps_m = 1e-12 * scale * scale, 1e-12 * scale * scale
        q = np.ones_like(ma)
        both = (var_sum > eps_v) & (mean_sq > eps_m)
        q[both] = 4 * cov[both] * ma[both] * mb[both] / (var_sum[both] * mean_sq[both])
        flat = (var_sum <= eps_v) & (mean_sq > eps_m)
        q[flat] = 2 * ma[flat] * mb[flat] / mean_sq[flat]
        no_mean = (var_sum > eps_v) & (mean_sq <= eps_m)
        q[no_mean] = 2 * cov[no_mean] / var_sum[no_mean]
        values.append(float(q.mean()))
    return float(np.mean(values))


def degrade(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` (H, W[, C]) brought to the coarser grid ``shape``: block mean when the
    ratio is an integer, else anti-aliased resampling (:func:`skimage.transform.resize`)."""
    arr = np.asarray(image, np.float64)
    h, w = shape
    fy, fx = arr.shape[0] / h, arr.shape[1] / w
    if fy == int(fy) and fx == int(fx):
        fy, fx = int(fy), int(fx)
        return arr.reshape(h, fy, w, fx, *arr.shape[2:]).mean(axis=(1, 3))
    from skimage.transform import resize

    return resize(arr, (h, w, *arr.shape[2:]), order=1, anti_aliasing=True)


def fusion_metrics(fused: np.ndarray, multispectral_reference: np.ndarray, pan: np.ndarray,
                   ratio: float | None = None) -> dict[str, Any]:
    """Quality of a fused image, Wald's protocol ("consistency" property).

    Parameters
    ----------
    fused : (H, W, C) array
        The fusion result on the pan grid.
    multispectral_reference : (h, w, C) array
        The colours that went into the fusion, on their own (coarse) grid.
    pan : (H, W) array
        The pan image that went into the fusion.
    ratio : float, optional
        Resolution ratio (MS pixel / pan pixel) for ERGAS; default ``H / h``.

    Returns
    -------
    dict
        Spectral (``fused`` degraded to the MS grid by :func:`degrade`, compared with
        the MS reference): ``cc``, ``ssim``, ``psnr_db``, ``sam_deg``, ``ergas``, ``q``.
        Spatial (on the pan grid): ``spatial_cc`` = correlation of the fused
        intensity (band mean) with the pan, and ``spatial_cc_highpass`` = the same
        after a Laplacian high-pass of both (Zhou et al. 1998), i.e. how much of the
        pan's fine detail was injected.
    """
    f = np.asarray(fused, np.float64)
    ms = np.asarray(multispectral_reference, np.float64)
    p = np.asarray(pan, np.float64)
    if f.ndim != 3 or ms.ndim != 3:
        raise ValueError(f"fused and multispectral_reference must be (H, W, C), got "
                         f"{f.shape} and {ms.shape}")
    if f.shape[2] != ms.shape[2]:
        raise ValueError(f"band count differs: fused {f.shape[2]}, reference {ms.shape[2]}")
    if p.shape != f.shape[:2]:
        raise ValueError(f"pan shape {p.shape} differs from the fused grid {f.shape[:2]}")
    if ms.shape[0] > f.shape[0] or ms.shape[1] > f.shape[1]:
        raise ValueError(f"reference grid {ms.shape[:2]} is finer than the fused {f.shape[:2]}")
    if ratio is None:
        ratio = f.shape[0] / ms.shape[0]
    low = degrade(f, ms.shape[:2]) if ms.shape[:2] != f.shape[:2] else f
    intensity = f.mean(axis=2)
    return {
        "cc": correlation_coefficient(ms, low),
        "ssim": ssim(ms, low),
        "psnr_db": psnr(ms, low),
        "sam_deg": spectral_angle_mapper(ms, low),
        "ergas": ergas(ms, low, ratio),
        "q": q_index(ms, low),
        "spatial_cc": correlation_coefficient(p, intensity),
        "spatial_cc_highpass": correlation_coefficient(ndimage.laplace(p),
                                                       ndimage.laplace(intensity)),
        "ratio": float(ratio),
    }


__all__ = [
    "correlation_coefficient",
    "degrade",
    "ergas",
    "fusion_metrics",
    "psnr",
    "q_index",
    "spectral_angle_mapper",
    "ssim",
]
