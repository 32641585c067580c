"""X-ray (EDX) spectrum model of a thin specimen under a focused electron probe.

Counts in a spectrum acquired for ``n_e`` electrons on a point of the specimen::

    N(channel) = n_e * [ sum_el n_el * T_el(channel) + (sum_el n_el Z_el^2) * B(channel) ]

with ``n_el`` the areal density of element ``el`` along the beam (atoms/nm^2, from
:meth:`temsims.ioc.physics.specimen.Specimen.areal_density_per_nm2`), then Poisson noise.

Characteristic lines (``T_el``)
    Every K, L and M line of the element listed by ``xraydb`` (energies, relative
    intensities within the initial level, fluorescence yields of that level; nothing
    hand-typed). The photons a line gives per electron and per atom are::

        sigma_shell(E0) * omega_shell * intensity_line * eps(E_line) * Omega / 4 pi

    ``sigma_shell`` is the Bethe ionisation cross-section with Powell's constants
    (:func:`ionisation_cross_section_cm2`), ``eps`` the detector efficiency (window,
    dead layer and crystal absorption from ``xraydb.material_mu``), ``Omega`` the
    collection solid angle. Each line is a Gaussian of the Fano-limited width
    (:meth:`DetectorParameters.fwhm_ev`), integrated over each channel so that the
    channel sum of a peak is its area. Fluorescence inside the thin specimen is
    neglected.

Detector artefacts (silicon drift detector)
    *Escape peaks*: a photon above the Si K edge that ionises a Si K shell near the
    crystal's entrance may lose the Si Ka photon: a fraction :func:`escape_fraction`
    (Reed & Ware 1972) of each line is recorded 1.74 keV low (0.15 % at Cu Ka, 1.4 % at
    1.9 keV). *Pile-up*: two photons within the pulse-pair resolving time
    ``tau_pp`` (:attr:`DetectorParameters.pulse_pair_time_s`) are recorded as one of
    their summed energy; to first order the sum spectrum is ``tau_pp / T (N * N)``
    (the spectrum's self-convolution, :func:`pileup`), ``R tau_pp`` of the counts, and
    each piled pair leaves its two parents: pairs grow as the current squared.

Absorption (thin film)
    Each line (and the continuum) leaving a foil of mass thickness ``rho t`` towards
    a detector at take-off angle ``alpha`` is attenuated by
    ``A = (1 - exp(-chi rho t)) / (chi rho t)``, ``chi = (mu / rho)_specimen cosec alpha``
    (generation uniform in depth; mass attenuation from ``xraydb.mu_elam``, Elam's
    tables). Soft lines suffer (O K in LiV3O8), Cu and Ni K hardly (< 1 % at 100 nm).

System peaks (:class:`SystemPeaks`)
    Electrons scattered by the specimen, and the probe's tail in a hole, excite the
    Cu grid and holder and the Fe pole piece: a spurious Cu K + Fe K spectrum
    proportional to the dose, with a part present in a hole and a part growing with
    the specimen's mass thickness.

Beam broadening (:func:`broadening_nm`)
    The probe spreads through the foil (single scattering, Goldstein 1977):
    ``b = 7.21e5 (Z / E0) (rho / A)^(1/2) t^(3/2)`` cm (E0 in eV, t in cm), the
    diameter holding 90 % of the electrons at depth t. :func:`areal_densities_at`
    averages the composition over a Gaussian of the depth-averaged spread.

Bremsstrahlung (``B``)
    Kramers' law for a thin target: photons per electron, per atom and per unit
    energy ``(16/3) alpha r_e^2 L Z^2 (E0 - E) / (E E0)``, times ``eps * Omega/4 pi``,
    with ``L`` a logarithmic factor of order a few (:data:`DetectorParameters.brems_log_factor`).

Cliff-Lorimer
    The detected counts of a line family per electron and per atom/nm^2 are
    :meth:`EDXModel.sensitivity` ``S_el``; then ``I_A / I_B = (n_A S_A) / (n_B S_B)``
    and ``C_A / C_B = k_AB I_A / I_B`` with ``k_AB = S_B / S_A``
    (:meth:`EDXModel.k_factor`). Tests compute expected ratios from these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import xraydb
from scipy import signal, special

from temsims.ioc.physics.materials import AVOGADRO, ELEMENTARY_CHARGE_C, atomic_number
from temsims.ioc.physics.specimen import Specimen

#: Electrons per shell of each initial level (used by the Bethe cross-section).
SHELL_ELECTRONS: dict[str, int] = {
    "K": 2, "L1": 2, "L2": 2, "L3": 4, "M1": 2, "M2": 2, "M3": 4, "M4": 4, "M5": 6,
}
#: Powell's constants (b, c) of the Bethe cross-section per shell family (estimates
#: for L and M, where the literature values scatter).
BETHE_CONSTANTS: dict[str, tuple[float, float]] = {
    "K": (0.9, 0.65), "L": (0.6, 0.6), "M": (0.5, 0.6),
}
FINE_STRUCTURE = 7.2973525693e-3
CLASSICAL_ELECTRON_RADIUS_CM = 2.8179403262e-13
NM2_PER_CM2 = 1e14
#: Si Ka, the photon an escape event loses (eV).
SI_KA_EV = float(xraydb.xray_lines("Si")["Ka1"].energy)
#: Diameter holding 90 % of a 2-D Gaussian, in units of its sigma: 2 sqrt(2 ln 10).
B90_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(10.0))


@cache
def _atomic_mass(symbol: str) -> float:
    """Standard atomic weight (u); cached: ``xraydb.atomic_mass`` scans its table."""
    return float(xraydb.atomic_mass(symbol))


def escape_fraction(energy_ev: np.ndarray | float) -> np.ndarray:
    """Fraction of photons of ``energy_ev`` recorded in the Si escape peak.

    Reed & Ware (1972), a detector thick enough to stop the photon, normal incidence:
    ``f = omega_K / 2 (1 - 1/r) [1 - (mu_K / mu_I) ln(1 + mu_I / mu_K)]`` with the Si K
    fluorescence yield ``omega_K`` and jump ratio ``r``, ``mu_I`` and ``mu_K`` the Si
    photo-absorption of the photon and of Si Ka (``xraydb``). 0 below the Si K edge.
    """
    e = np.atleast_1d(np.asarray(energy_ev, dtype=float))
    edge = xraydb.xray_edge("Si", "K")
    out = np.zeros_like(e)
    above = e > edge.energy
    if above.any():
        mu_i = np.asarray(xraydb.mu_elam("Si", e[above], kind="photo"), dtype=float)
        mu_k = float(xraydb.mu_elam("Si", SI_KA_EV, kind="photo"))
        out[above] = (0.5 * edge.fyield * (1.0 - 1.0 / edge.jump_ratio)
                      * (1.0 - (mu_k / mu_i) * np.log1p(mu_i / mu_k)))
    return out


def pileup(spectrum: np.ndarray, axis: EnergyAxis, live_time_s: float,
           pulse_pair_time_s: float) -> np.ndarray:
    """The spectrum with first-order pile-up: each pair within ``pulse_pair_time_s``
    becomes one count at the sum energy.

    ``N' = N (1 - 2 R tau) + tau / T (N * N)`` with ``R = sum N / T``; sums beyond the
    axis are lost. Channel centres ``c_i + c_j`` fall ``0.5 + offset / gain`` channels
    past channel ``i + j``: the self-convolution is shared between the two channels
    there (linear interpolation).
    """
    n = np.asarray(spectrum, dtype=float)
    if pulse_pair_time_s <= 0 or live_time_s <= 0 or n.sum() <= 0:
        return n.copy()
    rate = n.sum() / live_time_s
    conv = signal.fftconvolve(n, n)
    conv = np.clip(conv, 0.0, None) * (pulse_pair_time_s / live_time_s)
    shift = 0.5 + axis.offset_ev / axis.ev_per_chan
    whole = math.floor(shift)
    frac = shift - whole
    summed = np.zeros(n.size)
    for offset, weight in ((whole, 1.0 - frac), (whole + 1, frac)):
        if weight <= 0:
            continue
        # convolution index j lands on channel j + offset
        lo, hi = max(offset, 0), min(conv.size + offset, n.size)
        if hi > lo:
            summed[lo:hi] += weight * conv[lo - offset:hi - offset]
    return n * max(1.0 - 2.0 * rate * pulse_pair_time_s, 0.0) + summed


def broadening_nm(thickness_nm: float, z: float, a: float, density_g_cm3: float,
                  e0_ev: float) -> float:
    """Beam spread ``b`` (nm) at depth ``thickness_nm``: 90 % of the electrons within it.

    Single scattering (Goldstein et al. 1977; Williams & Carter ch. 36):
    ``b = 7.21e5 (Z / E0) (rho / A)^(1/2) t^(3/2)`` cm with E0 in eV, rho in g/cm^3,
    t in cm.
    """
    if thickness_nm <= 0 or z <= 0 or a <= 0 or density_g_cm3 <= 0:
        return 0.0
    t_cm = thickness_nm * 1e-7
    return 7.21e5 * (z / e0_ev) * math.sqrt(density_g_cm3 / a) * t_cm**1.5 * 1e7


def family_of(level: str) -> str:
    """``"K"``, ``"L"`` or ``"M"`` for an initial level such as ``"L3"``."""
    return level[0]


def ionisation_cross_section_cm2(edge_ev: float, level: str, e0_ev: float) -> float:
    """Bethe cross-section (Powell's form) for ionising ``level`` with ``e0_ev`` electrons.

    ``sigma = 6.51e-20 n_s b_s ln(c_s U) / (U E_c^2)`` cm^2 with ``E_c`` in keV and
    ``U = E0 / E_c`` (non-relativistic: the relativistic correction changes
    neighbouring elements alike and largely cancels in k-factor ratios).
    """
    if edge_ev <= 0 or e0_ev <= edge_ev:
        return 0.0
    b, c = BETHE_CONSTANTS[family_of(level)]
    u = e0_ev / edge_ev
    ec_kev = edge_ev / 1000.0
    log_term = math.log(c * u)
    if log_term <= 0:
        return 0.0
    return 6.51e-20 * SHELL_ELECTRONS.get(level, 2) * b * log_term / (u * ec_kev**2)


@dataclass(frozen=True)
class XRayLine:
    """One characteristic line, as ``xraydb`` lists it."""

    element: str
    name: str  # Siegbahn name from xraydb, e.g. "Ka1"
    level: str  # initial (ionised) level, e.g. "K", "L3"
    energy_ev: float
    intensity: float  # relative to the other lines of the same initial level
    edge_ev: float
    fluorescence_yield: float

    @property
    def family(self) -> str:
        return family_of(self.level)


@cache
def element_lines(symbol: str, min_energy_ev: float = 100.0) -> tuple[XRayLine, ...]:
    """K, L and M lines of ``symbol`` above ``min_energy_ev`` with non-zero intensity."""
    out = []
    for name, line in xraydb.xray_lines(symbol).items():
        level = line.initial_level
        if level not in SHELL_ELECTRONS or line.intensity <= 0 or line.energy < min_energy_ev:
            continue
        edge = xraydb.xray_edge(symbol, level)
        if edge is None or edge.fyield <= 0:
            continue
        out.append(XRayLine(symbol, name, level, float(line.energy), float(line.intensity),
                            float(edge.energy), float(edge.fyield)))
    return tuple(sorted(out, key=lambda ln: ln.energy_ev))


@dataclass(frozen=True)
class EnergyAxis:
    """Channel layout: channel i is centred on ``offset_ev + (i + 0.5) * ev_per_chan``."""

    nchan: int = 2048
    ev_per_chan: float = 10.0
    offset_ev: float = 0.0

    @property
    def edges(self) -> np.ndarray:
        return self.offset_ev + np.arange(self.nchan + 1) * self.ev_per_chan

    @property
    def centres(self) -> np.ndarray:
        return self.offset_ev + (np.arange(self.nchan) + 0.5) * self.ev_per_chan

    def channel_of(self, energy_ev: float) -> float:
        """Fractional channel index whose centre is at ``energy_ev``."""
        return (energy_ev - self.offset_ev) / self.ev_per_chan - 0.5


@dataclass(frozen=True)
class DetectorParameters:
    """A silicon-drift detector behind a thin window (defaults: estimates of a
    single 30 mm^2-class SDD on a 200 kV S/TEM)."""

    solid_angle_sr: float = 0.3
    #: Energy resolution at Mn Ka (the usual specification); the electronic-noise
    #: part is derived from it and the Fano term.
    fwhm_mn_ka_ev: float = 130.0
    fano_factor: float = 0.115
    pair_energy_ev: float = 3.64
    window_material: str = "Si3N4"
    window_density_g_cm3: float = 3.44
    window_thickness_um: float = 0.04
    dead_layer_um: float = 0.02
    crystal_thickness_um: float = 450.0
    #: Photons below this energy are not recorded (noise threshold).
    low_cutoff_ev: float = 100.0
    #: The logarithm in the thin-target Bremsstrahlung cross-section (order a few).
    brems_log_factor: float = 3.0
    #: Si escape peaks in the spectra (:func:`escape_fraction`).
    escape_peaks: bool = True
    #: Pulse-pair resolving time of the pulse processor (s): two photons closer than
    #: this are one count at the sum energy. 0 turns pile-up off.
    pulse_pair_time_s: float = 100e-9
    #: Take-off angle of the detector above the specimen plane (deg), for absorption.
    takeoff_deg: float = 20.0

    @property
    def mn_ka_ev(self) -> float:
        return float(xraydb.xray_lines("Mn")["Ka1"].energy)

    @property
    def noise_fwhm_ev(self) -> float:
        fano2 = (2.3548**2) * self.fano_factor * self.pair_energy_ev * self.mn_ka_ev
        return math.sqrt(max(self.fwhm_mn_ka_ev**2 - fano2, 0.0))

    def fwhm_ev(self, energy_ev: np.ndarray | float) -> np.ndarray | float:
        """FWHM = sqrt(noise^2 + 2.355^2 F eps E): ~130 eV at Mn Ka by construction."""
        return np.sqrt(self.noise_fwhm_ev**2
                       + (2.3548**2) * self.fano_factor * self.pair_energy_ev
                       * np.asarray(energy_ev, dtype=float))

    def efficiency(self, energy_ev: np.ndarray | float) -> np.ndarray:
        """Fraction of photons of ``energy_ev`` recorded: window and dead-layer
        transmission times crystal absorption (attenuation from ``xraydb``)."""
        e = np.atleast_1d(np.asarray(energy_ev, dtype=float))
        out = np.zeros_like(e)
        ok = e >= self.low_cutoff_ev
        if ok.any():
            ee = e[ok]
            mu_w = xraydb.material_mu(self.window_material, ee, density=self.window_density_g_cm3)
            mu_si = xraydb.material_mu("Si", ee, density=2.33)
            out[ok] = (np.exp(-mu_w * self.window_thickness_um * 1e-4)
                       * np.exp(-mu_si * self.dead_layer_um * 1e-4)
                       * (1.0 - np.exp(-mu_si * self.crystal_thickness_um * 1e-4)))
        return out


def gaussian_bins(edges: np.ndarray, centre_ev: float, fwhm_ev: float) -> np.ndarray:
    """Fraction of a unit-area Gaussian falling in each bin between ``edges``."""
    sigma = fwhm_ev / 2.3548
    cdf = 0.5 * special.erfc(-(edges - centre_ev) / (sigma * math.sqrt(2.0)))
    return np.diff(cdf)


class SystemPeaks:
    """Spurious X-rays from the column: Cu K of the grid and holder, Fe K of the pole piece.

    Given as areal densities (atoms/nm^2) that would give the same line counts if they
    were in the beam (the lines' shapes and detector response as the specimen's, no
    continuum): ``hole_per_nm2`` in a hole (the probe's tail and stray electrons),
    plus ``per_ug_cm2`` per ug/cm^2 of specimen mass thickness (electrons scattered by
    the specimen onto the grid and pole piece). Both scale with the dose. Defaults:
    Cu equal to ~0.1 at.% Cu in 100 nm of Ni, Fe 0.6 of it, a tenth of both in a hole.
    """

    def __init__(self, hole_per_nm2: dict[str, float] | None = None,
                 per_ug_cm2: dict[str, float] | None = None) -> None:
        self.hole_per_nm2 = dict({"Cu": 0.9, "Fe": 0.55} if hole_per_nm2 is None
                                 else hole_per_nm2)
        self.per_ug_cm2 = dict({"Cu": 0.10, "Fe": 0.06} if per_ug_cm2 is None else per_ug_cm2)

    @property
    def elements(self) -> list[str]:
        return sorted(set(self.hole_per_nm2) | set(self.per_ug_cm2))

    def equivalent_per_nm2(self, mass_thickness_ug_cm2: float) -> dict[str, float]:
        """Equivalent areal density of each system element for a point of this mass
        thickness (0 in a hole)."""
        return {el: self.hole_per_nm2.get(el, 0.0)
                + self.per_ug_cm2.get(el, 0.0) * max(mass_thickness_ug_cm2, 0.0)
                for el in self.elements}

    def __repr__(self) -> str:
        return f"SystemPeaks(hole_per_nm2={self.hole_per_nm2}, per_ug_cm2={self.per_ug_cm2})"


class EDXModel:
    """Noise-free and noisy EDX spectra of given areal densities.

    Parameters
    ----------
    elements
        Element symbols that may be under the beam (the specimen's elements).
    ht_kv
        Beam energy (kV).
    axis
        Energy axis of the spectra.
    detector
        Detector parameters (escape peaks, pile-up, take-off angle).
    system
        System peaks of the column (default :class:`SystemPeaks`); ``None``: none.
    absorption
        Thin-film absorption of the lines and continuum in the specimen.
    """

    def __init__(self, elements: list[str], ht_kv: float = 200.0,
                 axis: EnergyAxis | None = None,
                 detector: DetectorParameters | None = None,
                 system: SystemPeaks | None | str = "default",
                 absorption: bool = True) -> None:
        self.elements = list(elements)
        self.ht_kv = float(ht_kv)
        self.axis = axis or EnergyAxis()
        self.detector = detector or DetectorParameters()
        self.system = SystemPeaks() if isinstance(system, str) else system
        self.absorption = bool(absorption)
        self._collect = self.detector.solid_angle_sr / (4.0 * math.pi)
        self._cosec = 1.0 / math.sin(math.radians(self.detector.takeoff_deg))
        edges = self.axis.edges
        self._templates: dict[str, np.ndarray] = {}
        self._family_templates: dict[tuple[str, str], np.ndarray] = {}
        # Per element: line energies (n,) and detected spectra per line (n, nchan).
        self._line_energy: dict[str, np.ndarray] = {}
        self._line_spectra: dict[str, np.ndarray] = {}
        system_elements = self.system.elements if self.system is not None else []
        for el in dict.fromkeys(self.elements + system_elements):
            total = np.zeros(self.axis.nchan)
            energies, rows = [], []
            for line in element_lines(el, self.detector.low_cutoff_ev):
                rate = self.line_rate(line)  # detected photons / electron / (atom/nm^2)
                if rate <= 0:
                    continue
                shape = self.line_shape(line.energy_ev, edges)
                total += rate * shape
                energies.append(line.energy_ev)
                rows.append(rate * shape)
                key = (el, line.family)
                self._family_templates.setdefault(key, np.zeros(self.axis.nchan))
                self._family_templates[key] += rate * shape
            self._templates[el] = total
            self._line_energy[el] = np.array(energies)
            self._line_spectra[el] = (np.array(rows) if rows
                                      else np.zeros((0, self.axis.nchan)))
        # Bremsstrahlung per electron per (atom/nm^2 x Z^2), integrated over each channel.
        e0 = self.ht_kv * 1000.0
        centres = self.axis.centres
        with np.errstate(divide="ignore", invalid="ignore"):
            kramers = np.where((centres > 0) & (centres < e0),
                               (e0 - centres) / (centres * e0), 0.0)
        prefactor = (16.0 / 3.0) * FINE_STRUCTURE * CLASSICAL_ELECTRON_RADIUS_CM**2 \
            * self.detector.brems_log_factor * NM2_PER_CM2
        self._brems = (prefactor * kramers * self.axis.ev_per_chan
                       * self.detector.efficiency(centres) * self._collect)
        # Mass attenuation (cm^2/g) of each specimen element at every line and channel.
        self._mu_lines: dict[str, dict[str, np.ndarray]] = {}
        self._mu_channels: dict[str, np.ndarray] = {}
        safe = np.maximum(centres, 100.0)  # Elam's tables start at 100 eV
        for absorber in self.elements:
            self._mu_lines[absorber] = {
                el: (np.asarray(xraydb.mu_elam(absorber, e), dtype=float) if e.size
                     else np.zeros(0)) for el, e in self._line_energy.items()}
            self._mu_channels[absorber] = np.asarray(xraydb.mu_elam(absorber, safe), dtype=float)

    def line_shape(self, energy_ev: float, edges: np.ndarray | None = None) -> np.ndarray:
        """Recorded shape of a unit line: its Gaussian and its Si escape peak."""
        edges = self.axis.edges if edges is None else edges
        det = self.detector
        shape = gaussian_bins(edges, energy_ev, float(det.fwhm_ev(energy_ev)))
        if det.escape_peaks:
            f = float(escape_fraction(energy_ev)[0])
            if f > 0:
                esc = energy_ev - SI_KA_EV
                shape = (1.0 - f) * shape + f * gaussian_bins(edges, esc, float(det.fwhm_ev(esc)))
        return shape

    # ---- per-line and per-family quantities ------------------------------------------
    def line_rate(self, line: XRayLine) -> float:
        """Detected photons of ``line`` per electron and per atom/nm^2 (no absorption)."""
        sigma = ionisation_cross_section_cm2(line.edge_ev, line.level, self.ht_kv * 1000.0)
        eff = float(self.detector.efficiency(line.energy_ev)[0])
        return sigma * NM2_PER_CM2 * line.fluorescence_yield * line.intensity * eff * self._collect

    def sensitivity(self, element: str, family: str = "K") -> float:
        """Detected counts of the ``family`` lines of ``element`` per electron per atom/nm^2."""
        return sum(self.line_rate(ln) for ln in element_lines(element, self.detector.low_cutoff_ev)
                   if ln.family == family)

    def k_factor(self, a: str, b: str, family: str = "K") -> float:
        """Cliff-Lorimer k_AB (atom fractions): C_A / C_B = k_AB * I_A / I_B."""
        return self.sensitivity(b, family) / self.sensitivity(a, family)

    def family_template(self, element: str, family: str = "K") -> np.ndarray:
        """Noise-free spectrum of one line family per electron per atom/nm^2 (its sum
        over channels is ~ :meth:`sensitivity` when the peaks lie inside the axis)."""
        return self._family_templates.get((element, family), np.zeros(self.axis.nchan)).copy()

    def lines(self, element: str, family: str | None = None) -> list[XRayLine]:
        return [ln for ln in element_lines(element, self.detector.low_cutoff_ev)
                if family is None or ln.family == family]

    # ---- specimen quantities ------------------------------------------------------------
    @staticmethod
    def mass_thickness_ug_cm2(areal_density_per_nm2: dict[str, float]) -> float:
        """rho t (ug/cm^2) of the given areal densities."""
        return sum(max(n, 0.0) * NM2_PER_CM2 * _atomic_mass(el) / AVOGADRO
                   for el, n in areal_density_per_nm2.items()) * 1e6

    def absorption_factors(self, areal_density_per_nm2: dict[str, float],
                           element: str) -> np.ndarray:
        """Thin-film absorption ``A`` of each line of ``element`` (as :meth:`lines`
        with non-zero rate) in a specimen of these areal densities."""
        return self._absorption(areal_density_per_nm2, lambda ab: self._mu_lines[ab][element],
                                self._line_energy[element].size)

    def _absorption(self, densities: dict[str, float], mu_of, size: int) -> np.ndarray:
        rho_t_g = self.mass_thickness_ug_cm2(densities) * 1e-6
        if not self.absorption or rho_t_g <= 0 or size == 0:
            return np.ones(size)
        masses = {el: max(n, 0.0) * _atomic_mass(el)
                  for el, n in densities.items() if el in self._mu_channels}
        total = sum(masses.values())
        if total <= 0:
            return np.ones(size)
        mu = sum((m / total) * mu_of(el) for el, m in masses.items())
        x = np.asarray(mu, dtype=float) * self._cosec * rho_t_g
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(x > 1e-9, -np.expm1(-x) / x, 1.0)

    def family_counts(self, areal_density_per_nm2: dict[str, float], element: str,
                      family: str = "K", electrons: float = 1.0) -> float:
        """Detected counts of the ``family`` lines of ``element`` (escape peaks
        included, absorbed in the specimen) for ``electrons``: the truth a fitted
        family area estimates (before pile-up and system peaks)."""
        n = areal_density_per_nm2.get(element, 0.0)
        if n <= 0 or element not in self.elements:
            return 0.0
        factors = self.absorption_factors(areal_density_per_nm2, element)
        fam = np.array([ln.family == family for ln in self.lines(element)
                        if self.line_rate(ln) > 0])
        return float(n * electrons * np.sum(factors[fam] * self._line_spectra[element][fam].sum(axis=1)))

    def system_family_counts(self, element: str, family: str = "K", electrons: float = 1.0,
                             mass_thickness_ug_cm2: float = 0.0) -> float:
        """System-peak counts of the ``family`` lines of ``element`` for ``electrons``."""
        if self.system is None:
            return 0.0
        n = self.system.equivalent_per_nm2(mass_thickness_ug_cm2).get(element, 0.0)
        return float(n * electrons * self.family_template(element, family).sum()) if n else 0.0

    # ---- spectra ---------------------------------------------------------------------
    def system_spectrum(self, electrons: float, mass_thickness_ug_cm2: float = 0.0) -> np.ndarray:
        """Noise-free system-peak counts for ``electrons`` on a point of this mass thickness."""
        out = np.zeros(self.axis.nchan)
        if self.system is None:
            return out
        for el, n in self.system.equivalent_per_nm2(mass_thickness_ug_cm2).items():
            out += n * self._templates[el]
        return out * float(electrons)

    def expected(self, areal_density_per_nm2: dict[str, float], electrons: float,
                 live_time_s: float | None = None) -> np.ndarray:
        """Noise-free counts per channel for ``electrons`` on the given areal densities:
        the specimen's lines and continuum (absorbed in it), the system peaks, and, if
        ``live_time_s`` is given, pile-up at that count rate."""
        spectrum = np.zeros(self.axis.nchan)
        z2 = 0.0
        for el, n in areal_density_per_nm2.items():
            if n <= 0 or el not in self.elements:
                continue
            factors = self.absorption_factors(areal_density_per_nm2, el)
            spectrum += n * (factors @ self._line_spectra[el])
            z2 += n * atomic_number(el) ** 2
        if z2 > 0:
            brems_abs = self._absorption(areal_density_per_nm2, lambda ab: self._mu_channels[ab],
                                         self.axis.nchan)
            spectrum += z2 * self._brems * brems_abs
        spectrum *= float(electrons)
        spectrum += self.system_spectrum(electrons,
                                         self.mass_thickness_ug_cm2(areal_density_per_nm2))
        if live_time_s is not None:
            spectrum = pileup(spectrum, self.axis, live_time_s, self.detector.pulse_pair_time_s)
        return spectrum

    def acquire(self, areal_density_per_nm2: dict[str, float], electrons: float,
                rng: np.random.Generator, live_time_s: float | None = None) -> np.ndarray:
        """Poisson-noisy counts per channel (float32)."""
        return rng.poisson(self.expected(areal_density_per_nm2, electrons,
                                         live_time_s)).astype(np.float32)


def beam_electrons(current_na: float, seconds: float) -> float:
    """Electrons a probe of ``current_na`` puts on the specimen in ``seconds``."""
    return current_na * 1e-9 * seconds / ELEMENTARY_CHARGE_C


def areal_densities_at(specimen: Specimen, x_nm: float, y_nm: float,
                       path_factor: float, ht_kv: float | None = None) -> dict[str, float]:
    """Atoms/nm^2 of each element along the (tilted) beam at a specimen point.

    Through every layer, times ``path_factor`` (projected / true thickness); empty off
    the grid (vacuum). Without ``ht_kv``: the grid pixel nearest (``x_nm``, ``y_nm``).
    With it, the probe spreads through the foil (:func:`broadening_nm` of the local
    mean Z, A and density): the X-rays come from every depth, so the composition is
    averaged over a 2-D Gaussian whose variance is the depth average of the spread's,
    ``sigma^2 = <sigma(z)^2> = sigma(t)^2 / 4`` (``sigma(z) ~ z^1.5``).
    """
    row, col = specimen.to_index(np.array(x_nm), np.array(y_nm))
    r, c = int(np.rint(row)), int(np.rint(col))
    ny, nx = specimen.shape
    if not (0 <= r < ny and 0 <= c < nx):
        return {}  # vacuum
    window = (slice(r, r + 1), slice(c, c + 1))
    point = {el: float(specimen.areal_density_per_nm2(el, window).ravel()[0]) * path_factor
             for el in specimen.elements()}
    if ht_kv is None:
        return point
    sigma_px = probe_spread_nm(specimen, point, window, path_factor,
                               ht_kv) / specimen.pixel_nm
    if sigma_px < 0.25:
        return point
    half = int(math.ceil(3.0 * sigma_px))
    win = (slice(max(r - half, 0), min(r + half + 1, ny)),
           slice(max(c - half, 0), min(c + half + 1, nx)))
    rr = np.arange(win[0].start, win[0].stop)[:, None] - row
    cc = np.arange(win[1].start, win[1].stop)[None, :] - col
    weight = np.exp(-0.5 * (rr**2 + cc**2) / sigma_px**2)
    weight /= weight.sum()  # the grid's edge: the part inside, renormalised
    return {el: float(np.sum(np.broadcast_to(specimen.areal_density_per_nm2(el, win),
                                             weight.shape) * weight)) * path_factor
            for el in specimen.elements()}


def probe_spread_nm(specimen: Specimen, densities: dict[str, float], window,
                    path_factor: float, ht_kv: float) -> float:
    """Depth-averaged Gaussian sigma (nm) of the probe's spread at the grid ``window``
    (one pixel) with these areal densities along the beam: :func:`broadening_nm` of
    the atom-mean Z and A and the specimen's density over the path, / B90 / 2."""
    atoms = {el: n for el, n in densities.items() if n > 0}
    total = sum(atoms.values())
    t_nm = float(specimen.thickness_nm(window).ravel()[0])
    if total <= 0 or t_nm <= 0:
        return 0.0
    z = sum(n * atomic_number(el) for el, n in atoms.items()) / total
    a = sum(n * _atomic_mass(el) for el, n in atoms.items()) / total
    rho = float(specimen.mass_thickness_ug_cm2(window).ravel()[0]) * 10.0 / t_nm
    b = broadening_nm(t_nm * path_factor, z, a, rho, ht_kv * 1000.0)
    return b / B90_PER_SIGMA / 2.0


__all__ = [
    "DetectorParameters",
    "EDXModel",
    "SystemPeaks",
    "broadening_nm",
    "escape_fraction",
    "pileup",
    "probe_spread_nm",
    "EnergyAxis",
    "XRayLine",
    "areal_densities_at",
    "beam_electrons",
    "element_lines",
    "gaussian_bins",
    "ionisation_cross_section_cm2",
]
