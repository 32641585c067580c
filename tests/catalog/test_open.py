"""Opening a catalog directory: one server process per directory, shared by every
process that opens it, started on demand (forked by the catalog host), stopped once
its last client is gone; the thread-served mode still works (decision 0014)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from catalog_helpers import contract_md
from ophyd.sim import det

import temsims.catalog.server as catalog_server
from temsims.catalog import DirectoryServer, EmbeddedServer, open_catalog

OPEN_AND_REPORT = textwrap.dedent("""
    import json, sys
    from temsims.catalog import open_catalog
    cat = open_catalog(sys.argv[1])
    print(json.dumps({"pid": cat.server.pid, "runs": len(cat.runs)}))
    cat.close()
""")


def _open_elsewhere(directory, timeout: float = 120) -> dict:
    """Open ``directory`` in a new interpreter; what it saw."""
    out = subprocess.run([sys.executable, "-c", OPEN_AND_REPORT, str(directory)],
                         capture_output=True, text=True, timeout=timeout, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wait_gone(pid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _store_a_run(cat, sample: str) -> str:
    RE = RunEngine({}, call_returns_result=False)
    writer = cat.writer()
    RE.subscribe(writer)
    (uid,) = RE(bp.count([det], num=2), **contract_md(sample=sample))
    writer.close(timeout=60)
    return uid


@pytest.mark.slow
def test_processes_share_the_directory_server(tmp_path):
    directory = tmp_path / "catalog"
    cat = open_catalog(directory)
    try:
        server = cat.server
        assert isinstance(server, DirectoryServer)
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.pid != os.getpid()
        assert json.loads((directory / "server.json").read_text())["pid"] == server.pid
        uid = _store_a_run(cat, "shared")
        seen = _open_elsewhere(directory)
        assert seen["pid"] == server.pid  # the same server, not one per process
        assert seen["runs"] == 1
        assert server.alive  # the other process's close did not stop it
        assert cat.runs[uid].metadata["start"]["sample"] == "shared"
    finally:
        cat.close()


@pytest.mark.slow
def test_concurrent_first_opens_start_one_server(tmp_path):
    directory = tmp_path / "catalog"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AND_REPORT, str(directory)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    reports = []
    for proc in procs:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert reports[0]["pid"] == reports[1]["pid"]
    assert reports[0]["runs"] == reports[1]["runs"] == 0


@pytest.mark.slow
def test_server_stops_after_its_last_client_and_restarts_on_demand(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog_server, "SERVER_LINGER_S", 0.5)  # sent with the request
    directory = tmp_path / "catalog"
    cat = open_catalog(directory)
    pid = cat.server.pid
    uid = _store_a_run(cat, "persisted")
    cat.close()
    assert _wait_gone(pid), "the server outlived its last client"
    assert not (directory / "server.json").exists()
    assert "no client for 0.5 s; stopping" in (directory / "server.log").read_text()
    again = open_catalog(directory)
    try:
        assert again.server.pid != pid
        assert list(again.runs) == [uid]
    finally:
        again.close()


@pytest.mark.slow
def test_a_dead_server_is_replaced(tmp_path):
    directory = tmp_path / "catalog"
    cat = open_catalog(directory)
    pid = cat.server.pid
    os.kill(pid, signal.SIGKILL)  # the server this test started
    assert _wait_gone(pid)
    assert not cat.server.alive
    again = open_catalog(directory)  # server.json names a dead process
    try:
        assert again.server.pid != pid and again.server.alive
        assert len(again.runs) == 0
    finally:
        again.close()
        cat.close()


def test_an_api_key_override_gets_a_server_of_its_own(tmp_path):
    directory = tmp_path / "catalog"
    cat = open_catalog(directory)
    other = open_catalog(directory, api_key="0123456789abcdef0123456789abcdef")
    try:
        assert other.server.pid != cat.server.pid
        assert other.server.api_key != cat.server.api_key
        uid = _store_a_run(other, "override")
        assert list(cat.runs) == [uid]  # same files
        # the directory's record still names the server of the directory's own key
        assert json.loads((directory / "server.json").read_text())["pid"] == cat.server.pid
    finally:
        other.close()
        cat.close()


def test_thread_served_catalog(tmp_path):
    """``server_process=False``: the server on a thread of this process (no host, no
    lease), the same files and features, ``documents()`` included."""
    directory = tmp_path / "catalog"
    cat = open_catalog(directory, server_process=False)
    try:
        assert isinstance(cat.server, EmbeddedServer)
        uid = _store_a_run(cat, "thread")
        names = [name for name, _ in cat.runs[uid].documents()]
        assert names == ["start", "descriptor", "event", "event", "stop"]
    finally:
        cat.close()
    assert not (directory / "server.json").exists()
