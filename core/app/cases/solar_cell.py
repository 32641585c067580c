"""The CIGS solar-cell case: ``temsims demo --case solar-cell``.

A plan-view lamella of a chalcopyrite cell (``solar-cell``): a CdS buffer (40 nm) on
a Cu(In,Ga)Se2 absorber (150 nm) whose grains differ in Ga/(In+Ga) and whose grain
boundaries hold trace Na. The Ga+ primary beam implants Ga, which adds to the
absorber's Ga in the Ga+ signal (``instrument.md``: "Ga in the sample and Ga from the
beam overlap").

Measurement (one ``correlation_id``)
    :func:`temsims.plans.correlative_tem_sims` on one given region: a bright-field
    TEM overview of the grains, a first SIMS map of 23Na+, 69Ga+, 114Cd+ and 115In+ at
    the CdS surface, a TEM zoom; then :func:`temsims.plans.depth_profile` on the same
    region, frame after frame through the buffer into the absorber and out of its
    back (the frames are maps: the absorber's are summed for the grains).

Report (read back only from the catalog, :func:`temsims.app.loaders.load_correlative`)
    - the grains and their boundaries found on the overview
      (:func:`temsims.analysis.grains.segment_grains`), mapped onto the SIMS pixels
      through the registration;
    - the depth profile: Cd+ falls where the buffer ends, In+ where the lamella is
      sputtered through; the dose between the two and the absorber's nominal
      thickness give its sputter yield ``Y``;
    - Na segregation: the Na+ counts within ``BAND_NM`` of a TEM boundary over the
      grain interiors' level (:func:`temsims.analysis.grains.boundary_interior_ratio`),
      with a bootstrap error over grains;
    - Ga/(In+Ga) per grain with the implanted Ga separated through the steady-state
      implant ``1 / (1 + Y)`` and the full group-III site
      (:func:`temsims.analysis.grains.ga_fraction_per_grain`); the figure without
      the separation is shown beside it.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path
from typing import Any

from temsims.app.cases import Case, CaseReport

#: The four collectors: Na (boundaries), Ga and In (the absorber's group III site),
#: Cd (the buffer). 115/23 = 5.0 fits the focal plane's mass ratio of 5.4.
SPECIES = ("23Na", "69Ga", "114Cd", "115In")
SIMS_VOLTAGE_V = 4500.0
GA_PEAKS = ("69Ga", "71Ga")
CALIBRATION_FOV_UM = 0.3
#: What the specimen is (the grower's nominal stack), not its truth: the CdS buffer's
#: thickness, the absorber's thickness and mean composition Cu(In0.7Ga0.3)Se2,
#: 5.73 g/cm^3 (42.8 atoms/nm^3), and the group III site's share of the atoms.
BUFFER_NM = 40.0
ABSORBER_NM = 150.0
#: Relative standard error assumed for the absorber's thickness (a plan-view lamella
#: thinned to a specified thickness and checked by its transmission): it sets most of
#: the sputter yield's error, and so of Ga/(In+Ga) (estimate).
ABSORBER_NM_REL_SD = 0.03
CDS_DENSITY_NM3 = 4.82 * 602.214 / ((112.414 + 32.06) / 2)
CIGS_DENSITY_NM3 = 5.73 * 602.214 / ((63.546 + 0.7 * 114.818 + 0.3 * 69.723
                                       + 2 * 78.971) / 4)
X_III = 0.25
#: Sputter yield assumed by the depth plan's nm axis (CIGS, 30 keV Ga+); the report
#: measures its own.
ASSUMED_YIELD = 3.5
#: Half-width of the boundary band and the distance beyond which a pixel is interior:
#: the band holds nearly all of a boundary's Na however the beam (sigma ~12-18 nm on
#: the specimen), the drift and the TEM's boundary placement spread it (nm).
BAND_NM = 50.0
INTERIOR_NM = 100.0
#: Pixels this far from every boundary read one grain for Ga/(In+Ga) (nm).
GA_INTERIOR_NM = 60.0
#: Registration by the recorded geometry alone: Na+, Ga+ and In+ are not a monotonic
#: function of the bright-field contrast, which here is the grains' orientation.
REGISTRATION = {"refine": False}
#: A frame is in the absorber when Cd+ is below this fraction of its plateau, and
#: the implant there is at steady state (>= 2 buildup lengths past the buffer).
CD_GONE = 0.02
IN_FULL = 0.97
COVERAGE_K = 2.0
#: The frames summed for the Na ratio: the absorber is being sputtered.
NA_CD_BELOW = 0.5
NA_IN_ABOVE = 0.5
#: SIMS pixels this near the raster's edge are left out of the Na and Ga figures.
EDGE_PX = 3

#: Sizes. 30 pA: a ~25 nm probe. 128 x 90 pixels over 2 um (15.6 nm) at 0.25 ms: each
#: frame (136 ions/nm^2) removes 11 nm of absorber (17 nm of CdS), so the buffer ends
#: in the third frame and the lamella is through after ~16 (5 frames kept beyond).
FULL = {"camera_size": 256, "overview_fov_um": 2.4, "center_um": (0.0, 0.0),
        "map_fov_um": 2.0, "sims_pixels": (128, 90), "sims_dwell_s": 2.5e-4,
        "frames": 21, "aperture": "30 pA", "exposure_s": 0.05, "zoom_fov_um": 0.6,
        "tem_smooth_px": 1.5, "calibration_spot_um": (1.6, -1.6),
        "tem_contrast_ug_cm2": 60.0}
#: --quick: a smaller map of larger pixels (the dwell doubled keeps ~10 nm of absorber
#: per frame: through after ~18), the same TEM overview (the grains' boundaries need
#: its 9.4 nm pixels: at 128 px, 19 nm, the boundary recall fell to 0.65-0.83).
QUICK = {**FULL, "map_fov_um": 1.5, "sims_pixels": (64, 45), "sims_dwell_s": 5e-4,
         "frames": 22}


def measure(RE, devices, sizes: dict[str, Any], say) -> dict[str, Any]:
    """TEM overview -> SIMS map at the CdS surface -> TEM zoom (one correlative job),
    then a depth profile of the same region, in the same experiment."""
    devices.column.aperture.set(sizes["aperture"]).wait(10)
    # A wider objective aperture for the 190 nm CdS/CIGS stack: at the default
    # contrast parameter (30 ug/cm^2, carbon) its ~165 ug/cm^2 of carbon-equivalent
    # mass-thickness (Cu, In, Se scatter ~1.6 x carbon per ug) transmits 0.2 %, ~10
    # electrons per pixel; at 60, 4 % (the grains' boundary recall 0.84-0.95 on 8 seeds,
    # 0.67-0.78 at 30).
    contrast = devices.tem.contrast.get()
    devices.tem.contrast.set(sizes["tem_contrast_ug_cm2"]).wait(10)
    t = time.monotonic()
    say(f"solar-cell: TEM overview of the grains, SIMS map of {', '.join(SPECIES)}, TEM "
        f"zoom, then a {sizes['frames']}-frame depth profile through the CdS into the "
        "CIGS ...")
    try:
        corr = RE(solar_cell_plan(devices, sizes)).plan_result
    finally:
        devices.tem.contrast.set(contrast).wait(10)
    n = 1 + sum(len(corr["uids"][k]) for k in ("sims", "tem", "calibration"))
    say(f"  {n} runs in {time.monotonic() - t:.1f} s")
    return {"correlative": corr, "correlation_ids": [corr["correlation_id"]]}


def solar_cell_plan(microscope, sizes: dict[str, Any]):
    """The case's measurement as one plan (runs linked by one ``correlation_id``).

    The mass scale refitted on the beam's Ga at a spot outside the overview
    (:func:`temsims.plans.calibrate_masses`), then
    :func:`temsims.plans.correlative_tem_sims` on one given region, then
    :func:`temsims.plans.depth_profile` of the same species on it, carrying the same
    ``correlative`` block (role ``sims_map``, region 0) so that
    :func:`temsims.app.loaders.load_correlative` registers its frames with the rest.
    """
    import bluesky.plan_stubs as bps

    from temsims.plans import (
        calibrate_masses,
        correlative_tem_sims,
        depth_profile,
        sims_map,
        to_sims_mode,
        to_tem_mode,
    )
    from temsims.plans._common import with_safe_state
    from temsims.plans.correlative import role_md

    d = microscope
    cx, cy = sizes["center_um"]
    fov = sizes["map_fov_um"]
    cid = str(uuid.uuid4())
    md = {"purpose": "temsims demo", "case": "solar-cell", "correlation_id": cid}

    def calibrate():
        # The published mass calibration is off by ~0.4 % at 115 u, as much as the
        # collectors' half window: In+ and Cd+ are lost until it is refitted on the
        # beam's 69Ga/71Ga. A fresh CdS surface holds no Ga, so a spot outside the
        # overview is sputtered first until the implant is there.
        kx, ky = sizes["calibration_spot_um"]
        yield from to_sims_mode(d.mode, voltage_v=SIMS_VOLTAGE_V)
        yield from bps.mv(d.stage.x, kx, d.stage.y, ky)
        cal_md = {**md, "correlative": role_md(role="calibration", roi_index=None, roi=None)}
        uid = yield from sims_map(d.imager, d.spectrometer, d.column, d.stage, d.bias,
                            species=GA_PEAKS, fov_um=CALIBRATION_FOV_UM, pixels=(16, 11),
                            dwell_s=2e-3, md=cal_md)
        cal_uids.append(uid)
        uid = yield from calibrate_masses(d.spectrometer, peaks=GA_PEAKS, dwell_s=1e-3,
                                          column=d.column, bias=d.bias, stage=d.stage,
                                          md=cal_md)
        cal_uids.append(uid)
        yield from to_tem_mode(d.mode)

    cal_uids: list[str] = []
    yield from with_safe_state(calibrate(), d.column, d.bias)
    corr = yield from correlative_tem_sims(
        d, overview_fov_um=sizes["overview_fov_um"], center=(cx, cy),
        rois=[(cx, cy, fov)], species=SPECIES, sims_pixels=sizes["sims_pixels"],
        sims_dwell_s=sizes["sims_dwell_s"], zoom_fov_um=sizes["zoom_fov_um"],
        exposure_s=sizes["exposure_s"], calibration=sizes.get("calibration", "warn"),
        sims_voltage_v=SIMS_VOLTAGE_V, md=md)
    corr["uids"]["calibration"] = cal_uids
    roi = {"x_um": cx, "y_um": cy, "fov_um": fov}

    def profile():
        yield from to_sims_mode(d.mode, voltage_v=SIMS_VOLTAGE_V)
        yield from bps.mv(d.stage.x, cx, d.stage.y, cy)
        uid = yield from depth_profile(
            d.imager, d.spectrometer, d.column, d.stage, d.bias, species=SPECIES,
            fov_um=fov, pixels=sizes["sims_pixels"], dwell_s=sizes["sims_dwell_s"],
            frames=sizes["frames"], sputter_yield=ASSUMED_YIELD,
            atomic_density_nm3=round(CIGS_DENSITY_NM3, 3),
            md={**md, "correlation_id": corr["correlation_id"],
                "correlative": role_md(role="sims_map", roi_index=0, roi=roi,
                                       rois=[[cx, cy, fov]])})
        corr["uids"]["sims"].append(uid)
        yield from to_tem_mode(d.mode)

    yield from with_safe_state(profile(), d.column, d.bias)
    return corr


# ============================================================================ analysis
def _frame_dose(start: dict) -> float:
    """Dose of one frame of a map run (ions/nm^2), from its start document."""
    from temsims.plans.sims import sputter_depth_nm

    m = start["map"]
    nx, ny = m["pixels"]
    current = float(start.get("beam_current_pA") or 0.0)
    dose, _ = sputter_depth_nm(current, nx * ny * float(m["dwell_s"]), float(m["fov_um"]),
                               (nx, ny), incidence_deg=float(m.get("incidence_deg", 45.0)))
    return dose


def _dead_time_corrected(counts, dwell_s: float, dead_time_s: float):
    """Counts per pixel corrected for the counters' non-paralyzable dead time."""
    import numpy as np

    c = np.asarray(counts, float)
    if not dead_time_s:
        return c
    return c / np.clip(1.0 - c * dead_time_s / dwell_s, 0.05, None)


def analyse(experiment, sizes: dict[str, Any]) -> dict[str, Any]:
    """Grains, depth profile, Na ratio and Ga/(In+Ga) of a solar-cell experiment.

    Returns a dict: ``grains`` (:class:`~temsims.analysis.grains.Grains`), the depth
    profile arrays, ``na`` (BoundaryRatio), ``ga`` (GaFraction), per-pixel arrays for
    the figures and ``figures`` (the numbers of ``report.json``).
    """
    import numpy as np
    from scipy import ndimage

    from temsims.analysis.grains import (
        boundary_interior_ratio,
        ga_fraction_per_grain,
        half_fall_dose,
        ridge_pixels,
        sample_on_image,
        segment_grains,
        split_at_ridges,
        sputter_yield_from_profile,
    )
    from temsims.analysis.halo import halo_sigma_px
    from temsims.analysis.particles import subtract_halo
    from temsims.constants import PROBE_HALO

    ov = experiment.overview
    geo = experiment.overview_geometry
    grains = segment_grains(np.asarray(ov.values, float), smooth_px=sizes["tem_smooth_px"])
    tem_px_nm = 1e3 * float(geo.fov_um) / int(geo.size)
    surface = next(s for s in experiment.sims if s.start.get("plan_name") == "sims_map")
    prof = next(s for s in experiment.sims if s.start.get("plan_name") == "depth_profile")
    for mm in (surface, prof):
        if mm.registration is None:
            raise RuntimeError(f"SIMS map {mm.uid} is not registered: {mm.registration_error}")
    dwell = float(prof.start["map"]["dwell_s"])
    tau = float(prof.start.get("dead_time_s") or 0.0)
    frames = {s: _dead_time_corrected(np.asarray(prof.data[s].values, float), dwell, tau)
              for s in SPECIES}
    first = {s: _dead_time_corrected(np.asarray(surface.data[s].values, float),
                                     float(surface.start["map"]["dwell_s"]),
                                     float(surface.start.get("dead_time_s") or 0.0))
             for s in SPECIES}
    # Frame -1 is the correlative map at the surface; each frame is drawn at the
    # depth its start dose left.
    d_first = _frame_dose(surface.start)
    d_frame = _frame_dose(prof.start)
    n_frames = frames[SPECIES[0]].shape[0]
    dose = np.concatenate([[0.0], d_first + d_frame * np.arange(n_frames)])
    totals = {s: np.concatenate([[np.nansum(first[s])],
                                 np.nansum(frames[s], axis=(1, 2))]) for s in SPECIES}
    npx = np.concatenate([[np.isfinite(first[SPECIES[0]]).sum()],
                          np.isfinite(frames[SPECIES[0]]).sum(axis=(1, 2))])
    per_px = {s: totals[s] / np.maximum(npx, 1) for s in SPECIES}
    buffer_end = half_fall_dose(dose, per_px["114Cd"])
    y_cds = BUFFER_NM * CDS_DENSITY_NM3 / buffer_end
    yld = sputter_yield_from_profile(dose, per_px["115In"], ABSORBER_NM, CIGS_DENSITY_NM3,
                                     start_dose=buffer_end,
                                     thickness_rel_sd=ABSORBER_NM_REL_SD)
    # Both ends are located to within a frame: the second crossing's error too.
    step_sd = yld["frame_dose"] / math.sqrt(12.0) / (yld["through_dose"] - buffer_end)
    yld["sd"] = yld["yield"] * math.sqrt((yld["sd"] / yld["yield"]) ** 2 + step_sd**2)
    # The absorber's frames: Cd gone, implant at steady state, In still full.
    cd_plateau = float(np.nanmax(per_px["114Cd"]))
    in_full = per_px["115In"] >= IN_FULL * yld["plateau"]
    in_abs = (per_px["114Cd"] < CD_GONE * cd_plateau) & in_full
    idx = np.flatnonzero(in_abs[1:])  # frames of the depth profile
    if idx.size < 2:
        raise RuntimeError(f"only {idx.size} depth-profile frames lie in the absorber")
    absorber = {s: np.nansum(frames[s][idx], axis=0) for s in SPECIES}
    # Na's band/interior ratio needs no steady-state implant and no full In: every
    # frame that sputters absorber counts (Cd below half its plateau, In above half of
    # its own), ~1.4 times the absorber frames' Na. The interiors' Na is the scarce
    # figure (~0.6 counts per pixel over the absorber frames of a quick map).
    na_idx = np.flatnonzero(((per_px["114Cd"] < NA_CD_BELOW * cd_plateau)
                             & (per_px["115In"] >= NA_IN_ABOVE * yld["plateau"]))[1:])
    na_sum = np.nansum(frames["23Na"][na_idx], axis=0)
    # Every SIMS pixel on the TEM image: grain label and distance to a boundary.
    ny, nx = prof.geometry.shape
    rr, cc = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    trow, tcol = prof.registration.sims_to_tem_px(rr, cc)
    dist_nm = sample_on_image(grains.distance_px, trow, tcol) * tem_px_nm
    # The raster's edge pixels read the unsputtered buffer around the crater in their
    # footprint's tail (and the drift moves the crater under them): left out.
    edge = np.zeros((ny, nx), bool)
    edge[:EDGE_PX] = edge[-EDGE_PX:] = True
    edge[:, :EDGE_PX] = edge[:, -EDGE_PX:] = True
    dist_nm = np.where(edge, np.nan, dist_nm)
    label = np.nan_to_num(sample_on_image(grains.labels, trow, tcol, order=0)).astype(int)
    segment = sample_on_image(grains.segment, trow, tcol, order=0)
    # The probe's halo (decision 0040) spreads the boundaries' Na over the interiors
    # (band/interior -33 % on seed 473189): its share is subtracted first.
    pitch_nm = 1e3 * float(prof.start["map"]["fov_um"]) / int(prof.start["map"]["pixels"][0])
    halo = (PROBE_HALO["fraction"], halo_sigma_px(PROBE_HALO["fwhm_nm"], pitch_nm))
    na_counts = na_sum
    na_counts, _ = subtract_halo(na_counts, na_counts, np.isfinite(na_counts), halo)
    seg = np.nan_to_num(segment, nan=-1).astype(np.int64)
    na = boundary_interior_ratio(na_counts, dist_nm, label, band_nm=BAND_NM,
                                 interior_nm=INTERIOR_NM, segment=seg)
    # A boundary the TEM missed (two grains of one brightness, their dark line lost in
    # the noise at CONTRAST 60) shows on the Na map. Only Na beyond the band of every
    # TEM boundary tells of one (the found ones' own Na would eat their interiors).
    ridge = ridge_pixels(np.where(dist_nm > BAND_NM, na_counts, np.nan), na.interior_level)
    pitch_yx = (1e3 * float(prof.start["map"]["fov_um"]) / ny, pitch_nm)
    near_ridge = ndimage.distance_transform_edt(~ridge, sampling=pitch_yx) <= INTERIOR_NM
    if (near_ridge & (dist_nm > INTERIOR_NM)).any():
        # Its Na is no grain's interior: those pixels are left out of the level.
        na = boundary_interior_ratio(
            np.where(near_ridge & (dist_nm > INTERIOR_NM), np.nan, na_counts), dist_nm,
            label, band_nm=BAND_NM, interior_nm=INTERIOR_NM, segment=seg)
    # A merged grain read its two grains' mixture: it is cut at the ridge, and its
    # parts are Ga grains of their own.
    ga_label, inner, n_split = split_at_ridges(label, dist_nm > GA_INTERIOR_NM, ridge,
                                               pitch_nm=pitch_yx, clear_nm=GA_INTERIOR_NM)
    ga = ga_fraction_per_grain(absorber["69Ga"], absorber["115In"], ga_label, inner,
                               sputter_yield=yld["yield"], sputter_yield_sd=yld["sd"],
                               x_iii=X_III)
    x_um = prof.data["x_um_registered"].values
    y_um = prof.data["y_um_registered"].values
    k = COVERAGE_K
    per_grain = []
    for i, lab in enumerate(ga.grains):
        sel = inner & (ga_label == lab)
        per_grain.append({
            "grain": int(lab), "x_um": float(x_um[sel].mean()), "y_um": float(y_um[sel].mean()),
            "n_px": int(ga.n_px[i]), "ga_fraction": float(ga.ratio[i]),
            "u95": float(k * ga.sd[i]), "naive": float(ga.naive[i]),
            "on_line": bool(ga.on_line[i]),
            "ga_counts_px": float(ga.ga[i]), "in_counts_px": float(ga.in_[i]),
            "interior_xy_um": np.round(np.stack([x_um[sel], y_um[sel]], axis=1), 4).tolist()})
    lo, hi = (float(np.nanmin(x_um)), float(np.nanmax(x_um))), \
        (float(np.nanmin(y_um)), float(np.nanmax(y_um)))
    figures: dict[str, Any] = {
        "coverage_k": k,
        "grains": {"found_on_tem": grains.n, "merged": grains.merged,
                   "split_at_na_ridges": n_split,
                   "with_ga_fraction": int(ga.grains.size), "tem_pixel_nm": tem_px_nm},
        "na_boundary_interior_ratio": {
            "value": na.ratio, "u95": k * na.sd, "band_nm": na.band_nm,
            "interior_nm": na.interior_nm, "band_counts_px": na.band_mean,
            "interior_counts_px": na.interior_level, "n_band_px": na.n_band,
            "n_interior_px": na.n_interior, "n_grains": na.n_grains,
            "n_segments": na.n_segments,
            "definition": f"mean Na within {na.band_nm:g} nm of a grain boundary / mean "
                          f"farther than {na.interior_nm:g} nm (each boundary segment's "
                          f"excess summed to {na.interior_nm:g} nm over its band's "
                          "pixels; median of the segments weighted by their band)"},
        "depth_profile": {
            "frame_dose_ions_nm2": d_frame, "first_map_dose_ions_nm2": d_first,
            "buffer_end_dose_ions_nm2": buffer_end,
            "through_dose_ions_nm2": yld["through_dose"],
            "absorber_frames": [int(i) for i in idx],
            "na_frames": [int(i) for i in na_idx],
            "cds_sputter_yield": y_cds,
            "cigs_sputter_yield": {"value": yld["yield"], "u95": k * yld["sd"]},
            "nominal": {"buffer_nm": BUFFER_NM, "absorber_nm": ABSORBER_NM,
                        "absorber_nm_rel_sd": ABSORBER_NM_REL_SD,
                        "cigs_atoms_nm3": CIGS_DENSITY_NM3, "cds_atoms_nm3": CDS_DENSITY_NM3}},
        "ga_implant": {
            "method": "steady-state implant 1/(1+Y) with Y from the depth profile; grains on "
                      "the line G = c - k I (x_Ga + x_In = 1/4); J = c / (1 + Y/4); "
                      "Ga/(In+Ga) = (G - J) / (c - J)",
            "implant_counts_px": ga.implant, "implant_u95": k * ga.implant_sd,
            "implant_share_of_ga_signal": ga.implant_fraction,
            "useful_yield_ratio_ga_in": {"value": ga.k, "u95": k * ga.k_sd},
            "line_c": {"value": ga.c, "u95": k * ga.c_sd},
            "ga_plus_in_cds_last_frame_counts_px": None,
            "mean_naive": float(np.mean(ga.naive)), "mean_corrected": float(np.mean(ga.ratio)),
            "u95_parts_median": {p: float(k * np.median(v)) for p, v in ga.sd_parts.items()}},
        "ga_fraction_per_grain": per_grain,
        "map_extent_um": {"x": lo, "y": hi},
        "registration": {
            label_: {"uid": mm.uid, "shift_px": [float(s) for s in mm.registration.shift_px]}
            for label_, mm in (("surface map", surface), ("depth profile", prof))},
    }
    # The implant seen alone: Ga+ in the last CdS frame (no Ga in CdS).
    cds = np.flatnonzero(per_px["114Cd"] > 0.5 * cd_plateau)
    figures["ga_implant"]["ga_plus_in_cds_last_frame_counts_px"] = \
        float(per_px["69Ga"][cds[-1]]) if cds.size else None
    return {"grains": grains, "dose": dose, "per_px": per_px, "absorber": absorber,
            "dist_nm": dist_nm, "label": label, "na": na, "ga": ga, "profile_map": prof,
            "surface_map": surface, "first": first, "figures": figures, "yield": yld,
            "buffer_end": buffer_end, "inner": inner}


# ============================================================================ report
def report(cat, measured: dict[str, Any], out: Path, sizes: dict[str, Any],
           say) -> CaseReport:
    """Read the experiment back from ``cat``, analyse it, write PNGs and report.json."""
    from temsims.app.demo import _json_ready
    from temsims.app.loaders import load_correlative

    cid = measured["correlation_ids"][0]
    t = time.monotonic()
    experiment = load_correlative(cat, cid, registration_options=REGISTRATION,
                                  roles=("overview", "sims_map", "tem_zoom"))
    say(f"runs read back from the catalog (temsims.app.loaders.load_correlative) and "
        f"registered in {time.monotonic() - t:.1f} s")
    t = time.monotonic()
    result = analyse(experiment, sizes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = _figures(out, experiment, result)
    fig = result["figures"]
    report_json = {"case": "solar-cell", "specimen": CASE.specimen, "source": "catalog",
                   "correlation_ids": {"solar-cell": cid}, "sizes": sizes,
                   "figures": [str(f) for f in files], **fig}
    path = out / "report.json"
    path.write_text(json.dumps(_json_ready(report_json), allow_nan=False))
    files.append(path)
    say(f"report written in {time.monotonic() - t:.1f} s")
    for line in summary_lines(fig):
        say(line)
    summary = {k: v for k, v in fig.items() if k != "ga_fraction_per_grain"}
    return CaseReport(files=files, correlation_ids=[cid], summary=summary)


def summary_lines(fig: dict[str, Any]) -> list[str]:
    """What the demo prints of the figures."""
    na = fig["na_boundary_interior_ratio"]
    dp = fig["depth_profile"]
    gi = fig["ga_implant"]
    y = dp["cigs_sputter_yield"]
    rs = [g["ga_fraction"] for g in fig["ga_fraction_per_grain"]]
    return [
        f"grains on the TEM overview: {fig['grains']['found_on_tem']} "
        f"({fig['grains']['with_ga_fraction']} with Ga/(In+Ga))",
        f"Na at the grain boundaries: band {na['band_nm']:g} nm / interior = "
        f"{na['value']:.1f} +- {na['u95']:.1f} (95 %)",
        f"CIGS sputter yield from the depth profile {y['value']:.2f} +- {y['u95']:.2f} "
        f"atoms/ion (CdS {dp['cds_sputter_yield']:.2f})",
        f"implanted Ga: {100 * gi['implant_share_of_ga_signal']:.0f} % of the Ga+ signal; "
        f"Ga/(In+Ga) per grain {min(rs):.3f}..{max(rs):.3f} (mean {gi['mean_corrected']:.3f}"
        f", u95 ~{gi['u95_parts_median'].get('yield', 0):.3f} from Y); without the "
        f"separation {gi['mean_naive']:.3f}",
    ]


def _figures(out: Path, experiment, result: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Polygon

    from temsims.app.demo import ReportFigures, _extent

    figures = ReportFigures(out)
    save, files = figures.save, figures.files

    ov = experiment.overview
    ext = _extent(ov)
    grains = result["grains"]
    ga = result["ga"]
    fig_ = result["figures"]
    prof = result["profile_map"]
    x = prof.data["x_um_registered"].values
    y = prof.data["y_um_registered"].values

    def outline(ax, m):
        corners = np.array([[-0.5, -0.5, 1], [m.geometry.nx - 0.5, -0.5, 1],
                            [m.geometry.nx - 0.5, m.geometry.ny - 0.5, 1],
                            [-0.5, m.geometry.ny - 0.5, 1]]).T
        ax.add_patch(Polygon((m.geometry.affine_to_specimen() @ corners)[:2].T, closed=True,
                             fill=False, ec="yellow", lw=1))

    def boundaries(ax, colour="r"):
        ax.contour(np.asarray(ov.x_um.values), np.asarray(ov.y_um.values), grains.boundary,
                   [0.5], colors=colour, linewidths=0.6)

    # ---- 1. TEM overview: grains found, and Ga/(In+Ga) per grain
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.8))
    axes[0].imshow(ov.values, cmap="gray", origin="lower", extent=ext)
    outline(axes[0], prof)
    axes[0].set_title("bright-field TEM overview (grains by diffraction contrast);\n"
                      "SIMS map and depth profile area (yellow)", fontsize=9)
    axes[1].imshow(ov.values, cmap="gray", origin="lower", extent=ext)
    boundaries(axes[1])
    axes[1].set_title(f"grain boundaries found on it: {grains.n} grains", fontsize=9)
    ratio_img = np.full(grains.labels.shape, np.nan)
    for lab, r in zip(ga.grains, ga.ratio, strict=True):
        ratio_img[grains.labels == lab] = r
    axes[2].imshow(ov.values, cmap="gray", origin="lower", extent=ext)
    im = axes[2].imshow(ratio_img, origin="lower", extent=ext, cmap="plasma", alpha=0.75,
                        vmin=0.15, vmax=0.45)
    fig.colorbar(im, ax=axes[2], label="Ga/(In+Ga), implant separated")
    boundaries(axes[2], "w")
    for g in fig_["ga_fraction_per_grain"]:
        axes[2].text(g["x_um"], g["y_um"], f"{g['ga_fraction']:.2f}", fontsize=6,
                     ha="center", va="center", color="k")
    axes[2].set_title("Ga/(In+Ga) per grain (SIMS, absorber frames)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
    save(fig, "solar_cell_grains.png")

    # ---- 2. depth profile
    dose = result["dose"]
    per_px = result["per_px"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for s, colour in zip(SPECIES, ("tab:green", "tab:red", "tab:blue", "tab:purple"),
                         strict=True):
        ax.semilogy(dose, np.maximum(per_px[s], 1e-3), "o-", ms=3, color=colour,
                    label=f"{s}+")
    ax.axvline(result["buffer_end"], color="k", ls="--", lw=1, label="CdS / CIGS (Cd+ half)")
    ax.axvline(result["yield"]["through_dose"], color="gray", ls="--", lw=1,
               label="sputtered through (In+ half)")
    frames = fig_["depth_profile"]["absorber_frames"]
    if frames:
        ax.axvspan(dose[1 + frames[0]], dose[1 + frames[-1]] + fig_["depth_profile"][
            "frame_dose_ions_nm2"], color="y", alpha=0.15, label="absorber frames summed")
    dp = fig_["depth_profile"]
    ax.set_xlabel("dose at the frame's start (Ga+ ions / nm^2)")
    ax.set_ylabel("counts per pixel per frame")
    ax.set_title("depth profile: first map at the surface, then the depth-profile frames\n"
                 f"CIGS yield {dp['cigs_sputter_yield']['value']:.2f} +- "
                 f"{dp['cigs_sputter_yield']['u95']:.2f}, CdS {dp['cds_sputter_yield']:.2f} "
                 "atoms/ion; Ga+ in the CdS is implanted Ga only", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, "solar_cell_depth_profile.png")

    # ---- 3. the SIMS maps registered, TEM boundaries over them
    surface = result["surface_map"]
    fig, axes = plt.subplots(1, 4, figsize=(20, 5))
    panels = [("114Cd", surface, result["first"]["114Cd"], "Cd+ at the surface (CdS buffer)"),
              ("23Na", prof, result["absorber"]["23Na"], "Na+ in the absorber"),
              ("69Ga", prof, result["absorber"]["69Ga"], "69Ga+ in the absorber (+ implant)"),
              ("115In", prof, result["absorber"]["115In"], "115In+ in the absorber")]
    for ax, (s, m, values, title) in zip(axes, panels, strict=True):
        vals = np.asarray(values, float)
        vals = vals[0] if vals.ndim == 3 else vals
        vmax = np.nanpercentile(vals, 99.5) if s == "23Na" else None
        im = ax.pcolormesh(m.data["x_um_registered"].values, m.data["y_um_registered"].values,
                           vals, shading="auto", cmap="viridis", vmax=vmax)
        fig.colorbar(im, ax=ax, label="counts / pixel")
        ax.contour(np.asarray(ov.x_um.values), np.asarray(ov.y_um.values), grains.boundary,
                   [0.5], colors="w", linewidths=0.4)
        ax.set_xlim(np.nanmin(x), np.nanmax(x))
        ax.set_ylim(np.nanmin(y), np.nanmax(y))
        ax.set_title(f"{title}; TEM boundaries (white)", fontsize=9)
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
    save(fig, "solar_cell_sims_maps.png")

    # ---- 4. Na against the distance to the nearest TEM boundary; Ga/(In+Ga)
    na = result["na"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    ax = axes[0]
    ok = np.isfinite(na.profile_mean)
    ax.errorbar(na.profile_nm[ok], na.profile_mean[ok], yerr=na.profile_sem[ok], fmt="o",
                ms=3, color="tab:green", label="Na+ mean per pixel")
    ax.axvspan(0, na.band_nm, color="tab:orange", alpha=0.15, label="boundary band")
    ax.axvspan(na.interior_nm, na.profile_nm[ok].max(), color="tab:blue", alpha=0.1,
               label="interior")
    ax.axhline(na.interior_level, color="tab:blue", ls="--", lw=1,
               label="interior level (grains holding a boundary the TEM missed left out)")
    ax.set_yscale("log")
    ax.set_xlabel("distance of the SIMS pixel to the nearest TEM grain boundary (nm)")
    ax.set_ylabel("Na+ counts per pixel (absorber frames)")
    r = fig_["na_boundary_interior_ratio"]
    ax.set_title(f"Na segregation: band / interior = {r['value']:.1f} +- {r['u95']:.1f} "
                 f"(95 %)\n{na.n_segments} boundary segments, {na.n_grains} grains, "
                 f"{na.n_band} band and {na.n_interior} interior pixels", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    on = ga.on_line
    ax.errorbar(ga.in_[on], ga.ga[on], xerr=np.sqrt(ga.in_[on] / ga.n_px[on]),
                yerr=np.sqrt(ga.ga[on] / ga.n_px[on]), fmt="o", ms=4, color="k",
                label="grains (interior pixels)")
    if (~on).any():
        ax.plot(ga.in_[~on], ga.ga[~on], "s", mfc="none", color="tab:red",
                label="off the line: not fitted")
    ii = np.linspace(0.0, ga.in_.max() * 1.05, 50)
    ax.plot(ii, ga.c - ga.k * ii, "r-", lw=1, label=f"G = c - k I (k = {ga.k:.2f})")
    ax.axhline(ga.implant, color="tab:orange", ls="--", lw=1,
               label=f"implanted Ga J = c / (1 + Y/4) = {ga.implant:.1f}")
    ax.set_xlabel("115In+ counts per pixel")
    ax.set_ylabel("69Ga+ counts per pixel")
    ax.set_xlim(0, None)
    ax.set_ylim(0, None)
    ax.set_title(f"Ga+ against In+ per grain: the implant is "
                 f"{100 * ga.implant_fraction:.0f} % of the Ga+ signal", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[2]
    order = np.argsort(ga.ratio)
    pos = np.arange(order.size)
    ax.errorbar(pos, ga.ratio[order], yerr=COVERAGE_K * ga.sd[order], fmt="o", ms=4,
                color="tab:red", label="implant separated (95 %)")
    ax.plot(pos, ga.naive[order], "x", color="gray", label="implant counted as absorber Ga")
    ax.set_xlabel("grain (sorted)")
    ax.set_ylabel("Ga/(In+Ga)")
    ax.set_ylim(0, 1)
    ax.set_title("Ga/(In+Ga) per grain", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, "solar_cell_na_ga.png")
    return files


CASE = Case(
    name="solar-cell", specimen="solar-cell",
    title="CIGS absorber under CdS (plan view): TEM grains, Na+/Ga+/In+/Cd+ maps and "
          "depth profile, Na at the grain boundaries, Ga/(In+Ga) per grain with the "
          "beam's implanted Ga separated",
    full=FULL, quick=QUICK, measure=measure, report=report)
