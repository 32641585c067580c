"""Molecular secondary ions of the twin (decision 0039): per-element hydrides, dimers
M2+ and oxides MO+, their intensities (products of the atoms' surface fractions), the
collectors they land on, and the interference check naming every one of them."""

from __future__ import annotations

import numpy as np
import pytest

from temsims.analysis.interferences import unresolved_interferences
from temsims.constants import mass_number_and_symbol
from temsims.ioc.physics import sims as sp
from temsims.ioc.physics.materials import MATERIALS, isotope_mass_u, natural_abundances
from temsims.ioc.physics.specimen import Layer, Specimen

PARAMS = sp.SimsParameters()
LI2CO3 = ("6Li", "7Li", "12C", "13C", "16O", "17O", "18O", "69Ga", "71Ga")


def _uniform(material: str, li6: float | None = None, n: int = 64) -> Specimen:
    spec = Specimen("uniform", 0, [], shape=(n, n))
    abundance = {} if li6 is None else {"6Li": np.float32(li6)}
    spec.layers = [Layer("film", 30.0, {material: 1.0}, isotope_abundance=abundance)]
    return spec


def _emission(spec: Specimen) -> dict[str, float]:
    geo = sp.ScanGeometry(16, 16, 0.5)
    # Emission as formed: quasi-simultaneous arrival (decision 0043) thins each ion by
    # its own K/2 (7Li 0.3 %), which would blur the formation yields' products.
    return sp.footprint_emission(spec, np.zeros(spec.shape, np.float32), geo,
                                 sp.candidate_species(spec), 1, 25.5,
                                 PARAMS.with_(qsa=False))


def test_hydrides_are_per_element():
    ratios = dict(PARAMS.hydride_ratios)
    assert ratios["Li"] == pytest.approx(1e-3) and ratios["C"] == pytest.approx(0.2)
    w7 = sp.species_weights(isotope_mass_u("7Li"), LI2CO3)
    w13 = sp.species_weights(isotope_mass_u("13C"), LI2CO3)
    assert w7["6Li"] == pytest.approx(ratios["Li"], rel=1e-3)    # 6LiH+ on 7Li+
    assert w13["12C"] == pytest.approx(ratios["C"], rel=1e-3)    # 12CH+ on 13C+
    # An element missing from the table takes the default.
    w_cu = sp.species_weights(isotope_mass_u("63Cu"), ("62Ni", "63Cu"))
    assert w_cu["62Ni"] == pytest.approx(PARAMS.hydride_fraction, rel=1e-3)
    # Mass 8 holds 7LiH+ alone: the hydride ratio a lab measures.
    assert sp.species_weights(8.0, LI2CO3) == pytest.approx({"7Li": ratios["Li"]}, rel=1e-3)


@pytest.mark.parametrize("species", [LI2CO3, ("6Li", "7Li", "16O", "51V", "69Ga"),
                                     ("23Na", "27Al", "16O", "51V", "63Cu", "65Cu")])
def test_every_ion_lands_on_the_collector_its_mass_says(species):
    for label, key, mass, factor in sp.ion_table(species, PARAMS):
        assert factor > 0
        nominal = round(mass)
        w = sp.species_weights(float(nominal) + (mass - nominal), species)
        assert key in w, (label, key)
        # One unit off, the collector does not see it.
        for other in (nominal - 1.0, nominal + 1.0):
            assert key not in sp.species_weights(other, species) or any(
                round(m) == other for _, k, m, _ in sp.ion_table(species, PARAMS) if k == key)


def test_dimer_and_oxide_intensities_scale_with_the_product_of_fractions():
    natural, labelled = _emission(_uniform("Li2CO3")), _emission(_uniform("Li2CO3", 0.95))
    x6n = natural_abundances("Li")["6Li"]
    for e, x6 in ((natural, x6n), (labelled, 0.95)):
        li = e["6Li"] / x6  # Y alpha_Li f_Li
        f_li = MATERIALS["Li2CO3"].composition["Li"]
        # The emission keys carry Y alpha f_a f_b; the yield (x 2 for 6Li7Li) is the
        # collector's weight.
        assert e["6Li*6Li"] == pytest.approx(li * f_li * x6 * x6, rel=1e-4)
        assert e["6Li*7Li"] == pytest.approx(li * f_li * x6 * (1 - x6), rel=1e-4)
        assert e["7Li*7Li"] == pytest.approx(li * f_li * (1 - x6) ** 2, rel=1e-4)
        w13 = sp.species_weights(isotope_mass_u("13C"), LI2CO3)
        assert w13["6Li*7Li"] == pytest.approx(2 * dict(PARAMS.dimer_yields)["Li"], rel=1e-3)
        f_o = MATERIALS["Li2CO3"].composition["O"] * natural_abundances("O")["16O"]
        assert e["7Li*16O"] == pytest.approx(e["7Li"] * f_o, rel=1e-4)  # before the yield
    # The 12C collector: 6Li2+ adds ~x6^2 / x6n^2 = 157 times more on a labelled particle.
    c12 = [float(sp.collector_expectation([isotope_mass_u("12C")], e, 1e7, 1.0, PARAMS)[0])
           for e in (natural, labelled)]
    carbon = [1e7 * PARAMS.transmission * e["12C"] for e in (natural, labelled)]
    extra = [c - c0 for c, c0 in zip(c12, carbon, strict=True)]
    assert extra[1] / extra[0] == pytest.approx((0.95 / x6n) ** 2, rel=1e-3)
    assert extra[1] / carbon[1] > 0.1  # Li2+ is not negligible on C at a labelled particle


def test_oxides_need_oxygen_and_land_in_count_and_mass_scan():
    spec = _uniform("LiV3O8")
    e = _emission(spec)
    assert "51V*16O" in e and "7Li*16O" in e
    v = float(sp.collector_expectation([isotope_mass_u("51V")], e, 1e7, 1.0, PARAMS)[0])
    vo = float(sp.collector_expectation([67.0], e, 1e7, 1.0, PARAMS)[0])
    f_o = MATERIALS["LiV3O8"].composition["O"] * natural_abundances("O")["16O"]
    assert vo / v == pytest.approx(dict(PARAMS.oxide_yields)["V"] * f_o, rel=0.01)
    masses = np.arange(66.5, 67.5, 0.002)
    scan = sp.mass_scan_expectation(masses, e, e, 1e7, 1e-3, PARAMS)
    peak = masses[np.argmax(scan)]
    assert peak == pytest.approx(isotope_mass_u("51V") + isotope_mass_u("16O"), abs=0.02)
    # Without oxygen in the specimen, no oxides.
    assert not [k for k in sp.molecule_keys(("6Li", "7Li", "51V")) if "16O" in k]


def test_maps_carry_the_molecular_ions():
    spec = _uniform("Li2CO3", 0.95, n=256)
    geo = sp.ScanGeometry(8, 8, 0.1)
    depth = np.zeros(spec.shape, np.float32)
    params = PARAMS.with_(dead_time_s=0.0, dark_rate_per_s=0.0, drift_nm_per_min=0.0)
    masses = tuple(isotope_mass_u(s) for s in ("7Li", "12C", "13C")) + (23.0,)
    plan = sp.FramePlan(spec, geo, masses, 1.0, 1e-3, 10.0, 25.5, 1, True, depth,
                        params=params)
    e = sp.footprint_emission(spec, depth, geo, sp.candidate_species(spec), 1, 25.5, params)
    expected = sp.collector_expectation(masses, e, sp.primary_ion_rate(1.0), 1e-3,
                                        params)
    lines = plan.expected_lines(0, geo.ny)
    for got, want in zip(lines, expected, strict=True):
        assert float(got[2:-2, 2:-2].mean()) == pytest.approx(want, rel=0.02)



@pytest.mark.parametrize(("species", "present"), [
    (("6Li", "7Li", "12C", "13C"), ("C", "O")),
    (("6Li", "7Li", "23Na", "14N"), ("O",)),
    (("27Al", "51V", "67Zn", "43Ca"), ("O",)),
    (("58Ni", "60Ni", "63Cu", "65Cu"), ()),
])
def test_the_check_names_every_molecular_ion_the_twin_puts_on_a_collector(species, present):
    """Agreement of the twin and :func:`unresolved_interferences`: every ion other
    than the species' own the twin counts on a collector is an interference the
    check names for that species, of the same kind and mass."""
    symbols = {mass_number_and_symbol(s)[1] for s in species}
    pool = set(species)
    for el in symbols | set(present):
        pool.update(natural_abundances(el))
    pool.add("16O")
    window = PARAMS.collector_window_u
    found = unresolved_interferences(species, window, elements_present=tuple(present))
    kinds = {"hydride": "hydride", "dimer": "dimer", "oxide": "oxide"}
    checked = 0
    for target in species:
        named = {(i.ion, round(i.ion_mass_u, 3)): i.kind for i in found if i.target == target}
        w = sp.species_weights(isotope_mass_u(target), tuple(sorted(pool)), params=PARAMS)
        for label, key, mass, _factor in sp.ion_table(tuple(sorted(pool)), PARAMS):
            if label == f"{target}+" or key not in w or abs(mass - isotope_mass_u(target)) > window / 2:
                continue
            if key.count(sp.MOLECULE_SEP) == 0 and label.endswith("+") and not label.endswith("H+"):
                continue  # an isobar, the check's other business
            kind = ("hydride" if label.endswith("H+") else
                    "oxide" if key.endswith(sp.MOLECULE_SEP + "16O") else "dimer")
            assert named.get((label, round(mass, 3))) == kinds[kind], (
                target, label, sorted(named))
            checked += 1
    assert checked > 0
