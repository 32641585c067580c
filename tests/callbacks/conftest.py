"""Fixtures of the callback tests: documents shaped like the instrument's, made with
``event_model.compose_run``.

``sims_run(...)`` gives the documents of a :func:`temsims.plans.sims.sims_map` run in
fly mode (the keys, shapes and start metadata the imager flyer and the plan record:
``imager_line``, ``imager_<species>`` (lines_per_event, nx) int32, ``map``,
``collectors``, ``region``, ``correlative`` optional) and ``tem_run(...)`` those of a
``tem_image`` run (``camera_image``). No IOC is started.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import event_model
import numpy as np
import pytest

SPECIES = ("6Li", "7Li")


def sims_start(*, nx: int, ny: int, species=SPECIES, fov_um: float = 4.0, frames: int = 1,
               x_um: float = 10.0, y_um: float = -5.0, rotation_deg: float = 0.0,
               correlative: dict | None = None, **extra) -> dict:
    """Start metadata of a sims_map run (as plans/sims.py _map_md builds it)."""
    from temsims.analysis.maps import map_block

    labels = list(species)
    md = {
        "plan_name": "sims_map", "mode": "SIMS", "sample": "LCO-7",
        "specimen": "li2co3-particles", "operator": "pytest",
        "correlation_id": "cid-test", "scan_id": 7,
        "region": {"x_um": x_um, "y_um": y_um, "z_um": 0.0, "tilt_deg": -68.0,
                   "fov_um": fov_um},
        "collectors": [{"name": f"col{n + 1}", "species": s, "mass_u": 6.0 + n}
                       for n, s in enumerate(labels)],
        "polarity": "positive", "bias_kV": 4.5, "beam_energy_keV": 30.0,
        "beam_current_pA": 10.0,
        "plan_args": {"species": labels, "fov_um": fov_um, "pixels": [nx, ny],
                      "dwell_s": 1e-3, "frames": frames, "fly": True},
        "detectors": ["imager"], "num_points": ny * frames, "shape": [ny, nx],
        "map": map_block(imager="imager", species=labels, pixels=(nx, ny), fov_um=fov_um,
                         dwell_s=1e-3, frames=frames, centre_um=(x_um, y_um),
                         scan_rotation_deg=rotation_deg),
        "acquisition": "fly", "species": labels,
    }
    if correlative is not None:
        md["correlative"] = correlative
    md.update(extra)
    return md


def sims_documents(maps: dict, *, lines_per_event: int = 1, frames: int = 1,
                   n_lines: int | None = None, pages: bool = False,
                   extra_collectors=("m12p000",), start_md: dict | None = None) -> list:
    """Documents of a fly-mode map whose frames all hold ``maps`` ({species: (ny, nx)
    int32}); only the first ``n_lines`` lines of the last frame when given (no stop
    document then). The imager names all four collectors: unused ones by mass."""
    species = list(maps)
    ny, nx = next(iter(maps.values())).shape
    md = start_md or sims_start(nx=nx, ny=ny, species=species, frames=frames)
    bundle = event_model.compose_run(metadata=md)
    docs = [("start", bundle.start_doc)]
    labels = species + list(extra_collectors)
    data_keys = {"imager_line": {"source": "SIM:imager line index", "dtype": "integer",
                                 "shape": [], "dtype_numpy": "<i8"}}
    for n, s in enumerate(labels, start=1):
        data_keys[f"imager_{s}"] = {"source": f"PV:TEMSIMS:MS:COL{n}:MAP", "dtype": "array",
                                    "shape": [lines_per_event, nx], "dtype_numpy": "<i4",
                                    "units": "counts"}
    desc = bundle.compose_descriptor(name="primary", data_keys=data_keys)
    docs.append(("descriptor", desc.descriptor_doc))
    events = []
    for f in range(frames):
        for row in range(0, ny, lines_per_event):
            if n_lines is not None and f == frames - 1 and row >= n_lines:
                break
            data = {"imager_line": row}
            for s in labels:
                block = maps[s][row:row + lines_per_event] if s in maps else \
                    np.zeros((lines_per_event, nx), np.int32)
                data[f"imager_{s}"] = np.asarray(block, np.int32).copy()
            t = time.time()
            events.append(desc.compose_event(data=data, timestamps=dict.fromkeys(data, t)))
    if pages:
        for ev in events:  # collect() emits pages; one per event here
            docs.append(("event_page", event_model.pack_event_page(ev)))
    else:
        docs.extend(("event", ev) for ev in events)
    if n_lines is None:
        docs.append(("stop", bundle.compose_stop()))
    return docs


def tem_documents(image: np.ndarray, *, fov_um: float = 20.0, x_um: float = 10.0,
                  y_um: float = -5.0, correlative: dict | None = None) -> list:
    """Documents of a tem_image run: one event with ``camera_image`` and the stage."""
    md = {"plan_name": "tem_image", "mode": "TEM", "sample": "LCO-7",
          "specimen": "li2co3-particles", "operator": "pytest", "correlation_id": "cid-test",
          "scan_id": 6,
          "region": {"x_um": x_um, "y_um": y_um, "z_um": 0.0, "tilt_deg": 0.0,
                     "fov_um": fov_um},
          "plan_args": {"x_um": x_um, "y_um": y_um, "fov_um": fov_um, "exposure_s": 0.05},
          "image": {"size": int(image.shape[-1]), "fov_um": fov_um, "x_um": x_um,
                    "y_um": y_um, "tilt_alpha_deg": 0.0, "tilt_beta_deg": 0.0},
          "detectors": ["camera"], "motors": ["stage_x", "stage_y"], "num_points": 1}
    if correlative is not None:
        md["correlative"] = correlative
    bundle = event_model.compose_run(metadata=md)
    dk = {"camera_image": {"source": "PV:TEMSIMS:CAM:IMAGE", "dtype": "array",
                           "shape": list(image.shape), "dtype_numpy": image.dtype.str,
                           "units": "counts"},
          "stage_x": {"source": "PV:X", "dtype": "number", "shape": [], "units": "um"},
          "stage_y": {"source": "PV:Y", "dtype": "number", "shape": [], "units": "um"}}
    desc = bundle.compose_descriptor(name="primary", data_keys=dk)
    data = {"camera_image": image, "stage_x": x_um, "stage_y": y_um}
    ev = desc.compose_event(data=data, timestamps=dict.fromkeys(data, time.time()))
    return [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc), ("event", ev),
            ("stop", bundle.compose_stop())]


def correlative_block(role: str, roi_index: int | None = 0) -> dict:
    """The ``correlative`` start block (plans/correlative.py role_md)."""
    return {"role": role, "roi_index": None if role == "overview" else roi_index,
            "roi": None}


def poisson_maps(nx: int, ny: int, species=SPECIES, seed: int = 0) -> dict:
    """Distinct, non-constant int32 count maps per species."""
    rng = np.random.default_rng(seed)
    means = {"6Li": 8.0, "7Li": 100.0}
    yy, xx = np.mgrid[0:ny, 0:nx]
    out = {}
    for s in species:
        lam = means.get(s, 20.0) * (1.0 + 0.5 * np.sin(xx / 3.0) * np.cos(yy / 4.0))
        out[s] = rng.poisson(lam).astype(np.int32)
    return out


@pytest.fixture
def make():
    """The document factories of this module (``make.sims_documents(...)`` ...)."""
    return SimpleNamespace(sims_start=sims_start, sims_documents=sims_documents,
                           tem_documents=tem_documents, correlative_block=correlative_block,
                           poisson_maps=poisson_maps)


@pytest.fixture
def debug_callbacks(monkeypatch):
    """Let errors inside make_class_safe callbacks raise (bluesky's switch)."""
    monkeypatch.setenv("BLUESKY_DEBUG_CALLBACKS", "1")


@pytest.fixture(autouse=True)
def _agg_backend():
    import matplotlib

    matplotlib.use("Agg", force=True)
    yield
