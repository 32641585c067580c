"""Simulated SIMS maps for the analysis tests, made with the IOC physics (no IOCs)
and scored against the specimen's hidden truth."""

from __future__ import annotations

import numpy as np

from temsims.ioc.physics import sims as sp
from temsims.ioc.physics.ion_optics import probe_diameter_nm
from temsims.ioc.physics.materials import isotope_mass_u
from temsims.ioc.physics.specimen import Layer, Specimen, build_specimen

LI_MASSES = (isotope_mass_u("6Li"), isotope_mass_u("7Li"))
#: The demo's particle search (temsims.core.demo): 4 um field, 1 ms dwell, 100 pA
#: aperture at 30 kV; FULL maps 96 x 68 pixels, QUICK 64 x 45.
DEMO = {"fov_um": 4.0, "dwell_s": 1e-3, "current_pa": 100.0, "column_kv": 30.0}
DEMO_FULL_PIXELS = (96, 68)
DEMO_QUICK_PIXELS = (64, 45)
#: The counting chain's nominal dead time (what DEAD_TIME publishes uncalibrated).
DEAD_TIME_S = sp.NOMINAL_DEAD_TIME_S


def dead_time_of(seed: int) -> float:
    """The dead time the maps of ``seed`` are counted with: the instrument's own, drawn
    from the seed as the spectrometer IOC draws it (the simulator's truth)."""
    return sp.true_dead_time_s(seed)


#: The bracketing plan's reference map (plans/bracketing.py defaults): 16 x 16 pixels
#: over 0.2 um at the pad's centre, at the demo's dwell and current.
REFERENCE_MAP = {"fov_um": 0.2, "pixels": (16, 16)}
#: Instrument time (s) of the three maps of a bracket: reference, unknown, reference
#: (a 10 min bracket: long enough for the collectors' drift to matter).
BRACKET_TIMES_S = (0.0, 300.0, 600.0)


def harder_twin(instrument_seed: int, *, relief: bool = False) -> sp.SimsParameters:
    """The spectrometer's parameters with the dead time, IMF and collector yields of an
    instrument seeded ``instrument_seed`` (what SpectrometerIOC draws); ``relief``: with
    the specimen's relief (shadows, parallax; decision 0041)."""
    return sp.SimsParameters(dead_time_s=dead_time_of(instrument_seed),
                             relief=relief).with_(**sp.mass_bias_parameters(instrument_seed))


def particle_maps(seed: int, pixels=DEMO_FULL_PIXELS, *, fov_um=DEMO["fov_um"],
                  dwell_s=DEMO["dwell_s"], current_pa=DEMO["current_pa"],
                  params: sp.SimsParameters | None = None, centre_nm=(0.0, 0.0),
                  spec=None, rng_seed: int | None = None,
                  geometry_incidence_deg: float = sp.SIMS_INCIDENCE_DEG):
    """(specimen, geometry, n6, n7) of one li2co3-particles map at the demo's dose."""
    spec = build_specimen("li2co3-particles", seed=seed) if spec is None else spec
    geo = sp.ScanGeometry(pixels[0], pixels[1], fov_um, centre_x_nm=centre_nm[0],
                          centre_y_nm=centre_nm[1], incidence_deg=geometry_incidence_deg)
    plan = sp.FramePlan(spec, geo, LI_MASSES, current_pa, dwell_s,
                        probe_diameter_nm(current_pa, DEMO["column_kv"]), 25.5, 1, True,
                        np.zeros(spec.shape, np.float32),
                        params=params or sp.SimsParameters(dead_time_s=dead_time_of(seed)))
    if rng_seed == "expected":  # the counts' expectation (dead time included), no draw
        n6, n7 = plan.render(None)
    else:
        n6, n7 = plan.render(np.random.default_rng(1000 + seed if rng_seed is None
                                                   else rng_seed))
    return spec, geo, n6, n7


def bracketed_particle_maps(seed: int, pixels=DEMO_FULL_PIXELS, *, instrument_seed: int,
                            times_s=BRACKET_TIMES_S, relief: bool = False,
                            incidence_deg: float = sp.SIMS_INCIDENCE_DEG):
    """A bracket on the harder twin: the natural-Li pad mapped before and after the
    particle map, at the instrument times ``times_s``, rendered like the map.

    Returns (specimen, geometry, n6, n7, correction, extra): ``correction`` the
    bracketing analysis' :class:`~temsims.analysis.bracketing.BracketCorrection` of the
    references corrected for quasi-simultaneous arrival (decision 0043); ``extra``
    holds the twin's ``params`` and ``no_qsa``, the bracket of the same references
    without that correction. ``relief`` and ``incidence_deg``: the twin's relief and
    the maps' landing angle."""
    from temsims.analysis.bracketing import bracketing_correction, reference_measurement

    spec = build_specimen("li2co3-particles", seed=seed)
    base = harder_twin(instrument_seed, relief=relief)
    ref = spec.reference
    centre = (1000.0 * ref["x_um"], 1000.0 * ref["y_um"])
    measured, measured_raw = [], []
    maps = {}
    for k, t in enumerate(times_s):
        params = base.with_(gain_clock_s=float(t))
        if k == 1:
            maps["unknown"] = particle_maps(seed, pixels, params=params, spec=spec,
                                            geometry_incidence_deg=incidence_deg)
            continue
        _, _, r6, r7 = particle_maps(seed, REFERENCE_MAP["pixels"],
                                     fov_um=REFERENCE_MAP["fov_um"], params=params,
                                     centre_nm=centre, spec=spec,
                                     rng_seed=5000 + seed + k,
                                     geometry_incidence_deg=incidence_deg)
        frame = REFERENCE_MAP["pixels"][0] * REFERENCE_MAP["pixels"][1] * DEMO["dwell_s"]
        for out, current in ((measured, DEMO["current_pa"]), (measured_raw, None)):
            out.append(reference_measurement(r6, r7, time_s=t + frame / 2,
                                             dwell_s=DEMO["dwell_s"],
                                             dead_time_s=dead_time_of(instrument_seed),
                                             primary_current_pa=current))
    correction = bracketing_correction(*measured)
    _, geo, n6, n7 = maps["unknown"]
    return spec, geo, n6, n7, correction, {"params": base,
                                           "no_qsa": bracketing_correction(*measured_raw)}


#: 7LiH+ (7.01600 + 1.00783 u): mass 8 holds it alone (no stable isotope of mass 8).
LIH7_MASS = isotope_mass_u("7Li") + sp.HYDROGEN_MASS_U
#: The hydride count on the pad: a raster of the reference map's field, counting
#: 7Li and 7LiH+ for this long at the demo's current (plans.particles' default).
HYDRIDE_COUNT_S = 0.05


def pad_hydride_counts(seed: int, *, instrument_seed: int, count_s=HYDRIDE_COUNT_S):
    """(N8, N7) of a count on the natural-Li pad (collectors at 7LiH+ and 7Li, the
    reference map's field, the demo's current) on the harder twin, as a lab measures
    LiH+/Li+ (decision 0039)."""
    spec = build_specimen("li2co3-particles", seed=seed)
    params = harder_twin(instrument_seed)
    ref = spec.reference
    geo = sp.ScanGeometry(*REFERENCE_MAP["pixels"], REFERENCE_MAP["fov_um"],
                          centre_x_nm=1000.0 * ref["x_um"], centre_y_nm=1000.0 * ref["y_um"])
    species = sp.candidate_species(spec)
    e = sp.footprint_emission(spec, np.zeros(spec.shape, np.float32), geo, species, 1, 25.5,
                              params)
    expected = sp.collector_expectation([isotope_mass_u("7Li"), LIH7_MASS], e,
                                        sp.primary_ion_rate(DEMO["current_pa"]), count_s,
                                        params)
    n7, n8 = sp.detect(expected, count_s, params, np.random.default_rng(7000 + seed))
    return float(n8), float(n7)


def map_time_s(geo, times_s=BRACKET_TIMES_S, dwell_s=DEMO["dwell_s"]) -> float:
    """Middle of the unknown map of a bracket (instrument time, s)."""
    return times_s[1] + 0.5 * geo.nx * geo.ny * dwell_s


def match_truth(table, affine, truth):
    """Segment label under each truth particle's centre (0: not detected)."""
    inv = np.linalg.inv(affine)
    out = []
    for p in truth:
        col, row, _ = inv @ np.array([p["x_nm"] / 1000.0, p["y_nm"] / 1000.0, 1.0])
        r, c = int(round(row)), int(round(col))
        inside = 0 <= r < table.labels.shape[0] and 0 <= c < table.labels.shape[1]
        out.append(int(table.labels[r, c]) if inside else 0)
    return out


def _reaches_another(segment: np.ndarray, affine, particle, xy, radii, truth,
                     pitch_nm: float) -> bool:
    """Whether a segment's pixels come within one pixel (the larger pitch) of another
    particle's edge: its counts then hold that particle's too (seed 160948: a 14 nm
    labelled particle 124 nm from another labelled one and 138 nm from a natural one,
    all three in one 25-pixel segment of ratio 2.2, scored as the first's, pull -169)."""
    rows, cols = np.nonzero(segment)
    pts = affine @ np.vstack([cols, rows, np.ones_like(rows)])
    x_nm, y_nm = 1000.0 * pts[0], 1000.0 * pts[1]
    for (px, py), radius, other in zip(xy, radii, truth, strict=True):
        if other["id"] == particle["id"]:
            continue
        if np.hypot(x_nm - px, y_nm - py).min() - radius < pitch_nm:
            return True
    return False


def score(table, affine, truth) -> dict:
    """Segment scoring (labelled precision and recall by segment membership, kept for
    comparison: ``tests/scoring.py`` scores per particle), and the ratio errors (in
    units of the Poisson bound) of isolated particles: segments that hold exactly one
    particle, whose edge is more than two pixels (the larger pitch) from any other
    particle's, that reach no other particle's edge within a pixel, and were not cut
    out of a neighbour's segment (``table.split_from``), and have a measured ratio (not
    ``table.no_ratio``: no 7Li left in the segment after the halo's subtraction).
    A particle nearer a neighbour shares counts with it (the beam blur and the pixel
    are larger than the gap), so its ratio is diluted by design; such particles are
    scored for precision and recall only. ``natural_classes``: the classes of the
    isolated natural particles."""
    seg = match_truth(table, affine, truth)
    pitch_nm = 1000.0 * max(np.hypot(*affine[:2, 0]), np.hypot(*affine[:2, 1]))
    xy = np.array([[p["x_nm"], p["y_nm"]] for p in truth])
    r = np.array([p["radius_nm"] for p in truth])
    gap = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1)) - r[:, None] - r
    np.fill_diagonal(gap, np.inf)
    crowded = {p["id"] for p, g in zip(truth, gap, strict=True) if g.min() < 2 * pitch_nm}
    by_label = {p.label: p for p in table}
    members: dict[int, list] = {}
    for p, lab in zip(truth, seg, strict=True):
        if lab:
            members.setdefault(lab, []).append(p)
    flagged = table.labelled()
    tp = sum(any(m["labelled"] for m in members.get(q.label, [])) for q in flagged)
    n_true = sum(p["labelled"] for p in truth)
    found = sum(1 for p, lab in zip(truth, seg, strict=True)
                if p["labelled"] and lab and by_label[lab].labelled)
    errors, natural_classes, labelled_errors, labelled_ratios = [], [], [], {}
    for lab, ms in members.items():
        if len(ms) == 1:
            q = by_label[lab]
            if (lab in table.split_from or lab in table.no_ratio or ms[0]["id"] in crowded
                    or _reaches_another(table.labels == lab, affine, ms[0], xy, r, truth,
                                        pitch_nm)):
                continue
            errors.append((q.ratio - ms[0]["li6_li7_ratio"]) / q.sigma)
            if ms[0]["labelled"]:
                labelled_errors.append(errors[-1])
                labelled_ratios[ms[0]["id"]] = (q.ratio, q.area_px)
            else:
                natural_classes.append(q.classification)
    return {"tp": tp, "flagged": len(flagged), "found": found, "n_labelled": n_true,
            "errors": errors, "no_ratio": len(table.no_ratio), "natural_classes": natural_classes,
            "labelled_errors": labelled_errors, "labelled_ratios": labelled_ratios,
            "detected": sum(1 for s in seg if s), "n_particles": len(truth)}



#: The halo measurement's map (decision 0040): 64 columns over 1 um across a straight
#: Li2CO3 edge (150 nm of pad, 850 nm of bare film), 16 rows along it, at the demo's
#: current and dwell.
HALO_MAP = {"pixels": (64, 16), "fov_um": 1.0, "pad_nm": 150.0}


def edge_specimen(grid: int = 1024) -> Specimen:
    """A flat 100 nm Li2CO3 film (natural Li) over x < 0 on the carbon film: a sharp,
    straight edge far from any particle, to measure the probe's halo on."""
    spec = Specimen("li2co3-edge", 0, [], shape=(grid, grid))
    x = spec.x_nm()[None, :] + 0.0 * spec.y_nm()[:, None]
    spec.layers = [Layer("pad", np.where(x < 0, 100.0, 0.0).astype(np.float32),
                         {"Li2CO3": 1.0}),
                   Layer("support film", 20.0, {"C-film": 1.0})]
    return spec


def halo_maps(instrument_seed: int, rng_seed: int, params: sp.SimsParameters | None = None):
    """(pitch_nm, n6, n7) of the halo measurement's map across the edge on the
    instrument ``instrument_seed`` (the pad on the first columns' side)."""
    nx, ny = HALO_MAP["pixels"]
    fov = HALO_MAP["fov_um"]
    geo = sp.ScanGeometry(nx, ny, fov, centre_x_nm=500.0 * fov - HALO_MAP["pad_nm"])
    spec = edge_specimen()
    plan = sp.FramePlan(spec, geo, LI_MASSES, DEMO["current_pa"], DEMO["dwell_s"],
                        probe_diameter_nm(DEMO["current_pa"], DEMO["column_kv"]), 25.5, 1,
                        True, np.zeros(spec.shape, np.float32),
                        params=params or harder_twin(instrument_seed))
    n6, n7 = plan.render(np.random.default_rng(rng_seed))
    return 1000.0 * fov / nx, n6, n7


def measured_halo(instrument_seed: int, rng_seed: int):
    """The probe halo measured on the edge (:class:`~temsims.analysis.halo.HaloFit`),
    with the instrument's calibrated dead time, as a lab would before a search."""
    from temsims.analysis.halo import measure_probe_halo

    pitch, n6, n7 = halo_maps(instrument_seed, rng_seed)
    return measure_probe_halo([n6, n7], pitch_nm=pitch, pad_width_nm=1e6,
                              dwell_s=DEMO["dwell_s"],
                              dead_time_s=dead_time_of(instrument_seed))


def tem_heights(spec: Specimen, block: int = 2):
    """(height_nm, affine) of the TEM's view of ``spec``: its bright-field
    mass-thickness (the twin's scattering mass-thickness, noise-free, binned to
    ``block`` grid pixels: a 4 nm TEM pixel at 2) turned into heights above the film
    with Li2CO3's scattering density (:func:`temsims.analysis.parallax.
    height_from_mass_thickness`), and its axis-aligned pixel -> specimen affine."""
    from temsims.analysis.parallax import height_from_mass_thickness
    from temsims.ioc.physics.materials import MATERIALS
    from temsims.ioc.physics.tem_optics import scattering_mass_thickness

    mt = scattering_mass_thickness(spec).astype(float)
    n = mt.shape[0] // block
    mt = mt[:n * block, :n * block].reshape(n, block, n, block).mean(axis=(1, 3))
    li2co3 = MATERIALS["Li2CO3"]
    h = height_from_mass_thickness(mt, li2co3.density_g_cm3 * li2co3.scattering_weight)
    px_um = spec.pixel_nm * block / 1000.0
    x0 = (spec.x_nm()[0] + (block - 1) / 2 * spec.pixel_nm) / 1000.0
    y0 = (spec.y_nm()[0] + (block - 1) / 2 * spec.pixel_nm) / 1000.0
    return h, np.array([[px_um, 0.0, x0], [0.0, px_um, y0], [0.0, 0.0, 1.0]])
