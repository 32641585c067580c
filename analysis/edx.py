"""EDX spectrum quantification: energy axis, line families, peak areas, Cliff-Lorimer.

Pure numpy on arrays (no bluesky, ophyd, tiled or IOC imports): a spectrum is a
1-D array of counts per channel, a line scan an ``(n_points, n_channels)`` array.

Energy axis
    Channel ``i`` is centred on ``offset_ev + (i + 0.5) * ev_per_chan`` (the convention
    the EDX records: ``EDX:OFFSET_EV``, ``EDX:EV_PER_CHAN``, ``EDX:NCHAN``, and the
    channel centres ``EDX:ENERGY``). :class:`EnergyAxis` is built from either.

Line families
    The K, L or M lines of an element, their energies and relative intensities, come
    from ``xraydb`` (:func:`line_family`); nothing is hand-typed. :func:`choose_family`
    takes the highest-energy family that the beam excites (overvoltage >= 1.5) and
    whose strongest line lies inside the recorded energy range.

Peak areas (:func:`peak_areas`)
    A linear least-squares fit, per fit region, of one component per line family (its
    lines at the ``xraydb`` energies and relative intensities, each a Gaussian of the
    detector's Fano-limited width, integrated over each channel) plus a background
    ``(E_ref / E) x polynomial(E)`` (degree 1 spans the thin-target Kramers shape
    ``(E0 - E) / E`` exactly). Families whose windows overlap share a region, so
    overlaps such as Ni Kb under Cu Ka are separated rather than integrated into the
    wrong window. Linear (no start values, no divergence) and weighted with the
    Poisson variance of the fitted model, iterated three times (model-based weights
    avoid the low bias of weighting by the observed counts). Positions and widths are
    fixed: the energy calibration and the detector resolution are inputs.

Uncertainties and detection limit
    The covariance of the weighted fit is the Poisson uncertainty of each area
    (peak and background counting statistics together). The detection limit of an
    element is ``3 sigma`` of its area fitted on a spectrum without that element
    (the variance model with the element's component removed), converted to a
    minimum detectable atomic fraction through Cliff-Lorimer. Below it EDX does not
    see the element; between 3 and 10 ``sigma`` (the quantification limit) it sees it
    but the fraction is uncertain by more than 10 %.

Cliff-Lorimer (:func:`cliff_lorimer`)
    ``C_A / C_B = k_AB I_A / I_B`` in a thin film, so ``C_i = k_i I_i / sum_j k_j I_j``
    with ``k_i`` relative to a reference element (``k_ref = 1``). The k-factors are
    parameters (measured on standards, or computed); first-order error propagation.
    Absorption and fluorescence in the specimen are neglected (thin-film criterion).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import xraydb
from scipy import special

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
FAMILIES = ("K", "L", "M")
#: Lines weaker than this fraction of their family's strongest line are left out of
#: the family's window (they stay in its fitted shape).
MINOR_LINE_FRACTION = 0.01
#: Sigma multiples: detection limit (Currie-like 3 sigma) and quantification limit.
DETECTION_SIGMA = 3.0
QUANTIFICATION_SIGMA = 10.0


# ======================================================================================
# Energy axis and detector resolution
# ======================================================================================
@dataclass(frozen=True)
class EnergyAxis:
    """Channel layout: channel ``i`` is centred on ``offset_ev + (i + 0.5) * ev_per_chan``.

    Parameters
    ----------
    nchan
        Number of channels.
    ev_per_chan
        Channel width (eV), > 0.
    offset_ev
        Energy of the lower edge of channel 0 (eV).
    """

    nchan: int
    ev_per_chan: float
    offset_ev: float = 0.0

    def __post_init__(self) -> None:
        if int(self.nchan) != self.nchan or self.nchan < 2:
            raise ValueError(f"nchan must be an integer >= 2, got {self.nchan!r}")
        if not (math.isfinite(self.ev_per_chan) and self.ev_per_chan > 0):
            raise ValueError(f"ev_per_chan must be a positive number, got {self.ev_per_chan!r}")
        if not math.isfinite(self.offset_ev):
            raise ValueError(f"offset_ev must be finite, got {self.offset_ev!r}")

    @classmethod
    def from_centres(cls, energy_ev: Sequence[float] | np.ndarray, rtol: float = 1e-6) -> EnergyAxis:
        """The axis whose channel centres are ``energy_ev`` (as recorded, e.g. ``edx_energy``).

        Raises
        ------
        ValueError
            If the centres are not equally spaced and increasing.
        """
        e = np.asarray(energy_ev, dtype=float).ravel()
        if e.size < 2 or not np.all(np.isfinite(e)):
            raise ValueError("energy_ev must hold at least two finite channel centres")
        step = np.diff(e)
        gain = float(step.mean())
        if gain <= 0 or np.max(np.abs(step - gain)) > rtol * max(abs(e).max(), gain) + 1e-9:
            raise ValueError("energy_ev is not an increasing, linear channel axis")
        return cls(int(e.size), gain, float(e[0] - 0.5 * gain))

    @property
    def centres(self) -> np.ndarray:
        """Channel centres (eV)."""
        return self.offset_ev + (np.arange(self.nchan) + 0.5) * self.ev_per_chan

    @property
    def edges(self) -> np.ndarray:
        """Channel edges (eV), ``nchan + 1`` values."""
        return self.offset_ev + np.arange(self.nchan + 1) * self.ev_per_chan

    @property
    def range_ev(self) -> tuple[float, float]:
        """(lowest, highest) recorded energy (eV)."""
        return self.offset_ev, self.offset_ev + self.nchan * self.ev_per_chan

    def channel_of(self, energy_ev: float | np.ndarray) -> float | np.ndarray:
        """Fractional channel index whose centre is at ``energy_ev``."""
        return (np.asarray(energy_ev, dtype=float) - self.offset_ev) / self.ev_per_chan - 0.5


@dataclass(frozen=True)
class DetectorResolution:
    """Fano-limited energy resolution of a silicon detector.

    ``FWHM(E) = sqrt(noise^2 + 2.355^2 F w E)``, with the electronic noise set so that
    the FWHM at Mn Ka (from ``xraydb``) is ``fwhm_mn_ka_ev`` (the usual specification).
    """

    fwhm_mn_ka_ev: float = 130.0
    fano_factor: float = 0.115
    pair_energy_ev: float = 3.64

    def __post_init__(self) -> None:
        if not (self.fwhm_mn_ka_ev > 0 and self.fano_factor > 0 and self.pair_energy_ev > 0):
            raise ValueError("detector resolution parameters must be positive")

    def fwhm_ev(self, energy_ev: float | np.ndarray) -> np.ndarray:
        mn_ka = _mn_ka_ev()
        fano2 = FWHM_PER_SIGMA**2 * self.fano_factor * self.pair_energy_ev
        noise2 = max(self.fwhm_mn_ka_ev**2 - fano2 * mn_ka, 0.0)
        return np.sqrt(noise2 + fano2 * np.asarray(energy_ev, dtype=float))


@cache
def _mn_ka_ev() -> float:
    return float(xraydb.xray_lines("Mn")["Ka1"].energy)


# ======================================================================================
# Line families from xraydb
# ======================================================================================
@dataclass(frozen=True)
class LineFamily:
    """The K, L or M lines of one element.

    ``lines`` are ``(siegbahn_name, energy_ev, weight)`` with the weights (relative
    intensity within the initial level x fluorescence yield of that level) normalised
    to sum to 1, so a fitted amplitude is the area of the whole family. ``edge_ev`` is
    the lowest ionisation edge of the family's lines.
    """

    element: str
    family: str
    lines: tuple[tuple[str, float, float], ...]
    edge_ev: float

    @property
    def main_energy_ev(self) -> float:
        """Energy of the strongest line (eV)."""
        return max(self.lines, key=lambda ln: ln[2])[1]

    @property
    def energies_ev(self) -> np.ndarray:
        return np.array([ln[1] for ln in self.lines])

    @property
    def weights(self) -> np.ndarray:
        return np.array([ln[2] for ln in self.lines])

    def window_ev(self, resolution: DetectorResolution = DetectorResolution(),
                  n_fwhm: float = 1.5) -> tuple[float, float]:
        """Energy span of the family's significant lines, ``n_fwhm`` FWHM either side."""
        w = self.weights
        keep = w >= MINOR_LINE_FRACTION * w.max()
        e = self.energies_ev[keep]
        lo, hi = float(e.min()), float(e.max())
        return (lo - n_fwhm * float(resolution.fwhm_ev(lo)),
                hi + n_fwhm * float(resolution.fwhm_ev(hi)))

    def shape(self, axis: EnergyAxis, resolution: DetectorResolution = DetectorResolution()
              ) -> np.ndarray:
        """Counts per channel of a unit-area family (Gaussians integrated per channel)."""
        edges = axis.edges
        out = np.zeros(axis.nchan)
        for _, energy, weight in self.lines:
            sigma = float(resolution.fwhm_ev(energy)) / FWHM_PER_SIGMA
            cdf = 0.5 * special.erfc(-(edges - energy) / (sigma * math.sqrt(2.0)))
            out += weight * np.diff(cdf)
        return out


def _check_element(element: str) -> str:
    if not isinstance(element, str):
        raise ValueError(f"element must be a symbol string, got {element!r}")
    try:
        xraydb.atomic_number(element)
    except Exception:
        raise ValueError(f"unknown element {element!r}") from None
    return element


@cache
def line_family(element: str, family: str) -> LineFamily:
    """The ``family`` (``"K"``, ``"L"`` or ``"M"``) lines of ``element`` from ``xraydb``.

    Raises
    ------
    ValueError
        Unknown element or family, or an element without lines of that family.
    """
    _check_element(element)
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    lines = []
    edges = []
    for name, line in xraydb.xray_lines(element).items():
        level = line.initial_level
        if not level.startswith(family) or line.intensity <= 0:
            continue
        edge = xraydb.xray_edge(element, level)
        if edge is None or edge.fyield <= 0:
            continue
        lines.append((name, float(line.energy), float(line.intensity) * float(edge.fyield)))
        edges.append(float(edge.energy))
    if not lines:
        raise ValueError(f"{element} has no {family} lines in xraydb")
    total = sum(w for _, _, w in lines)
    lines = sorted(((n, e, w / total) for n, e, w in lines), key=lambda ln: ln[1])
    return LineFamily(element, family, tuple(lines), min(edges))


def choose_family(element: str, *, beam_kev: float, energy_range_ev: tuple[float, float],
                  min_overvoltage: float = 1.5, margin_ev: float = 200.0) -> str:
    """The line family to quantify ``element`` with.

    The highest-energy family (K, then L, then M) that the beam ionises with an
    overvoltage ``E0 / E_edge >= min_overvoltage`` and whose strongest line lies at
    least ``margin_ev`` inside ``energy_range_ev`` (the recorded range, e.g.
    :attr:`EnergyAxis.range_ev`). Higher-energy lines suffer least from absorption
    and overlaps, which is why K is preferred.

    Raises
    ------
    ValueError
        If no family qualifies.
    """
    _check_element(element)
    if not (beam_kev > 0):
        raise ValueError(f"beam_kev must be positive, got {beam_kev!r}")
    lo, hi = energy_range_ev
    for family in FAMILIES:
        try:
            fam = line_family(element, family)
        except ValueError:
            continue
        if beam_kev * 1000.0 / fam.edge_ev < min_overvoltage:
            continue
        if lo + margin_ev <= fam.main_energy_ev <= hi - margin_ev:
            return family
    raise ValueError(f"no K, L or M line of {element} is excited at {beam_kev:g} kV and "
                     f"inside {lo:g}..{hi:g} eV")


# ======================================================================================
# Peak areas: linear least squares of family shapes plus background
# ======================================================================================
@dataclass(frozen=True)
class PeakArea:
    """Fitted area of one line family (counts) with its Poisson uncertainty.

    ``blank_sigma`` is the uncertainty the area would have if the element were absent
    (what the detection limit is made of); ``region_ev`` the fit region.
    """

    element: str
    family: str
    area: float
    sigma: float
    blank_sigma: float
    region_ev: tuple[float, float]

    @property
    def detection_limit(self) -> float:
        """Smallest detectable area (counts): 3 x ``blank_sigma``."""
        return DETECTION_SIGMA * self.blank_sigma


@dataclass(frozen=True)
class _Region:
    lo_ev: float
    hi_ev: float
    channels: np.ndarray  # channel indices in the region
    components: tuple[tuple[str, str], ...]  # (element, family) fitted
    basis: np.ndarray  # (n_channels_region, n_components + n_background)


@dataclass(frozen=True)
class FitSetup:
    """Everything the least-squares fit needs, computed once for a spectrum layout.

    Build it with :func:`fit_setup`; reuse it for every spectrum of a line scan.
    """

    axis: EnergyAxis
    families: dict[str, str]
    regions: tuple[_Region, ...]
    resolution: DetectorResolution = field(default_factory=DetectorResolution)


def fit_setup(axis: EnergyAxis, elements: Sequence[str], *, beam_kev: float,
              families: Mapping[str, str] | None = None,
              resolution: DetectorResolution | None = None,
              background_degree: int = 1, margin_ev: float = 300.0) -> FitSetup:
    """Fit regions and basis functions for quantifying ``elements`` on ``axis``.

    Parameters
    ----------
    axis
        Energy axis of the spectra.
    elements
        Elements to quantify (at least one).
    beam_kev
        Beam energy (kV), for :func:`choose_family`.
    families
        Element -> family to use; the others are chosen by :func:`choose_family`.
    resolution
        Detector resolution (default: 130 eV at Mn Ka).
    background_degree
        Degree of the polynomial multiplying ``E_ref / E`` in the background (0..3).
    margin_ev
        Background-only margin added on each side of a region (eV).
    """
    elements = [_check_element(el) for el in elements]
    if not elements:
        raise ValueError("elements must name at least one element")
    if len(set(elements)) != len(elements):
        raise ValueError(f"elements must be distinct, got {elements}")
    if not (isinstance(background_degree, int) and 0 <= background_degree <= 3):
        raise ValueError(f"background_degree must be an integer 0..3, got {background_degree!r}")
    if not (margin_ev >= 0):
        raise ValueError(f"margin_ev must be >= 0, got {margin_ev!r}")
    resolution = resolution or DetectorResolution()
    families = dict(families or {})
    unknown = set(families) - set(elements)
    if unknown:
        raise ValueError(f"families given for elements not quantified: {sorted(unknown)}")
    lo_axis, hi_axis = axis.range_ev
    for el in elements:
        if el not in families:
            families[el] = choose_family(el, beam_kev=beam_kev, energy_range_ev=axis.range_ev)
    # Windows of the quantified families, merged where they overlap.
    windows = sorted((line_family(el, fam).window_ev(resolution), el) for el, fam in families.items())
    merged: list[list] = []
    for (lo, hi), el in windows:
        lo, hi = lo - margin_ev, hi + margin_ev
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
            merged[-1][2].append(el)
        else:
            merged.append([lo, hi, [el]])
    centres = axis.centres
    regions = []
    for lo, hi, _ in merged:
        lo, hi = max(lo, lo_axis), min(hi, hi_axis)
        channels = np.flatnonzero((centres >= lo) & (centres <= hi))
        # Every excited family of the given elements with a significant line here is a
        # component (the quantified ones and interfering ones, e.g. V L under O K).
        comps = []
        for el in elements:
            for fam in FAMILIES:
                try:
                    lf = line_family(el, fam)
                except ValueError:
                    continue
                if lf.edge_ev >= beam_kev * 1000.0:
                    continue
                w = lf.weights
                strong = lf.energies_ev[w >= MINOR_LINE_FRACTION * w.max()]
                if np.any((strong >= lo) & (strong <= hi)):
                    comps.append((el, fam))
        e = centres[channels]
        e_ref = 0.5 * (lo + hi)
        columns = [line_family(el, fam).shape(axis, resolution)[channels] for el, fam in comps]
        for k in range(background_degree + 1):
            columns.append((e_ref / e) * ((e - e_ref) / 1000.0) ** k)
        basis = np.stack(columns, axis=1)
        if channels.size <= basis.shape[1]:
            raise ValueError(f"fit region {lo:.0f}..{hi:.0f} eV has too few channels")
        regions.append(_Region(lo, hi, channels, tuple(comps), basis))
    return FitSetup(axis, families, tuple(regions), resolution)


def _weighted_fit(basis: np.ndarray, counts: np.ndarray, iterations: int = 3):
    """Poisson-weighted linear least squares; returns coefficients, covariance, model."""
    var = np.maximum(counts, 1.0)
    for _ in range(iterations):
        w = 1.0 / np.sqrt(var)
        coef, *_ = np.linalg.lstsq(basis * w[:, None], counts * w, rcond=None)
        model = basis @ coef
        var = np.maximum(model, 1.0)
    cov = np.linalg.pinv((basis / var[:, None]).T @ basis)
    return coef, cov, model


def _as_spectrum(counts, axis: EnergyAxis) -> np.ndarray:
    c = np.asarray(counts, dtype=float)
    if c.ndim != 1 or c.size != axis.nchan:
        raise ValueError(f"a spectrum must be 1-D with {axis.nchan} channels, got shape {c.shape}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError("a spectrum must hold finite, non-negative counts")
    return c


def peak_areas(counts: np.ndarray, setup: FitSetup) -> dict[str, PeakArea]:
    """Background-subtracted areas of the quantified families of one spectrum.

    Parameters
    ----------
    counts
        Counts per channel (1-D, ``setup.axis.nchan`` channels).
    setup
        From :func:`fit_setup`.

    Returns
    -------
    dict
        Element -> :class:`PeakArea` of its chosen family. Areas can be slightly
        negative where the element is absent (unbiased estimates, not clipped).
    """
    c = _as_spectrum(counts, setup.axis)
    out: dict[str, PeakArea] = {}
    for region in setup.regions:
        y = c[region.channels]
        coef, cov, model = _weighted_fit(region.basis, y)
        for j, (el, fam) in enumerate(region.components):
            if setup.families.get(el) != fam:
                continue
            # Uncertainty of this area on a spectrum without the element.
            blank_var = np.maximum(model - coef[j] * region.basis[:, j], 1.0)
            blank_cov = np.linalg.pinv((region.basis / blank_var[:, None]).T @ region.basis)
            out[el] = PeakArea(el, fam, float(coef[j]), float(math.sqrt(max(cov[j, j], 0.0))),
                               float(math.sqrt(max(blank_cov[j, j], 0.0))),
                               (region.lo_ev, region.hi_ev))
    return out


# ======================================================================================
# Cliff-Lorimer
# ======================================================================================
@dataclass(frozen=True)
class Composition:
    """Atomic fractions (summing to 1) and their 1-sigma uncertainties, per element.

    Values are floats for one spectrum, arrays for several.
    """

    fractions: dict[str, np.ndarray | float]
    sigma: dict[str, np.ndarray | float]


def _check_k_factors(elements: Sequence[str], k_factors: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(k_factors, Mapping) or not k_factors:
        raise ValueError("k_factors must be a non-empty mapping element -> k (relative to a "
                         "reference element, whose k is 1)")
    missing = [el for el in elements if el not in k_factors]
    if missing:
        raise ValueError(f"no k-factor for {missing}")
    out = {}
    for el in elements:
        k = k_factors[el]
        if not (isinstance(k, int | float | np.floating) and math.isfinite(k) and k > 0):
            raise ValueError(f"k-factor of {el} must be a positive number, got {k!r}")
        out[el] = float(k)
    return out


def cliff_lorimer(intensities: Mapping[str, float | np.ndarray],
                  k_factors: Mapping[str, float], *,
                  sigma: Mapping[str, float | np.ndarray] | None = None,
                  k_sigma: Mapping[str, float] | None = None) -> Composition:
    """Atomic fractions from line intensities: ``C_i = k_i I_i / sum_j k_j I_j``.

    Parameters
    ----------
    intensities
        Element -> background-subtracted family area (counts); floats or arrays of
        one shape (several spectra at once).
    k_factors
        Element -> Cliff-Lorimer factor relative to a reference element (``k_ref = 1``):
        ``C_A / C_ref = k_A I_A / I_ref``. Every element of ``intensities`` needs one.
    sigma
        Element -> 1-sigma uncertainty of the intensity (independent); default Poisson
        ``sqrt(max(I, 1))``.
    k_sigma
        Element -> 1-sigma uncertainty of its k-factor (default 0).

    Returns
    -------
    Composition
        Fractions summing to 1 and their first-order propagated uncertainties.

    Raises
    ------
    ValueError
        Missing or non-positive k-factors, mismatched shapes, non-finite intensities or
        a zero total.
    """
    if not isinstance(intensities, Mapping) or len(intensities) < 1:
        raise ValueError("intensities must be a non-empty mapping element -> counts")
    elements = list(intensities)
    k = _check_k_factors(elements, k_factors)
    arrays = {el: np.asarray(intensities[el], dtype=float) for el in elements}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"intensities must share one shape, got {sorted(shapes)}")
    if any(not np.all(np.isfinite(a)) for a in arrays.values()):
        raise ValueError("intensities must be finite")
    sig = {}
    for el in elements:
        if sigma is not None and el in sigma:
            s = np.broadcast_to(np.asarray(sigma[el], dtype=float), arrays[el].shape)
            if not np.all(np.isfinite(s)) or np.any(s < 0):
                raise ValueError(f"sigma of {el} must be finite and >= 0")
        else:
            s = np.sqrt(np.maximum(arrays[el], 1.0))
        sig[el] = s
    ks = {el: float((k_sigma or {}).get(el, 0.0)) for el in elements}
    x = {el: k[el] * arrays[el] for el in elements}
    var_x = {el: (k[el] * sig[el]) ** 2 + (ks[el] * arrays[el]) ** 2 for el in elements}
    total = sum(x.values())
    if np.any(total == 0):
        raise ValueError("the k-weighted intensities sum to zero: nothing to quantify")
    fractions = {el: x[el] / total for el in elements}
    sigmas = {}
    for i in elements:
        # dC_i/dx_j = (delta_ij - C_i) / S
        var = sum(((1.0 if i == j else 0.0) - fractions[i]) ** 2 * var_x[j] for j in elements)
        sigmas[i] = np.sqrt(var) / np.abs(total)
    scalar = arrays[elements[0]].ndim == 0
    if scalar:
        fractions = {el: float(v) for el, v in fractions.items()}
        sigmas = {el: float(v) for el, v in sigmas.items()}
    return Composition(fractions, sigmas)


# ======================================================================================
# Spectra and line scans
# ======================================================================================
@dataclass(frozen=True)
class EDXQuantification:
    """Quantified EDX data: per element arrays over the points (scalars for one spectrum).

    Attributes
    ----------
    fractions, sigma
        Atomic fraction and its 1-sigma uncertainty.
    detection_limit
        Minimum detectable atomic fraction (3 sigma of the blank area).
    quantification_limit
        Atomic fraction above which the relative uncertainty is below ~10 %
        (10 sigma of the blank area).
    detected
        ``fractions > detection_limit``.
    areas, area_sigma
        Fitted family areas (counts) and their uncertainties.
    families
        Element -> line family used.
    """

    fractions: dict[str, np.ndarray]
    sigma: dict[str, np.ndarray]
    detection_limit: dict[str, np.ndarray]
    quantification_limit: dict[str, np.ndarray]
    detected: dict[str, np.ndarray]
    areas: dict[str, np.ndarray]
    area_sigma: dict[str, np.ndarray]
    families: dict[str, str]

    @property
    def quantitative(self) -> dict[str, np.ndarray]:
        """``fractions > quantification_limit`` per element."""
        return {el: np.asarray(self.fractions[el]) > self.quantification_limit[el]
                for el in self.fractions}


def _limit_fraction(el: str, limit_area: np.ndarray, k: dict[str, float],
                    areas: dict[str, np.ndarray]) -> np.ndarray:
    """Atomic fraction of ``el`` that a family area of ``limit_area`` means in this
    spectrum: ``k_el A_lim / sum_j k_j I_j`` (at least ``A_lim`` for the element)."""
    x = k[el] * limit_area
    total = sum(k[j] * np.maximum(areas[j], 0.0) for j in k)
    total = np.maximum(total, x + sum(k[j] * np.maximum(areas[j], 0.0) for j in k if j != el))
    return np.divide(x, total, out=np.ones_like(x), where=total > 0)


def quantify_line_scan(spectra: np.ndarray, axis: EnergyAxis, k_factors: Mapping[str, float],
                       *, beam_kev: float, families: Mapping[str, str] | None = None,
                       resolution: DetectorResolution | None = None,
                       background_degree: int = 1,
                       k_sigma: Mapping[str, float] | None = None) -> EDXQuantification:
    """Cliff-Lorimer composition of each spectrum of a line scan.

    Parameters
    ----------
    spectra
        ``(n_points, n_channels)`` counts (a single 1-D spectrum is taken as one point).
    axis
        Energy axis (e.g. ``EnergyAxis.from_centres(edx_energy)``).
    k_factors
        Element -> k relative to a reference element (``k_ref = 1``); its keys are the
        elements quantified (they must be all the elements of the specimen: the
        fractions are normalised to 1 over them).
    beam_kev
        Beam energy (kV).
    families, resolution, background_degree
        See :func:`fit_setup`.
    k_sigma
        Element -> uncertainty of its k-factor.

    Returns
    -------
    EDXQuantification
        Arrays of length ``n_points`` per element.
    """
    s = np.asarray(spectra, dtype=float)
    if s.ndim == 1:
        s = s[None, :]
    if s.ndim != 2 or s.shape[1] != axis.nchan or s.shape[0] < 1:
        raise ValueError(f"spectra must be (n_points, {axis.nchan}), got shape {np.shape(spectra)}")
    elements = list(k_factors) if isinstance(k_factors, Mapping) else []
    k = _check_k_factors(elements, k_factors)
    setup = fit_setup(axis, elements, beam_kev=beam_kev, families=families,
                      resolution=resolution, background_degree=background_degree)
    n = s.shape[0]
    areas = {el: np.zeros(n) for el in elements}
    area_sigma = {el: np.zeros(n) for el in elements}
    blank = {el: np.zeros(n) for el in elements}
    for i in range(n):
        fitted = peak_areas(s[i], setup)
        for el in elements:
            areas[el][i] = fitted[el].area
            area_sigma[el][i] = fitted[el].sigma
            blank[el][i] = fitted[el].blank_sigma
    comp = cliff_lorimer(areas, k, sigma=area_sigma, k_sigma=k_sigma)
    dl = {el: _limit_fraction(el, DETECTION_SIGMA * blank[el], k, areas) for el in elements}
    ql = {el: _limit_fraction(el, QUANTIFICATION_SIGMA * blank[el], k, areas) for el in elements}
    detected = {el: np.asarray(comp.fractions[el]) > dl[el] for el in elements}
    return EDXQuantification(
        fractions={el: np.asarray(v) for el, v in comp.fractions.items()},
        sigma={el: np.asarray(v) for el, v in comp.sigma.items()},
        detection_limit=dl, quantification_limit=ql, detected=detected,
        areas=areas, area_sigma=area_sigma, families=dict(setup.families))


def quantify_spectrum(counts: np.ndarray, axis: EnergyAxis, k_factors: Mapping[str, float],
                      **kwargs) -> EDXQuantification:
    """:func:`quantify_line_scan` of one spectrum: every value is a length-1 array."""
    c = np.asarray(counts)
    if c.ndim != 1:
        raise ValueError(f"a spectrum must be 1-D, got shape {c.shape}")
    return quantify_line_scan(c[None, :], axis, k_factors, **kwargs)


__all__ = [
    "Composition",
    "DetectorResolution",
    "EDXQuantification",
    "EnergyAxis",
    "FitSetup",
    "LineFamily",
    "PeakArea",
    "choose_family",
    "cliff_lorimer",
    "fit_setup",
    "line_family",
    "peak_areas",
    "quantify_line_scan",
    "quantify_spectrum",
]
