"""Session alignment of the ion beam: the TEM/FIB coincidence and the raster, at the
working bias, before any correlative work (decision 0042, 2026-12-05 amendment).

A real column's raster field and rotation are off by a few % and a degree or two,
and its field lands up to a few um from the TEM's, by an amount that follows the
bias (decisions 0029, 0042). A lab aligns them at the start of a session, as the
instrument's staff would before handing it over: :func:`align_ion_beam` runs

1. :func:`~temsims.plans.coincidence.calibrate_coincidence` on a wide map
   (``coarse_fov_um``, one pass): the offset found must lie within 0.4 of the map's
   side, so the first look is wide;
2. :func:`~temsims.plans.raster_calibration.calibrate_raster` (field and rotation,
   read off the features of a 256 x 192 map, ``raster_passes`` passes): its
   registration needs the offset within a quarter of its map, which step 1 ensured;
3. :func:`~temsims.plans.coincidence.calibrate_coincidence` again on a fine map
   (``fine_fov_um``, one pass): step 1's wide map measured with the raster still
   off (tens of nm); this one leaves a few nm.

The correction holds for the bias, tilt, height and holder it was measured at: the
correlative plans (``correlative_tem_sims``, ``find_labelled_particles``) check the
column's COINCIDENCE:BIAS and raster calibration against their working bias.
"""

from __future__ import annotations

import uuid
from typing import Any

import bluesky.plan_stubs as bps

from temsims.plans._common import check_int, check_md, check_number
from temsims.plans.coincidence import calibrate_coincidence, check_coincidence_args
from temsims.plans.raster_calibration import calibrate_raster, check_raster_args
from temsims.plans.types import Microscope, Plan

#: Maps of the three steps: (field um, (nx, ny)).
COARSE_PIXELS = (128, 96)
RASTER_PIXELS = (256, 192)
FINE_PIXELS = (128, 96)


def align_ion_beam(microscope: Microscope, *, center: tuple = (0.0, 0.0),
                   voltage_v: float = 4500.0, species: tuple = ("7Li",),
                   coarse_fov_um: float = 6.0, raster_fov_um: float = 4.0,
                   fine_fov_um: float = 2.0, raster_passes: int = 2,
                   sims_dwell_s: float = 1e-3, exposure_s: float = 0.05,
                   md: dict | None = None) -> Plan[dict]:
    """Align the ion beam on the TEM at the working bias: coincidence (wide), raster
    field and rotation, coincidence (fine).

    Parameters
    ----------
    microscope : temsims.plans.types.Microscope
        ``stage``, ``tem``, ``camera``, ``mode``, ``imager``, ``spectrometer``,
        ``column`` (with ``coincidence_x/y``, ``fov_cal``, ``rot_cal``) and ``bias``.
    center : (float, float)
        Stage position (um) of a feature-rich area both beams see (on
        ``li2co3-particles`` the particle field, e.g. (0, 0)).
    voltage_v : float
        The working holder bias (V), 100..4500 in magnitude.
    species : tuple of str
        1..4 isotopes mapped (their total is registered).
    coarse_fov_um : float
        Field of the first coincidence map (um): the offset must lie within 0.4 of
        its smaller side (6 um over 128 x 96 px: 1.8 um along x, 2.7 um along y at
        +4.5 kV).
    raster_fov_um : float
        Field of the raster calibration's map (um; 256 x 192 px).
    fine_fov_um : float
        Field of the last coincidence map (um; 128 x 96 px).
    raster_passes : int
        Passes of the raster calibration, 1..4 (2 checks it).
    sims_dwell_s : float
        SIMS dwell per pixel (s) of every map.
    exposure_s : float
        TEM exposure (s).
    md : dict, optional
        Extra start metadata of every run; each run also carries ``alignment``
        (``id`` shared by the three steps, ``step``, ``voltage_v``).

    Yields
    ------
    msg : Msg
        The three calibrations' runs (a TEM image and its SIMS maps each).

    Returns
    -------
    dict
        ``alignment_id``, ``voltage_v``, the three plans' results (``coarse``,
        ``raster``, ``fine``), and what the column was left with: ``correction_um``,
        ``fov_cal``, ``rot_cal_deg``.

    Raises
    ------
    TypeError, ValueError
        For any invalid argument, before anything moves (each step's own checks).
    RuntimeError
        From a step that finds no trustworthy measurement (see the two plans).
    """
    md = check_md(md)
    raster_passes = check_int("raster_passes", raster_passes, low=1, high=4)
    for name, value in (("coarse_fov_um", coarse_fov_um), ("fine_fov_um", fine_fov_um),
                        ("raster_fov_um", raster_fov_um)):
        check_number(name, value, low=0.0, low_open=True, unit="um")
    aid = str(md.get("alignment_id") or uuid.uuid4())
    common = {"center": center, "voltage_v": voltage_v, "species": species,
              "sims_dwell_s": sims_dwell_s, "tem_fov_um": None, "exposure_s": exposure_s}

    def step_md(step: str) -> dict:
        return {**md, "alignment": {"id": aid, "step": step, "voltage_v": voltage_v}}

    steps = {
        "coarse": {**common, "sims_fov_um": coarse_fov_um, "sims_pixels": COARSE_PIXELS,
                   "passes": 1, "md": step_md("coincidence, wide")},
        "raster": {**common, "sims_fov_um": raster_fov_um, "sims_pixels": RASTER_PIXELS,
                   "passes": raster_passes, "md": step_md("raster")},
        "fine": {**common, "sims_fov_um": fine_fov_um, "sims_pixels": FINE_PIXELS,
                 "passes": 1, "md": step_md("coincidence, fine")},
    }
    # Every step's arguments are checked now: a refusal after the first step would
    # leave the column half-aligned.
    checks = (("coarse", "coarse_fov_um", check_coincidence_args),
              ("raster", "raster_fov_um", check_raster_args),
              ("fine", "fine_fov_um", check_coincidence_args))
    for step, fov_name, check in checks:
        try:
            parts, _ = check(microscope, **steps[step])
        except (TypeError, ValueError) as err:
            # The step's map field is this plan's ``<step>_fov_um``: say so.
            raise type(err)(f"align_ion_beam, {step} step ({fov_name} = "
                            f"{steps[step]['sims_fov_um']!r}): {err}") from err
    out: dict[str, Any] = {"alignment_id": aid, "voltage_v": float(voltage_v)}
    out["coarse"] = yield from calibrate_coincidence(microscope, **steps["coarse"])
    out["raster"] = yield from calibrate_raster(microscope, **steps["raster"])
    out["fine"] = yield from calibrate_coincidence(microscope, **steps["fine"])
    column = parts[6]
    out["correction_um"] = out["fine"]["correction_um"]
    out["fov_cal"] = float((yield from bps.rd(column.fov_cal, default_value=1.0)))
    out["rot_cal_deg"] = float((yield from bps.rd(column.rot_cal, default_value=0.0)))
    return out


__all__ = ["align_ion_beam"]
