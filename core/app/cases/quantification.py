"""EDX-guided SIMS quantification: ``temsims demo --case quantification``.

The instrument's quantification protocol (``instrument-abstract.txt``; decision 0028)
on the Cu-Ni ``diffusion-couple``: EDX is quantitative where Cu is above ~0.2-0.5
at.%, SIMS reaches ppm but its signal depends on the matrix; the couple holds every
concentration from 100 at.% down to ppm in one lamella, with the gradient along x in
the lamella plane, so EDX (through the thickness) and SIMS (the top nanometres) see the
same concentration at the same x.

Measurement (one plan, :func:`quantification_plan`; every run under one ``correlation_id``)
    1. :func:`temsims.plans.edx_sims_calibration`: an EDX spectrum beyond the
       couple's edge (the column's system peaks, Cu and Fe K, at 100 nA x 10 s), an
       EDX line across the gradient, then a SIMS map of 63Cu and 58Ni around it (runs
       ``edx_system_reference``, ``edx_line`` and ``sims_map``, their ``calibration``
       blocks as the plan writes them);
    2. the quantified SIMS map (:func:`temsims.plans.sims_map`, the same ion-beam
       conditions, so the calibration holds for it): a fresh stripe of the couple
       beside the calibration map (the gradient is along x only), wider, out to where
       Cu is at ppm, far below what EDX detects. Its start document carries a
       ``quantification`` block (the calibration it is for, which species is the
       analyte and which the matrix, dead time and dark rate) and a ``correlative``
       block with the role ``quantified_map``.

Report (read back only from the catalog)
    :func:`temsims.app.calibration_data.from_catalog` and
    :func:`~temsims.app.calibration_data.quantify` (EDX Cliff-Lorimer per point, SIMS
    profile at the EDX points freed of the probe's blur, RSF fit where EDX detects
    Cu, its degree by cross-validation) for the calibration; the quantified map read
    with :func:`temsims.app.loaders.load_correlative`, dead-time and dark corrected
    (:func:`~temsims.app.calibration_data.corrected_counts`) and turned into
    concentrations pixel by pixel and in bins along the gradient (each freed of the
    probe's blur along the gradient,
    :func:`temsims.analysis.quantification.blur_factor`, as the calibration's SIMS
    profile) by
    :func:`temsims.analysis.quantification.quantify_map` (counting and fit errors).
    PNGs: the EDX profile, the SIMS profile, the RSF fit, the concentration along the
    couple (EDX, then SIMS where EDX stops), and the concentration map with its
    relative error; ``report.json`` with the figures and both profiles.

The case knows no truth: the tests and the benchmark compare its ``report.json``
with the specimen's (``tests/test_demo_quantification.py``,
``benchmarks/quantification_case_benchmark.py``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from temsims.app.cases import Case, CaseReport

ANALYTE, MATRIX = "Cu", "Ni"
ANALYTE_SPECIES, MATRIX_SPECIES = "63Cu", "58Ni"
QUANTIFIED_ROLE = "quantified_map"
SIMS_VOLTAGE_V = 4500.0
#: A SIMS bin is "detected" above this many sigma (the EDX limit's convention).
DETECTION_SIGMA = 3.0

#: Sizes. The calibration is the one of ``tests/plans/test_calibration.py`` (decision
#: 0028's "plan geometry": 50 EDX points 40 nm apart at 10 nA x 0.1 s, 1 nC each; a
#: 200 x 64 px map of 2 um at 1 nA, 1 ms), whose line runs from 82 at.% Cu to 200 ppm.
#: The quantified map lies on a fresh stripe beside it along y (y = 0.52..1.88 um; the
#: calibration map spans y = +-0.45 um and sputters it), and runs from 73 at.% to
#: ~10 ppm (x = -0.4..2.0 um; the couple's grid ends at 2.05 um); its 96 rows give
#: each 40 nm bin ~2.5 % counting error at 0.1 at.% (48 rows: 3.5 %).
#: ``profile_bin_nm``: the map's bins along the gradient, the EDX step, about the
#: 93 nm probe at 1 nA. ``edx_reference_um``: the system-peak reference, beyond the
#: grid's edge at y = 2.05 um (decision 0037).
FULL = {"camera_size": 128, "line_start_um": (-0.28, 0.0), "line_stop_um": (1.68, 0.0),
        "edx_points": 50, "edx_live_time_s": 0.1, "edx_current_na": 10.0,
        "calibration_pixels": (200, 64), "dwell_s": 1e-3, "aperture": "1 nA",
        "map_center_um": (0.8, 1.2), "map_fov_um": 2.4, "map_pixels": (240, 96),
        "profile_bin_nm": 40.0, "edx_reference_um": (0.0, 3.0),
        "edx_reference_current_na": 100.0, "edx_reference_live_time_s": 10.0}
#: --quick keeps the sizes: at time scale 20 the EDX line and both maps take ~1.5 s of
#: the ~25 s the case takes (IOC start, catalog, read-back and figures are the rest),
#: and fewer EDX points or pixels would make the RSF fit, which the scores rest on,
#: noisier. The TEM camera is not used.
QUICK = {**FULL, "camera_size": 64}


# ============================================================================ measurement
def measure(RE, devices, sizes: dict[str, Any], say) -> dict[str, Any]:
    """EDX line + calibration map, then the quantified map (one experiment)."""
    t = time.monotonic()
    say(f"quantification: EDX line of {sizes['edx_points']} points across the Cu-Ni couple, "
        f"SIMS map of {ANALYTE_SPECIES} and {MATRIX_SPECIES} around it (calibration), "
        f"then a SIMS map of a fresh stripe out to ppm Cu (quantified) ...")
    result = RE(quantification_plan(devices, sizes)).plan_result
    say(f"  {len(result['uids'])} runs in {time.monotonic() - t:.1f} s")
    return {"correlation_ids": [result["correlation_id"]], **result}


def _k_factors(ht_kv: float) -> dict[str, float]:
    """Cliff-Lorimer factors of Cu against Ni at the beam energy.

    The simulator's own (``EDXModel.k_factor``), standing in for a measurement on a
    standard of known composition, which the instrument would record the same way
    (as the plan's ``k_factors`` with their source).
    """
    from temsims.ioc.physics.edx import EDXModel

    model = EDXModel([ANALYTE, MATRIX], ht_kv=ht_kv)
    return {ANALYTE: model.k_factor(ANALYTE, MATRIX), MATRIX: 1.0}


def quantification_plan(microscope, sizes: dict[str, Any]):
    """The case's measurement as one plan (runs linked by one ``correlation_id``).

    :func:`temsims.plans.edx_sims_calibration` (EDX line, calibration map), then
    :func:`temsims.plans.sims_map` of the same two species on a fresh stripe with the
    same aperture and dwell, in the SIMS geometry, the instrument left in TEM with the
    beam blanked and the bias at 0 V (also on failure).

    Returns
    -------
    dict
        ``correlation_id``, ``calibration_id`` (the same), ``uids``
        {"edx_system_reference", "edx_line", "sims_map", "quantified_map"}.
    """
    import bluesky.plan_stubs as bps

    from temsims.catalog import new_correlation_id
    from temsims.plans import edx_sims_calibration, sims_map, to_sims_mode, to_tem_mode
    from temsims.plans._common import with_safe_state
    from temsims.plans.correlative import role_md

    d = microscope
    cid = new_correlation_id()
    md = {"purpose": "temsims demo", "case": "quantification", "correlation_id": cid}
    k = _k_factors(float(d.tem.ht.get()))
    cal = yield from edx_sims_calibration(
        d, start_um=tuple(sizes["line_start_um"]), stop_um=tuple(sizes["line_stop_um"]),
        points=sizes["edx_points"], edx_live_time_s=sizes["edx_live_time_s"],
        edx_current_na=sizes["edx_current_na"], sims_pixels=tuple(sizes["calibration_pixels"]),
        sims_dwell_s=sizes["dwell_s"], sims_aperture=sizes["aperture"],
        sims_voltage_v=SIMS_VOLTAGE_V, analyte=ANALYTE, analyte_species=ANALYTE_SPECIES,
        matrix_species=MATRIX_SPECIES, k_factors=k,
        k_factor_source="simulator (EDXModel.k_factor), standing in for a standard",
        edx_reference_um=tuple(sizes["edx_reference_um"]),
        edx_reference_current_na=sizes["edx_reference_current_na"],
        edx_reference_live_time_s=sizes["edx_reference_live_time_s"], md=md)
    cx, cy = sizes["map_center_um"]
    fov = sizes["map_fov_um"]
    result = {"correlation_id": cid, "calibration_id": cal["calibration_id"],
              "uids": {**cal["uids"], QUANTIFIED_ROLE: None}}

    def quantified_map():
        yield from to_sims_mode(d.mode, voltage_v=SIMS_VOLTAGE_V)
        yield from bps.mv(d.stage.x, cx, d.stage.y, cy)
        old_aperture = yield from bps.rd(d.column.aperture, default_value=None)
        yield from bps.mv(d.column.aperture, sizes["aperture"])
        dead = float((yield from bps.rd(d.spectrometer.dead_time, default_value=0.0)) or 0.0)
        dark = float((yield from bps.rd(d.spectrometer.dark_rate, default_value=0.0)) or 0.0)
        block = {"calibration_id": cal["calibration_id"], "role": QUANTIFIED_ROLE,
                 "species": {"analyte": ANALYTE_SPECIES, "matrix": MATRIX_SPECIES},
                 "dead_time_s": dead, "dark_rate_per_s": dark}
        roi = {"x_um": cx, "y_um": cy, "fov_um": fov}
        result["uids"][QUANTIFIED_ROLE] = yield from sims_map(
            d.imager, d.spectrometer, d.column, d.stage, d.bias,
            species=(ANALYTE_SPECIES, MATRIX_SPECIES), fov_um=fov,
            pixels=tuple(sizes["map_pixels"]), dwell_s=sizes["dwell_s"],
            md={**md, "quantification": block,
                "correlative": role_md(role=QUANTIFIED_ROLE, roi_index=0, roi=roi)})
        if old_aperture is not None:
            yield from bps.mv(d.column.blank, "Blanked")
            yield from bps.mv(d.column.aperture, str(old_aperture))
        yield from to_tem_mode(d.mode)

    yield from with_safe_state(quantified_map(), d.column, d.bias)
    return result


# ============================================================================ analysis
def analyse(cat, correlation_id: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """The calibration and the quantified map of one experiment, from the catalog.

    Returns
    -------
    dict
        ``calibration`` (:class:`temsims.app.calibration_data.CalibrationResult`),
        ``map`` (the quantified map: ``concentration``, ``sigma``, ``extrapolated``
        per pixel, ``x_um``/``y_um`` pixel centres, the binned ``profile``, the raw
        ``counts``), ``figures`` (the numbers of ``report.json``).
    """
    from temsims.app import calibration_data as cd
    from temsims.app.loaders import load_correlative

    data = cd.from_catalog(cat, correlation_id)
    qexp = load_correlative(cat, correlation_id, register=False, roles=(QUANTIFIED_ROLE,))
    if not qexp.sims:
        raise RuntimeError(f"no {QUANTIFIED_ROLE!r} run in experiment {correlation_id}")
    return analyse_runs(data, qexp.sims[-1], sizes)


def analyse_runs(data, qm, sizes: dict[str, Any]) -> dict[str, Any]:
    """:func:`analyse` on runs already read back: ``data`` from
    :func:`temsims.app.calibration_data.from_catalog`, ``qm`` the quantified map from
    :func:`temsims.app.loaders.load_correlative` (a benchmark re-analyses kept runs
    with it, without their catalog)."""
    import numpy as np

    from temsims.analysis import quantification as qn
    from temsims.app import calibration_data as cd

    res = cd.quantify(data)
    block = qm.start["quantification"]
    dwell = float(qm.data.attrs.get("dwell_s", qm.start["map"]["dwell_s"]))
    dark = float(block["dark_rate_per_s"]) * dwell
    counts = {label: np.asarray(qm.data[block["species"][label]].values, float)
              for label in ("analyte", "matrix")}
    corrected = {label: cd.corrected_counts(c, dwell_s=dwell,
                                            dead_time_s=float(block["dead_time_s"]),
                                            dark_counts=dark)
                 for label, c in counts.items()}
    affine_nm = qm.geometry.affine_to_specimen()
    affine_nm[:2] *= 1000.0  # temsims.analysis.quantification works in nm
    pixels = {label: np.maximum(c, 0.0) for label, c in corrected.items()}
    # The calibration compared EDX points with SIMS freed of the probe's blur
    # (calibration_data.quantify, match_resolution): the quantified map is freed of it
    # too, with its own recorded probe (on the couple's convex tail the blur alone reads
    # +1 % at 20 at.%, +4 % at 0.1 at.%).
    blur = None
    if res.probe_blur is not None:
        # The same aperture as the calibration's map (quantification_plan): its probe
        # stands in where the quantified map recorded none.
        blur = cd.probe_blur(qm.start, data.direction) or {
            "core_fwhm_nm": res.probe_blur["core_fwhm_nm"],
            "halo": tuple(res.probe_blur["halo"])}
    if blur is not None:
        pixels = {label: c / qn.blur_factor(c, affine_nm, direction=data.direction, **blur)
                  for label, c in pixels.items()}
    per_pixel = qn.quantify_map(pixels["analyte"], pixels["matrix"], res.calibration)
    # Bins along the gradient across the whole map (all its rows: the couple is
    # uniform along y). Counts are summed before the ratio is taken, which keeps the
    # ratio unbiased where a pixel holds a handful of counts.
    direction = data.direction
    ny, nx = counts["analyte"].shape
    cols, rows = np.meshgrid(np.arange(nx), np.arange(ny))
    xy = affine_nm @ np.vstack([cols.ravel(), rows.ravel(), np.ones(cols.size)])
    along = xy[0] * direction[0] + xy[1] * direction[1]
    step = float(sizes["profile_bin_nm"])
    # Bin edges half a pixel outside the first column of pixel centres, so that each
    # bin holds whole columns; a bin's position is the mean position of its pixels
    # (with edges on pixel centres it sat half a pixel, 5 nm, off: +3 % at 0.1 at.%
    # on this erfc tail).
    half_px = 0.5 * float(np.hypot(*affine_nm[:2, 0]))
    edges0 = along.min() - half_px
    centres = np.arange(edges0 + step / 2, along.max() + half_px - step / 2 + 1e-9, step)
    prof = {label: qn.map_profile(c, affine_nm, centres, direction=direction)
            for label, c in corrected.items()}
    where = qn.map_profile(along.reshape(counts["analyte"].shape), affine_nm, centres,
                           direction=direction)
    totals = {label: np.maximum(pr.total, 0.0) for label, pr in prof.items()}
    if blur is not None:  # each bin's own blur (probe and bin), as the calibration's
        totals = {label: totals[label] / qn.blur_factor(
            corrected[label], affine_nm, centres, direction=direction, bin_width_nm=step,
            **blur) for label in totals}
    centres = where.mean
    binned = qn.quantify_map(totals["analyte"], totals["matrix"], res.calibration)
    x_um = xy[0].reshape(ny, nx) / 1e3
    y_um = xy[1].reshape(ny, nx) / 1e3
    return {"calibration": res, "data": data, "quantified": qm,
            "map": {"concentration": per_pixel.concentration, "sigma": per_pixel.sigma,
                    "extrapolated": per_pixel.extrapolated, "x_um": x_um, "y_um": y_um,
                    "counts": counts, "positions_nm": centres, "profile": binned,
                    "npixels": prof["analyte"].npixels},
            "figures": _figures_of(res, binned, centres, qm, sizes)}


def _figures_of(res, binned, centres, qm, sizes: dict[str, Any]) -> dict[str, Any]:
    """The numbers of ``report.json``: the calibration, where EDX stops and SIMS
    continues, and both quantified profiles (atomic fractions, 1-sigma)."""
    import numpy as np

    edx = res.edx
    x_edx = res.positions_nm
    detected = np.asarray(edx.detected[ANALYTE], bool)
    # EDX stops at the last point of the detected run that starts on the rich side
    # (a lone noise point further out is not where EDX is still quantitative).
    first_miss = int(np.argmin(detected)) if not detected.all() else detected.size
    edx_stop = first_miss - 1
    conc, sig = binned.concentration, binned.sigma
    with np.errstate(invalid="ignore", divide="ignore"):
        sims_detected = np.isfinite(conc) & (conc > DETECTION_SIGMA * sig)
    # SIMS continues while its bins are detected, from where EDX stops outwards.
    beyond = centres > (x_edx[edx_stop] if edx_stop >= 0 else -np.inf)
    run = np.flatnonzero(beyond)
    last = None
    for i in run:
        if not sims_detected[i]:
            break
        last = i
    below_dl = np.isfinite(conc) & (conc < res.detection_limit)
    rel = np.where(np.isfinite(conc) & (conc > 0), sig / np.where(conc > 0, conc, 1.0), np.nan)

    def profile(x_nm, q, extra=None):
        out = {"x_nm": np.asarray(x_nm, float), "concentration": q.concentration,
               "sigma": q.sigma, "extrapolated": np.asarray(q.extrapolated, bool)}
        out.update(extra or {})
        return out

    return {
        "analyte": ANALYTE, "matrix": MATRIX, "species": [ANALYTE_SPECIES, MATRIX_SPECIES],
        "calibration": res.record(),
        "calibration_uids": {"edx_line": res.data.edx_uid, "sims_map": res.data.sims_uid},
        "quantified_map_uid": qm.uid,
        "edx": {"x_nm": x_edx, "concentration": edx.fractions[ANALYTE],
                "sigma": edx.sigma[ANALYTE], "detected": detected,
                "detection_limit": edx.detection_limit[ANALYTE],
                "used_in_fit": res.mask},
        "edx_detection_limit_fraction": res.detection_limit,
        "edx_quantification_limit_fraction": res.quantification_limit,
        "edx_stops": {"x_nm": float(x_edx[edx_stop]) if edx_stop >= 0 else None,
                      "concentration": float(edx.fractions[ANALYTE][edx_stop])
                      if edx_stop >= 0 else None},
        "sims_continues_to": {"x_nm": float(centres[last]) if last is not None else None,
                              "concentration": float(conc[last]) if last is not None
                              else None, "detection_sigma": DETECTION_SIGMA,
                              # Detected up to the map's last bin: the map, not SIMS, ends.
                              "at_map_edge": last is not None and last == centres.size - 1},
        "calibration_profile": profile(x_edx, res.profile),
        "quantified_profile": profile(centres, binned),
        "quantified_below_edx_limit": {
            "bins": int(below_dl.sum()),
            "median_rel_sigma": float(np.nanmedian(rel[below_dl & sims_detected]))
            if np.any(below_dl & sims_detected) else None},
        "map": {"uid": qm.uid, "pixels": [int(qm.geometry.nx), int(qm.geometry.ny)],
                "pixel_nm": 1e3 * float(qm.geometry.pixel_size_um),
                "centre_um": [float(qm.geometry.centre_x_um), float(qm.geometry.centre_y_um)],
                "fov_um": float(qm.geometry.fov_um), "bin_nm": float(sizes["profile_bin_nm"])},
    }


# ============================================================================ report
def report(cat, measured: dict[str, Any], out: Path, sizes: dict[str, Any],
           say) -> CaseReport:
    """Read the experiment back from ``cat``, analyse it, write PNGs and report.json."""
    from temsims.app.demo import _json_ready

    cid = measured["correlation_ids"][0]
    t = time.monotonic()
    result = analyse(cat, cid, sizes)
    say(f"runs read back from the catalog (temsims.app.calibration_data.from_catalog, "
        f"temsims.app.loaders.load_correlative) and quantified in "
        f"{time.monotonic() - t:.1f} s")
    t = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = _figures(out, result)
    fig = result["figures"]
    report_json = {"case": "quantification", "specimen": CASE.specimen, "source": "catalog",
                   "correlation_ids": {"quantification": cid}, "sizes": sizes,
                   "figures": [str(f) for f in files], **fig}
    path = out / "report.json"
    path.write_text(json.dumps(_json_ready(report_json), indent=2, allow_nan=False))
    files.append(path)
    say(f"report written in {time.monotonic() - t:.1f} s")
    for line in summary_lines(fig):
        say(line)
    return CaseReport(files=files, correlation_ids=[cid], summary=_json_ready(fig))


def _conc(c: float | None) -> str:
    """A concentration in the unit that reads best (at.% or ppm)."""
    if c is None:
        return "-"
    return f"{100 * c:.3g} at.%" if c >= 1e-3 else f"{1e6 * c:.3g} ppm"


def summary_lines(fig: dict[str, Any]) -> list[str]:
    """What the demo prints of the figures."""
    cal = fig["calibration"]
    es, sc = fig["edx_stops"], fig["sims_continues_to"]
    below = fig["quantified_below_edx_limit"]
    out = [f"EDX: Cu detection limit {_conc(fig['edx_detection_limit_fraction'])} "
           f"(quantification limit {_conc(fig['edx_quantification_limit_fraction'])}); "
           f"EDX stops at x = {es['x_nm']:.0f} nm ({_conc(es['concentration'])})"
           if es["x_nm"] is not None else "EDX: Cu detected nowhere",
           f"RSF fit on {cal['n_points']} EDX points, C_EDX {_conc(cal['c_range'][0])}.."
           f"{_conc(cal['c_range'][1])}: ln RSF polynomial in C of degree {cal['degree']} "
           f"({cal['degree_selection']['method']}), reduced chi2 {cal['reduced_chi2']:.2f}, "
           f"dilute-limit RSF {2.718281828459045 ** cal['coefficients'][0]:.3f}"]
    corrections = cal.get("edx_corrections") or {}
    system = corrections.get("system_peaks")
    if system:
        out.append(f"EDX system peaks (reference off the couple): Cu/Fe "
                   f"{system['ratios'].get(ANALYTE, float('nan')):.2f}, "
                   f"{system['subtracted_median'].get(ANALYTE, float('nan')):.1f} Cu counts "
                   "subtracted per point"
                   + ("; sum peaks subtracted" if corrections.get("sum_peaks") else ""))
    if sc["x_nm"] is not None:
        edge = " (the map's edge: SIMS still detects Cu there)" if sc.get("at_map_edge") else ""
        out.append(f"SIMS continues to x = {sc['x_nm']:.0f} nm{edge} ({_conc(sc['concentration'])}, "
                   f"> {sc['detection_sigma']:g} sigma); {below['bins']} bins of the quantified "
                   "map below the EDX limit" + (f", median 1-sigma {100 * below['median_rel_sigma']:.1f} %"
                                                if below["median_rel_sigma"] is not None else ""))
    return out


def _figures(out: Path, result: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from temsims.app.demo import ReportFigures

    figures = ReportFigures(out)
    save, files = figures.save, figures.files

    res = result["calibration"]
    fig_ = result["figures"]
    m = result["map"]
    edx = fig_["edx"]
    x_edx = np.asarray(edx["x_nm"])
    c_edx = np.asarray(edx["concentration"], float)
    s_edx = np.asarray(edx["sigma"], float)
    dl = fig_["edx_detection_limit_fraction"]
    stop_x = fig_["edx_stops"]["x_nm"]
    sims_x = fig_["sims_continues_to"]["x_nm"]
    det = np.asarray(edx["detected"], bool)

    # ---- 1. the calibration: EDX profile, SIMS profile, RSF fit
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    ax.errorbar(x_edx[det], 100 * c_edx[det], yerr=100 * s_edx[det], fmt="o", ms=3,
                color="tab:blue", label="EDX Cu, detected (1 sigma)")
    ax.errorbar(x_edx[~det], 100 * np.maximum(c_edx[~det], 1e-5), yerr=100 * s_edx[~det],
                fmt="x", ms=4, color="0.5", label="EDX Cu, below its detection limit")
    ax.axhline(100 * dl, color="tab:red", ls="--", lw=1,
               label=f"EDX detection limit {100 * dl:.2f} at.%")
    ax.set_yscale("log")
    ax.set_ylim(1e-3, 150)
    ax.set_xlabel("x along the gradient (nm)")
    ax.set_ylabel("Cu (at.%)")
    ax.set_title("EDX line across the Cu-Ni couple (Cliff-Lorimer per point)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    a_mean, m_mean = res.analyte_profile.mean, res.matrix_profile.mean
    ax.semilogy(x_edx, a_mean, ".-", color="tab:orange", lw=0.8,
                label=f"{ANALYTE_SPECIES}+ (analyte)")
    ax.semilogy(x_edx, m_mean, ".-", color="tab:green", lw=0.8,
                label=f"{MATRIX_SPECIES}+ (matrix reference)")
    ax.set_xlabel("x along the gradient (nm)")
    ax.set_ylabel("counts / pixel (dead-time and dark corrected)")
    ax.set_title("SIMS calibration map averaged across the gradient, in the EDX points' bins",
                 fontsize=9)
    if stop_x is not None:
        ax.axvline(stop_x, color="tab:red", ls=":", lw=1, label="EDX stops")
    ax.legend(fontsize=7)
    ax = axes[2]
    p = res.calibration.points
    ax.errorbar(100 * p["c"], p["rsf"], yerr=p["rsf_sigma"], fmt="o", ms=3, color="k",
                label="RSF = rho I_M / I_A at the EDX points used")
    cc = np.logspace(-5, np.log10(max(p["c"].max(), 1e-3)), 300)
    rsf, rsf_s = res.calibration.rsf(cc)
    inside = cc >= res.calibration.c_range[0]
    ax.plot(100 * cc[inside], rsf[inside], "r-", lw=1.2,
            label=f"fit: ln RSF degree {res.calibration.degree} in C")
    ax.plot(100 * cc[~inside], rsf[~inside], "r--", lw=1.2, label="extrapolated below EDX")
    ax.fill_between(100 * cc, rsf - 2 * rsf_s, rsf + 2 * rsf_s, color="r", alpha=0.15,
                    label="fit 95 % band")
    ax.axvline(100 * dl, color="tab:red", ls="--", lw=1, label="EDX detection limit")
    ax.set_xscale("log")
    ax.set_xlabel("Cu (at.%, EDX)")
    ax.set_ylabel("RSF")
    ax.set_title(f"RSF fit (reduced chi2 {res.calibration.reduced_chi2:.2f}, "
                 f"{int(res.mask.sum())} points); dilute-limit RSF "
                 f"{res.calibration.dilute_rsf:.3f}", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, "quantification_calibration.png")

    # ---- 2. concentration along the couple: EDX, then SIMS where EDX stops
    fig, ax = plt.subplots(figsize=(11, 5.4))
    qp, cp = fig_["quantified_profile"], fig_["calibration_profile"]
    xq = np.asarray(qp["x_nm"])
    cq = np.asarray(qp["concentration"], float)
    sq = np.asarray(qp["sigma"], float)
    ok = np.isfinite(cq) & (cq > 0)
    ax.errorbar(x_edx[det], 100 * c_edx[det], yerr=200 * s_edx[det], fmt="o", ms=4,
                color="tab:blue", label="EDX (95 %)")
    ax.errorbar(np.asarray(cp["x_nm"]), 100 * np.asarray(cp["concentration"]),
                yerr=200 * np.asarray(cp["sigma"]), fmt="s", ms=2.5, lw=0.6,
                color="tab:purple", alpha=0.7, label="SIMS calibration map at the EDX points")
    ax.errorbar(xq[ok], 100 * cq[ok], yerr=200 * sq[ok], fmt=".", ms=4, lw=0.6,
                color="tab:orange", label=f"SIMS quantified map ({fig_['map']['bin_nm']:g} nm "
                "bins, 95 %)")
    ax.axhline(100 * dl, color="tab:red", ls="--", lw=1, label="EDX detection limit")
    if stop_x is not None:
        ax.axvline(stop_x, color="tab:red", ls=":", lw=1.2)
        ax.annotate("EDX stops", (stop_x, 30), color="tab:red", fontsize=8, ha="right")
    if sims_x is not None and stop_x is not None:
        ax.axvspan(stop_x, sims_x, color="tab:orange", alpha=0.08,
                   label="SIMS alone (below EDX, > 3 sigma)")
    ax.set_yscale("log")
    low = np.nanmin(np.where(ok, cq - 2 * sq, np.nan)[ok & (cq > 2 * sq)]) \
        if np.any(ok & (cq > 2 * sq)) else 1e-6
    ax.set_ylim(max(100 * low / 2, 1e-5), 150)
    ax.set_xlabel("x along the gradient (nm)")
    ax.set_ylabel("Cu (at.%)")
    ax.set_title("Cu along the couple: EDX where it detects Cu, SIMS (EDX-calibrated RSF) "
                 "beyond", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    save(fig, "quantification_profile.png")

    # ---- 3. the quantified map and its relative error
    # One row per panel: the map is 1.8 times wider than high (across the couple).
    fig, axes = plt.subplots(3, 1, figsize=(8.5, 11.5))
    conc = np.asarray(m["concentration"], float)
    sig = np.asarray(m["sigma"], float)
    x_um, y_um = m["x_um"], m["y_um"]
    # The map's pixels on the specimen (its rotation is 0 here: imshow with the extent of
    # the pixel edges is exact and much faster than pcolormesh).
    dx = (x_um[0, -1] - x_um[0, 0]) / max(x_um.shape[1] - 1, 1) / 2
    dy = (y_um[-1, 0] - y_um[0, 0]) / max(y_um.shape[0] - 1, 1) / 2
    shown = {"origin": "lower", "aspect": "equal", "interpolation": "nearest",
             "extent": (x_um[0, 0] - dx, x_um[0, -1] + dx, y_um[0, 0] - dy, y_um[-1, 0] + dy)}
    ax = axes[0]
    im = ax.imshow(np.asarray(m["counts"]["analyte"], float), cmap="viridis", **shown)
    fig.colorbar(im, ax=ax, label="counts / pixel")
    ax.set_title(f"{ANALYTE_SPECIES}+ counts, the quantified map", fontsize=9)
    ax = axes[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        logc = np.log10(np.where(conc > 0, conc, np.nan))
        rel = np.where(conc > 0, sig / conc, np.nan)
    im = ax.imshow(logc, cmap="magma", vmin=-5, vmax=0, **shown)
    fig.colorbar(im, ax=ax, label="log10 Cu atomic fraction")
    ax.set_title("Cu concentration per pixel (EDX-calibrated SIMS)", fontsize=9)
    ax = axes[2]
    im = ax.imshow(100 * rel, cmap="cividis", vmin=0, vmax=100, **shown)
    fig.colorbar(im, ax=ax, label="1-sigma / C (%)")
    ax.set_title("relative error per pixel (counting + RSF fit)", fontsize=9)
    for ax in axes:
        if stop_x is not None:
            ax.axvline(stop_x / 1e3, color="tab:red", ls=":", lw=1.2)
        if sims_x is not None:
            ax.axvline(sims_x / 1e3, color="white", ls=":", lw=1.0)
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
    fig.suptitle("red: where EDX stops; white: the last bin where SIMS detects Cu (3 sigma "
                 f"per {fig_['map']['bin_nm']:g} nm bin; white pixels hold no Cu count)",
                 fontsize=9)
    save(fig, "quantification_map.png")
    return files


CASE = Case(
    name="quantification", specimen="diffusion-couple",
    title="EDX-guided SIMS quantification on a Cu-Ni diffusion couple: EDX line + SIMS "
          "calibration map (RSF fit), then a quantified SIMS map with errors below the "
          "EDX detection limit",
    full=FULL, quick=QUICK, measure=measure, report=report)
