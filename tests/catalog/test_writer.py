"""The buffered writer: never blocks the RunEngine, validates, reports errors, loses nothing."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import bluesky.plans as bp
import event_model
import numpy as np
import pytest
from catalog_helpers import DocumentLog, contract_md, image_detector, sims_md
from ophyd.sim import det

from temsims.callbacks.storage import (
    BufferedWriter,
    InvalidDocument,
    StorageError,
    validate_document,
)
from temsims.catalog import MetadataError, check_start_metadata, open_catalog, require_metadata


def _compose_run(n_events: int = 3):
    """A small valid run as a list of documents (event-model's composer)."""
    run = event_model.compose_run(metadata=contract_md())
    bundle = run.compose_descriptor(
        name="primary",
        data_keys={"x": {"dtype": "number", "shape": [], "source": "sim", "dtype_numpy": "<f8"},
                   "img": {"dtype": "array", "shape": [4, 3], "source": "sim",
                           "dtype_numpy": "<f4", "dims": ["y", "x"]}},
    )
    docs = [("start", run.start_doc), ("descriptor", bundle.descriptor_doc)]
    for i in range(n_events):
        docs.append(("event", bundle.compose_event(
            data={"x": float(i), "img": np.full((4, 3), i, np.float32)},
            timestamps={"x": time.time(), "img": time.time()}, seq_num=i + 1)))
    docs.append(("stop", run.compose_stop()))
    return docs


# ----------------------------------------------------------------- never blocks


def test_runengine_never_waits_on_a_slow_callback(RE):
    """A callback taking 20 ms per document adds nothing to the RunEngine's time.

    Compared with the same scan and no writer in the same test (CI machines are shared:
    an absolute bound on the scan's own time failed once under load).
    """
    received = []

    def slow(name, doc):
        time.sleep(0.02)
        received.append((name, doc["uid"]))

    t0 = time.perf_counter()
    RE(bp.count([det], num=40))
    baseline = time.perf_counter() - t0

    writer = BufferedWriter(slow)
    log = DocumentLog()
    RE.subscribe(log)
    RE.subscribe(writer)
    t0 = time.perf_counter()
    RE(bp.count([det], num=40))
    re_time = time.perf_counter() - t0
    n_docs = len(log.docs)
    assert n_docs == 43
    synchronous = n_docs * 0.02  # what a writer on the RunEngine's thread would add: 0.86 s
    assert re_time - baseline < 0.25 * synchronous, (re_time, baseline)
    assert writer.stats.put_blocked_s == 0
    assert writer.stats.call_s / n_docs < 2e-3
    assert writer.flush(timeout=30)
    assert received == [(n, d["uid"]) for n, d in log.docs]  # all, in order
    assert writer.stats.write_s >= 0.95 * synchronous  # the 0.86 s went to the writer thread
    writer.close()


# ----------------------------------------------------------------- validation


def test_invalid_documents_are_refused_and_not_stored(catalog):
    writer = catalog.writer()
    docs = _compose_run(n_events=3)
    with pytest.raises(InvalidDocument, match="missing required key"):
        writer("start", {"time": time.time()})  # no uid
    with pytest.raises(InvalidDocument, match="unknown document name"):
        writer("frobnicate", {"uid": "x"})
    with pytest.raises(InvalidDocument, match="'time' is str"):
        writer("start", {"uid": "u-1", "time": "yesterday"})
    for name, doc in docs[:-1]:
        writer(name, doc)
    with pytest.raises(InvalidDocument, match="missing required key"):
        writer("event", {k: v for k, v in docs[2][1].items() if k != "data"})
    with pytest.raises(InvalidDocument, match="'filled' must map"):
        writer("event", dict(docs[3][1], uid="bad-event", seq_num=99, filled={"img": 3}))
    writer("stop", docs[-1][1])
    assert writer.flush(timeout=30)
    run = catalog.runs[docs[0][1]["uid"]]
    seq = run["primary"]["seq_num"].read()
    np.testing.assert_array_equal(seq, [1, 2, 3])  # the bad event is not stored
    assert run.metadata["stop"]["exit_status"] == "success"
    assert [u for u in catalog.runs] == [docs[0][1]["uid"]]  # the refused starts are not


def test_full_schema_check_in_the_thread_refuses_and_reports():
    """What passes the caller's quick check but not the schema is refused before storing."""
    stored = []
    writer = BufferedWriter(lambda n, d: stored.append(n))
    docs = _compose_run(n_events=1)
    page = event_model.pack_event_page(docs[2][1])
    for name, doc in docs[:2]:
        writer(name, doc)
    writer("event_page", dict(page, time=["not a number"]))
    with pytest.raises(InvalidDocument, match="time"):
        writer(*docs[3])  # the stop: queued, then the thread's refusal is reported
        writer.flush(timeout=10)
    writer.close()
    assert stored == ["start", "descriptor", "stop"]


def test_validate_document_uses_event_model_schemas():
    docs = _compose_run(1)
    for name, doc in docs:
        validate_document(name, doc)
    with pytest.raises(InvalidDocument, match="exit_status"):
        validate_document("stop", dict(docs[-1][1], exit_status="meh"))


def test_check_start_metadata_lists_every_problem():
    plan = {"plan_name": "count", "plan_args": {"num": 1}}
    assert check_start_metadata(dict(contract_md(), **plan)) == []
    assert check_start_metadata(dict(sims_md(), **plan)) == []
    # the plan adds plan_name and plan_args; metadata alone lacks them
    assert check_start_metadata(contract_md()) == ["missing 'plan_name'", "missing 'plan_args'"]
    problems = check_start_metadata({"mode": "SIMS", "region": {"x_um": 0}, "bias_kV": -4.5,
                                     "polarity": "positive", "collectors": [{"name": "C1"}]})
    text = "\n".join(problems)
    for expected in ("missing 'sample'", "missing 'correlation_id'", "'region' misses 'fov_um'",
                     "collectors[0] needs 'species'", "sign mismatch",
                     "SIMS run missing 'beam_current_pA'"):
        assert expected in text, expected


def test_require_metadata_refuses_a_run_before_any_document(RE):
    require_metadata(RE)
    log = DocumentLog()
    RE.subscribe(log)
    with pytest.raises(MetadataError, match="missing 'operator'"):
        RE(bp.count([det]), **{k: v for k, v in contract_md().items() if k != "operator"})
    assert log.docs == []
    RE(bp.count([det]), **sims_md())
    start = log.docs[0][1]
    assert start["plan_name"] == "count" and start["species_index"]["7Li"] is True


# ----------------------------------------------------------------- errors


def test_a_write_error_is_logged_at_once_and_raised_on_the_next_document(caplog):
    docs = _compose_run(n_events=5)
    failing_uid = docs[3][1]["uid"]
    failed = threading.Event()
    stored = []

    def flaky(name, doc):
        if doc.get("uid") == failing_uid:
            failed.set()
            raise OSError("disk full (simulated)")
        stored.append(doc.get("uid"))

    writer = BufferedWriter(flaky)
    with caplog.at_level(logging.ERROR, logger="temsims.callbacks.storage"):
        for name, doc in docs[:4]:
            writer(name, doc)
        assert failed.wait(10)
        deadline = time.monotonic() + 5
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.01)
    record = caplog.records[0]
    assert record.exc_info is not None and "disk full" in str(record.exc_info[1])
    with pytest.raises(StorageError, match="disk full") as info:
        writer(*docs[4])
    assert isinstance(info.value.__cause__, OSError)
    for name, doc in docs[5:]:
        writer(name, doc)
    writer.close()
    # nothing else is lost: every other document, the one that raised included
    assert stored == [d["uid"] for _, d in docs if d["uid"] != failing_uid]


def test_a_write_error_surfaces_in_the_runengine_and_on_flush(RE):
    calls = []

    def broken_after_three(name, doc):
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("tiled said 500")

    writer = BufferedWriter(broken_after_three)
    RE.subscribe(writer)
    with pytest.raises(StorageError, match="tiled said 500"):
        RE(bp.count([det], num=3))
        writer.flush(timeout=10)
    writer.close()
    assert calls[-1] == "stop"  # the run was still closed in storage


# ----------------------------------------------------------------- flushing


def test_close_right_after_the_run_stores_everything(module_catalog, RE):
    writer = module_catalog.writer()
    log = DocumentLog()
    RE.subscribe(log)
    RE.subscribe(writer)
    image = image_detector(seed=5)
    (uid,) = RE(bp.count([det, image], num=30), **contract_md(sample="flush"))
    assert writer.pending > 0 or writer.stats.documents == 33
    writer.close(timeout=60)
    run = module_catalog.runs[uid]
    produced = np.stack([e["data"]["image"] for e in log.events(uid)])
    np.testing.assert_array_equal(run["primary"]["image"].read(), produced)
    assert run.metadata["stop"]["num_events"] == {"primary": 30}


def test_a_run_is_stored_in_seven_requests_on_a_temsims_server(catalog):
    """temsims' servers run without tiled's streaming cache, so the writer sends no
    ``close_stream`` (TiledWriter's one per node written, which only websocket
    subscribers hear): a run of one stream with a table and an array is stored in 7
    requests, and stored whole."""
    requests = []
    writer = catalog.writer(buffered=False)  # synchronous: stored when the call returns
    http = catalog.runs.context.http_client
    http.event_hooks["request"].append(lambda r: requests.append((r.method, r.url.path)))
    docs = _compose_run(n_events=3)
    for name, doc in docs:
        writer(name, doc)
    paths = [p for _, p in requests]
    assert not [p for p in paths if "/stream/close/" in p], paths
    assert len(requests) == 7, requests  # run, stream, table, array, array data, rows, stop
    run = catalog.runs[docs[0][1]["uid"]]
    np.testing.assert_array_equal(run["primary"]["seq_num"].read(), [1, 2, 3])
    np.testing.assert_array_equal(run["primary"]["img"].read()[:, 0, 0], [0, 1, 2])
    assert run.metadata["stop"]["exit_status"] == "success"


def test_streams_are_closed_on_a_server_that_is_not_temsims():
    """Another lab's tiled server may have websocket subscribers: the writer closes
    every node's stream there, as TiledWriter does."""
    from types import SimpleNamespace

    from temsims.catalog.exporters import STREAM_NPZ
    from temsims.catalog.writer import is_temsims_server

    def node(formats):
        return SimpleNamespace(context=SimpleNamespace(server_info={"formats": formats}))

    assert is_temsims_server(node({"BlueskyEventStream": [STREAM_NPZ]}))
    assert not is_temsims_server(node({"BlueskyRun": ["application/json-seq"]}))
    assert not is_temsims_server(SimpleNamespace())  # no server_info at all


@pytest.mark.slow
def test_documents_queued_at_interpreter_exit_are_stored(tmp_path):
    """A session that exits without flushing or closing: atexit drains the queue."""
    directory = tmp_path / "catalog"
    script = textwrap.dedent(f"""
        import bluesky.plans as bp, numpy as np
        from bluesky import RunEngine
        from ophyd.sim import SynSignal, det
        from temsims.catalog import open_catalog
        cat = open_catalog({str(directory)!r})
        RE = RunEngine({{}})
        w = cat.writer()
        RE.subscribe(w)
        img = SynSignal(func=lambda: np.ones((16, 16), np.float32), name="img")
        (uid,) = RE(bp.count([det, img], num=40))
        print(uid, w.pending, flush=True)
    """)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True)
    assert time.monotonic() - t0 < 90
    uid, pending = out.stdout.split()
    cat = open_catalog(directory)
    try:
        run = cat.runs[uid]
        assert run["primary"]["img"].read().shape == (40, 16, 16)
        assert run.metadata["stop"]["exit_status"] == "success"
    finally:
        cat.close()


# ----------------------------------------------------------------- dims and dtypes


def _arrays_run(arrays: dict[str, tuple[np.ndarray, list[str] | None]], n_events: int = 2):
    """A run of one event stream holding ``arrays`` (key -> value, dims or None)."""
    run = event_model.compose_run(metadata=contract_md())
    data_keys = {}
    for key, (value, dims) in arrays.items():
        data_keys[key] = {"dtype": "array", "shape": list(value.shape), "source": "sim",
                          "dtype_numpy": value.dtype.str}
        if dims is not None:
            data_keys[key]["dims"] = dims
    bundle = run.compose_descriptor(name="primary", data_keys=data_keys)
    docs = [("start", run.start_doc), ("descriptor", bundle.descriptor_doc)]
    for i in range(n_events):
        data = {key: value + i for key, (value, _) in arrays.items()}
        docs.append(("event", bundle.compose_event(
            data=data, timestamps=dict.fromkeys(data, time.time()), seq_num=i + 1)))
    docs.append(("stop", run.compose_stop()))
    return docs


def test_stored_arrays_keep_their_dims_and_dtype_and_read_back_without_warning(
        module_catalog):
    """Arrays are stored as their data keys describe them: axes ``("time", *dims)``
    (TiledWriter alone names them by size, ``dim_int_1`` twice for a square image, and
    xarray warns), dtype ``dtype_numpy``. An array without usable dims gets axis names
    of its own, and so does an axis whose name an array earlier in the descriptor gave
    an axis of another size."""
    arrays = {
        "image": (np.zeros((8, 8), np.float32), ["y", "x"]),  # square
        "spectrum": (np.zeros(5, np.float32), ["channel"]),
        "energy": (np.zeros(5, np.float64), ["channel"]),  # shares the channel axis
        "line": (np.zeros((1, 6), np.int32), ["line", "x"]),  # another "x" (6, not 8)
        "raw": (np.zeros((3, 3), np.uint16), None),  # no dims
        "twice": (np.zeros((2, 2), np.int16), ["a", "a"]),  # unusable dims
    }
    docs = _arrays_run(arrays)
    writer = module_catalog.writer(buffered=False)
    for name, doc in docs:
        writer(name, doc)
    stream = module_catalog.runs[docs[0][1]["uid"]]["primary"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = stream.read()
    dims = {key: ds[key].dims for key in arrays}
    assert dims["image"] == ("time", "y", "x")
    assert dims["spectrum"] == dims["energy"] == ("time", "channel")
    assert dims["line"] == ("time", "line", "line_x")
    assert dims["raw"] == ("time", "raw_0", "raw_1")
    assert dims["twice"] == ("time", "twice_0", "twice_1")
    for key, (value, _) in arrays.items():
        assert ds[key].dtype == value.dtype, key
        assert ds[key].shape == (2, *value.shape), key
    np.testing.assert_array_equal(ds["image"][1], arrays["image"][0] + 1)


def test_a_plans_values_stream_is_described_stored_and_read_back_whole(module_catalog, RE):
    """``plans._common.Values`` (the streams plans derive: peaks, particles, a step
    map's lines) describes every value's ``dtype_numpy``, its arrays' ``dims`` and hints
    only its scalars; its runs read back as xarray without a warning."""
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp

    from temsims.plans._common import Values

    peaks = Values("peaks", units={"mass_u": "u"}, dims={"line": ("line", "x")})
    values = {"mass_u": np.array([6.015, 7.016]), "height": np.array([3.0, 9.0], np.float32),
              "line": np.zeros((1, 4), np.int32), "square": np.zeros((3, 3)), "count": 2,
              "label": "Li", "labelled": True}
    peaks.set_values(**values)
    described = peaks.describe()
    assert {k: d["dtype_numpy"] for k, d in described.items()} == {
        "peaks_mass_u": "<f8", "peaks_height": "<f4", "peaks_line": "<i4",
        "peaks_square": "<f8", "peaks_count": "<i8", "peaks_label": "<U0",
        "peaks_labelled": "|b1"}
    assert described["peaks_line"]["dims"] == ["line", "x"]
    assert described["peaks_square"]["dims"] == ["peaks_square_0", "peaks_square_1"]
    assert described["peaks_mass_u"]["units"] == "u"
    assert peaks.hints == {"fields": ["peaks_count", "peaks_label", "peaks_labelled"]}

    @bpp.run_decorator(md=contract_md())
    def plan():
        yield from bps.trigger_and_read([peaks], name="peaks")

    writer = module_catalog.writer()
    RE.subscribe(writer)
    (uid,) = RE(plan())
    assert writer.wait_for_run(uid, timeout=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = module_catalog.runs[uid]["peaks"].read()
    assert ds["peaks_square"].dims == ("time", "peaks_square_0", "peaks_square_1")
    assert ds["peaks_line"].dims == ("time", "line", "x")
    assert ds["peaks_height"].dtype == np.float32 and ds["peaks_line"].dtype == np.int32


def test_a_buffered_writer_passes_documents_on_unchanged():
    """No descriptor is held back or patched: what devices describe is what is stored."""
    received = []
    writer = BufferedWriter(lambda n, d: received.append((n, d)))
    docs = _compose_run(n_events=2)
    for name, doc in docs:
        writer(name, doc)
    assert writer.flush(timeout=30)
    writer.close()
    assert [(n, d) for n, d in received] == docs


# ----------------------------------------------------------------- writer process


@pytest.mark.slow
def test_process_writer_stores_runs_like_the_thread_and_ends_its_process(module_catalog,
                                                                          RE):
    """writer(process=True): same documents in the catalog, written by a child process."""
    import os

    writer = module_catalog.writer(process=True)
    pid = writer.pid
    assert pid is not None and pid != os.getpid()
    log = DocumentLog()
    RE.subscribe(log)
    RE.subscribe(writer)
    image = image_detector(seed=7)
    (uid,) = RE(bp.count([det, image], num=20), **contract_md(sample="process"))
    assert writer.wait_for_run(uid, timeout=60)
    run = module_catalog.runs[uid]
    produced = np.stack([e["data"]["image"] for e in log.events(uid)])
    stored = run["primary"]["image"].read()
    np.testing.assert_array_equal(stored, produced)
    assert stored.dtype == produced.dtype
    assert writer.stats.put_blocked_s == 0
    writer.close(timeout=60)
    assert writer._process.poll() is not None  # the child exited


@pytest.mark.parametrize(
    "process", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["thread", "process"])
def test_what_tiledwriter_refuses_is_raised_in_the_caller(module_catalog, process):
    """An event that passes the caller's quick check but not TiledWriter's schema check
    is refused where TiledWriter runs and raised in the caller; the run is stored."""
    writer = module_catalog.writer(process=process)
    docs = _compose_run(n_events=2)
    page = event_model.pack_event_page(docs[2][1])
    for name, doc in docs[:3]:
        writer(name, doc)
    writer("event_page", dict(page, uid=["p-bad"], time=["not a number"], seq_num=[9]))
    writer(*docs[3])
    with pytest.raises(InvalidDocument, match="time"):
        writer.flush(timeout=60)
    writer(*docs[4])
    writer.close(timeout=60)
    run = module_catalog.runs[docs[0][1]["uid"]]
    np.testing.assert_array_equal(run["primary"]["seq_num"].read(), [1, 2])
    assert run.metadata["stop"]["exit_status"] == "success"
