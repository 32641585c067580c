"""The virtual specimen model: reproducible, physically consistent, truthful."""

import numpy as np
import pytest

from temsims.ioc.physics.materials import (
    LSVEC_LI6_TO_LI7,
    MATERIALS,
    isotope_mass_u,
    natural_abundances,
)
from temsims.ioc.physics.specimen import SPECIMENS, build_specimen


def test_same_seed_same_specimen_other_seed_other_truth():
    a = build_specimen("li2co3-particles", seed=7)
    b = build_specimen("li2co3-particles", seed=7)
    c = build_specimen("li2co3-particles", seed=8)
    assert a.truth["particles"] == b.truth["particles"]
    np.testing.assert_array_equal(a.thickness_nm(), b.thickness_nm())
    assert a.truth["particles"] != c.truth["particles"]


def test_li2co3_particles_sizes_labels_and_ratios():
    spec = build_specimen("li2co3-particles", seed=3)
    particles = spec.truth["particles"]
    assert len(particles) >= 30
    diameters = np.array([2 * p["radius_nm"] for p in particles])
    assert diameters.min() >= 20 and diameters.max() <= 200
    labelled = [p for p in particles if p["labelled"]]
    assert 0 < len(labelled) < len(particles)
    assert {round(p["li6_li7_ratio"], 4) for p in labelled} == {19.0}
    natural = [p for p in particles if not p["labelled"]]
    assert natural[0]["li6_li7_ratio"] == pytest.approx(LSVEC_LI6_TO_LI7)
    # Surface composition at the centre of a labelled particle: Li2CO3 with 95 % 6Li.
    p = labelled[0]
    row, col = (int(round(v)) for v in spec.to_index(p["x_nm"], p["y_nm"]))
    surf = spec.surface(np.zeros(spec.shape))
    assert surf.fraction("Li")[row, col] == pytest.approx(1 / 3, rel=1e-5)
    assert surf.fraction("6Li")[row, col] / surf.fraction("7Li")[row, col] == pytest.approx(19.0, rel=1e-4)
    # Particle thickness is the sphere's chord at its centre.
    assert spec.thickness_nm()[row, col] == pytest.approx(2 * p["radius_nm"] + 20.0, abs=2.5)


def test_natural_lithium_is_the_reference_material_not_the_interval_midpoint():
    li = natural_abundances("Li")
    assert li["6Li"] / li["7Li"] == pytest.approx(0.08215, rel=1e-4)
    ga = natural_abundances("Ga")
    assert ga["69Ga"] / ga["71Ga"] == pytest.approx(1.507, rel=2e-3)
    assert isotope_mass_u("6Li") == pytest.approx(6.015122887, abs=1e-6)
    assert isotope_mass_u("71Ga") == pytest.approx(70.924703, abs=1e-5)


def test_diffusion_couple_spans_pure_to_below_100_ppm():
    spec = build_specimen("diffusion-couple")
    surf = spec.surface(np.zeros(spec.shape))
    cu = surf.fraction("Cu")[0]
    assert cu[0] > 0.9999 and cu[-1] < 1e-4
    assert np.all(np.diff(cu) <= 0)
    # The matrix effect: Cu ionises differently in Cu-rich and Ni-rich matrix.
    alpha = surf.ionisation("Cu", +1)[0]
    assert alpha[-1] / alpha[0] == pytest.approx(3.0, rel=1e-3)


def test_layers_below_appear_at_depth():
    spec = build_specimen("solar-cell", seed=2)
    top = spec.surface(np.zeros(spec.shape))
    below = spec.surface(np.full(spec.shape, 50.0))
    assert top.fraction("Cd").mean() == pytest.approx(0.5)
    assert top.fraction("Cu").max() == 0.0
    assert below.fraction("Cd").max() == 0.0
    assert below.fraction("Cu").mean() == pytest.approx(0.25, rel=0.02)
    gone = spec.surface(np.full(spec.shape, 1000.0))
    assert gone.fraction("Cu").max() == 0.0 and (gone.layer_index == -1).all()


@pytest.mark.parametrize("name", sorted(SPECIMENS))
def test_every_specimen_is_physical(name):
    spec = build_specimen(name, seed=5)
    mt = spec.mass_thickness_ug_cm2()
    assert np.all(mt > 0) and np.all(np.isfinite(mt))
    for layer in spec.layers:
        total = sum(layer.element_fraction(el) for el in layer.elements())
        np.testing.assert_allclose(np.broadcast_to(total, (1, 1)) if np.ndim(total) == 0
                                   else total, 1.0, atol=1e-4)
    assert all(m.atomic_density_per_nm3 > 10 for m in MATERIALS.values())
