"""Catalog backends: SQLite vs PostgreSQL under ``temsims serve``, and readers of a growing map.

Issue 12, item 5: the two benchmarks that compare storage backends.

**1. Ingest and queries, SQLite vs PostgreSQL** (``--runs`` 1000 runs of
``--events-per-run`` 100 events: 1e5 events). Two ``temsims serve`` subprocesses, one
over a new catalog directory (SQLite), one over a new database of a PostgreSQL 15 of
the benchmark's own (``tests/postgres_support.PostgresServer``: ``initdb`` into a
temporary directory, a loopback port, stopped by PID) with its arrays in a ``--data``
directory. Both are written through the session's client path,
``open_catalog(URI, api_key=write key).writer()`` (a ``BufferedWriter`` thread in
front of TiledWriter, default batches of 100 events), with runs shaped as our step
scans store them: three scalars and one 16-channel float32 spectrum per event, the
metadata contract's start keys. The runs go in ``--blocks`` blocks, alternating
which backend goes first (ABBA...), so the ratio of the two is measured under the same
load. A block's time runs from its first document to ``writer.flush()`` returning.

Then, with the read key (what an analyst has), the same queries on both backends,
alternated per repeat: ``cat[-1]``, ``cat[scan_id]``, ``cat[uid prefix]``,
``Key("sample") == ...`` (and ``len``), ``TimeRange`` (one block's window, ``len``),
``FullText`` (``len``), ``len(cat)``, and a ``Key`` search then ``.values()[:10]`` and
each run's start metadata. Median and p90 of ``--query-repeat`` calls each.

**2. Three concurrent readers of a growing map.** A writer process stores a
SIMS-map-shaped run (the shape of ``catalog_read_benchmark``: the start document's
``map`` block, one event per line, a line index and four (1, NX) int32 collector
lines) at the flyer's pace (pages of the lines acquired every ``--flush`` s at
``--dwell`` per pixel), through ``cat.writer()``. Three reader processes poll the run
back to back (``--reader-interval`` 0) with what the app's loaders do, a fresh
``cat.runs[uid]`` then ``temsims.app.loaders._read_tiled_run(run).maps(partial=True)``,
until they have read the whole map and its stop document. Reported: the readers' read
latencies (median, p90), the lines each saw over time, any error, and the writer's
pace, the map's wall time from start to stored (``writer.flush()`` after the stop)
and its thread's storage time, with readers and without (alternated), and the ratio.
On the embedded directory (``open_catalog(DIR)``: the directory's own server), and on
the two served catalogs of part 1 (which then hold ``--runs`` runs each).

The machine has 2 cores shared with other jobs: the load average is recorded at each
phase, and only ratios within one run mean anything. Everything binds 127.0.0.1; every
process started here is stopped by its PID.

Writes ``benchmarks/results/catalog_backends.json``.

Run: ``.venv/bin/python benchmarks/catalog_backends_benchmark.py [--runs 1000
--events-per-run 100] [--quick]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "catalog_backends.json"
SPECIES = ("6Li", "7Li", "12C", "16O")
SAMPLES = 20  #: distinct sample names: a Key search finds runs / SAMPLES runs
TAGS = 50  #: distinct FullText words in the runs' ``purpose``
SPECTRUM_CHANNELS = 16
BACKENDS = ("sqlite", "postgres")


# =========================================================================== helpers


def load_average() -> list[float]:
    """The 1, 5 and 15 min load averages, rounded (the machine is shared)."""
    return [round(x, 2) for x in os.getloadavg()]


def summary(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> dict[str, Any]:
    """Median, p90, min, max and count of ``values`` times ``scale``."""
    if not values:
        return {"n": 0}
    xs = sorted(v * scale for v in values)
    # Nearest-rank p90: with 20 calls, the 18th; no interpolation between calls.
    p90 = xs[min(len(xs) - 1, max(0, -(-9 * len(xs) // 10) - 1))]
    return {"median": round(statistics.median(xs), digits), "p90": round(p90, digits),
            "min": round(xs[0], digits), "max": round(xs[-1], digits), "n": len(xs)}


@dataclass
class Served:
    """A ``temsims serve`` subprocess, its output in a log file (a pipe could fill up
    with its access log over 1e5 events and stall it), stopped by its PID."""

    argv: list[str]
    log: Path
    env: Mapping[str, str] = field(default_factory=dict)
    stop_signal: int = signal.SIGINT
    proc: subprocess.Popen | None = None
    uri: str = ""
    write_key: str = ""
    read_key: str = ""
    ready_s: float = 0.0

    def start(self, timeout_s: float = 120.0) -> Served:
        env = {k: v for k, v in os.environ.items() if k != "TILED_API_KEY"}
        env.update(self.env)
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "temsims.app.cli", "serve", "--port", "0",
                 "--host", "127.0.0.1", *self.argv],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log.read_text()
            if "Ctrl-C" in text:
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"temsims serve exited {self.proc.returncode}:\n{text}")
            time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"temsims serve did not start in {timeout_s} s:\n{text}")

        def field_of(label: str) -> str:
            return next(line.split(label, 1)[1].split()[0] for line in text.splitlines()
                        if line.strip().startswith(label))

        self.uri = field_of("URI")
        self.write_key = Path(field_of("write key")).read_text().strip()
        self.read_key = Path(field_of("read key")).read_text().strip()
        self.ready_s = float(text.split("ready in ", 1)[1].split()[0])
        return self

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Signal the server by its PID and wait; SIGKILL if it does not stop."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_postgres() -> Any:
    """A PostgreSQL 15 of the benchmark's own, the tests' :class:`PostgresServer`."""
    sys.path.insert(0, str(REPO / "tests"))
    from postgres_support import PostgresServer, find_binaries

    bindir = find_binaries()
    if bindir is None:
        raise RuntimeError("PostgreSQL's initdb/pg_ctl/postgres not found "
                           "(Debian: apt-get install postgresql)")
    server = PostgresServer(bindir)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


def wait_for_directory_server(directory: Path, timeout_s: float = 60.0) -> None:
    """Wait for the embedded directory's server (a child of the user's catalog host,
    which other processes share: not ours to stop) to stop by itself, which it does
    ``SERVER_LINGER_S`` after its last client, before its directory is removed."""
    server_file = directory / "server.json"
    try:
        pid = int(json.loads(server_file.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    print(f"warning: the directory server {pid} of {directory} still runs", flush=True)


# =========================================================================== part 1: documents


def _step_run(scan_id: int, events: int, sample: str, tag: str) -> list[tuple[str, dict]]:
    """The documents of one step-scan-like run: start (the metadata contract's keys),
    one descriptor, ``events`` events of three scalars and a float32 spectrum, stop."""
    import event_model
    import numpy as np

    md = {"plan_name": "scan", "plan_args": {"num": events}, "scan_id": scan_id,
          "sample": sample, "specimen": "li2co3-particles", "operator": "benchmark",
          "mode": "TEM", "correlation_id": f"bench-{scan_id // 10}",
          "region": {"x_um": 0.0, "y_um": 0.0, "z_um": 0.0, "tilt_deg": 0.0, "fov_um": 2.0},
          "purpose": f"backend benchmark {tag}"}
    bundle = event_model.compose_run(metadata=md)
    keys = {"motor": {"source": "SIM:motor", "dtype": "number", "shape": [],
                      "dtype_numpy": "<f8"},
            "det": {"source": "SIM:det", "dtype": "number", "shape": [], "dtype_numpy": "<f8"},
            "counts": {"source": "SIM:counts", "dtype": "integer", "shape": [],
                       "dtype_numpy": "<i8"},
            "spectrum": {"source": "SIM:spectrum", "dtype": "array",
                         "shape": [SPECTRUM_CHANNELS], "dims": ["channel"],
                         "dtype_numpy": "<f4"}}
    desc = bundle.compose_descriptor(name="primary", data_keys=keys)
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    rng = np.random.default_rng(scan_id)
    spectra = rng.random((events, SPECTRUM_CHANNELS), dtype=np.float32)
    for i in range(events):
        data = {"motor": i / events, "det": float(spectra[i, 0]), "counts": i,
                "spectrum": spectra[i]}
        docs.append(("event", desc.compose_event(
            data=data, timestamps=dict.fromkeys(data, time.time()), seq_num=i + 1)))
    docs.append(("stop", bundle.compose_stop()))
    return docs


@dataclass
class Ingested:
    """What one backend was given: its runs' uids and start times, and each block's time."""

    uids: list[str] = field(default_factory=list)
    start_times: list[float] = field(default_factory=list)
    blocks: list[dict[str, Any]] = field(default_factory=list)


def ingest_block(writer: Any, first_scan_id: int, runs: int, events: int,
                 into: Ingested) -> None:
    """Write ``runs`` runs through ``writer`` and time them to ``writer.flush()``."""
    docs = [_step_run(first_scan_id + i, events, f"S-{(first_scan_id + i) % SAMPLES:03d}",
                      f"tag{(first_scan_id + i) % TAGS}") for i in range(runs)]
    errors_before = writer.stats.errors
    write_before = writer.stats.write_s
    load = load_average()
    t0 = time.perf_counter()
    for run in docs:
        for name, doc in run:
            writer(name, doc)
    if not writer.flush(timeout=3600):
        raise RuntimeError("the writer did not drain in an hour")
    elapsed = time.perf_counter() - t0
    into.uids += [run[0][1]["uid"] for run in docs]
    into.start_times += [run[0][1]["time"] for run in docs]
    into.blocks.append({"first_scan_id": first_scan_id, "runs": runs, "events": runs * events,
                        "s": round(elapsed, 3), "events_per_s": round(runs * events / elapsed, 1),
                        "writer_thread_s": round(writer.stats.write_s - write_before, 3),
                        "errors": writer.stats.errors - errors_before, "load": load})


# =========================================================================== part 1: queries


def query_cases(ingested: Ingested, rng: random.Random, tw: tuple[float, float]
                ) -> dict[str, Callable[[Any], Any]]:
    """The queries, each a function of the catalog returning a small result to check.

    The random choices (a run, a sample, a tag) are drawn once per repeat and used on
    both backends (by run index: each backend's own uid), so both answer the same question.
    """
    from bluesky_tiled_plugins.queries import FullText, Key, TimeRange

    i = rng.randrange(len(ingested.uids))
    sample = f"S-{rng.randrange(SAMPLES):03d}"
    tag = f"tag{rng.randrange(TAGS)}"
    scan_id = i + 1

    def uncached_len(cat: Any) -> int:
        # tiled's client keeps a container's length for 1 s (LENGTH_CACHE_TTL): forget
        # it, so that every call asks the server, as an analyst's first call does.
        cat.runs._cached_len = None  # noqa: SLF001
        return len(cat)

    def values10(cat: Any) -> list[str]:
        runs = cat.search(Key("sample") == sample).values()[:10]
        return [r.metadata["start"]["sample"] for r in runs]

    return {
        "cat[-1]": lambda cat: cat[-1].metadata["start"]["scan_id"],
        "cat[scan_id]": lambda cat: cat[scan_id].metadata["start"]["scan_id"],
        "cat[uid prefix]": lambda cat: cat[ingested.uids[i][:8]].metadata["start"]["scan_id"],
        "Key(sample)== + len": lambda cat: len(cat.search(Key("sample") == sample)),
        "TimeRange + len": lambda cat: len(cat.search(TimeRange(since=tw[0], until=tw[1]))),
        "FullText + len": lambda cat: len(cat.search(FullText(tag))),
        "len(cat)": uncached_len,
        "search .values()[:10] metadata": values10,
    }


def time_queries(cats: Mapping[str, Any], ingested: Mapping[str, Ingested], repeat: int,
                 seed: int = 1) -> dict[str, dict[str, Any]]:
    """Each query ``repeat`` times on each backend, alternating which goes first."""
    rng = random.Random(seed)
    times: dict[str, dict[str, list[float]]] = {b: {} for b in cats}
    errors: dict[str, dict[str, list[str]]] = {b: {} for b in cats}
    answers: dict[str, dict[str, Any]] = {b: {} for b in cats}
    for rep in range(repeat):
        state = rng.getstate()
        order = list(cats) if rep % 2 == 0 else list(reversed(cats))
        for backend in order:
            rng.setstate(state)  # the same draws for both backends
            ing = ingested[backend]
            # One block's window of start times: a TimeRange that finds ~runs/blocks runs.
            block = ing.blocks[len(ing.blocks) // 2]
            k0 = block["first_scan_id"] - 1
            tw = (ing.start_times[k0] - 1e-3, ing.start_times[k0 + block["runs"] - 1] + 1e-3)
            cat = cats[backend]
            for name, query in query_cases(ing, rng, tw).items():
                t0 = time.perf_counter()
                try:
                    answer = query(cat)
                except Exception as err:  # noqa: BLE001 - a backend's refusal is a result
                    errors[backend].setdefault(name, []).append(f"{type(err).__name__}: {err}"[:300])
                    continue
                times[backend].setdefault(name, []).append(time.perf_counter() - t0)
                answers[backend].setdefault(name, answer)
    out: dict[str, dict[str, Any]] = {}
    for backend in cats:
        out[backend] = {}
        for name in {**times[backend], **errors[backend]}:
            entry = {"ms": summary(times[backend].get(name, []), 1e3, 1)}
            if name in errors[backend]:
                entry["errors"] = len(errors[backend][name])
                entry["error"] = errors[backend][name][0]
            if name in answers[backend]:
                answer = answers[backend][name]
                entry["first_answer"] = answer if not isinstance(answer, list) else len(answer)
            out[backend][name] = entry
    return out


# =========================================================================== part 2: processes


def _map_documents(nx: int, ny: int, page: int) -> tuple[Any, Any, list[dict]]:
    """A SIMS map run as ``sims_map`` stores it (``catalog_read_benchmark``'s shape)."""
    import event_model
    import numpy as np

    from temsims.callbacks.maps import map_block

    rng = np.random.default_rng(0)
    md = {"plan_name": "sims_map", "mode": "SIMS", "sample": "backends-bench",
          "specimen": "li2co3-particles", "operator": "benchmark", "correlation_id": "bb",
          "detectors": ["imager"],
          "map": map_block(imager="imager", species=SPECIES, pixels=(nx, ny), fov_um=4.0,
                           dwell_s=1e-4, frames=1, centre_um=(0.0, 0.0))}
    bundle = event_model.compose_run(metadata=md)
    keys = {"imager_line": {"source": "SIM:line", "dtype": "integer", "shape": [],
                            "dtype_numpy": "<i8"}}
    for n, s in enumerate(SPECIES, start=1):
        keys[f"imager_{s}"] = {"source": f"PV:MS:COL{n}:MAP", "dtype": "array",
                               "shape": [1, nx], "dims": ["line", "x"], "dtype_numpy": "<i4",
                               "units": "counts"}
    desc = bundle.compose_descriptor(name="primary", data_keys=keys)
    pages = []
    for row0 in range(0, ny, page):
        events = []
        for row in range(row0, min(row0 + page, ny)):
            data: dict[str, Any] = {"imager_line": row}
            data.update({f"imager_{s}": rng.poisson(50, (1, nx)).astype(np.int32)
                         for s in SPECIES})
            events.append(desc.compose_event(data=data, timestamps=dict.fromkeys(data, time.time())))
        pages.append(event_model.pack_event_page(*events))
    return bundle, desc, pages


def _emit(obj: Mapping[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def map_writer_main(location: str, api_key: str, nx: int, ny: int, page: int,
                    period: float) -> None:
    """The writer process: open, say ready, wait for ``go``, write the map at the
    flyer's pace (page k at ``t0 + k * period``, so the pace itself does not drift),
    wait for it to be stored, report its times and the writer thread's stats."""
    from temsims.catalog import open_catalog

    cat = open_catalog(location, api_key=api_key or None)
    len(cat)  # resolve cat.runs (its imports) before the clock
    writer = cat.writer()
    bundle, desc, pages = _map_documents(nx, ny, page)
    _emit({"ready": True})
    sys.stdin.readline()
    t0 = time.time()
    writer("start", bundle.start_doc)
    _emit({"uid": bundle.start_doc["uid"], "t0": t0})
    writer("descriptor", desc.descriptor_doc)
    for k, p in enumerate(pages):
        with contextlib.suppress(ValueError):
            time.sleep(t0 + k * period - time.time())
        writer("event_page", p)
    t_last = time.time()
    writer("stop", bundle.compose_stop())
    stored = writer.flush(timeout=600)
    t_stored = time.time()
    stats = writer.stats
    _emit({"t0": t0, "t_last": t_last, "t_stored": t_stored, "stored": stored,
           "paced_s": t_last - t0, "stored_after_last_line_s": t_stored - t_last,
           "total_s": t_stored - t0, "writer_thread_s": stats.write_s,
           "errors": stats.errors})
    cat.close(timeout=120)


def map_reader_main(location: str, api_key: str, ny: int, interval: float,
                    timeout_s: float) -> None:
    """A reader process: open, import the loaders, say ready, read the uid, then read
    the growing map back to back until it has all ``ny`` lines and the stop document."""
    from temsims.app.loaders import _read_tiled_run
    from temsims.catalog import open_catalog

    cat = open_catalog(location, api_key=api_key or None)
    runs = cat.runs  # its imports before the clock
    _emit({"ready": True})
    uid = sys.stdin.readline().strip()
    reads: list[list[Any]] = []  # [t, latency_s, lines, status]
    errors: dict[str, int] = {}
    first_error: dict[str, str] = {}
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        t = time.time()
        t1 = time.perf_counter()
        try:
            run = runs[uid]
            data = _read_tiled_run(run)
            lines = len(data.streams.get("primary", {}).get("imager_line", ()))
            if lines:
                data.maps(partial=True)
            status = "complete" if data.stop is not None and lines == ny else "read"
        except KeyError:
            # Not visible yet (the start document not stored): a look-up, not a read.
            lines, status = 0, "absent"
        except Exception as err:  # noqa: BLE001 - counted and reported, the loop goes on
            key = type(err).__name__
            errors[key] = errors.get(key, 0) + 1
            first_error.setdefault(key, str(err)[:300])
            lines, status = -1, "error"
        reads.append([round(t, 4), round(time.perf_counter() - t1, 4), lines, status])
        if status == "complete":
            break
        if interval:
            time.sleep(interval)
    _emit({"reads": reads, "errors": errors, "first_error": first_error})
    cat.close(timeout=60)


class Child:
    """A worker process of this script (``_map_writer`` / ``_map_reader``), spoken to
    by lines of JSON, stopped by its PID if it is still running at the end."""

    def __init__(self, role: str, *args: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), role, *map(str, args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**{k: v for k, v in os.environ.items() if k != "TILED_API_KEY"},
                 "PYTHONUNBUFFERED": "1"})

    def read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(30)
            raise RuntimeError(f"{self.proc.args[2]} exited {self.proc.returncode}")
        return json.loads(line)

    def send(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def one_map(location: str, write_key: str, read_key: str, readers: int, nx: int, ny: int, page: int,
            period: float, interval: float) -> dict[str, Any]:
    """One map written while ``readers`` processes read it (0: alone)."""
    children: list[Child] = []
    try:
        writer = Child("_map_writer", location, write_key, nx, ny, page, period)
        children.append(writer)
        rs = [Child("_map_reader", location, read_key, ny, interval, 300) for _ in range(readers)]
        children += rs
        for c in children:
            c.read()  # ready: opened, imported
        load = load_average()
        writer.send("go")
        started = writer.read()
        for r in rs:
            r.send(started["uid"])
        result = writer.read()
        t0 = result["t0"]
        seen = [r.read() for r in rs]
        for c in children:
            c.proc.wait(120)
    finally:
        for c in children:
            c.stop()
    out: dict[str, Any] = {"readers": readers, "load": load, "stored": result["stored"],
                           "errors": result["errors"],
                           **{k: round(result[k], 3) for k in (
                               "paced_s", "stored_after_last_line_s", "total_s",
                               "writer_thread_s")}}
    if rs:
        out["reader"] = []
        for s in seen:
            ok = [r for r in s["reads"] if r[3] in ("read", "complete")]
            # The lines seen over time: (s since the start document, lines) where it changed.
            steps, last = [], None
            for t, _, lines, status in s["reads"]:
                if status in ("read", "complete") and lines != last:
                    steps.append([round(t - t0, 2), lines])
                    last = lines
            complete = [r[0] for r in s["reads"] if r[3] == "complete"]
            out["reader"].append({
                "reads": len(s["reads"]), "with_data": sum(1 for r in ok if r[2] > 0),
                "read_ms": summary([r[1] for r in ok], 1e3, 1),
                "lines_over_time": steps, "errors": s["errors"], "first_error": s["first_error"],
                "complete_after_last_line_s": (round(complete[0] - result["t_last"], 3)
                                               if complete else None)})
        every = [r[1] for s in seen for r in s["reads"] if r[3] in ("read", "complete")]
        out["read_ms_all"] = summary(every, 1e3, 1)
        out["_latencies_s"] = every  # pooled by concurrent_case, not saved
    return out


def concurrent_case(location: str, write_key: str, read_key: str,
                    args: argparse.Namespace) -> dict[str, Any]:
    """Maps alone and with three readers, alternated (A B B A ...), on one catalog: the
    writer with ``write_key``, the readers with ``read_key`` ("": the directory's own)."""
    alone, busy = [], []
    for rep in range(args.map_repeat):
        for readers in ((0, 3) if rep % 2 == 0 else (3, 0)):
            got = one_map(location, write_key, read_key, readers, args.nx, args.ny, args.page, args.period,
                          args.reader_interval)
            (busy if readers else alone).append(got)
            print(f"    {'3 readers' if readers else 'alone    '}: stored "
                  f"{got['stored_after_last_line_s']:.2f} s after the last line, total "
                  f"{got['total_s']:.2f} s, writer thread {got['writer_thread_s']:.2f} s"
                  + (f"; reads {got['read_ms_all'].get('median')} ms median, "
                     f"{got['read_ms_all'].get('p90')} ms p90" if readers else ""), flush=True)

    def med(cases: list[dict[str, Any]], key: str) -> float:
        return round(statistics.median(c[key] for c in cases), 3)

    pooled = [x for c in busy for x in c.pop("_latencies_s")]
    ratio = {k: round(med(busy, k) / med(alone, k), 2) if med(alone, k) else None
             for k in ("total_s", "stored_after_last_line_s", "writer_thread_s")}
    return {"alone": alone, "with_readers": busy,
            "median": {k: {"alone": med(alone, k), "with_readers": med(busy, k)}
                       for k in ("total_s", "stored_after_last_line_s", "writer_thread_s")},
            "ratio_with_over_alone": ratio,
            "read_ms": summary(pooled, 1e3, 1),
            "reader_errors": sum(sum(r["errors"].values()) for c in busy for r in c["reader"])}


# =========================================================================== main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("``", ""),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", type=int, default=1000, help="runs per backend")
    p.add_argument("--events-per-run", type=int, default=100, help="events per run")
    p.add_argument("--blocks", type=int, default=10,
                   help="blocks the runs are written in, alternating the backends")
    p.add_argument("--query-repeat", type=int, default=20, help="calls of each query")
    p.add_argument("--nx", type=int, default=256, help="map pixels per line")
    p.add_argument("--ny", type=int, default=256, help="map lines")
    p.add_argument("--dwell", type=float, default=1e-4, help="dwell per pixel (s)")
    p.add_argument("--flush", type=float, default=0.2,
                   help="seconds between collects (temsims.plans.sims.FLUSH_PERIOD_S)")
    p.add_argument("--map-repeat", type=int, default=2,
                   help="maps with and without readers per catalog (alternated)")
    p.add_argument("--reader-interval", type=float, default=0.0,
                   help="readers' pause between reads (s; 0: back to back)")
    p.add_argument("--skip-concurrent-served", action="store_true",
                   help="part 2 on the embedded directory only")
    p.add_argument("--quick", action="store_true",
                   help="40 runs of 100 events in 2 blocks, 5 query calls, a 64-line map "
                        "once per case (run_all's quick tier)")
    p.add_argument("--output", type=Path, default=RESULTS, help="JSON result")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.runs, args.blocks, args.query_repeat = 40, 2, 5
        args.nx, args.ny, args.map_repeat = 64, 64, 1
    if args.runs % args.blocks:
        raise SystemExit("--runs must be a multiple of --blocks")
    line_s = args.nx * args.dwell
    args.page = max(1, round(args.flush / line_s))
    args.period = args.page * line_s
    from temsims.catalog import open_catalog

    result: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "quick": args.quick,
        "runs": args.runs, "events_per_run": args.events_per_run,
        "events": args.runs * args.events_per_run, "blocks": args.blocks,
        "spectrum_channels": SPECTRUM_CHANNELS, "query_repeat": args.query_repeat,
        "nx": args.nx, "ny": args.ny, "species": list(SPECIES), "dwell_s": args.dwell,
        "page": args.page, "period_s": args.period, "map_repeat": args.map_repeat,
        "reader_interval_s": args.reader_interval, "load": {"start": load_average()}}
    servers: dict[str, Served] = {}
    cats: dict[str, Any] = {}
    postgres = None
    with tempfile.TemporaryDirectory(prefix="catalog-backends-") as tmp:
        root = Path(tmp)
        try:
            # ---------------------------------------------------------- servers
            postgres = start_postgres()
            database = f"bench_{uuid.uuid4().hex[:8]}"
            pg_uri = postgres.new_database(database).replace(f":{postgres.password}@", "@")
            servers["sqlite"] = Served([str(root / "sqlite-catalog")], root / "serve-sqlite.log",
                                       stop_signal=signal.SIGINT).start()
            servers["postgres"] = Served([pg_uri, "--data", str(root / "pg-data")],
                                         root / "serve-postgres.log",
                                         env={"PGPASSWORD": postgres.password},
                                         stop_signal=signal.SIGTERM).start()
            result["servers"] = {"postgres_start_s": round(postgres.start_s, 2),
                                 **{f"{b}_serve_ready_s": s.ready_s for b, s in servers.items()}}
            print(f"PostgreSQL up in {postgres.start_s:.1f} s; temsims serve ready in "
                  f"{servers['sqlite'].ready_s} s (SQLite), {servers['postgres'].ready_s} s "
                  "(PostgreSQL)", flush=True)

            # ---------------------------------------------------------- ingest
            writers_cat = {b: open_catalog(s.uri, api_key=s.write_key) for b, s in servers.items()}
            writers = {b: c.writer() for b, c in writers_cat.items()}
            ingested = {b: Ingested() for b in BACKENDS}
            per_block = args.runs // args.blocks
            print(f"ingest: {args.runs} runs x {args.events_per_run} events per backend, "
                  f"{args.blocks} blocks, alternated", flush=True)
            for k in range(args.blocks):
                for b in (BACKENDS if k % 2 == 0 else tuple(reversed(BACKENDS))):
                    ingest_block(writers[b], k * per_block + 1, per_block, args.events_per_run,
                                 ingested[b])
                    blk = ingested[b].blocks[-1]
                    print(f"  block {k + 1}/{args.blocks} {b:8s}: {blk['events_per_s']:8.0f} "
                          f"events/s ({blk['s']:.1f} s, load {blk['load'][0]})", flush=True)
            ingest: dict[str, Any] = {}
            for b in BACKENDS:
                blocks = ingested[b].blocks
                total_s = sum(x["s"] for x in blocks)
                ingest[b] = {"events_per_s": round(args.runs * args.events_per_run / total_s, 1),
                             "runs_per_s": round(args.runs / total_s, 2),
                             "s": round(total_s, 1),
                             "block_events_per_s": summary([x["events_per_s"] for x in blocks],
                                                           1.0, 1),
                             "errors": sum(x["errors"] for x in blocks), "blocks": blocks}
            ingest["ratio_postgres_over_sqlite"] = round(
                ingest["postgres"]["events_per_s"] / ingest["sqlite"]["events_per_s"], 3)
            # Block k of each backend ran back to back: their ratio shares the load of
            # that moment, which other jobs on the machine change from block to block.
            ingest["block_ratio_postgres_over_sqlite"] = summary(
                [p["events_per_s"] / s["events_per_s"] for p, s in
                 zip(ingested["postgres"].blocks, ingested["sqlite"].blocks, strict=True)],
                1.0, 3)
            result["ingest"] = ingest
            for c in writers_cat.values():
                c.close(timeout=600)
            result["load"]["after_ingest"] = load_average()

            # ---------------------------------------------------------- queries
            cats = {b: open_catalog(s.uri, api_key=s.read_key) for b, s in servers.items()}
            for c in cats.values():
                len(c)  # resolve cat.runs (imports) before timing
            result["queries"] = time_queries(cats, ingested, args.query_repeat)
            for c in cats.values():
                c.close()
            result["load"]["after_queries"] = load_average()
            print_part1(result)

            # ---------------------------------------------------------- concurrent readers
            cases = {"embedded_sqlite": (str(root / "embedded-catalog"), "", "")}
            if not args.skip_concurrent_served:
                cases.update({f"served_{b}": (s.uri, s.write_key, s.read_key)
                              for b, s in servers.items()})
            result["concurrent"] = {}
            for name, (location, wkey, rkey) in cases.items():
                print(f"concurrent readers, {name}: {args.ny} lines x {args.nx} px x "
                      f"{len(SPECIES)}, pages of {args.page} lines every {args.period:g} s",
                      flush=True)
                try:
                    result["concurrent"][name] = concurrent_case(location, wkey, rkey, args)
                except Exception as err:  # noqa: BLE001 - the other cases still run
                    result["concurrent"][name] = {"error": f"{type(err).__name__}: {err}"}
                    print(f"    failed: {err}", flush=True)
                result["load"][f"after_{name}"] = load_average()
        finally:
            wait_for_directory_server(root / "embedded-catalog")
            for c in cats.values():
                with contextlib.suppress(Exception):
                    c.close()
            for s in servers.values():
                s.stop()
            if postgres is not None:
                postgres.stop()
    result["load"]["end"] = load_average()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print_part2(result)
    print(f"written {args.output}")
    return 0


def print_part1(r: Mapping[str, Any]) -> None:
    ing = r["ingest"]
    print(f"\ningest, {r['events']} events in {r['runs']} runs per backend:")
    for b in BACKENDS:
        s = ing[b]["block_events_per_s"]
        print(f"  {b:8s} {ing[b]['events_per_s']:8.0f} events/s ({ing[b]['runs_per_s']:.1f} "
              f"runs/s; blocks {s['min']:.0f}-{s['max']:.0f}, median {s['median']:.0f}); "
              f"errors {ing[b]['errors']}")
    br = ing["block_ratio_postgres_over_sqlite"]
    print(f"  PostgreSQL / SQLite: {ing['ratio_postgres_over_sqlite']:.2f} overall; per block "
          f"pair median {br['median']:.2f} ({br['min']:.2f}-{br['max']:.2f})")
    print(f"\nquery latency (ms, median / p90 of {r['query_repeat']}, read key):")
    print(f"  {'query':34s} {'SQLite':>15s} {'PostgreSQL':>15s}")
    for name in r["queries"]["sqlite"]:
        cells = []
        for b in BACKENDS:
            e = r["queries"][b].get(name, {})
            ms = e.get("ms", {})
            cell = f"{ms['median']:.0f} / {ms['p90']:.0f}" if ms.get("n") else "-"
            if e.get("errors"):
                cell += f" ({e['errors']} err)"
            cells.append(cell)
        print(f"  {name:34s} {cells[0]:>15s} {cells[1]:>15s}")
    for b in BACKENDS:
        for name, e in r["queries"][b].items():
            if e.get("error"):
                print(f"  {b} {name}: {e['error']}")
    print(flush=True)


def print_part2(r: Mapping[str, Any]) -> None:
    print(f"\nthree readers of a {r['ny']}-line map being written:")
    for name, c in r.get("concurrent", {}).items():
        if "error" in c:
            print(f"  {name}: failed: {c['error']}")
            continue
        m, ratio = c["median"], c["ratio_with_over_alone"]
        reads = [x["read_ms"] for case in c["with_readers"] for x in case["reader"]]
        medians = [x["median"] for x in reads if x.get("n")]
        p90s = [x["p90"] for x in reads if x.get("n")]
        print(f"  {name}: map stored {m['total_s']['alone']:.2f} s alone, "
              f"{m['total_s']['with_readers']:.2f} s with readers (x{ratio['total_s']}); "
              f"after its last line {m['stored_after_last_line_s']['alone']:.2f} -> "
              f"{m['stored_after_last_line_s']['with_readers']:.2f} s; writer thread "
              f"{m['writer_thread_s']['alone']:.2f} -> {m['writer_thread_s']['with_readers']:.2f} s")
        if medians:
            print(f"    reader read ms: medians {min(medians):.0f}-{max(medians):.0f}, "
                  f"p90 {min(p90s):.0f}-{max(p90s):.0f}; errors {c['reader_errors']}")
        for case in c["with_readers"][:1]:
            for i, x in enumerate(case["reader"]):
                print(f"    reader {i + 1}: {x['reads']} reads, lines over time "
                      f"{x['lines_over_time']}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_map_writer":
        a = sys.argv[2:]
        map_writer_main(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), float(a[5]))
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "_map_reader":
        a = sys.argv[2:]
        map_reader_main(a[0], a[1], int(a[2]), float(a[3]), float(a[4]))
        sys.exit(0)
    sys.exit(main())
