"""Mass interferences on a collector set: which ions land within a collector's window.

A magnetic-sector collector counts every ion of its nominal mass that falls within
its exit slit's mass window. Before a map, the plans ask which known molecular ions
and isobars would share a collector with a mapped species at the spectrometer's
present window (:func:`unresolved_interferences`), and record, warn about or refuse
them (:func:`temsims.plans.sims_map`'s ``interferences``).

The candidates are built from a pool of atoms: the mapped species, the isotopes of
any element said to be present, the beam's Ga, and the H, C and O that every
surface carries (adsorbed water, hydrocarbons, oxides). From them: isobars (another
element's isotope of the same mass number), hydrides MH+ and MH2+, oxides MO+ and
dimers M2+ / MN+. Which of them matter is the specimen's business; this module says
which ones the instrument cannot tell apart, and what mass resolving power would.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from functools import lru_cache

from temsims.constants import mass_number_and_symbol, species_mass

#: Atoms on every surface in a SIMS vacuum (adsorbed water, hydrocarbons, oxides).
SURFACE_ATOMS = ("1H", "12C", "16O")
#: The primary beam's isotopes, implanted as the specimen is sputtered.
BEAM_ATOMS = ("69Ga", "71Ga")
#: Isotopes rarer than this (natural abundance, %) are left out of the pool.
MIN_ABUNDANCE_PCT = 0.1

@dataclass(frozen=True)
class Interference:
    """An ion the collector of ``target`` counts with it.

    Attributes
    ----------
    target : str
        The mapped species ("7Li").
    ion : str
        The interfering ion ("6LiH+").
    kind : str
        "isobar", "hydride", "oxide" or "dimer".
    target_mass_u, ion_mass_u : float
        Their masses (u).
    required_resolving_power : float
        M / dM that would separate them (M the target's mass).
    """

    target: str
    ion: str
    kind: str
    target_mass_u: float
    ion_mass_u: float
    required_resolving_power: float

    def as_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def describe(self) -> str:
        return (f"{self.ion} ({self.ion_mass_u:.4f} u, {self.kind}) on {self.target} "
                f"({self.target_mass_u:.4f} u): needs M/dM {self.required_resolving_power:.0f}")


@lru_cache(maxsize=256)
def _mass(label: str) -> float:
    return species_mass(label)  # cached: the candidates ask for the same atoms often


@lru_cache(maxsize=64)
def _isotopes_of(symbol: str) -> tuple[str, ...]:
    import periodictable

    element = periodictable.elements.symbol(symbol)
    return tuple(f"{n}{symbol}" for n in element.isotopes
                 if float(element[n].abundance) >= MIN_ABUNDANCE_PCT)


def atom_pool(species, elements_present=()) -> tuple[str, ...]:
    """The atoms candidate ions are built from: ``species`` and the other isotopes of
    their elements (a map of 7Li says the specimen holds 6Li), the isotopes of
    ``elements_present`` (symbols), the beam's Ga and the surface's H, C and O."""
    pool = list(species) + list(SURFACE_ATOMS) + list(BEAM_ATOMS)
    symbols = [mass_number_and_symbol(str(s))[1] for s in species] + [str(e) for e in elements_present]
    for symbol in dict.fromkeys(symbols):
        pool.extend(_isotopes_of(symbol))
    for atom in pool:
        _mass(atom)  # refuses an unknown label here, naming it
    return tuple(dict.fromkeys(pool))


def _candidates(pool: tuple[str, ...]):
    """(ion label, kind, mass number, mass) of every candidate ion of the pool."""
    h, o = "1H", "16O"
    for atom in pool:
        a, _ = mass_number_and_symbol(atom)
        yield f"{atom}+", "isobar", a, _mass(atom)
        if atom != h:
            yield f"{atom}H+", "hydride", a + 1, _mass(atom) + _mass(h)
            yield f"{atom}H2+", "hydride", a + 2, _mass(atom) + 2 * _mass(h)
        if atom not in (h, o):
            yield f"{atom}O+", "oxide", a + 16, _mass(atom) + _mass(o)
    for first, second in itertools.combinations_with_replacement(pool, 2):
        if "1H" in (first, second) or "16O" in (first, second):
            continue  # hydrides and oxides above
        label = f"{first}2+" if first == second else f"{first}{second}+"
        yield label, "dimer", mass_number_and_symbol(first)[0] + mass_number_and_symbol(second)[0], _mass(first) + _mass(second)


def unresolved_interferences(species, window_u: float, *, elements_present=()
                             ) -> list[Interference]:
    """The candidate ions each species' collector counts with it.

    Parameters
    ----------
    species : sequence of str
        The mapped isotopes ("6Li", "7Li").
    window_u : float
        Full width (u) of the mass window a collector counts (its exit slit); an ion
        closer than half of it to a species' mass is counted with it.
    elements_present : sequence of str
        Element symbols known to be in the specimen besides the mapped species' own
        (their isotopes above :data:`MIN_ABUNDANCE_PCT` join the pool).

    Returns
    -------
    list of Interference
        Sorted by species, then by the resolving power needed (hardest first).
    """
    if not window_u > 0:
        raise ValueError(f"window_u must be > 0 u, got {window_u!r}")
    targets = [str(s) for s in species]
    pool = atom_pool(targets, elements_present)
    found: dict[tuple[str, str], Interference] = {}
    for target in targets:
        number, _ = mass_number_and_symbol(target)
        mass = _mass(target)
        for ion, kind, ion_number, ion_mass in _candidates(pool):
            if ion_number != number or ion == f"{target}+":
                continue
            gap = abs(ion_mass - mass)
            if gap < window_u / 2.0:
                found[(target, ion)] = Interference(
                    target=target, ion=ion, kind=kind, target_mass_u=mass,
                    ion_mass_u=ion_mass,
                    required_resolving_power=mass / gap if gap > 0 else float("inf"))
    order = {t: i for i, t in enumerate(targets)}
    return sorted(found.values(),
                  key=lambda i: (order[i.target], -i.required_resolving_power, i.ion))
