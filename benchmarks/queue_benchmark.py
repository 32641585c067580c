"""The queue server's costs: ``environment_open``, ``queue_start`` -> the first event,
and a queued ``correlative_tem_sims`` against the same plan in a session.

One instrument (its own, free loopback ports; stage and bias sped up as the tests do,
so a mode change takes ~0.3 s instead of ~15 s), one ``temsims queue`` server
(:class:`temsims.app.queue.QueueServer`: Redis and the RE Manager) with a catalog
directory, and a session of this process (:func:`temsims.app.session.configure_session`,
the same catalog writer) on the same instrument. The plan runs ``--repeat`` times each
way, alternating, each queued run started alone (``queue_start`` of a one-item queue):

- ``queue_start -> first event``: the first event document's time (the worker's clock,
  this machine's) minus the wall time just before ``queue_start``;
- queued: ``queue_start`` -> the manager idle again (what a client waits for), and the
  worker's own item time (history ``time_start`` -> ``time_stop``);
- in session: ``RE(correlative_tem_sims(...))``.

Writes ``benchmarks/results/queue.json``. Needs ``redis-server``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "queue.json"
FAST_SETTINGS = {"stage.alpha.velocity": 30.0, "stage.x.velocity": 200.0,
                 "stage.y.velocity": 200.0, "bias.ramp_rate": 10000.0}


def _first_event_time(run: Any) -> float:
    return min(doc["time"] if name == "event" else min(doc["time"])
               for name, doc in run.documents() if name in ("event", "event_page"))


def _stored(catalog_dir: Path, uids: list[str], timeout: float = 120.0) -> list:
    from temsims.catalog import open_catalog

    deadline = time.monotonic() + timeout
    while True:
        cat = open_catalog(catalog_dir)
        try:
            runs = [cat[uid] for uid in uids]
            if all(run.metadata.get("stop") for run in runs):
                return runs
        except KeyError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"runs {uids} not stored within {timeout} s")
        time.sleep(0.5)


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from operator import attrgetter

    from bluesky_queueserver_api import BPlan
    from bluesky_queueserver_api.zmq import REManagerAPI

    from temsims.app.queue import QueueServer
    from temsims.app.session import configure_session
    from temsims.channel_access import CALayout, find_free_base_port
    from temsims.ioc.launcher import InstrumentProcesses

    layout = CALayout(base_port=find_free_base_port(10))
    os.environ.update(layout.client_environment())
    procs = InstrumentProcesses(layout=layout, instrument_prefix=f"Q{uuid.uuid4().hex[:6].upper()}:",
                                time_scale=args.time_scale, log_dir=work / "ioc")
    procs.start(timeout=60)
    kwargs = {"overview_fov_um": 4.0, "max_rois": 1, "sims_pixels": [args.nx, args.ny],
              "sims_dwell_s": args.dwell, "exposure_s": 0.01}
    md = {"sample": "queue-benchmark", "specimen": "li2co3-particles"}
    server = session = api = None
    try:
        ns: dict[str, Any] = {}
        session = configure_session(ns, prefix=procs.instrument_prefix,
                                    catalog=work / "session-catalog", md_dir=work / "md-session",
                                    bec=False, pbar=False, magics=False)
        for name, value in FAST_SETTINGS.items():
            attrgetter(name)(session.instrument).set(value).wait(10)
        session.instrument.camera.size.set(args.camera).wait(10)
        server = QueueServer(prefix=procs.instrument_prefix, base_port=layout.base_port,
                             catalog=str(work / "queue-catalog"), state_dir=work / "queue",
                             extra_env={"TEMSIMS_MD_DIR": str(work / "md-queue")}).start()
        api = REManagerAPI(zmq_control_addr=server.control_address, timeout_recv=30)
        t = time.monotonic()
        api.environment_open()
        api.wait_for_idle(timeout=300)
        open_s = time.monotonic() - t
        api.environment_close()
        api.wait_for_idle(timeout=120)
        t = time.monotonic()
        api.environment_open()
        api.wait_for_idle(timeout=300)
        reopen_s = time.monotonic() - t

        queued_client, queued_worker, first_event, in_session = [], [], [], []
        plan_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        for i in range(args.repeat):
            api.item_add(BPlan("correlative_tem_sims", "instrument", **kwargs, md=md))
            start_wall = time.time()
            t = time.monotonic()
            api.queue_start()
            api.wait_for_idle(timeout=300)
            queued_client.append(time.monotonic() - t)
            result = api.history_get()["items"][-1]["result"]
            if result["exit_status"] != "completed":
                raise RuntimeError(f"queued run {i} {result['exit_status']}: {result['msg']}")
            queued_worker.append(result["time_stop"] - result["time_start"])
            runs = _stored(work / "queue-catalog", result["run_uids"])
            first_event.append(_first_event_time(runs[0]) - start_wall)

            t = time.monotonic()
            session.RE(ns["correlative_tem_sims"](session.instrument, **plan_kwargs, md=md))
            in_session.append(time.monotonic() - t)
            print(f"run {i}: queue_start -> first event {first_event[-1]:.2f} s, queued "
                  f"{queued_client[-1]:.2f} s (worker {queued_worker[-1]:.2f} s), in session "
                  f"{in_session[-1]:.2f} s", flush=True)
        api.environment_close()
        api.wait_for_idle(timeout=120)
    finally:
        if api is not None:
            api.close()
        if server is not None:
            server.stop()
        if session is not None:
            session.close()
        procs.stop()
    return {
        "nx": args.nx, "ny": args.ny, "dwell_s": args.dwell, "camera": args.camera,
        "repeat": args.repeat, "time_scale": args.time_scale,
        "environment_open_s": open_s, "environment_reopen_s": reopen_s,
        "first_event_s": _summary(first_event), "queued_client_s": _summary(queued_client),
        "queued_worker_s": _summary(queued_worker), "in_session_s": _summary(in_session),
        "overhead_s_median": statistics.median(
            q - s for q, s in zip(queued_client, in_session, strict=True)),
        "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="queue server: environment_open, queue_start -> first event, a queued "
        "correlative_tem_sims vs the same plan in a session",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--nx", type=int, default=32, help="SIMS map pixels per line")
    parser.add_argument("--ny", type=int, default=23, help="SIMS map lines")
    parser.add_argument("--dwell", type=float, default=1e-4, help="SIMS dwell per pixel (s)")
    parser.add_argument("--camera", type=int, default=128, help="TEM camera pixels per side")
    parser.add_argument("--repeat", type=int, default=3, help="runs each way")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="simulated seconds per wall second of the instrument")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON result")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="temsims-queue-bench-") as work:
        result = measure(args, Path(work))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
