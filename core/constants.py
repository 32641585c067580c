"""What every layer of the stack shares: the instrument's numbers and names, as its
documentation states them. One place for what the IOCs (the simulated hardware), the
devices, the plans, the live views and the analysis all use, so that a plan written
for another lab's devices needs nothing from ``temsims.devices`` (decision 0024).

Geometry
    the tilts of the TEM and SIMS geometries and the ion incidence.
Holder bias
    the thresholds the interlocks and the mode-change plans share.
Isotopes
    species labels ("7Li", "Li-7") and their masses, from ``periodictable`` (imported
    at first use).
Reference materials
    where a specimen's isotope standard sits (what a lab knows of its own mount).
Documents
    the ``dtype_numpy`` a reading's value is stored in.

No work on import; nothing here knows Channel Access.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import numpy as np

# ============================================================================ geometry
#: Alpha tilt of the SIMS geometry (deg): the specimen faces the ion column and the
#: secondary-ion extraction.
SIMS_TILT_DEG = -68.0
#: Alpha tilt of the TEM geometry (deg).
TEM_TILT_DEG = 0.0
#: How far alpha may be from either geometry's tilt and still count as in it (deg).
TILT_TOLERANCE_DEG = 1.0
#: Angle between the Ga+ beam and the specimen normal in the SIMS geometry (deg): the
#: raster's y axis is stretched by 1 / cos(incidence) on the specimen.
SIMS_INCIDENCE_DEG = 45.0
#: Ga+ column voltage (kV) of the SIMS geometry: the energy the beam enters the
#: extraction field with.
SIMS_COLUMN_KV = 30.0


def extraction_incidence_deg(column_kv: float, bias_v: float, *,
                             nominal_deg: float = SIMS_INCIDENCE_DEG,
                             field_factor: float = 1.0) -> float:
    """Angle (deg) between the Ga+ beam and the specimen normal where it lands on a
    biased holder: the extraction field bends the beam.

    The field between the holder and the extraction electrode is normal to the
    specimen, so it changes only the normal part of the ion's energy: ``E cos^2 t0``
    becomes ``E cos^2 t0 - q V`` while ``E sin^2 t0`` stays, and
    ``tan t = sqrt(E sin^2 t0 / (E cos^2 t0 - q V))`` (a uniform field; a real gap's
    field is not quite, ``field_factor`` scales ``V``). A 30 keV beam at 45 deg lands
    at 50.1 deg on +4.5 kV (raster stretch 1.56, not 1.41) and at 41.2 deg on
    -4.5 kV (1.33); 0 V keeps the nominal angle.

    Parameters
    ----------
    column_kv : float
        Column (acceleration) voltage (kV): the ion's energy in keV before the field.
    bias_v : float
        Holder bias (V). Positive decelerates the Ga+ ions.
    nominal_deg : float
        The column's angle to the specimen normal without a field.
    field_factor : float
        Effective fraction of the bias the beam's normal motion sees.

    Raises
    ------
    ValueError
        If the beam cannot reach the specimen (its normal energy is spent).
    """
    t0 = math.radians(nominal_deg)
    normal_kev = column_kv * math.cos(t0) ** 2 - field_factor * bias_v / 1000.0
    if not normal_kev > 0:
        raise ValueError(f"a {column_kv:g} kV beam at {nominal_deg:g} deg cannot land on a "
                         f"{bias_v:g} V holder (normal energy {normal_kev:.3g} keV)")
    return math.degrees(math.atan(math.sqrt(column_kv * math.sin(t0) ** 2 / normal_kev)))

# ============================================================================ holder bias
#: |V| below which the objective lens may come on (the TEM IOC's threshold).
BIAS_OFF_V = 10.0
#: SIMS needs |bias| at least this (the spectrometer's SIMS_READY threshold, V).
MIN_SIMS_BIAS_V = 100.0
#: Largest |bias| the supply delivers (V).
MAX_BIAS_V = 4500.0

# ============================================================================ isotopes
_SPECIES = re.compile(r"^\s*(?:(\d+)\s*-?\s*([A-Z][a-z]?)|([A-Z][a-z]?)\s*-?\s*(\d+))\s*$")


def mass_number_and_symbol(species: str) -> tuple[int, str]:
    """(mass number, element symbol) of an isotope label: ``"7Li"`` -> ``(7, "Li")``."""
    match = _SPECIES.match(str(species))
    if not match:
        raise ValueError(f"species {species!r}: expected an isotope such as '7Li' or 'Li-7'")
    a, sym = (match.group(1), match.group(2)) if match.group(1) else (match.group(4),
                                                                     match.group(3))
    return int(a), sym


def species_mass(species: str) -> float:
    """Isotope mass (u) of ``species``: ``"7Li"``, ``"Li7"`` or ``"Li-7"``.

    Raises
    ------
    ValueError
        For anything that is not a known isotope.
    """
    import periodictable

    number, sym = mass_number_and_symbol(species)
    try:
        element = periodictable.elements.symbol(sym)
    except ValueError:
        raise ValueError(f"species {species!r}: unknown element {sym!r}") from None
    if number not in element.isotopes:
        raise ValueError(f"species {species!r}: {sym} has no isotope {number}")
    return float(element[number].mass)


def species_label(species: str) -> str:
    """Canonical label ``"<A><Symbol>"`` (``"Li-7"`` -> ``"7Li"``).

    Raises
    ------
    ValueError
        For a string that is not an isotope of a known element.
    """
    import periodictable

    number, sym = mass_number_and_symbol(species)
    periodictable.elements.symbol(sym)
    return f"{number}{sym}"


@lru_cache(maxsize=1)
def _stable_isotopes() -> tuple[tuple[float, str], ...]:
    import periodictable

    table = []
    for el in periodictable.elements:
        if el.number == 0:
            continue
        for a in el.isotopes:
            iso = el[a]
            if getattr(iso, "abundance", 0) and iso.abundance > 0:
                table.append((float(iso.mass), f"{a}{el.symbol}"))
    return tuple(sorted(table))


def species_for_mass(mass: float, tolerance_u: float = 0.02) -> str | None:
    """The naturally occurring isotope within ``tolerance_u`` of ``mass`` (u), if
    exactly one."""
    hits = [label for m, label in _stable_isotopes() if abs(m - mass) <= tolerance_u]
    return hits[0] if len(hits) == 1 else None


# ============================================================================ references
#: n(6Li)/n(7Li) of natural lithium: LSVEC (NIST RM 8545), 0.08215 +- 0.00023 (Flesch,
#: Anderson & Svec 1973), the delta-zero of Li isotope ratios (IUPAC/CIAAW).
NATURAL_LI6_LI7 = 0.08215
NATURAL_LI6_LI7_SIGMA = 0.00023
#: Isotope standards mounted on a specimen, by the specimen's name: a natural-Li
#: Li2CO3 pad beside the particle field of ``li2co3-particles`` (decision 0035), in
#: the same matrix as the particles, for standard bracketing of 6Li/7Li. Position and
#: size on the specimen (um, stage coordinates), its material and certified ratio.
REFERENCE_REGIONS: dict[str, dict] = {
    "li2co3-particles": {
        "name": "natural Li2CO3 pad", "material": "Li2CO3", "x_um": 1.92, "y_um": 1.92,
        "width_um": 0.24, "thickness_nm": 100.0, "ratio": "6Li/7Li",
        "value": NATURAL_LI6_LI7, "sigma": NATURAL_LI6_LI7_SIGMA,
    },
}


#: The Ga+ column's probe halo as this lab measured it on a sharp Li2CO3 edge
#: (:func:`temsims.analysis.halo.measure_probe_halo`; decision 0040): the fraction of
#: the current in a broad Gaussian around the core and that Gaussian's FWHM (nm,
#: beam-normal plane). Measured 0.030 +- 0.001 and 296 +- 4 nm at 100 pA, 30 kV.
PROBE_HALO: dict[str, float] = {"fraction": 0.03, "fwhm_nm": 300.0}


def reference_region(specimen: str) -> dict | None:
    """The isotope standard on the specimen called ``specimen`` (a copy), or None."""
    ref = REFERENCE_REGIONS.get(specimen)
    return None if ref is None else dict(ref)


# ============================================================================ documents
#: ``dtype_numpy`` of a string: numpy's unsized unicode, as a string's length varies by
#: event (what bluesky-tiled-plugins assumes for ``dtype: string`` too).
STRING_DTYPE = np.dtype(str).str


def value_dtype(value) -> str:
    """The ``dtype_numpy`` of a reading's value: the dtype storage keeps it in.

    Python ints and floats are stored as int64 and float64 (event tables), booleans as
    ``|b1``, strings as :data:`STRING_DTYPE`, arrays in their own dtype. The devices'
    signals and the plans' computed streams describe their data with it.
    """
    if isinstance(value, str):
        return STRING_DTYPE
    return np.asarray(value).dtype.str


__all__ = [
    "BIAS_OFF_V",
    "MAX_BIAS_V",
    "MIN_SIMS_BIAS_V",
    "SIMS_COLUMN_KV",
    "NATURAL_LI6_LI7",
    "NATURAL_LI6_LI7_SIGMA",
    "REFERENCE_REGIONS",
    "SIMS_INCIDENCE_DEG",
    "SIMS_TILT_DEG",
    "STRING_DTYPE",
    "TEM_TILT_DEG",
    "TILT_TOLERANCE_DEG",
    "extraction_incidence_deg",
    "reference_region",
    "species_for_mass",
    "species_label",
    "species_mass",
    "value_dtype",
]
