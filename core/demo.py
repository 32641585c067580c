"""``temsims demo``: the correlative TEM-SIMS job on the simulated instrument.

:func:`run_demo` starts the IOCs on loopback unless some already answer at the
prefix (the stage's ``UPTIME``), connects the devices, opens the catalog, builds a
RunEngine that writes into it and enforces the metadata contract, runs
:func:`temsims.plans.correlative_tem_sims` and
:func:`temsims.plans.find_labelled_particles` and writes a PNG report. IOCs it
started are stopped at the end. The demo knows no ground truth: it reports what
it found.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Sizes of the full and the ``--quick`` demo.
FULL = {"camera_size": 128, "overview_fov_um": 4.0, "max_rois": 3, "sims_pixels": (32, 23),
        "sims_dwell_s": 1e-3, "search_fov_um": 4.0, "search_pixels": (96, 68),
        "search_dwell_s": 1e-3, "zoom_fov_um": 0.4, "exposure_s": 0.05, "max_particles": 20}
QUICK = {"camera_size": 64, "overview_fov_um": 4.0, "max_rois": 2, "sims_pixels": (24, 17),
         "sims_dwell_s": 1e-3, "search_fov_um": 4.0, "search_pixels": (64, 45),
         "search_dwell_s": 1e-3, "zoom_fov_um": 0.4, "exposure_s": 0.02, "max_particles": 8}
#: Fast axes and ramps so the demo runs in well under three minutes.
ALPHA_VELOCITY_DEG_S = 30.0
XY_VELOCITY_UM_S = 200.0
BIAS_RAMP_V_S = 10000.0
SIMS_APERTURE = "100 pA"


@dataclass
class DemoResult:
    catalog: str
    report: list[Path]
    correlation_ids: list[str]
    particles: list[dict]
    candidates: list[dict]
    wall_s: float


def _say(msg: str) -> None:
    print(f"temsims demo: {msg}", flush=True)


def iocs_running(layout, prefix: str, timeout: float = 1.5) -> bool:
    """True when ``<prefix>STAGE:UPTIME`` answers on ``layout`` (no repeater spawned)."""
    from caproto.sync.client import read

    from temsims.channel_access import PART_SUFFIXES
    from temsims.ioc.common import repeater_running

    if not repeater_running(layout.host, layout.repeater_port):
        return False
    try:
        read(prefix + PART_SUFFIXES["stage"] + "UPTIME", timeout=timeout, repeater=False)
    except Exception:  # noqa: BLE001 - any failure means: not answering
        return False
    return True


def run_demo(*, prefix: str = "TEMSIMS:", base_port: int | None = None,
             host: str = "127.0.0.1", specimen: str = "li2co3-particles", seed: int = 1,
             catalog: str | None = None, out: str | Path = "temsims-report",
             quick: bool = False, log_dir: str | None = None) -> DemoResult:
    """Run the demo (see the module docstring); returns what it found and wrote."""
    from temsims.channel_access import CALayout, apply_client_environment

    t0 = time.monotonic()
    sizes = QUICK if quick else FULL
    layout = CALayout(base_port=base_port, host=host) if base_port else \
        CALayout.from_environment()
    layout = CALayout(base_port=layout.base_port, host=host)
    apply_client_environment(layout)  # before any CA context of this process
    os.environ.setdefault("OPHYD_CONTROL_LAYER", "caproto")

    procs = None
    if iocs_running(layout, prefix):
        _say(f"using the IOCs already answering at {prefix!r} "
             f"({host}, CA ports from {layout.base_port})")
    else:
        from temsims.ioc.launcher import InstrumentProcesses

        _say(f"starting the instrument's IOCs on {host} (prefix {prefix!r}, CA ports from "
             f"{layout.base_port}, specimen {specimen} seed {seed}) ...")
        procs = InstrumentProcesses(layout=layout, instrument_prefix=prefix,
                                    specimen=specimen, seed=seed,
                                    log_dir=Path(log_dir) if log_dir else None)
        procs.start(timeout=60)
        _say(f"IOCs up after {time.monotonic() - t0:.1f} s")
    cat = None
    try:
        from temsims.devices import connect

        d = connect(prefix, timeout=20.0)
        _say(f"devices connected in {d.connect_time_s:.1f} s")
        for sig, value in {d.stage.alpha.velocity: ALPHA_VELOCITY_DEG_S,
                           d.stage.x.velocity: XY_VELOCITY_UM_S,
                           d.stage.y.velocity: XY_VELOCITY_UM_S,
                           d.bias.ramp_rate: BIAS_RAMP_V_S,
                           d.mode.bias.ramp_rate: BIAS_RAMP_V_S,
                           d.camera.size: sizes["camera_size"]}.items():
            sig.set(value).wait(10)
        if d.mode.infer() != "TEM":
            from bluesky import RunEngine

            from temsims.plans import to_tem_mode

            RunEngine({})(to_tem_mode(d.mode))

        from temsims.catalog import open_catalog, require_metadata

        cat = open_catalog(catalog)
        _say(f"catalog open at {cat.location}")
        RE = _run_engine(cat, specimen, seed, require_metadata)
        result = _measure(RE, d, sizes)
        cat.flush()
        out = Path(out)
        files = write_report(out, result)
        wall = time.monotonic() - t0
        particles = result["particles"]["particles"]
        cands = result["particles"]["candidates"]
        _say(f"{len(result['correlative']['rois'])} regions mapped by SIMS and TEM; "
             f"{len(cands)} particles segmented on the SIMS map, {len(particles)} with 6Li/7Li "
             "significantly above natural:")
        for p in particles:
            _say(f"  particle at ({p['x_um']:+.3f}, {p['y_um']:+.3f}) um: N6 {p['n6']:.0f}, "
                 f"N7 {p['n7']:.0f}, 6Li/7Li {p['ratio']:.3f}, z {p['z']:.1f} sigma")
        _say(f"catalog: {cat.location} (correlation ids "
             f"{result['correlative']['correlation_id']}, "
             f"{result['particles']['correlation_id']})")
        _say("report: " + ", ".join(str(f) for f in files))
        _say(f"done in {wall:.1f} s")
        return DemoResult(catalog=str(cat.location), report=files,
                          correlation_ids=[result["correlative"]["correlation_id"],
                                           result["particles"]["correlation_id"]],
                          particles=particles, candidates=cands, wall_s=wall)
    finally:
        if cat is not None:
            cat.close()
        if procs is not None:
            procs.stop()
            _say("IOCs stopped")


def _run_engine(cat, specimen: str, seed: int, require_metadata):
    from bluesky import RunEngine

    RE = RunEngine({"sample": f"{specimen} seed {seed}", "specimen": specimen,
                    "operator": os.environ.get("USER", "temsims-demo")},
                   call_returns_result=True)
    require_metadata(RE)
    RE.subscribe(cat.writer())
    return RE


def _measure(RE, d, sizes: dict[str, Any]) -> dict[str, Any]:
    from temsims.plans import correlative_tem_sims, find_labelled_particles

    devs = (d.stage, d.tem, d.camera, d.mode, d.imager, d.spectrometer, d.column, d.bias)
    d.column.aperture.set(SIMS_APERTURE).wait(10)
    t = time.monotonic()
    _say("correlative TEM-SIMS: TEM overview, regions of interest, SIMS maps, TEM zooms ...")
    corr = RE(correlative_tem_sims(
        *devs, overview_fov_um=sizes["overview_fov_um"], max_rois=sizes["max_rois"],
        species=("6Li", "7Li"), sims_pixels=sizes["sims_pixels"],
        sims_dwell_s=sizes["sims_dwell_s"], exposure_s=sizes["exposure_s"],
        md={"purpose": "temsims demo"})).plan_result
    _say(f"  {len(corr['rois'])} regions, {1 + len(corr['uids']['sims']) + len(corr['uids']['tem'])}"
         f" runs in {time.monotonic() - t:.1f} s")
    t = time.monotonic()
    _say("labelled-particle search: SIMS 6Li/7Li map, segmentation, TEM zooms ...")
    parts = RE(find_labelled_particles(
        *devs, fov_um=sizes["search_fov_um"], pixels=sizes["search_pixels"],
        dwell_s=sizes["search_dwell_s"], zoom_fov_um=sizes["zoom_fov_um"],
        exposure_s=sizes["exposure_s"], max_particles=sizes["max_particles"],
        md={"purpose": "temsims demo"})).plan_result
    _say(f"  {len(parts['particles'])} labelled particles imaged in "
         f"{time.monotonic() - t:.1f} s")
    return {"correlative": corr, "particles": parts, "sizes": dict(sizes)}


# ============================================================================ report
def write_report(out: Path, result: dict[str, Any]) -> list[Path]:
    """PNG figures of the demo in ``out``: the correlative overview and SIMS maps, the
    particle search (maps, ratio map) and the particles beside their TEM zooms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    from temsims.plans.correlative import sims_extent_um

    out.mkdir(parents=True, exist_ok=True)
    files = []
    corr, parts, sizes = result["correlative"], result["particles"], result["sizes"]

    # ---- 1. correlative: overview with regions, SIMS maps per species, zooms
    rois = corr["rois"]
    n = max(1, len(rois))
    fig, axes = plt.subplots(n, 4, figsize=(13, 3.2 * n + 1), squeeze=False)
    fig.suptitle(f"Correlative TEM-SIMS (correlation id {corr['correlation_id'][:8]})")
    half = sizes["overview_fov_um"] / 2
    for i in range(n):
        ax = axes[i, 0]
        if corr["overview"] is not None:
            ax.imshow(corr["overview"], cmap="gray", origin="lower",
                      extent=(-half, half, -half, half))
        for j, r in enumerate(rois):
            w, h = sims_extent_um(r["fov_um"], sizes["sims_pixels"])
            ax.add_patch(Rectangle((r["x_um"] - w / 2, r["y_um"] - h / 2), w, h, fill=False,
                                   ec="red" if j == i else "yellow", lw=1.2))
            ax.text(r["x_um"], r["y_um"] + h / 2, str(j), color="yellow", fontsize=8)
        ax.set_title("TEM overview, regions" if i == 0 else "")
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
        if i >= len(rois):
            continue
        r = rois[i]
        w, h = sims_extent_um(r["fov_um"], sizes["sims_pixels"])
        ext = (r["x_um"] - w / 2, r["x_um"] + w / 2, r["y_um"] - h / 2, r["y_um"] + h / 2)
        maps = corr["sims_maps"][i] if i < len(corr["sims_maps"]) else {}
        for k, label in enumerate(("6Li", "7Li")):
            ax = axes[i, 1 + k]
            if label in maps and maps[label].size:
                im = ax.imshow(maps[label], origin="lower", extent=ext, cmap="viridis",
                               aspect="auto")
                fig.colorbar(im, ax=ax, label="counts")
            ax.set_title(f"region {i}: SIMS {label}")
        ax = axes[i, 3]
        zoom = corr["zooms"][i] if i < len(corr.get("zooms", [])) else None
        if zoom is not None:
            zh = max(0.05, r["fov_um"] / 2) / 2
            ax.imshow(zoom, cmap="gray", origin="lower",
                      extent=(r["x_um"] - zh, r["x_um"] + zh, r["y_um"] - zh, r["y_um"] + zh))
        ax.set_title(f"region {i}: TEM zoom")
    fig.tight_layout()
    path = out / "correlative.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    files.append(path)

    # ---- 2. particle search: species maps, ratio map, particles found
    geo = parts["geometry"] or {}
    maps = parts["maps"]
    fov = geo.get("fov_um", sizes["search_fov_um"])
    w, h = sims_extent_um(fov, sizes["search_pixels"])
    cx, cy = geo.get("stage_x_um", 0.0), geo.get("stage_y_um", 0.0)
    ext = (cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    for k, label in enumerate(("6Li", "7Li")):
        m = maps.get(label)
        if m is not None and m.size:
            im = axes[k].imshow(m, origin="lower", extent=ext, cmap="viridis")
            fig.colorbar(im, ax=axes[k], label="counts")
        axes[k].set_title(f"SIMS {label} (specimen coordinates)")
    if maps.get("6Li") is not None and maps["6Li"].size:
        n6, n7 = maps["6Li"], maps["7Li"]
        ratio = np.where(n7 + n6 >= 10, n6 / np.maximum(n7, 1), np.nan)
        im = axes[2].imshow(ratio, origin="lower", extent=ext, cmap="magma",
                            norm=matplotlib.colors.LogNorm(0.03, 30))
        fig.colorbar(im, ax=axes[2], label="6Li/7Li")
    for p in parts["candidates"]:
        axes[2].plot(p["x_um"], p["y_um"], "o", mfc="none",
                     mec="cyan" if p["labelled"] else "white", ms=9)
    axes[2].set_title("6Li/7Li ratio; cyan: significantly labelled")
    for ax in axes:
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
    fig.tight_layout()
    path = out / "sims_ratio.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    files.append(path)

    # ---- 3. labelled particles beside their TEM zooms
    found = [p for p in parts["particles"] if p.get("tem_image") is not None]
    ncol = 4
    nrow = max(1, -(-len(found) // ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.4 * nrow), squeeze=False)
    zh = sizes["zoom_fov_um"] / 2
    for ax in axes.flat:
        ax.axis("off")
    for ax, p in zip(axes.flat, found, strict=False):
        ax.axis("on")
        ax.imshow(p["tem_image"], cmap="gray", origin="lower",
                  extent=(p["x_um"] - zh, p["x_um"] + zh, p["y_um"] - zh, p["y_um"] + zh))
        ax.set_title(f"6Li/7Li {p['ratio']:.2f}, z {p['z']:.0f}\n"
                     f"N6 {p['n6']:.0f} N7 {p['n7']:.0f}", fontsize=9)
    if not found:
        axes[0, 0].axis("on")
        axes[0, 0].text(0.5, 0.5, "no labelled particle found", ha="center")
    fig.suptitle(f"{len(parts['particles'])} particles with 6Li/7Li above natural "
                 "(TEM zooms)")
    fig.tight_layout()
    path = out / "particles.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    files.append(path)
    return files


__all__ = ["FULL", "QUICK", "DemoResult", "iocs_running", "run_demo", "write_report"]
