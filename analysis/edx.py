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

Detector artefacts
    *Escape peaks*: every line's shape carries its Si escape peak, 1.74 keV low, with
    the Reed & Ware (1972) fraction (:func:`escape_fraction`), so a family's fitted
    area is the parent's whole count. *Sum peaks*: with the live time and the
    detector's pulse-pair resolving time ``tau`` the pile-up spectrum is estimated
    from the measured spectrum itself, ``tau / T (N * N)`` (:func:`sum_spectrum`), and
    subtracted before the fit (its counts stay in the variance). The loss of the
    parents (``2 R tau`` of every peak) is common to all lines: k-factors absorb it.

System peaks
    Cu K (grid, holder) and Fe K (pole piece) excited by scattered electrons appear in
    every spectrum, in a hole too. With ``system_elements`` (e.g. ``("Fe",)``) those
    families are fitted as components; with a *reference* spectrum taken in a hole
    (:class:`SystemReference`) the system part of each quantified element is
    subtracted: the reference gives the system spectrum's element ratios
    ``R_el = A_el / A_Fe`` and its hole level per electron; at each point the Fe
    (absent from the specimen) measures the system's size, pooled over the line as
    ``dose x hole level + s x continuum`` (the specimen-scattered part grows with the
    mass thickness, which the continuum follows). :func:`quantify_line_scan`.

Cliff-Lorimer (:func:`cliff_lorimer`)
    ``C_A / C_B = k_AB I_A / I_B`` in a thin film, so ``C_i = k_i I_i / sum_j k_j I_j``
    with ``k_i`` relative to a reference element (``k_ref = 1``). The k-factors are
    parameters (measured on standards, or computed); first-order error propagation.
    Absorption and fluorescence in the specimen are neglected (thin-film criterion):
    for Cu and Ni K lines in 100-200 nm of Cu-Ni the foil absorbs < 1 %, nearly alike
    for both, and a k-factor measured on a standard of similar thickness absorbs it
    (:func:`absorption_factor`; :func:`quantify_line_scan` with ``absorption=ThinFilm(rho_t)``
    corrects where it matters, e.g. O K in LiV3O8).
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
    """Fano-limited energy resolution of a silicon detector, and its escape peaks.

    ``FWHM(E) = sqrt(noise^2 + 2.355^2 F w E)``, with the electronic noise set so that
    the FWHM at Mn Ka (from ``xraydb``) is ``fwhm_mn_ka_ev`` (the usual specification).
    ``escape_peaks``: line shapes include the Si escape peak (:func:`escape_fraction`).
    """

    fwhm_mn_ka_ev: float = 130.0
    fano_factor: float = 0.115
    pair_energy_ev: float = 3.64
    escape_peaks: bool = True

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


@cache
def _si_ka_ev() -> float:
    return float(xraydb.xray_lines("Si")["Ka1"].energy)


def escape_fraction(energy_ev: float | np.ndarray) -> np.ndarray:
    """Fraction of photons of ``energy_ev`` in a Si detector's escape peak (Reed & Ware 1972).

    ``f = omega_K / 2 (1 - 1/r) [1 - (mu_K / mu_I) ln(1 + mu_I / mu_K)]``: Si K
    fluorescence yield, jump ratio, and Si photo-absorption of the photon (``mu_I``)
    and of Si Ka (``mu_K``) from ``xraydb``; 0 below the Si K edge (1.84 keV). About
    1.4 % at 1.9 keV, 0.6 % at 4.5 keV, 0.15 % at Cu Ka.
    """
    e = np.atleast_1d(np.asarray(energy_ev, dtype=float))
    edge = xraydb.xray_edge("Si", "K")
    out = np.zeros_like(e)
    above = e > edge.energy
    if above.any():
        mu_i = np.asarray(xraydb.mu_elam("Si", e[above], kind="photo"), dtype=float)
        mu_k = float(xraydb.mu_elam("Si", _si_ka_ev(), kind="photo"))
        out[above] = (0.5 * edge.fyield * (1.0 - 1.0 / edge.jump_ratio)
                      * (1.0 - (mu_k / mu_i) * np.log1p(mu_i / mu_k)))
    return out


def sum_spectrum(counts: np.ndarray, axis: EnergyAxis, *, live_time_s: float,
                 pulse_pair_time_s: float) -> np.ndarray:
    """Pile-up (sum) counts per channel expected in a spectrum of ``counts``.

    First order: pairs of photons closer than ``pulse_pair_time_s`` are one count at
    their summed energy, ``tau / T (N * N)`` (the self-convolution of the spectrum;
    channel centres ``c_i + c_j`` fall ``0.5 + offset / gain`` channels past ``i + j``,
    shared linearly). Estimated from the measured counts themselves. ``counts`` may
    be one spectrum or ``(n, nchan)`` spectra (each its own).

    Raises
    ------
    ValueError
        Non-positive live time or negative pulse-pair time.
    """
    if not (math.isfinite(live_time_s) and live_time_s > 0):
        raise ValueError(f"live_time_s must be positive, got {live_time_s!r}")
    if not (math.isfinite(pulse_pair_time_s) and pulse_pair_time_s >= 0):
        raise ValueError(f"pulse_pair_time_s must be >= 0, got {pulse_pair_time_s!r}")
    n = np.asarray(counts, dtype=float)
    two_d = np.atleast_2d(n)
    out = np.zeros_like(two_d)
    if pulse_pair_time_s == 0:
        return out.reshape(n.shape)
    nchan = two_d.shape[1]
    # Imported here: scipy.signal (with scipy.stats, ~1.6 s) at the top of this module
    # was paid by every process importing the plan library.
    from scipy import signal

    conv = np.clip(signal.fftconvolve(two_d, two_d, axes=1), 0.0, None)
    conv *= pulse_pair_time_s / live_time_s
    shift = 0.5 + axis.offset_ev / axis.ev_per_chan
    whole = math.floor(shift)
    frac = shift - whole
    for offset, weight in ((whole, 1.0 - frac), (whole + 1, frac)):
        if weight <= 0:
            continue
        # conv index j lands on channel j + offset
        lo, hi = max(offset, 0), min(conv.shape[1] + offset, nchan)
        if hi > lo:
            out[:, lo:hi] += weight * conv[:, lo - offset:hi - offset]
    return out.reshape(n.shape)


def absorption_factor(mu_rho_cm2_g: float | np.ndarray, mass_thickness_ug_cm2: float,
                      takeoff_deg: float = 20.0) -> np.ndarray:
    """Thin-film absorption ``A = (1 - exp(-chi rho t)) / (chi rho t)`` of a line whose
    mass attenuation in the specimen is ``mu_rho_cm2_g`` (e.g. ``xraydb.material_mu``
    / density), ``chi = mu/rho cosec(takeoff)``. Divide a measured area by ``A``
    (equivalently, multiply the k-factor ratio ``k_AB`` by ``A_B / A_A``)."""
    if not (mass_thickness_ug_cm2 >= 0 and 0 < takeoff_deg <= 90):
        raise ValueError("mass_thickness_ug_cm2 must be >= 0 and takeoff_deg in (0, 90]")
    x = (np.asarray(mu_rho_cm2_g, dtype=float) / math.sin(math.radians(takeoff_deg))
         * mass_thickness_ug_cm2 * 1e-6)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 1e-9, -np.expm1(-x) / x, 1.0)


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

        def gaussian(energy: float) -> np.ndarray:
            sigma = float(resolution.fwhm_ev(energy)) / FWHM_PER_SIGMA
            return np.diff(0.5 * special.erfc(-(edges - energy) / (sigma * math.sqrt(2.0))))

        out = np.zeros(axis.nchan)
        for _, energy, weight in self.lines:
            f = float(escape_fraction(energy)[0]) if resolution.escape_peaks else 0.0
            out += weight * (1.0 - f) * gaussian(energy)
            if f > 0:
                out += weight * f * gaussian(energy - _si_ka_ev())
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
    #: Fitted continuum counts in the fit region (a measure of the mass thickness).
    background: float = 0.0

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
    #: Element -> family fitted as system peaks (not quantified), e.g. {"Fe": "K"}.
    system: dict[str, str] = field(default_factory=dict)


def fit_setup(axis: EnergyAxis, elements: Sequence[str], *, beam_kev: float,
              families: Mapping[str, str] | None = None,
              resolution: DetectorResolution | None = None,
              background_degree: int = 1, margin_ev: float = 300.0,
              system_elements: Sequence[str] = ()) -> FitSetup:
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
    system_elements
        Elements of the column's system peaks absent from the specimen (e.g.
        ``("Fe",)`` for the pole piece): their family is fitted as a component
        (its window joins the regions) and reported by :func:`peak_areas`, not
        quantified.
    """
    elements = [_check_element(el) for el in elements]
    if isinstance(system_elements, str):
        raise ValueError(f"system_elements must be a sequence of symbols, got {system_elements!r}")
    system_elements = [_check_element(el) for el in system_elements]
    if set(system_elements) & set(elements):
        raise ValueError(f"system_elements {system_elements} must not be quantified elements")
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
    system = {el: choose_family(el, beam_kev=beam_kev, energy_range_ev=axis.range_ev)
              for el in system_elements}
    # Windows of the quantified and system families, merged where they overlap.
    windows = sorted((line_family(el, fam).window_ev(resolution), el)
                     for el, fam in {**families, **system}.items())
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
        for el in [*elements, *system_elements]:
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
    return FitSetup(axis, families, tuple(regions), resolution, system)


def _weighted_fit(basis: np.ndarray, counts: np.ndarray, iterations: int = 3,
                  extra_var: np.ndarray | float = 0.0):
    """Poisson-weighted linear least squares; returns coefficients, covariance, model.

    ``extra_var``: counts subtracted from the data beforehand (e.g. estimated sum
    peaks) that are still in its Poisson variance."""
    var = np.maximum(counts + extra_var, 1.0)
    for _ in range(iterations):
        w = 1.0 / np.sqrt(var)
        coef, *_ = np.linalg.lstsq(basis * w[:, None], counts * w, rcond=None)
        model = basis @ coef
        var = np.maximum(model + extra_var, 1.0)
    cov = np.linalg.pinv((basis / var[:, None]).T @ basis)
    return coef, cov, model


def _as_spectrum(counts, axis: EnergyAxis) -> np.ndarray:
    c = np.asarray(counts, dtype=float)
    if c.ndim != 1 or c.size != axis.nchan:
        raise ValueError(f"a spectrum must be 1-D with {axis.nchan} channels, got shape {c.shape}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError("a spectrum must hold finite, non-negative counts")
    return c


def peak_areas(counts: np.ndarray, setup: FitSetup, *,
               sum_counts: np.ndarray | None = None) -> dict[str, PeakArea]:
    """Background-subtracted areas of the quantified (and system) families of one spectrum.

    Parameters
    ----------
    counts
        Counts per channel (1-D, ``setup.axis.nchan`` channels).
    setup
        From :func:`fit_setup`.
    sum_counts
        Estimated pile-up counts per channel (:func:`sum_spectrum`), subtracted
        before the fit and kept in the variance.

    Returns
    -------
    dict
        Element -> :class:`PeakArea` of its chosen family (system elements too).
        Areas can be slightly negative where the element is absent (unbiased
        estimates, not clipped).
    """
    c = _as_spectrum(counts, setup.axis)
    piled = np.zeros_like(c) if sum_counts is None else np.asarray(sum_counts, dtype=float)
    if piled.shape != c.shape:
        raise ValueError(f"sum_counts must have the spectrum's shape {c.shape}")
    wanted = {**setup.families, **setup.system}
    out: dict[str, PeakArea] = {}
    for region in setup.regions:
        extra = piled[region.channels]
        y = c[region.channels] - extra
        coef, cov, model = _weighted_fit(region.basis, y, extra_var=extra)
        n_comp = len(region.components)
        background = float(np.sum(region.basis[:, n_comp:] @ coef[n_comp:]))
        for j, (el, fam) in enumerate(region.components):
            if wanted.get(el) != fam:
                continue
            # Uncertainty of this area on a spectrum without the element.
            blank_var = np.maximum(model + extra - coef[j] * region.basis[:, j], 1.0)
            blank_cov = np.linalg.pinv((region.basis / blank_var[:, None]).T @ region.basis)
            out[el] = PeakArea(el, fam, float(coef[j]), float(math.sqrt(max(cov[j, j], 0.0))),
                               float(math.sqrt(max(blank_cov[j, j], 0.0))),
                               (region.lo_ev, region.hi_ev), background)
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
    system
        The system-peak subtraction, if a reference was given.
    """

    fractions: dict[str, np.ndarray]
    sigma: dict[str, np.ndarray]
    detection_limit: dict[str, np.ndarray]
    quantification_limit: dict[str, np.ndarray]
    detected: dict[str, np.ndarray]
    areas: dict[str, np.ndarray]
    area_sigma: dict[str, np.ndarray]
    families: dict[str, str]
    system: SystemCorrection | None = None

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


@dataclass(frozen=True)
class ThinFilm:
    """What the thin-film absorption correction needs: the foil's mass thickness along
    the beam (ug/cm^2; one value, or one per point) and the detector's take-off angle.

    The correction divides each family's area by
    ``A = sum_lines w (1 - exp(-chi rho t)) / (chi rho t)``,
    ``chi = (mu/rho)_specimen(E_line) cosec(takeoff)``, the specimen's mass attenuation
    from ``xraydb.mu_elam`` of the quantified elements at their fitted mass fractions
    (iterated: the composition sets the absorption). Elements not quantified (e.g. Li)
    are left out of ``mu/rho``.
    """

    mass_thickness_ug_cm2: float | Sequence[float]
    takeoff_deg: float = 20.0

    def __post_init__(self) -> None:
        rho_t = np.asarray(self.mass_thickness_ug_cm2, dtype=float)
        if not (np.all(np.isfinite(rho_t)) and np.all(rho_t >= 0)):
            raise ValueError("mass_thickness_ug_cm2 must be finite and >= 0")
        if not (0 < self.takeoff_deg <= 90):
            raise ValueError(f"takeoff_deg must be in (0, 90], got {self.takeoff_deg!r}")


def _absorption_corrected(areas: dict[str, np.ndarray], k: dict[str, float],
                          families: Mapping[str, str], film: ThinFilm,
                          iterations: int = 4) -> dict[str, np.ndarray]:
    """Per element, the factor ``A`` (n,) its family's area is divided by."""
    elements = list(areas)
    n = next(iter(areas.values())).shape[0]
    rho_t = np.broadcast_to(np.asarray(film.mass_thickness_ug_cm2, dtype=float), (n,)) * 1e-6
    cosec = 1.0 / math.sin(math.radians(film.takeoff_deg))
    mass = {el: float(xraydb.atomic_mass(el)) for el in elements}
    fams = {el: line_family(el, families[el]) for el in elements}
    # mu/rho of each absorber at each emitter's lines: (n_lines,)
    mu = {(ab, em): np.asarray(xraydb.mu_elam(ab, fams[em].energies_ev), dtype=float)
          for ab in elements for em in elements}
    factors = {el: np.ones(n) for el in elements}
    for _ in range(iterations):
        corrected = {el: np.maximum(areas[el], 0.0) / factors[el] for el in elements}
        x = {el: k[el] * corrected[el] for el in elements}  # ~ atom fractions
        total_mass = sum(x[el] * mass[el] for el in elements)
        safe = np.where(total_mass > 0, total_mass, 1.0)
        w = {el: x[el] * mass[el] / safe for el in elements}  # mass fractions (n,)
        for em in elements:
            mix = sum(w[ab][:, None] * mu[(ab, em)][None, :] for ab in elements)
            chi = mix * cosec * rho_t[:, None]
            with np.errstate(divide="ignore", invalid="ignore"):
                a = np.where(chi > 1e-9, -np.expm1(-chi) / chi, 1.0)
            factors[em] = a @ fams[em].weights
    return factors


@dataclass(frozen=True)
class SystemReference:
    """A spectrum of the column's system peaks alone, taken where there is no specimen
    (a hole, beyond the lamella's edge) with the beam of the analysis.

    Parameters
    ----------
    counts
        The spectrum (1-D counts per channel, the axis of the spectra it corrects).
    electrons
        Its dose (beam current x live time / e).
    live_time_s
        Its live time (for its own sum peaks; tiny in a hole).
    """

    counts: np.ndarray
    electrons: float
    live_time_s: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.electrons) and self.electrons > 0):
            raise ValueError(f"SystemReference.electrons must be positive, got {self.electrons!r}")


@dataclass(frozen=True)
class SystemCorrection:
    """What :func:`quantify_line_scan` subtracted as system peaks (JSON-able by ``record``).

    ``ratios``: element -> system area per unit of the indicator's area (from the
    reference); ``hole_per_electron``: the indicator's area per electron in the hole;
    ``per_background``: its specimen-scattered part per count of continuum (pooled
    over the line); ``subtracted``: element -> counts removed per point.
    """

    indicator: str
    ratios: dict[str, float]
    ratio_sigma: dict[str, float]
    hole_per_electron: float
    per_background: float
    subtracted: dict[str, np.ndarray]

    def record(self) -> dict:
        return {"indicator": self.indicator, "ratios": dict(self.ratios),
                "ratio_sigma": dict(self.ratio_sigma),
                "hole_per_electron": self.hole_per_electron,
                "per_background": self.per_background,
                "subtracted_median": {el: float(np.median(v)) for el, v in self.subtracted.items()}}


def _fit_all(s: np.ndarray, setup: FitSetup, live_time_s, pulse_pair_time_s):
    n = s.shape[0]
    names = [*setup.families, *setup.system]
    out = {key: {el: np.zeros(n) for el in names} for key in ("area", "sigma", "blank", "bg")}
    piled = None
    if live_time_s is not None and pulse_pair_time_s:
        piled = sum_spectrum(s, setup.axis, live_time_s=live_time_s,
                             pulse_pair_time_s=pulse_pair_time_s)
    for i in range(n):
        fitted = peak_areas(s[i], setup, sum_counts=None if piled is None else piled[i])
        for el in names:
            out["area"][el][i] = fitted[el].area
            out["sigma"][el][i] = fitted[el].sigma
            out["blank"][el][i] = fitted[el].blank_sigma
            out["bg"][el][i] = fitted[el].background
    return out


#: A reference with more continuum per electron than this fraction of the line's was
#: taken on the specimen (a hole has next to none).
MAX_REFERENCE_CONTINUUM = 0.1


def _check_off_specimen(ref: dict, fits: dict, element: str, ref_electrons: float,
                        electrons: np.ndarray) -> None:
    line = float(np.median(fits["bg"][element] / electrons))
    here = float(ref["bg"][element][0]) / ref_electrons
    if line > 0 and here > MAX_REFERENCE_CONTINUUM * line:
        raise ValueError(f"the system reference holds {100 * here / line:.0f} % of the line's "
                         "continuum per electron: it was not taken off the specimen (a hole, "
                         "beyond the lamella's edge)")


def _system_correction(fits: dict, elements: list[str], setup: FitSetup,
                       reference: SystemReference, electrons: np.ndarray, indicator: str,
                       pulse_pair_time_s: float) -> tuple[SystemCorrection, dict, dict]:
    """System counts per point and their variance for each quantified element."""
    ref = _fit_all(_as_spectrum(reference.counts, setup.axis)[None, :], setup,
                   reference.live_time_s, pulse_pair_time_s)
    _check_off_specimen(ref, fits, indicator, reference.electrons, electrons)
    a_ind, s_ind = float(ref["area"][indicator][0]), float(ref["sigma"][indicator][0])
    if not a_ind > 3.0 * s_ind:
        raise ValueError(f"the system reference shows no {indicator} peak above 3 sigma "
                         f"({a_ind:.1f} +- {s_ind:.1f} counts): no system correction possible")
    ratios = {el: float(ref["area"][el][0]) / a_ind for el in elements}
    ratio_sigma = {el: abs(ratios[el]) * math.hypot(float(ref["sigma"][el][0])
                                                    / max(abs(float(ref["area"][el][0])), 1e-12),
                                                    s_ind / a_ind)
                   for el in elements}
    # The ratio's own error where the element's reference area is ~0 (not relative).
    ratio_sigma = {el: max(ratio_sigma[el], float(ref["sigma"][el][0]) / a_ind)
                   for el in elements}
    hole = a_ind / reference.electrons
    hole_var = (s_ind / reference.electrons) ** 2
    fe, bg = fits["area"][indicator], fits["bg"][indicator]
    # The specimen-scattered part: the indicator beyond the hole's share, proportional
    # to the continuum (mass thickness), pooled over the points. Weighted by 1 / the
    # continuum (the indicator's variance is the counts under it): the fit's own sigma
    # grows with the fitted area, which favoured the points whose indicator fluctuated
    # low (a few counts per point: -20 % on the system Cu).
    w = 1.0 / np.maximum(bg, 1.0)
    excess = fe - electrons * hole
    denom = float(np.sum(w * bg**2))
    slope = float(np.sum(w * excess * bg) / denom) if denom > 0 else 0.0
    slope_var = float(1.0 / denom) if denom > 0 else 0.0
    predicted = electrons * hole + slope * bg
    predicted_var = electrons**2 * hole_var + bg**2 * slope_var
    counts, var = {}, {}
    for el in elements:
        counts[el] = ratios[el] * predicted
        var[el] = (predicted * ratio_sigma[el]) ** 2 + ratios[el] ** 2 * predicted_var
    corr = SystemCorrection(indicator, ratios, ratio_sigma, hole, slope, counts)
    return corr, counts, var


def quantify_line_scan(spectra: np.ndarray, axis: EnergyAxis, k_factors: Mapping[str, float],
                       *, beam_kev: float, families: Mapping[str, str] | None = None,
                       resolution: DetectorResolution | None = None,
                       background_degree: int = 1,
                       k_sigma: Mapping[str, float] | None = None,
                       live_time_s: float | None = None, pulse_pair_time_s: float = 0.0,
                       system_elements: Sequence[str] = (),
                       system_reference: SystemReference | None = None,
                       electrons: float | Sequence[float] | None = None,
                       system_indicator: str | None = None,
                       absorption: ThinFilm | None = None) -> EDXQuantification:
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
    families, resolution, background_degree, system_elements
        See :func:`fit_setup`.
    k_sigma
        Element -> uncertainty of its k-factor.
    live_time_s, pulse_pair_time_s
        Live time per spectrum (s) and the detector's pulse-pair resolving time (s):
        the estimated sum peaks (:func:`sum_spectrum`) are subtracted. Either
        missing or 0: no pile-up correction.
    system_reference
        A spectrum of the system peaks alone (:class:`SystemReference`): the
        quantified elements' system counts are subtracted (needs ``electrons``).
    electrons
        Dose of each spectrum (one number for all, or one per point).
    system_indicator
        System element absent from the specimen that measures the system's size at
        each point (default the first of ``system_elements``; none: the reference is
        only scaled by dose).
    absorption
        Correct the areas for absorption in a foil of this mass thickness
        (:class:`ThinFilm`): needed for soft lines (O K in 80 nm of LiV3O8: 30 %);
        for Cu and Ni K in 100-200 nm < 1 %, which k-factors from a standard of similar
        thickness absorb. The k-factors are then those of a thin (absorption-free) film.

    Returns
    -------
    EDXQuantification
        Arrays of length ``n_points`` per element; ``system`` says what was subtracted.
    """
    s = np.asarray(spectra, dtype=float)
    if s.ndim == 1:
        s = s[None, :]
    if s.ndim != 2 or s.shape[1] != axis.nchan or s.shape[0] < 1:
        raise ValueError(f"spectra must be (n_points, {axis.nchan}), got shape {np.shape(spectra)}")
    elements = list(k_factors) if isinstance(k_factors, Mapping) else []
    k = _check_k_factors(elements, k_factors)
    if live_time_s is not None and not (math.isfinite(live_time_s) and live_time_s > 0):
        raise ValueError(f"live_time_s must be positive, got {live_time_s!r}")
    if not (math.isfinite(pulse_pair_time_s) and pulse_pair_time_s >= 0):
        raise ValueError(f"pulse_pair_time_s must be >= 0, got {pulse_pair_time_s!r}")
    setup = fit_setup(axis, elements, beam_kev=beam_kev, families=families,
                      resolution=resolution, background_degree=background_degree,
                      system_elements=system_elements)
    n = s.shape[0]
    fits = _fit_all(s, setup, live_time_s, pulse_pair_time_s)
    areas = {el: fits["area"][el] for el in elements}
    area_sigma = {el: fits["sigma"][el] for el in elements}
    blank = {el: fits["blank"][el] for el in elements}
    correction = None
    if system_reference is not None:
        if electrons is None:
            raise ValueError("a system_reference needs the electrons (dose) of the spectra")
        dose = np.broadcast_to(np.asarray(electrons, dtype=float), (n,)).copy()
        if not np.all(np.isfinite(dose) & (dose > 0)):
            raise ValueError("electrons must be positive")
        indicator = system_indicator or (setup.system and next(iter(setup.system))) or None
        if indicator is not None and indicator not in setup.system:
            raise ValueError(f"system_indicator {indicator!r} is not among system_elements "
                             f"{list(setup.system)}")
        if indicator is None:
            ref = _fit_all(_as_spectrum(system_reference.counts, axis)[None, :], setup,
                           system_reference.live_time_s, pulse_pair_time_s)
            _check_off_specimen(ref, fits, elements[0], system_reference.electrons, dose)
            scale = dose / system_reference.electrons
            sub = {el: float(ref["area"][el][0]) * scale for el in elements}
            sub_var = {el: (float(ref["sigma"][el][0]) * scale) ** 2 for el in elements}
            correction = SystemCorrection("dose", {}, {}, 0.0, 0.0, sub)
        else:
            correction, sub, sub_var = _system_correction(
                fits, elements, setup, system_reference, dose, indicator, pulse_pair_time_s)
        for el in elements:
            areas[el] = areas[el] - sub[el]
            area_sigma[el] = np.sqrt(area_sigma[el] ** 2 + sub_var[el])
            blank[el] = np.sqrt(blank[el] ** 2 + sub_var[el])
    if absorption is not None:
        shape = np.shape(absorption.mass_thickness_ug_cm2)
        if shape not in ((), (n,)):
            raise ValueError(f"absorption.mass_thickness_ug_cm2 must be one value or {n}, "
                             f"got shape {shape}")
        factors = _absorption_corrected(areas, k, setup.families, absorption)
        areas = {el: areas[el] / factors[el] for el in elements}
        area_sigma = {el: area_sigma[el] / factors[el] for el in elements}
        blank = {el: blank[el] / factors[el] for el in elements}
    comp = cliff_lorimer(areas, k, sigma=area_sigma, k_sigma=k_sigma)
    dl = {el: _limit_fraction(el, DETECTION_SIGMA * blank[el], k, areas) for el in elements}
    ql = {el: _limit_fraction(el, QUANTIFICATION_SIGMA * blank[el], k, areas) for el in elements}
    detected = {el: np.asarray(comp.fractions[el]) > dl[el] for el in elements}
    return EDXQuantification(
        fractions={el: np.asarray(v) for el, v in comp.fractions.items()},
        sigma={el: np.asarray(v) for el, v in comp.sigma.items()},
        detection_limit=dl, quantification_limit=ql, detected=detected,
        areas=areas, area_sigma=area_sigma, families=dict(setup.families),
        system=correction)


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
    "SystemCorrection",
    "SystemReference",
    "ThinFilm",
    "absorption_factor",
    "choose_family",
    "cliff_lorimer",
    "escape_fraction",
    "fit_setup",
    "line_family",
    "peak_areas",
    "quantify_line_scan",
    "quantify_spectrum",
    "sum_spectrum",
]
