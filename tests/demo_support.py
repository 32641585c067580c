"""``temsims demo`` run end to end in a subprocess, as the case tests need it.

One place for the shape every end-to-end demo test shares: a port block from the
session's pool (given back whatever happens), a fresh PV prefix, its own catalog,
report and log directories under the test's ``tmp_path``, the instrument at the tests'
time scale, and the output printed for the log.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

#: The time scale the demo tests run the instrument at (README: --time-scale).
TIME_SCALE = 20.0


@dataclass
class DemoRun:
    """A finished ``temsims demo`` subprocess."""

    proc: subprocess.CompletedProcess
    wall_s: float
    out: Path
    catalog: Path

    @property
    def stdout(self) -> str:
        return self.proc.stdout

    def failure(self) -> str:
        """The tail of both streams, for an assertion message."""
        return self.proc.stdout[-3000:] + self.proc.stderr[-3000:]


def run_demo(slot_pool, tmp_path: Path, *args: str, time_scale: float = TIME_SCALE,
             timeout_s: float = 240.0, tail: int = 2500) -> DemoRun:
    """``python -m temsims.app.cli demo ARGS...`` with its own ports, prefix, catalog
    (``tmp_path/catalog``), report (``tmp_path/report``) and logs; prints the wall time
    and the last ``tail`` characters of its output."""
    slot, layout = slot_pool.take()
    prefix = f"D{uuid.uuid4().hex[:6].upper()}:"
    out = tmp_path / "report"
    catalog = tmp_path / "catalog"
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "temsims.app.cli", "demo", *args, "--prefix", prefix,
             "--base-port", str(layout.base_port), "--catalog", str(catalog), "--out",
             str(out), "--log-dir", str(tmp_path / "logs"), "--time-scale", f"{time_scale:g}"],
            capture_output=True, text=True, timeout=timeout_s)
    finally:
        slot_pool.give_back(slot)
    wall = time.monotonic() - t0
    print(f"\ndemo {' '.join(args)}: wall time {wall:.1f} s\n{proc.stdout[-tail:]}")
    return DemoRun(proc=proc, wall_s=wall, out=out, catalog=catalog)


def starts_of(catalog: Path, correlation_id: str) -> list[dict]:
    """The start documents of one experiment, read from the demo's catalog."""
    from temsims.catalog import open_catalog

    cat = open_catalog(catalog)
    try:
        return [dict(run.metadata["start"])
                for run in cat.by_correlation_id(correlation_id).values()]
    finally:
        cat.close()


# ---------------------------------------------------------------- the HTML index
def index_links(index: Path) -> dict[str, list[str]]:
    """The index page parsed with :mod:`html.parser`: ``sections`` (case ids), ``img``
    (``src`` of each image), ``href`` (every link but the page's own anchors)."""
    from html.parser import HTMLParser

    found: dict[str, list[str]] = {"sections": [], "img": [], "href": []}

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "section" and "case" in (a.get("class") or "").split():
                found["sections"].append(a.get("id", ""))
            elif tag == "img":
                found["img"].append(a.get("src", ""))
            elif tag == "a" and not (a.get("href") or "#").startswith("#"):
                found["href"].append(a.get("href", ""))

    Parser().feed(Path(index).read_text(encoding="utf-8"))
    return found


def chromium_binary() -> str | None:
    """An installed Chromium (Debian's ``chromium-headless-shell`` or ``chromium``, or
    Chrome), or None."""
    import shutil

    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome",
                 "chrome", "headless_shell"):
        path = shutil.which(name)
        if path:
            return path
    return None


def check_in_chromium(index: Path, timeout_s: float = 60.0) -> dict | None:
    """Load ``index`` in headless Chromium over its DevTools protocol (loopback only) and
    report what the browser made of it: ``title``, ``sections``, ``images`` (``src``,
    ``ok`` = loaded and decoded, ``width``), ``links``. None without a Chromium."""
    import json
    import re
    import tempfile
    import urllib.request

    from websockets.sync.client import connect

    exe = chromium_binary()
    if exe is None:
        return None
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            # its own process group: Debian's launcher is a script, and the browser it
            # starts outlived a terminated launcher (orphans after every run)
            start_new_session=True)
        try:
            deadline = time.monotonic() + timeout_s
            port = None
            while port is None and time.monotonic() < deadline:
                line = proc.stderr.readline()
                if not line and proc.poll() is not None:
                    raise RuntimeError(f"{exe} exited with {proc.returncode}")
                m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
                port = int(m.group(1)) if m else None
            if port is None:
                raise TimeoutError(f"{exe} did not open its DevTools port in {timeout_s} s")
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            targets = json.loads(opener.open(f"http://127.0.0.1:{port}/json/list",
                                             timeout=10).read())
            page = next(t for t in targets if t.get("type") == "page")
            with connect(page["webSocketDebuggerUrl"], max_size=None,
                         open_timeout=10) as ws:
                ids = iter(range(1, 1_000_000))

                def call(method, **params):
                    n = next(ids)
                    ws.send(json.dumps({"id": n, "method": method, "params": params}))
                    while True:
                        msg = json.loads(ws.recv(timeout=max(1.0, deadline - time.monotonic())))
                        if msg.get("method") == "Page.loadEventFired":
                            loaded.append(True)
                        if msg.get("id") == n:
                            return msg.get("result", {})

                loaded: list[bool] = []
                call("Page.enable")
                call("Page.navigate", url=Path(index).resolve().as_uri())
                while not loaded:
                    msg = json.loads(ws.recv(timeout=max(1.0, deadline - time.monotonic())))
                    if msg.get("method") == "Page.loadEventFired":
                        loaded.append(True)
                js = ("JSON.stringify({title: document.title,"
                      " sections: Array.from(document.querySelectorAll('section.case'), s => s.id),"
                      " images: Array.from(document.images, i => ({src: i.getAttribute('src'),"
                      "   ok: i.complete && i.naturalWidth > 0, width: i.naturalWidth})),"
                      " links: Array.from(document.querySelectorAll('a'),"
                      "   a => a.getAttribute('href'))})")
                result = call("Runtime.evaluate", expression=js, returnByValue=True)
                out = json.loads(result["result"]["value"])
                out["browser"] = exe
                return out
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to ``proc``'s process group, SIGKILL after 10 s; returns when every
    process of the group is gone (the profile directory is removed after it)."""
    import os
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
