"""SIMS depth profiles from repeated frames: drift, alignment, counts per frame.

Pure numpy/scipy/scikit-image on arrays. Repeated maps of one area sputter
deeper at every frame; meanwhile the specimen drifts relative to the beam, so the
frames are registered before they are summed or profiled.

Drift is measured on the sum of the species (more counts than any one of them),
Gaussian-smoothed (Poisson noise of low-count frames), by
``skimage.registration.phase_cross_correlation`` with sub-pixel upsampling. The
reference is either

* ``"first"``: every frame against frame 0. Errors do not accumulate, but frame 0
  is as noisy as any other frame and the specimen changes with depth (layers and
  small particles are sputtered away), so late frames correlate worse; or
* ``"cumulative"`` (default): against the running sum of the frames already
  aligned. Its noise falls as 1/sqrt(frames) and it follows a slowly changing
  specimen; an error made early is carried (blurred) into the reference, but it
  is sub-pixel and does not add up frame by frame as chaining consecutive pairs
  would.

Frames are shifted with ``scipy.ndimage.shift`` (linear interpolation); pixels
that come from outside the field are NaN. Profiles are summed over the pixels
that stay in the field in every frame, so all frames see the same area.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize, special
from scipy.optimize import brentq
from skimage.registration import phase_cross_correlation

from temsims.analysis.isotopes import _counts_array, _dead_time, _dead_time_args, _positive

REFERENCES = ("cumulative", "first")


def _check_stack(name: str, stack) -> np.ndarray:
    arr = _counts_array(name, stack, ndim=3)
    if arr.shape[0] < 1 or arr.shape[1] < 2 or arr.shape[2] < 2:
        raise ValueError(f"{name} must be (n_frames >= 1, ny >= 2, nx >= 2), got {arr.shape}")
    return arr


def _prepare(frame: np.ndarray, sigma: float) -> np.ndarray:
    """NaN-free, smoothed, zero-mean image for the correlation."""
    valid = np.isfinite(frame)
    fill = float(frame[valid].mean()) if valid.any() else 0.0
    img = np.where(valid, frame, fill)
    if sigma > 0:
        img = ndimage.gaussian_filter(img, sigma, mode="nearest")
    return img - img.mean()


#: Refinement of a frame's shift: at most this many passes, until a pass moves less.
REFINE_PASSES = 8
REFINE_TOLERANCE_PX = 0.02


def _refined_shift(ref: np.ndarray, mov: np.ndarray, upsample_factor: int) -> np.ndarray:
    """Shift (rows, cols) that registers ``mov`` on ``ref``, refined in passes.

    One cross-correlation of maps whose content ends at the field edge is pulled
    towards zero shift (the edges, which do not move, correlate too: measured ~0.6x
    of a 1-pixel shift along the 32 rows of a map). Shifting ``mov`` by the estimate
    and correlating again measures what is left; the pull scales with it, so the
    passes converge on the shift.
    """
    total = np.zeros(2)
    moved = mov
    for _ in range(REFINE_PASSES):
        with warnings.catch_warnings():  # an empty (all-zero) frame: shift 0, no RMS error
            warnings.simplefilter("ignore", UserWarning)
            step, _err, _phase = phase_cross_correlation(
                ref, moved, upsample_factor=upsample_factor, normalization=None)
        step = np.asarray(step, dtype=float)
        total += step
        if math.hypot(*step) < REFINE_TOLERANCE_PX:
            break
        moved = ndimage.shift(mov, total, order=1, mode="nearest")
    return total


def estimate_drift(frames, *, reference: str = "cumulative", upsample_factor: int = 20,
                   smooth_sigma_px: float = 1.0) -> np.ndarray:
    """Displacement of each frame's content relative to frame 0 (pixels).

    Parameters
    ----------
    frames : array_like
        (n_frames, ny, nx) counts (e.g. the sum over species); NaN = not
        acquired.
    reference : {"cumulative", "first"}
        What each frame is registered against (see the module notes).
    upsample_factor : int
        Sub-pixel precision ``1 / upsample_factor`` pixel, >= 1 (10-20 is enough
        for Poisson-noisy maps).
    smooth_sigma_px : float
        Gaussian smoothing before correlating (pixels), >= 0.

    Returns
    -------
    numpy.ndarray
        (n_frames, 2): (rows, cols) by which the content of each frame is displaced
        with respect to frame 0 (row 0 is 0, 0). Shifting frame ``i`` by
        ``-drift[i]`` aligns it.
    """
    stack = _check_stack("frames", frames)
    if reference not in REFERENCES:
        raise ValueError(f"reference = {reference!r} must be one of {REFERENCES}")
    if isinstance(upsample_factor, bool) or not isinstance(upsample_factor, (int, np.integer)):
        raise TypeError("upsample_factor must be an int")
    if upsample_factor < 1:
        raise ValueError(f"upsample_factor = {upsample_factor} must be >= 1")
    sigma = _positive("smooth_sigma_px", smooth_sigma_px, allow_zero=True)
    n = stack.shape[0]
    drift = np.zeros((n, 2))
    ref_sum = np.where(np.isfinite(stack[0]), stack[0], 0.0)
    ref_w = np.isfinite(stack[0]).astype(float)
    first = _prepare(stack[0], sigma)
    for i in range(1, n):
        if reference == "first":
            ref = first
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                ref = _prepare(np.where(ref_w > 0, ref_sum / np.where(ref_w > 0, ref_w, 1.0),
                                        np.nan), sigma)
        shift = _refined_shift(ref, _prepare(stack[i], sigma), int(upsample_factor))
        drift[i] = -shift
        if reference == "cumulative":
            aligned = align_frames(stack[i][None], drift[i][None])[0]
            ok = np.isfinite(aligned)
            ref_sum = ref_sum + np.where(ok, aligned, 0.0)
            ref_w = ref_w + ok
    return drift


def align_frames(frames, drift_px, *, order: int = 1) -> np.ndarray:
    """Shift every frame back by its drift; out-of-field pixels become NaN.

    Parameters
    ----------
    frames : array_like
        (n_frames, ny, nx) counts; NaN = not acquired.
    drift_px : array_like
        (n_frames, 2) content displacement (rows, cols), from :func:`estimate_drift`.
    order : int
        Spline order of the interpolation (0 or 1; 1 = linear keeps counts >= 0).

    Returns
    -------
    numpy.ndarray
        (n_frames, ny, nx) float, aligned on frame 0, NaN where no data.
    """
    stack = _check_stack("frames", frames)
    d = np.asarray(drift_px, dtype=float)
    if d.shape != (stack.shape[0], 2) or not np.isfinite(d).all():
        raise ValueError(f"drift_px must be finite with shape ({stack.shape[0]}, 2), got {d.shape}")
    if order not in (0, 1):
        raise ValueError(f"order = {order!r} must be 0 or 1")
    out = np.empty_like(stack)
    for i, frame in enumerate(stack):
        if not d[i].any():
            out[i] = frame
            continue
        # NaN propagates through the interpolation: a pixel touching no data is NaN.
        out[i] = ndimage.shift(frame, -d[i], order=order, mode="constant", cval=np.nan,
                               prefilter=False)
    return out


def sputtered_depth_nm(dose_ions_nm2, sputter_yield: float,
                       atomic_density_nm3: float) -> np.ndarray:
    """Cumulative depth at the end of each frame: ``cumsum(dose x Y / n)``.

    Parameters
    ----------
    dose_ions_nm2 : array_like
        Primary-ion dose of each frame on the specimen (ions/nm^2), >= 0.
    sputter_yield : float
        Sputter yield (atoms/ion), > 0 (uncertain by a factor of 2; Li2CO3 ~2.5).
    atomic_density_nm3 : float
        Atomic density of the matrix (atoms/nm^3), > 0 (Li2CO3: 103.3).

    Returns
    -------
    numpy.ndarray
        Depth (nm) at the end of each frame.
    """
    dose = np.asarray(dose_ions_nm2, dtype=float)
    if dose.ndim != 1 or not np.isfinite(dose).all() or (dose < 0).any():
        raise ValueError("dose_ions_nm2 must be a 1-D array of finite doses >= 0")
    y = _positive("sputter_yield", sputter_yield)
    n = _positive("atomic_density_nm3", atomic_density_nm3)
    return np.cumsum(dose * y / n)


@dataclass(frozen=True)
class DepthProfile:
    """Aligned frames and counts per frame.

    Attributes
    ----------
    drift_px : numpy.ndarray
        (n_frames, 2) content displacement (rows, cols) relative to frame 0.
    drift_nm : numpy.ndarray or None
        The same in nm (rows x row pixel size, cols x column pixel size), if the
        pixel size was given.
    aligned : dict of str -> numpy.ndarray
        Per species, (n_frames, ny, nx) aligned counts (NaN out of field).
    common : numpy.ndarray of bool
        Pixels in the field in every frame (and in the region, if one was given).
    counts : dict of str -> numpy.ndarray
        Per species, counts per frame summed over :attr:`common`.
    sigma : dict of str -> numpy.ndarray
        Their Poisson errors (sqrt of the variance, dead time propagated).
    summed : dict of str -> numpy.ndarray
        Per species, the aligned frames summed (NaN where any frame is missing).
    depth_start_nm, depth_end_nm : numpy.ndarray or None
        Sputtered depth at the start and end of every frame, when known.
    """

    drift_px: np.ndarray
    drift_nm: np.ndarray | None
    aligned: dict[str, np.ndarray]
    common: np.ndarray
    counts: dict[str, np.ndarray]
    sigma: dict[str, np.ndarray]
    summed: dict[str, np.ndarray]
    depth_start_nm: np.ndarray | None
    depth_end_nm: np.ndarray | None

    @property
    def depth_nm(self) -> np.ndarray | None:
        """Depth at the middle of every frame (nm)."""
        if self.depth_end_nm is None:
            return None
        return 0.5 * (self.depth_start_nm + self.depth_end_nm)

    def ratio(self, numerator: str, denominator: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame ratio of two species and its Poisson error."""
        a, b = self.counts[numerator], self.counts[denominator]
        sa, sb = self.sigma[numerator], self.sigma[denominator]
        with np.errstate(invalid="ignore", divide="ignore"):
            r = a / b
            return r, np.sqrt(sa**2 + r**2 * sb**2) / b


def depth_profile(stacks: Mapping[str, np.ndarray], *, region=None,
                  pixel_nm: float | tuple[float, float] | None = None,
                  reference: str = "cumulative", upsample_factor: int = 20,
                  smooth_sigma_px: float = 1.0, align: bool = True,
                  dwell_s: float | None = None, dead_time_s: float = 0.0,
                  depth_nm=None, dose_ions_nm2=None, sputter_yield: float | None = None,
                  atomic_density_nm3: float | None = None) -> DepthProfile:
    """Depth profile of repeated SIMS frames, drift-corrected.

    Parameters
    ----------
    stacks : mapping of str -> array_like
        Species -> (n_frames, ny, nx) counts, all the same shape; NaN = not acquired.
    region : array_like of bool, optional
        (ny, nx) region (in frame-0 pixels) to profile; default the whole field.
    pixel_nm : float or (float, float), optional
        Pixel size (nm), or (row, col) sizes: on the specimen a SIMS row pixel is
        ``fov / nx / cos(45 deg)``. Gives :attr:`DepthProfile.drift_nm`.
    reference, upsample_factor, smooth_sigma_px
        Drift estimation, see :func:`estimate_drift`.
    align : bool
        False skips the drift correction (drift reported as 0).
    dwell_s : float, optional
        Dwell per pixel (s), required when ``dead_time_s > 0``.
    dead_time_s : float
        Detector dead time (s), >= 0: counts corrected per pixel first.
    depth_nm : array_like, optional
        Cumulative depth at the end of each frame (nm), e.g. the ``depth_nm``
        recorded per frame by ``temsims.plans.sims.depth_profile``.
    dose_ions_nm2, sputter_yield, atomic_density_nm3 : optional
        Otherwise the depth from the dose per frame (:func:`sputtered_depth_nm`).

    Returns
    -------
    DepthProfile
    """
    if not isinstance(stacks, Mapping) or not stacks:
        raise TypeError("stacks must be a non-empty mapping species -> (n_frames, ny, nx)")
    dead_time_s, dwell = _dead_time_args(dead_time_s, dwell_s)
    data, var = {}, {}
    shape = None
    for name, stack in stacks.items():
        arr = _check_stack(f"stacks[{name!r}]", stack)
        if shape is not None and arr.shape != shape:
            raise ValueError(f"stacks differ in shape: {arr.shape} vs {shape}")
        shape = arr.shape
        data[name], var[name] = _dead_time(arr, dwell, dead_time_s)
    n_frames = shape[0]
    total = sum(data.values())
    drift = (estimate_drift(total, reference=reference, upsample_factor=upsample_factor,
                            smooth_sigma_px=smooth_sigma_px)
             if align else np.zeros((n_frames, 2)))
    aligned = {k: align_frames(v, drift) for k, v in data.items()}
    aligned_var = {k: align_frames(v, drift) for k, v in var.items()}
    common = np.all([np.isfinite(a).all(axis=0) for a in aligned.values()], axis=0)
    if region is not None:
        region = np.asarray(region)
        if region.dtype != bool or region.shape != shape[1:]:
            raise ValueError(f"region must be a boolean (ny, nx) = {shape[1:]} mask")
        common = common & region
    counts = {k: np.where(common, a, 0.0).sum(axis=(1, 2)) for k, a in aligned.items()}
    sigma = {k: np.sqrt(np.where(common, a, 0.0).sum(axis=(1, 2)))
             for k, a in aligned_var.items()}
    summed = {k: a.sum(axis=0) for k, a in aligned.items()}
    drift_nm = None
    if pixel_nm is not None:
        size = np.broadcast_to(np.asarray(pixel_nm, dtype=float), (2,))
        if not (np.isfinite(size).all() and (size > 0).all()):
            raise ValueError(f"pixel_nm = {pixel_nm!r} must be > 0")
        drift_nm = drift * size
    start = end = None
    if depth_nm is not None:
        end = np.asarray(depth_nm, dtype=float)
        if end.shape != (n_frames,) or not np.isfinite(end).all() or (np.diff(end) < 0).any():
            raise ValueError(f"depth_nm must be {n_frames} finite, non-decreasing depths")
    elif dose_ions_nm2 is not None:
        if sputter_yield is None or atomic_density_nm3 is None:
            raise ValueError("dose_ions_nm2 needs sputter_yield and atomic_density_nm3")
        end = sputtered_depth_nm(dose_ions_nm2, sputter_yield, atomic_density_nm3)
        if end.shape != (n_frames,):
            raise ValueError(f"dose_ions_nm2 must have {n_frames} values")
    if end is not None:
        start = np.concatenate([[0.0], end[:-1]])
    return DepthProfile(drift_px=drift, drift_nm=drift_nm, aligned=aligned, common=common,
                        counts=counts, sigma=sigma, summed=summed, depth_start_nm=start,
                        depth_end_nm=end)


def drift_rate(drift_px, frame_time_s: float) -> tuple[float, float]:
    """Least-squares drift velocity (rows/s, cols/s) from per-frame drift."""
    d = np.asarray(drift_px, dtype=float)
    t = np.arange(d.shape[0]) * _positive("frame_time_s", frame_time_s)
    if d.shape[0] < 2:
        return (math.nan, math.nan)
    return tuple(float(np.polyfit(t, d[:, k], 1)[0]) for k in range(2))


@dataclass(frozen=True)
class InterfaceWidth:
    """Depth resolution of one interface in a depth profile (:func:`interface_width`).

    Attributes
    ----------
    width_nm : float
        Depth between the ``levels`` crossings of the normalised signal (16-84 %: the
        usual depth resolution, 2 sigma of an error-function step).
    sd_nm : float
        Its standard error (the fit's covariance, plus the depth axis' relative
        error).
    centre_nm : float
        Depth of the 50 % crossing.
    falling : bool
        Whether the signal falls through the interface.
    top, bottom : float
        The fitted levels before and after the interface (signal units).
    """

    width_nm: float
    sd_nm: float
    centre_nm: float
    falling: bool
    top: float
    bottom: float


def _emg_cdf(x, sigma: float, tau: float) -> np.ndarray:
    """CDF of a Gaussian (sigma) plus an exponential (mean tau): the exponentially
    modified Gaussian, via ``log_ndtr`` so that the tail does not overflow."""
    x = np.asarray(x, dtype=float)
    return special.ndtr(x / sigma) - np.exp(
        -x / tau + sigma * sigma / (2 * tau * tau) + special.log_ndtr(x / sigma - sigma / tau))


def _emg_width(sigma: float, tau: float, lo: float, hi: float) -> float:
    span = 40.0 * (sigma + tau)
    q = [brentq(lambda x, p=p: float(_emg_cdf(x, sigma, tau)) - p, -span, span, xtol=1e-7)
         for p in (lo, hi)]
    return q[1] - q[0]


def interface_width(depth_nm, signal, sigma=None, *, levels: tuple[float, float] = (0.16, 0.84),
                    depth_rel_sd: float = 0.0) -> InterfaceWidth:
    """Depth resolution of an interface: the 16-84 % width of a falling or rising signal.

    The profile should straddle one interface with a plateau on each side. It is fitted
    (weighted least squares) with a step whose edge is an exponentially modified
    Gaussian: ``top + (bottom - top) EMG_cdf(z - z0; s, tau)`` (``top`` the level
    before the interface, ``bottom`` after it; the tail runs to the deeper side), the shape of the mixing-roughness-information function (an
    exponential tail from atomic mixing on a Gaussian roughness; an error-function
    fit would miss the 16-84 % width of that asymmetric edge). The width is between
    the fitted edge's ``levels`` quantiles; its error comes from the fit's covariance
    (numerical derivatives of the width) and the depth axis' relative error.

    Parameters
    ----------
    depth_nm : array_like
        Depth of each point (nm, increasing), e.g. the frames' middles from the
        measured sputter rate.
    signal : array_like
        Signal at each depth (counts, or counts per pixel).
    sigma : array_like, optional
        Standard error of each point (default: sqrt(signal), Poisson counts).
    levels : (float, float)
        Fractions of the step between which the width is taken.
    depth_rel_sd : float
        Relative standard error of the depth axis (e.g. of the measured sputter
        yield), added in quadrature.

    Returns
    -------
    InterfaceWidth
    """
    z = np.asarray(depth_nm, dtype=float)
    s = np.asarray(signal, dtype=float)
    if z.ndim != 1 or z.shape != s.shape or z.size < 8:
        raise ValueError("depth_nm and signal must be 1-D of the same length >= 8")
    if not (np.isfinite(z).all() and np.isfinite(s).all()) or (np.diff(z) <= 0).any():
        raise ValueError("depth_nm must increase and both must be finite")
    lo, hi = sorted(float(v) for v in levels)
    if not 0.0 < lo < 0.5 < hi < 1.0:
        raise ValueError(f"levels must straddle 0.5 inside (0, 1), got {levels}")
    err = np.sqrt(np.maximum(s, 1.0)) if sigma is None else np.asarray(sigma, dtype=float)
    if err.shape != s.shape or not (err > 0).all():
        raise ValueError("sigma must be > 0 with the shape of signal")
    n_p = max(3, z.size // 8)
    top0, bottom0 = float(np.mean(s[:n_p])), float(np.mean(s[-n_p:]))
    if abs(top0 - bottom0) < 5.0 * float(np.median(err)) / math.sqrt(n_p):
        raise ValueError("no interface: the plateaus differ by less than their noise")
    falling = top0 > bottom0
    f0 = (s - bottom0) / (top0 - bottom0)
    z_mid = float(np.interp(0.5, f0[::-1], z[::-1]) if falling else np.interp(0.5, f0, z))
    span = float(z[-1] - z[0])

    def model(zz, z0, log_s, log_t, top, bottom):
        # top before the interface, bottom after: one form for a fall and a rise.
        return top + (bottom - top) * _emg_cdf(zz - z0, math.exp(log_s), math.exp(log_t))

    step = float(np.median(np.diff(z)))
    guess = [z_mid, math.log(max(step, span / 40)), math.log(max(step, span / 20)), top0,
             bottom0]
    # sigma and tau between 1 % of a point's step (an error-function or a pure
    # exponential edge) and the profile's span.
    lo_b = [z[0], math.log(0.01 * step), math.log(0.01 * step), -np.inf, -np.inf]
    hi_b = [z[-1], math.log(span), math.log(span), np.inf, np.inf]
    try:
        popt, pcov = optimize.curve_fit(model, z, s, p0=guess, sigma=err, absolute_sigma=True,
                                        bounds=(lo_b, hi_b), max_nfev=20000)
    except RuntimeError as exc:
        raise ValueError(f"the interface fit did not converge: {exc}") from None
    z0, log_s, log_t, top, bottom = (float(v) for v in popt)
    sig, tau = math.exp(log_s), math.exp(log_t)
    width = _emg_width(sig, tau, lo, hi)
    # Delta method on (log sigma, log tau).
    h = 1e-4
    grad = np.array([(_emg_width(sig * math.exp(h), tau, lo, hi) - width) / h,
                     (_emg_width(sig, tau * math.exp(h), lo, hi) - width) / h])
    cov = np.asarray(pcov, float)[1:3, 1:3]
    var = float(grad @ cov @ grad) if np.isfinite(cov).all() else math.inf
    sd = math.hypot(math.sqrt(max(var, 0.0)), depth_rel_sd * width)
    q50 = brentq(lambda x: float(_emg_cdf(x, sig, tau)) - 0.5, -40 * (sig + tau),
                 40 * (sig + tau))
    return InterfaceWidth(width_nm=float(width), sd_nm=float(sd), centre_nm=z0 + q50,
                          falling=bool(falling), top=top, bottom=bottom)


__all__ = [
    "REFERENCES",
    "DepthProfile",
    "InterfaceWidth",
    "align_frames",
    "depth_profile",
    "drift_rate",
    "estimate_drift",
    "interface_width",
    "sputtered_depth_nm",
]
