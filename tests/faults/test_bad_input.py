"""A catalogue of bad input (issue 14 item 6): every case refused, naming what it got wrong.

One parametrised test over plan arguments, ``temsims`` command lines, catalog
locations, Channel Access puts on every writable PV of the real instrument, and start
metadata that break the contract. Each case must

- be refused: the plan, the command, the catalog or the RunEngine raises (the CLI
  exits 2), an IOC answers the put with a put error (``ErrorResponseReceived``);
- say why: the message names the argument (option, PV, metadata key) and what it
  allows (a range, the states, the form), matched per case;
- move nothing: the stage, bias, beam and column PVs read the same after the case,
  and no run started (the RunEngine emitted no start document);
- lose nothing: a run stored in a catalog before the cases reads back equal after
  each catalog and metadata case (and at the end);
- leave every part answering: each part's ``UPTIME`` and ``SIM:NOW`` read after it.

One shared instrument (``instruments.get``), one RunEngine and one catalog for the
module; the PV cases use caproto's sync client, the only one that reports a put error.
Sizes in docs/reliability.md (Bad input).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: catools etc.

import catools  # noqa: E402
from documents import DocumentCollector  # noqa: E402

PARTS = ("stage", "tem", "column", "bias", "spectrometer")

# ------------------------------------------------------------------ what must not change
#: PVs (part, name) read before and after every case: positions, beam, bias, raster,
#: counters of acquisitions. VELO is not here: one case is a documented clamp of it.
WATCHED = (
    *[("stage", f"{axis}.RBV") for axis in "XYZAB"],
    *[("stage", f"{axis}.VAL") for axis in "XYZAB"],
    ("bias", "VOLTAGE"), ("bias", "VOLTAGE_RBV"), ("bias", "ENABLE_RBV"), ("bias", "RAMP_RATE"),
    ("column", "BLANK_RBV"), ("column", "HV_RBV"), ("column", "APERTURE"),
    ("column", "SCAN:ACQUIRE_RBV"), ("column", "SCAN:NX"), ("column", "SCAN:NY"),
    ("column", "SCAN:DWELL"), ("column", "SCAN:FOV"), ("column", "SCAN:FRAME"),
    ("tem", "OBJ_RBV"), ("tem", "HT_RBV"), ("tem", "FOV_RBV"), ("tem", "CAM:COUNTER"),
    ("tem", "EDX:COUNTER"), ("spectrometer", "FIELD"), ("spectrometer", "BUSY"),
    ("spectrometer", "IMG:FRAME"),
)


@dataclass
class Bench:
    """What every case runs against, shared by the module."""

    procs: Any
    devices: Any
    RE: Any
    docs: DocumentCollector
    catalog: Any
    stored_uid: str
    stored: dict
    good_catalog_uri: str
    tmp: Path
    capsys: Any = None
    monkeypatch: Any = None

    def pv(self, part: str, name: str) -> str:
        return (self.procs.sim_prefix if part == "sim" else self.procs.prefix(part)) + name

    def snapshot(self) -> dict:
        return {f"{part}:{name}": catools.get(self.pv(part, name)) for part, name in WATCHED}

    def assert_answering(self) -> None:
        for part in PARTS:
            assert catools.get(self.pv(part, "UPTIME"), timeout=5) >= 0.0, part
        assert catools.get(self.pv("sim", "NOW"), timeout=5) > 0.0
        # ophyd fails every move of an axis whose RBV is in alarm: a refused put to a
        # field (TWV) once left RBV at WRITE/MAJOR and broke later tests' moves.
        for axis in "XYZAB":
            rbv = self.pv("stage", f"{axis}.RBV")
            assert catools.severity(rbv) == 0, f"{rbv} left in alarm"

    def assert_stored_run_intact(self) -> None:
        assert read_run(self.catalog, self.stored_uid) == self.stored


def read_run(catalog: Any, uid: str) -> dict:
    """The parts of a stored run compared before and after: start, stop, the data."""
    run = catalog[uid]
    data = run["primary"].read()
    return {"start": dict(run.metadata["start"]), "stop": dict(run.metadata["stop"]),
            "data": {k: np.asarray(data[k]).tolist() for k in sorted(data.data_vars)}}


@pytest.fixture(scope="module")
def bench(instruments, tmp_path_factory) -> Bench:
    from bluesky import RunEngine
    from bluesky.plans import count
    from instrument_support import connected
    from ophyd.sim import det

    from temsims.catalog import open_catalog, require_metadata

    procs = instruments.get()
    devices = connected(procs)
    tmp = tmp_path_factory.mktemp("bad-input")
    catalog = open_catalog(tmp / "catalog")
    # The run that must survive every case: stored before them, synchronously.
    store = RunEngine({}, call_returns_result=True)
    store.subscribe(catalog.writer(buffered=False))
    (uid,) = store(count([det], num=3, md={"sample": "stored before the cases"})).run_start_uids
    stored = read_run(catalog, uid)
    RE = RunEngine({"sample": "li2co3-particles seed 1", "specimen": "li2co3-particles",
                    "operator": "pytest"}, call_returns_result=True)
    require_metadata(RE)
    docs = DocumentCollector()
    RE.subscribe(docs)
    RE.subscribe(catalog.writer(buffered=False))
    bench = Bench(procs=procs, devices=devices, RE=RE, docs=docs, catalog=catalog,
                  stored_uid=uid, stored=stored, good_catalog_uri=catalog.uri.split("?")[0],
                  tmp=tmp)
    yield bench
    try:
        bench.assert_stored_run_intact()  # after every case this worker ran
    finally:
        catalog.close(timeout=30)


# ====================================================================== the cases
@dataclass(frozen=True)
class Case:
    """One bad input: ``run(bench)`` must raise ``raises`` whose message matches every
    pattern of ``says`` (case-insensitive)."""

    category: str
    name: str
    run: Callable[[Bench], Any]
    says: tuple[str, ...]
    raises: type[BaseException] | tuple[type[BaseException], ...] = (ValueError, TypeError)
    checks_catalog: bool = False
    extra: dict = field(default_factory=dict, compare=False)


CASES: list[Case] = []


def case(category: str, name: str, run, *says: str, **kwargs) -> None:
    CASES.append(Case(category, name, run, says, **kwargs))


# ------------------------------------------------------------------ plan arguments
def _plan(plan_name: str, *device_names: str, microscope: bool = False, **kwargs):
    """A case body: the plan built and run on the bench's RunEngine."""
    def run(b: Bench):
        import temsims.plans as plans

        plan = getattr(plans, plan_name)
        args = (b.devices,) if microscope else tuple(getattr(b.devices, n) for n in device_names)
        return b.RE(plan(*args, **kwargs))
    return run


TEM = ("stage", "tem", "camera")
EDX = ("stage", "tem", "edx")
SIMS = ("imager", "spectrometer", "column", "stage", "bias")
SIMS_OK = {"species": ("6Li", "7Li"), "fov_um": 1.0, "pixels": (4, 4), "dwell_s": 1e-3}
CORR_OK = {"overview_fov_um": 4.0}
FIND_OK = {"fov_um": 4.0}
CAL_OK = {"start_um": (0.0, 0.0), "stop_um": (1.0, 0.0), "points": 4}

for label, plan_name, devs, kwargs, says in [
    ("tem_image x_um NaN", "tem_image", TEM,
     dict(x_um=math.nan, y_um=0.0, fov_um=2.0, exposure_s=0.01), ("x_um", "finite")),
    ("tem_image fov_um inf", "tem_image", TEM,
     dict(x_um=0.0, y_um=0.0, fov_um=math.inf, exposure_s=0.01), ("fov_um", "finite")),
    ("tem_image exposure_s str", "tem_image", TEM,
     dict(x_um=0.0, y_um=0.0, fov_um=2.0, exposure_s="fast"), ("exposure_s", "number")),
    ("tem_image x_um beyond stage", "tem_image", TEM,
     dict(x_um=5000.0, y_um=0.0, fov_um=2.0, exposure_s=0.01), ("x_um", r"\[.*\]")),
    ("tem_mosaic enormous", "tem_mosaic", TEM,
     dict(n_tiles=(1000, 1000), fov_um=2.0, exposure_s=0.01), ("n_tiles", r"\[.*\]")),
    ("tem_mosaic overlap 1.5", "tem_mosaic", TEM,
     dict(fov_um=2.0, overlap=1.5, exposure_s=0.01), ("overlap", r"[\[(].*[\])]")),
    ("edx_point live_time_s negative", "edx_point", EDX,
     dict(x_um=0.0, y_um=0.0, live_time_s=-1.0), ("live_time_s", r"[\[(].*[\])]")),
    ("edx_line npts enormous", "edx_line", EDX,
     dict(start=(0.0, 0.0), stop=(1.0, 0.0), npts=10**6, live_time_s=0.01),
     ("npts", r"\[.*\]")),
    ("mass_spectrum step_u 0", "mass_spectrum", ("spectrometer",),
     dict(start_u=5.0, stop_u=8.0, step_u=0.0, dwell_s=1e-3), ("step_u", r"[\[(].*[\])]")),
    ("mass_spectrum start_u NaN", "mass_spectrum", ("spectrometer",),
     dict(start_u=math.nan, stop_u=8.0, step_u=0.01, dwell_s=1e-3), ("start_u", "finite")),
    ("calibrate_masses one peak", "calibrate_masses", ("spectrometer",),
     dict(peaks=("69Ga",)), ("peaks", r"2\.\.")),
    ("calibrate_masses window_u NaN", "calibrate_masses", ("spectrometer",),
     dict(window_u=math.nan), ("window_u", "finite")),
    ("sims_map species unknown", "sims_map", SIMS,
     dict(SIMS_OK, species=("6Li", "Xx99")), ("species", "Xx99")),
    ("sims_map species empty", "sims_map", SIMS,
     dict(SIMS_OK, species=()), ("species", r"1\.\.4")),
    ("sims_map species str", "sims_map", SIMS,
     dict(SIMS_OK, species="7Li"), ("species", "list or tuple")),
    ("sims_map enormous", "sims_map", SIMS,
     dict(SIMS_OK, pixels=(100000, 100000)), ("pixels", r"\[.*\]")),
    ("sims_map dwell_s NaN", "sims_map", SIMS,
     dict(SIMS_OK, dwell_s=math.nan), ("dwell_s", "finite")),
    ("sims_map fov_um str", "sims_map", SIMS,
     dict(SIMS_OK, fov_um="big"), ("fov_um", "number")),
    ("sims_map frames -1", "sims_map", SIMS,
     dict(SIMS_OK, frames=-1), ("frames", r"\[.*\]|>=")),
    ("sims_map interferences unknown policy", "sims_map", SIMS,
     dict(SIMS_OK, interferences="maybe"), ("interferences", "warn, refuse, ignore")),
    # 6LiH+ lands 0.007 u from 7Li+, inside the collectors' 0.8 u window (COL:WINDOW).
    ("sims_map interferences refused", "sims_map", SIMS,
     dict(SIMS_OK, species=("6Li", "7Li"), interferences="refuse"),
     ("6LiH\\+", "7Li", "0.8 u window", "M/dM 1010", "interferences='warn'")),
    ("depth_profile interferences refused", "depth_profile", SIMS,
     dict(SIMS_OK, frames=3, species=("12C", "13C"), interferences="refuse"),
     ("12CH\\+", "13C")),
    ("depth_profile frames 0", "depth_profile", SIMS,
     dict(SIMS_OK, frames=0), ("frames", r"\[.*\]|>=")),
    ("depth_profile incidence_deg inf", "depth_profile", SIMS,
     dict(SIMS_OK, frames=3, incidence_deg=math.inf), ("incidence_deg", "finite")),
    ("calibrate_dead_time one aperture", "calibrate_dead_time", ("spectrometer", "column"),
     dict(apertures=("1 nA",)), ("apertures", r"2\.\.10")),
    ("calibrate_dead_time unknown aperture", "calibrate_dead_time", ("spectrometer", "column"),
     dict(apertures=("1 nA", "2 nA")), ("apertures", "2 nA", "not one of")),
    ("calibrate_dead_time count_time_s NaN", "calibrate_dead_time", ("spectrometer", "column"),
     dict(count_time_s=math.nan), ("count_time_s", "finite")),
    ("calibrate_dead_time repeats 0", "calibrate_dead_time", ("spectrometer", "column"),
     dict(repeats=0), ("repeats", r"\[.*\]")),
    ("calibrate_dead_time apply str", "calibrate_dead_time", ("spectrometer", "column"),
     dict(apply="yes"), ("apply", "True or False")),
    ("to_sims_mode voltage_v inf", "to_sims_mode", ("mode",),
     dict(voltage_v=math.inf), ("voltage_v", "finite")),
    ("to_sims_mode voltage_v beyond", "to_sims_mode", ("mode",),
     dict(voltage_v=9000.0), ("voltage_v", r"\[.*\]")),
]:
    case("plan", label, _plan(plan_name, *devs, **kwargs), *says)

for label, plan_name, kwargs, says in [
    ("correlative rois empty", "correlative_tem_sims", dict(CORR_OK, rois=[]),
     ("rois", r"1\.\.50")),
    ("correlative overview NaN", "correlative_tem_sims", dict(overview_fov_um=math.nan),
     ("overview_fov_um", "finite")),
    ("correlative species repeated", "correlative_tem_sims",
     dict(CORR_OK, species=("6Li", "6Li")), ("species", "repeat")),
    ("correlative sims_pixels 0", "correlative_tem_sims",
     dict(CORR_OK, sims_pixels=(0, 5)), ("sims_pixels", r"\[.*\]")),
    ("correlative md not a dict", "correlative_tem_sims", dict(CORR_OK, md=["x"]),
     ("md", "dict")),
    ("correlative reference unknown", "correlative_tem_sims",
     dict(CORR_OK, reference="no-such-specimen"), ("reference", "REFERENCE_REGIONS")),
    ("correlative reference width negative", "correlative_tem_sims",
     dict(CORR_OK, reference={"x_um": 1.0, "y_um": 1.0, "value": 0.08, "width_um": -1.0}),
     ("width_um",)),
    ("find_labelled fov_um negative", "find_labelled_particles", dict(fov_um=-1.0),
     ("fov_um", r"[\[(].*[\])]")),
    ("find_labelled significance NaN", "find_labelled_particles",
     dict(FIND_OK, significance=math.nan), ("significance", "finite")),
    ("find_labelled max_particles -1", "find_labelled_particles",
     dict(FIND_OK, max_particles=-1), ("max_particles", r"\[0, 200\]")),
    ("edx_sims_calibration points 0", "edx_sims_calibration", dict(CAL_OK, points=0),
     ("points", r"\[.*\]|>=")),
    ("edx_sims_calibration start NaN", "edx_sims_calibration",
     dict(CAL_OK, start_um=(math.nan, 0.0)), ("start_um", "finite")),
    ("edx_sims_calibration species", "edx_sims_calibration",
     dict(CAL_OK, analyte_species="Unobtainium"), ("analyte_species", "Unobtainium")),
    ("calibrate_raster passes 0", "calibrate_raster", dict(passes=0), ("passes", r"\[.*\]")),
    ("calibrate_raster sims_pixels small", "calibrate_raster",
     dict(sims_pixels=(32, 32)), ("sims_pixels", ">= 64")),
    ("calibrate_raster voltage_v NaN", "calibrate_raster", dict(voltage_v=math.nan),
     ("voltage_v", "finite")),
]:
    case("plan", label, _plan(plan_name, microscope=True, **kwargs), *says)


# ------------------------------------------------------------------ command lines
def _cli(*argv: str):
    def run(b: Bench):
        from temsims.app import cli

        def started(*args, **kwargs):
            raise AssertionError(f"temsims {' '.join(argv)} was not refused: it started")

        # Should a case not be refused, it must not start IOCs, a demo or a server.
        b.monkeypatch.setattr("temsims.ioc.server.serve", started)
        b.monkeypatch.setattr("temsims.app.demo.run_demo", started)
        b.monkeypatch.setattr("temsims.catalog.serve.serve", started)
        b.monkeypatch.setattr("IPython.start_ipython", started)
        b.capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
        b.extra_stderr = b.capsys.readouterr().err
        raise CliExit(code, b.extra_stderr)
    return run


class CliExit(Exception):
    """What a command line did: its exit code and what it printed on stderr."""

    def __init__(self, code: Any, stderr: str) -> None:
        self.code = code
        super().__init__(f"exit {code}: {stderr.strip()}")


for label, argv, says in [
    ("ioc --time-scale 0", ("ioc", "all", "--time-scale", "0"), ("--time-scale", r"\(0, 1000\]")),
    ("ioc --time-scale nan", ("ioc", "all", "--time-scale", "nan"),
     ("--time-scale", r"\(0, 1000\]")),
    ("ioc --seed abc", ("ioc", "all", "--seed", "abc"), ("--seed", "int")),
    ("ioc --seed -1", ("ioc", "all", "--seed", "-1"), ("--seed", r"\[0, 2\*\*32\)")),
    ("ioc unknown part", ("ioc", "detector"), ("part", "choose from")),
    ("ioc --specimen gold", ("ioc", "all", "--specimen", "gold"), ("--specimen", "choose from")),
    ("ioc --base-port 70000", ("ioc", "all", "--base-port", "70000"),
     ("--base-port", r"1024\.\.65525")),
    ("ioc --drift-nm-per-min -5", ("ioc", "all", "--drift-nm-per-min", "-5"),
     ("--drift-nm-per-min", r"0\.\.1000")),
    ("ioc --prefix with a blank", ("ioc", "all", "--prefix", "BAD PREFIX:"),
     ("--prefix", "no blank")),
    ("ioc --prefix empty", ("ioc", "all", "--prefix", ""), ("--prefix", "1-40 characters")),
    ("demo --time-scale -1", ("demo", "--time-scale", "-1"), ("--time-scale", r"\(0, 1000\]")),
    ("demo --base-port http", ("demo", "--base-port", "http"), ("--base-port", "int")),
    ("demo unknown option", ("demo", "--quick", "--bogus"), ("--bogus", "unrecognized")),
    ("demo --catalog ftp", ("demo", "--catalog", "ftp://x/y"), ("--catalog", "http")),
    ("shell --base-port x", ("shell", "--base-port", "x"), ("--base-port", "int")),
    ("shell --catalog s3", ("shell", "--catalog", "s3://bucket/cat"), ("--catalog", "http")),
    ("serve --port abc", ("serve", "--port", "abc"), ("--port", "int")),
    ("serve --port 70000", ("serve", "--port", "70000"), ("--port", r"\[0, 65535\]")),
    ("serve --reader empty", ("serve", "--reader", ""), ("--reader", "1-40 characters")),
    ("no command", (), ("command", "required")),
    ("unknown command", ("launch",), ("command", "choose from")),
]:
    case("cli", label, _cli(*argv), *says, raises=CliExit)


# ------------------------------------------------------------------ catalog locations
def _open(location_of: Callable[[Bench], Any], **kwargs):
    def run(b: Bench):
        from temsims.catalog import open_catalog

        cat = open_catalog(location_of(b), **kwargs)
        cat.close()
    return run


def _corrupt(b: Bench) -> Path:
    directory = b.tmp / "corrupt"
    directory.mkdir(exist_ok=True)
    (directory / "catalog.db").write_bytes(b"not a database" * 64)
    return directory


def _under_a_file(b: Bench) -> Path:
    (b.tmp / "a-file").write_text("x")
    return b.tmp / "a-file" / "catalog"


def _wrong_key(b: Bench):
    from tiled.client import from_uri

    return from_uri(b.good_catalog_uri, api_key="0" * 32)


for label, run, says in [
    ("missing: under a file", _open(_under_a_file), ("catalog location", "not a directory")),
    ("missing: cannot be created", _open(lambda b: "/proc/temsims-no-such/catalog"),
     ("catalog location", "cannot be created")),
    ("read-only directory", _open(lambda b: "/sys/kernel"),
     ("catalog location", "not writable")),
    ("corrupt database", _open(_corrupt), ("catalog location", "catalog.db is not a SQLite")),
    ("unknown URI scheme", _open(lambda b: "ftp://host/catalog"),
     ("catalog location", "http")),
    ("location not a path", _open(lambda b: 42), ("catalog location", "str or Path")),
    ("location empty", _open(lambda b: ""), ("catalog location", "empty")),
    ("wrong API key", _wrong_key, ("401", "API key")),
]:
    case("catalog", label, run, *says, raises=Exception, checks_catalog=True)


# ------------------------------------------------------------------ metadata contract
GOOD_MD = {"mode": "TEM", "correlation_id": "bad-input-case",
           "region": {"x_um": 0.0, "y_um": 0.0, "z_um": 0.0, "tilt_deg": 0.0, "fov_um": 2.0}}
SIMS_MD = {**GOOD_MD, "mode": "SIMS", "collectors": [{"name": "col1", "species": "7Li"}],
           "polarity": "positive", "bias_kV": 4.5, "beam_energy_keV": 25.5,
           "beam_current_pA": 1.0}


def _count(md: dict):
    def run(b: Bench):
        from bluesky.plans import count
        from ophyd.sim import det

        return b.RE(count([det], md=md))
    return run


def _region(**changes) -> dict:
    return {**GOOD_MD, "region": {**GOOD_MD["region"], **changes}}


for label, md, says in [
    ("region.x_um NaN", _region(x_um=math.nan), ("region.x_um", "finite")),
    ("region.fov_um negative", _region(fov_um=-1.0), ("region.fov_um", "> 0")),
    ("region without fov_um",
     {**GOOD_MD, "region": {k: v for k, v in GOOD_MD["region"].items() if k != "fov_um"}},
     ("region", "fov_um")),
    ("mode XRAY", {**GOOD_MD, "mode": "XRAY"}, ("mode", "TEM', 'SIMS")),
    ("operator empty", {**GOOD_MD, "operator": ""}, ("operator", "non-empty string")),
    ("sample None", {**GOOD_MD, "sample": None}, ("sample", "string")),
    ("correlation_id a number", {**GOOD_MD, "correlation_id": 42},
     ("correlation_id", "non-empty string")),
    ("SIMS bias sign", {**SIMS_MD, "bias_kV": -4.5}, ("bias_kV", "positive")),
    ("SIMS collectors empty", {**SIMS_MD, "collectors": []}, ("collectors", "non-empty list")),
    ("SIMS beam_current_pA inf", {**SIMS_MD, "beam_current_pA": math.inf},
     ("beam_current_pA", "finite")),
    ("SIMS polarity", {**SIMS_MD, "polarity": "up"}, ("polarity", "positive', 'negative")),
    ("SIMS missing beam energy",
     {k: v for k, v in SIMS_MD.items() if k != "beam_energy_keV"}, ("beam_energy_keV",)),
]:
    case("metadata", label, _count(md), *says, raises=ValueError, checks_catalog=True)


# ------------------------------------------------------------------ Channel Access puts
def _put(part: str, name: str, value: Any, data_type: Any = None):
    def run(b: Bench):
        from caproto.sync.client import write

        data = value if isinstance(value, list) else [value]
        if data_type is None and isinstance(data[0], str):
            kind = "STRING"
        else:
            kind = data_type
        from caproto import ChannelType

        catools.retry_search(write, b.pv(part, name), data, notify=True,
                             data_type=None if kind is None else ChannelType[kind],
                             timeout=5.0, repeater=False)
    return run


def _field(name: str) -> str:
    """The name a put error carries: the PV's last component, or a record's field."""
    return re.escape(name.split(".")[-1] if "." in name else name)


def _pv_case(part: str, name: str, value: Any, form: str, data_type: str | None = None,
             label: str = "") -> None:
    from caproto import ErrorResponseReceived

    case("pv", f"{part} {name} {label or repr(value)}", _put(part, name, value, data_type),
         _field(name), form, raises=ErrorResponseReceived)


NAN, INF = math.nan, math.inf
FINITE = "not a finite number"
SCALAR = "scalar PV"
STATES = r"one of \["
INTEGER = "not an integer"
NUMBER = "not a number"

# Ranges, wrong types, strings and arrays, chosen per PV (docs/pv-reference.md).
for part, name, value, form, *data_type in [
    ("bias", "VOLTAGE", 5000.0, r"-4500.*4500"),
    ("bias", "VOLTAGE", "abc", NUMBER),
    ("bias", "VOLTAGE", "nan", FINITE),
    ("bias", "VOLTAGE", [1.0, 2.0], SCALAR),
    ("bias", "RAMP_RATE", 0.0, r"1\.0 and 10000"),
    ("bias", "ENABLE", "Maybe", STATES),
    ("bias", "ENABLE", "On", "SIMS interlock"),
    ("column", "HV", 0.5, r"1\.0 and 30"),
    ("column", "BLANK", "Unblanked", "SIMS interlock"),
    ("column", "BLANK", ["Blanked", "Unblanked"], SCALAR),
    ("column", "SCAN:NX", 2.5, INTEGER, "DOUBLE"),
    ("column", "SCAN:NY", 5000, r"1 and 1024"),
    ("column", "SCAN:DWELL", "nan", FINITE),
    ("column", "SCAN:FOV", -1.0, r"0\.01 and 1000"),
    ("column", "SCAN:SPOT_X", 100.0, r"\[-2\.0, 2\.0\]"),
    ("column", "SCAN:ROTATION", [1.0, 2.0], SCALAR),
    ("tem", "HT", 300.0, r"80\.0 and 200"),
    ("tem", "CONTRAST", "dark", NUMBER),
    ("tem", "CAM:SIZE", [64, 64], SCALAR),
    ("tem", "CAM:SIZE", 2048, r"64 and 1024"),
    ("tem", "EDX:NPTS", 1.5, INTEGER, "DOUBLE"),
    ("tem", "EDX:X", 1000.0, r"-100\.0 and 100"),
    ("spectrometer", "FIELD", 3.0, r"0\.0 and 2\.0"),
    ("spectrometer", "COL4:MASS", [7.0, 6.0], SCALAR),
    ("spectrometer", "COL3:MASS", "7Li", NUMBER),
    ("spectrometer", "DEAD_TIME", 1e-6, r"1e-08 and 1e-07"),
    ("spectrometer", "DEAD_TIME:SOURCE", "", "must not be empty"),
    ("stage", "X", 2000.0, r"soft limits \[-990\.0, 990\.0\]"),
    ("stage", "A", -75.0, r"soft limits \[-69\.0, 30\.0\]"),
    ("stage", "A", "tilt", NUMBER),
    ("stage", "B", [1.0, 2.0], SCALAR),
    ("stage", "Z.VELO", -1.0, "> 0"),
    ("stage", "Y.ACCL", -1.0, ">= 0"),
    ("stage", "X.VMAX", -5.0, ">= 0"),
    ("stage", "B.DIR", "Sideways", "Pos or Neg|one of"),
    ("stage", "X.SPMG", "Run", STATES),
    ("stage", "Z.EGU", "mm", "fixed"),
    ("stage", "Y.TWV", NAN, FINITE),
    ("stage", "Z.RLV", INF, FINITE),
    ("stage", "Z.HLM", NAN, FINITE),
    ("stage", "B.OFF", INF, FINITE),
    ("sim", "RESET", "Later", STATES),
    ("sim", "TEM", "Asleep", STATES),
]:
    _pv_case(part, name, value, form, *data_type)


def writable_pvs() -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(part, PV name, kind, enum states) of every writable PV the non-stage parts
    serve (the stage's motor records have their own cases above)."""
    from caproto import ChannelType
    from caproto.server import PVGroup, SubGroup, pvproperty

    from temsims.ioc.server import part_group_class

    found = []

    def walk(cls, prefix: str, part: str) -> None:
        for attr in dir(cls):
            value = getattr(cls, attr, None)
            if isinstance(value, pvproperty):
                spec = value.pvspec
                if spec.read_only:
                    continue
                dtype = spec.dtype
                states = tuple((spec.cls_kwargs or {}).get("enum_strings") or ())
                if dtype == ChannelType.ENUM or states:
                    kind = "enum"
                elif isinstance(spec.value, str) or dtype == ChannelType.STRING:
                    kind = "string"
                elif dtype in (ChannelType.LONG, ChannelType.INT) or (
                        isinstance(spec.value, int | np.integer)
                        and not isinstance(spec.value, bool)):
                    kind = "int"
                else:
                    kind = "float"
                found.append((part, prefix + spec.name, kind, states))
            elif isinstance(value, SubGroup) and isinstance(value.group_cls, type) \
                    and issubclass(value.group_cls, PVGroup):
                sub = value.prefix if value.prefix is not None else f"{attr}:"
                walk(value.group_cls, prefix + sub, part)

    for part in ("tem", "column", "bias", "spectrometer"):
        walk(part_group_class(part), "", part)
    return sorted(found)


# Every writable PV: NaN into every number, 2.5 into every integer, an unknown state into
# every enum. No silent accept of NaN anywhere (docs/pv-reference.md).
for part, name, kind, _states in writable_pvs():
    if kind == "float":
        _pv_case(part, name, NAN, FINITE, label="NaN (every float PV)")
    elif kind == "int":
        _pv_case(part, name, 2.5, INTEGER, "DOUBLE", label="2.5 (every integer PV)")
    elif kind == "enum":
        _pv_case(part, name, "NoSuchState", STATES, label="unknown state (every enum PV)")


# ====================================================================== the test
@pytest.mark.parametrize("case", CASES, ids=[f"{c.category}: {c.name}" for c in CASES])
def test_bad_input_is_refused_naming_it(case: Case, bench: Bench, capsys, monkeypatch):
    from caproto import ErrorResponseReceived

    bench.capsys, bench.monkeypatch = capsys, monkeypatch
    bench.docs.clear()
    before = bench.snapshot()
    with pytest.raises(case.raises) as info:
        case.run(bench)
    error = info.value
    if isinstance(error, ErrorResponseReceived):
        message = bytes(error.args[0].error_message).rstrip(b"\x00").decode()
    else:
        message = str(error)
    if isinstance(error, CliExit):
        assert error.code == 2, message
    for pattern in case.says:
        assert re.search(pattern, message, re.IGNORECASE), (pattern, message)
    assert "start" not in bench.docs.docs, "a run started"
    assert bench.snapshot() == before, "something moved"
    bench.assert_answering()
    if case.checks_catalog:
        bench.assert_stored_run_intact()


def test_a_velocity_beyond_vmax_is_clamped_as_documented(bench: Bench):
    """The one bad put the IOC takes, as the motor record does (pv-reference.md)."""
    velo = bench.pv("stage", "A.VELO")
    before = catools.caget(velo)
    try:
        catools.caput(velo, 1000.0)
        assert catools.caget(velo) == catools.caget(bench.pv("stage", "A.VMAX")) == 30.0
    finally:
        catools.caput(velo, before)


def test_the_catalogue_is_big_enough():
    counts = {c: sum(1 for k in CASES if k.category == c) for c in
              ("plan", "cli", "catalog", "pv", "metadata")}
    assert sum(counts.values()) >= 60 and all(counts.values()), counts
