"""Known interferences at a collector's mass window (no instrument): masses from
periodictable, the hydride the twin models (``hydride_fraction``: MH+ on M+1)."""

from __future__ import annotations

import pytest

from temsims.analysis.interferences import Interference, atom_pool, unresolved_interferences
from temsims.ioc.physics import sims as sp


def _ions(found: list[Interference], target: str) -> set[str]:
    return {i.ion for i in found if i.target == target}


def test_lih_on_7li_needs_a_resolving_power_of_about_a_thousand():
    found = unresolved_interferences(("7Li",), 0.8)
    assert [(i.ion, i.target, i.kind) for i in found] == [("6LiH+", "7Li", "hydride")]
    lih = found[0]
    # 6Li (6.01512) + 1H (1.00783) = 7.02295 u against 7Li's 7.01600 u.
    assert lih.ion_mass_u - lih.target_mass_u == pytest.approx(0.00695, abs=2e-5)
    assert lih.required_resolving_power == pytest.approx(1010, abs=2)


def test_a_window_narrower_than_the_mass_gap_resolves_it():
    # At the axial detector's M/dM 500 (a 0.014 u peak at mass 7) LiH is still in it;
    # a window of 0.01 u (M/dM ~1400 over the whole width) separates them.
    assert _ions(unresolved_interferences(("7Li",), 7.016 / 500), "7Li") == {"6LiH+"}
    assert unresolved_interferences(("7Li",), 0.01) == []


def test_the_twins_hydride_is_among_them():
    """Every species the twin gives a hydride of (MH+ at M + 1.008 u) on a mapped
    species of the next mass is named."""
    params = sp.SimsParameters()
    assert params.hydride_fraction > 0
    for light, heavy in (("6Li", "7Li"), ("12C", "13C"), ("62Ni", "63Cu")):
        found = unresolved_interferences((light, heavy), params.collector_window_u)
        assert f"{light}H+" in _ions(found, heavy), found


@pytest.mark.parametrize(("species", "present", "ion", "target", "kind"), [
    (("115In",), ("Cd",), "114CdH+", "115In", "hydride"),   # CIGS under CdS
    (("12C",), (), "6Li2+", None, None),                      # no Li: no Li2 on C
    (("6Li", "12C"), (), "6Li2+", "12C", "dimer"),
    (("27Al",), (), "27Al+", None, None),                     # itself is no interference
    (("56Fe",), ("Ca",), "40CaO+", "56Fe", "oxide"),
    (("58Ni",), ("Fe",), "58Fe+", "58Ni", "isobar"),
])
def test_isobars_oxides_and_dimers_of_the_pool(species, present, ion, target, kind):
    found = unresolved_interferences(species, 0.8, elements_present=present)
    hits = [i for i in found if i.ion == ion]
    if target is None:
        assert not hits, hits
    else:
        assert len(hits) == 1 and hits[0].target == target and hits[0].kind == kind


def test_pool_and_refusals():
    pool = atom_pool(("7Li",))
    assert {"6Li", "7Li", "1H", "12C", "16O", "69Ga", "71Ga"} <= set(pool)
    with pytest.raises(ValueError, match="window_u"):
        unresolved_interferences(("7Li",), 0.0)
    with pytest.raises(ValueError, match="Xx"):
        unresolved_interferences(("7Li",), 0.8, elements_present=("Xx",))

