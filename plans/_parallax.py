"""The TEM survey that puts a particle search's SIMS positions back where the TEM sees
them (decision 0041, amendment "Parallax").

The Ga+ beam lands ~50 deg from the normal at +4.5 kV (decision 0036): a SIMS map sees
a particle ``h tan(theta)`` down-beam of its TEM projection, and a large particle's
image long enough for the watershed to cut it in two. :func:`tem_survey` takes one
bright-field image of the search field in the TEM geometry before the search;
:func:`survey_heights` turns it into heights above the film (mass-thickness
``-(rho t)_0 ln(I / I_film)`` over Li2CO3's scattering density) and
:func:`correct_records` moves each reported particle back to the TEM projection
(:func:`temsims.analysis.parallax.correct_parallax`, Yamamura-weighted) and merges two
labelled reports of one TEM particle. On a flat specimen nothing rises above the film:
nothing moves.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
from scipy import ndimage

from temsims.analysis.parallax import beam_view, correct_parallax, height_from_mass_thickness
from temsims.constants import SIMS_COLUMN_KV, extraction_incidence_deg
from temsims.plans.mode import to_tem_mode
from temsims.plans.tem import FOV_RANGE_UM, tem_image
from temsims.plans.types import Plan

#: Li2CO3's density (2.11 g/cm^3) times its scattering weight per mass relative to
#: carbon (1.0072, Z^(4/3) / A of its elements): the TEM's mass-thickness scale.
LI2CO3_SCATTERING_DENSITY_G_CM3 = 2.11 * 1.0072
#: Yamamura's (f, theta_opt deg) of Li2CO3 under 25.5 keV Ga+ (decision 0041's table).
LI2CO3_YAMAMURA = (1.89, 79.3)
#: The survey image's size (px; the camera's largest): ~4.4 nm pixels over 4.5 um.
SURVEY_SIZE_PX = 1024
#: Gaussian smoothing (px) of the survey before the logarithm: 0.5 s at 1 nA gives
#: ~3000 electrons per pixel, 2.5 nm of height noise per pixel, 0.7 nm smoothed.
SURVEY_SMOOTH_PX = 1.0
#: Heights (nm) above the film taken as a particle (~7 sigma of the smoothed noise).
SURVEY_MIN_HEIGHT_NM = 5.0
#: Margin (um) of the survey beyond the map on every side.
SURVEY_MARGIN_UM = 0.1


def survey_fov_um(fov_um: float, pixels: tuple, incidence_deg: float) -> float:
    """The survey's square field: the map's (``fov x fov ny / nx / cos(incidence)``)
    larger side plus the margin."""
    height = fov_um * pixels[1] / pixels[0] / math.cos(math.radians(incidence_deg))
    return max(fov_um, height) + 2.0 * SURVEY_MARGIN_UM


def survey_heights(image, *, fov_um: float, center: tuple, contrast_ug_cm2: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(height_nm, affine) of a bright-field survey image (alpha 0, square, row 0 the
    -y edge): ``-(rho t)_0 ln(I / median I)`` over Li2CO3's scattering density, the
    film (the image's median) at 0, and its pixel ``(col, row, 1) -> (x_um, y_um, 1)``."""
    img = np.asarray(image, dtype=float)
    if img.ndim != 2 or img.shape[0] != img.shape[1] or img.shape[0] < 2:
        raise ValueError(f"a survey image must be square, got shape {img.shape}")
    smooth = ndimage.gaussian_filter(np.clip(img, 0.5, None), SURVEY_SMOOTH_PX)
    mt = -float(contrast_ug_cm2) * np.log(smooth / float(np.median(smooth)))
    h = height_from_mass_thickness(mt, LI2CO3_SCATTERING_DENSITY_G_CM3, substrate_ug_cm2=0.0)
    n = img.shape[0]
    p = fov_um / n
    affine = np.array([[p, 0.0, center[0] - (n - 1) / 2 * p],
                       [0.0, p, center[1] - (n - 1) / 2 * p], [0.0, 0.0, 1.0]])
    return h, affine


def beam_view_reference(image, *, fov_um: float, contrast_ug_cm2: float,
                        incidence_deg: float) -> np.ndarray:
    """A bright-field TEM image (alpha 0, square, rows along +y) as the tilted ion beam
    sees the specimen: each pixel, taken as a beam position, gets the image's value
    where its ray lands (:func:`temsims.analysis.parallax.beam_view` on the image's
    :func:`survey_heights`, heights under :data:`SURVEY_MIN_HEIGHT_NM` taken as the
    film so that the counting noise of a short exposure moves no ray). A SIMS map of
    a raised particle field is compared with this, not with the TEM's projection: a
    particle of radius ``r`` is seen ~0.75 r down-beam and stretched to ~2.6 r along
    the beam at 50 deg, so its features' shifts against the projection scatter with
    the particles' sizes (decision 0042's amendment "Relief")."""
    img = np.asarray(image, dtype=float)
    h, _ = survey_heights(img, fov_um=fov_um, center=(0.0, 0.0),
                          contrast_ug_cm2=contrast_ug_cm2)
    h = np.where(h > SURVEY_MIN_HEIGHT_NM, h, 0.0)
    return beam_view(img, h, 1000.0 * fov_um / img.shape[0], incidence_deg)


def tem_survey(stage, tem, camera, mode, *, center: tuple, fov_um: float,
               exposure_s: float, md: dict) -> Plan[dict | None]:
    """Plan stub: in the TEM geometry, one ``tem_image`` run of the search field at the
    camera's largest size (put back after), read with the column's contrast
    mass-thickness; returns ``{"uid", "height_nm", "affine", "fov_um"}`` (None in a
    simulation, where nothing is read). Arguments are checked by the caller."""
    yield from to_tem_mode(mode)
    old_size = yield from bps.rd(camera.size, default_value=None)
    contrast = yield from bps.rd(tem.contrast, default_value=None)
    kept: dict[str, Any] = {}

    def keep(image):
        kept["image"] = image
        yield from bps.null()

    yield from bps.mv(camera.size, SURVEY_SIZE_PX)
    try:
        uid = yield from tem_image(stage, tem, camera, x_um=center[0], y_um=center[1],
                                   fov_um=fov_um, exposure_s=exposure_s, after_image=keep,
                                   md=md)
    finally:
        if old_size is not None:
            yield from bps.mv(camera.size, old_size)
    if kept.get("image") is None or contrast is None:
        return None
    h, affine = survey_heights(kept["image"], fov_um=fov_um, center=center,
                               contrast_ug_cm2=float(contrast))
    return {"uid": uid, "height_nm": h, "affine": affine, "fov_um": fov_um}


def parallax_survey(parts: tuple, *, center: tuple, fov_um: float, pixels: tuple,
                    sims_voltage_v: float, exposure_s: float, md: dict, result: dict
                    ) -> Plan[dict | None]:
    """Plan stub of :func:`temsims.plans.find_labelled_particles` (arguments checked
    there): the survey (:func:`tem_survey`, ``parts`` = stage, tem, camera, mode) of
    the search field at ``sims_voltage_v``'s landing angle, under a ``correlation_id``
    of its own (the survey is not one of the search's TEM images: the loader would
    take it for a zoom) with ``correlative.role`` ``particle_survey`` and the search's
    ``correlation_id`` as ``search_correlation_id``. Sets ``result["parallax"]``."""
    stage, tem, camera, mode = parts
    incidence = extraction_incidence_deg(SIMS_COLUMN_KV, sims_voltage_v)
    fov = min(survey_fov_um(fov_um, pixels, incidence), FOV_RANGE_UM[1])
    pid = str(uuid.uuid4())
    smd = {**md, "correlation_id": pid, "correlative": {
        "role": "particle_survey", "roi_index": None,
        "roi": {"x_um": center[0], "y_um": center[1], "fov_um": fov},
        "search_correlation_id": md.get("correlation_id")}}
    survey = yield from tem_survey(stage, tem, camera, mode, center=center, fov_um=fov,
                                   exposure_s=exposure_s, md=smd)
    result["parallax"] = {"parallax_id": pid, "survey_uid": None if survey is None
                          else survey["uid"], "survey_fov_um": fov,
                          "survey_size_px": SURVEY_SIZE_PX, "exposure_s": exposure_s,
                          "min_height_nm": SURVEY_MIN_HEIGHT_NM,
                          "scattering_density_g_cm3": LI2CO3_SCATTERING_DENSITY_G_CM3,
                          "yamamura": list(LI2CO3_YAMAMURA), "corrections": None}
    return survey


def correct_records(records: list[dict], survey: dict, incidence_deg: float) -> dict:
    """Move each record's ``x_um``, ``y_um`` to the TEM projection of its particle and
    merge labelled records of one TEM particle, in place.

    Each record gains ``sims_x_um``, ``sims_y_um`` (as the map saw it),
    ``parallax_dy_um`` (the shift taken off y), ``tem_particle`` (the survey's particle
    it was corrected by, 0: none) and ``merged_into`` (the ``label`` of the labelled
    record of the same TEM particle with the highest ``z``, which it is a part of; 0:
    none); the kept record's position is the group's, each member's weighed by its
    ``n6``. Returns the summary recorded in the run: the survey's uid, incidence,
    particles found, records moved, their shifts' median and largest, the merges.
    """
    x = [r["x_um"] for r in records]
    y = [r["y_um"] for r in records]
    if records:
        cx, cy, tem_lab = correct_parallax(
            x, y, survey["height_nm"], survey["affine"], incidence_deg,
            min_height_nm=SURVEY_MIN_HEIGHT_NM, yamamura=LI2CO3_YAMAMURA)
    else:
        cx, cy, tem_lab = np.zeros(0), np.zeros(0), np.zeros(0, int)
    for r, xi, yi, lab in zip(records, cx, cy, tem_lab, strict=True):
        r["sims_x_um"], r["sims_y_um"] = r["x_um"], r["y_um"]
        r["parallax_dy_um"] = float(r["y_um"] - yi)
        r["x_um"], r["y_um"] = float(xi), float(yi)
        r["tem_particle"], r["merged_into"] = int(lab), 0
    merges = []
    by_particle: dict[int, list[dict]] = {}
    for r in records:
        if r["labelled"] and r["tem_particle"]:
            by_particle.setdefault(r["tem_particle"], []).append(r)
    for k, group in sorted(by_particle.items()):
        if len(group) < 2:
            continue
        keep = max(group, key=lambda r: r["z"] if math.isfinite(r["z"]) else -math.inf)
        # The segments of one image each hold part of the particle: the report is
        # where their 6Li is, on average (each segment's own corrected centroid).
        w = np.array([max(float(r.get("n6", 1.0)), 0.0) for r in group]) + 1e-9
        keep["x_um"] = float(np.dot(w, [r["x_um"] for r in group]) / w.sum())
        keep["y_um"] = float(np.dot(w, [r["y_um"] for r in group]) / w.sum())
        for r in group:
            if r is not keep:
                r["merged_into"] = int(keep["label"])
        merges.append({"tem_particle": int(k), "kept": int(keep["label"]),
                       "merged": [int(r["label"]) for r in group if r is not keep]})
    shifts = np.array([r["parallax_dy_um"] for r in records if r["tem_particle"]])
    n_tem = int(ndimage.label(survey["height_nm"] > SURVEY_MIN_HEIGHT_NM)[1])
    return {"survey_uid": survey.get("uid"), "incidence_deg": float(incidence_deg),
            "survey_fov_um": float(survey.get("fov_um", math.nan)),
            "min_height_nm": SURVEY_MIN_HEIGHT_NM, "yamamura": list(LI2CO3_YAMAMURA),
            "tem_particles": n_tem, "corrected": int(shifts.size),
            "median_dy_um": float(np.median(shifts)) if shifts.size else 0.0,
            "max_dy_um": float(np.abs(shifts).max()) if shifts.size else 0.0,
            "merges": merges}


__all__ = ["LI2CO3_SCATTERING_DENSITY_G_CM3", "LI2CO3_YAMAMURA", "beam_view_reference",
           "correct_records",
           "parallax_survey",
           "survey_fov_um", "survey_heights", "tem_survey"]
