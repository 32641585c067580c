"""Run every benchmark in ``benchmarks/`` and print one table of figures and targets.

Each script runs in its own interpreter (``sys.executable``), so one that crashes or
hangs leaves the others and the runner alone; its output goes to
``<results-dir>/<name>.log``. The runner then reads the JSON each script wrote and
puts every figure beside its anchor, the reference the same script measured in the
same run (the ``ophyd.sim`` step scan for the Channel Access one, the beam time for a
SIMS map, the RunEngine without the writer, ...), and beside its target
(:mod:`targets`, the one place targets are kept). It prints one plain-text table,
writes it to ``<results-dir>/summary.json`` with the date and the number of CPUs, and
exits 1 if a script failed or a target was missed.

Run: ``bash run.sh bench [--only NAME[,NAME]] [--quick] [--list]``, or
``.venv/bin/python benchmarks/run_all.py --help``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from targets import Target, target, targets_for

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
SUMMARY = "summary.json"
DEFAULT_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class Figure:
    """One figure read from a script's JSON, with the anchor it is compared with.

    Parameters
    ----------
    key
        Name of the figure for :func:`targets.target` (several rows may share one).
    label
        The figure in words, for the table.
    value, unit
        The figure.
    anchor, anchor_value
        The reference measured in the same run, in the same unit (None: no anchor).
    """

    key: str
    label: str
    value: float
    unit: str
    anchor: str = ""
    anchor_value: float | None = None


@dataclass
class Row:
    """A line of the table: a figure judged against its target, or a failed benchmark."""

    benchmark: str
    figure: str
    value: float | None
    unit: str
    anchor: str = ""
    anchor_value: float | None = None
    ratio: float | None = None
    target: Target | None = None
    met: bool | None = None
    failed: bool = False
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The row for ``summary.json``."""
        t = self.target
        return {
            "benchmark": self.benchmark, "figure": self.figure,
            "value": "failed" if self.failed else self.value, "unit": self.unit,
            "anchor": self.anchor or None, "anchor_value": self.anchor_value,
            "ratio": self.ratio, "target": t.describe() if t else None,
            "target_limit": t.limit if t else None, "target_on": t.on if t else None,
            "target_source": t.source if t else None,
            "met": None if self.met is None else ("yes" if self.met else "no"),
            "note": self.note or None,
        }


# ----------------------------------------------------------------- figures per script


def step_scan_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``step_scan_overhead.json``: the CA step scan beside the ``ophyd.sim`` one."""
    return [Figure("ca_step_scan", f"CA step scan per point ({r['points']} pts)",
                   r["ca_motor_ms_per_point"], "ms", "ophyd.sim scan",
                   r["sim_motor_ms_per_point"])]


def sims_map_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``sims_map.json``: the map's wall time beside its beam time, and the
    spectrometer's peak memory."""
    # median_high: the run the script's own ratio_median comes from.
    wall = statistics.median_high(r["wall_time_s"])
    return [
        Figure("map_wall", f"SIMS map {r['nx']}x{r['ny']}x4, {r['dwell_s'] * 1e6:g} us dwell",
               wall, "s", "beam time", r["beam_time_s"]),
        Figure("peak_rss", "instrument process peak RSS", r["spectrometer_peak_rss_mb"], "MB"),
    ]


def map_path_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``map_path.json``: the sims_map plan's wall time beside the map's beam time, and
    how long after the last line's document the run was stored."""
    size = f"{r['nx']}x{r['ny']}, {r['dwell_s'] * 1e6:g} us"
    return [
        Figure("plan_wall", f"sims_map plan {size}", r["plan_wall_median_s"], "s",
               "beam time", r["beam_time_s"]),
        Figure("stored_after", "run stored after its last line", r["stored_after_median_s"],
               "s"),
    ]


def catalog_read_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``catalog_read.json``: a map's visibility from another process after its last
    line, its read-back there, and that process's open of the catalog."""
    size = f"{r['nx']}x{r['ny']}x{len(r['species'])}"
    return [
        Figure("read_map", f"read a {size} map back", r["read_map_s_median"], "s"),
        Figure("visible_after", f"{size} map visible after its last line",
               r["visible_after_last_line_s_median"], "s"),
        Figure("open", "open_catalog(DIR), fresh process", r["open_s_median"], "s"),
    ]


_RUN_KINDS = {"scalar": "scalars", "map_line": "map lines", "image": "512^2 images"}


def catalog_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``catalog_cost.json``: per event, the process writer (what the session uses)
    beside the stock TiledWriter called directly, and the RunEngine with it beside
    the RunEngine without; the longest the RunEngine waited on storage."""
    cases: dict[tuple[str, str], Mapping[str, Any]] = {}
    for case in r["cases"]:
        # The first case of a kind and storage has the default batch size.
        cases.setdefault((case["kind"], case["storage"]), case)
    figures = []
    for kind, words in _RUN_KINDS.items():
        proc, direct = cases.get((kind, "process")), cases.get((kind, "direct"))
        if proc is None:
            continue
        # A result from before the direct case was measured has no anchor.
        figures.append(Figure("writer_call", f"writer call, {words}", proc["call_ms"],
                              "ms/event", "TiledWriter direct" if direct else "",
                              direct["call_ms"] if direct else None))
        figures.append(Figure("re_wall", f"RE with writer, {words}",
                              proc["re_with_writer_ms_per_event"], "ms/event",
                              "RE without", proc["re_bare_ms_per_event"]))
    buffered = [c["blocked_s"] for c in r["cases"] if c["storage"] != "direct"]
    figures.append(Figure("blocked", "RE blocked on storage (max)", max(buffered), "s"))
    return figures


def analysis_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``analysis_benchmark.json``: fusion and registration (medians). Its
    quantification entry is left to ``quantification_benchmark``, which measures the
    same thing as a benchmark of its own."""
    e = r["entries"]
    scene = f"{r['tem_size']}^2 TEM + {r['map_size']}^2 map"
    figures = []
    for name, key, words in (("fuse_ihs", "fusion", "IHS fusion"),
                             ("fuse_laplacian", "fusion", "Laplacian fusion"),
                             ("register", "registration", "registration")):
        if name in e and "median_s" in e[name]:
            figures.append(Figure(key, f"{words}, {scene}", e[name]["median_s"], "s"))
    return figures


def twin_render_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``twin_render.json``: the twin's frame with the probe halo beside the frame
    without it (best of the repeats each)."""
    return [Figure("halo_frame", f"twin frame {r['n']}^2 x 4 with the halo",
                   r["with_halo_s"], "s", "without the halo", r["without_halo_s"])]


def frame_prep_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``frame_prep.json``: the simulator's frame set-up (prepare + sputter, CPU s, best
    of the repeats) beside the baseline revision's, per session (decision 0048)."""
    return [Figure(f"frame_prep_{name}", f"frame set-up, {name.replace('_', ' ')} (CPU)",
                   s["new_s"], "s", f"baseline {r['baseline']}", s["old_s"])
            for name, s in r["sessions"].items()]


def registration_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``registration.json``: the registration's error (raster model, the default) per
    calibration-error setting (median and 90th percentile over the seeds, SIMS px),
    beside the translation-only refinement's on the same scenes (decision 0029)."""
    figures = []
    for name, setting in r["settings"].items():
        s = setting["summary"]
        words = f"{name}, {s['raster']['n']} seeds"
        figures.append(Figure("registration_error", f"error median, {words}",
                              s["raster"]["median"], "SIMS px", "translation only",
                              s["translation"]["median"]))
        figures.append(Figure("registration_error_p90", f"error p90, {words}",
                              s["raster"]["p90"], "SIMS px", "translation only",
                              s["translation"]["p90"]))
    return figures


def quantification_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``quantification.json``: ``quantify_map`` on the whole map (best of the runs), and
    the accuracy over fresh seed pairs (90th percentile and median of the worst error
    over 0.1-10 at.%) per geometry."""
    ny, nx = r["map_shape"]
    runs = len(r["quantify_map_s"])
    figures = [Figure("quantify_map", f"quantify_map {ny}x{nx} (best of {runs})",
                      r["quantify_map_best_s"], "s")]
    acc = r.get("accuracy")
    if acc:
        for name, g in acc["geometries"].items():
            figures.append(Figure("worst_p90", f"worst error 0.1-10 at.%, p90 of {acc['pairs']} "
                                  f"pairs, {name} geometry", g["worst_p90"], "", "median",
                                  g["worst_median"]))
    return figures


def particles_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``particles.json``: labelled particles per particle by centroid, per map size."""
    n = len(r["seeds"])
    figures = []
    for g in r["sizes"].values():
        px = "x".join(str(v) for v in g["pixels"])
        figures.append(Figure("miss_rate", f"labelled missed, {px} map, {n} seeds",
                              1.0 - g["recall"], ""))
        figures.append(Figure("false_rate", f"labelled false, {px} map, {n} seeds",
                              1.0 - g["precision"], ""))
    return figures


def catalog_backends_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``catalog_backends.json``: PostgreSQL's ingest and query medians beside SQLite's
    (same run, alternated); three readers of a growing map: their read latency, and
    the map's time to stored with them beside without."""
    ing, q = r["ingest"], r["queries"]
    figures = [Figure("ingest", f"ingest {r['events']:g} events / {r['runs']} runs, PostgreSQL",
                      ing["postgres"]["events_per_s"], "events/s", "SQLite",
                      ing["sqlite"]["events_per_s"])]
    for name, e in q["postgres"].items():
        if e["ms"].get("n") and q["sqlite"].get(name, {}).get("ms", {}).get("n"):
            figures.append(Figure("query", f"{name}, PostgreSQL", e["ms"]["median"], "ms",
                                  "SQLite", q["sqlite"][name]["ms"]["median"]))
    for case, c in r.get("concurrent", {}).items():
        if "error" not in c:
            figures.append(Figure("readers_read", f"3 readers of a {r['ny']}-line map, {case}",
                                  c["read_ms"]["median"], "ms"))
            t = c["median"]["total_s"]
            figures.append(Figure("writer_with_readers", f"map stored with 3 readers, {case}",
                                  t["with_readers"], "s", "alone", t["alone"]))
    return figures


def zmq_stream_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``zmq_stream.json``: documents/s through the 0MQ proxy, and a map page's latency
    to ``temsims view`` (received, and the views done with it)."""
    lines = f"{r['nx']}-px x{len(r['species'])} map lines"
    return [
        Figure("docs_per_s", "docs/s through the proxy, scalar events",
               r["scalar_docs_per_s_median"], "docs/s"),
        Figure("docs_per_s", f"docs/s through the proxy, {lines}",
               r["map_line_docs_per_s_median"], "docs/s"),
        Figure("page_latency", "map page -> viewer's views done (median)",
               r["latency_handled_ms_median"], "ms"),
        Figure("page_latency_max", "map page -> viewer's views done (max)",
               r["latency_handled_ms_max"], "ms"),
    ]


def interlock_fuzz_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``interlock_fuzz.json``: random steps against the IOCs and interlock violations."""
    return [Figure("steps", "random steps (tilts, lens, bias, beam, rasters, restarts)",
                   r["steps"], "steps"),
            Figure("violations", "interlock invariant violations", r["violations"], "count"),
            Figure("steps_per_s", "steps per second", r["steps_per_s"], "steps/s")]


def fault_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``fault.json``: fault scenarios repeated (dead/hung parts, an arc): runs that
    failed, lines lost or duplicated (target 0), detection and resumption medians."""
    figures = [Figure("fault_failures", "fault scenario runs that failed",
                      r["failures_total"], "runs"),
               Figure("fault_lost", "lines/tiles lost over all fault runs", r["lost_total"],
                      "lines"),
               Figure("fault_duplicated", "lines/tiles duplicated over all fault runs",
                      r["duplicated_total"], "lines")]
    for name, s in r["scenarios"].items():
        for key, words in (("detect_s", "detected"), ("resume_s", "resumed after")):
            if s.get(key):
                figures.append(Figure(f"fault_{key}", f"{name}: {words} (median, "
                                      f"{s[key]['n']} runs)", s[key]["median"], "s"))
    return figures


def queue_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``queue.json``: the queue server's environment_open, queue_start -> first event,
    and a queued correlative_tem_sims against the same plan in a session."""
    return [
        Figure("environment_open", "environment_open (first)", r["environment_open_s"], "s"),
        Figure("environment_open", "environment_open (again)", r["environment_reopen_s"], "s"),
        Figure("first_event", "queue_start -> first event (median)",
               r["first_event_s"]["median"], "s"),
        Figure("queued_plan", "correlative_tem_sims queued, queue_start -> idle (median)",
               r["queued_client_s"]["median"], "s", "in a session",
               r["in_session_s"]["median"]),
    ]


def cathode_case_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``cathode_case.json``: the cathode case against the twin's truth over seeds."""
    n = len(r["seeds"])
    return [
        Figure("decay_recovered", f"V decay length within its 95 % interval ({n} seeds)",
               100 * r["decay_recovered_fraction"], "% seeds"),
        Figure("level_recovered", f"V level in LiPON within its 95 % interval ({n} seeds)",
               100 * r["level_recovered_fraction"], "% seeds"),
        Figure("interfaces", "interfaces SIMS vs TEM within one SIMS pixel",
               100 * r["interfaces_within_pixel_fraction"], "% seeds"),
        Figure("max_offset", "max |SIMS - TEM| interface position",
               r["max_abs_sims_minus_tem_nm"], "nm", "SIMS pixel", r["pixel_nm"]),
        Figure("wall", "case wall time (mean)", r["wall_s"].get("mean"), "s"),
    ]


def solar_cell_case_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``solar_cell_case.json``: the solar-cell case against the twin's truth over seeds
    (Na boundary/interior ratio, target within 20 %; Ga/(In+Ga) per grain with the
    implanted Ga separated, beside the error with it left in)."""
    n = len(r["seeds"])
    na, ga = r["na_abs_rel_error"], r["ga_abs_error_median"]
    return [
        Figure("na_within_20pct", f"Na band/interior within 20 % of the truth ({n} seeds)",
               100 * r["na_within_20pct_fraction"], "% seeds"),
        Figure("na_error", "Na band/interior |error| (median over seeds)",
               None if na.get("median") is None else 100 * na["median"], "%", "max",
               None if na.get("max") is None else 100 * na["max"]),
        Figure("ga_error", "Ga/(In+Ga) |error| per grain (median of the seeds' medians)",
               ga.get("median"), "", "implant left in",
               r["ga_naive_error_median"].get("median")),
        Figure("ga_within_u95", "Ga/(In+Ga) grains within their 95 % bound (mean)",
               None if r["ga_within_u95"].get("mean") is None
               else 100 * r["ga_within_u95"]["mean"], "% grains"),
        Figure("wall", "case wall time (median)", r["wall_s"].get("median"), "s"),
    ]


def quantification_case_figures(r: Mapping[str, Any]) -> list[Figure]:
    """``quantification_case.json``: the quantification case against the couple's truth
    over seeds (worst error over 0.1-10 at.%: p90 beside the median)."""
    n = len(r["seeds"])
    w, c = r["worst"], r["calibration_worst"]
    return [
        Figure("worst_p90", f"quantified map, worst error 0.1-10 at.%, p90 of {n} seeds",
               w.get("p90"), "", "median", w.get("median")),
        Figure("calibration_p90", f"calibration map at the EDX points, same, p90 of {n} seeds",
               c.get("p90"), "", "median", c.get("median")),
        Figure("wall", "case wall time (median)", r["wall_s"].get("median"), "s"),
    ]


@dataclass(frozen=True)
class Benchmark:
    """A script in ``benchmarks/`` and how the runner drives and reads it.

    Parameters
    ----------
    name
        Script stem.
    result
        File name of the JSON it writes.
    output_option
        Its option that sets the JSON path.
    quick
        Its arguments for ``--quick`` (smaller sizes, fewer repeats).
    figures
        Reads the table's figures from its JSON.
    """

    name: str
    result: str
    output_option: str
    quick: tuple[str, ...]
    figures: Callable[[Mapping[str, Any]], list[Figure]]

    @property
    def script(self) -> Path:
        return HERE / f"{self.name}.py"


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("step_scan_overhead", "step_scan_overhead.json", "--output",
              ("--points", "50", "--repeat", "1"), step_scan_figures),
    Benchmark("sims_map_benchmark", "sims_map.json", "--output",
              ("--nx", "256", "--ny", "256", "--repeat", "1"), sims_map_figures),
    Benchmark("map_path_benchmark", "map_path.json", "--output",
              ("--nx", "64", "--ny", "64", "--repeat", "1"), map_path_figures),
    Benchmark("catalog_cost", "catalog_cost.json", "--out",
              ("--events", "500", "--lines", "64", "--images", "10", "--repeat", "1"),
              catalog_figures),
    Benchmark("catalog_read_benchmark", "catalog_read.json", "--output",
              ("--nx", "128", "--ny", "128", "--repeat", "1"), catalog_read_figures),
    Benchmark("catalog_backends_benchmark", "catalog_backends.json", "--output", ("--quick",),
              catalog_backends_figures),
    Benchmark("analysis_benchmark", "analysis_benchmark.json", "--output",
              ("--tem", "2048", "--map", "256", "--repeat", "2"), analysis_figures),
    Benchmark("twin_render_benchmark", "twin_render.json", "--output", ("--repeat", "2"),
              twin_render_figures),
    Benchmark("frame_prep_benchmark", "frame_prep.json", "--output", ("--repeat", "1"),
              frame_prep_figures),
    Benchmark("registration_benchmark", "registration.json", "--output", ("--quick",),
              registration_figures),
    Benchmark("quantification_benchmark", "quantification.json", "--output",
              ("--n", "256", "--repeat", "3", "--pairs", "20"), quantification_figures),
    Benchmark("particles_benchmark", "particles.json", "--output", ("--seeds", "10"),
              particles_figures),
    Benchmark("queue_benchmark", "queue.json", "--output", ("--repeat", "1"), queue_figures),
    Benchmark("zmq_stream_benchmark", "zmq_stream.json", "--output",
              ("--events", "300", "--ny", "64", "--repeat", "1"), zmq_stream_figures),
    Benchmark("interlock_fuzz_benchmark", "interlock_fuzz.json", "--output",
              ("--steps", "1000"), interlock_fuzz_figures),
    Benchmark("fault_benchmark", "fault.json", "--output", ("--repeat", "1"),
              fault_figures),
    Benchmark("cathode_case_benchmark", "cathode_case.json", "--output",
              ("--seeds", "3", "--quick"), cathode_case_figures),
    Benchmark("solar_cell_case_benchmark", "solar_cell_case.json", "--output",
              ("--seeds", "3", "--quick"), solar_cell_case_figures),
    Benchmark("quantification_case_benchmark", "quantification_case.json", "--output",
              ("--seeds", "3", "--quick"), quantification_case_figures),
)


# ----------------------------------------------------------------- running


@dataclass
class RunStatus:
    """How one script's run went."""

    name: str
    log: Path
    exit_code: int | None = None  #: None: stopped by the runner (timeout)
    seconds: float = 0.0
    wrote_result: bool = False
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "log": str(self.log), "exit_code": self.exit_code,
                "seconds": round(self.seconds, 1), "wrote_result": self.wrote_result,
                "error": self.error or None}


def _stop_group(proc: subprocess.Popen, first: int = signal.SIGTERM,
                grace_s: float = 10.0) -> bool:
    """Signal the process group the runner started for a script (the script, which
    leads it, and any IOC processes it started), then kill what is left after
    ``grace_s``. True if the group still had processes."""
    pgid = proc.pid
    try:
        os.killpg(pgid, first)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # an unreaped leader would keep the group alive
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def run_script(bench: Benchmark, results_dir: Path, *, quick: bool, timeout_s: float) -> RunStatus:
    """Run one benchmark script to completion, its output into its log file.

    Parameters
    ----------
    bench
        The script.
    results_dir
        Where it writes its JSON (through its output option) and its log.
    quick
        Pass it its ``--quick`` arguments.
    timeout_s
        Stop it, and the processes it started, after this long.

    Returns
    -------
    RunStatus
        Its exit status, duration, whether it wrote its result, what went wrong.
    """
    result = results_dir / bench.result
    log = results_dir / f"{bench.name}.log"
    # Compared after the run rather than with the start time: a coarse file-system
    # clock could date a result written in the first second before the start.
    before = _mtime_ns(result)
    cmd = [sys.executable, str(bench.script), bench.output_option, str(result),
           *(bench.quick if quick else ())]
    status = RunStatus(bench.name, log)
    # Unbuffered, so a log cut short by a crash or timeout still shows how far it got.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        # A session of its own: a timeout or Ctrl-C stops the script and the IOCs it
        # started, and nothing else.
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=REPO, env=env,
                                start_new_session=True)
        try:
            status.exit_code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            proc.wait()
            status.error = f"stopped after {timeout_s:g} s (--timeout)"
        except KeyboardInterrupt:
            _stop_group(proc, signal.SIGINT)
            proc.wait()
            raise
        # A script that crashed before stopping its IOCs leaves them in its group.
        if status.exit_code is not None and _stop_group(proc, grace_s=5.0):
            fh.write("run_all: stopped processes the script left running\n")
    status.seconds = time.time() - t0
    # A result left from a previous run is never shown as this one's.
    after = _mtime_ns(result)
    status.wrote_result = after is not None and after != before
    if status.exit_code not in (0, None) and not status.error:
        status.error = f"exit status {status.exit_code}"
    if not status.wrote_result and not status.error:
        status.error = f"exited 0 without writing {result.name}"
    return status


# ----------------------------------------------------------------- the table


def failed_rows(bench: Benchmark, why: str) -> list[Row]:
    """Rows of a benchmark without a result: one per target (or one if it has none)."""
    targets = targets_for(bench.name)
    if not targets:
        return [Row(bench.name, "(all figures)", None, "", failed=True, met=False, note=why)]
    return [Row(bench.name, t.what, None, t.unit, target=t, failed=True, met=False, note=why)
            for t in targets]


def judge(bench: str, result: Mapping[str, Any], figures: Sequence[Figure]) -> list[Row]:
    """Rows of the table: each figure, its ratio to its anchor, its target and whether
    it met it (None: no target, or measured where the target does not apply)."""
    rows = []
    for f in figures:
        ratio = None
        if f.anchor_value:
            ratio = f.value / f.anchor_value
        t = target(bench, f.key)
        if t is not None and t.on == "value" and t.unit != f.unit:
            raise ValueError(f"{bench}/{f.key}: target in {t.unit!r}, figure in {f.unit!r}")
        met, note = None, ""
        if t is not None:
            if t.applies_to(result):
                met = t.met(f.value, ratio)
            else:
                at = ", ".join(f"{k}={v}" for k, v in t.at.items())
                note = f"not judged: the target is stated at {at}"
        rows.append(Row(bench, f.label, f.value, f.unit, f.anchor, f.anchor_value, ratio, t,
                        met, note=note))
    return rows


def rows_of(bench: Benchmark, results_dir: Path, status: RunStatus | None) -> list[Row]:
    """The table's rows for one benchmark, from its JSON in ``results_dir``.

    ``status`` None: the script was not run now (``--table-only``) and whatever
    result is there is read."""
    path = results_dir / bench.result
    if status is not None and not status.wrote_result:
        return failed_rows(bench, f"{status.error}; log: {status.log}")
    if not path.exists():
        return failed_rows(bench, f"no result file {path}")
    try:
        result = json.loads(path.read_text())
        rows = judge(bench.name, result, bench.figures(result))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        return failed_rows(bench, f"unreadable result {path}: {err!r}")
    if status is not None and status.exit_code != 0:
        for row in rows:
            row.note = "; ".join(filter(None, [row.note, f"{status.error} after writing its "
                                                          f"result; log: {status.log}"]))
    return rows


def fmt(value: float | None) -> str:
    """A figure with about three significant digits, never in exponent form for the
    sizes the benchmarks produce."""
    if value is None:
        return "-"
    a = abs(value)
    if a == 0:
        return "0"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


COLUMNS = ("benchmark", "figure", "value", "unit", "anchor", "ratio", "target", "met")


def table_cells(row: Row) -> list[str]:
    """The row as the table's text cells, in the order of :data:`COLUMNS`."""
    anchor = f"{row.anchor} {fmt(row.anchor_value)}" if row.anchor else "-"
    return [
        row.benchmark, row.figure, "failed" if row.failed else fmt(row.value), row.unit or "-",
        anchor, "-" if row.ratio is None else fmt(row.ratio) + "x",
        row.target.describe() if row.target else "-",
        "-" if row.met is None else ("yes" if row.met else "no"),
    ]


def format_table(rows: Sequence[Row]) -> str:
    """The rows as one plain-text table (numbers right-aligned), notes below it."""
    cells = [list(COLUMNS)] + [table_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    right = {"value", "ratio"}
    lines = []
    for n, c in enumerate(cells):
        parts = [c[i].rjust(w) if COLUMNS[i] in right and n else c[i].ljust(w)
                 for i, w in enumerate(widths)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = format_notes(rows)
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def format_notes(rows: Sequence[Row]) -> list[str]:
    """One line per benchmark and note; the figures are named only when the note is
    not about all of the benchmark's rows (a failed script's note is about all)."""
    figures: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        if r.note:
            figures.setdefault((r.benchmark, r.note), []).append(r.figure)
    lines = []
    for (bench, note), names in figures.items():
        if len(names) == sum(r.benchmark == bench for r in rows):
            lines.append(f"  {bench}: {note}")
        else:
            lines.append(f"  {bench}, {'; '.join(names)}: {note}")
    return lines


def host_nproc() -> int:
    """CPUs this process may run on (what ``nproc`` prints)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def written_at(path: Path) -> str | None:
    """When a result file was last written (local time, ISO 8601), None if absent."""
    if not path.exists():
        return None
    when = datetime.datetime.fromtimestamp(path.stat().st_mtime).astimezone()
    return when.isoformat(timespec="seconds")


def write_summary(path: Path, rows: Sequence[Row], statuses: Sequence[RunStatus],
                  results: Mapping[str, str | None], *, quick: bool, ran: bool,
                  date: str) -> None:
    """``summary.json``: the date, the host's CPUs, how each script ran, when each
    result was written (with ``--table-only``, the measurements' own dates), every row."""
    summary = {
        "date": date,
        "host": {"nproc": host_nproc(), "python": platform.python_version(),
                 "platform": platform.platform()},
        "quick": quick,
        "ran_scripts": ran,
        "columns": list(COLUMNS),
        "benchmarks": [s.as_dict() for s in statuses],
        "results_written": dict(results),
        "rows": [r.as_dict() for r in rows],
        "failed": sorted({r.benchmark for r in rows if r.failed}
                         | {s.name for s in statuses if s.exit_code != 0}),
        "missed": [f"{r.benchmark}: {r.figure}" for r in rows if r.met is False and not r.failed],
    }
    summary["ok"] = not summary["failed"] and not summary["missed"]
    path.write_text(json.dumps(summary, indent=2) + "\n")


# ----------------------------------------------------------------- command line


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, every option with its default."""


def _parser() -> argparse.ArgumentParser:
    names = ", ".join(b.name for b in BENCHMARKS)
    parser = argparse.ArgumentParser(
        prog="run_all.py",
        formatter_class=_HelpFormatter,
        description=(
            "Run every benchmark script in benchmarks/, each in its own Python process\n"
            "(output in <results-dir>/<name>.log), then print one table: each figure\n"
            "beside its anchor measured in the same run, the ratio between them, the\n"
            "target (benchmarks/targets.py) and whether it was met. The table is also\n"
            "written to <results-dir>/summary.json with the date and the host's CPUs.\n"
            "Exit status 1 if a script failed or a target was missed."),
        epilog=f"benchmarks: {names}\n\nfrom the repository root: bash run.sh bench [options]",
    )
    parser.add_argument("--only", metavar="NAME[,NAME]", default="all",
                        help="run and tabulate only these benchmarks (see --list)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and fewer repeats (a smoke run); targets stated "
                             "for a size are then shown but not judged")
    parser.add_argument("--list", action="store_true",
                        help="list the benchmarks, their --quick arguments and targets, and exit")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, metavar="DIR",
                        help="where the scripts write their JSON and logs, and summary.json")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: build the table from the JSON already in DIR")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help="stop a script (and the processes it started) after this long")
    return parser


def select(only: str, parser: argparse.ArgumentParser) -> list[Benchmark]:
    """The benchmarks named in ``--only`` (stems, ``.py`` allowed), in the runner's order."""
    if only == "all":
        return list(BENCHMARKS)
    wanted = {n.strip().removesuffix(".py") for n in only.split(",") if n.strip()}
    known = {b.name for b in BENCHMARKS}
    if unknown := wanted - known:
        parser.error(f"--only: unknown benchmark(s) {', '.join(sorted(unknown))}; "
                     f"known: {', '.join(b.name for b in BENCHMARKS)}")
    return [b for b in BENCHMARKS if b.name in wanted]


def list_benchmarks(benchmarks: Sequence[Benchmark]) -> str:
    """The ``--list`` text."""
    lines = []
    for b in benchmarks:
        lines.append(f"{b.name}  ({b.script.name} -> {b.result})")
        lines.append(f"    --quick: {' '.join(b.quick)}")
        for t in targets_for(b.name):
            at = f" at {', '.join(f'{k}={v}' for k, v in t.at.items())}" if t.at else ""
            what = "ratio to anchor" if t.on == "ratio" else "value"
            lines.append(f"    target: {t.what}, {what} {t.describe()}{at}  [{t.source}]")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks, print and write the table; 1 if anything failed
    or missed its target."""
    parser = _parser()
    args = parser.parse_args(argv)
    benchmarks = select(args.only, parser)
    if args.list:
        print(list_benchmarks(benchmarks))
        return 0
    results_dir = args.results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")

    statuses: list[RunStatus] = []
    if not args.table_only:
        for i, bench in enumerate(benchmarks, 1):
            print(f"[{i}/{len(benchmarks)}] {bench.name} ...", end=" ", flush=True)
            status = run_script(bench, results_dir, quick=args.quick, timeout_s=args.timeout)
            statuses.append(status)
            if status.exit_code == 0 and status.wrote_result:
                print(f"ok ({status.seconds:.0f} s)")
            else:
                print(f"FAILED: {status.error} ({status.seconds:.0f} s); log: {status.log}")
    by_name = {s.name: s for s in statuses}
    rows = [row for b in benchmarks for row in rows_of(b, results_dir, by_name.get(b.name))]

    results = {b.name: written_at(results_dir / b.result) for b in benchmarks}
    if args.table_only:
        dates = sorted(d for d in results.values() if d)
        span = f"{dates[0]} to {dates[-1]}" if dates else "none"
        source = f"results in {results_dir}, written {span}"
    else:
        source = "this run" + (", --quick" if args.quick else "")
    print(f"\nbenchmarks, {date}, {host_nproc()} CPUs ({source}):\n")
    print(format_table(rows))
    summary = results_dir / SUMMARY
    write_summary(summary, rows, statuses, results, quick=args.quick,
                  ran=not args.table_only, date=date)
    print(f"\nwritten {summary}")

    failed = [s for s in statuses if s.exit_code != 0 or not s.wrote_result]
    unreadable = sorted({r.benchmark for r in rows if r.failed} - {s.name for s in failed})
    missed = [r for r in rows if r.met is False and not r.failed]
    for s in failed:
        print(f"FAILED: {s.name}: {s.error}; log: {s.log}")
    for name in unreadable:
        print(f"FAILED: {name}: no usable result in {results_dir}")
    for r in missed:
        measured = fmt(r.ratio) + "x" if r.target.on == "ratio" else f"{fmt(r.value)} {r.unit}"
        print(f"MISSED: {r.benchmark}, {r.figure}: {measured}, target {r.target.describe()}")
    if failed or unreadable or missed:
        return 1
    judged = sum(r.met is not None for r in rows)
    print(f"all {judged} judged targets met" if judged else "no target judged (see notes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
