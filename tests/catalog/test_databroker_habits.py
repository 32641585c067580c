"""Databroker habits on a temsims catalog (issue 12, items 2 and 4): ``run.documents()``,
``cat[-1]`` / ``cat[scan_id]`` / ``cat["uid prefix"]``, the query objects of
bluesky-tiled-plugins and tiled, and ``run.primary.read()`` as an xarray Dataset with
named dims. Each test runs on two catalogs, written the same way by a RunEngine that
also logs every document it emits: an embedded one (``open_catalog(DIR)``, SQLite) and
``temsims serve`` on the tests' PostgreSQL (``open_catalog(URI, api_key=write key)``).

databroker itself is not needed for any of this (``databroker.queries`` only re-exports
``bluesky_tiled_plugins.queries``, and the client classes are bluesky-tiled-plugins'):
:func:`test_habits_without_databroker` runs them in a process that cannot import it.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import subprocess
import sys
import textwrap
import time
import warnings

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins.queries import (
    Contains,
    Eq,
    FullText,
    In,
    Key,
    PartialUID,
    ScanID,
    ScanIDRange,
    TimeRange,
)
from catalog_helpers import (
    DocumentLog,
    assert_same_document,
    contract_md,
    counts_map_line,
    image_detector,
    sims_md,
    spectrum_detector,
)
from event_model import DocumentNames, compose_run, schema_validators, unpack_event_page
from ophyd.sim import MockFlyer, SynAxis, det, motor, motor1

from temsims.catalog import open_catalog, require_metadata

#: Two runs written without the RunEngine whose uids share their first 34 characters.
TWIN_UIDS = ("feedbeef-0000-4000-8000-000000000001", "feedbeef-0000-4000-8000-000000000002")


def _twin_run(writer, uid: str) -> None:
    """A minimal run with a chosen uid (start, one descriptor, one event, stop)."""
    bundle = compose_run(uid=uid, metadata=contract_md(sample="twins", plan_name="twin",
                                                       plan_args={}))
    writer("start", bundle.start_doc)
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "x": {"source": "test", "dtype": "number", "shape": [], "dtype_numpy": "<f8"}})
    writer("descriptor", desc.descriptor_doc)
    writer("event", desc.compose_event(data={"x": 1.0}, timestamps={"x": time.time()}, seq_num=1))
    writer("stop", bundle.compose_stop())


def _fly_twice(flyer):
    """A fly-style run: kick off, collect what the flyer has so far (one event page),
    complete, collect the rest (a second page)."""

    @bpp.run_decorator(md=contract_md(plan_name="fly_twice", plan_args={"flyer": flyer.name},
                                      sample="s2", purpose="raster alignment"))
    def plan():
        yield from bps.kickoff(flyer, wait=True)
        # Until its first point (not a fixed 0.25 s: under load the flyer's thread had
        # none yet, and the run held one page of 20, not two).
        for _ in range(500):
            if flyer._data:
                break
            yield from bps.sleep(0.01)
        yield from bps.collect(flyer)
        yield from bps.complete(flyer, wait=True)
        yield from bps.collect(flyer)

    return (yield from plan())


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stored(request, tmp_path_factory):
    """Two twin runs, then a step scan with a baseline, a scan of array detectors, a
    fly run of event pages and, after a scan_id reset, a count of a 2-D image; in an
    embedded catalog (``sqlite``) or in ``temsims serve`` on PostgreSQL (``postgres``)."""
    directory = None
    if request.param == "sqlite":
        directory = tmp_path_factory.mktemp("habits") / "catalog"
        cat = open_catalog(directory)
    else:
        served = request.getfixturevalue("served_postgres")
        cat = open_catalog(served.uri, api_key=served.write_key)
    writer = cat.writer()
    for uid in TWIN_UIDS:
        _twin_run(writer, uid)
    RE = RunEngine({}, call_returns_result=False)
    require_metadata(RE)
    log = DocumentLog()
    RE.subscribe(log)
    RE.subscribe(writer)
    uids = {}
    RE.preprocessors.append(bpp.SupplementalData(baseline=[motor1]))
    (uids["step"],) = RE(bp.scan([det], motor, -1, 1, 5), **contract_md())
    RE.preprocessors.clear()
    (uids["arrays"],) = RE(bp.scan([image_detector(), spectrum_detector(), det], motor, -1, 1, 3),
                           **sims_md())
    time.sleep(0.05)
    t_mid = time.time()
    time.sleep(0.05)
    flyer = MockFlyer("flyer", counts_map_line(), SynAxis(name="slow", delay=0.02), 0, 1, 20)
    (uids["fly"],) = RE(_fly_twice(flyer))
    RE.md["scan_id"] = 0  # a new session: scan_id 1 again
    (uids["image"],) = RE(bp.count([det, image_detector(seed=3)], num=4),
                          **contract_md(sample="s3", specimen="li2co3 film"))
    assert cat.flush(timeout=60)
    yield {"catalog": cat, "dir": directory, "uids": uids, "log": log, "t_mid": t_mid,
           "backend": request.param}
    cat.close(timeout=60)


# ======================================================================== documents()


def _emitted(log: DocumentLog, uid: str) -> list[tuple[str, dict]]:
    """The run's documents as the RunEngine emitted them, event pages unpacked in place."""
    descriptors = {d["uid"] for n, d in log.docs if n == "descriptor" and d["run_start"] == uid}
    out = []
    for name, doc in log.docs:
        if (name == "start" and doc["uid"] == uid) or (
                name in ("descriptor", "stop") and doc["run_start"] == uid):
            out.append((name, doc))
        elif name == "event" and doc["descriptor"] in descriptors:
            out.append((name, doc))
        elif name == "event_page" and doc["descriptor"] in descriptors:
            out.extend(("event", event) for event in unpack_event_page(doc))
    return out


def _identity(name: str, doc: dict):
    return (doc["descriptor"], doc["seq_num"]) if name == "event" else doc["uid"]


def _data_key_groups(stored: dict, produced: dict):
    """Pairs of (stored, produced) data-key dicts: the descriptor's, then each
    configured object's, by name (PostgreSQL's JSONB orders an object's keys its own
    way)."""
    yield stored["data_keys"], produced["data_keys"]
    for name, config in produced.get("configuration", {}).items():
        yield stored["configuration"][name].get("data_keys", {}), config.get("data_keys", {})


def _sorted_object_keys(descriptor: dict) -> dict:
    out = dict(descriptor)
    out["object_keys"] = {k: sorted(v) for k, v in descriptor["object_keys"].items()}
    return out


def _check_descriptor(stored: dict, produced: dict, path: str) -> None:
    """Equal, but for the ``dtype_numpy`` TiledWriter gives a data key whose producer
    described none (ophyd.sim's ``det``, ``motor``, their configuration): its default
    for the key's ``dtype`` (number -> <f8, integer -> <i8)."""
    stored = copy.deepcopy(dict(stored))
    for s_keys, p_keys in _data_key_groups(stored, produced):
        for key, dk in p_keys.items():
            if "dtype_numpy" not in dk:
                added = s_keys[key].pop("dtype_numpy")
                assert added == {"number": "<f8", "integer": "<i8"}[dk["dtype"]], (path, key)
    assert_same_document(stored, produced, path)


@pytest.mark.parametrize("label", ["step", "arrays", "fly", "image"])
def test_documents_replay_the_run(stored, label):
    """``run.documents()`` gives back every document the RunEngine emitted for the run.

    Equal: the document names in their order (start; each stream's descriptor before
    its events, events in seq_num order; stop), the start, descriptor and stop documents,
    each event's ``descriptor``, ``seq_num``, ``time``, ``data`` and ``timestamps``.
    What tiled normalises, by design:

    - event pages come back as single events (the JSON-seq exporter emits ``event``
      only; the fly run's two pages of 20 events are compared unpacked);
    - event uids are made up, ``event-<descriptor uid>-<seq_num>`` (the event table
      keeps no uid), and an empty ``filled`` is left out;
    - a data key the producer gave no ``dtype_numpy`` has TiledWriter's default for its
      ``dtype`` (:func:`_check_descriptor`);
    - arrays and tuples arrive as JSON lists (compared in the produced dtype: a float32
      array's shortest decimals give back the same float32 values).

    The exporter puts the documents in time order with the stop last; the RunEngine
    emits them in time order, so the two orders are the same. Every replayed document
    validates against event-model's schema.
    """
    cat, log, uid = stored["catalog"], stored["log"], stored["uids"][label]
    produced = _emitted(log, uid)
    replayed = [(name, dict(doc)) for name, doc in cat[uid].documents()]

    assert [n for n, _ in replayed] == [n for n, _ in produced]
    assert [_identity(*x) for x in replayed] == [_identity(*x) for x in produced]
    if label == "fly":  # two pages of the 20 events went in, 20 events come out
        flyer_stream = {d["uid"] for n, d in replayed if n == "descriptor"}
        assert [n for n, d in log.docs if n == "event_page"
                and d["descriptor"] in flyer_stream] == ["event_page"] * 2
        assert sum(n == "event" for n, _ in replayed) == 20

    for (name, back), (_, doc) in zip(replayed, produced, strict=True):
        schema_validators[DocumentNames(name)].validate(back)
        where = f"{label} {name} {_identity(name, doc)}"
        if name == "descriptor":
            if stored["backend"] == "postgres":
                # JSONB keeps an object's keys in its own order, and the replayed
                # object_keys lists follow the data keys' order: compare them sorted.
                back, doc = _sorted_object_keys(back), _sorted_object_keys(doc)
            _check_descriptor(back, doc, where)
        elif name == "event":
            assert back["uid"] == f"event-{doc['descriptor']}-{doc['seq_num']}"
            assert doc.get("filled", {}) == {} and "filled" not in back
            assert_same_document({k: v for k, v in back.items() if k != "uid"},
                         {k: v for k, v in doc.items() if k not in ("uid", "filled")}, where)
        else:
            assert_same_document(back, doc, where)


# ============================================================================ cat[...]


def test_indexing_like_databroker(stored):
    cat, u = stored["catalog"], stored["uids"]
    order = [*TWIN_UIDS, u["step"], u["arrays"], u["fly"], u["image"]]
    assert list(cat) == order  # the order runs were stored in
    assert len(cat) == 6
    assert cat[-1].start["uid"] == u["image"]
    assert cat[-2].start["uid"] == u["fly"]
    for key in (slice(-3, None), slice(-3, -1), slice(-100, None), slice(-1, -3)):
        assert [r.start["uid"] for r in cat[key]] == order[key], key
    # scan_id: the most recent run with it (the step scan also has scan_id 1)
    assert cat[1].start["uid"] == u["image"]
    assert cat[2].start["uid"] == u["arrays"]
    assert [r.start["uid"] for r in cat[[2, 3]]] == [u["arrays"], u["fly"]]
    # uids: full or a unique prefix of at least 5 characters
    assert cat[u["fly"]].start["uid"] == u["fly"]
    assert cat[u["fly"][:8]].start["uid"] == u["fly"]
    assert cat[TWIN_UIDS[1]].start["uid"] == TWIN_UIDS[1]
    with pytest.raises(ValueError, match="multiple matches"):
        cat[TWIN_UIDS[0][:-1]]
    with pytest.raises(ValueError, match="too short"):
        cat["feed"]
    with pytest.raises(KeyError):
        cat["00000000"]
    with pytest.raises(KeyError):
        cat[99]
    assert u["step"] in cat
    assert u["step"][:8] not in cat  # membership is by full uid only
    assert 1 not in cat
    # the same on search results
    s1 = cat.by_sample("s1")
    assert s1[-1].start["uid"] == u["arrays"] and s1[1].start["uid"] == u["step"]
    assert [r.start["uid"] for r in s1[-2:]] == [u["step"], u["arrays"]]
    assert [r.start["uid"] for r in cat.search(ScanID(1))[-5:]] == [u["step"], u["image"]]
    assert [r.start["uid"] for r in s1.by_mode("SIMS")[-3:]] == [u["arrays"]]
    assert [k for k, _ in cat.items()][:2] == list(TWIN_UIDS) == list(cat.keys())[:2]
    assert cat.values()[-1].start["uid"] == u["image"]


def test_an_empty_catalog(catalog):
    assert catalog  # an open catalog is true even when it holds no run
    assert len(catalog) == 0 and list(catalog) == []
    assert catalog.latest() is None
    with pytest.raises(IndexError):
        catalog[-1]
    with pytest.raises(KeyError):
        catalog[1]


# ============================================================================= queries


def test_queries_of_bluesky_tiled_plugins(stored):
    """TimeRange, ScanID, ScanIDRange, PartialUID: client-side sugar that
    ``CatalogOfBlueskyRuns.search`` turns into tiled's Comparison, Eq and Like."""
    cat, u, t_mid = stored["catalog"], stored["uids"], stored["t_mid"]
    later = {u["fly"], u["image"]}
    assert set(cat.search(TimeRange(since=t_mid))) == later
    assert set(cat.in_time_range(t_mid)) == later
    assert set(cat.search(TimeRange(until=t_mid))) == set(TWIN_UIDS) | {u["step"], u["arrays"]}
    # naive datetimes are local time, to both
    when = dt.datetime.fromtimestamp(t_mid)
    assert set(cat.search(TimeRange(since=when))) == later
    assert set(cat.in_time_range(when.isoformat(), time.time() + 60)) == later
    with pytest.raises(ValueError):
        cat.in_time_range(t_mid, t_mid - 1)
    # ScanID finds every run with the scan_id (its duplicates="latest" is not applied
    # by the client-side translation); cat[scan_id] picks the latest
    assert set(cat.search(ScanID(1))) == {u["step"], u["image"]}
    assert set(cat.search(ScanIDRange(2, 4))) == {u["arrays"], u["fly"]}
    assert list(cat.search(PartialUID(u["arrays"][:6]))) == [u["arrays"]]
    assert set(cat.search(PartialUID("feedbeef"))) == set(TWIN_UIDS)


def test_tiled_queries_on_start_metadata(stored):
    """Key, Eq, Comparison, In and Contains; keys without ``start.``/``stop.`` are the
    start document's. On SQLite, Contains is a substring match on the JSON text of the
    value (tiled compiles it to LIKE '%value%'), so it finds "Li" in ["6Li", ...]:
    by_species uses ``species_index`` for that reason."""
    cat, u = stored["catalog"], stored["uids"]
    everything = set(TWIN_UIDS) | set(u.values())
    assert set(cat.search(Key("sample") == "s1")) == {u["step"], u["arrays"]}
    assert set(cat.search(Eq("mode", "SIMS"))) == {u["arrays"]}
    assert set(cat.search(Key("start.scan_id") >= 2)) == {u["arrays"], u["fly"]}
    assert set(cat.search(Key("region.fov_um") > 4)) == everything
    assert set(cat.search(Key("stop.exit_status") == "success")) == everything
    assert set(cat.search(In("sample", ["s2", "s3"]))) == {u["fly"], u["image"]}
    assert set(cat.search(Contains("detectors", "image"))) == {u["arrays"], u["image"]}
    assert set(cat.search(Contains("species", "7Li"))) == {u["arrays"]}
    assert set(cat.search(Contains("species", "Li"))) == {u["arrays"]}  # a substring
    assert set(cat.by_species("Li")) == set()  # exact
    # several at once, and keywords beside them
    assert set(cat.search(Key("mode") == "TEM", TimeRange(since=stored["t_mid"]),
                          sample="s3")) == {u["image"]}
    # the helpers are the same queries
    assert set(cat.by_sample("s2")) == set(cat.search(Eq("sample", "s2"))) == {u["fly"]}
    assert set(cat.by_mode("tem")) == set(cat.search(Key("mode") == "TEM"))
    assert cat.latest().start["uid"] == cat[-1].start["uid"] == u["image"]
    assert cat.latest(cat.by_mode("SIMS")).start["uid"] == u["arrays"]


def test_full_text(stored):
    """FullText on both databases. Both match whole words of the metadata's string
    values, case-folded, so "Li" does not find "6Li"; the query syntax is the
    database's own, as tiled passes the text through:

    - SQLite: tiled keeps an FTS5 index of each node's metadata (keys and values);
      ``*`` makes a prefix, AND/OR/NOT combine words, and text with a hyphen or other
      FTS5 operator characters must be quoted as a phrase (unquoted, the server fails
      the query with HTTP 500);
    - PostgreSQL: ``to_tsquery('simple', text)`` against ``jsonb_to_tsvector`` of the
      string values only (keys are not words); ``:*`` makes a prefix, ``&``, ``|``,
      ``!`` combine words, and a hyphenated value is found as it is written.
    """
    cat, u = stored["catalog"], stored["uids"]
    everything = set(TWIN_UIDS) | set(u.values())
    assert set(cat.search(FullText("alignment"))) == {u["fly"]}
    assert set(cat.search(FullText("ALIGNMENT"))) == {u["fly"]}  # case-folded
    assert set(cat.search(FullText("align"))) == set()  # whole words ...
    assert set(cat.search(FullText("7Li"))) == {u["arrays"]}
    assert set(cat.search(FullText("Li"))) == set()
    assert set(cat.search(FullText("film"))) == {u["image"]}
    if stored["backend"] == "sqlite":
        assert set(cat.search(FullText("align*"))) == {u["fly"]}  # ... or a prefix
        assert set(cat.search(FullText('"li2co3-particles"'))) == everything - {u["image"]}
        assert set(cat.search(FullText("li2co3 AND film"))) == {u["image"]}
        assert set(cat.search(FullText("purpose"))) == {u["fly"]}  # keys are words too
        assert set(cat.by_mode("TEM").search(FullText("raster"))) == {u["fly"]}
    else:
        assert set(cat.search(FullText("align:*"))) == {u["fly"]}  # ... or a prefix
        assert set(cat.search(FullText("li2co3-particles"))) == everything - {u["image"]}
        assert set(cat.search(FullText("li2co3 & film"))) == {u["image"]}
        assert set(cat.search(FullText("purpose"))) == set()  # keys are not words
        assert set(cat.by_mode("TEM").search(FullText("raster"))) == {u["fly"]}


# ======================================================================== xarray reads


def _events(log: DocumentLog, uid: str) -> list[dict]:
    return [d for n, d in _emitted(log, uid) if n == "event"]


@pytest.mark.parametrize("label", ["image", "arrays"])
def test_primary_reads_as_a_dataset_with_named_dims(stored, label):
    """``run.primary.read()`` and ``run["primary"].read()``: an xarray Dataset whose
    arrays have the dims their descriptors name (``time`` first), no ``dim_int_*``,
    the produced values and dtypes, and no warning (warnings are errors here)."""
    cat, log, uid = stored["catalog"], stored["log"], stored["uids"][label]
    events = _events(log, uid)
    expected_dims = {"det": ("time",), "image": ("time", "y", "x"),
                     "spectrum": ("time", "channel"), "motor": ("time",),
                     "motor_setpoint": ("time",)}
    run = cat[uid]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        datasets = [run.primary.read(), run["primary"].read()]
    for ds in datasets:
        assert set(ds.data_vars) == set(events[0]["data"])
        assert not [d for d in ds.dims if str(d).startswith("dim_")], ds.dims
        np.testing.assert_array_equal(ds["time"].values, [e["time"] for e in events])
        for key, var in ds.data_vars.items():
            assert var.dims == expected_dims[key], (key, var.dims)
            produced = np.stack([np.asarray(e["data"][key]) for e in events])
            assert var.dtype == produced.dtype, key
            np.testing.assert_array_equal(var.values, produced, err_msg=key)
    assert datasets[0]["image"].shape == (len(events), 32, 24)


# ===================================================================== without databroker

WITHOUT_DATABROKER = textwrap.dedent("""
    import json, sys, warnings
    sys.modules["databroker"] = None  # any import of databroker now fails
    from bluesky_tiled_plugins.queries import Key, PartialUID, ScanID, TimeRange
    from temsims.catalog import open_catalog

    cat = open_catalog(sys.argv[1])
    try:
        run = cat[-1]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = run.primary.read()
        try:
            cat.runs.v1
            v1 = "available"
        except ImportError:
            v1 = "ImportError"
        print(json.dumps({
            "len": len(cat), "last": run.start["uid"], "scan_id_2": cat[2].start["uid"],
            "prefix": cat[sys.argv[2][:7]].start["uid"],
            "since": sorted(cat.search(TimeRange(since=float(sys.argv[3])))),
            "scan_id_query": sorted(cat.search(ScanID(1))),
            "partial": list(cat.search(PartialUID(sys.argv[2][:7]))),
            "key": sorted(cat.search(Key("sample") == "s1")),
            "documents": [n for n, _ in run.documents()],
            "dims": {k: list(v.dims) for k, v in ds.data_vars.items()},
            "v1": v1,
        }))
    finally:
        cat.close()
""")


@pytest.mark.slow
@pytest.mark.parametrize("stored", ["sqlite"], indirect=True)
def test_habits_without_databroker(stored):
    """Every habit above in a process where ``import databroker`` fails: temsims does
    not depend on databroker. Only the legacy v1 API (``cat.runs.v1``) needs it."""
    u = stored["uids"]
    out = subprocess.run([sys.executable, "-c", WITHOUT_DATABROKER, str(stored["dir"]),
                          u["fly"], repr(stored["t_mid"])],
                         capture_output=True, text=True, timeout=180, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["len"] == 6
    assert seen["last"] == u["image"]
    assert seen["scan_id_2"] == u["arrays"]
    assert seen["prefix"] == u["fly"]
    assert seen["since"] == sorted([u["fly"], u["image"]])
    assert seen["scan_id_query"] == sorted([u["step"], u["image"]])
    assert seen["partial"] == [u["fly"]]
    assert seen["key"] == sorted([u["step"], u["arrays"]])
    assert seen["documents"] == ["start", "descriptor"] + ["event"] * 4 + ["stop"]
    assert seen["dims"] == {"det": ["time"], "image": ["time", "y", "x"]}
    assert seen["v1"] == "ImportError"
