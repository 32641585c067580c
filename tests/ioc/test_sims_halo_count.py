"""The probe halo (decision 0040) in COUNT and mass scans (decision 0043): a parked
spot or a counting raster receives ``halo_fraction`` of its current through the halo's
Gaussian, as a map does, so a count beside a film edge picks up the film's emission
by the halo's tail, and a count on a uniform film is unchanged."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import special

from temsims.ioc.physics import sims as sp
from temsims.ioc.physics.ion_optics import probe_diameter_nm
from temsims.ioc.physics.materials import isotope_mass_u

# The halo measurement's edge (tests/analysis/analysis_sims.py): 100 nm of natural
# Li2CO3 over x < 0 on a carbon film, 2 nm pixels.
sys.path.append(str(Path(__file__).resolve().parents[1] / "analysis"))
from analysis_sims import edge_specimen  # noqa: E402

LI = (isotope_mass_u("6Li"), isotope_mass_u("7Li"))
PARAMS = sp.SimsParameters()


def _li7(spec, geo, params, *, spot: bool) -> float:
    e = sp.footprint_emission(spec, np.zeros(spec.shape, np.float32), geo,
                              sp.candidate_species(spec), 1, 25.5, params, spot=spot,
                              probe_fwhm_nm=20.0)
    return e["7Li"]


@pytest.mark.parametrize("distance_nm", [150.0, 300.0])
def test_a_parked_spot_beside_an_edge_counts_the_halos_share(distance_nm):
    """A spot ``d`` outside the film: the core sees nothing, the halo's Gaussian
    ``f Phi(-d / s_x)`` of the film's emission (s_x its sigma across the edge)."""
    spec = edge_specimen()
    geo = sp.ScanGeometry(16, 16, 0.2)
    on = _li7(spec, geo.at_spot(-0.6, 0.0), PARAMS, spot=True)  # well inside the film
    off = _li7(spec, geo.at_spot(distance_nm / 1000.0, 0.0), PARAMS, spot=True)
    bare = _li7(spec, geo.at_spot(distance_nm / 1000.0, 0.0),
                PARAMS.with_(halo_fraction=0.0), spot=True)
    sx = sp.halo_sigma_nm(sp.replace(geo, nx=1, fov_um=1e-6), PARAMS)[1]
    # The count samples the halo every few grid pixels: the edge within half a step.
    half = 0.5 * sp.halo_step_px(spec, sx) * spec.pixel_nm
    model = [PARAMS.halo_fraction * 0.5 * special.erfc(d / sx / math.sqrt(2))
             for d in (distance_nm + half, distance_nm, distance_nm - half)]
    print(f"d {distance_nm:g} nm: spot off/on {off / on:.5f}, halo model {model[1]:.5f} "
          f"({model[0]:.5f}-{model[2]:.5f} for the edge +-{half:g} nm)")
    assert bare < 1e-6 * on
    assert model[0] <= off / on <= model[2]


def test_a_counting_raster_on_a_uniform_film_is_unchanged_and_beside_an_edge_is_not():
    """A raster count well inside the film reads the same with or without the halo; a
    raster beside the edge picks up the halo's share of the film (the box convolved
    with the halo's Gaussian)."""
    spec = edge_specimen()
    inside = sp.ScanGeometry(16, 16, 0.2, centre_x_nm=-700.0)
    beside = sp.ScanGeometry(16, 16, 0.2, centre_x_nm=250.0)
    a, b = (_li7(spec, inside, p, spot=False)
            for p in (PARAMS, PARAMS.with_(halo_fraction=0.0)))
    assert a == pytest.approx(b, rel=1e-3)
    sx = sp.halo_sigma_nm(beside, PARAMS)[1]
    # Box [150, 350] nm across the edge at 0: the mean of f Phi(-x / s) over it.
    half = 0.5 * sp.halo_step_px(spec, sx) * spec.pixel_nm
    model = [PARAMS.halo_fraction * np.mean(0.5 * special.erfc(
        np.linspace(150.0 + e, 350.0 + e, 401) / sx / math.sqrt(2))) for e in (half, -half)]
    got = _li7(spec, beside, PARAMS, spot=False) / a
    print(f"raster beside the edge: {got:.5f} of the film's, model {model[0]:.5f}-"
          f"{model[1]:.5f}")
    assert model[0] <= got <= model[1]


def test_count_and_map_agree_across_anedge_specimen():
    """COUNT over a raster and the mean of a map of the same raster (same current,
    probe, halo) agree on a raster across the edge (a quarter of it on the film).
    Beside the edge they do not: a map's halo sees the emission beyond its window
    mirrored (decision 0040), a count the film itself."""
    spec = edge_specimen()
    geo = sp.ScanGeometry(16, 16, 0.2, centre_x_nm=50.0)
    probe = probe_diameter_nm(100.0, 30.0)
    e = sp.footprint_emission(spec, np.zeros(spec.shape, np.float32), geo,
                              sp.candidate_species(spec), 1, 25.5, PARAMS)
    count = sp.collector_expectation(LI, e, sp.primary_ion_rate(100.0), 1e-3, PARAMS)[1]
    plan = sp.FramePlan(spec, geo, LI, 100.0, 1e-3, probe, 25.5, 1, True,
                        np.zeros(spec.shape, np.float32),
                        params=PARAMS.with_(dead_time_s=0.0, dark_rate_per_s=0.0))
    mapped = float(plan.expected_lines(0, geo.ny)[1].mean())
    print(f"7Li across the edge per 1 ms: COUNT {count:.2f}, map mean {mapped:.2f}")
    assert count == pytest.approx(mapped, rel=0.01)
