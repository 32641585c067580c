"""Runs written by this process, read back by another: data, dtypes, metadata, queries."""

from __future__ import annotations

import time

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from catalog_helpers import (
    DocumentLog,
    assert_same_document,
    contract_md,
    counts_map_line,
    image_detector,
    read_in_another_process,
    sims_md,
    spectrum_detector,
)
from ophyd.sim import det, motor

from temsims.catalog import open_catalog, require_metadata


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Four runs of two correlative experiments in a fresh catalog."""
    directory = tmp_path_factory.mktemp("roundtrip") / "catalog"
    cat = open_catalog(directory)
    RE = RunEngine({}, call_returns_result=False)
    require_metadata(RE)
    log = DocumentLog()
    RE.subscribe(log)
    RE.subscribe(cat.writer())
    image, spectrum, counts = image_detector(), spectrum_detector(), counts_map_line()
    uids = {}
    (uids["tem_s1"],) = RE(bp.count([det, image], num=3), **contract_md())
    time.sleep(0.05)
    (uids["sims_s1"],) = RE(bp.scan([spectrum, counts, image], motor, -1, 1, 7), **sims_md())
    time.sleep(0.05)
    t_mid = time.time()
    time.sleep(0.05)
    (uids["sims_s2"],) = RE(
        bp.count([spectrum, counts], num=4),
        **sims_md(species=("27Al", "51V"), sample="s2", correlation_id="corr-B",
                   specimen="livo-cathode"),
    )
    time.sleep(0.05)
    (uids["tem_s2"],) = RE(bp.count([det, image], num=2),
                           **contract_md(sample="s2", correlation_id="corr-B"))
    assert cat.flush(timeout=60)
    yield {"catalog": cat, "dir": directory, "uids": uids, "log": log, "t_mid": t_mid}
    cat.close(timeout=60)


QUERIES = {
    "sample_s1": ["by_sample", ["s1"]],
    "sample_s2": ["by_sample", ["s2"]],
    "mode_tem": ["by_mode", ["TEM"]],
    "mode_sims": ["by_mode", ["SIMS"]],
    "species_7Li": ["by_species", ["7Li"]],
    "species_51V": ["by_species", ["51V"]],
    "species_Li": ["by_species", ["Li"]],
    "corr_A": ["by_correlation_id", ["corr-A"]],
    "corr_B": ["by_correlation_id", ["corr-B"]],
    "latest": ["latest", []],
}


@pytest.fixture(scope="module")
def other_process(written, tmp_path_factory):
    """What a second process reads from the same catalog directory."""
    queries = dict(QUERIES, after_mid=["in_time_range", [written["t_mid"], None]])
    return read_in_another_process(written["dir"], queries,
                                   tmp_path_factory.mktemp("readback"), timeout=120)


@pytest.mark.slow
def test_other_process_sees_every_run_complete(written, other_process):
    report, _ = other_process
    assert set(report["runs"]) == set(written["uids"].values())
    for uid in written["uids"].values():
        run = report["runs"][uid]
        assert run["stop"]["exit_status"] == "success"
        assert run["streams"] == ["primary"]


@pytest.mark.slow
def test_arrays_equal_what_was_produced_with_their_dtype(written, other_process):
    report, arrays = other_process
    log = written["log"]
    for uid in written["uids"].values():
        events = log.events(uid)
        assert events
        for key in events[0]["data"]:
            produced = np.stack([np.asarray(e["data"][key]) for e in events])
            seen = arrays[f"{uid}/{key}"]
            np.testing.assert_array_equal(seen, produced)
            assert seen.dtype == produced.dtype, key
            assert key in report["runs"][uid]["xarray_vars"]
        assert report["runs"][uid]["read_warnings"] == []
    sims = written["uids"]["sims_s1"]
    assert arrays[f"{sims}/image"].dtype == np.float32
    assert arrays[f"{sims}/image"].shape == (7, 32, 24)
    assert arrays[f"{sims}/spectrum"].dtype == np.float32
    assert arrays[f"{sims}/counts"].dtype == np.int32
    assert arrays[f"{sims}/motor"].dtype == np.float64


@pytest.mark.slow
def test_start_metadata_round_trip(written, other_process):
    report, _ = other_process
    start = report["runs"][written["uids"]["sims_s1"]]["start"]
    for key, value in sims_md().items():
        assert start[key] == value, key
    assert start["plan_name"] == "scan"
    assert start["plan_args"]["num"] == 7
    assert start["species"] == ["6Li", "7Li", "69Ga", "71Ga"]


@pytest.mark.slow
def test_queries_from_the_other_process(written, other_process):
    report, _ = other_process
    u = written["uids"]
    q = {k: set(v) for k, v in report["queries"].items()}
    assert q["sample_s1"] == {u["tem_s1"], u["sims_s1"]}
    assert q["sample_s2"] == {u["sims_s2"], u["tem_s2"]}
    assert q["mode_tem"] == {u["tem_s1"], u["tem_s2"]}
    assert q["mode_sims"] == {u["sims_s1"], u["sims_s2"]}
    assert q["species_7Li"] == {u["sims_s1"]}
    assert q["species_51V"] == {u["sims_s2"]}
    assert q["species_Li"] == set()  # exact species, not a substring
    assert q["after_mid"] == {u["sims_s2"], u["tem_s2"]}
    assert report["queries"]["latest"] == [u["tem_s2"]]
    # correlation_id links the runs of one experiment, in the order they were taken
    assert report["queries"]["corr_A"] == [u["tem_s1"], u["sims_s1"]]
    assert report["queries"]["corr_B"] == [u["sims_s2"], u["tem_s2"]]


def test_queries_in_process(written):
    cat, u = written["catalog"], written["uids"]
    assert set(cat.by_sample("s1")) == {u["tem_s1"], u["sims_s1"]}
    assert set(cat.by_mode("sims")) == {u["sims_s1"], u["sims_s2"]}
    assert set(cat.by_species("69Ga")) == {u["sims_s1"]}
    assert set(cat.by_species("27al")) == set()  # case-sensitive: 27Al is not 27al
    assert list(cat.by_correlation_id("corr-B")) == [u["sims_s2"], u["tem_s2"]]
    assert set(cat.in_time_range(None, written["t_mid"])) == {u["tem_s1"], u["sims_s1"]}
    assert set(cat.in_time_range(0, time.time() + 60)) == set(u.values())
    assert cat.latest().metadata["start"]["uid"] == u["tem_s2"]
    # queries compose: the latest SIMS run of sample s1
    assert cat.latest(cat.by_sample("s1")).metadata["start"]["uid"] == u["sims_s1"]
    assert set(cat.search(sample="s2", mode="TEM")) == {u["tem_s2"]}
    with pytest.raises(ValueError):
        cat.by_mode("XRD")


def test_remote_uri_uses_the_same_client_code(written):
    """open_catalog(http://...) against a running server: the same queries work."""
    server = written["catalog"].server
    remote = open_catalog(server.uri, api_key=server.api_key)
    try:
        assert set(remote.by_sample("s2")) == {written["uids"]["sims_s2"], written["uids"]["tem_s2"]}
        assert remote.server is None
    finally:
        remote.close()


def _without_dtype_numpy(descriptor: dict) -> dict:
    """The descriptor without ``dtype_numpy`` in its data keys: TiledWriter adds its
    default for a key's ``dtype`` where it is missing (``ophyd.sim``'s ``det`` and
    ``motor``, their configuration)."""
    import copy

    out = copy.deepcopy(descriptor)
    for keys in [out["data_keys"]] + [c.get("data_keys", {}) for c in out["configuration"].values()]:
        for dk in keys.values():
            dk.pop("dtype_numpy", None)
    return out


def test_documents_replay_what_the_runengine_emitted(written):
    """``run.documents()`` (the server's JSON-seq export) gives back start, descriptor,
    events and stop as the RunEngine emitted them. Differences, by design: every data
    key of the stored descriptor has ``dtype_numpy`` (TiledWriter's default for its
    ``dtype`` where the producer described none; equal to the data's either way), event
    uids are synthesised (``event-<descriptor>-<seq_num>``), an empty ``filled``
    is dropped, and arrays come back as nested lists."""
    cat, log = written["catalog"], written["log"]
    for label, uid in written["uids"].items():
        descriptors = {d["uid"] for n, d in log.docs if n == "descriptor" and d["run_start"] == uid}
        emitted = [(n, d) for n, d in log.docs
                   if (n == "start" and d["uid"] == uid)
                   or (n in ("descriptor", "stop") and d["run_start"] == uid)
                   or (n == "event" and d["descriptor"] in descriptors)]
        replayed = list(cat.runs[uid].documents())
        assert [n for n, _ in replayed] == [n for n, _ in emitted], label
        assert [n for n, _ in replayed][:2] == ["start", "descriptor"]
        for (name, stored), (_, produced) in zip(replayed, emitted, strict=True):
            if name == "descriptor":
                assert_same_document(_without_dtype_numpy(stored), _without_dtype_numpy(produced), label)
                for key, value in log.events(uid)[0]["data"].items():
                    assert stored["data_keys"][key]["dtype_numpy"] == np.asarray(value).dtype.str
            elif name == "event":
                assert stored["uid"] == f"event-{produced['descriptor']}-{produced['seq_num']}"
                assert produced.get("filled", {}) == {}
                assert_same_document({k: v for k, v in stored.items() if k != "uid"},
                             {k: v for k, v in produced.items() if k not in ("uid", "filled")},
                             f"{label} event {produced['seq_num']}")
            else:
                assert_same_document(stored, produced, f"{label} {name}")
