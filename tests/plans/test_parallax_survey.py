"""The particle search's parallax survey (``plans/_parallax.py``; decision 0041's
amendment): heights from a bright-field survey image and the reported positions moved
back to the TEM projection, on Poisson images of the film alone (nothing must move) and
of a particle (its SIMS-view position ``~0.75 r`` down-beam goes back to its centre, two
labelled reports of it merge). Fresh noise per run (printed; ``TEMSIMS_TEST_ENTROPY``
reproduces it). The plan-level figures are ``test_correlative``'s search."""

import math

import numpy as np
from pytest import approx
from scoring import fresh_rng

from temsims.plans._parallax import (
    LI2CO3_SCATTERING_DENSITY_G_CM3,
    correct_records,
    survey_heights,
)

#: +4.5 kV on the 30 kV column (decision 0036).
THETA = 50.08
N = 1024
FOV_UM = 4.4
#: Carbon's contrast mass-thickness at 200 kV (ug/cm^2; the TEM's CONTRAST default).
CONTRAST = 30.0
#: Electrons per pixel of the survey's 0.5 s at 1 nA.
ELECTRONS = 3000.0


def _image(rng, height_nm=None):
    mt = 0.0 if height_nm is None else 0.1 * LI2CO3_SCATTERING_DENSITY_G_CM3 * height_nm
    # The film's own mass-thickness darkens every pixel alike.
    return rng.poisson(ELECTRONS * np.exp(-(5.0 + mt) / CONTRAST) * np.ones((N, N))
                       ).astype(np.float32)


def _records(xy, labelled=True, z=(10.0,)):
    return [{"label": i + 1, "x_um": x, "y_um": y, "labelled": labelled,
             "z": z[i % len(z)]} for i, (x, y) in enumerate(xy)]


def test_a_flat_specimen_is_not_moved():
    rng = fresh_rng("test_parallax_survey flat film")
    xy = rng.uniform(-2.0, 2.0, (40, 2))
    for _ in range(3):
        h, affine = survey_heights(_image(rng), fov_um=FOV_UM, center=(0.0, 0.0),
                                   contrast_ug_cm2=CONTRAST)
        recs = _records(xy)
        summary = correct_records(recs, {"height_nm": h, "affine": affine, "uid": "u"},
                                  THETA)
        print(f"flat film: height noise {h.std():.2f} nm, {summary['tem_particles']} "
              f"survey particles, largest shift {summary['max_dy_um'] * 1e3:.3f} nm")
        assert summary["merges"] == []
        assert max(abs(r["parallax_dy_um"]) for r in recs) < 1e-3  # < 1 nm
        assert [(r["x_um"], r["y_um"]) for r in recs] == [tuple(v) for v in xy]
        assert all(r["merged_into"] == 0 for r in recs)


def test_a_particle_goes_back_to_its_projection_and_its_two_reports_merge():
    rng = fresh_rng("test_parallax_survey particle")
    p = FOV_UM / N
    x = (np.arange(N) - (N - 1) / 2) * p * 1e3
    for r_nm in rng.uniform(40.0, 90.0, 3):
        cx, cy = rng.uniform(-1.0, 1.0, 2) * 1e3
        rho2 = (x[None, :] - cx) ** 2 + (x[:, None] - cy) ** 2
        h_true = 2.0 * np.sqrt(np.clip(r_nm ** 2 - rho2, 0.0, None))
        h, affine = survey_heights(_image(rng, h_true), fov_um=FOV_UM, center=(0.0, 0.0),
                                   contrast_ug_cm2=CONTRAST)
        assert abs(h.max() - 2 * r_nm) < 0.15 * r_nm  # the chord's top, smoothed
        # The map sees it ~0.75 r down-beam (Yamamura-weighted) as a whole; here as two
        # segments of its 3.6 r long image (their 6Li alike, centroids -0.1 r and 1.6
        # r), and a natural report far off.
        seen = [(cx, cy - 0.1 * r_nm), (cx, cy + 1.6 * r_nm), (cx + 1500.0, cy)]
        recs = _records([(a / 1e3, b / 1e3) for a, b in seen], z=(12.0, 8.0, 3.0))
        for rec, n6 in zip(recs, (500.0, 500.0, 20.0), strict=True):
            rec["n6"] = n6
        recs[2]["labelled"] = False
        summary = correct_records(recs, {"height_nm": h, "affine": affine}, THETA)
        # Each segment moved by the whole image's shift; the merged report at their mean.
        assert recs[1]["y_um"] == approx(seen[1][1] / 1e3 - recs[1]["parallax_dy_um"])
        assert recs[1]["parallax_dy_um"] * 1e3 / r_nm == approx(0.75, abs=0.1)
        err = (recs[0]["y_um"] * 1e3 - cy) / r_nm
        print(f"r {r_nm:.0f} nm: corrected - centre {err:+.3f} r; {summary}")
        # The merged report's x is the segments' weighted mean of one x: equal to it
        # within rounding (exact equality failed once by one ulp).
        assert abs(err) < 0.1 and recs[0]["x_um"] == approx(seen[0][0] / 1e3, abs=1e-12)
        assert recs[0]["tem_particle"] == recs[1]["tem_particle"] > 0
        assert recs[1]["merged_into"] == 1 and recs[0]["merged_into"] == 0
        assert summary["merges"] == [{"tem_particle": recs[0]["tem_particle"], "kept": 1,
                                      "merged": [2]}]
        assert recs[2]["tem_particle"] == 0 and recs[2]["parallax_dy_um"] == 0.0
        assert math.isclose(recs[0]["sims_y_um"], seen[0][1] / 1e3)
