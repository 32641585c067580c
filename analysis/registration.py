"""Registration of a SIMS map onto a TEM image: geometry first, then image similarity.

Model (instrument.md, "Image correlation and fusion")
    1. Initial affine from the recorded geometry (:mod:`temsims.analysis.geometry`):
       SIMS ``(col, row)`` -> specimen um -> TEM ``(col, row)``. It carries the
       foreshortening by cos(incidence) along y, the scan rotation and both fields
       of view; what it misses is mostly a translation (stage readback and beam-shift
       errors, drift).
    2. Refinement: the TEM image is brought onto the SIMS pixel grid through the
       initial affine (block mean to about two samples per SIMS pixel, a Gaussian of
       the SIMS pixel footprint, bilinear sampling: no aliasing), both images are
       lightly smoothed, standardised over the pixels both cover and compared by
       cross-correlation with sub-pixel upsampling
       (:func:`skimage.registration.phase_cross_correlation`). The translation
       found, in SIMS pixels, is composed with the initial affine. Only a
       translation is refined (decision 0011: on sparse particle maps a fitted
       rotation/scale made the typical case worse); ``residual_sims_px`` flags a
       recorded rotation or field of view that is wrong.

Contrast
    Bright-field TEM is dark where there is mass, HAADF bright; a SIMS map of a
    species present in the particles is bright on them. The cross-correlation peak
    is located by its magnitude, so the shift does not depend on the sign; the sign
    (``tem_inverted``) is then read from the normalised cross-correlation at the
    refined position (``invert_tem="auto"``) or imposed (True / False).

Masks
    Pixels a SIMS map did not acquire (NaN, an aborted run) and the SIMS pixels
    outside the TEM field are left out of every comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from skimage.filters import window
from skimage.registration import phase_cross_correlation
from skimage.transform import AffineTransform, warp

from temsims.analysis.geometry import SimsMapGeometry, TemImageGeometry, pixel_transform_matrix


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of :func:`register_sims_to_tem`.

    Attributes
    ----------
    transform : skimage.transform.AffineTransform
        Refined map from SIMS ``(col, row)`` to TEM ``(col, row)`` (pixels).
    initial_transform : skimage.transform.AffineTransform
        The same from the recorded geometry alone.
    shift_px : tuple of float
        Translation ``(d_row, d_col)`` found by the refinement, in SIMS pixels: SIMS
        pixel ``(r, c)`` lies where the initial model puts ``(r + d_row, c + d_col)``.
    quality : dict
        ``ncc`` (normalised cross-correlation of the smoothed SIMS map and the TEM
        image resampled on its grid, over their overlap, at the refined transform,
        with the chosen TEM sign; 1 is perfect), ``ncc_initial`` (the same at the
        initial transform), ``phase_error`` (translation-invariant error of
        :func:`~skimage.registration.phase_cross_correlation`, 0..1), ``overlap_fraction``
        (SIMS pixels compared / all), ``tem_inverted`` (bool), ``quadrant_shifts_px``
        (residual (d_row, d_col) of each map quadrant after refinement).
    residual_sims_px : float
        Estimated residual misregistration (SIMS px): RMS of the quadrant shifts,
        which also picks up rotation or scale errors a translation cannot absorb.
    refined : bool
        False if no refinement was asked for or its shift was rejected (larger than
        ``max_shift_px``; ``transform`` is then the initial one).
    """

    transform: AffineTransform
    initial_transform: AffineTransform
    shift_px: tuple[float, float]
    quality: dict[str, Any] = field(default_factory=dict)
    residual_sims_px: float = float("nan")
    refined: bool = False

    def sims_to_tem_px(self, rows: Any, cols: Any) -> tuple[np.ndarray, np.ndarray]:
        """TEM ``(rows, cols)`` of SIMS pixel coordinates (refined transform)."""
        rows, cols = np.broadcast_arrays(np.asarray(rows, float), np.asarray(cols, float))
        xy = self.transform(np.column_stack([cols.ravel(), rows.ravel()]))
        return xy[:, 1].reshape(rows.shape), xy[:, 0].reshape(rows.shape)


# ============================================================================ helpers
def _translation(d_col: float, d_row: float) -> np.ndarray:
    m = np.eye(3)
    m[0, 2], m[1, 2] = d_col, d_row
    return m


def _as_image(name: str, image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr.astype(np.float32, copy=False)


def _masked_gaussian(image: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing that ignores masked-out pixels (normalised convolution)."""
    if sigma <= 0:
        return np.where(mask, image, 0.0).astype(np.float32)
    weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma, mode="constant")
    value = ndimage.gaussian_filter(np.where(mask, image, 0.0).astype(np.float32), sigma,
                                    mode="constant")
    return np.divide(value, weight, out=np.zeros_like(value), where=weight > 1e-3)


def _standardise(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(image - median) / std over ``mask``; 0 outside it.

    The median (the background of a sparse scene: support film, vacuum) rather than
    the mean is subtracted so that the background is ~0 on both sides of the mask
    edge and the edge itself does not correlate (which would pull the shift to 0).
    """
    values = image[mask]
    if values.size < 2:
        return np.zeros_like(image, dtype=np.float32)
    std = float(values.std()) or 1.0
    return np.where(mask, (image - float(np.median(values))) / std, 0.0).astype(np.float32)


def normalised_cross_correlation(a: np.ndarray, b: np.ndarray,
                                 mask: np.ndarray | None = None) -> float:
    """Pearson correlation of two images over ``mask`` (finite pixels of both if None)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    valid = np.isfinite(a) & np.isfinite(b)
    if mask is not None:
        valid &= np.asarray(mask, bool)
    if valid.sum() < 2:
        return float("nan")
    x, y = a[valid] - a[valid].mean(), b[valid] - b[valid].mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else float("nan")


def tem_on_sims_grid(tem_image: np.ndarray, sims_to_tem: np.ndarray,
                     sims_shape: tuple[int, int], *, footprint_sigma_sims_px: float = 0.5,
                     cval: float = np.nan) -> np.ndarray:
    """Resample a TEM image on a SIMS map's pixel grid without aliasing.

    Parameters
    ----------
    tem_image : (H, W) array
        The TEM image.
    sims_to_tem : (3, 3) array
        Matrix mapping SIMS ``(col, row, 1)`` to TEM ``(col, row, 1)``.
    sims_shape : (ny, nx)
        Shape of the SIMS grid.
    footprint_sigma_sims_px : float
        Gaussian sigma (SIMS px, isotropic in the SIMS grid, i.e. in the beam-normal
        plane) of what one SIMS pixel sees; mapped through the affine onto the TEM
        grid (its axis-aligned part) before sampling.
    cval : float
        Value of SIMS pixels outside the TEM image.

    Returns
    -------
    (ny, nx) float32 array
        The TEM signal at the SIMS pixel centres.

    Notes
    -----
    The TEM image is first averaged over ``f x f`` blocks with ``f`` half the
    smallest SIMS-pixel size in TEM pixels (two samples per SIMS pixel remain),
    which makes a 4096^2 image cheap; the block centres are composed into the
    affine (block ``b`` is centred on TEM pixel ``b f + (f - 1) / 2``).
    """
    tem = np.asarray(tem_image, np.float32)
    matrix = np.asarray(sims_to_tem, float)
    linear = matrix[:2, :2]
    smallest = float(np.linalg.svd(linear, compute_uv=False).min())
    f = max(1, int(smallest // 2))
    f = min(f, min(tem.shape))
    if f > 1:
        h, w = (tem.shape[0] // f) * f, (tem.shape[1] // f) * f
        tem = tem[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3), dtype=np.float32)
        to_reduced = np.array([[1.0 / f, 0, -(f - 1) / (2.0 * f)],
                               [0, 1.0 / f, -(f - 1) / (2.0 * f)], [0, 0, 1]])
        matrix = to_reduced @ matrix
        linear = matrix[:2, :2]
    cov = (footprint_sigma_sims_px ** 2) * (linear @ linear.T)
    box_var = 1.0 / 12.0 if f > 1 else 0.0  # the block mean already averaged one pixel
    sigma_cols = math.sqrt(max(cov[0, 0] - box_var, 0.0))
    sigma_rows = math.sqrt(max(cov[1, 1] - box_var, 0.0))
    if sigma_cols > 0.05 or sigma_rows > 0.05:
        tem = ndimage.gaussian_filter(tem, (sigma_rows, sigma_cols), mode="nearest")
    return warp(tem, AffineTransform(matrix=matrix), output_shape=tuple(sims_shape), order=1,
                mode="constant", cval=cval, preserve_range=True).astype(np.float32)


def _prepared_pair(sims: np.ndarray, tem_on_sims: np.ndarray, smooth_px: float):
    mask = np.isfinite(sims) & (sims >= 0) & np.isfinite(tem_on_sims)
    sims_s = _masked_gaussian(np.nan_to_num(sims), mask, smooth_px)
    tem_s = _masked_gaussian(np.nan_to_num(tem_on_sims), mask, smooth_px)
    return _standardise(sims_s, mask), _standardise(tem_s, mask), mask


def _quadrant_shifts(sims_z: np.ndarray, tem_z: np.ndarray, mask: np.ndarray,
                     upsample_factor: int, normalization) -> list[tuple[float, float]]:
    ny, nx = sims_z.shape
    out = []
    for rs in (slice(0, ny // 2), slice(ny // 2, ny)):
        for cs in (slice(0, nx // 2), slice(nx // 2, nx)):
            m = mask[rs, cs]
            if m.mean() < 0.5 or min(m.shape) < 8:
                continue
            a, b = tem_z[rs, cs], sims_z[rs, cs]
            if float(np.abs(a).max()) == 0 or float(np.abs(b).max()) == 0:
                continue
            shift, _, _ = phase_cross_correlation(a, b, upsample_factor=upsample_factor,
                                                  normalization=normalization)
            out.append((float(shift[0]), float(shift[1])))
    return out


# ============================================================================ API
def register_sims_to_tem(sims_image: np.ndarray, tem_image: np.ndarray,
                         sims_geometry: SimsMapGeometry, tem_geometry: TemImageGeometry, *,
                         refine: bool = True, invert_tem: bool | Literal["auto"] = "auto",
                         upsample_factor: int = 20, smooth_sims_px: float = 1.0,
                         footprint_sigma_sims_px: float = 0.5,
                         max_shift_px: float | None = None, taper_fraction: float = 0.0,
                         max_iterations: int = 5, tolerance_px: float = 0.05,
                         normalization: Literal["phase"] | None = None) -> RegistrationResult:
    """Register a SIMS map onto a TEM image of the same specimen area.

    Parameters
    ----------
    sims_image : (ny, nx) array
        One SIMS map (counts; negative = not acquired), e.g. 7Li or the sum of the
        collectors.
    tem_image : (N, N) array
        TEM image (bright field or HAADF).
    sims_geometry, tem_geometry
        Their recorded geometry (``from_metadata`` of the start documents).
    refine : bool
        Refine the geometric affine by image similarity (a translation).
    invert_tem : bool or "auto"
        True if TEM contrast is opposite to SIMS contrast (bright field vs a species
        of the particles), False if alike (HAADF); "auto" picks the sign that
        correlates positively.
    upsample_factor : int
        Sub-pixel precision of the cross-correlation: 1 / upsample_factor SIMS px.
    smooth_sims_px : float
        Gaussian sigma (SIMS px) applied to both images before comparing them
        (counting noise of the map).
    footprint_sigma_sims_px : float
        Gaussian sigma (SIMS px) of what one SIMS pixel sees, used to smooth the TEM
        image to the map's resolution (:func:`tem_on_sims_grid`).
    max_shift_px : float, optional
        Largest refinement shift accepted (SIMS px); a larger one is rejected
        (``refined=False``, the initial transform kept). Default: a quarter of the
        map's smaller side.
    taper_fraction : float
        Tukey window (fraction of the map tapered) applied to both images before the
        cross-correlation (:func:`skimage.filters.window`), 0 for none.
    max_iterations, tolerance_px : int, float
        The translation is re-estimated after re-sampling the TEM image at the
        refined position until a step is below ``tolerance_px`` (SIMS px).
    normalization : "phase" or None
        Passed to :func:`~skimage.registration.phase_cross_correlation`: None (plain
        cross-correlation, robust to counting noise) or "phase" (whitened).

    Returns
    -------
    RegistrationResult

    Raises
    ------
    ValueError
        If an image is not 2-D or its shape does not match its geometry.
    """
    sims = _as_image("sims_image", sims_image)
    tem = _as_image("tem_image", tem_image)
    if sims.shape != sims_geometry.shape:
        raise ValueError(f"sims_image shape {sims.shape} does not match the geometry "
                         f"(ny, nx) = {sims_geometry.shape}")
    if tem.shape != tem_geometry.shape:
        raise ValueError(f"tem_image shape {tem.shape} does not match the geometry "
                         f"{tem_geometry.shape}")
    if invert_tem not in (True, False, "auto"):
        raise ValueError(f"invert_tem must be True, False or 'auto', got {invert_tem!r}")
    if max_shift_px is None:
        max_shift_px = 0.25 * min(sims.shape)

    m0 = pixel_transform_matrix(sims_geometry, tem_geometry)
    initial = AffineTransform(matrix=m0)
    on_grid = tem_on_sims_grid(tem, m0, sims.shape,
                               footprint_sigma_sims_px=footprint_sigma_sims_px)
    sims_z, tem_z, mask = _prepared_pair(sims, on_grid, smooth_sims_px)
    if mask.sum() < 16:
        raise ValueError("the SIMS map and the TEM image do not overlap (according to the "
                         "recorded geometry): nothing to register")
    ncc_initial = normalised_cross_correlation(sims_z, tem_z, mask)

    shift = (0.0, 0.0)
    phase_error = float("nan")
    refined = False
    matrix = m0
    iterations = 0
    if refine:
        taper = window(("tukey", taper_fraction), sims.shape).astype(np.float32)
        total = np.zeros(2)
        refined = True
        # Iterate: content cut by the map's edge biases one estimate toward zero
        # shift by a fraction of the remaining offset; re-sampling the TEM at the
        # refined position and estimating again removes it (fixed point: the truth).
        for step in range(1, max_iterations + 1):
            iterations = step
            found, phase_error, _ = phase_cross_correlation(
                tem_z * taper, sims_z * taper, upsample_factor=upsample_factor,
                normalization=normalization)
            total = total + found
            if math.hypot(*total) > max_shift_px:
                refined = False
                break
            matrix = m0 @ _translation(total[1], total[0])
            on_grid = tem_on_sims_grid(tem, matrix, sims.shape,
                                       footprint_sigma_sims_px=footprint_sigma_sims_px)
            sims_z, tem_z, mask = _prepared_pair(sims, on_grid, smooth_sims_px)
            if math.hypot(*found) <= tolerance_px:
                break
        if refined:
            shift = (float(total[0]), float(total[1]))
        else:
            matrix = m0
            on_grid = tem_on_sims_grid(tem, matrix, sims.shape,
                                       footprint_sigma_sims_px=footprint_sigma_sims_px)
            sims_z, tem_z, mask = _prepared_pair(sims, on_grid, smooth_sims_px)
    ncc = normalised_cross_correlation(sims_z, tem_z, mask)
    inverted = bool(ncc < 0) if invert_tem == "auto" else bool(invert_tem)
    sign = -1.0 if inverted else 1.0
    quadrants = _quadrant_shifts(sims_z, tem_z, mask, upsample_factor, normalization)
    residual = (math.sqrt(float(np.mean([r * r + c * c for r, c in quadrants])))
                if quadrants else float("nan"))
    quality = {"ncc": sign * ncc, "ncc_initial": sign * ncc_initial,
               "phase_error": float(phase_error), "overlap_fraction": float(mask.mean()),
               "tem_inverted": inverted, "quadrant_shifts_px": quadrants,
               "iterations": iterations}
    return RegistrationResult(transform=AffineTransform(matrix=matrix),
                              initial_transform=initial, shift_px=shift, quality=quality,
                              residual_sims_px=residual, refined=refined)


def _transform_of(result: RegistrationResult | AffineTransform | np.ndarray) -> AffineTransform:
    if isinstance(result, RegistrationResult):
        return result.transform
    if isinstance(result, AffineTransform):
        return result
    matrix = np.asarray(result, float)
    if matrix.shape != (3, 3):
        raise ValueError(f"expected a RegistrationResult, AffineTransform or 3x3 matrix, "
                         f"got shape {matrix.shape}")
    return AffineTransform(matrix=matrix)


def warp_sims_to_tem(sims_channels: np.ndarray,
                     result: RegistrationResult | AffineTransform | np.ndarray,
                     tem_shape: tuple[int, int], *, order: int = 1,
                     cval: float = np.nan) -> np.ndarray:
    """SIMS channels resampled on the TEM pixel grid.

    Parameters
    ----------
    sims_channels : (ny, nx) or (k, ny, nx) array
        Maps on the SIMS grid (negative values = not acquired, treated as missing).
    result
        The registration (or the SIMS -> TEM affine / its 3x3 matrix).
    tem_shape : (H, W)
        Shape of the TEM image.
    order : int
        Interpolation order (0 nearest, 1 bilinear, 3 cubic).
    cval : float
        Value outside the map and next to missing pixels (NaN; or 0).

    Returns
    -------
    (H, W) or (k, H, W) float32 array
    """
    transform = _transform_of(result)
    arr = np.asarray(sims_channels, np.float32)
    if arr.ndim not in (2, 3):
        raise ValueError(f"sims_channels must be (ny, nx) or (k, ny, nx), got shape {arr.shape}")
    if len(tem_shape) != 2:
        raise ValueError(f"tem_shape must be (H, W), got {tem_shape!r}")
    stack = arr[None] if arr.ndim == 2 else arr
    out = np.empty((stack.shape[0], *tem_shape), np.float32)
    inverse = AffineTransform(matrix=np.linalg.inv(transform.params))
    for k, channel in enumerate(stack):
        acquired = np.isfinite(channel)
        if not acquired.all():
            channel = np.where(acquired, channel, np.float32(cval))
        out[k] = warp(channel, inverse, output_shape=tuple(tem_shape), order=order,
                      mode="constant", cval=cval, preserve_range=True)
    return out[0] if arr.ndim == 2 else out


def warp_tem_to_sims(tem_image: np.ndarray,
                     result: RegistrationResult | AffineTransform | np.ndarray,
                     sims_shape: tuple[int, int], *, footprint_sigma_sims_px: float = 0.5,
                     cval: float = np.nan) -> np.ndarray:
    """A TEM image resampled on the SIMS grid at the map's resolution
    (:func:`tem_on_sims_grid` with the registration's transform); (ny, nx) float32."""
    transform = _transform_of(result)
    return tem_on_sims_grid(_as_image("tem_image", tem_image), transform.params,
                            tuple(sims_shape), footprint_sigma_sims_px=footprint_sigma_sims_px,
                            cval=cval)


__all__ = [
    "RegistrationResult",
    "normalised_cross_correlation",
    "register_sims_to_tem",
    "tem_on_sims_grid",
    "warp_sims_to_tem",
    "warp_tem_to_sims",
]
