"""Detectors with inline arrays, contract metadata and a document log for tests/catalog."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from ophyd.sim import SynSignal

READ_BACK = Path(__file__).with_name("read_back.py")

IMAGE_SHAPE = (32, 24)
SPECTRUM_CHANNELS = 200


class DescribedSignal(SynSignal):
    """A simulated detector that describes its data as temsims devices do: the
    ``dtype_numpy`` and ``shape`` of its value and the ``dims`` of its axes (ophyd's
    ``SynSignal`` says only ``array``, which storage would keep as float64)."""

    def __init__(self, func, *, name: str, dims: tuple[str, ...]) -> None:
        super().__init__(func=func, name=name)
        self.dims = list(dims)

    def describe(self):
        desc = super().describe()
        value = np.asarray(self.get())
        desc[self.name].update(dtype_numpy=value.dtype.str, shape=list(value.shape),
                               dims=self.dims)
        return desc


def image_detector(name: str = "image", seed: int = 0) -> DescribedSignal:
    """A 2-D float32 detector whose arrays travel inline in the events."""
    rng = np.random.default_rng(seed)
    return DescribedSignal(lambda: rng.random(IMAGE_SHAPE, dtype=np.float32), name=name,
                           dims=("y", "x"))


def spectrum_detector(name: str = "spectrum", seed: int = 1) -> DescribedSignal:
    """A 1-D float32 spectrum (counts per channel) inline in the events."""
    rng = np.random.default_rng(seed)
    return DescribedSignal(lambda: rng.poisson(50.0, SPECTRUM_CHANNELS).astype(np.float32),
                           name=name, dims=("channel",))


def counts_map_line(name: str = "counts", seed: int = 2) -> DescribedSignal:
    """One line of an int32 ion-count map per event (an integer dtype to keep)."""
    rng = np.random.default_rng(seed)
    return DescribedSignal(lambda: rng.poisson(20, 64).astype(np.int32), name=name,
                           dims=("pixel",))


def contract_md(**overrides) -> dict:
    """Start metadata that follows the contract of docs/catalog.md (a TEM run)."""
    md = {
        "sample": "s1",
        "specimen": "li2co3-particles",
        "operator": "tester",
        "mode": "TEM",
        "correlation_id": "corr-A",
        "region": {"x_um": 1.0, "y_um": -2.0, "z_um": 0.0, "tilt_deg": 0.0, "fov_um": 5.0},
    }
    md.update(overrides)
    return md


def sims_md(species=("6Li", "7Li", "69Ga", "71Ga"), **overrides) -> dict:
    md = contract_md(mode="SIMS", polarity="positive", bias_kV=4.5, beam_energy_keV=25.5,
                     beam_current_pA=1.0,
                     collectors=[{"name": f"C{i + 1}", "species": s} for i, s in enumerate(species)])
    md["region"] = dict(md["region"], tilt_deg=-68.0)
    md.update(overrides)
    return md


class DocumentLog:
    """Every document the RunEngine emitted, by run."""

    def __init__(self) -> None:
        self.docs: list[tuple[str, dict]] = []

    def __call__(self, name, doc) -> None:
        self.docs.append((name, doc))

    def events(self, run_uid: str, stream: str = "primary") -> list[dict]:
        descs = {d["uid"] for n, d in self.docs
                 if n == "descriptor" and d["run_start"] == run_uid and d["name"] == stream}
        from event_model import unpack_event_page

        events = [d for n, d in self.docs if n == "event" and d["descriptor"] in descs]
        for n, page in self.docs:  # a flyer's collect() emits pages
            if n == "event_page" and page["descriptor"] in descs:
                events.extend(unpack_event_page(page))
        return sorted(events, key=lambda e: (e["time"], e["seq_num"]))


def read_in_another_process(directory, queries: dict, out_dir: Path,
                            timeout: float = 120) -> tuple[dict, dict[str, np.ndarray]]:
    """Run ``read_back.py`` on a catalog directory in a new Python process: its report
    (runs' metadata, query results) and every primary-stream column it read."""
    out = str(Path(out_dir) / "seen")
    subprocess.run([sys.executable, str(READ_BACK), str(directory), out, json.dumps(queries)],
                   check=True, timeout=timeout)
    with open(out + ".json") as f:
        report = json.load(f)
    with np.load(out + ".npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return report, arrays


def assert_same_document(stored, produced, path: str = "") -> None:
    """``stored`` (a document read back as JSON) equals ``produced`` (the RunEngine's):
    arrays and numpy scalars compared in the produced dtype (a float32 array comes back
    as the shortest decimals of its float32 values), tuples as lists."""
    if isinstance(produced, np.ndarray | np.generic):
        np.testing.assert_array_equal(np.asarray(stored, dtype=produced.dtype), produced,
                                      err_msg=path)
    elif isinstance(produced, dict):
        assert isinstance(stored, dict) and set(stored) == set(produced), (path, stored, produced)
        for key, value in produced.items():
            assert_same_document(stored[key], value, f"{path}/{key}")
    elif isinstance(produced, list | tuple):
        assert isinstance(stored, list) and len(stored) == len(produced), (path, stored, produced)
        for i, (s, p) in enumerate(zip(stored, produced, strict=True)):
            assert_same_document(s, p, f"{path}[{i}]")
    else:
        assert stored == produced, (path, stored, produced)
