"""The LiV3O8 cathode case: ``temsims demo --case cathode``.

The instrument's published showcase (``instrument-abstract.txt``, Figure 2): a
cross-section of a cycled sputtered LiV3O8 thin-film cathode on its Al current
collector under 100 nm of LiPON (``livo-cathode``; the lamella is capped with Pt-C),
studied for vanadium dissolution.

Measurement
    One :func:`temsims.plans.correlative_tem_sims` job: a bright-field TEM overview of
    the stack, one SIMS map of 27Al+, 51V+ and 7Li+ across both interfaces (the region
    is given: the stack's layout is what the specimen is, not something to search for),
    and a TEM zoom of it. All runs share one ``correlation_id``.

Report (read back only from the catalog, :func:`temsims.app.loaders.load_correlative`)
    - the interfaces found on the bright-field overview
      (:func:`temsims.analysis.interfaces.find_tem_interfaces`): from the bottom
      Al/LiV3O8, LiV3O8/LiPON, LiPON/Pt-C, each a line with its normal;
    - the published view: the bright-field image fused with the registered Al+ and V+
      maps (IHS and Laplacian pyramid);
    - V+ profiles along the interface normals, across LiV3O8/LiPON and Al/LiV3O8,
      each pixel at its distance from its column's interface traced on the overview
      (:func:`temsims.analysis.interfaces.trace_interface`: the roughness leaves the
      profile, whose blur is then the probe's; the LiPON's thickness and its spread
      along the interface from the two traces), fitted with a plateau + blurred
      exponential tail
      (:func:`temsims.analysis.interfaces.fit_dissolution`; its blur constrained by
      the Al+ edge of the same map, within 15 %): the V decay length in the LiPON,
      and the V level at its interface. Every fit sees the profile through the
      probe's core and halo (:data:`temsims.constants.PROBE_HALO`, decision 0040),
      weighted by Poisson and the probe current's line-to-line noise measured on the
      cathode;
    - the interface positions from SIMS (V+, Al+ and Li+ edges) beside the TEM ones.

The V level in the LiPON as an atom fraction
    ``x_V(LiPON, 0) = (A / B) x_V(LiV3O8) / k`` with ``A`` the fitted tail amplitude,
    ``B`` the V+ plateau of the cathode, whose V fraction is its stoichiometry
    (3/12), and ``k`` the useful-yield ratio of the two matrices (sputter yield x
    ionisation) taken from the Li+ levels of the same map:
    ``k = (I_Li(LiPON) / x_Li(LiPON)) / (I_Li(LiV3O8) / x_Li(LiV3O8))``, with the
    nominal stoichiometries of LiPON (Li2.9PO3.3N0.46) and LiV3O8. It assumes the
    matrix changes V+ and Li+ alike (a per-matrix factor), which is the usual
    first-order internal-standard assumption. Intervals are 95 % (2 sigma): of the
    fits (covariances scaled by the reduced chi^2 when above 1), or of a
    delete-one-block jackknife over the map's columns when that is larger (it adds
    what the interface's roughness and the few pixel rows across the tail do). The
    decay length's (``interval95``) is a profile likelihood over it, the blur and
    the rest refitted (:func:`temsims.analysis.interfaces.decay_profile_interval`;
    widened in its logarithm by the jackknife), asymmetric; ``u95`` (and ``u95_log``
    in the logarithm) the covariance's beside it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from temsims.app.cases import Case, CaseReport

#: The maps: Al+ and V+ (the published overlay), then Li+ (with Al+ to register it).
MAP_SPECIES = ("27Al", "51V")
LI_MAP_SPECIES = ("7Li", "27Al")
SPECIES = ("27Al", "51V", "7Li")
SIMS_VOLTAGE_V = 4500.0
#: Relative spread allowed between the blur of the Al/LiV3O8 edge (Al+) and that of
#: LiV3O8/LiPON (V+): the beam and pixel are the same; binned from each interface's
#: trace, what remains of its roughness (the trace's ~1 nm error, the drift between
#: the overview and the map) is its own (estimate; from the lines, with the whole
#: 8 nm rms roughness in the blur, the edges differed by ~+-15 %).
BLUR_PRIOR_REL = 0.15
#: How far from its interfaces the cathode is taken as uniform (the line noise's region):
#: two of the halo's sigmas along the normal (~200 nm at 45 deg), where what it carries
#: across an interface is < 0.1 % of the level; ~25 lines of the 1.4 um film remain.
CATHODE_MARGIN_NM = 400.0
#: Column blocks of the jackknife that adds the roughness and sampling to the errors.
JACKKNIFE_BLOCKS = 8
#: Half window (um, along y) in which each overview column's interface step is fitted
#: (temsims.analysis.interfaces.trace_interface): under half the 100 nm LiPON, a few
#: times the interfaces' roughness (8 nm rms).
TRACE_HALF_WINDOW_UM = 0.04
#: Keywords of temsims.analysis.registration.register_sims_to_tem (see report()).
REGISTRATION = {"refine": False}
#: The stack from the bottom (growth along +y): what the specimen is, not its truth.
INTERFACES = ("Al/LiV3O8", "LiV3O8/LiPON", "LiPON/Pt-C")
#: Nominal atom fractions (stoichiometry) used to turn V+ into an atom fraction.
X_V_LIV3O8 = 3.0 / 12.0
X_LI_LIV3O8 = 1.0 / 12.0
X_LI_LIPON = 2.9 / (2.9 + 1.0 + 3.3 + 0.46)

#: Sizes. The overview and the map cover both interfaces with margins (the stack
#: spans y = -0.8 .. 0.7 um on the specimen); 30 pA keeps the probe (~25 nm FWHM)
#: finer than the ~40 nm the dissolution profile decays over, and the 1 ms dwell
#: gives ~250 V+ counts per pixel in the cathode.
FULL = {"camera_size": 256, "overview_fov_um": 2.4, "center_um": (0.0, -0.1),
        "map_fov_um": 2.0, "sims_pixels": (128, 90), "sims_dwell_s": 1e-3,
        "aperture": "30 pA", "exposure_s": 0.05, "zoom_fov_um": 0.6, "bin_nm": 8.0}
#: --quick keeps the maps: their cost at any time scale is small beside the fixed
#: start-up, catalog and read-back (~30 s of ~35 s at time scale 20), and 96 x 68 maps
#: (29.5 nm along the normal, ~3 rows across the 100 nm LiPON) recovered the decay
#: length in only 8 of 10 seeds. It keeps the 256 px TEM camera too: with 128 px the
#: decay came out short with an interval too narrow for it (outside 1.5 x its u95 in
#: 2 of 10 fresh seeds, 30.7-37.4 nm for 40; at 256 px 0 of 6, 33.6-39.0 nm; measured
#: with a sputtering physics since reverted, 24ee9b7; with the present one 1 of 6 at
#: 128 px, and the full case 20 of 20 seeds within their intervals), and the
#: camera's cost (and the 0.05 s exposure's) is a fraction of a second: --quick is the
#: full case.
QUICK = dict(FULL)


def measure(RE, devices, sizes: dict[str, Any], say) -> dict[str, Any]:
    """TEM overview -> SIMS map of Al+, V+ -> TEM zoom (one correlative job), then a
    second SIMS map of Li+ and Al+ on the same region, in the same experiment."""
    devices.column.aperture.set(sizes["aperture"]).wait(10)
    t = time.monotonic()
    say("cathode: TEM overview of the Al / LiV3O8 / LiPON stack, SIMS maps of "
        f"{', '.join(MAP_SPECIES)} and of {', '.join(LI_MAP_SPECIES)} across it, TEM zoom ...")
    corr = RE(cathode_plan(devices, sizes)).plan_result
    n = 1 + len(corr["uids"]["sims"]) + len(corr["uids"]["tem"])
    say(f"  {n} runs in {time.monotonic() - t:.1f} s")
    return {"correlative": corr, "correlation_ids": [corr["correlation_id"]]}


def cathode_plan(microscope, sizes: dict[str, Any]):
    """The case's measurement as one plan (runs linked by one ``correlation_id``).

    :func:`temsims.plans.correlative_tem_sims` on one given region (27Al, 51V), then
    :func:`temsims.plans.sims_map` of 7Li and 27Al on it. Two maps because the
    multicollector's focal plane spans a mass ratio of 5 (51V / 7Li is 7.3); the
    second map carries the same ``correlative`` block (role ``sims_map``, region 0)
    so :func:`temsims.app.loaders.load_correlative` reads and registers it with the
    first. 27Al is in both: each registers on its own Al/LiV3O8 edge.
    """
    import bluesky.plan_stubs as bps

    from temsims.plans import correlative_tem_sims, sims_map, to_sims_mode, to_tem_mode
    from temsims.plans._common import with_safe_state
    from temsims.plans.correlative import role_md

    d = microscope
    cx, cy = sizes["center_um"]
    fov = sizes["map_fov_um"]
    corr = yield from correlative_tem_sims(
        d, overview_fov_um=sizes["overview_fov_um"], center=(cx, cy),
        rois=[(cx, cy, fov)], species=MAP_SPECIES, sims_pixels=sizes["sims_pixels"],
        sims_dwell_s=sizes["sims_dwell_s"], zoom_fov_um=sizes["zoom_fov_um"],
        exposure_s=sizes["exposure_s"], calibration=sizes.get("calibration", "warn"),
        md={"purpose": "temsims demo", "case": "cathode"})
    roi = {"x_um": cx, "y_um": cy, "fov_um": fov}

    def li_map():
        yield from to_sims_mode(d.mode, voltage_v=SIMS_VOLTAGE_V)
        yield from bps.mv(d.stage.x, cx, d.stage.y, cy)
        uid = yield from sims_map(
            d.imager, d.spectrometer, d.column, d.stage, d.bias, species=LI_MAP_SPECIES,
            fov_um=fov, pixels=sizes["sims_pixels"], dwell_s=sizes["sims_dwell_s"],
            md={"purpose": "temsims demo", "case": "cathode",
                "correlation_id": corr["correlation_id"],
                "correlative": role_md(role="sims_map", roi_index=0, roi=roi,
                                       rois=[[cx, cy, fov]])})
        corr["uids"]["sims"].append(uid)
        yield from to_tem_mode(d.mode)

    yield from with_safe_state(li_map(), d.column, d.bias)
    return corr


# ============================================================================ analysis
def analyse(experiment, sizes: dict[str, Any]) -> dict[str, Any]:
    """Interfaces, profiles and fits of a cathode experiment (arrays from the catalog).

    Returns a dict: ``tem`` (the interfaces), ``profiles`` (name -> Profile),
    ``fits`` (name -> FitResult), ``figures`` (the numbers of ``report.json``).
    """
    import numpy as np

    from temsims.analysis.halo import halo_along_normal
    from temsims.analysis.interfaces import (
        COVERAGE_K,
        decay_profile_interval,
        find_tem_interfaces,
        fit_box,
        fit_dissolution,
        fit_edge,
        line_spread_nm,
        normal_profile,
        ratio_with_error,
        row_noise,
        trace_interface,
    )
    from temsims.constants import PROBE_HALO

    ov = experiment.overview
    found = find_tem_interfaces(ov.values, ov.x_um.values, ov.y_um.values, n=len(INTERFACES))
    tem = dict(zip(INTERFACES, found, strict=True))
    m = next(s for s in experiment.sims if "51V" in s.data)
    m_li = next(s for s in experiment.sims if "7Li" in s.data)
    for mm in (m, m_li):
        if mm.registration is None:
            raise RuntimeError(f"SIMS map {mm.uid} is not registered: {mm.registration_error}")
    x = m.data["x_um_registered"].values
    y = m.data["y_um_registered"].values
    xl = m_li.data["x_um_registered"].values
    yl = m_li.data["y_um_registered"].values
    counts = {s: np.asarray(m.data[s].values, float).reshape(x.shape) for s in MAP_SPECIES}
    counts["7Li"] = np.asarray(m_li.data["7Li"].values, float).reshape(xl.shape)
    bin_nm = float(sizes["bin_nm"])
    al, cat, cap = (tem[n] for n in INTERFACES)
    # The probe's halo (decision 0040) carries ~3 % of the cathode's bright V+ a few
    # hundred nm across the 100 nm LiPON, where the faint V tail is fitted (left out:
    # decay 92-268 nm and level 0.7-1.0 at.% for 40 nm and 2 at.%, seeds 4242-4244;
    # subtracted from the maps to first order: centred, but +-60-100 nm wide). Every
    # fit has it in its model instead: along the interface normal, through the map's
    # stretch (both maps share the geometry).
    def halo(line):
        return halo_along_normal(PROBE_HALO["fraction"], PROBE_HALO["fwhm_nm"],
                                 stretch=m.geometry.stretch, normal=line.normal)

    # The probe current's line-to-line fluctuation (~1 %), measured on each map's
    # cathode away from its interfaces, is in every fit's weights: the profiles bin
    # about one scan line per bin, and the bright plateau's bins scatter by it (the V+
    # fit's chi^2/dof was ~2.7 from them alone, and it scaled every error).
    def cathode_region(xx, yy):
        return ((1e3 * cat.distance_um(xx, yy) < -CATHODE_MARGIN_NM)
                & (1e3 * al.distance_um(xx, yy) > CATHODE_MARGIN_NM))

    noise = {"51V": row_noise(counts["51V"], cathode_region(x, y)),
             "7Li": row_noise(counts["7Li"], cathode_region(xl, yl))}

    # The interfaces traced column by column on the overview (decision 0027,
    # 2026-12-05 last amendment): the V+ and Al+ profiles are binned by each pixel's
    # distance from its column's interface, not from the line. Binned from the line,
    # the profile's blur held the interface heights' distribution over the map, skewed
    # (+-0.7) from seed to seed, and the Gaussian-blurred model took a skewed edge's
    # excess for part of the faint V tail: noiseless twin maps gave decays of 35-40 nm
    # (mean 38.4 over 13 seeds) for 40; from the traces 40.5-41.1.
    ov_x, ov_y = ov.x_um.values, ov.y_um.values
    traced: dict[str, Any] = {}
    for name, line in tem.items():
        try:
            traced[name] = trace_interface(ov.values, ov_x, ov_y, line,
                                           half_window_um=TRACE_HALF_WINDOW_UM)
        except ValueError:
            traced[name] = line  # not traced: its profiles are binned from the line
    al_t, cat_t, cap_t = (traced[n] for n in INTERFACES)
    local = {n: traced[n].trace is not None for n in INTERFACES}
    # Thickness of the LiPON along the normal of LiV3O8/LiPON (TEM): its mean over the
    # map's pixels from the two traces, and its spread along the interface, the far
    # end's own blur in the tail's model (the two interfaces' heights are independent).
    if local["LiV3O8/LiPON"] and local["LiPON/Pt-C"]:
        t_nm = 1e3 * (cat_t.local_distance_um(x, y) - cap_t.local_distance_um(x, y))
        lipon_nm, lipon_sd_nm = float(np.mean(t_nm)), float(np.std(t_nm))
    else:
        lipon_nm, lipon_sd_nm = 1e3 * float(cat.distance_um(cap.x_um, cap.y_um)), 0.0
    # Into the Al: the same line with its normal reversed, so the source (LiV3O8)
    # lies at d < 0 as fit_dissolution expects.
    al_down = al_t.reversed()
    # A scan line nearly parallel to the interface is one bin (its pixels span less
    # than half the lines' spacing along the normal): fixed bins cut such lines in
    # two at a bin edge, and the parts' own rough interface heights showed as misfit
    # (chi^2/dof 2.5 and 12 on seeds 619829 and 4242, their errors scaled up by it).
    half_line_nm = 0.5e3 * m.geometry.pixel_size_um * m.geometry.stretch

    binned: dict[str, str] = {}

    def profile(name, values, xx, yy, line, **kw):
        loc = line.trace is not None
        by_line = line_spread_nm(values, xx, yy, line, local=loc) <= half_line_nm
        binned[name] = ("line" if by_line else f"{bin_nm:g} nm") + (
            ", from the traced interface" if loc else ", from the line")
        return normal_profile(values, xx, yy, line, bin_nm=bin_nm, by_line=by_line,
                              local=loc, **kw)

    # The Li+ box (the matrices' levels) stays binned from the line.
    profiles = {
        "V+ LiV3O8/LiPON": profile("V+ LiV3O8/LiPON", counts["51V"], x, y, cat_t,
                                   before_nm=400.0, half_length_nm=lipon_nm + 200.0),
        "Li+ LiV3O8/LiPON": profile("Li+ LiV3O8/LiPON", counts["7Li"], xl, yl, cat, before_nm=400.0,
                                    half_length_nm=lipon_nm + 200.0),
        "V+ Al/LiV3O8": profile("V+ Al/LiV3O8", counts["51V"], x, y, al_down, before_nm=300.0,
                                half_length_nm=250.0),
        "Al+ Al/LiV3O8": profile("Al+ Al/LiV3O8", counts["27Al"], x, y, al_t, before_nm=250.0,
                                 half_length_nm=300.0),
    }
    fits: dict[str, Any] = {}
    errors: dict[str, str] = {}
    # Al+ first: its edge (position, blur) is where the V+ tail into the Al starts,
    # and its blur (same map, same beam, same roughness statistics) constrains the
    # V+ fit's, which otherwise trades off against the tail (fit_dissolution).
    def blur_prior():
        f = fits["Al+ Al/LiV3O8"]
        return (f.params["s"], max(f.errors["s"], BLUR_PRIOR_REL * f.params["s"]))

    def v_kwargs():
        """The V+ LiV3O8/LiPON fit's keywords (its fit, profile likelihood, jackknife)."""
        return {"thickness_nm": lipon_nm, "far_sigma_nm": lipon_sd_nm,
                "blur_prior": blur_prior(), "halo": halo(cat), "rel_noise": noise["51V"]}

    for name, fn in (
            ("Al+ Al/LiV3O8", lambda p: fit_edge(p, halo=halo(al), rel_noise=noise["51V"])),
            ("V+ LiV3O8/LiPON", lambda p: fit_dissolution(p, **v_kwargs())),
            ("Li+ LiV3O8/LiPON", lambda p: fit_box(p, b0=0.0, c0=lipon_nm, halo=halo(cat),
                                                   rel_noise=noise["7Li"])),
            # The Al fills the rest of the profile: the background is V+ in the Pt-C
            # (no V there), from the LiV3O8/LiPON fit.
            ("V+ Al/LiV3O8", lambda p: fit_dissolution(
                p, decay0=50.0, fix_edge=True, b0=-fits["Al+ Al/LiV3O8"].params["b"],
                s0=fits["Al+ Al/LiV3O8"].params["s"],
                background=fits["V+ LiV3O8/LiPON"].params["background"],
                halo=halo(al), rel_noise=noise["51V"]))):
        try:
            fits[name] = fn(profiles[name])
        except (RuntimeError, ValueError, KeyError) as err:  # reported, not fatal
            errors[name] = f"{type(err).__name__}: {err}"

    k = COVERAGE_K
    figures: dict[str, Any] = {"coverage_k": k, "fit_errors": errors,
                               "probe_halo": dict(PROBE_HALO),
                               "line_noise_rel": {"Al+ V+ map": noise["51V"],
                                                  "Li+ Al+ map": noise["7Li"]},
                               "profile_bins": binned}
    v = fits.get("V+ LiV3O8/LiPON")
    li = fits.get("Li+ LiV3O8/LiPON")
    if v is not None:
        rel, rel_err = ratio_with_error(v.params["amplitude"], v.errors["amplitude"],
                                        v.params["plateau"], v.errors["plateau"],
                                        v.covariance("amplitude", "plateau"))
        # The fit's errors are Poisson only. The map samples the interface's roughness
        # over its columns and the tail at a few pixel rows: a jackknife over column
        # blocks measures what that adds; the larger of the two is stated.
        jk = _jackknife(counts["51V"], x, y, cat_t, lipon_nm, bin_nm, v_kwargs(),
                        blocks=JACKKNIFE_BLOCKS,
                        by_line=binned["V+ LiV3O8/LiPON"].startswith("line"))
        decay_sd = max(v.errors["decay"], jk.get("decay", 0.0))
        rel_err = max(rel_err, jk.get("rel", 0.0))
        # A length's error grows with the length found (sd ~ 0.1-0.25 of it): a
        # symmetric interval about a short estimate stops short of what the data allow
        # above it (over 17 fresh seeds the pulls were -2.6, -2.4 for 29.7 and 31.8 nm
        # but +1.1 at most above; the estimates averaged 39.9 nm for 40). The interval
        # is symmetric in log(decay): value x exp(+-k sd / value).
        decay = float(v.params["decay"])
        u95_log = k * decay_sd / decay
        # The interval is the profile likelihood's (decision 0027's last amendment):
        # with ~4 bins across the tail the edge blur s and the decay length trade off
        # along a curved valley (a narrower edge with a shorter, higher tail), which
        # the covariance's linear interval cuts short above a short estimate. s and
        # the rest are refitted at each decay length held fixed; the jackknife's
        # excess over the fit's error widens it in ln(decay) by their ratio.
        lo, hi = decay_profile_interval(profiles["V+ LiV3O8/LiPON"], v, k=k, **v_kwargs())
        widen = max(1.0, jk.get("decay", 0.0) / max(v.errors["decay"], 1e-12))
        interval = [decay * (lo / decay) ** widen, decay * (hi / decay) ** widen]
        figures["v_decay_length_nm"] = {"value": decay, "u95": k * decay_sd,
                                        "u95_log": u95_log,
                                        "interval95": interval,
                                        "sd_fit": v.errors["decay"],
                                        "sd_jackknife": jk.get("decay")}
        figures["v_lipon_relative_to_cathode"] = {"value": rel, "u95": k * rel_err}
        figures["v_blur_sigma_nm"] = {"value": v.params["s"], "u95": k * v.errors["s"]}
        figures["chi2_red"] = {"V+ LiV3O8/LiPON": v.chi2_red}
    if v is not None and li is not None:
        yr, yr_err = ratio_with_error(li.params["level"], li.errors["level"],
                                      li.params["before"], li.errors["before"],
                                      li.covariance("level", "before"))
        useful = yr * X_LI_LIV3O8 / X_LI_LIPON
        useful_err = yr_err * X_LI_LIV3O8 / X_LI_LIPON
        level, level_err = ratio_with_error(rel * X_V_LIV3O8, rel_err * X_V_LIV3O8,
                                            useful, useful_err)
        figures["useful_yield_ratio_lipon_to_cathode"] = {"value": useful,
                                                          "u95": k * useful_err}
        figures["v_level_lipon_atom_fraction"] = {"value": level, "u95": k * level_err}
    va = fits.get("V+ Al/LiV3O8")
    if va is not None:
        figures["v_decay_length_al_nm"] = {"value": va.params["decay"],
                                           "u95": k * va.errors["decay"]}
        figures["v_al_relative_to_cathode"] = {
            "value": va.params["amplitude"] / va.params["plateau"],
            "u95": k * ratio_with_error(va.params["amplitude"], va.errors["amplitude"],
                                        va.params["plateau"], va.errors["plateau"])[1]}
    # Interface positions: TEM's line at the map's centre column, and where each SIMS
    # edge puts it along the same normal.
    p_normal_nm = 1e3 * m.geometry.pixel_size_um * m.geometry.stretch
    # The first edge of each interface is its SIMS position (the sharpest contrast
    # there: Al+ 100 % -> 0, V+ 25 at.% -> <2 at.%, Li+ in LiPON -> none in Pt-C);
    # Li+ at LiV3O8/LiPON comes from the second map, a check of its registration.
    # A fit from a traced interface places its edge from the trace: the trace's mean
    # offset from the line over the map's pixels puts it back on the line.
    def trace_mean_nm(name):
        return float(np.mean(traced[name].offset_nm(x, y)))

    sims_edges = {"Al/LiV3O8": [("Al+", fits.get("Al+ Al/LiV3O8"), "b", al, 1.0,
                                 trace_mean_nm("Al/LiV3O8"))],
                  "LiV3O8/LiPON": [("V+", v, "b", cat, 1.0, trace_mean_nm("LiV3O8/LiPON")),
                                   ("Li+", li, "b", cat, 1.0, 0.0)],
                  "LiPON/Pt-C": [("Li+", li, "c", cat, 1.0, 0.0)]}
    positions = {}
    for name, line in tem.items():
        entry = {"tem_y_um": line.y_um, "tem_x_um": line.x_um, "tem_width_nm":
                 1e3 * line.width_um, "tem_roughness_nm": 1e3 * line.scatter_um,
                 "normal": list(line.normal), "sims": {}}
        for label, fit, key, ref, sign, shift in sims_edges[name]:
            if fit is None:
                continue
            # Distance of the SIMS edge from TEM's line of this interface, nm.
            d_ref = (sign * fit.params[key] + shift
                     + 1e3 * float(line.distance_um(ref.x_um, ref.y_um)))
            entry["sims"][label] = {"offset_nm": d_ref,
                                    "u95_nm": k * fit.errors[key],
                                    "y_um": line.y_um + 1e-3 * d_ref * line.normal[1]}
        offsets = [abs(e["offset_nm"]) for e in entry["sims"].values()]
        entry["sims_edge"] = sims_edges[name][0][0]
        primary = entry["sims"].get(entry["sims_edge"])
        entry["offset_nm"] = primary["offset_nm"] if primary else None
        entry["within_one_pixel"] = primary is not None and \
            abs(primary["offset_nm"]) <= p_normal_nm
        entry["all_within_one_pixel"] = bool(offsets) and max(offsets) <= p_normal_nm
        positions[name] = entry
    figures["interfaces"] = positions
    figures["sims_pixel_nm"] = {"beam_normal": 1e3 * m.geometry.pixel_size_um,
                                "along_normal": p_normal_nm}
    figures["registration"] = {
        label: {"uid": mm.uid, "shift_px": [float(s) for s in mm.registration.shift_px],
                "ncc": float(mm.registration.quality["ncc"]),
                "tem_inverted": bool(mm.registration.quality["tem_inverted"])}
        for label, mm in (("Al+ V+ map", m), ("Li+ Al+ map", m_li))}
    figures["lipon_thickness_tem_nm"] = lipon_nm
    figures["lipon_thickness_sd_tem_nm"] = lipon_sd_nm
    figures["interfaces_traced"] = local
    return {"tem": tem, "profiles": profiles, "fits": fits, "figures": figures,
            "map": m, "li_map": m_li, "counts": counts}


def _jackknife(values, x, y, line, lipon_nm: float, bin_nm: float, fit_kwargs, *,
               blocks: int, by_line: bool = False) -> dict[str, float]:
    """Delete-one-block jackknife standard errors of the V+ decay length and of the
    tail-to-plateau ratio, the map's columns cut into ``blocks`` blocks along x
    (``fit_kwargs``: :func:`fit_dissolution`'s; distances from ``line``'s trace when it
    has one)."""
    import numpy as np

    from temsims.analysis.interfaces import fit_dissolution, normal_profile

    values = np.asarray(values, float)
    edges = np.quantile(x, np.linspace(0, 1, blocks + 1))
    reps: dict[str, list[float]] = {"decay": [], "rel": []}
    for i in range(blocks):
        out = (x >= edges[i]) & (x <= edges[i + 1])
        try:
            f = fit_dissolution(normal_profile(np.where(out, np.nan, values), x, y, line,
                                               before_nm=400.0, bin_nm=bin_nm,
                                               half_length_nm=lipon_nm + 200.0,
                                               by_line=by_line,
                                               local=line.trace is not None),
                                **fit_kwargs)
        except (RuntimeError, ValueError):
            return {}
        reps["decay"].append(f.params["decay"])
        reps["rel"].append(f.params["amplitude"] / f.params["plateau"])
    return {k: float(np.sqrt((blocks - 1) / blocks * np.sum((np.array(v) - np.mean(v)) ** 2)))
            for k, v in reps.items()}


# ============================================================================ report
def report(cat, measured: dict[str, Any], out: Path, sizes: dict[str, Any],
           say) -> CaseReport:
    """Read the experiment back from ``cat``, analyse it, write PNGs and report.json."""
    from temsims.app.demo import _json_ready
    from temsims.app.loaders import load_correlative

    cid = measured["correlation_ids"][0]
    t = time.monotonic()
    # Registered by the recorded geometry alone (stage, raster, tilt): the area-based
    # refinement correlates the map with the bright-field image, and on this stack no
    # map is a monotonic function of the mass thickness (the Pt-C cap is the darkest
    # layer and holds no Al, V or Li), so the correlation peak slid the maps by 2-8
    # SIMS pixels onto the cap. The interface positions below are the check.
    experiment = load_correlative(cat, cid, registration_options=REGISTRATION)
    say(f"runs read back from the catalog (temsims.app.loaders.load_correlative) and "
        f"registered in {time.monotonic() - t:.1f} s")
    t = time.monotonic()
    result = analyse(experiment, sizes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = _figures(out, experiment, result)
    fig = result["figures"]
    report_json = {"case": "cathode", "specimen": CASE.specimen, "source": "catalog",
                   "correlation_ids": {"cathode": cid}, "sizes": sizes,
                   "figures": [str(f) for f in files], **fig}
    path = out / "report.json"
    path.write_text(json.dumps(_json_ready(report_json), indent=2, allow_nan=False))
    files.append(path)
    say(f"report written in {time.monotonic() - t:.1f} s")
    for line in summary_lines(fig):
        say(line)
    return CaseReport(files=files, correlation_ids=[cid], summary=fig)


def summary_lines(fig: dict[str, Any]) -> list[str]:
    """What the demo prints of the figures."""
    out = []
    if "v_decay_length_nm" in fig:
        d = fig["v_decay_length_nm"]
        lo, hi = d["interval95"]
        out.append(f"V decay length in the LiPON {d['value']:.1f} nm (95 %: {lo:.1f}-{hi:.1f} "
                   "nm)")
    if "v_level_lipon_atom_fraction" in fig:
        d = fig["v_level_lipon_atom_fraction"]
        out.append(f"V in the LiPON at its interface {100 * d['value']:.2f} +- "
                   f"{100 * d['u95']:.2f} at.% (95 %)")
    pix = fig["sims_pixel_nm"]["along_normal"]
    for name, e in fig["interfaces"].items():
        sims = ", ".join(f"{k} {v['offset_nm']:+.1f} nm" for k, v in e["sims"].items())
        out.append(f"interface {name}: TEM y {e['tem_y_um']:+.4f} um; SIMS - TEM: {sims} "
                   f"({'within' if e['within_one_pixel'] else 'NOT within'} one SIMS pixel, "
                   f"{pix:.1f} nm)")
    for name, err in fig.get("fit_errors", {}).items():
        out.append(f"fit {name} failed: {err}")
    return out


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
    tem = result["tem"]
    m = result["map"]
    fig_ = result["figures"]
    colours = {"Al/LiV3O8": "tab:cyan", "LiV3O8/LiPON": "tab:orange", "LiPON/Pt-C": "tab:pink"}

    def draw_lines(ax):
        xs = np.array([float(ov.x_um.min()), float(ov.x_um.max())])
        for name, line in tem.items():
            ax.plot(xs, line.y_um + line.slope * (xs - line.x_um), "--", lw=1,
                    color=colours[name], label=name)

    # ---- 1. the published view: BF TEM with the Al+ and V+ overlay, fused
    index = next(i for i, s in enumerate(experiment.sims) if s is m)
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.6))
    ax = axes[0]
    ax.imshow(ov.values, cmap="gray", origin="lower", extent=_extent(ov))
    draw_lines(ax)
    corners = np.array([[-0.5, -0.5, 1], [m.geometry.nx - 0.5, -0.5, 1],
                        [m.geometry.nx - 0.5, m.geometry.ny - 0.5, 1],
                        [-0.5, m.geometry.ny - 0.5, 1]]).T
    ax.add_patch(Polygon((m.geometry.affine_to_specimen() @ corners)[:2].T, closed=True,
                         fill=False, ec="yellow", lw=1))
    # Where the V+ profiles run: along each interface's normal, at the map centre.
    for name, (before, after) in (("LiV3O8/LiPON", (400.0, 300.0)),
                                  ("Al/LiV3O8", (250.0, 300.0))):
        line = tem[name]
        nx_, ny_ = line.normal
        sgn = 1.0 if name == "LiV3O8/LiPON" else -1.0
        x0 = line.x_um - sgn * 1e-3 * before * nx_
        y0 = line.y_um - sgn * 1e-3 * before * ny_
        ax.annotate("", xy=(line.x_um + sgn * 1e-3 * after * nx_,
                            line.y_um + sgn * 1e-3 * after * ny_), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "->", "color": "yellow", "lw": 1.2})
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("bright-field TEM overview; interfaces found on it, SIMS map outline\n"
                 "(yellow box), V+ profiles along the normals (arrows)", fontsize=9)
    for k, method in enumerate(("ihs", "laplacian")):
        fused = experiment.fuse(index, method=method, species=["27Al", "51V"], grid="overview",
                                pan="bf")
        axes[1 + k].imshow(fused.values, origin="lower", extent=_extent(fused))
        axes[1 + k].set_title(f"BF TEM fused with Al+ (red) and V+ (green), "
                              f"{'IHS' if method == 'ihs' else 'Laplacian pyramid'}",
                              fontsize=9)
    for ax in axes:
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
    save(fig, "cathode_published.png")

    # ---- 2. the registered SIMS maps
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for ax, s in zip(axes, SPECIES, strict=True):
        mm = m if s in MAP_SPECIES else result["li_map"]
        im = ax.pcolormesh(mm.data["x_um_registered"].values,
                           mm.data["y_um_registered"].values,
                           np.asarray(mm.data[s].values, float), shading="auto", cmap="viridis")
        fig.colorbar(im, ax=ax, label="counts / pixel")
        xs = np.array([float(np.nanmin(mm.data["x_um_registered"])),
                       float(np.nanmax(mm.data["x_um_registered"]))])
        for name, line in tem.items():
            ax.plot(xs, line.y_um + line.slope * (xs - line.x_um), "--", lw=0.8,
                    color=colours[name])
        ax.set_title(f"SIMS {s}+ registered on the TEM (TEM interfaces dashed)", fontsize=9)
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
    save(fig, "cathode_sims_maps.png")

    # ---- 3. profiles along the interface normals, with their fits
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    panels = [("V+ LiV3O8/LiPON", axes[0, 0], True), ("Li+ LiV3O8/LiPON", axes[0, 1], False),
              ("V+ Al/LiV3O8", axes[1, 0], True), ("Al+ Al/LiV3O8", axes[1, 1], False)]
    for name, ax, log in panels:
        p = result["profiles"][name]
        ok = p.valid()
        ax.errorbar(p.d_nm[ok], p.mean[ok], yerr=p.sem[ok], fmt=".", ms=3, lw=0.6,
                    color="k", label="SIMS, mean per pixel +- Poisson")
        f = result["fits"].get(name)
        if f is not None:
            dd = np.linspace(p.d_nm.min(), p.d_nm.max(), 600)
            ax.plot(dd, f.model(dd), "r-", lw=1.2, label=f"fit (chi2/dof {f.chi2_red:.2f})")
            if "b" in f.params:
                ax.axvline(f.params["b"], color="r", ls=":", lw=1, label="interface (SIMS)")
        ax.axvline(0.0, color="b", ls="--", lw=1, label="interface (TEM)")
        if log:
            ax.set_yscale("log")
            ax.set_ylim(max(0.02, float(np.nanmin(p.mean[ok & (p.mean > 0)])) / 2),
                        float(np.nanmax(p.mean[ok])) * 2)
        ax.set_xlabel("distance along the TEM interface normal (nm)")
        ax.set_ylabel("counts / pixel")
        ax.legend(fontsize=7)
    k = fig_["coverage_k"]
    title = "V+ across LiV3O8 / LiPON (LiPON at d > 0)"
    if "v_decay_length_nm" in fig_:
        dl, lv = fig_["v_decay_length_nm"], fig_.get("v_level_lipon_atom_fraction")
        title += (f"\ndecay length {dl['value']:.1f} nm ({dl['interval95'][0]:.1f}-"
                  f"{dl['interval95'][1]:.1f})"
                  + (f", V at the interface {100 * lv['value']:.2f} +- {100 * lv['u95']:.2f}"
                     " at.%" if lv else "") + f" ({k:g} sigma)")
    axes[0, 0].set_title(title, fontsize=9)
    ur = fig_.get("useful_yield_ratio_lipon_to_cathode")
    axes[0, 1].set_title("Li+ across LiV3O8 / LiPON / Pt-C (matrix standard)"
                         + (f"\nuseful-yield ratio LiPON / LiV3O8 {ur['value']:.3f} +- "
                            f"{ur['u95']:.3f}" if ur else ""), fontsize=9)
    va = fig_.get("v_decay_length_al_nm")
    axes[1, 0].set_title("V+ across LiV3O8 / Al (Al at d > 0)"
                         + (f"\ndecay length in Al {va['value']:.0f} +- {va['u95']:.0f} nm"
                            if va else ""), fontsize=9)
    pos = fig_["interfaces"]
    axes[1, 1].set_title("Al+ across Al / LiV3O8 (LiV3O8 at d > 0)\n" + "; ".join(
        f"{n}: SIMS-TEM " + ", ".join(f"{s} {v['offset_nm']:+.1f}" for s, v in
                                       e["sims"].items()) for n, e in pos.items())
        + " nm", fontsize=8)
    save(fig, "cathode_profiles.png")
    return files


CASE = Case(
    name="cathode", specimen="livo-cathode",
    title="LiV3O8 cathode under LiPON on Al (cross-section): BF TEM + Al+/V+/Li+ maps, "
          "V dissolution (decay length, level in the LiPON), interfaces TEM vs SIMS",
    full=FULL, quick=QUICK, measure=measure, report=report)
