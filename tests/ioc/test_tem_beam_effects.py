"""What the beams leave in the specimen, as the TEM sees it (issue 15; the amendment of
docs/decisions/0004-tem-image-model.md): Z-dependent mass-thickness contrast, SIMS
craters and implanted Ga, and radiolysis of Li2CO3 by the electron dose. Physics of
ioc/physics/tem_optics.py and the holder's shared state, no IOCs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from temsims.ioc.physics.holder import Holder
from temsims.ioc.physics.materials import (
    LI2CO3_DAMAGE_DOSE_E_NM2,
    MATERIALS,
    ion_range_nm,
    scattering_weight,
)
from temsims.ioc.physics.tem_optics import (
    GA_UG_CM2_PER_NM2,
    ImageGeometry,
    ImageRenderer,
    contrast_mass_thickness,
    electrons_per_pixel,
)

SEED = 5


@pytest.fixture()
def holder():
    return Holder("li2co3-particles", seed=SEED)


def _big_particle(specimen):
    return max(specimen.truth["particles"], key=lambda p: p["radius_nm"])


def _index(specimen, p):
    r, c = specimen.to_index(p["x_nm"], p["y_nm"])
    return int(round(float(r))), int(round(float(c)))


def test_heavier_elements_scatter_more_per_mass():
    """Contrast thickness x_k ~ A / Z^(4/3): per ug/cm^2 Cu darkens 1.55 x as much as
    carbon; Li2CO3 (mostly O) about as much as carbon."""
    assert scattering_weight("C") == pytest.approx(1.0)
    assert scattering_weight("Cu") == pytest.approx(
        (29 ** (4 / 3) / 63.546) / (6 ** (4 / 3) / 12.011), rel=1e-3)
    assert scattering_weight("Li") < 0.7 < 1.1 < scattering_weight("O") + 0.01
    assert MATERIALS["Li2CO3"].scattering_weight == pytest.approx(1.007, abs=0.005)
    assert MATERIALS["CIGS-lowGa"].scattering_weight == pytest.approx(1.59, abs=0.01)
    # The Cu-Ni couple's foil: a 100 nm Cu lamella transmits exp(-89.6 x 1.545 / 30).
    couple = Holder("diffusion-couple", seed=1)
    renderer = ImageRenderer(couple.specimen)
    mt = renderer.mass_thickness()
    plain = couple.specimen.mass_thickness_ug_cm2()
    ratio = mt[plain > 10] / plain[plain > 10]
    assert 1.54 < ratio.min() and ratio.max() < 1.60  # between Cu's and Ni's weight


def test_pristine_specimen_without_holder_is_unchanged(holder):
    """A renderer given no holder (or a holder nothing happened to) shows the specimen
    as built."""
    a = ImageRenderer(holder.specimen).mass_thickness()
    b = ImageRenderer(holder.specimen, holder=holder).mass_thickness()
    np.testing.assert_array_equal(a, b)


def test_a_sims_crater_and_its_gallium_show_in_bright_field(holder):
    """Sputtering d nm off a Li2CO3 particle removes 0.1 rho d ug/cm^2 and implants
    n/Y d_b (1 - exp(-d/d_b)) Ga atoms/nm^2; the film beside it, sputtered through,
    keeps no Ga."""
    spec = holder.specimen
    renderer = ImageRenderer(spec, holder=holder)
    before = renderer.mass_thickness().copy()
    p = _big_particle(spec)
    r, c = _index(spec, p)
    depth_nm = 30.0
    holder.depth[r - 3:r + 4, c - 3:c + 4] = depth_nm
    far = (r + 3 * int(p["radius_nm"] / spec.pixel_nm) + 40, c)
    holder.depth[far[0] - 3:far[0] + 4, far[1] - 3:far[1] + 4] = 50.0  # the 20 nm film
    holder.changed()
    after = renderer.mass_thickness()
    li2co3 = MATERIALS["Li2CO3"]
    buildup = 0.5 * ion_range_nm(25.5)
    ga = (li2co3.atomic_density_per_nm3 / li2co3.sputter_yield * buildup
          * -math.expm1(-depth_nm / buildup))
    expected = (-0.1 * li2co3.density_g_cm3 * li2co3.scattering_weight * depth_nm
                + ga * GA_UG_CM2_PER_NM2 * scattering_weight("Ga"))
    print(f"crater {depth_nm:g} nm in Li2CO3: {-0.1 * li2co3.density_g_cm3 * depth_nm:.2f} "
          f"ug/cm^2 removed, {ga:.0f} Ga/nm^2 implanted; change {expected:+.2f} ug/cm^2")
    assert after[r, c] - before[r, c] == pytest.approx(expected, rel=1e-4)
    assert after[far] == pytest.approx(0.0, abs=1e-6)  # a hole: nothing left to hold Ga
    untouched = np.ones(after.shape, bool)
    untouched[r - 3:r + 4, c - 3:c + 4] = False
    untouched[far[0] - 3:far[0] + 4, far[1] - 3:far[1] + 4] = False
    np.testing.assert_array_equal(after[untouched], before[untouched])
    # The bright-field image reads it: brighter where the film was cut through.
    geo = ImageGeometry(centre_x_um=spec.x_nm()[far[1]] / 1000,
                        centre_y_um=spec.y_nm()[far[0]] / 1000,
                        fov_um=0.1, size=32)
    image = renderer.expected_signal(geo)
    assert image[16, 16] == pytest.approx(1.0, abs=1e-3)
    holder.restore()
    np.testing.assert_array_equal(renderer.mass_thickness(), before)


def test_electron_dose_takes_the_co2_out_of_li2co3(holder):
    """Radiolysis: Li2CO3 loses 0.596 (1 - exp(-D / D_c)) of its mass; the carbon film
    under it loses nothing. The dose of an image is I t / e over its area."""
    spec = holder.specimen
    renderer = ImageRenderer(spec, holder=holder)
    before = renderer.mass_thickness().copy()
    p = _big_particle(spec)
    geo = ImageGeometry(centre_x_um=p["x_nm"] / 1000, centre_y_um=p["y_nm"] / 1000,
                        fov_um=0.2, size=64)
    per_px = electrons_per_pixel(1.0, 0.7, geo.size)  # 1 nA for 0.7 s at 3 nm pixels
    renderer.expose(geo, per_px)
    dose = per_px / geo.pixel_nm ** 2
    assert holder.electron_dose.max() == pytest.approx(dose, rel=1e-6)
    exposed = holder.electron_dose > 0
    covered = exposed.sum() * spec.pixel_nm ** 2
    assert covered == pytest.approx((geo.fov_um * 1000) ** 2, rel=0.05)
    after = renderer.mass_thickness()
    r, c = _index(spec, p)
    film = MATERIALS["C-film"].density_g_cm3 * spec.truth["film_thickness_nm"] * 0.1
    particle = before[r, c] - film
    loss = 0.596 * -math.expm1(-dose / LI2CO3_DAMAGE_DOSE_E_NM2)
    print(f"dose {dose:.3g} e/nm^2: Li2CO3 lost {100 * loss:.1f} % of its mass")
    assert before[r, c] - after[r, c] == pytest.approx(loss * particle, rel=1e-3)
    assert 0.3 < loss < 0.5  # about D_c: part of the CO2 gone
    np.testing.assert_array_equal(after[~exposed], before[~exposed])
    # Bright field: the damaged particle transmits more than before.
    mt0 = contrast_mass_thickness(30.0, 200.0)
    assert math.exp(-after[r, c] / mt0) > 1.1 * math.exp(-before[r, c] / mt0)


def test_an_ordinary_image_barely_damages(holder):
    """The demo's zoom (0.6 um, 50 ms at 1 nA, 256 px): ~870 e/nm^2, under 1 % of the
    particle's mass."""
    spec = holder.specimen
    renderer = ImageRenderer(spec, holder=holder)
    geo = ImageGeometry(fov_um=0.6, size=256)
    per_px = electrons_per_pixel(1.0, 0.05, geo.size)
    renderer.expose(geo, per_px)
    dose = float(holder.electron_dose.max())
    assert dose == pytest.approx(1e-9 * 0.05 / 1.602176634e-19 / 600.0 ** 2, rel=1e-3)
    assert MATERIALS["Li2CO3"].damage_loss(dose) < 0.01
