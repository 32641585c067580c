"""One-off end-to-end check (decision 0042, not part of the suite): the correlative
plan on IOCs with a TEM/FIB coincidence offset, without and after
``calibrate_coincidence``; the loader's registration error against the twin's truth.

Run: ``.venv/bin/python -m pytest -q -n 0 -s tests/plans/e2e_coincidence_registration.py``
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from temsims.app.loaders import load_correlative
from temsims.constants import SIMS_COLUMN_KV, SIMS_TILT_DEG
from temsims.ioc.physics.ion_optics import coincidence_offset_um

LANDING, DZ, STATIC = 0.3, -0.15, (0.03, -0.02)
ERRORS = {"spectrometer": ["--drift-nm-per-min", "0", "--landing-error-pct", str(LANDING),
                           "--eucentric-dz-um", str(DZ), "--coincidence-um",
                           *(str(v) for v in STATIC)]}
ROIS = [(0.2, -0.1, 1.6), (-0.8, 0.6, 1.6)]


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
    from temsims.plans import calibrate_coincidence, correlative_tem_sims

    procs = instruments.get(specimen="li2co3-particles", seed=1, extra_args=ERRORS)
    cat = open_catalog(tmp_path / "catalog")
    try:
        d = connect_fast(procs, camera_size=1024)
        RE = RunEngine({"sample": "li2co3-particles seed 1", "specimen": "li2co3-particles",
                        "operator": "pytest"}, call_returns_result=True)
        require_metadata(RE)
        RE.subscribe(cat.writer())
        for calibrated in (False, True):
            if calibrated:
                res = RE(calibrate_coincidence(d, center=(0.0, 0.0), voltage_v=4500.0,
                                               species=("6Li", "7Li"))).plan_result
                print(f"\ncalibration: correction {res['correction_um']} um, left "
                      f"{res['residual_um']} um")
            res = RE(correlative_tem_sims(d, overview_fov_um=4.0, rois=ROIS,
                                          sims_pixels=(128, 96), sims_dwell_s=1e-3,
                                          exposure_s=0.01)).plan_result
            assert cat.flush(60)
            exp = load_correlative(cat, res["correlation_id"])
            ov = exp.overview_geometry.affine_to_specimen()
            for i, m in enumerate(exp.sims):
                corr = m.start.get("coincidence_um", [0.0, 0.0])
                off = coincidence_offset_um(SIMS_COLUMN_KV, 1000 * m.start["bias_kV"],
                                            SIMS_TILT_DEG, landing_error_pct=LANDING,
                                            eucentric_dz_um=DZ, static_um=STATIC,
                                            correction_um=tuple(corr))
                g = m.geometry
                truth = replace(g, centre_x_um=g.centre_x_um + off[0],
                                centre_y_um=g.centre_y_um + off[1]).affine_to_specimen()
                reg = m.registration
                assert reg is not None, m.registration_error
                err = _error(m, ov, reg.transform.params, truth)
                err0 = _error(m, ov, reg.initial_transform.params, truth)
                print(f"{'calibrated' if calibrated else 'uncalibrated'} map {i}: offset "
                      f"({off[0]:+.3f}, {off[1]:+.3f}) um, recorded geometry RMS "
                      f"{err0[0]:.2f} px, registered RMS {err[0]:.3f} max {err[1]:.3f} px, "
                      f"model {reg.quality.get('model')}, residual "
                      f"{reg.residual_sims_px:.3f} px")
    finally:
        cat.close(timeout=60)
