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
    channel sum of a peak is its area. Absorption and fluorescence inside the thin
    specimen are neglected (the thin-film criterion that underlies Cliff-Lorimer).

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
from scipy import special

from temsims.ioc.physics.materials import ELEMENTARY_CHARGE_C, atomic_number
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
        Detector parameters.
    """

    def __init__(self, elements: list[str], ht_kv: float = 200.0,
                 axis: EnergyAxis | None = None,
                 detector: DetectorParameters | None = None) -> None:
        self.elements = list(elements)
        self.ht_kv = float(ht_kv)
        self.axis = axis or EnergyAxis()
        self.detector = detector or DetectorParameters()
        self._collect = self.detector.solid_angle_sr / (4.0 * math.pi)
        edges = self.axis.edges
        self._templates: dict[str, np.ndarray] = {}
        self._family_templates: dict[tuple[str, str], np.ndarray] = {}
        for el in self.elements:
            total = np.zeros(self.axis.nchan)
            for line in element_lines(el, self.detector.low_cutoff_ev):
                rate = self.line_rate(line)  # detected photons / electron / (atom/nm^2)
                if rate <= 0:
                    continue
                shape = gaussian_bins(edges, line.energy_ev, float(self.detector.fwhm_ev(line.energy_ev)))
                total += rate * shape
                key = (el, line.family)
                self._family_templates.setdefault(key, np.zeros(self.axis.nchan))
                self._family_templates[key] += rate * shape
            self._templates[el] = total
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

    # ---- per-line and per-family quantities ------------------------------------------
    def line_rate(self, line: XRayLine) -> float:
        """Detected photons of ``line`` per electron and per atom/nm^2."""
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

    # ---- spectra ---------------------------------------------------------------------
    def expected(self, areal_density_per_nm2: dict[str, float], electrons: float) -> np.ndarray:
        """Noise-free counts per channel for ``electrons`` on the given areal densities."""
        spectrum = np.zeros(self.axis.nchan)
        z2 = 0.0
        for el, n in areal_density_per_nm2.items():
            if n <= 0 or el not in self._templates:
                continue
            spectrum += n * self._templates[el]
            z2 += n * atomic_number(el) ** 2
        spectrum += z2 * self._brems
        return spectrum * float(electrons)

    def acquire(self, areal_density_per_nm2: dict[str, float], electrons: float,
                rng: np.random.Generator) -> np.ndarray:
        """Poisson-noisy counts per channel (float32)."""
        return rng.poisson(self.expected(areal_density_per_nm2, electrons)).astype(np.float32)


def beam_electrons(current_na: float, seconds: float) -> float:
    """Electrons a probe of ``current_na`` puts on the specimen in ``seconds``."""
    return current_na * 1e-9 * seconds / ELEMENTARY_CHARGE_C


def areal_densities_at(specimen: Specimen, x_nm: float, y_nm: float,
                       path_factor: float) -> dict[str, float]:
    """Atoms/nm^2 of each element along the (tilted) beam at a specimen point.

    The grid pixel nearest (``x_nm``, ``y_nm``), through every layer, times
    ``path_factor`` (projected / true thickness); empty off the grid (vacuum).
    """
    row, col = specimen.to_index(np.array(x_nm), np.array(y_nm))
    r, c = int(np.rint(row)), int(np.rint(col))
    ny, nx = specimen.shape
    if not (0 <= r < ny and 0 <= c < nx):
        return {}  # vacuum
    window = (slice(r, r + 1), slice(c, c + 1))
    return {el: float(specimen.areal_density_per_nm2(el, window).ravel()[0]) * path_factor
            for el in specimen.elements()}


__all__ = [
    "DetectorParameters",
    "EDXModel",
    "EnergyAxis",
    "XRayLine",
    "areal_densities_at",
    "beam_electrons",
    "element_lines",
    "gaussian_bins",
    "ionisation_cross_section_cm2",
]
