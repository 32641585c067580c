"""Benchmark: what the catalog costs the RunEngine, and how long storage lags behind.

For three kinds of run (small scalar events; SIMS map lines, 4 collectors x 256 px
float32 per event; 512 x 512 float32 images) it runs the same plan with and without
the catalog writer subscribed, into a fresh embedded catalog (SQLite + zarr, tiled on
127.0.0.1), and reports per event:

- ``re_cost_ms``: extra RunEngine wall time with the writer (median of the repeats;
  the 0.2 ms target is judged on ``call_ms``: on a shared machine the repeats scatter
  by more than that, see ``docs/catalog.md``);
- ``re_cpu_cost_ms`` (``cpu``): extra CPU time of the session's process (all its
  threads: the RunEngine's and the writer's);
- ``call_ms``: time the RunEngine spent inside the writer's ``__call__`` (checks and
  queueing, measured by the writer itself; target <= 0.2 ms);
- for the writer on a thread of the session, in a child process, and in a child
  process that discards the documents (``sink``: the session's side alone; the
  difference to ``process`` is what the child's TiledWriter and the tiled server cost
  the RunEngine by competing for the machine's cores);
- and, as the anchor of those, for bluesky-tiled-plugins' ``TiledWriter`` subscribed
  to the RunEngine directly (``direct``: :func:`temsims.catalog.storing_chain`, the
  TiledWriter that names stored axes from the descriptors' dims, so it stores the same
  arrays; its ``call_ms``
  is the whole synchronous write);
- ``blocked_s``: time the RunEngine waited on storage (a full queue; target ~0);
- ``drain_s``: time from the end of the run until the catalog held all of it
  (``flush``), and ``write_ms`` the writer thread's time per event;
- ``open_fresh``: ``open_catalog(DIR)`` and a first look at its runs (``len``) timed
  in a fresh interpreter (imports included), for a new directory and again for the
  same directory (its server then running), medians of ``--open-repeat`` (default
  ``--repeat``); and the floor under both, the import of tiled's client with
  bluesky-tiled-plugins' run classes (decision 0014); with ``--cold``, opens that must
  first start the catalog host (``cold_s``).

Prints a table and writes ``benchmarks/results/catalog_cost.json``.

``--against DIR`` compares instead, interleaved, the opens (cold, new and existing
directory) and a fresh interpreter's first look and reads of a 512x512x4 map with
another checkout's ``temsims`` package in ``DIR`` (decision 0014's amendments).

Run: ``.venv/bin/python benchmarks/catalog_cost.py [--events 2000 --repeat 3] [--open-only [--cold]]``
"""

from __future__ import annotations

import argparse
import functools
import json
import operator
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from targets import CATALOG_BLOCKED_S, CATALOG_CALL_MS

RESULTS = Path(__file__).resolve().parent / "results" / "catalog_cost.json"


def _detectors(kind: str):
    from ophyd.sim import SynSignal, det, det1, det2

    rng = np.random.default_rng(0)
    if kind == "scalar":
        return [det, det1, det2]
    if kind == "map_line":
        return [SynSignal(func=lambda: rng.poisson(20, 256).astype(np.float32), name=f"C{i}")
                for i in range(1, 5)]
    if kind == "image":
        return [SynSignal(func=lambda: rng.random((512, 512), dtype=np.float32), name="image")]
    raise ValueError(kind)


def _md(kind: str) -> dict:
    return {"sample": "bench", "specimen": "li2co3-particles", "operator": "benchmark",
            "mode": "SIMS" if kind == "map_line" else "TEM", "correlation_id": f"bench-{kind}",
            "region": {"x_um": 0.0, "y_um": 0.0, "z_um": 0.0, "tilt_deg": 0.0, "fov_um": 10.0}}


def _cpu_s() -> float:
    """CPU time (user + system) of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sink_writer():
    """A ProcessWriter whose child discards every document: the session's side of the
    process writer (checks, queue, pickling, pipe) without storage behind it.
    The child calls the factory, ``partial(partial, operator.is_)``, and gets
    ``partial(operator.is_)``: a picklable two-argument no-op."""
    from temsims.callbacks.writer_process import ProcessWriter

    return ProcessWriter(functools.partial(functools.partial, operator.is_))


class _DirectWriter:
    """The storing chain called by the RunEngine itself, as a stock setup subscribes
    ``TiledWriter``: what the buffered writers are compared against. It has the parts
    of the writers' interface :func:`run_case` uses (``stats``, ``flush``, ``close``);
    everything is written inside ``__call__``, so ``call_s`` and ``write_s`` are the same."""

    def __init__(self, runs, batch_size: int) -> None:
        from temsims.catalog import storing_chain

        self._chain = storing_chain(runs, batch_size=batch_size)
        self.stats = SimpleNamespace(call_s=0.0, put_blocked_s=0.0, write_s=0.0)

    def __call__(self, name, doc):
        t0 = time.perf_counter()
        try:
            return self._chain(name, doc)
        finally:
            dt = time.perf_counter() - t0
            self.stats.call_s += dt
            self.stats.write_s += dt

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


_OPEN = ("import sys, time; t = time.perf_counter(); from temsims.catalog import open_catalog; "
         "c = open_catalog(sys.argv[1]); len(c); print(time.perf_counter() - t)")
_CLIENT_IMPORTS = ("import time; t = time.perf_counter(); import tiled.client, "
                   "bluesky_tiled_plugins.clients.catalog_of_bluesky_runs; "
                   "print(time.perf_counter() - t)")


def _fresh(code: str, *args: str, env: dict | None = None) -> float:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True, timeout=300, env=env)
    return float(out.stdout.strip().splitlines()[-1])


_STOP_HOST = """if True:
    import time
    from temsims.catalog.server import _host_dir, stop_catalog_host
    sock = _host_dir() / "host.sock"
    stop_catalog_host()
    deadline = time.monotonic() + 30
    while sock.exists() and time.monotonic() < deadline:  # removed as the host exits
        time.sleep(0.05)
    print(0.0)
"""


def cold_open_times(directory: Path, repeat: int, env: dict | None = None) -> list[float]:
    """``open_catalog`` of a new directory in a fresh interpreter with this
    installation's catalog host stopped first: the open starts the host (decision
    0014's cold case). ``env``: the interpreters' environment (e.g. another
    checkout's ``PYTHONPATH``, to compare code interleaved)."""
    times = []
    for i in range(repeat):
        _fresh(_STOP_HOST, env=env)
        # A cold open is a first open on an otherwise idle machine: the last round's
        # processes (its host's exit, its directory server) settle first. Back to back,
        # the same opens took 0.2-0.5 s longer (2026-12-05: median 2.34 vs 1.84 s).
        time.sleep(COLD_SETTLE_S)
        times.append(_fresh(_OPEN, str(directory / f"cold-{i}"), env=env))
    return times


#: Seconds between stopping the host and a cold open (:func:`cold_open_times`).
COLD_SETTLE_S = 5.0


def open_times(directory: Path, repeat: int) -> dict:
    """``open_catalog`` in a fresh interpreter, interleaved: a new directory, the same
    directory again (its server running), and the client imports alone."""
    new, existing, imports = [], [], []
    for i in range(repeat):
        d = directory / f"open-{i}"
        new.append(_fresh(_OPEN, str(d)))
        existing.append(_fresh(_OPEN, str(d)))
        imports.append(_fresh(_CLIENT_IMPORTS))
    return {"new_s": statistics.median(new), "existing_s": statistics.median(existing),
            "client_imports_s": statistics.median(imports),
            "runs": {"new_s": new, "existing_s": existing, "client_imports_s": imports},
            "loadavg": os.getloadavg()}


_MAP_STORE = """if True:
    import sys
    sys.path.insert(0, sys.argv[2])
    from catalog_read_benchmark import _documents
    from temsims.catalog import open_catalog
    cat = open_catalog(sys.argv[1])
    write = cat.writer(buffered=False)
    bundle, desc, pages = _documents(512, 512, 64)
    write("start", bundle.start_doc)
    write("descriptor", desc.descriptor_doc)
    for page in pages:
        write("event_page", page)
    write("stop", bundle.compose_stop())
    cat.close()
    print(0.0)
"""
#: A fresh interpreter's open and first look at a catalog holding a 512x512x4 map run,
#: then the map read back (``temsims.app.loaders``, as the analysis does) a first time
#: and warm, then the run's primary stream through the client's classes
#: (``run.primary.read()``, an xarray Dataset: what the first look left unimported).
_OPEN_AND_READ = """if True:
    import json, sys, time
    t = time.perf_counter()
    from temsims.catalog import open_catalog
    cat = open_catalog(sys.argv[1]); len(cat); run = cat[-1]
    look = time.perf_counter() - t
    from temsims.app.loaders import _read_tiled_run
    reads = []
    for _ in range(3):
        t = time.perf_counter()
        maps = _read_tiled_run(cat[-1]).maps()
        reads.append(time.perf_counter() - t)
    t = time.perf_counter()
    ds = run.primary.read()
    xr = time.perf_counter() - t
    t = time.perf_counter()
    ds = run.primary.read()
    xr_warm = time.perf_counter() - t
    assert all(m.shape == (512, 512) for m in maps.values()), maps
    print(json.dumps({"look_s": look, "first_map_s": reads[0], "warm_map_s": min(reads[1:]),
                      "first_xarray_s": xr, "warm_xarray_s": xr_warm}))
"""


def _stats(values: list[float]) -> str:
    return (f"median {statistics.median(values):.3f} s ({min(values):.3f}-{max(values):.3f}, "
            f"n={len(values)})")


_HOST_LOG = ("from temsims.catalog.server import _host_dir; "
             "print(_host_dir() / 'host.log')")


def _wait_warm_host(env: dict, directory: Path, timeout: float = 120.0) -> None:
    """Open ``directory`` (starting the catalog host if none runs) and wait until the host
    has done its warm imports (``host.log``): what a host running for a while is."""
    _fresh(_OPEN, str(directory), env=env)
    log = Path(subprocess.run([sys.executable, "-c", _HOST_LOG], capture_output=True,
                              text=True, check=True, env=env).stdout.strip())
    deadline = time.monotonic() + timeout
    while "warm imports done" not in log.read_text().rsplit("serving ", 1)[-1]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no warm imports in {log}")
        time.sleep(0.5)


def ab_times(directory: Path, repeat: int, against: str) -> dict:
    """Old and new code interleaved, each round in alternating order: ``against`` is a
    directory on ``PYTHONPATH`` holding another checkout's ``temsims`` package (e.g.
    ``git archive HEAD core`` unpacked and renamed). With both catalog hosts running and
    warm: per round and code a new directory, that directory again, and a fresh
    interpreter's open, first look and reads of a stored 512x512x4 map; then, per round
    and code, the cold open with its first look (every catalog host stopped,
    :data:`COLD_SETTLE_S` settle)."""
    envs = {"new": {k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            "old": {**os.environ, "PYTHONPATH": against}}
    bench = str(Path(__file__).resolve().parent)
    maps = {}
    for code, env in envs.items():  # one map run per code, stored by that code
        maps[code] = directory / f"map-{code}"
        _fresh(_MAP_STORE, str(maps[code]), bench, env=env)
        _wait_warm_host(env, directory / f"warm-up-{code}")
    keys = ("new_s", "existing_s", "look_s", "first_map_s", "warm_map_s",
            "first_xarray_s", "warm_xarray_s", "cold_s")
    out = {code: {k: [] for k in keys} for code in envs}
    loads = {"warm": [], "cold": []}

    def orders():
        for i in range(repeat):
            yield i, (list(envs) if i % 2 == 0 else list(reversed(envs)))

    for i, order in orders():
        loads["warm"].append(os.getloadavg()[0])
        for code in order:
            d = str(directory / f"warm-{code}-{i}")
            out[code]["new_s"].append(_fresh(_OPEN, d, env=envs[code]))
            out[code]["existing_s"].append(_fresh(_OPEN, d, env=envs[code]))
        for code in order:
            proc = subprocess.run([sys.executable, "-c", _OPEN_AND_READ, str(maps[code])],
                                  capture_output=True, text=True, check=True, timeout=300,
                                  env=envs[code])
            for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                out[code][k].append(v)
    for i, order in orders():
        for code in order:
            for env in envs.values():
                _fresh(_STOP_HOST, env=env)
            time.sleep(COLD_SETTLE_S)
            loads["cold"].append(os.getloadavg()[0])
            out[code]["cold_s"].append(_fresh(_OPEN, str(directory / f"cold-{code}-{i}"),
                                              env=envs[code]))
    for code, figures in out.items():
        print(f"{code}:")
        for k, v in figures.items():
            print(f"  {k:<15} {_stats(v)}")
    for phase, values in loads.items():
        print(f"load average ({phase}): {min(values):.1f}-{max(values):.1f}")
    return {**out, "loadavg": loads}


def run_case(cat, kind: str, n_events: int, repeat: int, batch_size: int,
             process: bool | str = False) -> dict:
    import bluesky.plans as bp
    from bluesky import RunEngine

    dets = _detectors(kind)
    bare_t, with_t, calls, blocked, drains, writes = [], [], [], [], [], []
    bare_cpu, with_cpu = [], []
    for _ in range(repeat):
        RE = RunEngine({})
        t0, c0 = time.perf_counter(), _cpu_s()
        RE(bp.count(dets, num=n_events), **_md(kind))
        bare_t.append(time.perf_counter() - t0)
        bare_cpu.append(_cpu_s() - c0)

        RE = RunEngine({})
        if process == "sink":
            writer = _sink_writer()
        elif process == "direct":
            writer = _DirectWriter(cat.runs, batch_size)
        else:
            writer = cat.writer(batch_size=batch_size, process=process)
        assert writer.flush(timeout=300)  # a writer process has started and answered
        RE.subscribe(writer)
        t0, c0 = time.perf_counter(), _cpu_s()
        RE(bp.count(dets, num=n_events), **_md(kind))
        t1 = time.perf_counter()
        with_cpu.append(_cpu_s() - c0)
        assert writer.flush(timeout=3600)
        t2 = time.perf_counter()
        with_t.append(t1 - t0)
        drains.append(t2 - t1)
        calls.append(writer.stats.call_s)
        blocked.append(writer.stats.put_blocked_s)
        writes.append(writer.stats.write_s)
        writer.close()
    n = n_events
    return {
        "kind": kind,
        "storage": {False: "thread", True: "process"}.get(process, process),
        "events": n,
        "batch_size": batch_size,
        "repeat": repeat,
        "re_bare_ms_per_event": 1e3 * statistics.median(bare_t) / n,
        "re_with_writer_ms_per_event": 1e3 * statistics.median(with_t) / n,
        "re_cost_ms": 1e3 * (statistics.median(with_t) - statistics.median(bare_t)) / n,
        "re_cpu_cost_ms": 1e3 * (statistics.median(with_cpu) - statistics.median(bare_cpu)) / n,
        "call_ms": 1e3 * statistics.median(calls) / n,
        "blocked_s": max(blocked),
        "drain_s": statistics.median(drains),
        "write_ms": 1e3 * statistics.median(writes) / n,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="scalar events per run")
    parser.add_argument("--lines", type=int, default=256, help="map lines per run")
    parser.add_argument("--images", type=int, default=50, help="512x512 images per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="TiledWriter batch (default: temsims.catalog.DEFAULT_BATCH_SIZE)")
    parser.add_argument("--open-repeat", type=int, default=None,
                        help="fresh-interpreter opens of a new and an existing directory "
                             "(default: --repeat)")
    parser.add_argument("--open-only", action="store_true",
                        help="only time open_catalog (prints; writes no results file)")
    parser.add_argument("--cold", action="store_true",
                        help="with --open-only: also time opens that must start the catalog "
                             "host (this installation's host is stopped before each)")
    parser.add_argument("--against", metavar="PYTHONPATH",
                        help="only compare this code's opens and reads, interleaved, with the "
                             "temsims package in this directory (prints; writes no results file)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.open_repeat = args.open_repeat or args.repeat
    if args.against:
        with tempfile.TemporaryDirectory(prefix="temsims-catalog-ab-") as d:
            return ab_times(Path(d), args.open_repeat, args.against)
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="temsims-catalog-cold-") as d:
            cold = cold_open_times(Path(d), args.open_repeat)
        print(f"open_catalog starting the catalog host (fresh interpreter, new directory): "
              f"median {statistics.median(cold):.2f} s, {min(cold):.2f}-{max(cold):.2f} s over "
              f"{len(cold)} (load average {os.getloadavg()[0]:.1f})")

    with tempfile.TemporaryDirectory(prefix="temsims-catalog-open-") as d:
        opens = open_times(Path(d), args.open_repeat)
    open_line = (f"open_catalog in a fresh interpreter (median of {args.open_repeat}): new directory "
                 f"{opens['new_s']:.2f} s, existing (server running) {opens['existing_s']:.2f} s; "
                 f"client imports alone {opens['client_imports_s']:.2f} s "
                 f"(load average {opens['loadavg'][0]:.1f})")
    if args.open_only:
        print(open_line)
        return {"open_fresh": opens, **({"cold_s": cold} if args.cold else {})}

    from temsims.catalog import DEFAULT_BATCH_SIZE, open_catalog

    batch = args.batch_size or DEFAULT_BATCH_SIZE
    with tempfile.TemporaryDirectory(prefix="temsims-catalog-bench-") as d:
        t0 = time.perf_counter()
        cat = open_catalog(Path(d) / "catalog")
        open_s = time.perf_counter() - t0
        try:
            cases = [
                run_case(cat, "scalar", args.events, args.repeat, batch),
                run_case(cat, "scalar", args.events, args.repeat, 10000),
                run_case(cat, "map_line", args.lines, args.repeat, batch),
                run_case(cat, "image", args.images, args.repeat, batch),
                run_case(cat, "scalar", args.events, args.repeat, batch, process=True),
                run_case(cat, "map_line", args.lines, args.repeat, batch, process=True),
                run_case(cat, "image", args.images, args.repeat, batch, process=True),
                run_case(cat, "scalar", args.events, args.repeat, batch, process="sink"),
                run_case(cat, "map_line", args.lines, args.repeat, batch, process="sink"),
                run_case(cat, "image", args.images, args.repeat, batch, process="sink"),
                run_case(cat, "scalar", args.events, args.repeat, batch, process="direct"),
                run_case(cat, "map_line", args.lines, args.repeat, batch, process="direct"),
                run_case(cat, "image", args.images, args.repeat, batch, process="direct"),
            ]
        finally:
            cat.close()
    result = {
        "benchmark": "catalog_cost",
        "targets": {"call_ms": CATALOG_CALL_MS.limit, "blocked_s": CATALOG_BLOCKED_S.limit},
        "open_catalog_s": open_s,
        "open_fresh": opens,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "cases": cases,
    }
    header = (f"{'kind':<9} {'storage':<7} {'events':>6} {'batch':>6} {'RE bare':>8} {'RE+cat':>8} {'cost':>7} "
              f"{'cpu':>7} {'call':>7} {'blocked':>8} {'drain':>7} {'write':>7}")
    print(open_line)
    print(f"open_catalog: {open_s:.2f} s   (per-event figures in ms; blocked and drain in s)")
    print(header)
    for c in cases:
        print(f"{c['kind']:<9} {c['storage']:<7} {c['events']:>6} {c['batch_size']:>6} "
              f"{c['re_bare_ms_per_event']:>8.3f} {c['re_with_writer_ms_per_event']:>8.3f} "
              f"{c['re_cost_ms']:>7.3f} {c['re_cpu_cost_ms']:>7.3f} {c['call_ms']:>7.3f} "
              f"{c['blocked_s']:>8.3f} "
              f"{c['drain_s']:>7.2f} {c['write_ms']:>7.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")
    return result


if __name__ == "__main__":
    main()
