"""The document stream over 0MQ (issue 13, part 2): a session publishes, other processes
view and store.

One module-scoped experiment on the shared instrument: a real proxy
(``temsims view --start-proxy``), two subscribers started before the runs in
processes of their own (``temsims view --headless``, and ``temsims view --store DIR
--no-views``), then in this process a session (``configure_session(publish=...)``)
runs a TEM image and a fly ``sims_map`` with the in-session headless live views
(SIMS map, ratio, overlay on that image). The tests compare what the other processes
received, drew and stored with what this RunEngine emitted and drew.
"""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from temsims.app.stream import parse_address, publish_address, start_proxy

pytestmark = pytest.mark.timeout(180)

RUNS = 2  # tem_image, sims_map
MAP_PIXELS = (48, 32)


def _view(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "temsims.app.cli", "view", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def _wait_subscribed(proc: subprocess.Popen, timeout_s: float = 60.0) -> str:
    """The subscriber's 'subscribed' line: its 0MQ handshake with the proxy is done."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if sel.select(timeout_s):
            line = proc.stdout.readline()
            if "subscribed to" in line:
                return line
    proc.kill()
    out, err = proc.communicate(timeout=10)
    raise AssertionError(f"temsims view did not subscribe: {out!r} {err[-2000:]!r}")


def _finish(proc: subprocess.Popen, timeout_s: float = 120.0) -> str:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"temsims view did not end after {RUNS} runs: {out!r} "
                             f"{err[-2000:]!r}") from None
    assert proc.returncode == 0, (out, err[-3000:])
    return out


class Emitted:
    """What the RunEngine emitted, in order: (name, uid) and each page's event uids."""

    def __init__(self) -> None:
        self.docs: list[tuple[str, dict]] = []

    def __call__(self, name: str, doc: dict) -> None:
        self.docs.append((name, doc))

    def identities(self) -> list[tuple[str, object]]:
        return [(n, tuple(d["uid"]) if n == "event_page" else d["uid"]) for n, d in self.docs]


def _recorded(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def streamed(instruments, tmp_path_factory):
    """The experiment of the module docstring; what each side saw."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from instrument_support import connect_fast

    from temsims.app.session import configure_session
    from temsims.callbacks.live import LiveFusedOverlay, LiveRatioMap, LiveSimsMap
    from temsims.ioc.physics.specimen import build_specimen
    from temsims.plans import sims_map, tem_image, to_sims_mode

    tmp = tmp_path_factory.mktemp("stream")
    procs = instruments.get(specimen="li2co3-particles", seed=1)
    d = connect_fast(procs, camera_size=64)
    particle = max((p for p in build_specimen("li2co3-particles", 1).truth["particles"]
                    if p["labelled"]), key=lambda p: p["radius_nm"])
    x_um, y_um = particle["x_nm"] / 1000.0, particle["y_nm"] / 1000.0

    proxy = start_proxy()
    viewer = store = session = None
    try:
        viewer = _view("--connect", proxy.out_address, "--headless", "--out",
                       str(tmp / "viewer"), "--runs", str(RUNS), "--record",
                       str(tmp / "viewer.jsonl"))
        store = _view("--connect", proxy.out_address, "--no-views", "--store",
                      str(tmp / "catalog"), "--runs", str(RUNS), "--record",
                      str(tmp / "store.jsonl"))
        _wait_subscribed(viewer)
        _wait_subscribed(store)

        ns: dict = {}
        session = configure_session(ns, catalog="none", connect_devices=False, bec=False,
                                    pbar=False, magics=False, md_dir=tmp / "md",
                                    publish=proxy.in_address)
        RE = ns["RE"]
        RE.md.update({"sample": "stream-test", "specimen": "li2co3-particles",
                      "operator": "pytest"})
        emitted = Emitted()
        RE.subscribe(emitted)

        RE(tem_image(d.stage, d.tem, d.camera, x_um=x_um, y_um=y_um, fov_um=4.0,
                     exposure_s=0.05, md={"correlation_id": "stream-cid"}))
        tem_docs = list(emitted.docs)
        RE(to_sims_mode(d.mode, voltage_v=4500.0))
        common = dict(headless=True, use_teleporter=False)
        views = {"sims": LiveSimsMap(png_path=tmp / "session-sims.png", **common),
                 "ratio": LiveRatioMap("6Li", "7Li", png_path=tmp / "session-ratio.png",
                                       **common),
                 "overlay": LiveFusedOverlay.from_run(
                     tem_docs, png_path=tmp / "session-overlay.png", **common)}
        RE(sims_map(d.imager, d.spectrometer, d.column, d.stage, d.bias,
                    species=("6Li", "7Li"), fov_um=1.5, pixels=MAP_PIXELS, dwell_s=2e-3,
                    fly=True, md={"correlation_id": "stream-cid"}), list(views.values()))
        viewer_out, store_out = _finish(viewer), _finish(store)
        yield {"emitted": emitted, "tmp": tmp, "views": views, "viewer_out": viewer_out,
               "store_out": store_out, "viewer": _recorded(tmp / "viewer.jsonl"),
               "store": _recorded(tmp / "store.jsonl")}
    finally:
        for proc in (viewer, store):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        if session is not None:
            session.close()
        proxy.stop()


def test_viewer_in_another_process_receives_every_document(streamed):
    emitted = streamed["emitted"]
    sent = emitted.identities()
    names = [n for n, _ in sent]
    assert names.count("start") == names.count("stop") == RUNS
    assert "event_page" in names  # the fly map's lines come as pages
    for side in ("viewer", "store"):
        got = [(r["name"], tuple(r["uids"]) if r["name"] == "event_page" else r["uid"])
               for r in streamed[side]]
        assert got == sent, side  # every document, in the order emitted
    events = sum(len(u) if n == "event_page" else n == "event" for n, u in sent)
    print(f"\n{len(sent)} documents ({events} events, {names.count('event_page')} pages) of "
          f"{RUNS} runs through the proxy; "
          f"viewer: {streamed['viewer_out'].splitlines()[-1]}")
    assert events == 1 + MAP_PIXELS[1]  # one TEM image, one event per map line


@pytest.mark.parametrize("kind", ["sims", "ratio", "overlay"])
def test_viewer_png_equals_the_in_session_one(streamed, kind):
    import matplotlib.image as mpimg

    tmp = streamed["tmp"]
    start = next(d for n, d in streamed["emitted"].docs
                 if n == "start" and d["plan_name"] == "sims_map")
    ours = tmp / f"session-{kind}.png"
    theirs = tmp / "viewer" / f"{start['scan_id']}-{start['uid'][:8]}-{kind}.png"
    assert streamed["views"][kind].saved == [ours]
    assert f"wrote {theirs}" in streamed["viewer_out"]
    a, b = mpimg.imread(ours), mpimg.imread(theirs)
    assert a.shape == b.shape and a.shape[0] > 100
    assert float(a[..., :3].std()) > 0.05  # a picture, not a blank canvas
    np.testing.assert_array_equal(a, b)  # pixel for pixel


def test_stream_writer_stored_the_runs_as_emitted(streamed):
    from temsims.catalog import open_catalog

    emitted = streamed["emitted"].docs
    cat = open_catalog(streamed["tmp"] / "catalog")
    try:
        for start in (d for n, d in emitted if n == "start"):
            run = cat[start["uid"]]
            stored = [(n, dict(doc)) for n, doc in run.documents()]
            ours = [(n, d) for n, d in emitted
                    if d.get("run_start", d.get("uid")) == start["uid"]
                    or (n in ("event", "event_page") and d["descriptor"] in
                        {x["uid"] for m, x in emitted
                         if m == "descriptor" and x["run_start"] == start["uid"]})]
            from event_model import unpack_event_page

            flat = []
            for n, doc in ours:
                flat += [("event", e) for e in unpack_event_page(doc)] \
                    if n == "event_page" else [(n, doc)]
            assert [n for n, _ in stored] == [n for n, _ in flat]
            assert stored[0][1]["uid"] == start["uid"]
            assert stored[0][1]["plan_name"] == start["plan_name"]
            assert stored[-1][1]["uid"] == flat[-1][1]["uid"]  # the stop
            assert stored[-1][1]["exit_status"] == "success"
            for (_, back), (_, doc) in zip(stored, flat, strict=True):
                if "seq_num" in doc:  # events: the data, key by key
                    assert back["seq_num"] == doc["seq_num"]
                    for key, value in doc["data"].items():
                        np.testing.assert_array_equal(
                            np.asarray(back["data"][key], dtype=np.asarray(value).dtype),
                            np.asarray(value), err_msg=key)
    finally:
        cat.close()
    assert "temsims view: " in streamed["store_out"]


# ============================================================================ no instrument
def test_addresses_parse_or_say_why():
    assert parse_address("127.0.0.1:5577") == ("127.0.0.1", 5577)
    assert parse_address("tcp://localhost:5578") == ("localhost", 5578)
    assert parse_address("[::1]:5577") == ("::1", 5577)
    assert parse_address("127.0.0.1:0", allow_zero=True) == ("127.0.0.1", 0)
    for bad in ("5577", "127.0.0.1", "127.0.0.1:0", "host:70000", "a b:1", ""):
        with pytest.raises(ValueError, match="HOST:PORT|port must be"):
            parse_address(bad)


def test_publish_address_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("TEMSIMS_ZMQ_PUBLISH", "127.0.0.1:5577")
    assert publish_address(None) == "127.0.0.1:5577"
    assert publish_address("none") is None  # off even with the variable set
    assert publish_address("127.0.0.1:6000") == "127.0.0.1:6000"
    monkeypatch.delenv("TEMSIMS_ZMQ_PUBLISH")
    assert publish_address(None) is None


def test_view_refuses_bad_input_clearly(capsys):
    import socket

    from temsims.app.cli import main

    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert main(["view", "--connect", f"127.0.0.1:{port}", "--headless"]) == 1
    err = capsys.readouterr().err
    assert f"no 0MQ proxy answers at 127.0.0.1:{port}" in err and "--start-proxy" in err
    assert main(["view", "--connect", "localhost"]) == 2
    assert "is not HOST:PORT" in capsys.readouterr().err
    assert main(["view", "--ratio", "6Li"]) == 2
    assert "NUM/DEN" in capsys.readouterr().err
    assert main(["view", "--no-views"]) == 2
    assert "would do nothing" in capsys.readouterr().err
