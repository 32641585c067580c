"""Correlative TEM-SIMS: a TEM overview, SIMS maps of its regions, TEM zooms of them.

:func:`correlative_tem_sims` is a multi-run plan (bluesky's "multi-run plans"
pattern): one overview ``tem_image`` run, one ``sims_map`` run per region of interest
and one ``tem_image`` zoom per region, all sharing one ``correlation_id`` (from
``md`` or a new uuid4). Every run's start document carries ``correlative``:

``{"role": "overview" | "sims_map" | "tem_zoom", "roi_index", "roi": {x_um, y_um,
fov_um}, "rois": [[x_um, y_um, fov_um], ...]}``

and where its pixels lie on the specimen is in the run's own ``map`` block (SIMS,
:func:`temsims.analysis.maps.map_block`) or ``image`` block (TEM,
:func:`temsims.plans.tem.image_md`), the one record of each geometry.

Regions of interest are given (``rois``: list of ``(x_um, y_um, fov_um)``), then the
overview's start document lists them, or found on the overview (dark blobs of mass
thickness, :func:`find_dark_blobs`): the overview start document then says
``roi_source: "auto"`` and the found list is in the overview run's ``rois`` stream
(one event per region) and in every later run's ``correlative.rois``.

The probe's focus: the column follows the bias with its focus table, and each SIMS
run records the lab's focus offset it was mapped with (``focus_um``); what the table
leaves (decision 0044) is the lab's to measure with :func:`temsims.plans.focus_probe`
at the working bias before this plan (a FOCUS found at another bias or polarity is
stale). This plan does not refocus: at the demo's 100 pA (a 39 nm probe) 5 um of
defocus widens the probe by 1 %, at 1 pA by 31 %.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np

from temsims.analysis.geometry import TemImageGeometry
from temsims.constants import TEM_TILT_DEG, TILT_TOLERANCE_DEG
from temsims.plans._common import (
    Values,
    check_calibration_policy,
    check_geometry_calibration,
    check_int,
    check_md,
    check_number,
    check_pair,
    check_within,
    clip_within,
    device_limits,
    microscope_parts,
    with_safe_state,
    within,
)
from temsims.plans.mode import MAX_BIAS_V, MIN_SIMS_BIAS_V, to_sims_mode, to_tem_mode
from temsims.plans.sims import check_sims_map_args, sims_map
from temsims.plans.tem import EXPOSURE_RANGE_S, FOV_RANGE_UM, tem_image
from temsims.plans.types import Microscope, Plan

MAX_ROIS = 50


def tem_pixel_to_stage(row: float, col: float, *, size: int, fov_um: float, x_um: float,
                       y_um: float, tilt_deg: float = 0.0) -> tuple[float, float]:
    """TEM image pixel (row 0 = -y edge, col 0 = -x edge) -> specimen (x, y) um
    (:class:`temsims.analysis.geometry.TemImageGeometry`, alpha tilt ``tilt_deg``)."""
    geometry = TemImageGeometry(size=int(size), fov_um=float(fov_um), centre_x_um=float(x_um),
                                centre_y_um=float(y_um), tilt_alpha_deg=float(tilt_deg))
    x, y = geometry.pixel_to_specimen_um(row, col)
    return float(x), float(y)


# ============================================================================ TEM ROIs
def find_dark_blobs(image, *, fov_um: float, x_um: float = 0.0, y_um: float = 0.0,
                    tilt_deg: float = 0.0, max_rois: int = 4, sigma: float = 5.0,
                    depth_fraction: float = 0.25, min_area_px: int = 2,
                    margin: float = 3.0, min_fov_um: float = 0.4) -> list[dict]:
    """Regions of interest of a bright-field TEM image: dark (mass-thick) blobs.

    The image is smoothed (Gaussian, 0.5 px), its background level is the median and
    its noise the MAD; pixels darker than ``median - sigma * 1.4826 MAD`` and than
    ``depth_fraction`` of the darkest blobs' depth (which keeps neighbouring particles
    apart) are labelled (8-connected) and the ``max_rois`` largest blobs kept,
    biggest first.

    Returns
    -------
    list of dict
        ``x_um, y_um`` (specimen, um; the blob's darkness-weighted centroid),
        ``fov_um`` (``margin`` x the blob's equivalent diameter, at least
        ``min_fov_um``), ``area_px``, ``diameter_um`` and ``contrast`` (mean relative
        darkness).
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=float)
    if img.ndim != 2 or img.size == 0:
        return []
    size = img.shape[0]
    smooth = ndimage.gaussian_filter(img, 0.5)
    bkg = float(np.median(smooth))
    mad = float(np.median(np.abs(smooth - bkg))) * 1.4826 or float(smooth.std()) or 1.0
    dark = np.clip(bkg - smooth, 0.0, None)
    # Above the noise, and deep enough that neighbouring particles stay apart.
    mask = dark > max(sigma * mad, depth_fraction * float(np.percentile(dark, 99.9)))
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    areas = ndimage.sum(np.ones_like(img), labels, idx)
    pitch = fov_um / size
    out = []
    for lab in idx[np.argsort(-areas)]:
        area = float(areas[lab - 1])
        if area < min_area_px:
            continue
        row, col = ndimage.center_of_mass(dark, labels, lab)
        x, y = tem_pixel_to_stage(row, col, size=size, fov_um=fov_um, x_um=x_um, y_um=y_um,
                                  tilt_deg=tilt_deg)
        diameter = 2.0 * math.sqrt(area / math.pi) * pitch
        out.append({"x_um": round(float(x), 5), "y_um": round(float(y), 5),
                    "fov_um": round(max(min_fov_um, margin * diameter), 5),
                    "area_px": int(area), "diameter_um": round(diameter, 5),
                    "contrast": round(float(dark[labels == lab].mean() / (bkg or 1.0)), 5)})
        if len(out) >= max_rois:
            break
    return out


# ============================================================================ checks
def _on_reference(roi: dict, reference: dict | None) -> bool:
    """Whether an automatic region's centre lies on the isotope standard."""
    if reference is None:
        return False
    reach = reference["width_um"] / 2.0 + roi["fov_um"] / 4.0
    return (abs(roi["x_um"] - reference["x_um"]) <= reach
            and abs(roi["y_um"] - reference["y_um"]) <= reach)


def check_rois(rois, stage, column=None) -> list[dict] | None:
    """``rois``: None or a list of (x_um, y_um, fov_um), within the stage limits."""
    if rois is None:
        return None
    if isinstance(rois, str | bytes) or not isinstance(rois, Sequence):
        raise TypeError(f"rois must be None or a list of (x_um, y_um, fov_um), got {rois!r}")
    if not 1 <= len(rois) <= MAX_ROIS:
        raise ValueError(f"rois must hold 1..{MAX_ROIS} regions, got {len(rois)}")
    out = []
    for i, roi in enumerate(rois):
        if isinstance(roi, str | bytes) or not isinstance(roi, Sequence) or len(roi) != 3:
            raise TypeError(f"rois[{i}] must be (x_um, y_um, fov_um), got {roi!r}")
        x = check_number(f"rois[{i}][0] (x_um)", roi[0], unit="um")
        y = check_number(f"rois[{i}][1] (y_um)", roi[1], unit="um")
        fov = check_number(f"rois[{i}][2] (fov_um)", roi[2], low=0.0, low_open=True, unit="um")
        check_within(f"rois[{i}][0] (x_um)", x, device_limits(stage.x), "um")
        check_within(f"rois[{i}][1] (y_um)", y, device_limits(stage.y), "um")
        if column is not None:
            check_within(f"rois[{i}][2] (fov_um)", fov, device_limits(column.scan.fov), "um")
        out.append({"x_um": x, "y_um": y, "fov_um": fov})
    return out


#: The parts of the microscope the correlative plans use, in the order they unpack them.
PARTS = ("stage", "tem", "camera", "mode", "imager", "spectrometer", "column", "bias")


def check_sims_voltage(voltage_v) -> float:
    v = check_number("sims_voltage_v", voltage_v, low=-MAX_BIAS_V, high=MAX_BIAS_V, unit="V")
    if abs(v) < MIN_SIMS_BIAS_V:
        raise ValueError(f"sims_voltage_v = {voltage_v!r} V: SIMS needs |sims_voltage_v| in "
                         f"[{MIN_SIMS_BIAS_V:g}, {MAX_BIAS_V:g}] V")
    return v


def role_md(*, role: str, roi_index: int | None, roi: dict | None, **extra) -> dict:
    """The ``correlative`` start-metadata block of one run (see module doc)."""
    return {"role": role, "roi_index": roi_index, "roi": roi, **extra}


def _roi_values(rois: list[dict]) -> Values:
    return Values("rois", units={"x_um": "um", "y_um": "um", "fov_um": "um"})


# ============================================================================ plan
def correlative_tem_sims(microscope: Microscope, *, overview_fov_um: float,
                         center: tuple = (0.0, 0.0), rois: list | None = None, max_rois: int = 4,
                         species: tuple = ("6Li", "7Li"), sims_pixels: tuple = (32, 23),
                         sims_dwell_s: float = 1e-3, zoom_fov_um: float | None = None,
                         exposure_s: float = 0.05, sims_voltage_v: float = 4500.0,
                         fly: bool = True, reference: str | dict | None = None,
                         calibration: str = "warn",
                         md: dict | None = None) -> Plan[dict]:
    """TEM overview -> regions of interest -> SIMS maps of them -> TEM zooms of them.

    Parameters
    ----------
    microscope : temsims.plans.types.Microscope
        The instrument (``temsims.devices.connect()``): ``stage``, ``tem``, ``camera``
        (:func:`temsims.plans.tem.tem_image`), ``mode`` (:func:`to_sims_mode`,
        :func:`to_tem_mode`), ``imager``, ``spectrometer``, ``column``, ``bias``
        (:func:`temsims.plans.sims.sims_map`).
    overview_fov_um : float
        Field of view of the TEM overview (um), 0.05..100.
    center : (float, float)
        Overview centre on the specimen (um).
    rois : list of (x_um, y_um, fov_um), optional
        Regions of interest (specimen um; fov the SIMS raster width); ``None``: the
        ``max_rois`` largest dark blobs of the overview (:func:`find_dark_blobs`).
    max_rois : int
        At most this many automatic regions, 1..50.
    species : tuple of str
        1..4 isotopes mapped by SIMS.
    sims_pixels : (int, int)
        SIMS map (nx, ny); ``ny = nx cos 45`` covers a square of the specimen.
    sims_dwell_s : float
        SIMS dwell per pixel (s).
    zoom_fov_um : float, optional
        Field of view of the TEM zooms (um); default: the region's fov / 2.
    exposure_s : float
        TEM exposure (s) of the overview and the zooms.
    sims_voltage_v : float
        Holder bias in SIMS (V), 100..4500 in magnitude.
    fly : bool
        SIMS maps in fly (True) or step mode.
    reference : str or dict, optional
        The specimen's isotope standard (a specimen name of
        :data:`temsims.constants.REFERENCE_REGIONS`, or a dict with ``x_um``, ``y_um``,
        ``value`` and ``width_um``): automatic regions whose centre lies on it (within
        half its width and a quarter of the region's field) are left out, so that the
        standard is not mapped as an unknown. Recorded in the overview's
        ``correlative`` block (``excluded``).
    calibration : {"warn", "refuse", "ignore"}
        What to do if the ion beam's geometry is not calibrated for ``sims_voltage_v``
        (:func:`temsims.plans._common.check_geometry_calibration`: the raster never
        calibrated, the TEM/FIB coincidence never measured or measured at another
        bias): log a warning naming the plan to run (``calibrate_raster``,
        ``calibrate_coincidence``), refuse before anything moves, or not check. The
        check is recorded in every run's ``geometry_calibration``.
    md : dict, optional
        Extra start metadata of every run; ``correlation_id`` here links the runs
        (else a new uuid4).

    Yields
    ------
    msg : Msg
        ``1 + 2 * n_rois`` runs (overview, SIMS maps, zooms).

    Returns
    -------
    dict
        ``correlation_id``, ``uids`` {"overview": uid, "sims": [...], "tem": [...]}
        and ``rois`` (list of dict). The data are in the runs:
        :func:`temsims.app.loaders.load_correlative` reads them back.
    """
    stage, tem, camera, mode, imager, spectrometer, column, bias = microscope_parts(
        microscope, *PARTS)
    overview_fov_um = check_number("overview_fov_um", overview_fov_um, low=FOV_RANGE_UM[0],
                                   high=FOV_RANGE_UM[1], unit="um")
    center = check_pair("center", center, unit="um")
    check_within("center[0]", center[0], device_limits(stage.x), "um")
    check_within("center[1]", center[1], device_limits(stage.y), "um")
    rois = check_rois(rois, stage, column)
    max_rois = check_int("max_rois", max_rois, low=1, high=MAX_ROIS)
    if not isinstance(fly, bool):
        raise TypeError(f"fly must be True or False, got {fly!r}")
    # Every SIMS map of the experiment is validated now, before the overview: a map
    # refused after the overview and the change to SIMS would waste the region's dose.
    for i, roi in enumerate(rois or [None]):
        labels, _, sims_pixels, sims_dwell_s, _, _ = check_sims_map_args(
            imager, spectrometer, column, stage, bias, species,
            None if roi is None else roi["fov_um"], sims_pixels, sims_dwell_s, 1, None,
            fly=fly, check_fov=roi is not None,
            arg_names={"pixels": "sims_pixels", "dwell_s": "sims_dwell_s",
                       "fov_um": f"rois[{i}][2] (fov_um)"})
    if zoom_fov_um is not None:
        zoom_fov_um = check_number("zoom_fov_um", zoom_fov_um, low=FOV_RANGE_UM[0],
                                   high=FOV_RANGE_UM[1], unit="um")
    exposure_s = check_number("exposure_s", exposure_s, low=EXPOSURE_RANGE_S[0],
                              high=EXPOSURE_RANGE_S[1], unit="s")
    sims_voltage_v = check_sims_voltage(sims_voltage_v)
    calibration = check_calibration_policy(calibration)
    if reference is not None:
        from temsims.plans.bracketing import check_reference  # it imports this module

        reference = check_reference(reference, stage)
        reference["width_um"] = check_number("reference['width_um']",
                                             reference.get("width_um", 0.0), low=0.0,
                                             unit="um")
    md = check_md(md)
    cid = md.get("correlation_id") or str(uuid.uuid4())
    # Reads only: refused here (calibration="refuse") before anything moves.
    geometry_calibration = yield from check_geometry_calibration(
        column, sims_voltage_v, calibration, plan="correlative_tem_sims")
    base_md = {**md, "correlation_id": cid, "geometry_calibration": geometry_calibration}
    result: dict[str, Any] = {"correlation_id": cid, "uids": {"overview": None, "sims": [],
                                                              "tem": []}, "rois": []}

    def body():
        yield from ensure_tem_mode(stage, mode)
        # ---- 1. overview, and its regions of interest in its own "rois" stream
        found: list[dict] = []

        def add_rois(image):
            if rois is None and image is not None:
                blobs = find_dark_blobs(image, fov_um=overview_fov_um, x_um=center[0],
                                        y_um=center[1], max_rois=max_rois
                                        + (1 if reference is not None else 0))
                found.extend(r for r in blobs if _within(stage, r["x_um"], r["y_um"])
                             and not _on_reference(r, reference))
                del found[max_rois:]
            elif rois is not None:
                found.extend(dict(r) for r in rois)
            buf = _roi_values(found)
            for i, r in enumerate(found):
                buf.set_values(index=i, x_um=float(r["x_um"]), y_um=float(r["y_um"]),
                               fov_um=float(r["fov_um"]))
                yield from bps.trigger_and_read([buf], name="rois")

        ov_md = {**base_md, "correlative": role_md(
            role="overview", roi_index=None, roi=None, rois=rois,
            roi_source="given" if rois is not None else "auto", max_rois=max_rois,
            **({} if reference is None else {"excluded": {
                "reason": "isotope standard", "x_um": reference["x_um"],
                "y_um": reference["y_um"], "width_um": reference["width_um"]}}))}
        result["uids"]["overview"] = yield from tem_image(
            stage, tem, camera, x_um=center[0], y_um=center[1], fov_um=overview_fov_um,
            exposure_s=exposure_s, after_image=add_rois, md=ov_md)
        result["rois"] = found
        if not found:
            return result
        # Regions are SIMS raster widths: within the column's limits.
        limits = device_limits(column.scan.fov)
        for r in found:
            r["fov_um"] = float(clip_within(r["fov_um"], limits))
        roi_list = [[r["x_um"], r["y_um"], r["fov_um"]] for r in found]

        # ---- 2. SIMS maps
        yield from to_sims_mode(mode, voltage_v=sims_voltage_v)
        for i, r in enumerate(found):
            yield from bps.checkpoint()
            yield from bps.mv(stage.x, r["x_um"], stage.y, r["y_um"])
            run_md = {**base_md, "correlative": role_md(role="sims_map", roi_index=i,
                                                        roi=dict(r), rois=roi_list)}
            result["uids"]["sims"].append((yield from sims_map(
                imager, spectrometer, column, stage, bias, species=labels, fov_um=r["fov_um"],
                pixels=sims_pixels, dwell_s=sims_dwell_s, fly=fly, md=run_md)))
        # ---- 3. TEM zooms
        yield from to_tem_mode(mode)
        for i, r in enumerate(found):
            zfov = zoom_fov_um if zoom_fov_um is not None else max(FOV_RANGE_UM[0],
                                                                    r["fov_um"] / 2.0)
            run_md = {**base_md, "correlative": role_md(role="tem_zoom", roi_index=i,
                                                        roi=dict(r), rois=roi_list)}
            result["uids"]["tem"].append((yield from tem_image(
                stage, tem, camera, x_um=r["x_um"], y_um=r["y_um"], fov_um=zfov,
                exposure_s=exposure_s, md=run_md)))
        return result

    return (yield from with_safe_state(body(), column, bias))


def ensure_tem_mode(stage, mode):
    """Plan stub: go to the TEM geometry unless alpha is already near 0 deg."""
    alpha = yield from bps.rd(stage.alpha, default_value=TEM_TILT_DEG)
    if abs(float(alpha or 0.0) - TEM_TILT_DEG) > TILT_TOLERANCE_DEG:
        yield from to_tem_mode(mode)


def _within(stage, x: float, y: float) -> bool:
    return within(x, device_limits(stage.x)) and within(y, device_limits(stage.y))


__all__ = [
    "correlative_tem_sims",
    "PARTS",
    "find_dark_blobs",
    "role_md",
    "tem_pixel_to_stage",
]
