"""TEM and EDX plans end to end on the real IOCs (TEM geometry)."""

from __future__ import annotations

import numpy as np
import pytest

from temsims.catalog import check_start_metadata
from temsims.plans import edx_line, edx_point, tem_image, tem_mosaic


def _particle_um(p):
    return p["x_nm"] / 1000.0, p["y_nm"] / 1000.0, p["radius_nm"] / 1000.0


def test_tem_image_dark_on_a_particle(RE, pdev, particles):
    d = pdev
    x, y, r = _particle_um(particles[1][0])
    fov = 4 * r
    RE(tem_image(d.stage, d.tem, d.camera, x_um=x, y_um=y, fov_um=fov, exposure_s=0.01,
                 md={"correlation_id": "tem-1"}))
    start = RE.docs.start()
    assert check_start_metadata(start) == []
    assert start["plan_name"] == "tem_image" and start["mode"] == "TEM"
    assert start["correlation_id"] == "tem-1"
    assert start["region"]["x_um"] == pytest.approx(x) and start["region"]["fov_um"] == fov
    assert start["plan_args"]["exposure_s"] == 0.01
    (ev,) = RE.docs.events()
    image = np.asarray(ev["data"]["camera_image"])
    n = image.shape[0]
    assert image.shape == (64, 64)
    yy, xx = np.mgrid[:n, :n]
    rr = np.hypot(xx - (n - 1) / 2, yy - (n - 1) / 2) * fov / n
    inside, outside = image[rr < 0.5 * r].mean(), image[rr > 1.3 * r].mean()
    print(f"TEM image on particle: inside {inside:.0f}, outside {outside:.0f} counts")
    assert inside < 0.9 * outside  # mass-thickness contrast: the particle is dark
    assert ev["data"]["camera_center_x"] == pytest.approx(x, abs=1e-3)


def test_tem_mosaic_tile_positions(RE, pdev):
    d = pdev
    RE(tem_mosaic(d.stage, d.tem, d.camera, center=(1.0, -2.0), n_tiles=(3, 2), fov_um=2.0,
                  overlap=0.25, exposure_s=0.005))
    start = RE.docs.start()
    assert check_start_metadata(start) == []
    pitch = 1.5
    assert start["mosaic"]["pitch_um"] == pytest.approx(pitch)
    events = RE.docs.events()
    assert len(events) == 6
    got = sorted((round(e["data"]["camera_center_x"], 3), round(e["data"]["camera_center_y"], 3))
                 for e in events)
    want = sorted((round(1.0 + i * pitch, 3), round(-2.0 + j * pitch, 3))
                  for i in (-1, 0, 1) for j in (-0.5, 0.5))
    assert np.allclose(got, want, atol=2e-3)
    assert [e["data"]["stage_x"] for e in events] == pytest.approx(
        [t[2] for t in start["mosaic"]["tiles"]], abs=2e-3)
    assert all(np.asarray(e["data"]["camera_image"]).mean() > 0 for e in events)


def test_edx_point_on_particle_and_film(RE, pdev, particles):
    d = pdev
    x, y, r = _particle_um(particles[1][0])
    results = {}
    for where, (px, py) in {"particle": (x, y), "film": (x + 3 * r, y + 3 * r)}.items():
        RE.docs.clear()
        RE(edx_point(d.stage, d.tem, d.edx, x_um=px, y_um=py, live_time_s=0.05))
        assert check_start_metadata(RE.docs.start()) == []
        data = RE.docs.events()[0]["data"]
        energy, spectrum = np.asarray(data["edx_energy"]), np.asarray(data["edx_spectrum"])
        o_k = spectrum[(energy > 450) & (energy < 600)].sum()
        c_k = spectrum[(energy > 200) & (energy < 350)].sum()
        results[where] = (o_k, c_k)
    print(f"EDX O-K / C-K counts: {results}")
    assert results["particle"][0] > 5 * max(results["film"][0], 1)  # O only in Li2CO3
    assert results["film"][1] > 0  # carbon support film


def test_edx_line_across_a_particle(RE, pdev, particles):
    d = pdev
    x, y, r = _particle_um(particles[1][0])
    npts = 9
    RE(edx_line(d.stage, d.tem, d.edx, start=(x - 2 * r, y), stop=(x + 2 * r, y), npts=npts,
                live_time_s=0.02))
    start = RE.docs.start()
    assert check_start_metadata(start) == []
    assert len(start["edx"]["points_um"]) == npts
    data = RE.docs.events()[0]["data"]
    spectra = np.asarray(data["edx_line_spectra"])
    energy = np.asarray(data["edx_energy"])
    assert spectra.shape == (npts, energy.size)
    o_k = spectra[:, (energy > 450) & (energy < 600)].sum(axis=1)
    print(f"EDX line O-K profile: {o_k.astype(int).tolist()}")
    centre = o_k[npts // 2 - 1:npts // 2 + 2].mean()
    ends = (o_k[0] + o_k[-1]) / 2
    assert centre > 5 * max(ends, 1)
    assert d.edx.mode.get() == "Point"  # restored
