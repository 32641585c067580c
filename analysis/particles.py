"""Particles in SIMS isotope maps (and TEM images): segmentation, ratios, labels.

Pure numpy/scipy/scikit-image on arrays. The SIMS route (:func:`find_particles`):

1. dead-time correct the 6Li and 7Li maps per pixel (:mod:`temsims.analysis.isotopes`);
2. segment on the total Li counts: Gaussian smoothing, a detection threshold set
   by the Poisson noise of the film background (not by the bright particles: an
   Otsu or percentile threshold drops the small ones), markers from the h-maxima
   of the variance-stabilised (Anscombe) maps, the smoothed total and, unsmoothed,
   the total, the 6Li and the 7Li map each (a labelled particle beside a natural
   one is a maximum of its own isotope; particles a pixel or two apart are separate
   maxima before smoothing: decision 0028), watershed to split touching particles,
   minimum area and counts;
3. cut labelled Li out of the segments it shares with natural Li
   (:func:`split_labelled_segments`): a small 6Li-labelled particle within a pixel
   or so of a large natural one falls in the same segment (its total counts are a
   shoulder of the neighbour's, not a maximum), and the summed ratio of the pair is
   neither natural nor a label. Blobs of pixels whose own 6Li/7Li is nearer a
   label than natural Li (grown over significant excess 6Li ``N6 - R0 N7``),
   whose summed counts reject natural Li at ``significance`` sigma, are cut out
   of a segment that is not labelled as a whole and whose remainder is still a
   detection and not labelled (:attr:`ParticleTable.split_from`);
4. per particle, sum N6 and N7 over its pixels (sum, then divide: a 20 nm particle
   spans a few pixels, but its summed counts carry the significance), the ratio,
   its Poisson bound, and the tests against natural Li (with a relative
   systematic error in quadrature) and against a minimal label;
5. classify: ``labelled`` when natural is rejected at ``significance`` sigma,
   ``natural`` when the label is rejected at ``natural_sigma`` sigma, otherwise
   ``uncertain``.

Pixel -> specimen coordinates go through a 3x3 homogeneous affine acting on
``(col, row, 1)`` and giving ``(x_um, y_um, 1)`` (skimage's (x, y) order);
:meth:`temsims.analysis.geometry.SimsMapGeometry.affine_to_specimen` is the one of a SIMS
raster.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage, special
from skimage import filters, measure, morphology, segmentation

from temsims.analysis.isotopes import (
    DEFAULT_LABEL_RATIO_MIN,
    DEFAULT_SYSTEMATIC_REL,
    NATURAL_LI6_LI7,
    _counts_array,
    _dead_time,
    _dead_time_args,
    _positive,
    _primary_ions_arg,
    _qsa,
    check_correction,
    check_hydride,
    corrected_systematic,
    hydride_sum_variance,
    ratio_test,
    region_from_sums,
    subtract_hydride,
)

CLASSES = ("labelled", "natural", "uncertain")
#: ``find_particles``' summing aperture: a segment's pixels whose smoothed total counts
#: reach this fraction of its peak (decision 0040, 2026-12-05 amendment).
DEFAULT_TRIM_FRACTION = 0.2



def _check_affine(affine) -> np.ndarray | None:
    if affine is None:
        return None
    a = np.asarray(getattr(affine, "params", affine), dtype=float)
    if a.shape != (3, 3) or not np.isfinite(a).all():
        raise ValueError(f"pixel_to_specimen must be a finite 3x3 affine, got shape {a.shape}")
    if not np.allclose(a[2], [0.0, 0.0, 1.0]) or abs(np.linalg.det(a[:2, :2])) == 0:
        raise ValueError("pixel_to_specimen must be an invertible affine (last row 0, 0, 1)")
    return a


# ======================================================================================
# Results
# ======================================================================================
@dataclass(frozen=True)
class Particle:
    """One segmented particle and its isotope ratio.

    Attributes
    ----------
    label : int
        Its value in :attr:`ParticleTable.labels`.
    row, col : float
        Count-weighted centroid (map pixels; row 0 = first line); for a labelled
        particle, the centroid of its 6Li excess ``N6 - R_nat N7`` (where the label
        is, when a labelled particle shares its segment with a natural one).
    x_um, y_um : float or None
        Centroid on the specimen (um) when an affine was given.
    area_px : int
        Pixels in the segment.
    radius_px : float
        Equivalent radius ``sqrt(area / pi)`` (pixels).
    radius_nm : float or None
        Equivalent radius on the specimen (nm) when an affine was given. The
        segment includes the beam blur, so small particles come out larger.
    n6, n7 : float
        Summed (dead-time corrected) counts.
    ratio, sigma, sigma_total : float
        6Li/7Li, its Poisson bound and the error including the systematic term.
    z : float
        Significance above natural (sigma; Poisson and systematic in quadrature).
    p_natural : float
        p-value of a ratio at least this high for a natural particle.
    p_label : float
        p-value of a ratio at most this high for a particle at ``label_ratio_min``.
    classification : str
        ``labelled``, ``natural`` or ``uncertain``.
    confidence : float
        ``1 - p_natural`` if labelled, ``1 - p_label`` if natural; for uncertain
        the larger of the two (how far the better hypothesis is from proven).
    halo_share : float
        The 7Li the probe halo's subtraction took out of the summed pixels, over
        ``n7`` (0 without ``halo``): above ~1 the particle's 7Li rests more on the halo
        model than on its own counts (a small particle in a bright neighbour's halo;
        decision 0040, 2026-12-05 amendment): its ratio is as good as that model.
    """

    label: int
    row: float
    col: float
    x_um: float | None
    y_um: float | None
    area_px: int
    radius_px: float
    radius_nm: float | None
    n6: float
    n7: float
    ratio: float
    sigma: float
    sigma_total: float
    z: float
    p_natural: float
    p_label: float
    classification: str
    confidence: float
    halo_share: float = 0.0

    @property
    def labelled(self) -> bool:
        return self.classification == "labelled"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (floats, ints, str, None), infinite ratio -> None."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = None
        return out


@dataclass(frozen=True)
class ParticleTable(Sequence):
    """The particles of a map, most significant first, with the label image.

    Attributes
    ----------
    particles : tuple of Particle
        Sorted by ``z`` (largest first).
    labels : numpy.ndarray of int
        Segment label per map pixel (0 = background); ``Particle.label`` indexes it.
    parameters : dict
        The analysis parameters (for run metadata).
    split_from : dict of int to int
        The segments cut out of another one by :func:`split_labelled_segments`
        (labelled Li beside natural Li): ``{label: label of the segment it was
        cut from}``. Their summed counts hold the tail of that unresolved
        neighbour, so a labelled one's ratio is a lower bound, not a Poisson-
        limited estimate (its classification is sound: the tail only dilutes it).
    untrimmed : tuple of int
        Segments whose own footprint (``trim_fraction``, the contacts left out) held
        no 7Li after the halo's subtraction: their counts are summed over the whole
        segment instead (a ratio needs a denominator).
    no_ratio : tuple of int
        Segments with no 7Li even over the whole segment: no ratio is measured
        (``ratio`` inf, or NaN without 6Li either; ``sigma`` NaN). Their class comes
        from the counts' test (a segment of 6Li alone is labelled; one without Li
        left is uncertain).
    """

    particles: tuple[Particle, ...]
    labels: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)
    split_from: dict[int, int] = field(default_factory=dict)
    untrimmed: tuple[int, ...] = ()
    no_ratio: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.particles)

    def __getitem__(self, i):
        return self.particles[i]

    def __iter__(self) -> Iterator[Particle]:
        return iter(self.particles)

    def labelled(self) -> list[Particle]:
        """The particles classified ``labelled``."""
        return [p for p in self.particles if p.labelled]

    def to_records(self) -> list[dict[str, Any]]:
        """One plain dict per particle (see :meth:`Particle.to_dict`)."""
        return [p.to_dict() for p in self.particles]

    def to_array(self) -> np.ndarray:
        """The table as a numpy structured array (NaN for missing coordinates)."""
        names = [f for f in Particle.__dataclass_fields__ if f != "classification"]
        dtype = [(n, np.int64 if n in ("label", "area_px") else np.float64) for n in names]
        dtype.append(("classification", "U9"))
        rows = [tuple((np.nan if getattr(p, n) is None else getattr(p, n)) for n in names)
                + (p.classification,) for p in self.particles]
        return np.array(rows, dtype=dtype)


# ======================================================================================
# Segmentation
# ======================================================================================
def _check_sigma(name: str, value: float) -> float:
    return _positive(name, value, allow_zero=True)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} = {value} must be >= {low}")
    return int(value)


def _smooth(image: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing normalised over the valid pixels (edges, unacquired)."""
    if sigma == 0:
        return np.where(valid, image, 0.0)
    num = ndimage.gaussian_filter(np.where(valid, image, 0.0), sigma, mode="constant")
    den = ndimage.gaussian_filter(valid.astype(float), sigma, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-6, num / den, 0.0)


def check_halo(halo) -> tuple[float, float] | None:
    """``(fraction, sigma_px)`` of a probe halo, validated (``None``: no halo)."""
    if halo is None:
        return None
    try:
        fraction, sigma = (float(v) for v in halo)
    except (TypeError, ValueError):
        raise TypeError(f"halo must be (fraction, sigma_px), got {halo!r}") from None
    if not (math.isfinite(fraction) and 0.0 <= fraction < 0.5):
        raise ValueError(f"halo fraction must be in [0, 0.5), got {fraction}")
    if not (math.isfinite(sigma) and sigma > 0.0):
        raise ValueError(f"halo sigma_px must be finite and > 0, got {sigma}")
    return fraction, sigma


def subtract_halo(counts, variance, valid, halo) -> tuple[np.ndarray, np.ndarray]:
    """Counts and variance with the probe halo's share taken out (decision 0040).

    A map is the emission blurred by ``(1 - f) core + f halo``; the halo being far
    wider than the core, ``halo * map`` is ``halo * emission`` to first order, so
    ``map - f halo * map`` is ``(1 - f) core * emission`` up to ``f^2`` (a first-order
    deconvolution): what a neighbour's halo put into a particle's pixels is gone, and
    every ratio sees its own core's counts. Beyond the map's edge the halo sees the
    mean of the nearby acquired pixels (normalised smoothing). The subtracted map's
    noise (``f^2 sum w^2`` times the smoothed variance) is added to the variance.
    Pixels may go slightly negative (Poisson dips under a bright neighbour's halo).
    """
    fraction, sigma = halo
    if fraction == 0.0:
        return counts, variance
    c = np.where(valid, counts, 0.0)
    spill = fraction * _smooth(c, valid, sigma)
    noise = fraction**2 * _sum_w2(sigma) * _smooth(np.where(valid, variance, 0.0), valid, sigma)
    return (np.where(valid, counts - spill, np.nan),
            np.where(valid, variance + noise, np.nan))


def estimate_background(total_counts, valid=None) -> float:
    """Background (film) counts per pixel: the median of the lower half of the map.

    Robust while particles cover less than about 3/4 of the field.
    """
    t = np.asarray(total_counts, dtype=float)
    v = np.isfinite(t) if valid is None else (np.asarray(valid, bool) & np.isfinite(t))
    vals = t[v]
    if vals.size == 0:
        return 0.0
    med = float(np.median(vals))
    return float(np.median(vals[vals <= med]))


def _sum_w2(sigma: float) -> float:
    """Sum of the squared weights of the discrete Gaussian kernel (the noise variance
    factor of a smoothed map; ``1 / (4 pi sigma^2)`` only for sigma >~ 1 px)."""
    if sigma == 0:
        return 1.0
    n = 2 * math.ceil(4 * sigma) + 1
    delta = np.zeros((n, n))
    delta[n // 2, n // 2] = 1.0
    return float(np.sum(ndimage.gaussian_filter(delta, sigma, mode="constant") ** 2))


def _anscombe_peaks(image: np.ndarray, valid: np.ndarray, fg: np.ndarray, sigma: float,
                    h_sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(h-maxima, Anscombe map) of a Gaussian-smoothed count map inside ``fg``: maxima
    ``h_sigma`` times the smoothed unit noise of ``2 sqrt(c + 3/8)`` above their
    surroundings."""
    sm = _smooth(image, valid, sigma)
    w2 = _sum_w2(sigma)
    ans = 2.0 * np.sqrt(np.clip(sm, 0.0, None) + 0.375)
    peaks = morphology.h_maxima(np.where(fg, ans, 0.0), h_sigma * math.sqrt(w2)).astype(bool)
    return peaks & fg, ans


def segment_sims_particles(total_counts, *, smooth_sigma_px: float = 1.0,
                           detection_sigma: float = 5.0,
                           background_counts: float | None = None,
                           h_sigma: float = 4.0, min_area_px: int = 1,
                           min_counts: float = 20.0, channels=None,
                           marker_sigma_px: float = 0.0) -> np.ndarray:
    """Label image of the particles of a total-counts SIMS map.

    Parameters
    ----------
    total_counts : array_like
        2-D counts per pixel (e.g. 6Li + 7Li, dead-time corrected); NaN = not
        acquired.
    smooth_sigma_px : float
        Gaussian smoothing before detection (pixels), >= 0; about the beam
        footprint (sigma) in pixels.
    detection_sigma : float
        A pixel is foreground where the smoothed map exceeds the background by
        this many standard deviations of the smoothed Poisson noise of
        ``max(background, 1)`` counts, > 0.
    background_counts : float, optional
        Film counts per pixel; default :func:`estimate_background`.
    h_sigma : float
        Watershed markers are the h-maxima of the smoothed Anscombe map
        ``2 sqrt(c + 3/8)`` (unit Poisson noise) with ``h`` this many times its
        smoothed noise: a dip between two particles deeper than that splits them,
        > 0.
    min_area_px : int
        Smaller segments are dropped, >= 1.
    min_counts : float
        Segments with fewer summed counts are dropped, >= 0.
    channels : sequence of array_like, optional
        The isotope maps whose sum is ``total_counts`` (e.g. 6Li and 7Li). Markers
        then also come from each map on its own, smoothed by ``marker_sigma_px``:
        a labelled particle beside a natural one is a shoulder of the total but a
        maximum of the 6Li map, and particles a pixel or two apart, which the
        detection smoothing merges, are separate maxima at the finer smoothing.
        Maxima in adjacent pixels (one particle seen in two maps) are one marker.
    marker_sigma_px : float
        Smoothing of the marker maps and of the watershed surface when
        ``channels`` are given (pixels), >= 0.

    Returns
    -------
    numpy.ndarray of int32
        0 = background, 1..n = particles.
    """
    t = np.array(total_counts, dtype=float)
    if t.ndim != 2 or t.size == 0:
        raise ValueError(f"total_counts must be a non-empty 2-D map, got shape {t.shape}")
    valid = np.isfinite(t)
    if (t[valid] < 0).any():
        raise ValueError("total_counts has negative counts")
    s = _check_sigma("smooth_sigma_px", smooth_sigma_px)
    det = _positive("detection_sigma", detection_sigma)
    h_sigma = _positive("h_sigma", h_sigma)
    min_area_px = _check_int("min_area_px", min_area_px, 1)
    min_counts = _positive("min_counts", min_counts, allow_zero=True)
    bkg = (estimate_background(t, valid) if background_counts is None
           else _positive("background_counts", background_counts, allow_zero=True))
    sm = _smooth(t, valid, s)
    # Noise of a Gaussian-smoothed Poisson map: sqrt(lambda sum w^2), sum w^2 = 1/(4 pi s^2).
    w2 = 1.0 / (4.0 * math.pi * s * s) if s > 0 else 1.0
    fg = valid & (sm > bkg + det * math.sqrt(max(bkg, 1.0) * w2))
    if not fg.any():
        return np.zeros(t.shape, np.int32)
    peaks, ans = _anscombe_peaks(t, valid, fg, s, h_sigma)
    if channels is not None:
        ms = _check_sigma("marker_sigma_px", marker_sigma_px)
        fine, ans = _anscombe_peaks(t, valid, fg, ms, h_sigma)
        peaks = peaks | fine
        for ch in channels:
            c = np.asarray(ch, dtype=float)
            if c.shape != t.shape:
                raise ValueError(f"channels must have the map's shape {t.shape}, got {c.shape}")
            peaks |= _anscombe_peaks(np.where(valid, c, 0.0), valid, fg, ms, h_sigma)[0]
    markers = measure.label(peaks, connectivity=2)
    labels = segmentation.watershed(-ans, markers, mask=fg, connectivity=2)
    # Foreground pieces without a marker (flat plateaux) become their own segments.
    orphan = fg & (labels == 0)
    if orphan.any():
        extra = measure.label(orphan, connectivity=2)
        labels = np.where(orphan, extra + labels.max(), labels)
    idx = np.arange(1, labels.max() + 1)
    if idx.size:
        areas = ndimage.sum_labels(np.ones_like(t), labels, idx)
        counts = ndimage.sum_labels(np.where(valid, t, 0.0), labels, idx)
        drop = idx[(areas < min_area_px) | (counts < min_counts)]
        labels[np.isin(labels, drop)] = 0
    labels, _, _ = segmentation.relabel_sequential(labels)
    return labels.astype(np.int32)


def segment_tem_particles(image, *, smooth_sigma_px: float = 1.0, method: str = "mad",
                          detection_sigma: float = 5.0, min_area_px: int = 4,
                          split: bool = True, min_distance_px: int = 3) -> np.ndarray:
    """Label image of the dark (mass-thick) blobs of a bright-field TEM image.

    Parameters
    ----------
    image : array_like
        2-D bright-field intensities (particles darker than the film).
    smooth_sigma_px : float
        Gaussian smoothing (pixels), >= 0.
    method : {"mad", "otsu"}
        Threshold on the darkness ``median - smoothed``: ``mad`` =
        ``detection_sigma`` x 1.4826 MAD of the film (robust with few particles);
        ``otsu`` = Otsu's threshold (many large particles).
    detection_sigma : float
        For ``mad``, > 0.
    min_area_px : int
        Smaller blobs are dropped, >= 1.
    split : bool
        Split touching particles by a watershed on the distance transform.
    min_distance_px : int
        Two touching particles are split when the neck between them is narrower
        than their radii by more than half this (pixels), >= 1.

    Returns
    -------
    numpy.ndarray of int32
        0 = film, 1..n = particles.
    """
    img = np.asarray(image, dtype=float)
    if img.ndim != 2 or img.size == 0 or not np.isfinite(img).all():
        raise ValueError("image must be a finite, non-empty 2-D array")
    if method not in ("mad", "otsu"):
        raise ValueError(f"method = {method!r} must be 'mad' or 'otsu'")
    s = _check_sigma("smooth_sigma_px", smooth_sigma_px)
    min_area_px = _check_int("min_area_px", min_area_px, 1)
    min_distance_px = _check_int("min_distance_px", min_distance_px, 1)
    sm = ndimage.gaussian_filter(img, s) if s > 0 else img
    dark = np.median(sm) - sm
    if method == "otsu":
        thr = filters.threshold_otsu(dark) if np.ptp(dark) > 0 else np.inf
    else:
        mad = float(np.median(np.abs(dark))) * 1.4826 or float(dark.std()) or 1.0
        thr = _positive("detection_sigma", detection_sigma) * mad
    comp = measure.label(dark > thr, connectivity=2)
    if comp.max():
        areas = np.bincount(comp.ravel())
        comp[areas[comp] < min_area_px] = 0
    fg = comp > 0
    if split and fg.any():
        # Markers: maxima of the distance transform at least h = min_distance_px / 2
        # above their surroundings (a neck narrower than that splits two particles).
        dist = ndimage.distance_transform_edt(fg)
        markers = measure.label(morphology.h_maxima(dist, min_distance_px / 2.0).astype(bool)
                                & fg, connectivity=2)
        labels = segmentation.watershed(-dist, markers, mask=fg)
    else:
        labels = measure.label(fg, connectivity=2)
    return labels.astype(np.int32)


# ======================================================================================
# Particles with ratios
# ======================================================================================
def contact_pixels(labels) -> np.ndarray:
    """Pixels of a segment that touch (8-neighbourhood) a different segment."""
    lab = np.asarray(labels)
    big = np.iinfo(np.int64).max
    hi = ndimage.maximum_filter(lab, size=3, mode="constant", cval=0)
    lo = ndimage.minimum_filter(np.where(lab == 0, big, lab).astype(np.int64), size=3,
                                mode="constant", cval=big)
    return (lab > 0) & (((hi != lab) & (hi > 0)) | ((lo != lab) & (lo != big)))


def _wing_contacts(labels: np.ndarray, c6: np.ndarray, c7: np.ndarray,
                   share: float = 0.25) -> np.ndarray:
    """Contact pixels that can hold another segment's counts: those touching (8-
    neighbourhood) a pixel of another segment whose 6Li or 7Li reaches ``share`` of
    what this pixel holds of that isotope (its total counts times its segment's
    isotope fraction; an unacquired pixel, NaN counts, may hold anything).

    A neighbour's blurred profile falls away from it, so its counts in a pixel are
    below those in its own pixel beside it: a contact pixel whose every such
    neighbour holds less than ``share`` of its own expected 6Li and 7Li holds less
    than that of the neighbour's (a small particle's peak pixel touching the empty
    far end of a bright neighbour's watershed basin). The pixel's own share of each
    isotope is its segment's, not its own count's: choosing pixels by their own
    6Li would bias the ratio.
    """
    lab = np.asarray(labels)
    acquired = np.isfinite(c6) & np.isfinite(c7)
    p6, p7 = (np.clip(np.where(acquired, c, 0.0), 0.0, None) for c in (c6, c7))
    idx = np.arange(int(lab.max()) + 1)
    s6, s7 = (ndimage.sum_labels(p, np.where(acquired, lab, 0), idx) for p in (p6, p7))
    with np.errstate(invalid="ignore", divide="ignore"):
        f6 = np.where(s6 + s7 > 0, s6 / (s6 + s7), 0.0)
    total = p6 + p7
    own6, own7 = share * f6[lab] * total, share * (1.0 - f6[lab]) * total
    q6, q7 = (np.where(acquired, p, np.inf) for p in (p6, p7))
    out = np.zeros(lab.shape, bool)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if not (dr or dc):
                continue
            other = ndimage.shift(lab, (dr, dc), order=0, mode="constant", cval=0)
            n6, n7 = (ndimage.shift(q, (dr, dc), order=0, mode="constant", cval=0.0)
                      for q in (q6, q7))
            near = (lab > 0) & (other > 0) & (other != lab)
            out |= near & ((n6 >= own6) | (n7 >= own7))
    return out


def _segment_sums(labels: np.ndarray, arrays, idx: np.ndarray, exclude_contacts: bool,
                  contact_labels: np.ndarray | None = None,
                  aperture: np.ndarray | None = None,
                  brighter: np.ndarray | None = None,
                  wing: np.ndarray | None = None) -> list[np.ndarray]:
    """Per-segment sums of ``arrays`` (zero where unacquired, ``labels`` 0 there),
    leaving out the contact pixels (:func:`contact_pixels` of ``contact_labels``,
    default ``labels``; only those of ``wing`` if given, :func:`_wing_contacts`)
    unless that leaves less than half of a segment's counts (the first two arrays):
    then only those of ``brighter`` (bool: contacts with a brighter segment) if that
    keeps a quarter of them; only over ``aperture`` (bool) if given."""
    contacts = contact_pixels(labels if contact_labels is None else contact_labels) \
        if exclude_contacts else None
    if contacts is not None and wing is not None:
        contacts = contacts & wing
    if aperture is not None:
        labels = np.where(aperture, labels, 0)
    sums = [ndimage.sum_labels(a, labels, idx) for a in arrays]
    if exclude_contacts:
        core = np.where(contacts, 0, labels)
        core_sums = [ndimage.sum_labels(a, core, idx) for a in arrays]
        if brighter is not None:
            # Beside a brighter neighbour the contacts hold its wing (the probe core's,
            # not subtracted): those are left out even when the rest are kept.
            dim = np.where(brighter, 0, labels)
            dim_sums = [ndimage.sum_labels(a, dim, idx) for a in arrays]
            use = dim_sums[0] + dim_sums[1] >= 0.25 * (sums[0] + sums[1])
            sums = [np.where(use, d, s) for d, s in zip(dim_sums, sums, strict=True)]
        keep = core_sums[0] + core_sums[1] >= 0.5 * (sums[0] + sums[1])
        sums = [np.where(keep, c, s) for c, s in zip(core_sums, sums, strict=True)]
    return sums


def split_labelled_segments(labels, n6, n7, var6=None, var7=None, *,
                            reference_ratio: float = NATURAL_LI6_LI7,
                            systematic_rel: float = DEFAULT_SYSTEMATIC_REL,
                            label_ratio_min: float = DEFAULT_LABEL_RATIO_MIN,
                            significance: float = 5.0, natural_sigma: float = 3.0,
                            detection_sigma: float = 5.0,
                            background_counts: float | None = None, min_area_px: int = 1,
                            min_counts: float = 20.0, exclude_contacts: bool = True
                            ) -> tuple[np.ndarray, dict[int, int]]:
    """Cut labelled Li out of the segments it shares with natural Li.

    A labelled particle 10-20 nm across a pixel or so from a 90 nm natural one is
    a shoulder of the neighbour's total counts, not a maximum of its own, so the
    segmentation merges them and the pair's summed ratio is neither natural nor a
    label (``uncertain``, or even ``natural``). Their isotopes still tell them
    apart pixel by pixel: labelled Li is nearly pure 6Li, natural Li 7.6 % 6Li.

    1. Blobs: 8-connected pixels of the segments whose own 6Li/7Li is above
       ``sqrt(reference_ratio * label_ratio_min)`` (nearer a label than natural Li
       on a log scale), grown over the connected pixels whose excess 6Li
       ``N6 - R0 N7`` is ``natural_sigma`` sigma above zero (variance
       ``var6 + R0^2 var7 + (systematic_rel R0 N7)^2``): where natural Li
       dominates but the label's tail is still significant.
    2. A blob is labelled when its summed counts reject natural Li at
       ``significance`` sigma (the test of :func:`find_particles`, binomial with
       the systematic term), else ignored.
    3. A segment may be cut when, tested as :func:`find_particles` tests it, it is
       not labelled as a whole (a labelled one is found already, and a small
       natural neighbour cut out of a bright labelled particle keeps too much of
       its tail to be natural), and its pixels outside the labelled blobs still
       hold a detection on their own: ``min_counts`` counts and
       ``detection_sigma`` sigma above the background over their area (a labelled
       particle's blurred rim, N6 = N7 = 0 or the film, is not one).
    4. A labelled blob's pixels in segments that may be cut go to a new segment,
       or, when the blob continues into a segment that may not (a labelled
       particle's tail over a natural neighbour's edge), to that segment. Other
       segments are left as they are: touching labelled particles stay as the
       watershed split them.
    5. A cut must leave its segment's remainder not labelled (tested likewise):
       otherwise the label's tail is not separable there and the blobs that cut
       it are put back.

    Parameters
    ----------
    labels : array_like of int
        Segment label per pixel (0 = background).
    n6, n7 : array_like
        Counts per pixel (dead-time corrected), NaN = unacquired.
    var6, var7 : array_like, optional
        Their variances (default: the counts).
    reference_ratio, systematic_rel, label_ratio_min, significance, natural_sigma
        As in :func:`find_particles`.
    detection_sigma, background_counts
        As in :func:`segment_sims_particles` (for the natural remainder).
    min_area_px, min_counts
        Smallest new segment (pixels) and natural remainder (counts).
    exclude_contacts
        As in :func:`find_particles` (for the tests of whole segments).

    Returns
    -------
    labels : numpy.ndarray of int32
        The new label image (new segments numbered after the old ones).
    split_from : dict of int to int
        ``{new label: label of the segment it was mostly cut from}``.
    """
    lab = np.array(labels, dtype=np.int64)
    c6 = np.asarray(n6, dtype=float)
    c7 = np.asarray(n7, dtype=float)
    if lab.ndim != 2 or lab.shape != c6.shape or c6.shape != c7.shape:
        raise ValueError("labels and count maps must be 2-D maps of one shape")
    w6 = c6 if var6 is None else np.asarray(var6, dtype=float)
    w7 = c7 if var7 is None else np.asarray(var7, dtype=float)
    valid = np.isfinite(c6) & np.isfinite(c7)
    lab = np.where(valid, lab, 0)
    c6, c7 = np.where(valid, c6, 0.0), np.where(valid, c7, 0.0)
    w6, w7 = np.where(valid, w6, 0.0), np.where(valid, w7, 0.0)
    arrays = (c6, c7, w6, w7)
    out = np.asarray(labels).astype(np.int32, copy=True)
    n_seg = int(lab.max()) if lab.size else 0
    if n_seg == 0:
        return out, {}
    alpha = _normal_sf(significance)

    def labelled(lab_img, idx):
        sums = _segment_sums(lab_img, arrays, idx, exclude_contacts)
        _, p, _ = ratio_test(*sums, reference_ratio=reference_ratio,
                             systematic_rel=systematic_rel, label_ratio_min=label_ratio_min)
        return p < alpha

    r0 = reference_ratio
    seeds = (lab > 0) & (c6 > math.sqrt(r0 * label_ratio_min) * c7)
    excess = c6 - r0 * c7
    var = np.maximum(w6 + r0 * r0 * w7 + (systematic_rel * r0 * c7) ** 2, 1.0)
    grow = (lab > 0) & (excess > natural_sigma * np.sqrt(var))
    blobs = measure.label(seeds | grow, connectivity=2)
    if blobs.max() == 0:
        return out, {}
    seeded = np.unique(blobs[seeds])
    blobs = np.where(np.isin(blobs, seeded), blobs, 0)
    bidx = seeded[seeded > 0]
    sums = [ndimage.sum_labels(a, blobs, bidx) for a in arrays]
    _, p_nat, _ = ratio_test(*sums, reference_ratio=reference_ratio,
                             systematic_rel=systematic_rel, label_ratio_min=label_ratio_min)
    area = ndimage.sum_labels(np.ones(lab.shape), blobs, bidx)
    good = bidx[(p_nat < alpha) & (area >= min_area_px)]
    if good.size == 0:
        return out, {}
    total = c6 + c7
    sidx = np.arange(1, n_seg + 1)
    rest = np.where(np.isin(blobs, good), 0, lab)
    rest_counts = ndimage.sum_labels(total, rest, sidx)
    rest_area = ndimage.sum_labels(np.ones(lab.shape), rest, sidx)
    bkg = (estimate_background(np.where(valid, total, np.nan)) if background_counts is None
           else float(background_counts))
    cuttable = np.zeros(n_seg + 1, bool)
    cuttable[1:] = (~labelled(lab, sidx) & (rest_counts >= max(min_counts, 1.0))
                    & (rest_counts - bkg * rest_area
                       >= detection_sigma * np.sqrt(max(bkg, 1.0) * rest_area)))
    # Each blob's destination and the segments it cuts.
    moves = []
    nxt = n_seg + 1
    for k in good:
        m = (blobs == k) & cuttable[lab]
        if not m.any():
            continue
        segs = lab[blobs == k]
        keep = segs[~cuttable[segs]]
        if keep.size:
            u, inv = np.unique(keep, return_inverse=True)
            w = total[blobs == k][~cuttable[segs]]
            moves.append((m, int(u[np.argmax(np.bincount(inv, weights=w))]), None))
        else:
            u, inv = np.unique(segs, return_inverse=True)
            src = int(u[np.argmax(np.bincount(inv, weights=total[blobs == k]))])
            moves.append((m, nxt, src))
            nxt += 1
    active = [True] * len(moves)
    while True:
        new = np.where(valid, out, 0).astype(np.int64)
        for (m, dest, _), on in zip(moves, active, strict=True):
            if on:
                new[m] = dest
        cut = np.unique(np.concatenate(
            [lab[m] for (m, _, _), on in zip(moves, active, strict=True) if on] or [[0]]))
        cut = cut[cut > 0]
        bad = cut[labelled(new, cut)] if cut.size else cut
        if bad.size == 0:
            break
        for i, (m, _, _) in enumerate(moves):
            if active[i] and np.isin(lab[m], bad).any():
                active[i] = False
    split_from: dict[int, int] = {}
    nxt = n_seg + 1
    for (m, dest, src), on in zip(moves, active, strict=True):
        if not on:
            continue
        if src is not None:  # renumber the new segments after the ones put back
            split_from[nxt] = src
            dest, nxt = nxt, nxt + 1
        out[m] = dest
    return out, split_from


def classify(p_natural: float, p_label: float, *, significance: float = 5.0,
             natural_sigma: float = 3.0) -> tuple[str, float]:
    """Class and confidence from the two p-values (see :class:`Particle`).

    ``labelled`` if ``p_natural < norm.sf(significance)``; else ``natural`` if
    ``p_label < norm.sf(natural_sigma)`` and ``p_natural >= norm.sf(natural_sigma)``
    (label excluded and consistent with natural); else ``uncertain`` (e.g. a
    natural particle merged with an unresolved labelled one).
    """
    if not (math.isfinite(p_natural) and math.isfinite(p_label)):
        return "uncertain", 0.0
    if p_natural < _normal_sf(significance):
        return "labelled", 1.0 - p_natural
    alpha = _normal_sf(natural_sigma)
    if p_label < alpha and p_natural >= alpha:
        return "natural", 1.0 - p_label
    return "uncertain", max(1.0 - p_natural, 1.0 - p_label)


def find_particles(n6_counts, n7_counts, *, pixel_to_specimen=None,
                   dwell_s: float | None = None, dead_time_s: float = 0.0,
                   reference_ratio: float = NATURAL_LI6_LI7,
                   systematic_rel: float = DEFAULT_SYSTEMATIC_REL,
                   label_ratio_min: float = DEFAULT_LABEL_RATIO_MIN,
                   significance: float = 5.0, natural_sigma: float = 3.0,
                   smooth_sigma_px: float = 1.0, detection_sigma: float = 5.0,
                   h_sigma: float = 4.0, min_area_px: int = 1,
                   min_counts: float = 20.0, exclude_contacts: bool = True,
                   labels=None, split_labelled: bool = True,
                   correction=None, hydride=None, halo=None,
                   primary_current_pa: float | None = None,
                   trim_fraction: float = DEFAULT_TRIM_FRACTION) -> ParticleTable:
    """Segment the particles of a 6Li/7Li map pair and test each one's ratio.

    Parameters
    ----------
    n6_counts, n7_counts : array_like
        2-D count maps (numerator 6Li, denominator 7Li), NaN = not acquired.
    pixel_to_specimen : (3, 3) array_like or skimage transform, optional
        Affine ``(col, row, 1) -> (x_um, y_um, 1)`` (``SimsMapGeometry.affine_to_specimen()``);
        without it the specimen coordinates and radius in nm are None.
    dwell_s : float, optional
        Dwell per pixel (s); required when ``dead_time_s > 0``.
    dead_time_s : float
        Detector dead time (s), >= 0 (the spectrometer's DEAD_TIME: nominal 30 ns
        until ``calibrate_dead_time`` measured it). 0 skips the correction: at the
        MHz rates of bright particles the 7Li losses then bias natural ratios high by
        several per cent.
    reference_ratio : float
        Natural 6Li/7Li (LSVEC 0.08215).
    systematic_rel : float
        Relative systematic error of a ratio, combined with Poisson (default 3 %).
    label_ratio_min : float
        Smallest ratio that counts as labelled for the "natural" test (default 1).
    significance : float
        Labelled when natural is rejected at this many sigma (one-sided), > 0.
    natural_sigma : float
        Natural when ``label_ratio_min`` is rejected at this many sigma, > 0.
    smooth_sigma_px, detection_sigma, h_sigma, min_area_px, min_counts
        Segmentation, see :func:`segment_sims_particles`.
    exclude_contacts : bool
        Leave out of a particle's sums the pixels that touch another particle's
        segment (where the blurred neighbours overlap most: a labelled neighbour's
        6Li tail would bias a natural particle high), unless that leaves less than
        half of its counts. Only contacts where the other segment's pixel beside them
        holds a quarter of their expected 6Li or 7Li (:func:`_wing_contacts`) are
        left out: a small particle's peak pixel beside the empty far end of a
        neighbour's watershed basin is its own.
    labels : array_like of int, optional
        A label image to use instead of segmenting (e.g. from a TEM image mapped
        onto the SIMS grid); used as it is.
    split_labelled : bool
        After segmenting, cut labelled Li out of segments it shares with natural
        Li (:func:`split_labelled_segments`; the cuts are
        :attr:`ParticleTable.split_from`). Without it a small labelled particle
        merged with a large natural neighbour comes out ``uncertain``.
    correction : (float, float), optional
        ``(K, sigma_K)``: the 6Li/7Li mass-bias correction of standard bracketing
        (instrumental mass fractionation and collector yields,
        :func:`temsims.analysis.bracketing.bracketing_correction`). The 6Li counts
        are scaled by K before anything else (segments, cuts, ratios and tests all
        see corrected ratios), each ratio's ``sigma`` holds ``R sigma_K / K`` in
        quadrature, and the tests add ``sigma_K / K`` to ``systematic_rel``. Without
        it the ratios are as measured (biased by the IMF, a few per cent).
    hydride : (float, float), optional
        ``(h, sigma_h)``: the numerator's hydride ratio MH+/M+ (6LiH+/6Li+, measured at
        mass 8 against 7 on the natural pad: :func:`temsims.analysis.isotopes.hydride_ratio`).
        ``h N6`` is subtracted from N7 per pixel before anything else (variance
        ``h^2 V6``; ``(N6 sigma_h)^2`` on each particle's sum). Without it a labelled
        particle's 7Li holds its 6LiH+: its ratio is low by ``h R`` (2 % at R 19 and
        h 1e-3; decision 0039).
    halo : (float, float), optional
        ``(fraction, sigma_px)``: the probe's halo, the fraction of the current in a
        broad Gaussian of this sigma (map pixels; e.g. measured on the natural-Li
        pad's edge by ``measure_probe_halo``). Its share is subtracted from both
        dead-time corrected maps before anything else (:func:`subtract_halo`): a
        natural particle near a bright labelled one no longer picks up its 6Li, and
        a labelled one's ratio is no longer diluted by its natural neighbours.
        Without it each pixel holds a few per cent of its neighbourhood's counts.
    primary_current_pa : float, optional
        The primary current (pA; the aperture's): each pixel's counts are corrected
        for quasi-simultaneous arrival right after the dead time (``K = -ln(1 - P/I)``
        ions per primary ion from the pulses ``P`` of the pixel's ``I`` primary ions,
        :func:`temsims.analysis.isotopes.qsa_correct`; needs ``dwell_s``), before the
        halo, the hydride and ``correction``. Without it each isotope reads low by
        ``K/2``: a labelled particle's 6Li by ~0.3 % in the twin, which a natural
        pad's bracket does not cancel (its 7Li loses that, not its 6Li).

    trim_fraction : float
        With the split (``split_labelled``, segmenting here), each particle's counts
        are summed over the pixels of its segment where the smoothed total counts
        reach this fraction of the segment's peak, in [0, 1) (0: the whole segment).
        A small particle's watershed basin can reach far into a bright neighbour's
        wings and halo: there it sums more of the neighbour's (subtracted) 7Li than
        its own, and all of their counting noise (decision 0040, 2026-12-05
        amendment). Where a segment's contacts are kept (``exclude_contacts`` would
        lose more than half of its counts), those touching a brighter segment are
        still left out while a quarter remains: they hold its unsubtracted core wing.
        ``area_px``, the centroid and the segments are unchanged. A footprint left
        without 7Li by the halo's subtraction is summed over its whole segment
        (:attr:`ParticleTable.untrimmed`); a segment without 7Li has no ratio
        (:attr:`ParticleTable.no_ratio`).

    Returns
    -------
    ParticleTable
        Particles sorted by ``z``, the label image and the parameters.
    """
    n6 = _counts_array("n6_counts", n6_counts, ndim=2)
    n7 = _counts_array("n7_counts", n7_counts, ndim=2)
    if n6.shape != n7.shape:
        raise ValueError(f"maps differ in shape: {n6.shape} vs {n7.shape}")
    dead_time_s, dwell = _dead_time_args(dead_time_s, dwell_s)
    significance = _positive("significance", significance)
    natural_sigma = _positive("natural_sigma", natural_sigma)
    affine = _check_affine(pixel_to_specimen)
    correction = check_correction(correction)
    hydride = check_hydride(hydride)
    halo = check_halo(halo)
    if isinstance(trim_fraction, bool) or not isinstance(trim_fraction, (int, float)) or \
            not 0.0 <= trim_fraction < 1.0:
        raise ValueError(f"trim_fraction must be a number in [0, 1), got {trim_fraction!r}")
    trim_fraction = float(trim_fraction)
    ions = _primary_ions_arg(primary_current_pa, dwell_s)
    c6, v6 = _qsa(*_dead_time(n6, dwell, dead_time_s), ions)
    c7, v7 = _qsa(*_dead_time(n7, dwell, dead_time_s), ions)
    spill7 = np.zeros(n7.shape)
    if halo is not None:
        acquired = np.isfinite(c6) & np.isfinite(c7)
        c6, v6 = subtract_halo(c6, v6, acquired, halo)
        raw7 = c7
        c7, v7 = subtract_halo(c7, v7, acquired, halo)
        spill7 = raw7 - c7
    c7, v7 = subtract_hydride(c6, v6, c7, v7, hydride)
    measured_systematic = systematic_rel
    if correction is not None:
        c6, v6 = c6 * correction[0], v6 * correction[0] ** 2
        systematic_rel = corrected_systematic(systematic_rel, correction)
    valid = np.isfinite(c6) & np.isfinite(c7)
    total = np.where(valid, c6 + c7, np.nan)
    split_from: dict[int, int] = {}
    user_labels = labels is not None
    if labels is None:
        # The halo's subtraction leaves small negative dips; segmentation wants counts.
        labels = segment_sims_particles(np.clip(total, 0.0, None),
                                        smooth_sigma_px=smooth_sigma_px,
                                        detection_sigma=detection_sigma, h_sigma=h_sigma,
                                        min_area_px=min_area_px, min_counts=min_counts,
                                        channels=(np.where(valid, np.clip(c6, 0, None), 0.0),
                                                  np.where(valid, np.clip(c7, 0, None), 0.0)))
        if split_labelled:
            labels, split_from = split_labelled_segments(
                labels, np.where(valid, np.clip(c6, 0.0, None), np.nan),
                np.where(valid, np.clip(c7, 0.0, None), np.nan), v6, v7,
                reference_ratio=reference_ratio, systematic_rel=systematic_rel,
                label_ratio_min=label_ratio_min, significance=significance,
                natural_sigma=natural_sigma, detection_sigma=detection_sigma,
                min_area_px=min_area_px,
                min_counts=min_counts, exclude_contacts=exclude_contacts)
    else:
        labels = np.asarray(labels)
        if labels.shape != n6.shape or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError("labels must be an integer image of the maps' shape")
    params = {"reference_ratio": reference_ratio, "systematic_rel": measured_systematic,
              "correction_factor": None if correction is None else correction[0],
              "correction_sigma": None if correction is None else correction[1],
              "hydride_ratio": None if hydride is None else hydride[0],
              "hydride_sigma": None if hydride is None else hydride[1],
              "label_ratio_min": label_ratio_min, "significance_sigma": significance,
              "natural_sigma": natural_sigma, "dead_time_s": dead_time_s,
              "dwell_s": dwell_s, "smooth_sigma_px": smooth_sigma_px,
              "detection_sigma": detection_sigma, "h_sigma": h_sigma,
              "min_area_px": min_area_px, "min_counts": min_counts,
              "exclude_contacts": bool(exclude_contacts),
              "split_labelled": bool(split_labelled) and not user_labels,
              "halo_fraction": None if halo is None else halo[0],
              "halo_sigma_px": None if halo is None else halo[1],
              "primary_current_pa": primary_current_pa, "trim_fraction": trim_fraction}
    idx = np.unique(labels[labels > 0])
    if idx.size == 0:
        return ParticleTable((), labels, params)
    lab = np.where(valid, labels, 0)
    z0 = lambda a: np.where(valid, a, 0.0)  # noqa: E731
    aperture = None
    if trim_fraction > 0.0 and params["split_labelled"]:
        # Each particle's counts where its own footprint is: a small particle's
        # watershed basin can reach far into a bright neighbour's wings and halo, and
        # there it sums more of the neighbour's (subtracted) counts, and their noise,
        # than its own. The peak is the segment's own, away from its contacts (beside
        # a bright neighbour the wing outshines a small particle). One particle per
        # segment: labelled Li beside natural Li was cut apart above (without the
        # cut, or with given labels, whole segments).
        smooth = _smooth(np.clip(z0(total), 0.0, None), valid, smooth_sigma_px)
        inner = np.where(contact_pixels(labels), 0, lab)
        whole = np.zeros(int(lab.max()) + 1)
        whole[idx] = ndimage.maximum(smooth, lab, idx)
        peak = whole.copy()
        has_inner = ndimage.sum_labels(np.ones(lab.shape), inner, idx) > 0
        peak[idx[has_inner]] = ndimage.maximum(smooth, inner, idx[has_inner])
        aperture = smooth >= trim_fraction * peak[lab]
        own = whole[lab]
        brighter = np.zeros(lab.shape, bool)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if dr or dc:
                    other = ndimage.shift(lab, (dr, dc), order=0, mode="constant", cval=0)
                    brighter |= (other > 0) & (other != lab) & (whole[other] > own)
        brighter &= lab > 0
    # Only the contacts where a neighbour's counts can be are left out: a small
    # particle's peak pixel touching the empty far end of a bright neighbour's basin
    # is its own (left out, it took half of an 11 nm natural particle's counts).
    wing = _wing_contacts(labels, c6, c7) if exclude_contacts else None
    if aperture is not None and wing is not None:
        brighter &= wing
    arrays = [z0(a) for a in (c6, c7, v6, v7, spill7)]
    sums = _segment_sums(lab, arrays, idx, exclude_contacts, labels, aperture,
                         None if aperture is None else brighter, wing)
    # A ratio needs 7Li: where the footprint's halo-subtracted 7Li is gone, the whole
    # segment's counts are summed; with none there either, no ratio is measured.
    whole_sums = [ndimage.sum_labels(a, lab, idx) for a in arrays]
    untrimmed = (sums[1] <= 0.0) & (whole_sums[1] > 0.0)
    sums = [np.where(untrimmed, w, t) for w, t in zip(whole_sums, sums, strict=True)]
    no_ratio = ~(sums[1] > 0.0)
    area = ndimage.sum_labels(np.ones(labels.shape), labels, idx)
    centres = ndimage.center_of_mass(z0(total), lab, idx)
    # A labelled particle sharing its segment with a natural one sits where the 6Li
    # excess is, not where most of the counts are: labelled segments are placed there.
    excess = np.clip(z0(c6) - reference_ratio * z0(c7), 0.0, None)
    excess_sums = ndimage.sum_labels(excess, lab, idx)
    # A segment without excess divides 0 by 0 here; its NaN centre is never used.
    with np.errstate(invalid="ignore", divide="ignore"):
        excess_centres = ndimage.center_of_mass(excess, lab, idx)
    px_area_um2 = abs(float(np.linalg.det(affine[:2, :2]))) if affine is not None else None
    out = []
    for k, lab_k in enumerate(idx):
        # (a faint segment's halo-subtracted sum can dip below 0: then it is 0)
        s6, s7, w6, w7, spilled = (max(float(a[k]), 0.0) for a in sums)
        # The 6Li subtracted was measured (before K): sigma_h weighs on it as counted.
        w7 += hydride_sum_variance(s6 / (correction[0] if correction else 1.0), hydride)
        # The sums are corrected already; the correction adds its error (and the
        # systematic it was folded into above is the measured one again).
        reg = region_from_sums(s6, s7, w6, w7, n_pixels=int(area[k]),
                               reference_ratio=reference_ratio,
                               systematic_rel=measured_systematic,
                               label_ratio_min=label_ratio_min, correction=correction,
                               corrected=True)
        cls, conf = classify(reg.p_natural, reg.p_label, significance=significance,
                             natural_sigma=natural_sigma)
        use_excess = cls == "labelled" and excess_sums[k] > 0
        row, col = (float(v) for v in (excess_centres if use_excess else centres)[k])
        x = y = r_nm = None
        if affine is not None:
            x, y = (float(v) for v in (affine @ np.array([col, row, 1.0]))[:2])
            r_nm = 1000.0 * math.sqrt(area[k] * px_area_um2 / math.pi)
        out.append(Particle(label=int(lab_k), row=row, col=col, x_um=x, y_um=y,
                            area_px=int(area[k]), radius_px=math.sqrt(area[k] / math.pi),
                            radius_nm=r_nm, n6=s6, n7=s7, ratio=reg.ratio, sigma=reg.sigma,
                            sigma_total=reg.sigma_total, z=reg.z,
                            p_natural=reg.p_natural, p_label=reg.p_label,
                            classification=cls, confidence=float(conf),
                            halo_share=spilled / s7 if s7 > 0 else
                            (math.inf if spilled > 0 else 0.0)))
    out.sort(key=lambda p: -p.z if math.isfinite(p.z) else math.inf)
    return ParticleTable(tuple(out), labels, params, split_from,
                         tuple(int(v) for v in idx[untrimmed]),
                         tuple(int(v) for v in idx[no_ratio]))


__all__ = [
    "CLASSES",
    "Particle",
    "ParticleTable",
    "classify",
    "contact_pixels",
    "estimate_background",
    "find_particles",
    "segment_sims_particles",
    "segment_tem_particles",
    "split_labelled_segments",
    "subtract_halo",
    "check_halo",
]


def _normal_sf(z):
    """The standard normal's survival function (scipy.stats.norm.sf's own formula,
    without importing scipy.stats: ~1 s at a session's start)."""
    return special.ndtr(-np.asarray(z, dtype=float))
