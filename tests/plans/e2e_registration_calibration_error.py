"""One-off end-to-end check (issue 15, not part of the suite): the correlative plan
against IOCs whose ion raster is 3 % too wide and 1.5 deg rotated, loaded with
load_correlative; the registration error against the twin's truth."""

from __future__ import annotations

import math

import numpy as np

from temsims.analysis.registration import register_sims_to_tem
from temsims.app.loaders import load_correlative
from temsims.ioc.physics.ion_optics import true_raster

ERRORS = {"spectrometer": ["--drift-nm-per-min", "0", "--fov-error-pct", "3",
                           "--raster-rotation-deg", "1.5"]}


def _truth(m):
    from dataclasses import replace

    g = m.geometry
    fov, rot = true_raster(g.fov_um, g.rotation_deg, fov_error_pct=3.0, rotation_error_deg=1.5)
    return replace(g, fov_um=fov, rotation_deg=rot,
                   centre_x_um=float(m.start["region"]["x_um"]),
                   centre_y_um=float(m.start["region"]["y_um"])).affine_to_specimen()


def _error(m, ov, matrix, truth):
    pts = m.geometry.corners_px()
    homog = np.column_stack([pts, np.ones(len(pts))]).T
    diff = (ov @ matrix @ homog - truth @ homog)[:2]
    px = np.linalg.inv(truth[:2, :2]) @ diff
    d = np.hypot(px[0], px[1])
    return math.sqrt(float((d ** 2).mean())), float(d.max())


def test_e2e(instruments, tmp_path):
    from bluesky import RunEngine
    from instrument_support import connect_fast

    from temsims.catalog import open_catalog, require_metadata
    from temsims.plans import correlative_tem_sims

    procs = instruments.get(specimen="li2co3-particles", seed=1, extra_args=ERRORS)
    cat = open_catalog(tmp_path / "catalog")
    try:
        d = connect_fast(procs, camera_size=1024)
        RE = RunEngine({"sample": "li2co3-particles seed 1", "specimen": "li2co3-particles",
                        "operator": "pytest"}, call_returns_result=True)
        require_metadata(RE)
        RE.subscribe(cat.writer())
        res = RE(correlative_tem_sims(d, overview_fov_um=4.0, rois=[(0.2, -0.1, 1.6),
                                                                   (-0.8, 0.6, 1.6)],
                                      sims_pixels=(128, 96), sims_dwell_s=1e-3,
                                      exposure_s=0.01)).plan_result
        assert cat.flush(60)
        exp = load_correlative(cat, res["correlation_id"])
        ov = exp.overview_geometry.affine_to_specimen()
        tem = np.asarray(exp.overview.values, np.float32)
        for i, m in enumerate(exp.sims):
            reg = m.registration
            assert reg is not None, m.registration_error
            truth = _truth(m)
            err = _error(m, ov, reg.transform.params, truth)
            err0 = _error(m, ov, reg.initial_transform.params, truth)
            total = m.counts([s for s in m.species if s in m.data])
            tr = register_sims_to_tem(total, tem, m.geometry, exp.overview_geometry,
                                      model="translation")
            errt = _error(m, ov, tr.transform.params, truth)
            print(f"\nmap {i} ({m.geometry.nx}x{m.geometry.ny}, {m.geometry.fov_um} um): "
                  f"loader (affine) RMS {err[0]:.3f} max {err[1]:.3f} SIMS px; "
                  f"translation-only RMS {errt[0]:.3f} max {errt[1]:.3f}; recorded geometry "
                  f"RMS {err0[0]:.3f}; model {reg.quality['model']}, affine "
                  f"{reg.quality['affine']}, residual {reg.residual_sims_px:.3f} px, "
                  f"linear error flag {reg.linear_error_sims_px:.2f} px")
    finally:
        cat.close(timeout=60)
