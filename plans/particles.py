"""Adaptive search for 6Li-labelled particles: SIMS map -> particles -> TEM zooms.

:func:`find_labelled_particles` maps 6Li and 7Li, then hands the two maps to
:func:`temsims.analysis.particles.find_particles`: dead-time correction with the
spectrometer's DEAD_TIME, segmentation on the total Li counts, N6 and N7 summed
per particle and each particle classified ``labelled`` (natural 6Li/7Li rejected
at ``significance`` sigma, Poisson and a systematic term), ``natural`` or
``uncertain``. It then goes back to TEM and images the labelled particles (and,
on request, the uncertain ones) at high magnification. Every segmented particle
is an event of the SIMS run's ``particles`` stream; all runs share one
``correlation_id``.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np

from temsims.analysis.bracketing import bracketing_correction
from temsims.analysis.halo import halo_sigma_px
from temsims.analysis.isotopes import (
    NATURAL_LI6_LI7,
    check_correction,
    check_hydride,
    hydride_ratio,
)
from temsims.analysis.particles import Particle, find_particles
from temsims.constants import species_mass
from temsims.plans._common import (
    Values,
    check_bool,
    check_calibration_policy,
    check_dead_time_calibration,
    check_geometry_calibration,
    check_int,
    check_md,
    check_number,
    check_pair,
    check_within,
    clip_within,
    device_limits,
    microscope_parts,
    read_primary_current,
    with_safe_state,
)
from temsims.plans._parallax import correct_records, parallax_survey
from temsims.plans.bracketing import bracket_values, check_reference_map, reference_run
from temsims.plans.correlative import PARTS, check_sims_voltage, role_md
from temsims.plans.mode import to_sims_mode, to_tem_mode
from temsims.plans.sims import DWELL_RANGE_S, MAX_PIXELS_PER_SIDE, ensure_focal_plane, sims_map
from temsims.plans.spectra import _unblank
from temsims.plans.tem import EXPOSURE_RANGE_S, FOV_RANGE_UM, tem_image
from temsims.plans.types import Microscope, Plan

#: Dead time (s) assumed when the spectrometer does not report DEAD_TIME (simulation).
DEFAULT_DEAD_TIME_S = 30e-9
#: Per-particle fields of the ``particles`` stream and units (besides ``index``).
PARTICLE_UNITS = {"x_um": "um", "y_um": "um", "row": "px", "col": "px", "area_px": "px",
                  "radius_px": "px", "radius_nm": "nm", "n6": "counts", "n7": "counts",
                  "z": "sigma", "sims_x_um": "um", "sims_y_um": "um", "parallax_dy_um": "um",
                  "halo_share": ""}
#: 7LiH+ (u): mass 8 holds it alone (no stable isotope of mass 8), so LiH+/Li+ is
#: counted there against 7Li (decision 0039).
LIH7_MASS_U = species_mass("7Li") + species_mass("1H")
#: Counting times (s) of the pad's hydride count.
HYDRIDE_COUNT_RANGE_S = (0.01, 10.0)
#: Fewest 7LiH+ counts for a hydride ratio worth subtracting (~22 % error).
MIN_HYDRIDE_COUNTS = 20.0
#: Fields of the ``hydride`` stream.
HYDRIDE_UNITS = {"n7": "counts", "n8": "counts", "count_time_s": "s", "h": "", "sigma_h": ""}
#: Particle fields summarised in each TEM zoom's ``correlative.particle``.
ZOOM_FIELDS = ("label", "n6", "n7", "ratio", "z", "p_natural", "classification",
               "confidence", "area_px", "radius_nm")


def particle_record(p: Particle) -> dict[str, Any]:
    """One particle as a plain dict: :meth:`Particle.to_dict` with its missing or
    infinite numbers (None there) as NaN, and ``labelled`` (bool)."""
    out = {k: (math.nan if v is None else v) for k, v in p.to_dict().items()}
    out["labelled"] = p.labelled
    return out


def _event_values(index: int, record: dict[str, Any]) -> dict[str, Any]:
    """The ``particles`` event of one record: fixed types (int, float, str, bool)."""
    out: dict[str, Any] = {"index": int(index)}
    for k, v in record.items():
        if k in ("label", "area_px", "tem_particle", "merged_into"):
            out[k] = int(v)
        elif k == "classification":
            out[k] = str(v)
        elif k == "labelled":
            out[k] = bool(v)
        else:
            out[k] = math.nan if v is None else float(v)
    return out


def count_pad_hydride(spectrometer, column, *, fov_um: float, count_time_s: float,
                      dead_time_s: float, primary_current_pa: float | None = None
                      ) -> Plan[tuple | None]:
    """Plan stub, inside an open run with the stage on the natural-Li pad: count 7Li
    and 7LiH+ (mass 8, nothing else there) on two collectors over a raster of
    ``fov_um`` for ``count_time_s``, and return LiH+/Li+ ``(h, sigma_h)``
    (:func:`temsims.analysis.isotopes.hydride_ratio`, dead time corrected, and for
    quasi-simultaneous arrival with ``primary_current_pa``) after a
    ``hydride`` event (None in a simulation). COUNT_TIME, the raster's field and mode
    are put back; the beam is left blanked."""
    cols = spectrometer.collector_list()[:2]
    old = {}
    sigs = (("fov", column.scan.fov), ("mode", column.scan.mode),
            ("count_time", spectrometer.count_time))
    for key, sig in sigs:
        old[key] = yield from bps.rd(sig, default_value=None)

    def count():
        yield from ensure_focal_plane(spectrometer, [species_mass("7Li"), LIH7_MASS_U])
        yield from bps.mv(cols[0], "7Li", cols[1], LIH7_MASS_U)
        yield from bps.mv(column.scan.mode, "Raster", column.scan.fov, fov_um,
                          spectrometer.count_time, count_time_s)
        yield from _unblank(column)
        reading = yield from bps.trigger_and_read([spectrometer], name="hydride_count")
        yield from bps.mv(column.blank, "Blanked")
        if not reading:  # not in a live RunEngine (simulation)
            return None
        n7 = float(reading[cols[0].counts.name]["value"])
        n8 = float(reading[cols[1].counts.name]["value"])
        if n8 < MIN_HYDRIDE_COUNTS:
            raise RuntimeError(
                f"the pad's hydride count gave {n8:.0f} 7LiH+ and {n7:.0f} 7Li+ counts in "
                f"{count_time_s:g} s (at least {MIN_HYDRIDE_COUNTS:g} 7LiH+ needed): is the "
                "beam on the pad, is the pad used up? Count longer or pass hydride=(h, "
                "sigma_h)")
        h, sh = hydride_ratio(n8, n7, dwell_s=count_time_s, dead_time_s=dead_time_s,
                              primary_current_pa=primary_current_pa)
        buf = Values("hydride", units=HYDRIDE_UNITS)
        buf.set_values(n7=n7, n8=n8, count_time_s=count_time_s, h=h, sigma_h=sh)
        yield from bps.trigger_and_read([buf], name="hydride")
        return h, sh

    def restore():
        yield from bps.mv(column.blank, "Blanked")
        for key, sig in sigs:
            if old[key] is not None:
                yield from bps.mv(sig, old[key])

    return (yield from bpp.finalize_wrapper(count(), restore()))


def find_labelled_particles(microscope: Microscope, *, fov_um: float, pixels: tuple = (64, 45),
                            dwell_s: float = 1e-3, center: tuple = (0.0, 0.0),
                            significance: float = 5.0, min_counts: float = 50.0,
                            zoom_fov_um: float = 0.4, exposure_s: float = 0.05,
                            max_particles: int = 20, sims_voltage_v: float = 4500.0,
                            image_uncertain: bool = False, correction: tuple | None = None,
                            reference: str | dict | None = None,
                            reference_fov_um: float = 0.2,
                            reference_pixels: tuple = (16, 16),
                            hydride: tuple | str | None = None,
                            hydride_count_s: float = 0.05,
                            halo: tuple | None = None,
                            calibration: str = "warn",
                            parallax: bool = False, parallax_exposure_s: float = 0.5,
                            md: dict | None = None) -> Plan[dict]:
    """Find the 6Li-labelled particles by SIMS and image each of them by TEM.

    Parameters
    ----------
    microscope : temsims.plans.types.Microscope
        The instrument, as in :func:`temsims.plans.correlative.correlative_tem_sims`.
    fov_um : float
        SIMS raster width (um); the map covers ``fov x fov * ny / nx / cos 45`` of the
        specimen around ``center``.
    pixels : (int, int)
        SIMS map (nx, ny), each 1..1024.
    dwell_s : float
        Dwell per pixel (s).
    center : (float, float)
        Map centre on the specimen (um).
    significance : float
        A particle is ``labelled`` when the natural 6Li/7Li ratio is rejected at this
        many sigma (one-sided; Poisson and a 3 % systematic term), > 0.
    min_counts : float
        Segments with fewer Li (6 + 7, dead-time corrected) counts are ignored, >= 0.
    zoom_fov_um : float
        Field of view of each particle's TEM image (um).
    exposure_s : float
        TEM exposure (s).
    max_particles : int
        At most this many TEM zooms (most significant first), 0..200.
    sims_voltage_v : float
        Holder bias in SIMS (V).
    image_uncertain : bool
        Also image the ``uncertain`` particles (after the labelled ones, within
        ``max_particles``).
    correction : (float, float), optional
        ``(K, sigma_K)``: the 6Li/7Li correction of standard bracketing (IMF and
        collector yields; :func:`temsims.plans.bracketed_sims_maps` measures it,
        :func:`temsims.plans.bracketing.correction_of` picks it out), applied to
        every ratio and test of the analysis and recorded in
        ``particle_analysis``. None: the ratios as measured, biased by the
        instrument's mass fractionation (a few per cent).
    reference : str or dict, optional
        Bracket the search with the specimen's isotope standard (a specimen name of
        :data:`temsims.constants.REFERENCE_REGIONS` or a dict, see
        :func:`temsims.plans.bracketing.check_reference`): a map of it before the
        search (its K corrects the search's table as it is analysed, inside the
        search's run) and one after it (before the TEM zooms): both ``sims_map``
        runs carry the ``bracketing`` block with the search's ``bracketing_id``
        (the search's SIMS run too), under a ``correlation_id`` of their own (the
        bracketing id) so that the search's experiment stays its SIMS map and its
        zooms. The after-reference run's ``bracketing`` stream and the result's
        ``bracketing`` give K interpolated to the search's time. Not with
        ``correction``.
    reference_fov_um, reference_pixels : float, (int, int)
        The reference maps' raster (inside the standard: its 0.24 um pad).
    hydride : (float, float) or "measure", optional
        The unresolved 6LiH+ on 7Li+ (decision 0039): ``(h, sigma_h)``, a LiH+/Li+
        ratio, or ``"measure"`` (needs ``reference``): after the first reference map,
        in its run, 7Li and 7LiH+ (mass 8, alone there) are counted on the pad for
        ``hydride_count_s`` (a ``hydride_count`` and a ``hydride`` stream). ``h N6``
        is subtracted from every pixel's N7 before the ratios
        (``find_particles(hydride=...)``; recorded in ``particle_analysis`` as
        ``hydride_ratio``, ``hydride_sigma``). None: left in, a labelled particle's
        ratio (~19) is low by ``h R`` (~2 % at h 1e-3), which the natural pad's
        bracket does not remove.
    hydride_count_s : float
        The pad's hydride count (s), 0.01..10 and within COUNT_TIME's limits: at the
        demo's 100 pA the pad gives ~2e6 7Li+/s, so 0.05 s counts ~100 7LiH+ (h to
        ~10 %, the labelled ratios to ~0.2 %) and sputters a fifth of what a 16 x 16
        reference map does (~13 nm of the 100 nm pad). Fewer than 20 7LiH+ counts
        fail the plan (the beam is not on the pad, or the pad is used up).
    halo : (float, float), optional
        ``(fraction, fwhm_nm)``: the ion probe's halo as measured on a sharp edge
        (:func:`temsims.analysis.halo.measure_probe_halo`;
        :data:`temsims.constants.PROBE_HALO`), fraction in [0, 0.5), FWHM (nm) > 0.
        Its share is subtracted from both maps before the particles are segmented
        (``halo`` of :func:`~temsims.analysis.particles.find_particles`, its sigma in
        the map's pixels), and recorded in ``particle_analysis``. None: a particle
        near a bright labelled one keeps a few per cent of its 6Li.
    calibration : {"warn", "refuse", "ignore"}
        What to do if the ion beam's geometry is not calibrated for ``sims_voltage_v``
        (:func:`temsims.plans._common.check_geometry_calibration`: the raster never
        calibrated, the TEM/FIB coincidence never measured or measured at another
        bias) or the spectrometer counts with the nominal dead time only
        (DEAD_TIME:SOURCE "nominal": :func:`temsims.plans._common.check_dead_time_calibration`;
        the pad's K and every labelled ratio then read a few per cent off): log a
        warning naming the plan to run (``calibrate_raster``, ``calibrate_coincidence``,
        ``calibrate_dead_time``), refuse before anything moves, or not check. The
        geometry check is recorded in every run's ``geometry_calibration``, the dead
        time's in the SIMS run's ``particle_analysis`` (``dead_time_source``,
        ``dead_time_problems``).
    parallax : bool
        Correct the reported positions for the tilted beam's parallax (decision 0041):
        before the search, one bright-field ``tem_image`` run of the search field
        (``particle_survey``, 1024 px) gives the particles' heights; each particle's
        ``x_um``, ``y_um`` become its TEM projection's (the map's are kept as
        ``sims_x_um``, ``sims_y_um``, the shift as ``parallax_dy_um``, the survey's
        particle as ``tem_particle``) and a labelled particle whose TEM particle has
        a more significant labelled report is ``merged_into`` that one's ``label``
        (not imaged). The SIMS run's ``correlative.parallax`` holds the survey's
        parameters, the result's ``parallax`` the corrections. False (the default,
        as long as the twin's relief is opt-in: ``temsims ioc --relief``): the map's
        positions, right for the flat twin; a real instrument's tilted beam needs True.
    parallax_exposure_s : float
        The survey's exposure (s), within the TEM's exposures: 0.5 s at 1 nA gives
        ~3000 electrons per 4 nm pixel (0.2 % of Li2CO3's damage dose).
    md : dict, optional
        Extra start metadata of every run (``correlation_id`` links them).

    Yields
    ------
    msg : Msg
        One ``sims_map`` run (with a ``particles`` stream: one event per segmented
        particle, the fields of :class:`temsims.analysis.particles.Particle` with
        ``classification``, ``confidence``, ``p_natural`` and ``labelled``) and one
        ``tem_image`` run per imaged particle. The SIMS run's
        ``correlative.particle_analysis`` holds the analysis parameters
        (``ParticleTable.parameters``).

    Returns
    -------
    dict
        ``correlation_id``, ``uids`` {"sims": [uid], "tem": [...]} and ``imaged``
        (``[{"label", "classification", "tem_uid"}]``, the particles imaged, in
        order); ``hydride``: the (h, sigma_h) subtracted (None: none); with a
        ``reference``, ``bracketing``: ``bracketing_id``, ``uids``
        {"reference_before", "reference_after"}, ``provisional`` (the (K, sigma_K)
        the table was corrected with), ``factor`` (K interpolated to the search)
        and ``correction`` (:meth:`BracketCorrection.to_dict`). The maps and the particle table are in the SIMS run
        (:func:`temsims.app.loaders.load_correlative` reads them back).

    Notes
    -----
    :func:`temsims.analysis.particles.find_particles` does the analysis, on the maps
    assembled from the run's own events; the pixels go to the specimen through the
    run's recorded geometry (its ``map`` block), the dead time is the spectrometer's
    DEAD_TIME. A small labelled particle touching a natural one is cut out of the
    merged segment by its excess 6Li (``split_from`` in the analysis' table); its
    ratio still carries some of its neighbour's 7Li, so for such particles the
    recorded ratio is a lower bound.
    """
    stage, tem, camera, mode, imager, spectrometer, column, bias = microscope_parts(
        microscope, *PARTS)
    fov_um = check_number("fov_um", fov_um, low=0.0, low_open=True, unit="um")
    check_within("fov_um", fov_um, device_limits(column.scan.fov), "um")
    pixels = check_pair("pixels", pixels, integer=True, low=1, high=MAX_PIXELS_PER_SIDE)
    dwell_s = check_number("dwell_s", dwell_s, low=DWELL_RANGE_S[0], high=DWELL_RANGE_S[1],
                           unit="s")
    center = check_pair("center", center, unit="um")
    for i, axis in enumerate((stage.x, stage.y)):
        check_within(f"center[{i}]", center[i], device_limits(axis), "um")
    significance = check_number("significance", significance, low=0.0, low_open=True,
                                unit="sigma")
    min_counts = check_number("min_counts", min_counts, low=0.0, unit="counts")
    zoom_fov_um = check_number("zoom_fov_um", zoom_fov_um, low=FOV_RANGE_UM[0],
                               high=FOV_RANGE_UM[1], unit="um")
    exposure_s = check_number("exposure_s", exposure_s, low=EXPOSURE_RANGE_S[0],
                              high=EXPOSURE_RANGE_S[1], unit="s")
    max_particles = check_int("max_particles", max_particles, low=0, high=200)
    sims_voltage_v = check_sims_voltage(sims_voltage_v)
    calibration = check_calibration_policy(calibration)
    image_uncertain = check_bool("image_uncertain", image_uncertain)
    try:
        correction = check_correction(correction)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"correction: {exc}") from None
    ref = None
    if reference is not None:
        if correction is not None:
            raise ValueError("reference and correction: give one (the bracket measures "
                             "the correction)")
        ref, ref_fov, ref_pixels = check_reference_map(reference, reference_fov_um,
                                                       reference_pixels, stage, column)
    measure_hydride = isinstance(hydride, str)
    if measure_hydride:
        if hydride != "measure":
            raise ValueError(f"hydride must be (h, sigma_h), 'measure' or None, got "
                             f"{hydride!r}")
        if ref is None:
            raise ValueError("hydride='measure' counts LiH+ on the isotope standard: give "
                             "reference= too (or hydride=(h, sigma_h))")
        hydride = None
    else:
        try:
            hydride = check_hydride(hydride)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"hydride: {exc}") from None
    hydride_count_s = check_number("hydride_count_s", hydride_count_s,
                                   low=HYDRIDE_COUNT_RANGE_S[0],
                                   high=HYDRIDE_COUNT_RANGE_S[1], unit="s")
    if measure_hydride:
        check_within("hydride_count_s", hydride_count_s,
                     device_limits(spectrometer.count_time), "s")
    halo_px = None
    if halo is not None:
        halo = check_pair("halo", halo)
        check_number("halo[0]", halo[0], low=0.0, high=0.5, high_open=True)
        check_number("halo[1]", halo[1], low=0.0, low_open=True, unit="nm")
        halo_px = (float(halo[0]), halo_sigma_px(halo[1], 1000.0 * fov_um / pixels[0]))
    parallax = check_bool("parallax", parallax)
    parallax_exposure_s = check_number("parallax_exposure_s", parallax_exposure_s,
                                       low=EXPOSURE_RANGE_S[0], high=EXPOSURE_RANGE_S[1],
                                       unit="s")
    md = check_md(md)
    cid = md.get("correlation_id") or str(uuid.uuid4())
    # Reads only: refused here (calibration="refuse") before anything moves.
    geometry_calibration = yield from check_geometry_calibration(
        column, sims_voltage_v, calibration, plan="find_labelled_particles")
    tau, tau_source, dead_time_problems = yield from check_dead_time_calibration(
        spectrometer, calibration, plan="find_labelled_particles",
        default=DEFAULT_DEAD_TIME_S)
    base_md = {**md, "correlation_id": cid, "geometry_calibration": geometry_calibration}
    labels = ("6Li", "7Li")
    result: dict[str, Any] = {"correlation_id": cid, "uids": {"sims": [], "tem": []},
                              "imaged": [], "hydride": hydride}
    bid = str(uuid.uuid4())
    if ref is not None:
        result["bracketing"] = {"bracketing_id": bid, "uids": {}, "correction": None,
                                "provisional": None, "factor": None}
        common = {"bracketing_id": bid, "parent_plan": "find_labelled_particles",
                  "species": ["6Li", "7Li"], "ratio": "6Li/7Li",
                  "reference": {k: ref[k] for k in sorted(ref)}}
        state: dict[str, Any] = {}

    def body():
        # Quasi-simultaneous arrival (decision 0043) is corrected from the pulses per
        # primary ion: the column's current, the same for the pad and the search.
        current = yield from read_primary_current(column)
        analysis = {"dwell_s": dwell_s, "dead_time_s": tau, "significance": significance,
                    "min_counts": min_counts, "reference_ratio": NATURAL_LI6_LI7,
                    "correction": correction, "hydride": hydride, "halo": halo_px,
                    "primary_current_pa": current}
        survey = None
        if parallax:
            survey = yield from parallax_survey(
                (stage, tem, camera, mode), center=center, fov_um=fov_um, pixels=pixels,
                sims_voltage_v=sims_voltage_v, exposure_s=parallax_exposure_s,
                md=base_md, result=result)
        yield from to_sims_mode(mode, voltage_v=sims_voltage_v)
        parts = (stage, imager, spectrometer, column, bias)
        ref_md = {**md, "correlation_id": bid}

        def reference(position):
            def measured(m):
                if position == "before":
                    state["before"] = m
                    if measure_hydride:
                        state["hydride"] = yield from count_pad_hydride(
                            spectrometer, column, fov_um=ref_fov,
                            count_time_s=hydride_count_s, dead_time_s=tau,
                            primary_current_pa=current)
                    # Until the second reference: K of the first (no drift term yet).
                    state["provisional"] = bracketing_correction(
                        m, m, certified_ratio=ref["value"],
                        certified_sigma=ref["sigma"]).factor(m.time_s)
                    return
                corr = bracketing_correction(state["before"], m,
                                             certified_ratio=ref["value"],
                                             certified_sigma=ref["sigma"])
                values = yield from bracket_values(corr, result["uids"]["sims"],
                                                   [state["t_search"]])
                result["bracketing"]["correction"] = corr.to_dict()
                result["bracketing"]["factor"] = (values[0]["k"], values[0]["sigma_k"])

            block = dict(common, role="reference", position=position, index=None,
                         dead_time_s=tau)
            result["bracketing"]["uids"][f"reference_{position}"] = yield from reference_run(
                parts, ref, labels=("6Li", "7Li"), fov_um=ref_fov, pixels=ref_pixels,
                dwell_s=dwell_s, dead_time_s=tau, min_counts=1000.0, block=block,
                md=ref_md, on_measured=measured, primary_current_pa=current)

        if ref is not None:
            yield from reference("before")
            if state.get("provisional") is not None:
                analysis["correction"] = state["provisional"]
                result["bracketing"]["provisional"] = state["provisional"]
            if state.get("hydride") is not None:
                analysis["hydride"] = result["hydride"] = state["hydride"]
        # The parameters as find_particles records them, known before the run starts.
        parameters = find_particles(np.zeros((1, 1)), np.zeros((1, 1)), **analysis).parameters
        yield from bps.mv(stage.x, center[0], stage.y, center[1])
        candidates: list[dict[str, Any]] = []

        def analyse(maps, layout):
            if maps is None:  # a simulation: nothing was mapped
                return
            table = find_particles(maps["6Li"], maps["7Li"],
                                   pixel_to_specimen=layout.geometry().affine_to_specimen(),
                                   **analysis)
            candidates.extend(particle_record(p) for p in table)
            if survey is not None:
                result["parallax"]["corrections"] = correct_records(
                    candidates, survey, layout.geometry().incidence_deg)
            buf = Values("particle", units=PARTICLE_UNITS)
            for i, rec in enumerate(candidates):
                buf.set_values(**_event_values(i, rec))
                yield from bps.trigger_and_read([buf], name="particles")

        run_md = {**base_md, "correlative": role_md(
            role="particle_search", roi_index=None,
            roi={"x_um": center[0], "y_um": center[1], "fov_um": fov_um},
            particle_analysis=dict(parameters, dead_time_source=tau_source,
                                   dead_time_problems=dead_time_problems,
                                   halo_fwhm_nm=None if halo is None else float(halo[1])),
            image_uncertain=image_uncertain, parallax=result.get("parallax"))}
        if ref is not None:
            run_md["bracketing"] = dict(common, role="unknown", position=None, index=0,
                                        dead_time_s=tau)
        t_search = time.time()
        result["uids"]["sims"].append((yield from sims_map(
            imager, spectrometer, column, stage, bias, species=labels, fov_um=fov_um,
            pixels=pixels, dwell_s=dwell_s, fly=True, after_map=analyse, md=run_md)))
        if ref is not None:
            state["t_search"] = 0.5 * (t_search + time.time())
            yield from reference("after")
        wanted = ("labelled", "uncertain") if image_uncertain else ("labelled",)
        # Labelled first, then the uncertain ones; each in the table's order.
        to_image = sorted((p for p in candidates if p["classification"] in wanted
                           and not p.get("merged_into")),
                          key=lambda p: wanted.index(p["classification"]))
        yield from to_tem_mode(mode)
        for i, p in enumerate(to_image[:max_particles]):
            yield from bps.checkpoint()
            x = clip_within(p["x_um"], device_limits(stage.x))
            y = clip_within(p["y_um"], device_limits(stage.y))
            summary = {k: (None if isinstance(p[k], float) and not math.isfinite(p[k])
                           else p[k]) for k in ZOOM_FIELDS}
            zmd = {**base_md, "correlative": role_md(
                role="particle_zoom", roi_index=i,
                roi={"x_um": x, "y_um": y, "fov_um": zoom_fov_um}, particle=summary,
                particle_analysis=dict(parameters))}
            uid = yield from tem_image(stage, tem, camera, x_um=x, y_um=y, fov_um=zoom_fov_um,
                                       exposure_s=exposure_s, md=zmd)
            result["uids"]["tem"].append(uid)
            result["imaged"].append({"label": p["label"],
                                     "classification": p["classification"], "tem_uid": uid})
        return result

    return (yield from with_safe_state(body(), column, bias))


__all__ = ["NATURAL_LI6_LI7", "count_pad_hydride", "find_labelled_particles",
           "particle_record"]
