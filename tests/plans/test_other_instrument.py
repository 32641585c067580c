"""The plan library on another lab's instrument: other PV names, its own device objects.

The simulated instrument is served under another instrument prefix and other per-part
PV prefixes (``InstrumentProcesses(part_prefixes=...)``, the server's
``--part-prefix``), as a second lab would name its PVs. Its devices are built from that
lab's device mapping (:func:`_device_map`: part -> class, PV prefix, name), never
through ``temsims.devices.connect``; the electron column is a plain ophyd ``Device``
of that lab's own (:class:`LabElectronColumn`), the other parts our classes on explicit
prefixes under the lab's names, and the microscope is the lab's own dataclass
(:class:`Lab2Microscope`). ``tem_image``, ``sims_map`` and ``correlative_tem_sims``
run on it: every document is valid against event-model's schemas and the catalog
contract, the runs are stored in a catalog and read back, and the data are the
specimen's (image size, lithium counts on the particle, its 6Li enrichment).
``docs/plans-across-labs.md`` describes this mapping.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO

from temsims.analysis.geometry import SimsMapGeometry
from temsims.analysis.isotopes import NATURAL_LI6_LI7
from temsims.analysis.maps import MapLayout, assemble
from temsims.plans import correlative_tem_sims, sims_map, tem_image, to_sims_mode, to_tem_mode
from temsims.plans.types import MICROSCOPE_PARTS, Microscope

#: The lab's PV prefixes of the instrument (``{lab}`` is filled with a unique tag so
#: that no other test's instrument answers to them).
PART_PREFIXES = {"stage": "{lab}:GONIO:", "tem": "{lab}:EM:", "column": "{lab}:FIB1:",
                 "bias": "{lab}:HV:HOLDER:", "spectrometer": "{lab}:MAGSEC:"}
#: Small and quick: the smallest camera (64 px), a 12 x 8 map at 1 ms (time scale 20).
CAMERA_PX = 64
MAP_PIXELS = (12, 8)
DWELL_S = 1e-3
EXPOSURE_S = 0.01


class LabElectronColumn(Device):
    """The lab's electron column, plain ophyd: the signals ``TemColumnDevice`` asks for
    (``fov``, ``blank``, ``ht``, ``beam_current``) and the objective lens the mode
    device reads; setpoints complete when the IOC has taken them (put completion)."""

    fov = Cpt(EpicsSignal, "FOV_RBV", write_pv="FOV", put_complete=True, kind="config")
    blank = Cpt(EpicsSignal, "BLANK_RBV", write_pv="BLANK", string=True, put_complete=True)
    ht = Cpt(EpicsSignalRO, "HT_RBV", kind="config")
    beam_current = Cpt(EpicsSignalRO, "BEAM_CURRENT", kind="config")
    objective = Cpt(EpicsSignal, "OBJ_RBV", write_pv="OBJ", string=True, put_complete=True)


@dataclass
class Lab2Microscope:
    """The lab's instrument object: the parts the ``Microscope`` protocol names."""

    stage: Any
    tem: Any
    camera: Any
    mode: Any
    imager: Any
    spectrometer: Any
    column: Any
    bias: Any


def _device_map() -> dict[str, tuple[type, str, str]]:
    """Part -> (device class, which of the lab's PV prefixes it is built on, ophyd
    name). The names are the lab's: the data keys follow them (``em_cam_image``,
    ``sims_6Li``)."""
    from temsims.devices.bias import BiasSupply
    from temsims.devices.camera import TEMCamera
    from temsims.devices.column import IonColumn
    from temsims.devices.spectrometer import MassSpectrometer
    from temsims.devices.stage import Stage

    return {"stage": (Stage, "stage", "gonio"),
            "tem": (LabElectronColumn, "tem", "em"),
            "camera": (TEMCamera, "tem", "em_cam"),
            "column": (IonColumn, "column", "fib"),
            "bias": (BiasSupply, "bias", "holder_hv"),
            "spectrometer": (MassSpectrometer, "spectrometer", "magsec")}


def build_lab_microscope(prefixes: dict[str, str], timeout: float = 20.0) -> Lab2Microscope:
    """The lab's microscope from its device mapping and PV prefixes (no factory)."""
    from temsims.devices.common import use_caproto_control_layer
    from temsims.devices.imager import SIMSImager
    from temsims.devices.mode import InstrumentMode

    use_caproto_control_layer()  # the control layer the rest of the suite uses
    parts = {part: cls(prefixes[key], name=name)
             for part, (cls, key, name) in _device_map().items()}
    # The flyer spans two parts: the ion column's raster and the spectrometer's maps.
    parts["imager"] = SIMSImager(column_prefix=prefixes["column"],
                                 spectrometer_prefix=prefixes["spectrometer"],
                                 label_source=parts["spectrometer"].labels, name="sims")
    parts["mode"] = InstrumentMode(stage=parts["stage"], tem=parts["tem"],
                                   column=parts["column"], bias=parts["bias"], name="geometry")
    for device in parts.values():
        device.wait_for_connection(timeout=timeout)
    return Lab2Microscope(**parts)


@pytest.fixture(scope="module")
def lab(start_instrument, slot_pool, particles):
    """The instrument served under the lab's names, and the lab's microscope on it;
    stopped by PID at the end of the module."""
    from instrument_support import stop_instrument

    tag = f"L2{uuid.uuid4().hex[:5].upper()}"
    prefixes = {part: p.format(lab=tag) for part, p in PART_PREFIXES.items()}
    t0 = time.monotonic()
    procs = start_instrument(instrument_prefix=f"{tag}:", part_prefixes=prefixes)
    try:
        started = time.monotonic() - t0
        scope = build_lab_microscope(prefixes)
        # Fast axes and ramps (as tests/instrument_support.FAST_SETTINGS), a small camera.
        for sig, value in ((scope.stage.alpha.velocity, 30.0), (scope.stage.x.velocity, 200.0),
                           (scope.stage.y.velocity, 200.0), (scope.bias.ramp_rate, 10000.0),
                           (scope.camera.size, CAMERA_PX)):
            sig.set(value).wait(10)
        print(f"lab instrument up in {started:.1f} s, devices in "
              f"{time.monotonic() - t0 - started:.1f} s")
        yield {"procs": procs, "prefixes": prefixes, "scope": scope}
    finally:
        stop_instrument(procs, slot_pool)


def _valid_documents(docs) -> int:
    """Validate every collected document against event-model's schemas; the count."""
    from event_model import DocumentNames, schema_validators

    n = 0
    for name, items in docs.docs.items():
        for doc in items:
            schema_validators[DocumentNames(name)].validate(doc)
            n += 1
    return n


def _map_on_specimen(maps: dict[str, np.ndarray], start: dict, particle: dict):
    """Counts of 6Li and 7Li inside the particle (pixels within 0.6 radius of its
    centre, by the map's recorded geometry) and far outside it (> 1.6 radii)."""
    geometry = SimsMapGeometry.from_metadata(start)
    ny, nx = maps["7Li"].shape
    rows, cols = np.mgrid[:ny, :nx]
    x_um, y_um = geometry.pixel_to_specimen_um(rows, cols)
    r = np.hypot(np.asarray(x_um) - particle["x_nm"] / 1000.0,
                 np.asarray(y_um) - particle["y_nm"] / 1000.0) / (particle["radius_nm"] / 1000.0)
    inside, outside = r < 0.6, r > 1.6
    assert inside.any() and outside.any(), "the map must cover the particle and its film"
    return ({s: float(maps[s][inside].sum()) for s in ("6Li", "7Li")},
            {s: float(maps[s][outside].mean()) for s in ("6Li", "7Li")},
            {s: float(maps[s][inside].mean()) for s in ("6Li", "7Li")})


def test_plans_on_an_instrument_named_otherwise(lab, particles, tmp_path):
    from bluesky import RunEngine
    from documents import DocumentCollector

    from temsims.app.loaders import load_correlative
    from temsims.catalog import check_start_metadata, open_catalog, require_metadata

    scope: Lab2Microscope = lab["scope"]
    # Nothing of ours names these PVs: the lab's prefixes, not TEMSIMS:STAGE: and co.
    assert scope.stage.x.prefix == lab["prefixes"]["stage"] + "X"
    assert scope.imager.map1.pvname == lab["prefixes"]["spectrometer"] + "COL1:MAP"
    assert isinstance(scope, Microscope)
    for part, protocol in MICROSCOPE_PARTS.items():
        if part != "edx":  # not a part of this lab's microscope (edx_sims_calibration)
            assert isinstance(getattr(scope, part), protocol), part

    labelled = particles[0]
    single, corr = labelled[0], labelled[1]  # two regions: one map each, no overlap
    RE = RunEngine({"sample": "li2co3-particles seed 1 (lab 2)", "specimen": "li2co3-particles",
                    "operator": "pytest"}, call_returns_result=True)
    require_metadata(RE)
    docs = DocumentCollector()
    RE.subscribe(docs)
    cat = open_catalog(tmp_path / "catalog")
    try:
        writer = cat.writer()
        RE.subscribe(writer)
        t0 = time.monotonic()
        # ---- tem_image on the single particle
        sx, sy = single["x_nm"] / 1000.0, single["y_nm"] / 1000.0
        sr = single["radius_nm"] / 1000.0
        tem_uid = RE(tem_image(scope.stage, scope.tem, scope.camera, x_um=sx, y_um=sy,
                               fov_um=4.0 * sr, exposure_s=EXPOSURE_S)).plan_result
        # ---- sims_map of it (the geometry changes are plans too)
        RE(to_sims_mode(scope.mode, voltage_v=4500.0))
        sims_uid = RE(sims_map(scope.imager, scope.spectrometer, scope.column, scope.stage,
                               scope.bias, fov_um=4.0 * single["radius_nm"] / 1000.0,
                               pixels=MAP_PIXELS, dwell_s=DWELL_S)).plan_result
        RE(to_tem_mode(scope.mode))
        # ---- correlative_tem_sims on the other particle (its region given)
        roi = (corr["x_nm"] / 1000.0, corr["y_nm"] / 1000.0, 4.0 * corr["radius_nm"] / 1000.0)
        result = RE(correlative_tem_sims(scope, overview_fov_um=2.0, center=roi[:2],
                                         rois=[roi], sims_pixels=MAP_PIXELS,
                                         sims_dwell_s=DWELL_S,
                                         exposure_s=EXPOSURE_S)).plan_result
        plans_s = time.monotonic() - t0
        assert scope.mode.infer() == "TEM"
        assert writer.flush(60)
        stored_s = time.monotonic() - t0 - plans_s

        # ---- documents: valid, complete, the catalog's contract
        n_docs = _valid_documents(docs)
        starts = docs.docs["start"]
        assert [s["plan_name"] for s in starts] == ["tem_image", "sims_map", "tem_image",
                                                   "sims_map", "tem_image"]
        assert all(s["exit_status"] == "success" for s in docs.docs["stop"])
        for s in starts:
            assert check_start_metadata(s) == [], s["plan_name"]
        assert [s["uid"] for s in starts] == [tem_uid, sims_uid, result["uids"]["overview"],
                                              *result["uids"]["sims"], *result["uids"]["tem"]]
        assert starts[0]["detectors"] == ["em_cam"] and starts[1]["map"]["imager"] == "sims"

        # ---- TEM: the image is the camera's, dark on the particle
        descriptors = {d["uid"] for d in docs.docs["descriptor"] if d["run_start"] == tem_uid}
        (event,) = [e for e in docs.docs["event"] if e["descriptor"] in descriptors]
        image = np.asarray(event["data"]["em_cam_image"])
        assert image.shape == (CAMERA_PX, CAMERA_PX)
        yy, xx = np.mgrid[:CAMERA_PX, :CAMERA_PX]
        rr = np.hypot(xx - (CAMERA_PX - 1) / 2, yy - (CAMERA_PX - 1) / 2) * 4.0 / CAMERA_PX
        # mass-thickness contrast: the particle (rr < 1 radius) is dark on its film
        assert image[rr < 0.5].mean() < 0.9 * image[rr > 1.3].mean()

        # ---- the catalog holds every run; its start documents and data read back
        for s in starts:
            assert dict(cat[s["uid"]].start)["map" if s["mode"] == "SIMS" else "region"] == \
                s["map" if s["mode"] == "SIMS" else "region"]
        stored = cat[sims_uid]
        primary = stored["primary"].read()
        layout = MapLayout.from_start(dict(stored.start))
        maps = assemble(layout, primary[layout.line_key].values,
                        {sp: primary[layout.key(sp)].values for sp in layout.species})
        nx, ny = MAP_PIXELS
        assert {k: v.shape for k, v in maps.items()} == {"6Li": (ny, nx), "7Li": (ny, nx)}
        on, film, on_mean = _map_on_specimen(maps, dict(stored.start), single)
        assert on["7Li"] > 0 and on["6Li"] > 0
        assert on_mean["7Li"] > 5 * film["7Li"] + 1  # lithium is where the particle is
        ratio = on["6Li"] / on["7Li"]
        assert ratio > 2 * NATURAL_LI6_LI7  # a labelled particle: enriched in 6Li

        exp = load_correlative(cat, result["correlation_id"], register=False)
        assert exp.overview.shape == (CAMERA_PX, CAMERA_PX)
        assert len(exp.sims) == 1 and len(exp.zooms) == 1
        corr_maps = {s: np.asarray(exp.sims[0].data[s]) for s in ("6Li", "7Li")}
        assert corr_maps["7Li"].shape == (ny, nx)
        on, film, on_mean = _map_on_specimen(corr_maps, exp.sims[0].start, corr)
        assert on_mean["7Li"] > 5 * film["7Li"] + 1
        print(f"lab 2: {len(starts)} runs, {n_docs} valid documents; plans {plans_s:.1f} s, "
              f"stored {stored_s:.1f} s; map 6Li/7Li on the particle {ratio:.3f} "
              f"(natural {NATURAL_LI6_LI7:.3f})")
    finally:
        cat.close(timeout=60)


def test_part_prefix_option_is_checked(capsys):
    """``--part-prefix PART=PREFIX`` (``python -m temsims.ioc.server``, what
    ``InstrumentProcesses(part_prefixes=...)`` passes): parsed, and refused clearly."""
    from temsims.ioc.launcher import InstrumentProcesses
    from temsims.ioc.server import parse_options

    args = parse_options(["--prefix", "LAB2:", "--part-prefix", "stage=LAB2:GONIO:",
                          "--part-prefix", "spectrometer=MAGSEC:"])
    assert args.part_prefixes == {"stage": "LAB2:GONIO:", "spectrometer": "MAGSEC:"}
    for bad, why in ((["--part-prefix", "gonio=X:"], "unknown part"),
                     (["--part-prefix", "stage"], "PART=PREFIX"),
                     (["--part-prefix", "stage="], "expected a PV prefix"),
                     (["--part-prefix", "stage=A:", "--part-prefix", "tem=A:"], "share")):
        with pytest.raises(SystemExit):
            parse_options(bad)
        assert why in capsys.readouterr().err
    procs = InstrumentProcesses(instrument_prefix="LAB2:", part_prefixes={"tem": "EM:"})
    assert procs.prefix("tem") == "EM:" and procs.prefix("stage") == "LAB2:STAGE:"
    assert procs.command()[-2:] == ["--part-prefix", "tem=EM:"]
