"""Pixel <-> specimen coordinate models of SIMS maps and TEM images.

Both models are frozen dataclasses built from the numbers the plans record (see
:meth:`SimsMapGeometry.from_metadata` and :meth:`TemImageGeometry.from_metadata`)
and reproduce the simulator's conventions exactly. Specimen coordinates are in um,
``x`` along the stage x axis and ``y`` along the stage y axis; pixel coordinates are
``(row, col)`` array indices, or ``(col, row)`` in the homogeneous 3x3 matrices (the
``(x, y)`` order of :class:`skimage.transform.AffineTransform`). Row 0 of every image
is its -y edge and column 0 its -x edge; a pixel's coordinate is its centre.

SIMS map (:class:`temsims.ioc.physics.sims.ScanGeometry`)
    Square pixels of ``p = fov_um / nx`` in the plane normal to the ion beam::

        u = (col - (nx - 1) / 2) p,   v = (row - (ny - 1) / 2) p
        (ur, vr) = R(rotation) (u, v)
        x = cx + ur,   y = cy + vr / cos(incidence)

    The 45 deg incidence stretches the map on the specimen by 1 / cos 45 = 1.414
    along y: a map is foreshortened by 0.707 along y relative to a TEM image.

TEM image (:class:`temsims.ioc.physics.tem_optics.ImageGeometry`)
    ``N x N`` pixels of ``p = fov_um / N``::

        x = X + (col - (N - 1) / 2) p / cos(beta)
        y = Y + (row - (N - 1) / 2) p / cos(alpha)

Pure numpy: nothing here talks to the instrument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from temsims.constants import SIMS_INCIDENCE_DEG


def _number(value: Any, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return out


def _homogeneous(linear: np.ndarray, centre_xy: Sequence[float],
                 centre_px_xy: Sequence[float]) -> np.ndarray:
    """3x3 matrix ``[[L, t], [0, 0, 1]]`` with ``L @ centre_px + t = centre``."""
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = np.asarray(centre_xy, float) - linear @ np.asarray(centre_px_xy, float)
    return matrix


class _PixelModel:
    """Methods shared by the two geometries (each defines ``affine_to_specimen``)."""

    shape: tuple[int, int]

    def affine_to_specimen(self) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def affine_from_specimen(self) -> np.ndarray:
        """3x3 matrix mapping specimen ``(x_um, y_um, 1)`` to ``(col, row, 1)``."""
        return np.linalg.inv(self.affine_to_specimen())

    def pixel_to_specimen_um(self, rows: Any, cols: Any) -> tuple[np.ndarray, np.ndarray]:
        """Specimen ``(x_um, y_um)`` of fractional pixel coordinates (broadcast)."""
        rows, cols = np.broadcast_arrays(np.asarray(rows, float), np.asarray(cols, float))
        m = self.affine_to_specimen()
        return (m[0, 0] * cols + m[0, 1] * rows + m[0, 2],
                m[1, 0] * cols + m[1, 1] * rows + m[1, 2])

    def specimen_to_pixel(self, x_um: Any, y_um: Any) -> tuple[np.ndarray, np.ndarray]:
        """Fractional ``(rows, cols)`` of specimen points in um (broadcast)."""
        x_um, y_um = np.broadcast_arrays(np.asarray(x_um, float), np.asarray(y_um, float))
        m = self.affine_from_specimen()
        return (m[1, 0] * x_um + m[1, 1] * y_um + m[1, 2],
                m[0, 0] * x_um + m[0, 1] * y_um + m[0, 2])

    def corners_px(self) -> np.ndarray:
        """``(col, row)`` of the four corner pixel centres and the centre, (5, 2)."""
        ny, nx = self.shape
        return np.array([[0, 0], [nx - 1, 0], [nx - 1, ny - 1], [0, ny - 1],
                         [(nx - 1) / 2, (ny - 1) / 2]], float)


@dataclass(frozen=True)
class SimsMapGeometry(_PixelModel):
    """Where a SIMS map's pixels lie on the specimen (see the module docstring).

    Parameters
    ----------
    nx, ny : int
        Map columns and rows.
    fov_um : float
        Raster width along the map's columns in the beam-normal plane (um).
    centre_x_um, centre_y_um : float
        Specimen point at the map centre: the stage position (um).
    rotation_deg : float
        Scan rotation (deg, counter-clockwise from specimen x to y).
    incidence_deg : float
        Angle between the ion beam and the specimen normal (deg).
    """

    nx: int
    ny: int
    fov_um: float
    centre_x_um: float
    centre_y_um: float
    rotation_deg: float = 0.0
    incidence_deg: float = SIMS_INCIDENCE_DEG

    def __post_init__(self) -> None:
        if int(self.nx) != self.nx or int(self.ny) != self.ny or self.nx < 1 or self.ny < 1:
            raise ValueError(f"nx, ny must be positive integers, got {self.nx!r}, {self.ny!r}")
        if not self.fov_um > 0:
            raise ValueError(f"fov_um must be > 0, got {self.fov_um!r}")
        if not 0 <= abs(self.incidence_deg) < 90:
            raise ValueError(f"incidence_deg must be within (-90, 90), got {self.incidence_deg!r}")

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(ny, nx)`` of the map."""
        return (int(self.ny), int(self.nx))

    @property
    def pixel_size_um(self) -> float:
        """Pixel pitch in the beam-normal plane (um)."""
        return self.fov_um / self.nx

    @property
    def stretch(self) -> float:
        """``1 / cos(incidence)``: elongation on the specimen along y."""
        return 1.0 / math.cos(math.radians(self.incidence_deg))

    @property
    def extent_um(self) -> tuple[float, float]:
        """Specimen extent (x, y) of the unrotated map (um)."""
        return (self.fov_um, self.fov_um * self.ny / self.nx * self.stretch)

    def affine_to_specimen(self) -> np.ndarray:
        """3x3 matrix mapping ``(col, row, 1)`` to specimen ``(x_um, y_um, 1)``."""
        p = self.pixel_size_um
        th = math.radians(self.rotation_deg)
        c, s = math.cos(th), math.sin(th)
        linear = np.array([[c * p, -s * p], [s * p * self.stretch, c * p * self.stretch]])
        return _homogeneous(linear, (self.centre_x_um, self.centre_y_um),
                            ((self.nx - 1) / 2.0, (self.ny - 1) / 2.0))

    @classmethod
    def from_map_block(cls, block: Mapping[str, Any], *,
                       incidence_deg: float | None = None) -> SimsMapGeometry:
        """The geometry recorded in a SIMS map run's ``map`` block.

        The block (``temsims.analysis.maps.map_block``) holds ``pixels`` [nx, ny],
        ``fov_um``, ``centre_um`` [x, y] (the stage readback), ``scan_rotation_deg``
        and ``incidence_deg``: nothing else is looked up.

        Parameters
        ----------
        block : dict
            The ``map`` block.
        incidence_deg : float, optional
            Overrides the recorded incidence (deg).

        Raises
        ------
        ValueError
            If a key is missing or not a number.
        """
        if not isinstance(block, Mapping):
            raise ValueError(f"a map block must be a mapping, got {type(block).__name__}")
        missing = [k for k in ("pixels", "fov_um", "centre_um", "scan_rotation_deg",
                               "incidence_deg") if block.get(k) is None]
        if missing:
            raise ValueError(f"the map block lacks {missing}")
        pixels, centre = block["pixels"], block["centre_um"]
        for name, pair in (("pixels", pixels), ("centre_um", centre)):
            if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise ValueError(f"map {name} must be a pair, got {pair!r}")
        nx, ny = (int(_number(p, "map pixels")) for p in pixels)
        incidence = block["incidence_deg"] if incidence_deg is None else incidence_deg
        return cls(nx=nx, ny=ny, fov_um=_number(block["fov_um"], "fov_um"),
                   centre_x_um=_number(centre[0], "centre x (um)"),
                   centre_y_um=_number(centre[1], "centre y (um)"),
                   rotation_deg=_number(block["scan_rotation_deg"], "scan_rotation_deg"),
                   incidence_deg=_number(incidence, "incidence_deg"))

    @classmethod
    def from_metadata(cls, start_doc: Mapping[str, Any], *,
                      incidence_deg: float | None = None) -> SimsMapGeometry:
        """The geometry of a SIMS map run: :meth:`from_map_block` of its start
        document's ``map`` block.

        Raises
        ------
        ValueError
            If the document has no complete ``map`` block.
        """
        block = start_doc.get("map") if isinstance(start_doc, Mapping) else None
        if block is None:
            raise ValueError("the start document has no 'map' block: not a SIMS map run")
        return cls.from_map_block(block, incidence_deg=incidence_deg)


@dataclass(frozen=True)
class TemImageGeometry(_PixelModel):
    """Where a TEM image's pixels lie on the specimen (see the module docstring).

    Parameters
    ----------
    size : int
        Pixels per side of the (square) image.
    fov_um : float
        Field of view (um): pixel pitch ``fov_um / size`` in the image plane.
    centre_x_um, centre_y_um : float
        Specimen point at the image centre: the stage position (um).
    tilt_alpha_deg, tilt_beta_deg : float
        Holder tilts (deg): alpha foreshortens the projection along y, beta along x.
    """

    size: int
    fov_um: float
    centre_x_um: float
    centre_y_um: float
    tilt_alpha_deg: float = 0.0
    tilt_beta_deg: float = 0.0

    def __post_init__(self) -> None:
        if int(self.size) != self.size or self.size < 1:
            raise ValueError(f"size must be a positive integer, got {self.size!r}")
        if not self.fov_um > 0:
            raise ValueError(f"fov_um must be > 0, got {self.fov_um!r}")
        for name in ("tilt_alpha_deg", "tilt_beta_deg"):
            if not abs(getattr(self, name)) < 90:
                raise ValueError(f"{name} must be within (-90, 90), got {getattr(self, name)!r}")

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(size, size)``."""
        return (int(self.size), int(self.size))

    @property
    def pixel_size_um(self) -> float:
        """Pixel pitch in the image plane (um)."""
        return self.fov_um / self.size

    def affine_to_specimen(self) -> np.ndarray:
        """3x3 matrix mapping ``(col, row, 1)`` to specimen ``(x_um, y_um, 1)``."""
        p = self.pixel_size_um
        linear = np.diag([p / math.cos(math.radians(self.tilt_beta_deg)),
                          p / math.cos(math.radians(self.tilt_alpha_deg))])
        centre_px = (self.size - 1) / 2.0
        return _homogeneous(linear, (self.centre_x_um, self.centre_y_um), (centre_px, centre_px))

    @classmethod
    def from_metadata(cls, start_doc: Mapping[str, Any], *, size: int | None = None,
                      tilt_beta_deg: float | None = None) -> TemImageGeometry:
        """The geometry of a ``tem_image`` run: its start document's ``image`` block
        (``temsims.plans.tem.image_md``: size, fov_um, x_um, y_um, tilt_alpha_deg,
        tilt_beta_deg); nothing else is looked up.

        Parameters
        ----------
        start_doc : dict
            The run's start document.
        size : int, optional
            Pixels per side; overrides the recorded value (a simulated run records
            none).
        tilt_beta_deg : float, optional
            Beta tilt (deg); overrides the recorded one.

        Raises
        ------
        ValueError
            If the ``image`` block is missing or incomplete.
        """
        block = start_doc.get("image") if isinstance(start_doc, Mapping) else None
        if not isinstance(block, Mapping):
            raise ValueError("the start document has no 'image' block: not a tem_image run")
        if size is None:
            size = block.get("size")
        if size is None:
            raise ValueError("the image block records no size (a simulated run): pass size= "
                             "(the image's side in pixels)")
        missing = [k for k in ("fov_um", "x_um", "y_um", "tilt_alpha_deg") if block.get(k) is None]
        if missing:
            raise ValueError(f"the image block lacks {missing}")
        if tilt_beta_deg is None:
            tilt_beta_deg = block.get("tilt_beta_deg") or 0.0
        return cls(size=int(_number(size, "size")), fov_um=_number(block["fov_um"], "fov_um"),
                   centre_x_um=_number(block["x_um"], "x_um"),
                   centre_y_um=_number(block["y_um"], "y_um"),
                   tilt_alpha_deg=_number(block["tilt_alpha_deg"], "tilt_alpha_deg"),
                   tilt_beta_deg=_number(tilt_beta_deg, "tilt_beta_deg"))


def pixel_transform_matrix(source: _PixelModel, target: _PixelModel) -> np.ndarray:
    """3x3 matrix mapping ``(col, row, 1)`` of ``source`` to ``(col, row, 1)`` of ``target``
    through the specimen (e.g. SIMS map pixels to TEM image pixels)."""
    return target.affine_from_specimen() @ source.affine_to_specimen()


__all__ = [
    "SimsMapGeometry",
    "TemImageGeometry",
    "pixel_transform_matrix",
]
