"""Materials, isotopes and ion-solid constants of the simulated instrument.

Every number here is a named default the simulator can override; sources are in
``../shared/reference/instrument.md``. Isotope masses and most abundances come from
``periodictable`` (a maintained table), not from hand-typed values, with one
deliberate exception documented at :data:`LSVEC_LI6_ABUNDANCE`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from functools import cache

import numpy as np
import periodictable

from temsims.constants import SIMS_COLUMN_KV, extraction_incidence_deg

AVOGADRO = 6.02214076e23
ELEMENTARY_CHARGE_C = 1.602176634e-19
ATOMIC_MASS_UNIT_KG = 1.66053906660e-27

#: Natural 6Li abundance used for natural-Li specimens. periodictable (and mendeleev)
#: give 4.85 %, the midpoint of IUPAC's *interval* 1.9-7.8 %, which is not the
#: composition of ordinary terrestrial lithium. We use the lithium isotopic reference
#: material LSVEC (NIST RM 8545), n(6Li)/n(7Li) = 0.08215 (Qi et al. 1997, adopted by
#: IUPAC/CIAAW), i.e. x(6Li) = 0.08215 / 1.08215 = 0.0759.
LSVEC_LI6_TO_LI7 = 0.08215
LSVEC_LI6_ABUNDANCE = LSVEC_LI6_TO_LI7 / (1.0 + LSVEC_LI6_TO_LI7)

#: Conditions at which :attr:`Material.sputter_yield` is given (decision 0041): the
#: instrument's positive-ion SIMS condition, a 30 kV column on a +4.5 kV holder, i.e.
#: 25.5 keV landing at the extraction field's 50.08 deg (decision 0036). The table's
#: yields are estimates within a factor of two that every figure of the twin was
#: measured with at that condition; other energies and angles scale from it.
REFERENCE_BIAS_V = 4500.0
REFERENCE_ENERGY_KEV = SIMS_COLUMN_KV - REFERENCE_BIAS_V / 1000.0
REFERENCE_INCIDENCE_DEG = extraction_incidence_deg(SIMS_COLUMN_KV, REFERENCE_BIAS_V)
GA_Z = 31
GA_MASS_U = 69.723
#: Surface binding energies U_s (eV): heats of sublimation of the elements (the U_s
#: Yamamura & Tawara 1996 list for the elemental targets; O, N, S, Se, P estimates
#: for the bound solid). A compound takes the atom-fraction mean.
SURFACE_BINDING_EV: dict[str, float] = {
    "Li": 1.67, "C": 7.41, "O": 2.6, "N": 4.9, "P": 3.27, "Al": 3.39, "V": 5.31,
    "Cu": 3.49, "Ni": 4.44, "Pt": 5.84, "Cd": 1.16, "S": 2.88, "In": 2.49, "Ga": 2.82,
    "Se": 2.14, "Na": 1.12, "Zn": 1.35, "K": 0.93,
}
DEFAULT_SURFACE_BINDING_EV = 3.0

_ISOTOPE_RE = re.compile(r"^(\d+)([A-Z][a-z]?)$")


def parse_species(label: str) -> tuple[str, int | None]:
    """Split ``"6Li"`` into ``("Li", 6)`` and ``"Li"`` into ``("Li", None)``.

    Raises
    ------
    ValueError
        For a label that is neither an element symbol nor ``<A><symbol>``.
    """
    match = _ISOTOPE_RE.match(label)
    if match:
        mass_number, symbol = int(match.group(1)), match.group(2)
    else:
        symbol, mass_number = label, None
    try:
        element = periodictable.elements.symbol(symbol)
    except ValueError:
        raise ValueError(f"unknown species {label!r}") from None
    if mass_number is not None and mass_number not in element.isotopes:
        raise ValueError(f"unknown isotope {label!r}")
    return symbol, mass_number


@cache
def natural_abundances(symbol: str) -> dict[str, float]:
    """Atom fractions of the stable isotopes of ``symbol``, keyed ``"6Li"``-style."""
    element = periodictable.elements.symbol(symbol)
    if symbol == "Li":
        return {"6Li": LSVEC_LI6_ABUNDANCE, "7Li": 1.0 - LSVEC_LI6_ABUNDANCE}
    fractions = {
        f"{iso}{symbol}": element[iso].abundance / 100.0
        for iso in element.isotopes
        if element[iso].abundance > 0
    }
    total = sum(fractions.values())
    return {label: value / total for label, value in fractions.items()}


@cache
def isotope_mass_u(label: str) -> float:
    """Mass of an isotope (``"69Ga"``) or the mean atomic mass of an element, in u."""
    symbol, mass_number = parse_species(label)
    element = periodictable.elements.symbol(symbol)
    return float(element.mass if mass_number is None else element[mass_number].mass)


def atomic_number(symbol: str) -> int:
    return int(periodictable.elements.symbol(symbol).number)


# --------------------------------------------------------------------------------------
# Secondary-ion formation
# --------------------------------------------------------------------------------------
#: Ionisation probability of each element into positive secondary ions in an oxide-like
#: reference matrix (estimates chosen so that Li in Li2CO3 gives 5-50 counts per
#: pixel at 1 pA x 1 ms, as in instrument.md's worked example).
POSITIVE_IONISATION: dict[str, float] = {
    "Li": 2e-2, "Na": 5e-2, "K": 5e-2, "Al": 1e-2, "Ga": 1e-2, "In": 1e-2,
    "V": 5e-3, "Cu": 2e-3, "Ni": 1.5e-3, "Zn": 1e-3, "Cd": 1e-3, "Pt": 1e-4,
    "P": 1e-4, "C": 1e-5, "N": 1e-6, "O": 1e-5, "S": 1e-5, "Se": 1e-5,
}
#: Ionisation probability into negative secondary ions.
NEGATIVE_IONISATION: dict[str, float] = {
    "O": 5e-2, "C": 1e-2, "S": 2e-2, "Se": 1e-2, "P": 5e-3, "N": 1e-4,
}
DEFAULT_IONISATION = 1e-5


def base_ionisation(symbol: str, polarity: int) -> float:
    """Ionisation probability of ``symbol`` for polarity +1 or -1 (reference matrix)."""
    table = POSITIVE_IONISATION if polarity > 0 else NEGATIVE_IONISATION
    return table.get(symbol, DEFAULT_IONISATION)


@dataclass(frozen=True)
class Material:
    """A matrix: stoichiometry, density and how it sputters and ionises.

    Parameters
    ----------
    name
        Matrix name (also used as the phase name in the specimen's truth).
    stoichiometry
        Element -> atoms per formula unit (normalised to atomic fractions).
    density_g_cm3
        Mass density.
    sputter_yield
        Matrix atoms sputtered per Ga+ ion (the matrix's partial yield, what a crater's
        volume measures) at :data:`REFERENCE_ENERGY_KEV` and
        :data:`REFERENCE_INCIDENCE_DEG` (uncertain by a factor of two); at other
        landing energies and angles :meth:`yield_at` (decision 0041). With the
        implanted Ga the total yield at steady state is ``1 + Y``
        (:func:`ga_steady_state_fraction`).
    matrix_factor_pos, matrix_factor_neg
        Multiplies every element's reference ionisation probability in this matrix
        (the matrix effect: oxygen-rich matrices enhance positive yields).
    ionisation_override
        ``(element, polarity) -> probability`` replacing the product above.
    ga_range_nm
        Projected range of 30 keV Ga+ at normal incidence (nm; SRIM-class estimate,
        :data:`GA_RANGE_NM_30KEV`); None: the generic :func:`ion_range_nm`.
    damage_dose_e_nm2, damage_mass_loss
        Radiolysis under the 200 kV electron beam: the fraction of the mass lost
        approaches ``damage_mass_loss`` as ``1 - exp(-D / damage_dose_e_nm2)`` with
        the dose D (electrons/nm^2). None: the beam does not damage it.
    """

    name: str
    stoichiometry: dict[str, float]
    density_g_cm3: float
    sputter_yield: float
    matrix_factor_pos: float = 1.0
    matrix_factor_neg: float = 1.0
    ionisation_override: dict[tuple[str, int], float] = field(default_factory=dict)
    damage_dose_e_nm2: float | None = None
    damage_mass_loss: float = 0.0
    ga_range_nm: float | None = None

    def damage_loss(self, dose_e_nm2):
        """Fraction of this material's mass lost after an electron dose (e/nm^2)."""
        if self.damage_dose_e_nm2 is None:
            return 0.0
        return self.damage_mass_loss * -np.expm1(-np.asarray(dose_e_nm2) / self.damage_dose_e_nm2)

    @property
    def scattering_weight(self) -> float:
        """Mass-weighted :func:`scattering_weight` of its elements: how much more than
        carbon a ug/cm^2 of it scatters out of the objective aperture."""
        masses = {el: f * isotope_mass_u(el) for el, f in self.composition.items()}
        total = sum(masses.values())
        return sum(m / total * scattering_weight(el) for el, m in masses.items())

    @property
    def composition(self) -> dict[str, float]:
        total = sum(self.stoichiometry.values())
        return {el: n / total for el, n in self.stoichiometry.items()}

    @property
    def mean_atomic_mass_u(self) -> float:
        return sum(f * isotope_mass_u(el) for el, f in self.composition.items())

    @property
    def atomic_density_per_nm3(self) -> float:
        """Atoms per nm^3 from density and mean atomic mass."""
        return self.density_g_cm3 * AVOGADRO / self.mean_atomic_mass_u * 1e-21

    def ionisation(self, symbol: str, polarity: int) -> float:
        key = (symbol, 1 if polarity > 0 else -1)
        if key in self.ionisation_override:
            return self.ionisation_override[key]
        factor = self.matrix_factor_pos if polarity > 0 else self.matrix_factor_neg
        return base_ionisation(symbol, polarity) * factor

    # ---- the target as Yamamura's formulas see it (atom-fraction means) -------------
    @property
    def mean_z(self) -> float:
        return sum(f * atomic_number(el) for el, f in self.composition.items())

    @property
    def surface_binding_ev(self) -> float:
        return sum(f * SURFACE_BINDING_EV.get(el, DEFAULT_SURFACE_BINDING_EV)
                   for el, f in self.composition.items())

    def yield_at(self, energy_kev: float | None = None, incidence_deg=None):
        """Sputter yield at a landing energy (keV) and incidence (deg from the normal;
        scalar or array): :attr:`sputter_yield` x :func:`yield_factor`. None: the
        reference condition's."""
        if energy_kev is None and incidence_deg is None:
            return self.sputter_yield
        e = REFERENCE_ENERGY_KEV if energy_kev is None else float(energy_kev)
        th = REFERENCE_INCIDENCE_DEG if incidence_deg is None else incidence_deg
        return self.sputter_yield * yield_factor(self, e, th)


def scattering_weight(symbol: str) -> float:
    """Elastic scattering out of the objective aperture per unit mass, relative to
    carbon: the screened-Rutherford cross-section grows as Z^(4/3) (Lenz), so the
    contrast thickness x_k = A / (N_A sigma) falls as A / Z^(4/3) (Reimer & Kohl,
    *Transmission Electron Microscopy*, 5th ed., sec. 6.3.2). C 1, Li 0.69, O 1.10,
    V 1.42, Cu 1.55, Ni 1.60, Ga 1.54, In 1.72, Pt 1.88."""
    z = atomic_number(symbol)
    return (z ** (4 / 3) / isotope_mass_u(symbol)) / (6 ** (4 / 3) / isotope_mass_u("C"))


#: Dose (electrons/nm^2 at 200 kV, room temperature) over which Li2CO3 loses its CO2:
#: an estimate of the order the literature on beam-sensitive Li compounds gives
#: (10^2 - 10^3 e/A^2 for visible change); a knob, not a measured value.
LI2CO3_DAMAGE_DOSE_E_NM2 = 1.0e5

#: Projected range (nm) of 30 keV Ga+ at normal incidence per matrix (decision 0038):
#: SRIM-class values (Ziegler, Ziegler & Biersack, Nucl. Instrum. Meth. B 268 (2010)
#: 1818): ~27 nm in Si (the generic :func:`ion_range_nm`), ~10 nm in Cu and Ni (the
#: ~10-11 nm quoted for Cu in Giannuzzi & Stevie, *Introduction to Focused Ion Beams*,
#: Springer 2005), 30-35 nm in the light, low-density Li2CO3 and carbon; the others
#: interpolated by density and mean atomic mass. Uncertain by ~15 %.
GA_RANGE_NM_30KEV: dict[str, float] = {
    "Li2CO3": 33.0, "C-film": 32.0, "LiPON": 28.0, "LiV3O8": 20.0, "Al": 26.0,
    "Pt-C": 11.0, "CdS": 15.0, "CIGS-lowGa": 13.0, "CIGS-highGa": 13.0,
    "Cu": 10.0, "Ni": 10.0,
}

# Sputter yields of 30 keV Ga+ (atoms/ion); Al from the milling rate in instrument.md,
# the others estimates within the stated factor-of-two uncertainty.
MATERIALS: dict[str, Material] = {
    m.name: replace(m, ga_range_nm=GA_RANGE_NM_30KEV.get(m.name))
    for m in [
        # Li2CO3 -> Li2O + CO2 under the beam (the CO2 is 60 % of the mass).
        Material("Li2CO3", {"Li": 2, "C": 1, "O": 3}, 2.11, 2.5,
                 damage_dose_e_nm2=LI2CO3_DAMAGE_DOSE_E_NM2, damage_mass_loss=0.596),
        Material("C-film", {"C": 1}, 2.0, 0.9, matrix_factor_pos=0.3),
        # LiPON loses Li, N and O to radiolysis more slowly than the carbonate.
        Material("LiPON", {"Li": 2.9, "P": 1, "O": 3.3, "N": 0.46}, 2.5, 2.2,
                 damage_dose_e_nm2=3 * LI2CO3_DAMAGE_DOSE_E_NM2, damage_mass_loss=0.25),
        Material("LiV3O8", {"Li": 1, "V": 3, "O": 8}, 3.2, 2.4),
        Material("Al", {"Al": 1}, 2.70, 3.6, matrix_factor_pos=0.1),
        Material("Pt-C", {"Pt": 1, "C": 2}, 8.0, 3.0, matrix_factor_pos=0.2),
        Material("CdS", {"Cd": 1, "S": 1}, 4.82, 5.0, matrix_factor_pos=0.5),
        Material("CIGS-lowGa", {"Cu": 1, "In": 0.8, "Ga": 0.2, "Se": 2}, 5.75, 3.5,
                 matrix_factor_pos=0.5),
        Material("CIGS-highGa", {"Cu": 1, "In": 0.6, "Ga": 0.4, "Se": 2}, 5.70, 3.5,
                 matrix_factor_pos=0.5),
        # Diffusion couple: Cu ionises three times better diluted in Ni than in pure
        # Cu, so the relative sensitivity factor depends on concentration.
        Material("Cu", {"Cu": 1}, 8.96, 7.0, matrix_factor_pos=0.1,
                 ionisation_override={("Cu", 1): 2e-4}),
        Material("Ni", {"Ni": 1}, 8.91, 4.5, matrix_factor_pos=0.1,
                 ionisation_override={("Cu", 1): 6e-4}),
    ]
}


def ga_steady_state_fraction(sputter_yield: float) -> float:
    """Steady-state atomic fraction of implanted Ga at the surface: ``1 / (1 + Y)``.

    ``Y`` is the matrix's partial yield (matrix atoms per ion). At steady state the
    implanted Ga no longer accumulates, so every arriving Ga atom leaves again: per ion
    1 Ga and ``Y`` matrix atoms are sputtered, ``1 + Y`` in all, and (sputtering not
    preferential) the surface holds Ga in that proportion (Liau & Mayer, J. Vac. Sci.
    Technol. 15 (1978) 1629; Deline, Williams & Evans, Appl. Phys. Lett. 33 (1978)
    578, for implanted Cs and O). Decision 0041.
    """
    return 1.0 / (1.0 + max(sputter_yield, 1e-9))


def total_yield_factor(ga_fraction):
    """Atoms sputtered per ion over the matrix's partial yield, ``1 / (1 - f_Ga)``:
    the matrix leaves at ``Y`` per ion whatever Ga the surface holds, so the total is
    ``Y / (1 - f)`` (``1 + Y`` at the steady state ``f = 1 / (1 + Y)``)."""
    return 1.0 / np.maximum(1.0 - np.asarray(ga_fraction), 1e-6)


def ions_per_second(current_a: float) -> float:
    return current_a / ELEMENTARY_CHARGE_C


def ion_range_nm(energy_kev: float) -> float:
    """Projected range of Ga+ (nm), ~ 27 nm at 30 keV in Si-like matrices (estimate)."""
    return 27.0 * math.sqrt(max(energy_kev, 0.1) / 30.0)


def projected_range_nm(material: Material, energy_kev: float) -> float:
    """Projected range of Ga+ (nm) in ``material`` at ``energy_kev``, normal incidence:
    its 30 keV range scaled as :func:`ion_range_nm` scales with energy."""
    if material.ga_range_nm is None:
        return ion_range_nm(energy_kev)
    return material.ga_range_nm * math.sqrt(max(energy_kev, 0.1) / 30.0)


# --------------------------------------------------------------------------------------
# Energy and angle of the sputter yield (decision 0041)
# --------------------------------------------------------------------------------------
def _reduced_energy(energy_ev: float, z2: float, m2: float) -> float:
    """Lindhard's reduced energy of Ga+ on a target (Z2, M2)."""
    z1, m1 = GA_Z, GA_MASS_U
    return (0.03255 / (z1 * z2 * math.sqrt(z1 ** (2 / 3) + z2 ** (2 / 3)))
            * m2 / (m1 + m2) * energy_ev)


def threshold_ev(material: Material) -> float:
    """Sputtering threshold of Ga+ (eV), Yamamura & Bohdansky's heavy-ion form."""
    m1, m2, us = GA_MASS_U, material.mean_atomic_mass_u, material.surface_binding_ev
    gamma = 4 * m1 * m2 / (m1 + m2) ** 2
    h = 0.834 if m2 > m1 else 0.18
    return 1.5 * us / gamma * (1 + 1.38 * (m1 / m2) ** h) ** 2


def energy_factor(energy_kev: float, material: Material) -> float:
    """Normal-incidence yield at ``energy_kev`` up to a constant (Matsunami et al.,
    At. Data Nucl. Data Tables 31 (1984) 1; Yamamura & Tawara, ibid. 62 (1996) 149):
    ``s_n(eps) / (1 + 0.35 U_s s_e(eps)) x (1 - sqrt(E_th / E))^2.8`` with Matsunami's
    reduced nuclear stopping ``s_n``, Lindhard's electronic ``s_e = k sqrt(eps)``
    (Sigmund's linear-cascade yield is proportional to the nuclear stopping), and the
    target's atom-fraction mean Z, M and U_s."""
    z1, m1 = GA_Z, GA_MASS_U
    z2, m2, us = material.mean_z, material.mean_atomic_mass_u, material.surface_binding_ev
    e = max(float(energy_kev), 0.01) * 1000.0
    eth = threshold_ev(material)
    if e <= eth:
        return 0.0
    eps = _reduced_energy(e, z2, m2)
    rt = math.sqrt(eps)
    sn = 3.441 * rt * math.log(eps + 2.718) / (1 + 6.355 * rt + eps * (-1.708 + 6.882 * rt))
    k = (0.079 * (m1 + m2) ** 1.5 / (m1**1.5 * math.sqrt(m2)) * z1 ** (2 / 3) * math.sqrt(z2)
         / (z1 ** (2 / 3) + z2 ** (2 / 3)) ** 0.75)
    return sn / (1 + 0.35 * us * k * rt) * (1 - math.sqrt(eth / e)) ** 2.8


@cache
def angular_parameters(name: str, energy_kev: float) -> tuple[float, float]:
    """Yamamura's ``f`` and ``theta_opt`` (deg) of Ga+ on material ``name`` at
    ``energy_kev`` (Yamamura, Itikawa & Itoh, IPPJ-AM-26, Nagoya 1983):
    ``f = sqrt(U_s) (0.94 - 1.33e-3 M2/M1) (1 + 2.5 (1 - xi) / xi)``,
    ``xi = 1 - sqrt(E_th / E)``; ``theta_opt = 90 - 286 psi^0.45`` deg,
    ``psi = (a / R0)^1.5 sqrt(Z1 Z2 / sqrt(Z1^(2/3) + Z2^(2/3)) / E[eV])`` (``a``
    Lindhard's screening length, ``R0`` the mean atomic spacing)."""
    m = MATERIALS[name]
    z1, m1 = GA_Z, GA_MASS_U
    z2, m2, us = m.mean_z, m.mean_atomic_mass_u, m.surface_binding_ev
    e = max(float(energy_kev), 0.01) * 1000.0
    xi = max(1 - math.sqrt(threshold_ev(m) / e), 1e-3)
    f = min(math.sqrt(us) * (0.94 - 1.33e-3 * m2 / m1) * (1 + 2.5 * (1 - xi) / xi), 15.0)
    zz = math.sqrt(z1 ** (2 / 3) + z2 ** (2 / 3))
    a_nm = 0.04685 / zz
    r0_nm = m.atomic_density_per_nm3 ** (-1 / 3)
    psi = (a_nm / r0_nm) ** 1.5 * math.sqrt(z1 * z2 / zz / e)
    return f, 90.0 - 286.0 * psi**0.45


def yamamura_angular(material: Material, energy_kev: float, incidence_deg):
    """``Y(theta) / Y(0)`` (scalar or array of angles, deg):
    ``t^f exp(-f cos(theta_opt) (t - 1))``, ``t = 1 / cos(theta)``
    (:func:`angular_parameters`); 0 at grazing incidence (90 deg and beyond)."""
    f, opt = angular_parameters(material.name, round(float(energy_kev), 3))
    th = np.radians(np.clip(np.asarray(incidence_deg, np.float64), 0.0, 89.0))
    t = 1.0 / np.cos(th)
    out = t**f * np.exp(-f * math.cos(math.radians(opt)) * (t - 1.0))
    return np.where(np.asarray(incidence_deg) >= 89.0, 0.0, out)


@cache
def _energy_ratio(name: str, energy_kev: float) -> float:
    m = MATERIALS[name]
    ref = energy_factor(REFERENCE_ENERGY_KEV, m)
    return energy_factor(energy_kev, m) / ref if ref > 0 else 1.0


@cache
def _angle_ref(name: str, energy_kev: float) -> float:
    return float(yamamura_angular(MATERIALS[name], energy_kev, REFERENCE_INCIDENCE_DEG))


def yield_factor(material: Material, energy_kev: float, incidence_deg):
    """Yield at (``energy_kev``, ``incidence_deg``) over the yield at the reference
    (:data:`REFERENCE_ENERGY_KEV`, :data:`REFERENCE_INCIDENCE_DEG`): :func:`energy_factor` ratio x :func:`yamamura_angular` ratio.
    Scalar angle: a float; array: an array."""
    e = round(float(energy_kev), 3)
    ratio = _energy_ratio(material.name, e) * yamamura_angular(material, e, incidence_deg) \
        / _angle_ref(material.name, REFERENCE_ENERGY_KEV)
    return float(ratio) if np.ndim(incidence_deg) == 0 else ratio
