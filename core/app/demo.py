"""``temsims demo``: a correlative TEM-SIMS case study on the simulated instrument.

:func:`run_demo` starts the IOCs on loopback with the case's specimen unless some
already answer at the prefix (the stage's ``UPTIME``), connects the devices, opens
the catalog, builds a RunEngine that writes into it and enforces the metadata
contract, runs the case's measurement and its report (read back from the catalog),
and prints where everything is. IOCs it started are stopped at the end. The cases
are modules of :mod:`temsims.app.cases` (decision 0027); the default, ``particles``,
is the Li2CO3 particle job whose measurement and report are in this module:
:func:`temsims.plans.correlative_tem_sims` and
:func:`temsims.plans.find_labelled_particles`, then a PNG report. The demo knows no
ground truth: it reports what it found.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temsims.app.cases import DEFAULT_CASE

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
SIMS_VOLTAGE_V = 4500.0
#: The dead-time calibration on the specimen's natural-Li pad (0.24 um of flat
#: Li2CO3, 100 nm): its 7Li (~4e7 /s at 1 nA) loses ~5 % at 30 pA and 45-65 % at 1 nA
#: for dead times of 22-45 ns (10-300 pA left a 22 ns instrument at sigma/tau 12 %);
#: the 16 counts of 1 ms sputter ~25 nm of it.
PAD_DEAD_TIME_APERTURES = ("30 pA", "100 pA", "300 pA", "1 nA")
PAD_DEAD_TIME_FOV_UM = 0.15
#: The particle case's session alignment (:func:`temsims.plans.align_ion_beam`) on the
#: particle field at the working bias, before the measurement: it maps the field the
#: case then measures, so at a tenth of the search's dwell (0.1 ms at 100 pA, 6e4
#: ions a pixel: ~4 nm of Li2CO3 over the raster map's 16 x 23 nm pixels, ~10 nm over
#: the three maps; 0.3 ms at 300 pA sputtered ~40 nm a raster pass and used up the
#: natural-Li pad the dead time and the bracketing need) and one raster pass (a
#: second only checks the first). The TEM images at 512 px (the case's camera size is
#: restored after): at the quick demo's 64 px a 6 um image has 94 nm pixels, too
#: coarse for the raster's features.
ALIGNMENT = {"center": (0.0, 0.0), "voltage_v": SIMS_VOLTAGE_V, "species": ("6Li", "7Li"),
             "sims_dwell_s": 1e-4, "raster_passes": 1, "aperture": SIMS_APERTURE,
             "camera_size": 512}


class DemoCannotStart(ValueError):
    """The demo refuses before it starts anything: a case and specimen that do not
    fit, or IOCs already answering where ``--case all`` would start its own."""


@dataclass
class DemoResult:
    """What :func:`run_demo` did: where the catalog and the report are, the
    experiments' correlation ids, the case's figures (``summary``; the particle case's
    labelled ``particles`` and segmented ``candidates`` also as attributes)."""

    catalog: str
    report: list[Path]
    correlation_ids: list[str]
    particles: list[dict]
    candidates: list[dict]
    wall_s: float
    case: str = DEFAULT_CASE
    summary: dict = field(default_factory=dict)


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


def run_demo(*, case: str = DEFAULT_CASE, prefix: str = "TEMSIMS:",
             base_port: int | None = None, host: str = "127.0.0.1",
             specimen: str | None = None, seed: int = 1,
             catalog: str | None = None, api_key: str | None = None,
             out: str | Path = "temsims-report",
             quick: bool = False, log_dir: str | None = None,
             time_scale: float = 1.0, drift_nm_per_min: float | None = None) -> DemoResult:
    """Run one case study (see the module docstring), or every one (``case="all"``);
    returns what it found and wrote.

    Parameters
    ----------
    case : str
        A case of :mod:`temsims.app.cases` (``particles``, ``cathode``, ...), or
        ``"all"``: every case, one after another, into one catalog, each case's report
        in ``out/<case>/`` and an HTML index of them in ``out/index.html``
        (:mod:`temsims.app.report_index`). Each case needs IOCs holding its own
        specimen: ``all`` starts them for each case (PV prefix ``prefix<CASE>:``) and
        stops them after it.
    specimen : str, optional
        The specimen the IOCs the demo starts hold; default the case's own. Another
        one is refused: the case's analysis only makes sense on its specimen (with
        ``all``, any is refused).
    drift_nm_per_min : float, optional
        Specimen drift of the IOCs the demo starts (default theirs, 3 nm/min). At a
        time scale S every wall second before a map drifts S seconds' worth: the
        tests use 3 / S to drift per wall second as at time scale 1.
    (the others as ``temsims demo --help`` says)

    Returns
    -------
    DemoResult
        With ``all``: the correlation ids and files of every case, ``summary`` the
        figures by case name, ``report`` ending with the index.
    """
    from temsims.app.cases import ALL_CASES, CaseReport, available_cases, get_case
    from temsims.channel_access import CALayout, apply_client_environment

    t0 = time.monotonic()
    if case == ALL_CASES:
        if specimen is not None:
            raise DemoCannotStart(
                f"--case all runs every case on its own specimen, not {specimen!r}: "
                "leave out --specimen")
        cases = list(available_cases().values())
    else:
        cases = [get_case(case)]
        if specimen is not None and specimen != cases[0].specimen:
            raise DemoCannotStart(f"case {case!r} runs on the specimen "
                                  f"{cases[0].specimen!r}, not {specimen!r}")
    layout = CALayout(base_port=base_port, host=host) if base_port else \
        CALayout.from_environment()
    layout = CALayout(base_port=layout.base_port, host=host)
    apply_client_environment(layout)  # before any CA context of this process
    os.environ.setdefault("OPHYD_CONTROL_LAYER", "caproto")
    many = len(cases) > 1 or case == ALL_CASES
    if many and iocs_running(layout, prefix):
        raise DemoCannotStart(
            f"--case all starts IOCs with each case's specimen, but IOCs already answer "
            f"at {prefix!r} (CA ports from {layout.base_port}): stop them, or give another "
            "--base-port or --prefix, or run one --case on them")
    opened: dict[str, Any] = {}
    results: list[tuple[Any, Any, Path, list[str]]] = []
    failed: dict[str, str] = {}
    try:
        for the_case in cases:
            if many:
                _say(f"==== case {the_case.name}: {the_case.title}")
            # One prefix per case: the PVs of the previous case's IOCs (same names)
            # would otherwise wait for caproto's search back-off to find the new ones.
            case_prefix = f"{prefix}{the_case.name.upper().replace('-', '')}:" if many \
                else prefix
            case_out = Path(out) / the_case.name if many else Path(out)
            case_t0 = time.monotonic()
            try:
                report, said = _run_case(
                    the_case, layout=layout, prefix=case_prefix, host=host, seed=seed,
                    opened=opened, catalog=catalog, api_key=api_key, out=case_out,
                    quick=quick, log_dir=str(Path(log_dir) / the_case.name)
                    if log_dir and many else log_dir, time_scale=time_scale, t0=t0,
                    drift_nm_per_min=drift_nm_per_min)
            except Exception as err:
                if not many:
                    raise
                # One case failing does not cost the others: it is in the index, and
                # the demo fails at the end.
                _say(f"case {the_case.name} FAILED: {type(err).__name__}: {err}")
                failed[the_case.name] = f"{type(err).__name__}: {err}"
                report, said = CaseReport(files=[], correlation_ids=[]), []
            results.append((the_case, report, case_out, said))
            if many:
                _say(f"case {the_case.name} took {time.monotonic() - case_t0:.1f} s")
        cat = opened["catalog"]
        files = [f for _, r, _, _ in results for f in r.files]
        if many:
            from temsims.app.report_index import IndexEntry, write_index

            index = write_index(Path(out), [
                IndexEntry(name=c.name, title=c.title, specimen=c.specimen,
                           correlation_ids=list(r.correlation_ids), files=list(r.files),
                           lines=said, out=o, error=failed.get(c.name))
                for c, r, o, said in results],
                catalog=str(cat.location), wall_s=time.monotonic() - t0)
            files.append(index)
            _say(f"report index: {index}")
        cids = [c for _, r, _, _ in results for c in r.correlation_ids]
        wall = time.monotonic() - t0
        _say(f"catalog: {cat.location} (correlation ids {', '.join(cids)})")
        for f in files:
            _say(f"report: {f}")
        _say(f"done in {wall:.1f} s")
        if failed:
            raise RuntimeError(f"--case all: {len(failed)} of {len(cases)} cases failed: "
                               + "; ".join(f"{k}: {v}" for k, v in failed.items()))
        first = results[0][1]
        summary = {c.name: r.summary for c, r, _, _ in results} if many else first.summary
        return DemoResult(catalog=str(cat.location), report=files, correlation_ids=cids,
                          particles=[] if many else first.summary.get("particles", []),
                          candidates=[] if many else first.summary.get("candidates", []),
                          wall_s=wall, case=case, summary=summary)
    finally:
        if opened.get("catalog") is not None:
            opened["catalog"].close()


def _run_case(the_case, *, layout, prefix: str, host: str, seed: int, opened: dict,
              catalog, api_key, out: Path, quick: bool, log_dir, time_scale: float,
              t0: float, drift_nm_per_min: float | None = None):
    """One case: its IOCs (started unless some answer; stopped after), devices, the
    catalog (opened once, kept in ``opened``), RunEngine, measurement, report.

    Returns the case's :class:`~temsims.app.cases.CaseReport` and the lines its
    report step printed (its figures, for the index of ``all``).
    """
    specimen = the_case.specimen
    sizes = the_case.sizes(quick)
    procs = None
    if iocs_running(layout, prefix):
        _say(f"using the IOCs already answering at {prefix!r} "
             f"({host}, CA ports from {layout.base_port})")
    else:
        from temsims.ioc.launcher import InstrumentProcesses

        _say(f"starting the instrument's IOCs on {host} (prefix {prefix!r}, CA ports from "
             f"{layout.base_port}, specimen {specimen} seed {seed}) ...")
        procs = InstrumentProcesses(layout=layout, instrument_prefix=prefix,
                                    specimen=specimen, seed=seed, time_scale=time_scale,
                                    calibration_errors=None if the_case.alignment
                                    else "none",
                                    log_dir=Path(log_dir) if log_dir else None,
                                    extra_args={} if drift_nm_per_min is None else
                                    {"spectrometer": ["--drift-nm-per-min",
                                                      f"{drift_nm_per_min:g}"]})
        procs.start(timeout=60)
        _say(f"IOCs up after {time.monotonic() - t0:.1f} s")
    try:
        from temsims.devices import connect

        d = connect(prefix, timeout=20.0)
        _say(f"devices connected in {d.connect_time_s:.1f} s")
        for sig, value in {d.stage.alpha.velocity: ALPHA_VELOCITY_DEG_S,
                           d.stage.x.velocity: XY_VELOCITY_UM_S,
                           d.stage.y.velocity: XY_VELOCITY_UM_S,
                           d.bias.ramp_rate: BIAS_RAMP_V_S,
                           d.camera.size: sizes["camera_size"]}.items():
            sig.set(value).wait(10)
        if d.mode.infer() != "TEM":
            from bluesky import RunEngine

            from temsims.plans import to_tem_mode

            RunEngine({})(to_tem_mode(d.mode))

        from temsims.catalog import open_catalog, require_metadata

        if opened.get("catalog") is None:
            opened["catalog"] = open_catalog(catalog, api_key=api_key)
            _say(f"catalog open at {opened['catalog'].location}")
        cat = opened["catalog"]
        if opened.get("writer") is None:
            # One storage process for every case of ``all``: each new one is an
            # interpreter importing tiled and bluesky (~2-3 s of CPU).
            opened["writer"] = cat.writer(process=True)
        RE = _run_engine(opened["writer"], specimen, seed, require_metadata)
        alignment = _align(RE, d, the_case.alignment) if the_case.alignment else None
        # A case without a session alignment runs on the exact geometry the runner
        # started (decision 0042): its plans' check of the raster and coincidence
        # calibration would only warn falsely that they were never calibrated. On IOCs
        # already running (their geometry unknown here) the check stays on.
        sizes = {**sizes, "calibration": "ignore" if procs is not None
                 and not the_case.alignment else "warn"}
        measured = the_case.measure(RE, d, sizes, _say)
        if alignment is not None:
            measured["alignment"] = alignment
        cat.flush()
        said: list[str] = []

        def say(msg: str) -> None:
            said.append(msg)
            _say(msg)

        return the_case.report(cat, measured, Path(out), sizes, say), said
    finally:
        if procs is not None:
            procs.stop()
            _say("IOCs stopped")


def _align(RE, d, alignment: dict[str, Any]) -> dict[str, Any]:
    """The session alignment (:func:`temsims.plans.align_ion_beam`): the TEM/FIB
    coincidence and the ion raster's field and rotation, measured on the TEM at the
    case's working bias and written on the column, as a lab does before handing the
    instrument over. Its runs go to the catalog with the case's."""
    from temsims.plans import align_ion_beam

    t = time.monotonic()
    kwargs = {k: v for k, v in alignment.items() if k not in ("aperture", "camera_size")}
    _say(f"session alignment at {kwargs['voltage_v']:+g} V: TEM/FIB coincidence (wide), "
         "raster field and rotation, coincidence (fine) ...")
    settings = {d.column.aperture: alignment.get("aperture"),
                d.camera.size: alignment.get("camera_size")}
    before = {sig: sig.get() for sig, value in settings.items() if value is not None}
    for sig in before:
        sig.set(settings[sig]).wait(10)
    try:
        result = RE(align_ion_beam(d, md={"purpose": "temsims demo: session alignment"},
                                   **kwargs)).plan_result
    finally:
        for sig, value in before.items():
            sig.set(value).wait(10)
    cx, cy = result["correction_um"]
    _say(f"  coincidence correction ({cx:+.3f}, {cy:+.3f}) um, raster field factor "
         f"{result['fov_cal']:.4f}, rotation {result['rot_cal_deg']:+.3f} deg, "
         f"in {time.monotonic() - t:.1f} s")
    return {"alignment_id": result["alignment_id"], "voltage_v": result["voltage_v"],
            "correction_um": list(result["correction_um"]), "fov_cal": result["fov_cal"],
            "rot_cal_deg": result["rot_cal_deg"], "wall_s": time.monotonic() - t}


def _run_engine(writer, specimen: str, seed: int, require_metadata):
    """A RunEngine enforcing the metadata contract, its documents to ``writer`` (the
    catalog's process writer: storage off the RunEngine's interpreter)."""
    from bluesky import RunEngine

    RE = RunEngine({"sample": f"{specimen} seed {seed}", "specimen": specimen,
                    "operator": os.environ.get("USER", "temsims-demo")},
                   call_returns_result=True)
    require_metadata(RE)
    RE.subscribe(writer)
    return RE


def _measure(RE, d, sizes: dict[str, Any]) -> dict[str, Any]:
    from temsims.constants import PROBE_HALO, reference_region
    from temsims.plans import (
        calibrate_dead_time,
        correlative_tem_sims,
        find_labelled_particles,
        to_sims_mode,
    )
    from temsims.plans.counting import DeadTimeNotMeasured

    d.column.aperture.set(SIMS_APERTURE).wait(10)
    t = time.monotonic()
    _say("correlative TEM-SIMS: TEM overview, regions of interest, SIMS maps, TEM zooms ...")
    corr = RE(correlative_tem_sims(
        d, overview_fov_um=sizes["overview_fov_um"], max_rois=sizes["max_rois"],
        species=("6Li", "7Li"), sims_pixels=sizes["sims_pixels"],
        sims_dwell_s=sizes["sims_dwell_s"], exposure_s=sizes["exposure_s"],
        reference="li2co3-particles", calibration="refuse",
        md={"purpose": "temsims demo"})).plan_result
    _say(f"  {len(corr['rois'])} regions, {1 + len(corr['uids']['sims']) + len(corr['uids']['tem'])}"
         f" runs in {time.monotonic() - t:.1f} s")
    t = time.monotonic()
    _say("dead time: count rate against beam current on the natural-Li pad ...")
    pad = reference_region("li2co3-particles")
    RE(to_sims_mode(d.mode, voltage_v=SIMS_VOLTAGE_V))
    dead_time_uid = None
    try:
        dead_time_uid = RE(calibrate_dead_time(
            d.spectrometer, d.column, species=("6Li", "7Li"),
            apertures=PAD_DEAD_TIME_APERTURES, fov_um=PAD_DEAD_TIME_FOV_UM, stage=d.stage,
            center_um=(pad["x_um"], pad["y_um"]), bias=d.bias,
            md={"purpose": "temsims demo"})).plan_result
    except DeadTimeNotMeasured as exc:  # the run is stored, DEAD_TIME kept
        _say(f"  {exc}")
    _say(f"  DEAD_TIME {1e9 * float(d.spectrometer.dead_time.get()):.1f} ns "
         f"({d.spectrometer.dead_time_source.get()}) in {time.monotonic() - t:.1f} s")
    t = time.monotonic()
    _say("labelled-particle search: SIMS 6Li/7Li map, segmentation, TEM zooms ...")
    parts = RE(find_labelled_particles(
        d, fov_um=sizes["search_fov_um"], pixels=sizes["search_pixels"],
        dwell_s=sizes["search_dwell_s"], zoom_fov_um=sizes["zoom_fov_um"],
        exposure_s=sizes["exposure_s"], max_particles=sizes["max_particles"],
        reference="li2co3-particles",
        halo=(PROBE_HALO["fraction"], PROBE_HALO["fwhm_nm"]), calibration="refuse",
        md={"purpose": "temsims demo"})).plan_result
    bracket = parts.get("bracketing") or {}
    if bracket.get("factor"):
        k, sk = bracket["factor"]
        _say(f"  6Li/7Li bracketed by the natural-Li pad: K = {k:.4f} +- {sk:.4f} "
             "(mass fractionation and collector yields)")
    _say(f"  {len(parts['imaged'])} labelled particles imaged in "
         f"{time.monotonic() - t:.1f} s")
    return {"correlative": corr, "particles": parts, "dead_time_uid": dead_time_uid,
            "sizes": dict(sizes)}


# ============================================================================ read back
def read_back(cat, result: dict[str, Any]):
    """Both experiments of the demo read from the catalog by
    :func:`temsims.app.loaders.load_correlative`: the correlative one registered onto its
    overview; the particle search's SIMS map, particle table and TEM zooms."""
    from temsims.app.loaders import load_correlative

    experiment = load_correlative(cat, result["correlative"]["correlation_id"])
    search = load_correlative(cat, result["particles"]["correlation_id"], register=False)
    return experiment, search


def _region_figures(experiment) -> list[dict[str, Any]]:
    """Per SIMS map of the correlative experiment: registration, IHS and Laplacian
    fusions with their metrics, the 6Li atom fraction with its Poisson error."""
    import numpy as np

    out = []
    for i, m in enumerate(experiment.sims):
        entry: dict[str, Any] = {"index": i, "roi_index": m.roi_index, "uid": m.uid,
                                 "x_um": m.geometry.centre_x_um,
                                 "y_um": m.geometry.centre_y_um, "fov_um": m.geometry.fov_um,
                                 "pixels": [m.geometry.nx, m.geometry.ny],
                                 "pixel_nm": 1e3 * m.geometry.pixel_size_um}
        reg = m.registration
        if reg is None:
            entry["registration"] = {"error": m.registration_error}
        else:
            q = reg.quality
            p = m.geometry.pixel_size_um
            entry["registration"] = {
                "refined": bool(reg.refined), "shift_px": [float(v) for v in reg.shift_px],
                "shift_nm": [1e3 * reg.shift_px[0] * p * m.geometry.stretch,
                             1e3 * reg.shift_px[1] * p],
                "ncc": float(q["ncc"]), "ncc_initial": float(q["ncc_initial"]),
                "phase_error": float(q["phase_error"]),
                "overlap_fraction": float(q["overlap_fraction"]),
                "tem_inverted": bool(q["tem_inverted"]),
                "residual_sims_px": float(reg.residual_sims_px)}
            grid = "zoom" if experiment.zoom_of(i) is not None else "overview"
            entry["fusion"] = {"grid": grid}
            for method in ("ihs", "laplacian"):
                fused = experiment.fuse(i, method=method, grid=grid)
                entry.setdefault("fused", {})[method] = fused
                entry["fusion"][method] = experiment.fusion_metrics(i, method=method,
                                                                    grid=grid, fused=fused)
        frac = experiment.atom_fraction(i, "6Li", "7Li")
        entry["fraction"] = frac
        n6 = float(np.nansum(m.data["6Li"].values))
        n7 = float(np.nansum(m.data["7Li"].values))
        x = n6 / (n6 + n7) if n6 + n7 > 0 else float("nan")
        entry["x6Li"] = {"n6": n6, "n7": n7, "map": x,
                         "sigma": (x * (1 - x) / (n6 + n7)) ** 0.5 if n6 + n7 > 0
                         else float("nan"),
                         "valid_pixels": int(frac["valid"].values.sum()),
                         "median_pixel_sigma": float(np.nanmedian(frac["sigma"].values))
                         if frac["valid"].values.any() else float("nan")}
        out.append(entry)
    return out


def _metrics_text(metrics: dict[str, Any]) -> str:
    return (f"Q {metrics['q']:.2f}  SSIM {metrics['ssim']:.2f}  SAM {metrics['sam_deg']:.1f} deg\n"
            f"ERGAS {metrics['ergas']:.2f}  sCC {metrics['spatial_cc']:.2f}  "
            f"sCC(HP) {metrics['spatial_cc_highpass']:.2f}")


def _extent(da) -> tuple[float, float, float, float]:
    """imshow extent (pixel edges, um) of a DataArray with 1-D or 2-D x_um/y_um."""
    import numpy as np

    x = np.asarray(da.x_um.values, float)
    y = np.asarray(da.y_um.values, float)
    x = x[0] if x.ndim == 2 else x
    y = y[:, 0] if y.ndim == 2 else y
    dx = (x[-1] - x[0]) / max(1, len(x) - 1) / 2 if len(x) > 1 else 0.0
    dy = (y[-1] - y[0]) / max(1, len(y) - 1) / 2 if len(y) > 1 else 0.0
    return (x[0] - dx, x[-1] + dx, y[0] - dy, y[-1] + dy)


def _json_ready(obj):
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        return _json_ready(obj.item())
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, float) and obj in (float("inf"), float("-inf")):
        return None
    return obj


# ============================================================================ report
class ReportFigures:
    """A report's PNG figures in ``out``: :meth:`save` lays a figure out, writes it at
    90 dpi and closes it; ``files`` lists what was written, in order."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.files: list[Path] = []

    def save(self, fig, name: str) -> None:
        import matplotlib.pyplot as plt

        fig.tight_layout()
        fig.savefig(self.out / name, dpi=90)
        plt.close(fig)
        self.files.append(self.out / name)


def write_report(out: Path, experiment, search, sizes: dict[str, Any]) -> list[Path]:
    """The demo's report in ``out``: PNG figures and ``report.json``, all from the
    catalog (the two experiments of :func:`read_back`).

    ``correlative.png``: the overview with its regions, SIMS maps, TEM zooms;
    ``fusion.png``: per region the registered IHS and Laplacian fusions (with their
    :func:`~temsims.analysis.metrics.fusion_metrics`) and the 6Li atom fraction map
    with its Poisson error; ``sims_ratio.png``: the particle search's maps and ratio;
    ``quantified.png``: its x(6Li) map and error and the particle table;
    ``particles.png``: the labelled particles beside their TEM zooms.
    """
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Polygon

    out.mkdir(parents=True, exist_ok=True)
    figures = ReportFigures(out)
    save, files = figures.save, figures.files

    report: dict[str, Any] = {
        "correlation_ids": {"correlative": experiment.correlation_id,
                            "particle_search": search.correlation_id},
        "sizes": sizes, "source": "catalog"}

    def outline(geometry) -> np.ndarray:
        corners = np.array([[-0.5, -0.5, 1], [geometry.nx - 0.5, -0.5, 1],
                            [geometry.nx - 0.5, geometry.ny - 0.5, 1],
                            [-0.5, geometry.ny - 0.5, 1]]).T
        return (geometry.affine_to_specimen() @ corners)[:2].T

    # ---- 1. correlative: overview with regions, SIMS maps per species, zooms
    rois = experiment.rois
    n = max(1, len(experiment.sims))
    fig, axes = plt.subplots(n, 4, figsize=(13, 3.2 * n + 1), squeeze=False)
    fig.suptitle(f"Correlative TEM-SIMS (correlation id {experiment.correlation_id[:8]})")
    for i in range(n):
        ax = axes[i, 0]
        if experiment.overview is not None:
            ax.imshow(experiment.overview.values, cmap="gray", origin="lower",
                      extent=_extent(experiment.overview))
        for j, m in enumerate(experiment.sims):
            xy = outline(m.geometry)
            ax.add_patch(Polygon(xy, closed=True, fill=False,
                                 ec="red" if j == i else "yellow", lw=1.2))
            ax.text(xy[:, 0].mean(), xy[:, 1].max(), str(j), color="yellow", fontsize=8)
        ax.set_title("TEM overview, regions" if i == 0 else "")
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
        if i >= len(experiment.sims):
            continue
        m = experiment.sims[i]
        for k, label in enumerate(("6Li", "7Li")):
            ax = axes[i, 1 + k]
            if label in m.data:
                im = ax.imshow(m.data[label].values, origin="lower",
                               extent=_extent(m.data[label]), cmap="viridis", aspect="auto")
                fig.colorbar(im, ax=ax, label="counts")
            ax.set_title(f"region {i}: SIMS {label}")
        ax = axes[i, 3]
        zoom = experiment.zoom_of(i)
        if zoom is not None:
            ax.imshow(zoom.values, cmap="gray", origin="lower", extent=_extent(zoom))
        ax.set_title(f"region {i}: TEM zoom")
    save(fig, "correlative.png")

    # ---- 1b. per region: registered fusions (IHS, Laplacian), x(6Li) and its error
    regions = _region_figures(experiment)
    if regions:
        nreg = len(regions)
        fig, axes = plt.subplots(nreg, 4, figsize=(16, 4.2 * nreg + 0.6), squeeze=False)
        fig.suptitle("Registered SIMS (6Li red, 7Li green) fused with TEM, and the 6Li atom "
                     "fraction x(6Li) = N6 / (N6 + N7) with its Poisson error")
        for row, entry in zip(axes, regions, strict=True):
            i = entry["index"]
            reg = entry["registration"]
            for k, method in enumerate(("ihs", "laplacian")):
                ax = row[k]
                fused = (entry.get("fused") or {}).get(method)
                if fused is None:
                    ax.text(0.5, 0.5, f"not registered:\n{reg.get('error')}", ha="center",
                            va="center", fontsize=8, wrap=True)
                    ax.set_axis_off()
                    continue
                ax.imshow(fused.values, origin="lower", extent=_extent(fused))
                grid = entry["fusion"]["grid"]
                ax.set_title(f"region {i}: {'IHS' if method == 'ihs' else 'Laplacian'} "
                             f"on the TEM {grid}\nshift ({reg['shift_px'][0]:+.2f}, "
                             f"{reg['shift_px'][1]:+.2f}) SIMS px, NCC {reg['ncc']:.2f}",
                             fontsize=9)
                ax.set_xlabel(_metrics_text(entry["fusion"][method]), fontsize=8)
            frac = entry["fraction"]
            ext = _extent(frac)
            im = row[2].imshow(frac["fraction"].values, origin="lower", extent=ext,
                               cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
            fig.colorbar(im, ax=row[2], label="x(6Li)")
            xs = entry["x6Li"]
            row[2].set_title(f"region {i}: x(6Li); whole map {xs['map']:.3f} "
                             f"+- {xs['sigma']:.3f}", fontsize=9)
            sig = frac["sigma"].values
            im = row[3].imshow(sig, origin="lower", extent=ext, cmap="magma", aspect="auto",
                               vmin=0.0, vmax=float(np.nanmax(sig)) if np.isfinite(sig).any()
                               else 1.0)
            fig.colorbar(im, ax=row[3], label="sigma x(6Li) (Poisson)")
            row[3].set_title(f"region {i}: Poisson error of x(6Li)", fontsize=9)
            for ax in row[2:]:
                ax.set_xlabel("x (um)")
                ax.set_ylabel("y (um)")
        save(fig, "fusion.png")
    report["regions"] = [{k: v for k, v in e.items() if k not in ("fused", "fraction")}
                         for e in regions] or [
        {"index": i, "x_um": r["x_um"], "y_um": r["y_um"], "fov_um": r["fov_um"]}
        for i, r in enumerate(rois)]

    # ---- 2. particle search: species maps, ratio map, particles found
    table = [dict(p) for p in search.particles]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    if search.sims:
        data = search.sims[0].data
        ext = _extent(data["6Li"])
        for k, label in enumerate(("6Li", "7Li")):
            im = axes[k].imshow(data[label].values, origin="lower", extent=ext,
                                cmap="viridis", aspect="auto")
            fig.colorbar(im, ax=axes[k], label="counts")
            axes[k].set_title(f"SIMS {label} (specimen coordinates)")
        n6, n7 = (np.asarray(data[s].values, float) for s in ("6Li", "7Li"))
        # Corrected as the particle table is (standard bracketing, decision 0035).
        params = (search.sims[0].start.get("correlative") or {}).get("particle_analysis", {})
        k = params.get("correction_factor") or 1.0
        ratio = np.where(n7 + n6 >= 10, k * n6 / np.maximum(n7, 1), np.nan)
        im = axes[2].imshow(ratio, origin="lower", extent=ext, cmap="magma", aspect="auto",
                            norm=matplotlib.colors.LogNorm(0.03, 30))
        fig.colorbar(im, ax=axes[2], label="6Li/7Li")
    for p in table:
        axes[2].plot(p["x_um"], p["y_um"], "o", mfc="none",
                     mec="cyan" if p.get("labelled") else "white", ms=9)
    axes[2].set_title("6Li/7Li ratio (bracketed); cyan: significantly labelled")
    for ax in axes:
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
    save(fig, "sims_ratio.png")

    # ---- 3. labelled particles beside their TEM zooms (the summary in each zoom's start)
    starts = {st["uid"]: st for st in search.starts}
    found = [(z, (starts.get(z.attrs.get("uid"), {}).get("correlative") or {})
              .get("particle") or {}) for z in search.zooms]
    ncol = 4
    nrow = max(1, -(-len(found) // ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.4 * nrow), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (zoom, p) in zip(axes.flat, found, strict=False):
        ax.axis("on")
        ax.imshow(zoom.values, cmap="gray", origin="lower", extent=_extent(zoom))
        ax.set_title(f"6Li/7Li {p.get('ratio') or float('nan'):.2f}, "
                     f"z {p.get('z') or float('nan'):.0f}\n"
                     f"N6 {p.get('n6') or 0:.0f} N7 {p.get('n7') or 0:.0f}", fontsize=9)
    if not found:
        axes[0, 0].axis("on")
        axes[0, 0].text(0.5, 0.5, "no labelled particle found", ha="center")
    fig.suptitle(f"{sum(bool(p.get('labelled')) for p in table)} particles with 6Li/7Li "
                 "above natural (TEM zooms)")
    save(fig, "particles.png")

    # ---- 4. particle search quantified: x(6Li) map, its error, the particle table
    fig = plt.figure(figsize=(16, 5.6))
    gs = fig.add_gridspec(1, 3, width_ratios=(1, 1, 1.25))
    ax_x, ax_s, ax_t = (fig.add_subplot(gs[0, k]) for k in range(3))
    if search.sims:
        frac = search.atom_fraction(0, "6Li", "7Li", binning=1)
        ext = _extent(frac)
        im = ax_x.imshow(frac["fraction"].values, origin="lower", extent=ext, cmap="viridis",
                         vmin=0, vmax=1)
        fig.colorbar(im, ax=ax_x, label="x(6Li)")
        sig = frac["sigma"].values
        im = ax_s.imshow(sig, origin="lower", extent=ext, cmap="magma", vmin=0,
                         vmax=float(np.nanmax(sig)) if np.isfinite(sig).any() else 1.0)
        fig.colorbar(im, ax=ax_s, label="sigma x(6Li) (Poisson)")
        for p in table:
            ax_x.plot(p["x_um"], p["y_um"], "o", mfc="none", ms=9,
                      mec="red" if p.get("labelled") else "white")
    ax_x.set_title("particle search: x(6Li) = N6 / (N6 + N7)\nred: labelled (table)")
    ax_s.set_title("Poisson error of x(6Li)")
    for ax in (ax_x, ax_s):
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
    ax_t.set_axis_off()
    rows = []
    for k, p in enumerate(table[:18]):
        n6, n7 = float(p["n6"]), float(p["n7"])
        x6 = n6 / (n6 + n7) if n6 + n7 > 0 else float("nan")
        s6 = (x6 * (1 - x6) / (n6 + n7)) ** 0.5 if n6 + n7 > 0 else float("nan")
        rows.append([str(k), f"{p['x_um']:+.3f}", f"{p['y_um']:+.3f}", f"{n6:.0f}",
                     f"{n7:.0f}", f"{x6:.3f}", f"{s6:.3f}", f"{p['z']:.1f}",
                     "yes" if p.get("labelled") else "no"])
    if rows:
        tab = ax_t.table(cellText=rows, colLabels=["#", "x (um)", "y (um)", "N6", "N7",
                                                   "x(6Li)", "sigma", "z (sigma)",
                                                   "labelled"],
                         colWidths=[0.05, 0.12, 0.12, 0.11, 0.11, 0.11, 0.1, 0.12, 0.12],
                         loc="upper center", cellLoc="right")
        tab.auto_set_font_size(False)
        tab.set_fontsize(8)
        tab.scale(1.0, 1.15)
    else:
        ax_t.text(0.5, 0.5, "no particle segmented", ha="center")
    ax_t.set_title(f"particle table of the SIMS run ({len(table)} segmented, "
                   f"{sum(bool(p.get('labelled')) for p in table)} labelled"
                   f"{'; first 18' if len(table) > 18 else ''})")
    save(fig, "quantified.png")

    report["particles"] = {"segmented": len(table),
                           "labelled": sum(bool(p.get("labelled")) for p in table),
                           "table": table}
    report["figures"] = [str(f) for f in files]
    path = out / "report.json"
    path.write_text(json.dumps(_json_ready(report), indent=2, allow_nan=False))
    files.append(path)
    return files


__all__ = ["FULL", "QUICK", "DemoCannotStart", "DemoResult", "ReportFigures", "iocs_running", "read_back", "run_demo",
           "write_report"]
