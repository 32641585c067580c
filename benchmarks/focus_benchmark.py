"""The probe's focus in the retarding field (decision 0044): focus_probe on fresh
instruments at +4.5 kV and -4.5 kV, scored against the twin's truth.

Each instrument: a fresh li2co3-particles seed, the focus table's error scale drawn in
8-15 um (the seed gives 0.5-1 of it, either sign), no drift, time scale 20, the 1 pA
aperture. Prints per run the true and recovered best focus and the probe the specimen
sees before and after, then the spread per polarity. The seeds come from fresh
entropy (printed; --entropy reproduces a sweep).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys

import numpy as np

COLUMN_KV = 30.0


def _truth(seed: int, scale: float, bias_v: float, z_um: float) -> float:
    from temsims.ioc.physics import ion_optics

    field = ion_optics.draw_extraction_field_factor(seed)
    incidence = ion_optics.landing_incidence_deg(COLUMN_KV - bias_v / 1000.0, bias_v,
                                                 field_factor=field)
    return ion_optics.defocus_um(
        COLUMN_KV, bias_v, 0.0,
        table_error_um=ion_optics.draw_focus_table_error_um(seed, scale, bias_v),
        height_um=z_um / math.cos(math.radians(incidence)), field_factor=field)


def run_one(seed: int, scale: float, bias_v: float) -> dict:
    """One fresh instrument, one ``focus_probe``; its figures."""
    from bench_instrument import start_instrument
    from bluesky import RunEngine

    from temsims.devices import connect
    from temsims.ioc.physics import ion_optics
    from temsims.plans import focus_probe

    procs = start_instrument("F", specimen="li2co3-particles", seed=seed, time_scale=20.0,
                             extra_args={"spectrometer": [
                                 "--drift-nm-per-min", "0", "--focus-error-um",
                                 f"{scale:.4f}"]})
    try:
        d = connect(procs.instrument_prefix)
        for sig, value in ((d.stage.alpha.velocity, 30.0), (d.stage.x.velocity, 200.0),
                           (d.stage.y.velocity, 200.0), (d.bias.ramp_rate, 10000.0),
                           (d.column.aperture, "1 pA")):
            sig.set(value).wait(10)
        truth = _truth(seed, float(f"{scale:.4f}"), bias_v, float(d.stage.z.position))
        RE = RunEngine({"sample": f"li2co3-particles seed {seed}",
                        "specimen": "li2co3-particles", "operator": "benchmark"},
                       call_returns_result=True)
        species = ("6Li", "7Li") if bias_v > 0 else ("16O",)
        result = RE(focus_probe(d, voltage_v=bias_v, species=species)).plan_result
    finally:
        procs.stop()
    in_focus = ion_optics.probe_diameter_nm(1.0, COLUMN_KV)
    best = result["best_focus_um"]
    return {"seed": seed, "scale": scale, "bias_v": bias_v, "truth": truth, "best": best,
            "err": result["best_focus_err_um"],
            "probe_before": ion_optics.probe_at_specimen_nm(in_focus, truth),
            "probe_after": ion_optics.probe_at_specimen_nm(in_focus, truth - best),
            "in_focus": in_focus, "edge_best": result["width_at_best_nm"],
            "edge_before": result["width_before_nm"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8, help="instruments per polarity")
    parser.add_argument("--entropy", type=int, default=None, help="reproduce a sweep")
    parser.add_argument("--one", type=float, nargs=3, default=None,
                        metavar=("SEED", "SCALE", "BIAS"),
                        help="one run (in a process of its own: one instrument per process)")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(int(args.one[0]), args.one[1], args.one[2])))
        return 0
    entropy = args.entropy or int(np.random.SeedSequence().entropy)
    print(f"focus benchmark: entropy {entropy}", flush=True)
    rng = np.random.default_rng(entropy)
    rows = []
    for bias_v in (4500.0, -4500.0):
        for _ in range(args.runs):
            seed = int(rng.integers(2, 1_000_000))
            scale = float(rng.uniform(8.0, 15.0))
            out = subprocess.run([sys.executable, __file__, "--one", str(seed), str(scale),
                                  str(bias_v)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"{bias_v:+.0f} V seed {seed} scale {scale:5.2f}: truth {r['truth']:+7.3f} "
                  f"um, found {r['best']:+7.3f} +- {r['err']:.3f} (error "
                  f"{r['best'] - r['truth']:+.3f}); probe {r['probe_before']:.2f} -> "
                  f"{r['probe_after']:.2f} nm (in focus {r['in_focus']:.2f}); edge "
                  f"{r['edge_before']:.2f} -> {r['edge_best']:.2f} nm", flush=True)
    for bias_v in (4500.0, -4500.0):
        sel = [r for r in rows if r["bias_v"] == bias_v]
        errs = [r["best"] - r["truth"] for r in sel]
        after = [r["probe_after"] / r["in_focus"] - 1 for r in sel]
        print(f"{bias_v:+.0f} V, {len(sel)} runs: focus error mean {statistics.mean(errs):+.3f}"
              f" sd {statistics.pstdev(errs):.3f} max |{max(map(abs, errs)):.3f}| um; probe "
              f"after +{100 * statistics.median(after):.2f} % median, "
              f"+{100 * max(after):.2f} % max; pulls sd "
              f"{statistics.pstdev([e / r['err'] for e, r in zip(errs, sel, strict=True)]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
