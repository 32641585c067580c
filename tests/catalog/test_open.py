"""Opening a catalog directory: one server process per directory, shared by every
process that opens it, started on demand (forked by the catalog host), stopped once
its last client is gone; the thread-served mode still works (decision 0014)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from catalog_helpers import contract_md
from ophyd.sim import SynSignal, det

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


LEAN_HOST_IMPORTS = textwrap.dedent("""
    import json, sys
    from temsims.catalog import deferred_imports, server
    lean = deferred_imports.HOST.applies()
    server._server_stack()
    data_libraries = ("pandas", "dask.dataframe", "dask.array", "xarray", "sparse", "awkward")
    before = [name for name in data_libraries if name in sys.modules]
    while not server._warm_import():
        pass
    import tiled.adapters.protocols as protocols, tiled.adapters.utils as utils
    print(json.dumps({"lean": lean, "before": before,
                      "after": [name for name in data_libraries if name in sys.modules],
                      "bound": [protocols.pandas is sys.modules["pandas"],
                                protocols.dask.dataframe is sys.modules["dask.dataframe"],
                                utils.dask.array is sys.modules["dask.array"]]}))
""")


def test_the_host_listens_before_importing_the_data_libraries():
    """The catalog host imports tiled's server stack without pandas, dask, xarray,
    sparse and awkward (1.1-1.5 s of its 2.7 s start), then imports them while idle
    and binds them where tiled's modules expect them (decision 0014's amendment)."""
    out = subprocess.run([sys.executable, "-c", LEAN_HOST_IMPORTS], capture_output=True,
                         text=True, timeout=300, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["lean"], "tiled is not the version deferred_imports was checked against"
    assert seen["before"] == []
    assert seen["after"] == ["pandas", "dask.dataframe", "dask.array", "xarray", "sparse", "awkward"]
    assert seen["bound"] == [True, True, True]


COLD_HOST_ROUND_TRIP = textwrap.dedent("""
    import json, sys
    import bluesky.plans as bp
    import numpy as np
    from bluesky import RunEngine
    from ophyd.sim import SynSignal, det
    sys.path.insert(0, sys.argv[2])
    from catalog_helpers import contract_md
    from temsims.catalog import open_catalog, stop_catalog_host
    try:
        cat = open_catalog(sys.argv[1])  # starts this test's own catalog host
        image = SynSignal(func=lambda: np.arange(12, dtype=np.int32).reshape(3, 4), name="image")
        RE = RunEngine({}, call_returns_result=False)
        writer = cat.writer()
        RE.subscribe(writer)
        (uid,) = RE(bp.count([det, image], num=2), **contract_md(sample="cold"))
        writer.close(timeout=120)
        run = cat.runs[uid]
        print(json.dumps({
            "images": run["primary"]["image"].read().tolist(),
            "det": run["primary"]["det"].read().tolist(),
            "documents": [name for name, _ in run.documents()],
            "found": len(cat.by_sample("cold")),
        }))
        cat.close()
    finally:
        stop_catalog_host()
""")


def test_a_server_forked_before_the_hosts_warm_imports_stores_and_replays(tmp_path):
    """A new catalog host forks its first server before it imported pandas, dask and
    the exporters: that server imports them when its first run is stored and read."""
    # A private catalog host, started by the child; short path: its unix socket's
    # path must fit in 108 bytes, which pytest's tmp_path does not leave room for.
    runtime = Path(tempfile.mkdtemp(prefix="temsims-rt-"))  # mode 0700
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    env.pop("TEMSIMS_CATALOG_HOST_IDLE_S", None)
    helpers = str(Path(__file__).resolve().parent)
    try:
        out = subprocess.run([sys.executable, "-c", COLD_HOST_ROUND_TRIP,
                              str(tmp_path / "catalog"), helpers],
                             capture_output=True, text=True, timeout=300, env=env)
        host_log = next(runtime.glob("temsims-*/catalog-host-*/host.log")).read_text()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:] + host_log[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    image = np.arange(12, dtype=np.int32).reshape(3, 4).tolist()
    assert seen["images"] == [image, image]
    assert seen["det"] == [1.0, 1.0]
    assert seen["documents"] == ["start", "descriptor", "event", "event", "stop"]
    assert seen["found"] == 1
    # forked before the warm imports (which the host may not have finished when stopped)
    assert " serves " in host_log
    warm = host_log.find("warm imports done")
    assert warm == -1 or warm > host_log.index(" serves ")


#: Imported by bluesky-tiled-plugins' run classes but only for reading data (decision
#: 0014's amendment "the opener's reader imports, lean").
READ_ONLY_IMPORTS = ("dask.array", "dask.dataframe", "sparse", "numba", "sqlalchemy", "xarray",
                     "pandas", "pyarrow", "tiled.client.array", "tiled.client.dataframe",
                     "bluesky_tiled_plugins.writing.validator", "bluesky_tiled_plugins.streaming")

LEAN_READER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[2])
    from temsims.catalog import deferred_imports, open_catalog
    heavy = json.loads(sys.argv[3])
    cat = open_catalog(sys.argv[1])
    seen = {"runs": len(cat), "sample": cat[-1].metadata["start"]["sample"],
            "deferred": deferred_imports.READER.wanted(),
            "after_look": [name for name in heavy if name in sys.modules]}
    run = cat[-1]
    dataset = run.primary.read()  # xarray, through the stream's deferred reference
    seen["det"] = dataset["det"].values.tolist()
    seen["image"] = dataset["image"].values.tolist()
    seen["image_node"] = run["primary"]["image"].read().tolist()  # tiled's array client
    seen["documents"] = [name for name, _ in run.documents()]
    seen["valid"] = run.validate(fix_errors=False, write_notes=False)  # the validator
    # The writer (TiledWriter: pyarrow, the table client) and a query, in this process.
    import event_model
    import numpy as np
    from catalog_helpers import contract_md
    write = cat.writer(buffered=False)
    bundle = event_model.compose_run(metadata=contract_md(sample="written-lean"))
    write("start", bundle.start_doc)
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "det": {"source": "sim", "dtype": "number", "shape": []},
        "image": {"source": "sim", "dtype": "array", "shape": [2, 3], "dtype_numpy": "<i4"}})
    write("descriptor", desc.descriptor_doc)
    for _ in range(2):
        data = {"det": 1.0, "image": np.full((2, 3), 7, dtype=np.int32)}
        write("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, 0.0)))
    write("stop", bundle.compose_stop())
    uid = bundle.start_doc["uid"]
    seen["written"] = cat.runs[uid].primary.read()["image"].values.tolist()
    seen["found"] = len(cat.by_sample("written-lean"))
    import bluesky_tiled_plugins
    seen["isinstance"] = isinstance(object(), bluesky_tiled_plugins.BlueskyStreamUpdate)
    deferred_imports.READER.finish()
    from bluesky_tiled_plugins.clients import bluesky_event_stream, bluesky_run
    from bluesky_tiled_plugins.writing import tiled_writer
    seen["bound"] = [bluesky_event_stream.xarray is sys.modules["xarray"],
                     tiled_writer.DataFrameClient is sys.modules["tiled.client.dataframe"].DataFrameClient,
                     bluesky_run.ValidationException is sys.modules[
                         "bluesky_tiled_plugins.writing.validator"].ValidationException,
                     bluesky_tiled_plugins.subscribe_to_streams is sys.modules[
                         "bluesky_tiled_plugins.streaming"].subscribe_to_streams]
    print(json.dumps(seen))
    cat.close()
""")


def test_the_first_look_leaves_the_data_libraries_unimported(tmp_path):
    """A fresh interpreter's ``open_catalog`` and first look at the runs import
    bluesky-tiled-plugins' run classes without xarray, pandas, dask's arrays and tables
    (sparse, numba), SQLAlchemy or the validator; reading, replaying, validating and
    writing then import them where they are used, and return the stored data."""
    directory = tmp_path / "catalog"
    cat = open_catalog(directory)
    try:
        image = SynSignal(func=lambda: np.arange(12, dtype=np.float32).reshape(3, 4), name="image")
        RE = RunEngine({}, call_returns_result=False)
        writer = cat.writer()
        RE.subscribe(writer)
        # Not ophyd.sim's det: it reads the shared sim motor, which another test of
        # this worker may have moved (it read 0.607 once).
        level = SynSignal(func=lambda: 1.0, name="det")
        RE(bp.count([level, image], num=2), **contract_md(sample="first-look"))
        writer.close(timeout=60)
        helpers = str(Path(__file__).resolve().parent)
        out = subprocess.run([sys.executable, "-c", LEAN_READER, str(directory), helpers,
                              json.dumps(READ_ONLY_IMPORTS)],
                             capture_output=True, text=True, timeout=300)
    finally:
        cat.close()
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["deferred"], "tiled or bluesky-tiled-plugins is not the release READER was read in"
    assert seen["runs"] == 1 and seen["sample"] == "first-look"
    assert seen["after_look"] == []
    image = np.arange(12, dtype=np.float32).reshape(3, 4).tolist()
    assert seen["image"] == seen["image_node"] == [image, image]
    assert seen["det"] == [1.0, 1.0]
    assert seen["documents"] == ["start", "descriptor", "event", "event", "stop"]
    assert seen["valid"] is True
    assert seen["written"] == [np.full((2, 3), 7).tolist()] * 2
    assert seen["found"] == 1
    assert seen["isinstance"] is False
    assert seen["bound"] == [True, True, True, True]
