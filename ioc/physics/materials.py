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
        Atoms sputtered per 30 keV Ga+ ion (uncertain by a factor of two).
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
    """Steady-state atomic fraction of implanted Ga: 1 / (1 + Y) (Ga retained when
    every incoming ion is balanced by Y sputtered atoms of which a fraction is Ga)."""
    return 1.0 / (1.0 + max(sputter_yield, 1e-9))


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
