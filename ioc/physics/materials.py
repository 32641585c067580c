"""Materials, isotopes and ion-solid constants of the simulated instrument.

Every number here is a named default the simulator can override; sources are in
``../shared/reference/instrument.md``. Isotope masses and most abundances come from
``periodictable`` (a maintained table), not from hand-typed values, with one
deliberate exception documented at :data:`LSVEC_LI6_ABUNDANCE`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import periodictable

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

#: Conditions at which :attr:`Material.sputter_yield` is given.
REFERENCE_ENERGY_KEV = 30.0
REFERENCE_INCIDENCE_DEG = 45.0
#: Projected range ~ E**RANGE_EXPONENT near 10-50 keV (nuclear stopping regime; fitted
#: to SRIM-like ranges of Ga+ at 10, 30 and 50 keV, estimate).
RANGE_EXPONENT = 0.85
#: Hofmann's mixing length as a fraction of the depth the ions reach, ``R_p cos(theta)``
#: (estimate: 0.6 gives 15-20 nm depth resolution at 25 keV and 45 deg in light
#: matrices, Li2CO3 or carbon; ~7 nm in Cu/Ni).
MIXING_RANGE_FRACTION = 0.6
GA_Z = 31
GA_MASS_U = 69.723
#: Surface binding energies (eV): heats of sublimation (Yamamura & Tawara 1996's U_s
#: where they list the element; O, N, S, Se, P: estimates for the bound solid).
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
#: pixel at 1 pA x 1 ms, as in instrument.md's worked example, with the total yield
#: 1 + Y of docs/physics-sputtering.md: Li 1.5e-2).
POSITIVE_IONISATION: dict[str, float] = {
    "Li": 1.5e-2, "Na": 5e-2, "K": 5e-2, "Al": 1e-2, "Ga": 1e-2, "In": 1e-2,
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
        Matrix atoms sputtered per Ga+ ion at steady state, at the reference
        conditions :data:`REFERENCE_ENERGY_KEV` (30 keV) and
        :data:`REFERENCE_INCIDENCE_DEG` (45 deg from the normal): the partial yield of
        the matrix, what a milling rate measures (uncertain by a factor of two). With
        the implanted Ga the total yield is ``1 + Y`` (see :func:`ga_steady_state_fraction`).
    range_30kev_nm
        Projected range of 30 keV Ga+ at normal incidence (nm; SRIM-like estimates,
        see :data:`MATERIALS` and docs/physics-sputtering.md).
    matrix_factor_pos, matrix_factor_neg
        Multiplies every element's reference ionisation probability in this matrix
        (the matrix effect: oxygen-rich matrices enhance positive yields).
    ionisation_override
        ``(element, polarity) -> probability`` replacing the product above.
    """

    name: str
    stoichiometry: dict[str, float]
    density_g_cm3: float
    sputter_yield: float
    range_30kev_nm: float = 27.0
    matrix_factor_pos: float = 1.0
    matrix_factor_neg: float = 1.0
    ionisation_override: dict[tuple[str, int], float] = field(default_factory=dict)

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

    # ---- the target as Yamamura's formulas see it (atom-fraction means) ----------
    @property
    def mean_z(self) -> float:
        return sum(f * atomic_number(el) for el, f in self.composition.items())

    @property
    def surface_binding_ev(self) -> float:
        return sum(f * SURFACE_BINDING_EV.get(el, DEFAULT_SURFACE_BINDING_EV)
                   for el, f in self.composition.items())

    def projected_range_nm(self, energy_kev: float) -> float:
        """Projected range of Ga+ at ``energy_kev`` (normal incidence, nm)."""
        return self.range_30kev_nm * (max(energy_kev, 0.1) / REFERENCE_ENERGY_KEV) ** RANGE_EXPONENT

    def yield_factor(self, energy_kev: float, incidence_deg: float) -> float:
        """Sputter yield at (``energy_kev``, ``incidence_deg``) over the yield at the
        reference conditions (30 keV, 45 deg): :func:`energy_factor` x
        :func:`yamamura_angular` ratios."""
        return _yield_factor(self.name, round(float(energy_kev), 4), round(float(incidence_deg), 4))

    def mixing_length_nm(self, energy_kev: float, incidence_deg: float,
                         k_mix: float | None = None) -> float:
        """Hofmann's mixing length ``w = k_mix R_p cos(theta)`` (nm)."""
        k = MIXING_RANGE_FRACTION if k_mix is None else k_mix
        return k * self.projected_range_nm(energy_kev) * math.cos(
            math.radians(min(abs(incidence_deg), 89.0)))


# Sputter yields: matrix atoms per 30 keV Ga+ ion at 45 deg, steady state; Al from the
# milling rate in instrument.md, the others estimates within the stated factor-of-two
# uncertainty. Projected ranges of 30 keV Ga+ at normal incidence (nm): SRIM-like values
# (Ziegler, Ziegler & Biersack, NIM B 268 (2010) 1818; estimates from its tables for
# these densities, +-20 %): ~10 nm in Cu/Ni, ~30-35 nm in Li2CO3 and carbon.
MATERIALS: dict[str, Material] = {
    m.name: m
    for m in [
        Material("Li2CO3", {"Li": 2, "C": 1, "O": 3}, 2.11, 2.5, 32.0),
        Material("C-film", {"C": 1}, 2.0, 0.9, 33.0, matrix_factor_pos=0.3),
        Material("LiPON", {"Li": 2.9, "P": 1, "O": 3.3, "N": 0.46}, 2.5, 2.2, 27.0),
        Material("LiV3O8", {"Li": 1, "V": 3, "O": 8}, 3.2, 2.4, 21.0),
        Material("Al", {"Al": 1}, 2.70, 3.6, 27.0, matrix_factor_pos=0.1),
        Material("Pt-C", {"Pt": 1, "C": 2}, 8.0, 3.0, 11.0, matrix_factor_pos=0.2),
        Material("CdS", {"Cd": 1, "S": 1}, 4.82, 5.0, 15.0, matrix_factor_pos=0.5),
        Material("CIGS-lowGa", {"Cu": 1, "In": 0.8, "Ga": 0.2, "Se": 2}, 5.75, 3.5, 13.0,
                 matrix_factor_pos=0.5),
        Material("CIGS-highGa", {"Cu": 1, "In": 0.6, "Ga": 0.4, "Se": 2}, 5.70, 3.5, 13.0,
                 matrix_factor_pos=0.5),
        # Diffusion couple: Cu ionises three times better diluted in Ni than in pure
        # Cu, so the relative sensitivity factor depends on concentration.
        Material("Cu", {"Cu": 1}, 8.96, 7.0, 10.0, matrix_factor_pos=0.1,
                 ionisation_override={("Cu", 1): 2e-4}),
        Material("Ni", {"Ni": 1}, 8.91, 4.5, 10.0, matrix_factor_pos=0.1,
                 ionisation_override={("Cu", 1): 6e-4}),
    ]
}


def ga_steady_state_fraction(sputter_yield: float) -> float:
    """Steady-state atomic fraction of implanted Ga at the surface: ``1 / (1 + Y)``.

    ``Y`` is the matrix's partial yield (matrix atoms per ion). Mass balance at steady
    state (Liau & Mayer, J. Vac. Sci. Technol. 15 (1978) 1629; non-preferential
    sputtering): every implanted Ga atom leaves again, so per ion 1 Ga and ``Y`` matrix
    atoms are sputtered, ``1 + Y`` in all, and the surface holds Ga in that
    proportion, ``1 / (1 + Y)``.
    """
    return 1.0 / (1.0 + max(sputter_yield, 1e-9))


def ions_per_second(current_a: float) -> float:
    return current_a / ELEMENTARY_CHARGE_C


def ion_range_nm(energy_kev: float, material: Material | str | None = None) -> float:
    """Projected range of Ga+ (nm) at ``energy_kev``, normal incidence: the material's
    (:attr:`Material.range_30kev_nm` scaled as ``E**RANGE_EXPONENT``), or 27 nm at 30
    keV (Si-like) without one."""
    if material is None:
        return 27.0 * (max(energy_kev, 0.1) / REFERENCE_ENERGY_KEV) ** RANGE_EXPONENT
    if isinstance(material, str):
        material = MATERIALS[material]
    return material.projected_range_nm(energy_kev)


# --------------------------------------------------------------------------------------
# Energy and angle of the sputter yield (Matsunami/Yamamura; Yamamura, Itikawa & Itoh)
# --------------------------------------------------------------------------------------
def _reduced_energy(energy_ev: float, z2: float, m2: float) -> float:
    z1, m1 = GA_Z, GA_MASS_U
    return (0.03255 / (z1 * z2 * math.sqrt(z1 ** (2 / 3) + z2 ** (2 / 3)))
            * m2 / (m1 + m2) * energy_ev)


def _threshold_ev(us: float, m2: float) -> float:
    """Yamamura-Bohdansky threshold energy (heavy-ion form)."""
    m1 = GA_MASS_U
    gamma = 4 * m1 * m2 / (m1 + m2) ** 2
    h = 0.834 if m2 > m1 else 0.18
    return 1.5 * us / gamma * (1 + 1.38 * (m1 / m2) ** h) ** 2


def energy_factor(energy_kev: float, material: Material) -> float:
    """Normal-incidence yield at ``energy_kev`` up to a constant: Matsunami/Yamamura,
    ``s_n(eps) / (1 + 0.35 U_s s_e(eps)) x (1 - sqrt(E_th / E))**2.8`` (Yamamura &
    Tawara, At. Data Nucl. Data Tables 62 (1996) 149, with the target's atom-fraction
    mean Z, M and U_s)."""
    z1, m1 = GA_Z, GA_MASS_U
    z2, m2, us = material.mean_z, material.mean_atomic_mass_u, material.surface_binding_ev
    e = max(energy_kev, 0.01) * 1000.0
    eps = _reduced_energy(e, z2, m2)
    se_eps = math.sqrt(eps)
    sn = 3.441 * se_eps * math.log(eps + 2.718) / (
        1 + 6.355 * se_eps + eps * (-1.708 + 6.882 * se_eps))
    se = (0.079 * (m1 + m2) ** 1.5 / (m1**1.5 * math.sqrt(m2)) * z1 ** (2 / 3) * math.sqrt(z2)
          / (z1 ** (2 / 3) + z2 ** (2 / 3)) ** 0.75 * se_eps)
    eth = _threshold_ev(us, m2)
    if e <= eth:
        return 0.0
    return sn / (1 + 0.35 * us * se) * (1 - math.sqrt(eth / e)) ** 2.8


def yamamura_angular(incidence_deg, energy_kev: float, material: Material):
    """``Y(theta) / Y(0)`` of Yamamura, Itikawa & Itoh (IPPJ-AM-26, 1983), heavy-ion form:
    ``t**f exp(-f cos(theta_opt) (t - 1))``, ``t = 1 / cos(theta)``, with
    ``f = sqrt(U_s) (0.94 - 1.33e-3 M2/M1) (1 + 2.5 (1 - xi) / xi)``,
    ``xi = 1 - sqrt(E_th / E)`` and ``theta_opt = 90 - 286 psi**0.45`` deg,
    ``psi = (a / R0)**1.5 sqrt(Z1 Z2 / sqrt(Z1**(2/3) + Z2**(2/3)) / E[eV])``
    (``a`` Lindhard's screening length, ``R0`` the mean atomic spacing)."""
    z1, m1 = GA_Z, GA_MASS_U
    z2, m2, us = material.mean_z, material.mean_atomic_mass_u, material.surface_binding_ev
    e = max(energy_kev, 0.01) * 1000.0
    eth = _threshold_ev(us, m2)
    if e <= eth:
        return 0.0 * incidence_deg
    xi = 1 - math.sqrt(eth / e)
    f = min(math.sqrt(us) * (0.94 - 1.33e-3 * m2 / m1) * (1 + 2.5 * (1 - xi) / xi), 15.0)
    a_nm = 0.04685 / math.sqrt(z1 ** (2 / 3) + z2 ** (2 / 3))
    r0_nm = material.atomic_density_per_nm3 ** (-1 / 3)
    psi = (a_nm / r0_nm) ** 1.5 * math.sqrt(z1 * z2 / math.sqrt(z1 ** (2 / 3) + z2 ** (2 / 3)) / e)
    theta_opt = math.radians(90.0 - 286.0 * psi**0.45)
    th = np.radians(np.clip(incidence_deg, 0.0, 89.5))
    t = 1.0 / np.cos(th)
    return t**f * np.exp(-f * math.cos(theta_opt) * (t - 1.0))


@cache
def _yield_factor(name: str, energy_kev: float, incidence_deg: float) -> float:
    m = MATERIALS[name]
    ref = energy_factor(REFERENCE_ENERGY_KEV, m) * float(
        yamamura_angular(REFERENCE_INCIDENCE_DEG, REFERENCE_ENERGY_KEV, m))
    now = energy_factor(energy_kev, m) * float(yamamura_angular(incidence_deg, energy_kev, m))
    return now / ref if ref > 0 else 1.0
