"""Simulated sputter depth profiles through an isotope-labelled layer, made with the
IOC physics (no IOCs): the depth-resolution tests (``tests/analysis/test_depth_resolution.py``)
and ``benchmarks/depth_resolution_benchmark.py`` share them.

The specimen is a Li2CO3 film with a buried 6Li-enriched layer (an isotopic marker,
the classic depth-resolution reference: the matrix is the same on both sides, so
sputter rate, ionisation and mixing length do not change at the interfaces). Each
seed draws the layer's depth, thickness and enrichment; a frame is a map rendered by
:class:`temsims.ioc.physics.sims.FramePlan` at the depth the dose so far left, then
the raster sputters (:func:`temsims.ioc.physics.sims.sputter`), as the spectrometer
IOC does. The truth is the twin's own: its MRI response and the layer's depths.
"""

from __future__ import annotations

import numpy as np

from temsims.ioc.physics import sims as sp
from temsims.ioc.physics.materials import ELEMENTARY_CHARGE_C, MATERIALS, isotope_mass_u
from temsims.ioc.physics.specimen import Layer, Specimen

LI_MASSES = (isotope_mass_u("6Li"), isotope_mass_u("7Li"))
LANDING_KEV = 25.5
#: The map: 16 x 16 pixels over 80 nm (beam plane), 1 pA, probe 10 nm; the counts are
#: summed over its central 8 x 8 pixels (the edge pixels' footprint reads the crater
#: wall).
PIXELS = 16
FOV_UM = 0.08
CURRENT_PA = 1.0
PROBE_NM = 10.0
EDGE_PX = 4


def labelled_layer(rng: np.random.Generator, grid: int = 96, pixel_nm: float = 2.0
                   ) -> Specimen:
    """Li2CO3 with a buried 6Li-enriched layer; depth, thickness and enrichment drawn."""
    top = float(rng.uniform(70.0, 110.0))
    thick = float(rng.uniform(40.0, 80.0))
    li6 = float(rng.uniform(0.5, 0.95))
    layers = [Layer("natural top", top, {"Li2CO3": 1.0}),
              Layer("label", thick, {"Li2CO3": 1.0}, isotope_abundance={"6Li": li6}),
              Layer("natural below", 400.0, {"Li2CO3": 1.0})]
    return Specimen("labelled-layer", 0, layers, pixel_nm=pixel_nm, shape=(grid, grid),
                    truth={"top_nm": top, "thickness_nm": thick, "li6_abundance": li6})


def simulate_profile(seed: int, *, nm_per_frame: float = 2.0,
                     params: sp.SimsParameters | None = None) -> dict:
    """One depth profile through the labelled layer of specimen ``seed``.

    Returns
    -------
    dict
        ``dose_start``, ``dose_end`` (ions/nm^2 per frame), ``n6``, ``n7`` (counts in
        the central pixels per frame), ``depth_start`` (true sputtered depth at the
        map's centre when each frame starts), ``truth`` (the layer, the twin's MRI
        response ``w``, ``sigma``, ``lam`` and its 16-84 % ``resolution_nm``, the
        steady-state ``nm_per_dose``).
    """
    rng = np.random.default_rng(seed)
    spec = labelled_layer(rng)
    params = params or sp.SimsParameters(drift_nm_per_min=0.0)
    geo = sp.ScanGeometry(PIXELS, PIXELS, FOV_UM)
    li2co3 = MATERIALS["Li2CO3"]
    y = li2co3.sputter_yield * li2co3.yield_factor(LANDING_KEV, params.incidence_deg)
    nm_per_dose = y / li2co3.atomic_density_per_nm3
    dose = nm_per_frame / nm_per_dose
    dwell = dose * geo.pixel_area_nm2 * ELEMENTARY_CHARGE_C / (CURRENT_PA * 1e-12)
    depth = np.zeros(spec.shape, np.float32)
    centre = tuple(int(round(v)) for v in spec.to_index(0.0, 0.0))
    end_nm = spec.truth["top_nm"] + spec.truth["thickness_nm"] + 90.0
    inner = slice(EDGE_PX, PIXELS - EDGE_PX)
    out = {"dose_start": [], "dose_end": [], "n6": [], "n7": [], "depth_start": []}
    total = 0.0
    while depth[centre] < end_nm:
        plan = sp.FramePlan(spec, geo, LI_MASSES, CURRENT_PA, dwell, PROBE_NM, LANDING_KEV,
                            1, True, depth, params=params)
        n6, n7 = plan.render(rng)
        out["depth_start"].append(float(depth[centre]))
        frame_dose = plan.ions_per_pixel / geo.pixel_area_nm2
        out["dose_start"].append(total)
        total += frame_dose
        out["dose_end"].append(total)
        out["n6"].append(float(n6[inner, inner].sum()))
        out["n7"].append(float(n7[inner, inner].sum()))
        sp.sputter(spec, depth, geo, plan.ions_per_pixel, params=params,
                   landing_kev=LANDING_KEV)
    result = {k: np.array(v) for k, v in out.items()}
    w, sigma, lam = sp.layer_mri_kernels(spec, None, LANDING_KEV, params)[0]
    truth = dict(spec.truth)
    truth.update(w_nm=w, sigma_nm=sigma, lam_nm=lam,
                 resolution_nm=sp.mri_resolution_nm(w, sigma, lam) if params.mixing else 0.0,
                 nm_per_dose=nm_per_dose, sputter_yield=y)
    result["truth"] = truth
    return result


def label_fraction(profile: dict) -> tuple[np.ndarray, np.ndarray]:
    """6Li/(6Li + 7Li) per frame and its binomial standard error."""
    n6, n7 = profile["n6"], profile["n7"]
    n = np.maximum(n6 + n7, 1.0)
    x = n6 / n
    return x, np.sqrt(np.maximum(x * (1 - x), 1.0 / n) / n)
