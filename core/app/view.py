"""``temsims view``: the live SIMS views and the catalog writer, fed from the 0MQ stream.

A session (``configure_session(publish=...)`` or ``$TEMSIMS_ZMQ_PUBLISH``) or the
queue server's worker publishes its RunEngine's documents to a 0MQ proxy;
``temsims view`` subscribes to the proxy's output (bluesky's ``RemoteDispatcher``)
from another process, or another machine, and for every SIMS map run shows

- the live SIMS map (:class:`temsims.callbacks.live.LiveSimsMap`),
- the isotope ratio map (:class:`~temsims.callbacks.live.LiveRatioMap`, ``--ratio``),
  when the run maps both species,
- the fused overlay on a TEM image (:class:`~temsims.callbacks.live.LiveFusedOverlay`),
  when a TEM image run went through the stream before it: the one of the same
  ``correlation_id`` (a correlative experiment's overview), else the latest;

in Qt windows where a display and a Qt binding exist, else as PNG files
(``--out DIR``, ``--headless``). The views are the in-session ones with the same
defaults, so a PNG written here equals the one a session's headless view writes.

``--store CATALOG`` also stores every run through
``temsims.catalog.open_catalog(CATALOG).writer()``: storage in a process of its own,
which survives a crashed session (``--no-views`` for a writer alone; see
``docs/remote.md``). ``--start-proxy`` serves the proxy instead
(:func:`temsims.app.stream.serve_proxy`).

Everything runs on one thread: the dispatcher's asyncio loop calls the views, and
with Qt a loop task processes the GUI's events every 50 ms (bluesky's former "Qt
kicker"), so no document is handed between threads. Ctrl-C or SIGTERM ends it
cleanly: the loop stops, the writer drains, the figures close.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temsims.app.stream import (
    DEFAULT_IN,
    DEFAULT_OUT,
    PUBLISH_ENV,
    SUBSCRIBE_ENV,
    SUBSCRIPTION_SETTLE_S,
    StreamError,
    check_reachable,
    parse_address,
    serve_proxy,
    tcp_url,
    wait_for_handshake_async,
)

logger = logging.getLogger(__name__)

DESCRIPTION = """Watch a RunEngine's live documents from another process: subscribe to a 0MQ
proxy's output and show each SIMS map run as a live SIMS map, a ratio map and a fused
overlay on the TEM image seen before it (Qt windows where a display exists, PNG files
headless), and/or store every run in a catalog (--store), so storage survives a crashed
session. Runs until Ctrl-C or SIGTERM (or --runs N).

  temsims view --start-proxy                        a proxy on 127.0.0.1:5577 -> :5578
  TEMSIMS_ZMQ_PUBLISH=127.0.0.1:5577 temsims shell  a session publishing to it
  temsims view                                      live views (windows, or PNGs headless)
  temsims view --headless --out maps/               PNG files only
  temsims view --store DIR --no-views               the catalog writer as a subscriber

Addresses are HOST:PORT; everything binds 127.0.0.1 unless told otherwise. The documents
are pickled (bluesky's default): subscribe only to proxies you trust."""

#: TEM image runs kept for overlays (by correlation_id), newest last.
MAX_TEM_RUNS = 4
#: How often the Qt windows get their events processed (s).
QT_KICK_S = 0.05


class _HelpFormatter(argparse.RawDescriptionHelpFormatter,
                     argparse.ArgumentDefaultsHelpFormatter):
    """The description's examples as written; every default shown, except for flags
    and options without one (their help says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.nargs == 0 or action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``temsims view`` (defaults shown by ``--help``)."""
    parser.formatter_class = _HelpFormatter
    parser.add_argument("--connect", default=os.environ.get(SUBSCRIBE_ENV) or DEFAULT_OUT,
                        metavar="HOST:PORT",
                        help=f"the proxy's output to subscribe to (${SUBSCRIBE_ENV} overrides "
                        "the default); with --start-proxy, the output to bind (port 0: a "
                        "free one)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write PNGs of the views here (default: temsims-view when headless, none "
                        "with windows)")
    parser.add_argument("--headless", action="store_true",
                        help="no windows, PNG files only (implied without a display or a Qt "
                        "binding; default: windows where possible)")
    parser.add_argument("--no-views", dest="views", action="store_false",
                        help="no live views (with --store: a storage-only subscriber; default: "
                        "views on)")
    parser.add_argument("--store", default=None, metavar="CATALOG",
                        help="also store every run in this catalog (directory or tiled URI; "
                        "default: store nothing)")
    parser.add_argument("--api-key", default=None,
                        help="API key of a tiled server's URI for --store; unset: $TILED_API_KEY")
    parser.add_argument("--runs", type=int, default=0, metavar="N",
                        help="exit after N runs have ended (0: until Ctrl-C or SIGTERM)")
    parser.add_argument("--ratio", default="6Li/7Li", metavar="NUM/DEN",
                        help="species of the ratio map")
    parser.add_argument("--overlay", default="ihs", choices=("ihs", "laplacian", "alpha"),
                        help="fusion of the overlay")
    parser.add_argument("--save-every", type=int, default=None, metavar="LINES",
                        help="also write the PNGs every this many map lines (default: at each "
                        "run's end only)")
    parser.add_argument("--record", default=None, metavar="FILE",
                        help="append one JSON line per document received (name, uid, event "
                        "uids, receive and handled times) for tests and benchmarks (default: "
                        "none)")
    parser.add_argument("--connect-timeout", type=float, default=5.0, metavar="S",
                        help="seconds to wait for the 0MQ handshake with the proxy")
    parser.add_argument("--start-proxy", action="store_true",
                        help="serve a proxy instead (bluesky's Proxy) until Ctrl-C or SIGTERM: "
                        "publishers send to --proxy-in, subscribers connect to --connect")
    parser.add_argument("--proxy-in", default=os.environ.get(PUBLISH_ENV) or DEFAULT_IN,
                        metavar="HOST:PORT",
                        help=f"with --start-proxy: the input to bind (${PUBLISH_ENV} "
                        "overrides the default; port 0: a free one)")


# ============================================================================ routing
class _Router:
    """Documents to the callbacks of their run (what ``event_model.RunRouter`` does,
    without its filler, which copies every event page: nothing here is external)."""

    def __init__(self, factory: Callable[[dict], list[Callable]]) -> None:
        self.factory = factory
        self._by_run: dict[str, list[Callable]] = {}
        self._run_of_descriptor: dict[str, str] = {}

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self._by_run[doc["uid"]] = callbacks = self.factory(doc)
        elif name == "descriptor":
            self._run_of_descriptor[doc["uid"]] = doc["run_start"]
            callbacks = self._by_run.get(doc["run_start"], [])
        elif name in ("event", "event_page"):
            callbacks = self._by_run.get(self._run_of_descriptor.get(doc["descriptor"], ""), [])
        elif name == "stop":
            callbacks = self._by_run.pop(doc["run_start"], [])
            self._run_of_descriptor = {d: r for d, r in self._run_of_descriptor.items()
                                       if r != doc["run_start"]}
        else:  # resources, datums: the views read none
            return
        for cb in callbacks:
            cb(name, doc)


class _RunDocuments:
    """Keeps the documents of one run (a TEM image for later overlays)."""

    def __init__(self) -> None:
        self.docs: list[tuple[str, dict]] = []

    def __call__(self, name: str, doc: dict) -> None:
        self.docs.append((name, doc))


class StreamViewer:
    """The subscriber's document handler: live views per run, the writer, the record.

    Parameters
    ----------
    out
        Directory of the PNG files (None: none, with windows).
    headless
        Draw into figures outside pyplot (PNG files only).
    views
        Make the live views (False: only store and record).
    writer
        ``catalog.writer()`` to hand every document to, or None.
    ratio
        ``(numerator, denominator)`` of the ratio map.
    overlay
        Fusion method of the overlay.
    save_every
        Also write the PNGs every this many lines.
    record
        File to append a JSON line per document to.
    runs
        Call ``on_done`` once this many runs have ended (0: never).
    on_done
        What ends the subscription (cancels the dispatcher's loop).
    """

    def __init__(self, *, out: Path | None, headless: bool, views: bool = True,
                 writer: Callable | None = None, ratio: tuple[str, str] = ("6Li", "7Li"),
                 overlay: str = "ihs", save_every: int | None = None,
                 record: Path | None = None, runs: int = 0,
                 on_done: Callable[[], None] | None = None) -> None:
        self.out, self.headless, self.views = out, headless, views
        self.writer = writer
        self.ratio, self.overlay, self.save_every = ratio, overlay, save_every
        self.runs, self.on_done = runs, on_done
        self.runs_done = 0
        self.documents = 0
        self.write_errors = 0
        self.live: dict[str, list[Any]] = {}  # run uid -> its live views
        self._tem_runs: OrderedDict[str, list[tuple[str, dict]]] = OrderedDict()
        self._collecting: dict[str, _RunDocuments] = {}
        self._router = _Router(self._callbacks_for)
        if record is not None:
            record.parent.mkdir(parents=True, exist_ok=True)
        self._record = open(record, "a", encoding="utf-8") if record else None  # noqa: SIM115

    # ---- per run -------------------------------------------------------------------
    def _png(self, start: dict, kind: str) -> Path | None:
        if self.out is None:
            return None
        return self.out / f"{start.get('scan_id', 'run')}-{start['uid'][:8]}-{kind}.png"

    def _callbacks_for(self, start: dict) -> list[Callable]:
        """The live views of a run (SIMS map), or a collector (TEM image)."""
        callbacks: list[Callable] = []
        if start.get("image") and start.get("mode") == "TEM":
            collector = _RunDocuments()
            self._collecting[start["uid"]] = collector
            callbacks.append(collector)
        species = (start.get("map") or {}).get("species")
        if not (self.views and species):
            return callbacks
        from temsims.callbacks.live import LiveFusedOverlay, LiveRatioMap, LiveSimsMap

        common = dict(headless=self.headless, save_every=self.save_every,
                      use_teleporter=False)  # one thread: see the module docstring
        views: list[Any] = [LiveSimsMap(png_path=self._png(start, "sims"), **common)]
        num, den = self.ratio
        if num in species and den in species:
            views.append(LiveRatioMap(num, den, png_path=self._png(start, "ratio"), **common))
        tem = self._tem_for(start)
        if tem is not None:
            try:
                views.append(LiveFusedOverlay.from_run(
                    tem, method=self.overlay, png_path=self._png(start, "overlay"), **common))
            except ValueError as err:
                logger.warning("no overlay for run %s: %s", start["uid"], err)
        self.live[start["uid"]] = views
        return callbacks + views

    def _tem_for(self, start: dict) -> list[tuple[str, dict]] | None:
        cid = start.get("correlation_id")
        if cid in self._tem_runs:
            return self._tem_runs[cid]
        return next(reversed(self._tem_runs.values()), None)

    def _run_ended(self, stop: dict) -> None:
        uid = stop["run_start"]
        collector = self._collecting.pop(uid, None)
        if collector is not None and stop.get("exit_status") == "success":
            cid = str(collector.docs[0][1].get("correlation_id", uid))
            self._tem_runs.pop(cid, None)
            self._tem_runs[cid] = collector.docs
            while len(self._tem_runs) > MAX_TEM_RUNS:
                self._tem_runs.popitem(last=False)
        for view in self.live.pop(uid, []):
            for path in view.saved:
                print(f"temsims view: wrote {path}", flush=True)
            view.close()
        self.runs_done += 1
        if self.runs and self.runs_done >= self.runs and self.on_done is not None:
            self.on_done()

    # ---- every document --------------------------------------------------------------
    def __call__(self, name: str, doc: dict) -> None:
        received = time.time()
        self.documents += 1
        if self.writer is not None:
            try:
                self.writer(name, doc)
            except Exception as err:  # noqa: BLE001 - reported, the stream goes on
                self.write_errors += 1
                logger.error("storing the %s document %s failed: %s", name, doc.get("uid"), err)
        try:
            self._router(name, doc)
        except Exception:  # noqa: BLE001 - a view must never end the subscription
            logger.exception("the live views failed on the %s document %s", name,
                             doc.get("uid"))
        if self._record is not None:
            entry = {"name": name, "uid": doc.get("uid"), "received": received,
                     "handled": time.time()}
            if name == "event_page":
                entry["uids"] = list(doc["uid"])
            elif name in ("descriptor", "stop"):
                entry["run_start"] = doc.get("run_start")
            self._record.write(json.dumps(entry) + "\n")
            self._record.flush()
        if name == "stop":
            self._run_ended(doc)

    def close(self) -> None:
        """Close the views still open and the record."""
        for views in self.live.values():
            for view in views:
                view.close()
        self.live.clear()
        if self._record is not None:
            self._record.close()
            self._record = None


# ============================================================================ command
def _qt_available() -> str | None:
    """Why windows cannot be shown here, or None if they can."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY / WAYLAND_DISPLAY unset)"
    import importlib.util

    if not any(importlib.util.find_spec(m) for m in ("PyQt6", "PySide6", "PyQt5", "PySide2")):
        return "no Qt binding installed (PyQt6, PySide6, PyQt5 or PySide2)"
    return None


def _warm_up() -> None:
    """Import what the views of the first map run need, before subscribing: measured,
    the first run's start document otherwise waited ~0.2 s for these imports and its
    first lines queued behind it."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401

    import temsims.analysis.fusion  # noqa: F401
    import temsims.analysis.isotopes  # noqa: F401
    import temsims.callbacks.live  # noqa: F401


def _parse_ratio(text: str) -> tuple[str, str]:
    parts = [p.strip() for p in str(text).split("/")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"--ratio {text!r} is not NUM/DEN (e.g. 6Li/7Li)")
    return parts[0], parts[1]


def _fail(message: str, code: int = 2) -> int:
    print(f"temsims view: {message}", file=sys.stderr)
    return code


def main(args: argparse.Namespace) -> int:
    """Serve a proxy (``--start-proxy``) or subscribe until stopped; the exit code."""
    if args.start_proxy:
        def announce(inp: str, out: str) -> None:
            print(f"temsims view: proxy receiving on {inp}, publishing on {out} "
                  f"(pid {os.getpid()}; Ctrl-C or SIGTERM stops it)", flush=True)

        try:
            return serve_proxy(args.proxy_in, args.connect, announce=announce)
        except ValueError as err:
            return _fail(str(err))
    try:
        host, port = parse_address(args.connect, what="--connect")
        ratio = _parse_ratio(args.ratio)
        if args.runs < 0:
            raise ValueError(f"--runs must be >= 0, got {args.runs}")
        if args.save_every is not None and args.save_every < 1:
            raise ValueError(f"--save-every must be >= 1 lines, got {args.save_every}")
        if args.connect_timeout <= 0:
            raise ValueError(f"--connect-timeout must be > 0 s, got {args.connect_timeout}")
    except ValueError as err:
        return _fail(str(err))
    if not args.views and args.store is None:
        return _fail("--no-views without --store would do nothing")
    try:
        check_reachable(host, port, what="--connect", timeout_s=args.connect_timeout)
    except StreamError as err:
        return _fail(str(err), 1)

    headless = args.headless or not args.views
    if not headless and (why := _qt_available()) is not None:
        print(f"temsims view: headless, PNG files only: {why}", flush=True)
        headless = True
    out = Path(args.out) if args.out else (Path("temsims-view") if headless else None)
    if args.views:
        import matplotlib

        matplotlib.use("Agg" if headless else "QtAgg", force=True)

    catalog = writer = None
    if args.store is not None:
        from temsims.catalog import open_catalog

        try:
            catalog = open_catalog(args.store, api_key=args.api_key)
        except Exception as err:  # noqa: BLE001 - any failure to open is the user's to see
            return _fail(f"cannot open the catalog {args.store!r}: {err}", 1)
        writer = catalog.writer()
    return _subscribe(args, host, port, headless, out, ratio, catalog, writer)


def _subscribe(args: argparse.Namespace, host: str, port: int, headless: bool,
               out: Path | None, ratio: tuple[str, str], catalog: Any, writer: Any) -> int:
    import asyncio

    from bluesky.callbacks.zmq import RemoteDispatcher

    dispatcher = RemoteDispatcher(f"{host}:{port}" if ":" not in host else (host, port))
    loop = dispatcher.loop

    def finish() -> None:  # from the loop's thread: ends dispatcher.start()
        for task in asyncio.all_tasks(loop):
            task.cancel()

    viewer = StreamViewer(out=out, headless=headless, views=args.views, writer=writer,
                          ratio=ratio, overlay=args.overlay, save_every=args.save_every,
                          record=Path(args.record) if args.record else None, runs=args.runs,
                          on_done=lambda: loop.call_soon(finish))
    dispatcher.subscribe(viewer)
    url = tcp_url(host, port)
    status = {"ready": False}

    async def announce() -> None:  # the socket exists once start() runs the loop
        sock = dispatcher._socket  # noqa: SLF001 - bluesky keeps it private
        ok = await wait_for_handshake_async(sock, url, args.connect_timeout)
        if ok:  # the subscription follows the handshake (see temsims.app.stream)
            await asyncio.sleep(SUBSCRIPTION_SETTLE_S)
        if not ok:
            print(f"temsims view: {host}:{port} accepts connections but no 0MQ proxy "
                  f"answered within {args.connect_timeout:g} s", file=sys.stderr, flush=True)
            finish()
            return
        status["ready"] = True
        what = ", ".join(filter(None, ["views" if args.views else "",
                                       f"storing in {args.store}" if args.store else ""]))
        where = f"PNGs in {out}" if out is not None else "windows"
        print(f"temsims view: subscribed to {url} ({what}; {where}; pid {os.getpid()})",
              flush=True)

    async def kick_qt() -> None:  # keep the windows responsive between documents
        from matplotlib.backends.qt_compat import QtWidgets

        while True:
            app = QtWidgets.QApplication.instance()
            if app is not None:
                app.processEvents()
            await asyncio.sleep(QT_KICK_S)

    if args.views:
        _warm_up()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, finish)
    loop.call_soon(lambda: loop.create_task(announce()))
    if args.views and not headless:
        import matplotlib.pyplot as plt

        plt.ion()
        loop.call_soon(lambda: loop.create_task(kick_qt()))
    try:
        dispatcher.start()
    except asyncio.CancelledError:
        pass
    finally:
        viewer.close()
    code = 0 if status["ready"] else 1
    if writer is not None:
        try:
            writer.close()  # drains: every run received is stored before the exit
        except Exception as err:  # noqa: BLE001
            print(f"temsims view: storing failed: {err}", file=sys.stderr)
            code = 1
        catalog.close()
        if viewer.write_errors:
            code = 1
    print(f"temsims view: {viewer.documents} documents, {viewer.runs_done} runs", flush=True)
    return code
