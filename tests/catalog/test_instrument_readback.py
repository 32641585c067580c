"""A TEM image and a SIMS map from the real IOCs, stored by the session's writer (a
child process), read back by a third process: equal to what the devices produced,
with their dtypes, read as xarray without a warning, and found by each of the
analysts' queries. The live table prints both runs without a warning too."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from catalog_helpers import DocumentLog, read_in_another_process

#: Other-process read-backs of device runs: the slow tier.
pytestmark = pytest.mark.slow

SAMPLE = "readback-LCO"
CORRELATION_ID = "readback-corr-1"


@pytest.fixture(scope="module")
def stored(start_instrument, slot_pool, tmp_path_factory):
    """tem_image on a natural particle, then (SIMS mode) an 8 x 8 fly map of 6Li, 7Li."""
    from bluesky import RunEngine
    from bluesky.callbacks.best_effort import BestEffortCallback
    from instrument_support import connect_fast, stop_instrument

    from temsims.catalog import open_catalog, require_metadata
    from temsims.ioc.physics.specimen import build_specimen
    from temsims.plans import sims_map, tem_image, to_sims_mode, to_tem_mode

    natural = max((p for p in build_specimen("li2co3-particles", 1).truth["particles"]
                   if not p["labelled"]), key=lambda p: p["radius_nm"])
    x_um, y_um = natural["x_nm"] / 1000.0, natural["y_nm"] / 1000.0
    procs = start_instrument(specimen="li2co3-particles", seed=1)
    directory = tmp_path_factory.mktemp("instrument-readback") / "catalog"
    cat = open_catalog(directory)
    try:
        d = connect_fast(procs, camera_size=64)
        RE = RunEngine({"sample": SAMPLE, "specimen": "li2co3-particles",
                        "operator": "pytest"})
        require_metadata(RE)
        log = DocumentLog()
        RE.subscribe(log)
        writer = cat.writer(process=True)
        RE.subscribe(writer)
        bec = BestEffortCallback()
        bec.disable_plots()
        live = RE.subscribe(bec)
        t_before = time.time()
        md = {"correlation_id": CORRELATION_ID}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (tem_uid,) = RE(tem_image(d.stage, d.tem, d.camera, x_um=x_um, y_um=y_um,
                                      fov_um=0.5, exposure_s=0.01, md=md))
            RE(to_sims_mode(d.mode, voltage_v=4500.0))
            d.column.aperture.set("100 pA").wait(5)
            (sims_uid,) = RE(sims_map(d.imager, d.spectrometer, d.column, d.stage, d.bias,
                                      species=("6Li", "7Li"), fov_um=0.4, pixels=(8, 8),
                                      dwell_s=1e-3, md=md))
        RE.unsubscribe(live)
        assert writer.wait_for_run(sims_uid, timeout=120)
        RE(to_tem_mode(d.mode))
        yield {"dir": directory, "log": log, "tem": tem_uid, "sims": sims_uid,
               "t_before": t_before,
               "live_warnings": [str(w.message) for w in caught if "bluesky" in w.filename]}
    finally:
        cat.close(timeout=60)
        stop_instrument(procs, slot_pool)


@pytest.fixture(scope="module")
def seen(stored, tmp_path_factory):
    """What another process reads from the catalog directory."""
    queries = {"sample": ["by_sample", [SAMPLE]], "other_sample": ["by_sample", ["nope"]],
               "tem": ["by_mode", ["TEM"]], "sims": ["by_mode", ["sims"]],
               "6Li": ["by_species", ["6Li"]], "12C": ["by_species", ["12C"]],
               "28Si": ["by_species", ["28Si"]],
               "correlation": ["by_correlation_id", [CORRELATION_ID]],
               "since": ["in_time_range", [stored["t_before"], None]],
               "before": ["in_time_range", [0.0, stored["t_before"]]],
               "latest": ["latest", []]}
    return read_in_another_process(stored["dir"], queries,
                                   tmp_path_factory.mktemp("instrument-seen"), timeout=180)


def test_device_data_read_back_equal_with_their_dtype(stored, seen):
    report, arrays = seen
    assert set(report["runs"]) == {stored["tem"], stored["sims"]}
    for uid in (stored["tem"], stored["sims"]):
        assert report["runs"][uid]["stop"]["exit_status"] == "success"
        events = stored["log"].events(uid)
        assert events
        for key in events[0]["data"]:
            produced = np.stack([np.asarray(e["data"][key]) for e in events])
            np.testing.assert_array_equal(arrays[f"{uid}/{key}"], produced)
            assert arrays[f"{uid}/{key}"].dtype == produced.dtype, key
        assert report["runs"][uid]["read_warnings"] == [], uid
    image = arrays[f"{stored['tem']}/camera_image"]
    assert image.shape == (1, 64, 64) and image.dtype == np.float32
    assert image.mean() > 0
    for label in ("6Li", "7Li"):
        lines = arrays[f"{stored['sims']}/imager_{label}"]
        assert lines.shape == (8, 1, 8) and lines.dtype.kind == "i"
        assert (lines >= 0).all() and lines.sum() > 0  # every pixel acquired, Li counted
    start = report["runs"][stored["sims"]]["start"]
    assert start["species"][:2] == ["6Li", "7Li"] and start["mode"] == "SIMS"
    assert start["region"]["fov_um"] == 0.4
    assert start["correlation_id"] == CORRELATION_ID


def test_each_query_finds_the_device_runs(stored, seen):
    report, _ = seen
    q = {k: set(v) for k, v in report["queries"].items()}
    both = {stored["tem"], stored["sims"]}
    assert q["sample"] == both and q["other_sample"] == set()
    assert q["tem"] == {stored["tem"]} and q["sims"] == {stored["sims"]}
    # collectors 3 and 4 kept 12C and 13C: their maps are in the run, so it is found
    assert q["6Li"] == {stored["sims"]} and q["12C"] == {stored["sims"]}
    assert q["28Si"] == set()
    assert q["correlation"] == both
    assert q["since"] == both and q["before"] == set()
    assert report["queries"]["latest"] == [stored["sims"]]


def test_the_devices_describe_every_data_key_of_both_runs(stored):
    """Every data key of every descriptor (configuration too) has its ``dtype_numpy``,
    every array its ``dims``, as the devices described them."""
    descriptors = [d for n, d in stored["log"].docs if n == "descriptor"
                   and d["run_start"] in (stored["tem"], stored["sims"])]
    assert {d["name"] for d in descriptors} >= {"primary"}
    for desc in descriptors:
        keys = dict(desc["data_keys"])
        for config in desc["configuration"].values():
            keys.update(config["data_keys"])
        for key, entry in keys.items():
            assert "dtype_numpy" in entry, key
            if entry["dtype"] == "array":
                assert len(entry["dims"]) == len(entry["shape"]), key


def test_the_live_table_prints_both_runs_without_a_warning(stored):
    assert stored["live_warnings"] == []
