"""``temsims serve`` over a catalog directory and over PostgreSQL: tiled's API keys and
scopes (a write key stores, a read key reads but cannot write, no key cannot read), the
same round trip on both backends, runs seen from another process, the JSON API, and the
CLI passing ``--catalog URI --api-key KEY`` through (decision 0020)."""

from __future__ import annotations

import shutil
import subprocess

import bluesky.plans as bp
import httpx
import numpy as np
import pytest
from bluesky import RunEngine
from catalog_helpers import (
    DocumentLog,
    contract_md,
    counts_map_line,
    image_detector,
    read_in_another_process,
    spectrum_detector,
)
from ophyd.sim import SynSignal, det, motor

from temsims.catalog import open_catalog

pytestmark = pytest.mark.timeout(180)

SAMPLE = "served-li2co3"
#: What each backend's round trip read back, compared once both ran.
_READ_BACK: dict[str, list] = {}


def _status(excinfo) -> int | None:
    response = getattr(excinfo.value, "response", None)
    return getattr(response, "status_code", None)


def _write_runs(served) -> tuple[list[str], DocumentLog]:
    """Three runs (scalars, a 2-D image, a spectrum, int32 map lines) through the write key."""
    cat = open_catalog(served.uri, api_key=served.write_key)
    rng = np.random.default_rng(6)
    scalar = SynSignal(func=lambda: float(rng.normal()), name="scalar")
    log = DocumentLog()
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(log)
    RE.subscribe(cat.writer())
    try:
        md = contract_md(sample=SAMPLE, correlation_id=f"corr-{served.backend}")
        uids = [
            *RE(bp.count([scalar, image_detector(seed=3)], num=3), **md),
            *RE(bp.scan([spectrum_detector(seed=4)], motor, -1, 1, 4), **md),
            *RE(bp.count([counts_map_line(seed=5)], num=5), **dict(md, sample="other")),
        ]
        assert cat.flush(60)
    finally:
        cat.close(60)
    return uids, log


def test_round_trip_is_equal_on_sqlite_and_postgres(served, tmp_path, monkeypatch):
    """What the RunEngine emitted is what a read key reads back, in this process and in
    another one, on SQLite and on PostgreSQL alike (the same seeded detectors)."""
    import time

    t0 = time.monotonic()
    uids, log = _write_runs(served)
    wrote_s = time.monotonic() - t0
    reader = open_catalog(served.uri, api_key=served.read_key)
    seen = []
    try:
        t0 = time.monotonic()
        for uid in uids:
            run = reader.runs[uid]
            events = log.events(uid)
            assert len(events) > 0
            for key in sorted(events[0]["data"]):
                expected = np.stack([np.asarray(e["data"][key]) for e in events])
                got = np.asarray(run["primary"][key].read())
                np.testing.assert_array_equal(got, expected, err_msg=key)
                assert got.dtype == expected.dtype, key
                seen.append((run.metadata["start"]["sample"], key, got))
        assert sorted(reader.by_sample(SAMPLE)) == sorted(uids[:2])
        read_s = time.monotonic() - t0
    finally:
        reader.close()
    # And what one backend gave back is what the other did (the same seeded detectors).
    _READ_BACK[served.backend] = seen
    if len(_READ_BACK) == 2:
        a, b = _READ_BACK.values()
        assert [x[:2] for x in a] == [x[:2] for x in b]
        for (_, key, x), (_, _, y) in zip(a, b, strict=True):
            assert x.dtype == y.dtype and x.shape == y.shape, key
            np.testing.assert_array_equal(x, y, err_msg=key)
    print(f"\n{served.backend}: server ready in {served.ready_s:.1f} s (process start to ready "
          f"{served.start_s:.1f} s); 3 runs written in {wrote_s:.1f} s, read back in "
          f"{read_s:.1f} s")
    if served.backend == "sqlite":
        return
    # Another process finds them with the read key (tiled's TILED_API_KEY); ~10 s, so on
    # one backend (the session's writer process writes from another on the other).
    monkeypatch.setenv("TILED_API_KEY", served.read_key)
    report, arrays = read_in_another_process(
        served.uri, {"sample": ("by_sample", [SAMPLE])}, tmp_path)
    assert sorted(report["queries"]["sample"]) == sorted(uids[:2])
    for uid in uids:
        for key, value in log.events(uid)[0]["data"].items():
            np.testing.assert_array_equal(arrays[f"{uid}/{key}"][0], np.asarray(value))
    # The event tables are PostgreSQL's, not a file's.
    rows = served.postgres.execute(served.database, "SELECT count(*) FROM "
                                   "information_schema.tables WHERE table_name LIKE 'table_%'")
    assert rows[0][0] >= 3
    files = sorted(str(p.relative_to(served.directory)) for p in served.directory.rglob("*.db"))
    assert files == ["serve/auth.db"], files  # the keys' database only


@pytest.mark.filterwarnings("ignore:The callback .*RunNormalizer:UserWarning")  # the 401, expected
def test_read_key_reads_but_cannot_write(served):
    from tiled.client.utils import ClientError

    if not _has_runs(served):
        _write_runs(served)
    cat = open_catalog(served.uri, api_key=served.read_key)
    try:
        assert len(cat.runs) >= 1
        run = cat.latest()
        assert run.metadata["start"]["sample"] in (SAMPLE, "other")
        RE = RunEngine({}, call_returns_result=False)
        RE.subscribe(cat.writer(buffered=False))
        with pytest.raises(ClientError) as refused:
            RE(bp.count([det]), **contract_md(sample="not-stored"))
        assert _status(refused) in (401, 403), refused.value
        assert "write:metadata" in str(refused.value)
        with pytest.raises(ClientError) as refused:
            cat.runs.create_container("not-made")
        assert _status(refused) in (401, 403)
        with pytest.raises(ClientError) as refused:
            run.update_metadata({"start": dict(run.metadata["start"], sample="changed")})
        assert _status(refused) in (401, 403)
        assert not list(cat.by_sample("not-stored"))
    finally:
        cat.close()


def _has_runs(served) -> bool:
    response = httpx.get(f"{served.uri}/metadata/runs",
                         headers={"Authorization": f"Apikey {served.read_key}"}, timeout=30)
    response.raise_for_status()
    return response.json()["data"]["attributes"]["structure"]["count"] > 0


def test_no_key_or_a_wrong_key_cannot_read(served_sqlite, monkeypatch):
    served = served_sqlite
    monkeypatch.delenv("TILED_API_KEY", raising=False)
    for path in ("/metadata/", "/metadata/runs", "/search/runs", "/search/"):
        assert httpx.get(served.uri + path, timeout=30).status_code == 401, path
        wrong = httpx.get(served.uri + path, timeout=30,
                          headers={"Authorization": "Apikey " + "0" * 72})
        assert wrong.status_code == 401, path
    from tiled.client import from_uri

    with pytest.raises(Exception) as refused:  # noqa: B017 - tiled's CannotPrompt or 401
        from_uri(served.uri)
    assert "API key" in str(refused.value) or _status(refused) == 401


def test_json_api_and_web_ui_list_a_runs_sample(served_sqlite, tmp_path):
    """The server's JSON API (what tiled's web UI and any HTTP client read) shows a run's
    sample to a read key; where Chromium is installed, headless Chromium shows it too
    (the JSON page) and tiled's web UI, rendered, lists the run."""
    served = served_sqlite
    if not _has_runs(served):
        _write_runs(served)
    headers = {"Authorization": f"Apikey {served.read_key}", "Accept": "application/json"}
    found = httpx.get(f"{served.uri}/search/runs", headers=headers, timeout=30,
                      params={"filter[eq][condition][key]": "start.sample",
                              "filter[eq][condition][value]": f'"{SAMPLE}"',
                              "fields": "metadata"})
    found.raise_for_status()
    runs = found.json()["data"]
    assert runs and {r["attributes"]["metadata"]["start"]["sample"] for r in runs} == {SAMPLE}
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: the JSON API was checked without a browser")

    def dump_dom(url: str) -> str:  # a new profile each time: no cookie carried over
        profile = tmp_path / f"chromium-{len(list(tmp_path.iterdir()))}"
        done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                               f"--user-data-dir={profile}", "--virtual-time-budget=15000",
                               "--dump-dom", url],
                              capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    page = dump_dom(f"{served.uri}/search/runs?fields=metadata&api_key={served.read_key}")
    assert f'"sample":"{SAMPLE}"' in page.replace(" ", ""), page[:2000]
    base = served.uri.rsplit("/api/", 1)[0]
    ui = dump_dom(f"{base}/ui/browse/runs?api_key={served.read_key}")
    assert any(r["id"] in ui for r in runs), ui[-3000:]
    # Without a key the UI gets no runs to list.
    assert not any(r["id"] in dump_dom(f"{base}/ui/browse/runs") for r in runs)


@pytest.fixture
def restored_environ():
    """os.environ as it was before the test (the session and ``temsims shell`` set the
    Channel Access client's variables, which later tests of this worker must not see)."""
    import os

    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_session_writes_with_the_api_key_from_the_environment(served_sqlite, tmp_path,
                                                             restored_environ):
    """``temsims shell --catalog URI --api-key KEY`` sets TEMSIMS_CATALOG and TILED_API_KEY:
    the session's catalog and its writer process use the key."""
    import os

    from temsims.app.session import configure_session

    served = served_sqlite
    os.environ["TILED_API_KEY"] = served.write_key
    ns: dict = {}
    session = configure_session(ns, catalog=served.uri, connect_devices=False, bec=False,
                                md_dir=tmp_path / "md", magics=False, pbar=False)
    try:
        (uid,) = ns["RE"](bp.count([SynSignal(func=lambda: 2.5, name="fixed")], num=2),
                          **contract_md(sample="from-session"))
        assert session.catalog.flush(60)
    finally:
        session.close()
    reader = open_catalog(served.uri, api_key=served.read_key)
    try:
        run = reader.runs[uid]
        assert run.metadata["start"]["sample"] == "from-session"
        np.testing.assert_array_equal(run["primary"]["fixed"].read(), [2.5, 2.5])
    finally:
        reader.close()


def test_cli_passes_catalog_and_api_key_through(monkeypatch, restored_environ, tmp_path,
                                                capsys):
    """``temsims demo`` and ``temsims shell`` hand ``--catalog`` and ``--api-key`` on;
    ``temsims serve`` refuses --data for a directory, PostgreSQL without it, and a port
    in use (at once, exit 1)."""
    import os

    import temsims.app.demo as demo
    from temsims.app import cli

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda **kw: seen.update(kw))
    uri = "http://127.0.0.1:1/api/v1"
    assert cli.main(["demo", "--catalog", uri, "--api-key", "abc123"]) == 0
    assert seen["catalog"] == uri and seen["api_key"] == "abc123"

    import IPython

    import temsims.profile as profile

    monkeypatch.setattr(IPython, "start_ipython", lambda argv: seen.update(argv=argv))
    monkeypatch.setattr(profile, "install_profile", lambda ipython_dir: None)
    assert cli.main(["shell", "--catalog", uri, "--api-key", "def456"]) == 0
    assert os.environ["TEMSIMS_CATALOG"] == uri and os.environ["TILED_API_KEY"] == "def456"

    assert cli.main(["serve", "/tmp/x", "--data", "/tmp/y", "--port", "0"]) == 2
    assert cli.main(["serve", "postgresql://u@127.0.0.1:1/db", "--port", "0"]) == 2
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", str(tmp_path / "cat"), "--port", str(port)]) == 1
    assert "cannot listen on" in capsys.readouterr().err


def test_keys_are_kept_replaced_and_revoked(tmp_path):
    """Keys survive a restart; a deleted key file gets a new key (the old one no longer
    valid); a reader no longer named loses its key and file."""
    import asyncio
    import hashlib

    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import create_async_engine
    from tiled.authn_database import orm

    from temsims.catalog.serve import READ_SCOPES, WRITE_SCOPES, ensure_keys

    state = tmp_path / "serve"
    auth_uri, keys = ensure_keys(state, ["alice", "bob"])
    first = {name: key.read() for name, key in keys.items()}
    assert set(first) == {"write", "read-alice", "read-bob"}
    assert (state / "write.key").stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700

    def stored() -> dict[str, tuple]:
        async def rows():
            engine = create_async_engine(auth_uri.replace("sqlite://", "sqlite+aiosqlite://"))
            async with engine.connect() as conn:
                result = (await conn.execute(select(orm.APIKey.note, orm.APIKey.hashed_secret,
                                                    orm.APIKey.scopes))).all()
            await engine.dispose()
            return {note.split(": ", 1)[1]: (hashed, tuple(scopes))
                    for note, hashed, scopes in result}
        return asyncio.run(rows())

    def digest(secret: str) -> bytes:
        return hashlib.sha256(bytes.fromhex(secret)).digest()

    db = stored()
    assert db["write"] == (digest(first["write"]), WRITE_SCOPES)
    assert db["read-alice"] == (digest(first["read-alice"]), READ_SCOPES)

    _, keys = ensure_keys(state, ["alice", "bob"])
    assert {name: key.read() for name, key in keys.items()} == first
    (state / "read-alice.key").unlink()
    _, keys = ensure_keys(state, ["alice"])
    assert keys["read-alice"].read() != first["read-alice"]
    assert not (state / "read-bob.key").exists()
    db = stored()
    assert set(db) == {"write", "read-alice"}
    assert db["read-alice"][0] == digest(keys["read-alice"].read())
    assert db["write"][0] == digest(first["write"])
