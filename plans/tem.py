"""TEM imaging plans: one image, and a mosaic of overlapping tiles."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np

from temsims.analysis.geometry import TemImageGeometry
from temsims.plans._common import (
    _num,
    check_device,
    check_md,
    check_number,
    check_pair,
    check_within,
    device_limits,
    plan_args_md,
    region_md,
    start_metadata,
)
from temsims.plans.types import CameraDevice, Plan, StageDevice, TemColumnDevice

#: TEM:FOV range (um) and CAM:EXPOSURE range (s) the IOC accepts.
FOV_RANGE_UM = (0.05, 100.0)
EXPOSURE_RANGE_S = (0.001, 60.0)
MAX_TILES = 400


def _check_tem_devices(stage, tem, camera) -> None:
    check_device("stage", stage, StageDevice)
    check_device("tem", tem, TemColumnDevice)
    check_device("camera", camera, CameraDevice)


def _check_xy(stage, name_x: str, x: float, name_y: str, y: float) -> None:
    check_within(name_x, x, device_limits(stage.x), "um")
    check_within(name_y, y, device_limits(stage.y), "um")


def image_md(stage, camera, *, fov_um: float, x_um: float, y_um: float,
             tilt_alpha_deg: float | None = None):
    """Plan stub: the ``image`` start-metadata block of one TEM image at (x_um, y_um).

    ``{"size": camera pixels per side, "fov_um", "x_um", "y_um", "tilt_alpha_deg",
    "tilt_beta_deg", "pixel_nm", "pixel_to_specimen": 3x3 nested list}``: what
    :meth:`temsims.analysis.geometry.TemImageGeometry.from_metadata` needs. The
    affine maps ``(col, row, 1)`` to specimen ``(x_um, y_um, 1)``. The size and the
    tilts are read now (alpha from ``tilt_alpha_deg`` if given); without a camera size
    (a simulation) ``size``, ``pixel_nm`` and ``pixel_to_specimen`` are None.
    """
    size = int(_num((yield from bps.rd(camera.size, default_value=0)))) or None
    if tilt_alpha_deg is None:
        tilt_alpha_deg = _num((yield from bps.rd(stage.alpha, default_value=0.0)))
    beta = getattr(stage, "beta", None)
    tilt_beta_deg = 0.0 if beta is None else _num((yield from bps.rd(beta, default_value=0.0)))
    out = {"size": size, "fov_um": float(fov_um), "x_um": float(x_um), "y_um": float(y_um),
           "tilt_alpha_deg": float(tilt_alpha_deg), "tilt_beta_deg": float(tilt_beta_deg),
           "pixel_nm": None, "pixel_to_specimen": None}
    if size:
        geometry = TemImageGeometry(size=size, fov_um=float(fov_um), centre_x_um=float(x_um),
                                    centre_y_um=float(y_um), tilt_alpha_deg=out["tilt_alpha_deg"],
                                    tilt_beta_deg=out["tilt_beta_deg"])
        out["pixel_nm"] = 1000.0 * geometry.pixel_size_um
        out["pixel_to_specimen"] = [[round(float(v), 12) for v in row]
                                    for row in geometry.affine_to_specimen()]
    return out


def tem_image(stage: StageDevice, tem: TemColumnDevice, camera: CameraDevice, *, x_um: float,
              y_um: float, fov_um: float, exposure_s: float,
              after_image: Callable[[np.ndarray], Plan[Any]] | None = None,
              md: dict | None = None) -> Plan[str]:
    """Move the stage to (x_um, y_um) and take one bright-field TEM image.

    Parameters
    ----------
    stage : temsims.devices.stage.Stage
        Specimen stage (x, y read with the image).
    tem : temsims.devices.tem.TEMColumn
        Electron column: its field of view is set to ``fov_um`` and the beam unblanked.
    camera : temsims.devices.camera.TEMCamera
        The camera; its ``exposure`` is set to ``exposure_s``.
    x_um, y_um : float
        Specimen position at the image centre (um), within the stage soft limits.
    fov_um : float
        Field of view (um), 0.05..100.
    exposure_s : float
        Exposure (s), 0.001..60.
    after_image : callable, optional
        ``after_image(image)``: a plan run inside this run with the image just read
        (the value of its event; None in a simulation such as ``summarize_plan``,
        where nothing is read); the readings it takes go into this run's streams
        (e.g. the regions of interest of
        :func:`temsims.plans.correlative.correlative_tem_sims`).
    md : dict, optional
        Extra start metadata (``sample``, ``specimen``, ``operator``,
        ``correlation_id``...); keys here win.

    Yields
    ------
    msg : Msg
        One run, one event in ``primary`` with ``camera_image`` (counts) and the
        stage position. The start document's ``image`` block (:func:`image_md`:
        camera size, fov, centre, alpha/beta tilts, pixel -> specimen affine) is what
        :meth:`temsims.analysis.geometry.TemImageGeometry.from_metadata` reads.

    Returns
    -------
    str
        The run's uid.
    """
    _check_tem_devices(stage, tem, camera)
    if after_image is not None and not callable(after_image):
        raise TypeError(f"after_image must be a plan function f(image) or None, "
                        f"got {after_image!r}")
    x_um = check_number("x_um", x_um, unit="um")
    y_um = check_number("y_um", y_um, unit="um")
    fov_um = check_number("fov_um", fov_um, low=FOV_RANGE_UM[0], high=FOV_RANGE_UM[1], unit="um")
    exposure_s = check_number("exposure_s", exposure_s, low=EXPOSURE_RANGE_S[0],
                              high=EXPOSURE_RANGE_S[1], unit="s")
    md = check_md(md)
    _check_xy(stage, "x_um", x_um, "y_um", y_um)

    region = yield from region_md(stage, fov_um=fov_um, x_um=x_um, y_um=y_um)
    image = yield from image_md(stage, camera, fov_um=fov_um, x_um=x_um, y_um=y_um,
                                tilt_alpha_deg=region["tilt_deg"])
    _md = start_metadata(
        plan_name="tem_image", mode="TEM", region=region, md=md,
        plan_args=plan_args_md(stage=stage, tem=tem, camera=camera, x_um=x_um, y_um=y_um,
                               fov_um=fov_um, exposure_s=exposure_s),
        extra={"image": image, "detectors": [camera.name],
               "motors": [stage.x.name, stage.y.name],
               "num_points": 1, "num_intervals": 0, "hints": {"dimensions": [
                   ([stage.x.name], "primary"), ([stage.y.name], "primary")]}})

    @bpp.stage_decorator([camera])
    @bpp.run_decorator(md=_md)
    def inner():
        yield from bps.mv(tem.fov, fov_um, camera.exposure, exposure_s, tem.blank, "Unblanked",
                          stage.x, x_um, stage.y, y_um)
        reading = yield from bps.trigger_and_read([camera, stage.x, stage.y])
        if after_image is not None:  # no reading: a simulation (summarize_plan)
            yield from after_image(np.asarray(reading[camera.image.name]["value"])
                                   if reading else None)

    return (yield from inner())


def mosaic_positions(center, n_tiles, fov_um: float, overlap: float):
    """Tile centres (um) of a serpentine mosaic: list of (ix, iy, x, y), row by row.

    The pitch is ``fov_um * (1 - overlap)``; the mosaic is centred on ``center``.
    """
    nx, ny = n_tiles
    pitch = fov_um * (1.0 - overlap)
    xs = center[0] + (np.arange(nx) - (nx - 1) / 2.0) * pitch
    ys = center[1] + (np.arange(ny) - (ny - 1) / 2.0) * pitch
    out = []
    for iy in range(ny):
        cols = range(nx) if iy % 2 == 0 else range(nx - 1, -1, -1)
        for ix in cols:
            out.append((ix, iy, float(xs[ix]), float(ys[iy])))
    return out


def tem_mosaic(stage: StageDevice, tem: TemColumnDevice, camera: CameraDevice, *,
               center: tuple = (0.0, 0.0), n_tiles: tuple = (2, 2), fov_um: float,
               overlap: float = 0.1, exposure_s: float, md: dict | None = None) -> Plan[str]:
    """A mosaic of TEM images: ``nx x ny`` tiles, overlapping by ``overlap``.

    Parameters
    ----------
    stage, tem, camera
        As in :func:`tem_image`.
    center : (float, float)
        Mosaic centre (x, y) on the specimen (um).
    n_tiles : (int, int)
        Tiles along x and y, each 1..20 (at most 400 in all).
    fov_um : float
        Field of view of one tile (um), 0.05..100.
    overlap : float
        Fraction of a tile shared with its neighbour, 0 <= overlap < 0.9; the stage
        pitch is ``fov_um * (1 - overlap)``.
    exposure_s : float
        Exposure per tile (s), 0.001..60.
    md : dict, optional
        Extra start metadata.

    Yields
    ------
    msg : Msg
        One run; one event per tile (serpentine order) with the image, the stage
        x/y and the camera's image centre. The start document carries ``mosaic``
        {n_tiles, pitch_um, overlap, tiles: [[ix, iy, x_um, y_um], ...]}; the
        region is the mosaic centre and its larger extent.

    Returns
    -------
    str
        The run's uid.
    """
    _check_tem_devices(stage, tem, camera)
    center = check_pair("center", center, unit="um")
    n_tiles = check_pair("n_tiles", n_tiles, integer=True, low=1, high=20)
    if n_tiles[0] * n_tiles[1] > MAX_TILES:
        raise ValueError(f"n_tiles {n_tiles} gives more than {MAX_TILES} tiles")
    fov_um = check_number("fov_um", fov_um, low=FOV_RANGE_UM[0], high=FOV_RANGE_UM[1], unit="um")
    overlap = check_number("overlap", overlap, low=0.0, high=0.9, high_open=True)
    exposure_s = check_number("exposure_s", exposure_s, low=EXPOSURE_RANGE_S[0],
                              high=EXPOSURE_RANGE_S[1], unit="s")
    md = check_md(md)
    tiles = mosaic_positions(center, n_tiles, fov_um, overlap)
    xs = [t[2] for t in tiles]
    ys = [t[3] for t in tiles]
    _check_xy(stage, "center[0] (mosaic x extent)", min(xs), "center[1] (mosaic y extent)",
              min(ys))
    _check_xy(stage, "center[0] (mosaic x extent)", max(xs), "center[1] (mosaic y extent)",
              max(ys))
    pitch = fov_um * (1.0 - overlap)
    extent = max(n * pitch + fov_um * overlap for n in n_tiles)

    region = yield from region_md(stage, fov_um=extent, x_um=center[0], y_um=center[1])
    _md = start_metadata(
        plan_name="tem_mosaic", mode="TEM", region=region, md=md,
        plan_args=plan_args_md(stage=stage, tem=tem, camera=camera, center=center,
                               n_tiles=n_tiles, fov_um=fov_um, overlap=overlap,
                               exposure_s=exposure_s),
        extra={"detectors": [camera.name], "motors": [stage.x.name, stage.y.name],
               "num_points": len(tiles), "num_intervals": len(tiles) - 1,
               "shape": [n_tiles[1], n_tiles[0]],
               "mosaic": {"n_tiles": list(n_tiles), "pitch_um": pitch, "overlap": overlap,
                          "tile_fov_um": fov_um,
                          "tiles": [[ix, iy, round(x, 6), round(y, 6)]
                                    for ix, iy, x, y in tiles]},
               "hints": {"dimensions": [([stage.y.name], "primary"),
                                        ([stage.x.name], "primary")]}})

    @bpp.stage_decorator([camera])
    @bpp.run_decorator(md=_md)
    def inner():
        yield from bps.mv(tem.fov, fov_um, camera.exposure, exposure_s, tem.blank, "Unblanked")
        for _ix, _iy, x, y in tiles:
            yield from bps.checkpoint()
            yield from bps.mv(stage.x, x, stage.y, y)
            yield from bps.trigger_and_read([camera, stage.x, stage.y])

    return (yield from inner())


__all__ = ["image_md", "mosaic_positions", "tem_image", "tem_mosaic"]
