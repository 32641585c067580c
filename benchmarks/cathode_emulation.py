"""The cathode case's analysis on the twin's own expected counts, without IOCs.

A fast, deterministic check of the case's model against the twin (decision 0027,
2026-12-05 last amendment): the ``livo-cathode`` specimen of each seed, its bright-field
overview rendered by the TEM twin (``ImageRenderer``) and its two SIMS maps by the
spectrometer twin's ``FramePlan`` (the case's sizes, 30 pA probe, the extraction
field's incidence, halo, dead time, quasi-simultaneous arrival), registered exactly
(the pixels' true specimen coordinates), then :func:`temsims.app.cases.cathode.analyse`
itself: its profiles, fits, profile-likelihood interval and jackknife.

``--noise`` draws Poisson counts (and the camera's) instead of the expectations; the
specimen's roughness, the probe current's noise, drift and the registration's errors
are the real runs' (``cathode_case_benchmark.py``), not here. ``--from-lines`` bins the
profiles from the interfaces' lines (the analysis before the traces); ``--flat`` builds
the specimen without roughness.

Run: ``python benchmarks/cathode_emulation.py [--seeds 1 2 3] [--noise N] [--from-lines]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from types import SimpleNamespace as NS


def emulated_experiment(seed: int, *, rng=None, flat: bool = False):
    """A stand-in for :func:`temsims.app.loaders.load_correlative`'s experiment of the
    cathode case on ``livo-cathode`` seed ``seed`` (expected counts; ``rng``: Poisson
    draws)."""
    import numpy as np

    from temsims.app.cases import cathode
    from temsims.ioc.physics import ion_optics
    from temsims.ioc.physics import sims as sp
    from temsims.ioc.physics.materials import isotope_mass_u
    from temsims.ioc.physics.specimen import build_specimen
    from temsims.ioc.physics.tem_optics import (
        ImageGeometry,
        ImageRenderer,
        electrons_per_pixel,
    )

    sizes = cathode.FULL
    spec = build_specimen("livo-cathode", seed, **({"interface_roughness_nm": 0.0}
                                                   if flat else {}))
    cx, cy = sizes["center_um"]
    tem = ImageGeometry(cx, cy, sizes["overview_fov_um"], sizes["camera_size"])
    dose = electrons_per_pixel(1.0, sizes["exposure_s"], sizes["camera_size"])
    renderer = ImageRenderer(spec)
    img = (renderer.acquire(tem, dose, rng) if rng is not None
           else renderer.expected_signal(tem).astype(float) * dose)
    tx, ty = tem.pixel_coordinates_nm()
    overview = NS(values=np.asarray(img, float), x_um=NS(values=tx.ravel() / 1e3),
                  y_um=NS(values=ty.ravel() / 1e3))
    current = float(sizes["aperture"].split()[0])
    nx, ny = sizes["sims_pixels"]
    geo = sp.ScanGeometry(nx, ny, sizes["map_fov_um"], 0.0, 1e3 * cx, 1e3 * cy,
                          incidence_deg=ion_optics.landing_incidence_deg(
                              25.5, cathode.SIMS_VOLTAGE_V))
    u, v = geo.beam_coords(np.arange(ny)[:, None], np.arange(nx)[None, :])
    x, y = (a / 1e3 for a in geo.to_specimen(u, v))
    maps = []
    for species in (cathode.MAP_SPECIES, cathode.LI_MAP_SPECIES):
        plan = sp.FramePlan(spec, geo, tuple(isotope_mass_u(s) for s in species), current,
                            sizes["sims_dwell_s"],
                            ion_optics.probe_diameter_nm(current, 30.0), 25.5, 1, True,
                            np.zeros(spec.shape, np.float32),
                            params=sp.SimsParameters(drift_nm_per_min=0.0))
        counts = plan.render(rng)
        data = {"x_um_registered": NS(values=x), "y_um_registered": NS(values=y),
                **{s: NS(values=np.asarray(c, float)) for s, c in
                   zip(species, counts, strict=True)}}
        maps.append(NS(uid=f"emulated {'+'.join(species)}", data=data,
                       registration=NS(shift_px=(0.0, 0.0),
                                       quality={"ncc": 1.0, "tem_inverted": False}),
                       geometry=NS(stretch=geo.stretch, pixel_size_um=geo.pixel_nm / 1e3)))
    return NS(overview=overview, sims=maps), sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[143009, 134987, 1, 2, 3, 4],
                   help="specimen seeds")
    p.add_argument("--noise", type=int, default=0,
                   help="Poisson draws per seed (0: the expected counts)")
    p.add_argument("--from-lines", action="store_true",
                   help="bin the profiles from the interfaces' lines, not their traces")
    p.add_argument("--flat", action="store_true", help="interfaces without roughness")
    args = p.parse_args(argv)

    import numpy as np

    from temsims.analysis import interfaces
    from temsims.app.cases import cathode

    if args.from_lines:
        def untraced(*_a, **_k):
            raise ValueError("not traced (--from-lines)")

        # analyse() imports it when it runs: it falls back to the lines.
        interfaces.trace_interface = untraced
    decays, pulls, levels, inside = [], [], [], 0
    for seed in args.seeds:
        for k in range(max(1, args.noise)):
            rng = np.random.default_rng([seed, k]) if args.noise else None
            exp, sizes = emulated_experiment(seed, rng=rng, flat=args.flat)
            fig = cathode.analyse(exp, sizes)["figures"]
            d = fig["v_decay_length_nm"]
            lo, hi = d["interval95"]
            half = math.log(hi / d["value"]) if d["value"] < 40.0 else \
                math.log(d["value"] / lo)
            pull = 2.0 * math.log(d["value"] / 40.0) / half
            level = fig.get("v_level_lipon_atom_fraction", {}).get("value", math.nan)
            decays.append(d["value"])
            pulls.append(pull)
            levels.append(level)
            inside += lo <= 40.0 <= hi
            print(f"seed {seed}{f' draw {k}' if args.noise else ''}: decay {d['value']:.2f} nm "
                  f"({lo:.1f}-{hi:.1f}, pull {pull:+.2f}), s "
                  f"{fig['v_blur_sigma_nm']['value']:.2f} nm, LiPON "
                  f"{fig['lipon_thickness_tem_nm']:.1f} +- "
                  f"{fig['lipon_thickness_sd_tem_nm']:.1f} nm, level {100 * level:.2f} at.%",
                  flush=True)
    n = len(decays)
    sd = statistics.stdev(decays) if n > 1 else 0.0
    print(f"{n} fits: decay mean {statistics.mean(decays):.2f} nm (sd {sd:.2f}, "
          f"{min(decays):.2f}-{max(decays):.2f}) for 40; inside interval95 {inside} of {n}; "
          f"pulls mean {statistics.mean(pulls):+.2f}; level mean "
          f"{100 * statistics.mean(levels):.2f} at.% for 2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
