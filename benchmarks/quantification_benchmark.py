"""Benchmark: EDX-guided SIMS quantification of a 512 x 512 map (target <= 0.5 s).

Makes the data with the simulator (no IOCs): an EDX line scan across the Cu-Ni
diffusion couple (127 spectra, 1 nA x 1 s each) and a 512 x 512 SIMS map of 63Cu and
58Ni over the same zone (300 pA, 1 ms dwell). Times the analysis steps separately,
:func:`temsims.analysis.edx.quantify_line_scan`,
:func:`temsims.analysis.quantification.calibrate_rsf` and, the figure with a target,
:func:`temsims.analysis.quantification.quantify_map` on the whole map (with dead-time
correction); writes ``benchmarks/results/quantification.json``.

Then the accuracy over fresh seed pairs (``--pairs``, issue 15: no score rests on one
chosen seed): for each pair (EDX noise seed, SIMS noise seed), drawn at random and
recorded, the worst relative error of the quantified profile against the specimen's
true C(x) over 0.1-10 at.%, in two geometries:

- ``analysis``: the one of ``tests/analysis/test_quantification.py`` (127 EDX points
  20 nm apart, 1 nA x 1 s; 512 x 256 px over 2.56 um at 300 pA, 1 ms, 30 nm probe),
  through :func:`calibrate_rsf` and :func:`quantify_map` as that test calls them;
- ``plan``: the sizes of ``tests/plans/test_calibration.py`` (50 points 40 nm apart,
  10 nA x 0.1 s; 200 x 64 px over 2 um at 1 nA, 1 ms, dead time and dark counts)
  through the pipeline, :func:`temsims.app.calibration_data.quantify`.

Median, 90th percentile and maximum over the pairs, and the degrees chosen.

The EDX twin has its detector and column effects on (decision 0037: escape and sum
peaks, system peaks, absorption, probe broadening; a system reference of 100 nA x
10 s is taken in a hole); the analysis corrects them (``--edx-correction full``) or
not (``none``). ``--twin ideal`` is the twin before decision 0037 (none of them).

Run: ``.venv/bin/python benchmarks/quantification_benchmark.py [--n 512 --repeat 5
--pairs 100]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from targets import QUANTIFY_P90, QUANTIFY_S

RESULTS = Path(__file__).resolve().parent / "results" / "quantification.json"
TARGET_S = QUANTIFY_S.limit
#: Target of issue 15: 90th percentile of the worst error over 0.1-10 at.% below 10 %.
TARGET_P90 = QUANTIFY_P90.limit
BAND = (1e-3, 0.1)
#: The system reference off the specimen: 100 nA x 10 s (enough Fe K for its ratios).
REFERENCE_NA_S = (100.0, 10.0)
GEOMETRIES = {
    "analysis": {"edx_step_nm": 20.0, "edx_nc": 1.0, "edx_live_s": 1.0, "nx": 512, "ny": 256, "fov_um": 2.56,
                 "centre_x_nm": 700.0, "current_pa": 300.0, "probe_nm": 30.0},
    "plan": {"line_um": (-0.28, 1.68), "points": 50, "edx_nc": 1.0, "edx_live_s": 0.1,
             "nx": 200, "ny": 64,
             "fov_um": 2.0, "centre_x_nm": 700.0, "current_pa": 1000.0, "probe_nm": None},
}


class Accuracy:
    """One geometry's simulator set-up, scored on seed pairs."""

    def __init__(self, name: str, twin: str = "full", correction: str = "full"):
        from temsims.analysis import edx
        from temsims.analysis import quantification as qn
        from temsims.ioc.physics import sims as sp
        from temsims.ioc.physics.edx import (
            DetectorParameters,
            EDXModel,
            areal_densities_at,
            beam_electrons,
        )
        from temsims.ioc.physics.ion_optics import probe_diameter_nm
        from temsims.ioc.physics.materials import ELEMENTARY_CHARGE_C, isotope_mass_u
        from temsims.ioc.physics.specimen import build_specimen

        g = GEOMETRIES[name]
        self.name, self.qn = name, qn
        self.spec = spec = build_specimen("diffusion-couple", 1)
        geo = sp.ScanGeometry(g["nx"], g["ny"], g["fov_um"], centre_x_nm=g["centre_x_nm"])
        if "line_um" in g:
            self.positions = 1000.0 * np.linspace(*g["line_um"], g["points"])
        else:
            half = geo.nx * geo.pixel_nm / 2
            step = g["edx_step_nm"]
            self.positions = np.arange(g["centre_x_nm"] - half + step,
                                       g["centre_x_nm"] + half - step / 2, step)
        self.twin, self.correction = twin, correction
        if twin == "ideal":
            self.model = EDXModel(["Cu", "Ni"], ht_kv=200.0, system=None, absorption=False,
                                  detector=DetectorParameters(escape_peaks=False,
                                                              pulse_pair_time_s=0.0))
        else:
            self.model = EDXModel(["Cu", "Ni"], ht_kv=200.0)
        self.electrons = g["edx_nc"] * 1e-9 / ELEMENTARY_CHARGE_C
        self.live = g["edx_live_s"]
        self.current_na = g["edx_nc"] / self.live
        self.ref_electrons = beam_electrons(*REFERENCE_NA_S)
        self.dens = [areal_densities_at(spec, x, 0.0, 1.0,
                                        ht_kv=None if twin == "ideal" else 200.0)
                     for x in self.positions]
        self.k = {"Cu": self.model.k_factor("Cu", "Ni"), "Ni": 1.0}
        self.axis = edx.EnergyAxis.from_centres(self.model.axis.centres)
        probe = g["probe_nm"] or probe_diameter_nm(g["current_pa"], 30.0)
        self.probe_nm = probe
        self.params = sp.SimsParameters()
        self.frame = sp.FramePlan(spec, geo, (isotope_mass_u("63Cu"), isotope_mass_u("58Ni")),
                                  g["current_pa"], 1e-3, probe, 25.5, 1, True,
                                  np.zeros(spec.shape, np.float32), params=self.params)
        p = geo.pixel_nm
        self.transform = qn.pixel_transform(
            p, pixel_nm_y=p * geo.stretch,
            origin_nm=(geo.centre_x_nm - (geo.nx - 1) / 2 * p,
                       geo.centre_y_nm - (geo.ny - 1) / 2 * p * geo.stretch))
        self.truth = np.interp(self.positions, spec.truth["x_nm"], spec.truth["solute_fraction"])
        self.band = (self.truth >= BAND[0]) & (self.truth <= BAND[1])

    def score(self, edx_seed: int, sims_seed: int) -> tuple[float, int]:
        """Worst |relative error| over the band, and the degree chosen."""
        from temsims.analysis import edx

        rng = np.random.default_rng(edx_seed)
        live = None if self.twin == "ideal" else self.live
        spectra = np.array([self.model.acquire(d, self.electrons, rng, live_time_s=live)
                            for d in self.dens])
        reference = self.model.acquire({}, self.ref_electrons, rng,
                                       live_time_s=REFERENCE_NA_S[1])
        tau = self.model.detector.pulse_pair_time_s
        cu, ni = self.frame.render(np.random.default_rng(sims_seed))
        if self.name == "plan":
            from temsims.app import calibration_data as cd

            data = cd.CalibrationData(
                calibration_id="bench", edx_uid="edx", sims_uid="sims", analyte="Cu",
                matrix="Ni", analyte_species="63Cu", matrix_species="58Ni", binary=True,
                points_um=np.column_stack([self.positions / 1000.0,
                                           np.zeros_like(self.positions)]),
                direction=(1.0, 0.0), spectra=spectra, axis=self.axis, beam_kev=200.0,
                fwhm_mn_ka_ev=130.0, k_factors=self.k, k_factor_source="simulator",
                analyte_map=cu, matrix_map=ni, affine_nm=self.transform, dwell_s=1e-3,
                dead_time_s=self.params.dead_time_s,
                dark_rate_per_s=self.params.dark_rate_per_s,
                edx_live_time_s=self.live, edx_current_na=self.current_na,
                pulse_pair_time_s=tau,
                system_elements=("Fe",),
                system_reference=edx.SystemReference(reference, self.ref_electrons,
                                                     REFERENCE_NA_S[1]),
                # What the plan's SIMS run records (FIB:PROBE_RBV): the pipeline matches
                # the map's resolution to the EDX points' with it (decision 0045).
                start={"sims_map": {"probe_nm": self.probe_nm}})
            res = cd.quantify(data, edx_corrections=self.correction == "full")
            conc, cal = res.profile.concentration, res.calibration
        else:
            qn = self.qn
            extra = {}
            if self.correction == "full":
                extra = dict(live_time_s=self.live, pulse_pair_time_s=tau,
                             system_elements=("Fe",), electrons=self.electrons,
                             system_reference=edx.SystemReference(
                                 reference, self.ref_electrons, REFERENCE_NA_S[1]))
            prof = edx.quantify_line_scan(spectra, self.axis, self.k, beam_kev=200.0, **extra)
            from temsims.app import calibration_data as cd

            # At the EDX points' resolution, as the pipeline (decision 0045).
            blur = cd.probe_blur({"probe_nm": self.probe_nm})
            a, m = (qn.map_profile(img, self.transform, self.positions).total
                    / qn.blur_factor(img, self.transform, self.positions, **blur)
                    for img in (cu, ni))
            cal = qn.calibrate_rsf(prof.fractions["Cu"], prof.sigma["Cu"], a, m,
                                   mask=prof.detected["Cu"] & prof.detected["Ni"])
            conc = qn.quantify_map(a, m, cal).concentration
        rel = conc[self.band] / self.truth[self.band] - 1.0
        return float(np.max(np.abs(rel))), cal.degree


def accuracy(pairs: int, entropy: int, twin: str = "full", correction: str = "full") -> dict:
    """Worst errors over ``pairs`` seed pairs drawn from ``entropy``, per geometry."""
    rng = np.random.default_rng(entropy)
    seeds = [tuple(int(v) for v in rng.integers(0, 2**31, 2)) for _ in range(pairs)]
    out = {"entropy": entropy, "pairs": pairs, "band": list(BAND), "twin": twin,
           "edx_correction": correction, "geometries": {}}
    for name in GEOMETRIES:
        t0 = time.perf_counter()
        acc = Accuracy(name, twin, correction)
        worst, degrees = zip(*(acc.score(e, s) for e, s in seeds), strict=True)
        w = np.array(worst)
        out["geometries"][name] = {
            "band_points": int(acc.band.sum()),
            "worst_median": float(np.median(w)), "worst_p90": float(np.percentile(w, 90)),
            "worst_max": float(w.max()), "over_10pc": int(np.sum(w > 0.10)),
            "degrees": {int(d): int(np.sum(np.array(degrees) == d)) for d in sorted(set(degrees))},
            "worst": [round(float(v), 5) for v in w], "seed_pairs": seeds,
            "seconds": time.perf_counter() - t0}
    return out


def simulate(n: int):
    """EDX line spectra, energy centres, k-factors, positions and the two SIMS maps."""
    from temsims.ioc.physics import sims as sp
    from temsims.ioc.physics.edx import EDXModel
    from temsims.ioc.physics.materials import ELEMENTARY_CHARGE_C, isotope_mass_u
    from temsims.ioc.physics.specimen import build_specimen

    spec = build_specimen("diffusion-couple", 1)
    geo = sp.ScanGeometry(n, n, 2.56, centre_x_nm=700.0)
    half = geo.nx * geo.pixel_nm / 2
    positions = np.arange(700.0 - half + 20.0, 700.0 + half - 10.0, 20.0)
    model = EDXModel(["Cu", "Ni"], ht_kv=200.0)
    rng = np.random.default_rng(1)
    electrons = 1e-9 / ELEMENTARY_CHARGE_C
    spectra = []
    for x in positions:
        row, col = (int(np.rint(v)) for v in spec.to_index(np.array(x), np.array(0.0)))
        window = (slice(row, row + 1), slice(col, col + 1))
        dens = {el: float(spec.areal_density_per_nm2(el, window).ravel()[0]) for el in ("Cu", "Ni")}
        spectra.append(model.acquire(dens, electrons, rng))
    plan = sp.FramePlan(spec, geo, (isotope_mass_u("63Cu"), isotope_mass_u("58Ni")), 300.0,
                        1e-3, 30.0, 25.5, 1, True, np.zeros(spec.shape, np.float32))
    cu, ni = plan.render(np.random.default_rng(2))
    k = {"Cu": model.k_factor("Cu", "Ni"), "Ni": 1.0}
    return np.array(spectra), model.axis.centres, k, positions, geo, cu, ni


def best_of(repeat: int, f, *args, **kwargs) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f(*args, **kwargs)
        times.append(time.perf_counter() - t0)
    return min(times), times, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="map size (n x n pixels)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=100,
                        help="fresh (EDX, SIMS) seed pairs for the accuracy (0: skip)")
    parser.add_argument("--entropy", type=int, default=None,
                        help="seed of the pairs (default: fresh, printed)")
    parser.add_argument("--twin", choices=("full", "ideal"), default="full",
                        help="EDX twin: with its detector and column effects, or without")
    parser.add_argument("--edx-correction", choices=("full", "none"), default="full",
                        help="the analysis corrects sum and system peaks, or not")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from temsims.analysis import edx
    from temsims.analysis import quantification as qn

    spectra, energy, k, positions, geo, cu, ni = simulate(args.n)
    axis = edx.EnergyAxis.from_centres(energy)
    t_edx, _, profile = best_of(args.repeat, edx.quantify_line_scan, spectra, axis, k,
                                beam_kev=200.0)
    p = geo.pixel_nm
    transform = qn.pixel_transform(p, pixel_nm_y=p * geo.stretch,
                                   origin_nm=(geo.centre_x_nm - (geo.nx - 1) / 2 * p,
                                              geo.centre_y_nm - (geo.ny - 1) / 2 * p * geo.stretch))
    t_prof, _, (pa, pm) = best_of(args.repeat, lambda: (qn.map_profile(cu, transform, positions),
                                                        qn.map_profile(ni, transform, positions)))
    mask = profile.detected["Cu"] & profile.detected["Ni"]
    t_cal, _, cal = best_of(args.repeat, qn.calibrate_rsf, profile.fractions["Cu"],
                            profile.sigma["Cu"], pa.total, pm.total, mask=mask)
    t_map, times, res = best_of(args.repeat, qn.quantify_map, cu, ni, cal, dwell_s=1e-3,
                                dead_time_s=30e-9)
    result = {
        "map_shape": list(cu.shape),
        "edx_points": int(spectra.shape[0]),
        "edx_channels": int(spectra.shape[1]),
        "quantify_map_s": times,
        "quantify_map_best_s": t_map,
        "target_s": TARGET_S,
        "within_target": t_map <= TARGET_S,
        "quantify_line_scan_best_s": t_edx,
        "map_profiles_best_s": t_prof,
        "calibrate_rsf_best_s": t_cal,
        "finite_pixels": int(np.isfinite(res.concentration).sum()),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
    }
    ok = t_map <= TARGET_S
    if args.pairs > 0:
        entropy = (int(np.random.SeedSequence().entropy) if args.entropy is None
                   else args.entropy)
        result["accuracy"] = acc = accuracy(args.pairs, entropy, args.twin,
                                            args.edx_correction)
        result["worst_p90"] = max(g["worst_p90"] for g in acc["geometries"].values())
        result["target_p90"] = TARGET_P90
        print(f"accuracy over {args.pairs} fresh seed pairs (entropy {entropy}): worst "
              f"|rel. error| over {BAND[0] * 100:g}-{BAND[1] * 100:g} at.%")
        for name, g in acc["geometries"].items():
            print(f"  {name:8s} ({g['band_points']} points): median "
                  f"{g['worst_median'] * 100:.1f} %, p90 {g['worst_p90'] * 100:.1f} %, max "
                  f"{g['worst_max'] * 100:.1f} %, {g['over_10pc']} pairs > 10 %; degrees "
                  f"{g['degrees']}; {g['seconds']:.1f} s")
        ok &= result["worst_p90"] < TARGET_P90
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"quantify_map {cu.shape[0]}x{cu.shape[1]}: best {t_map * 1000:.1f} ms "
          f"(target <= {TARGET_S * 1000:.0f} ms), runs "
          + ", ".join(f"{t * 1000:.1f}" for t in times) + " ms")
    print(f"EDX line scan ({spectra.shape[0]} spectra): {t_edx * 1000:.1f} ms; two map "
          f"profiles: {t_prof * 1000:.1f} ms; calibration: {t_cal * 1000:.2f} ms")
    print(f"written {args.output}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
