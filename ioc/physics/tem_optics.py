"""Image formation of the simulated TEM: bright-field mass-thickness and STEM HAADF.

Geometry (:class:`ImageGeometry`)
    The image centre looks at specimen point (``centre_x_um``, ``centre_y_um``) (the
    stage position). Column ``j`` and row ``i`` of an ``N x N`` image of field of
    view ``F`` (pixel ``p = F / N``) look at::

        x = X + (j - (N - 1) / 2) * p / cos(beta)
        y = Y + (i - (N - 1) / 2) * p / cos(alpha)

    so row 0 is the -y edge, the alpha tilt foreshortens the projection along y and
    the beta tilt along x, and the projected path through the specimen grows by
    ``1 / (cos alpha cos beta)``. Specimen coordinates outside the grid are vacuum.

Signal per electron (per specimen pixel, 2 nm)
    - TEM bright field: ``T = exp(-(rho t)_s / (rho t)_0)``, the mass-thickness
      contrast of an objective aperture; ``(rho t)_0`` (ug/cm^2) is the contrast
      parameter (carbon's), given at 200 kV and scaled with the electron's ``p v``
      (:func:`contrast_mass_thickness`). ``(rho t)_s`` weighs each element's mass by
      how much more than carbon it scatters (``materials.scattering_weight``, as
      Z^(4/3) / A): a ug/cm^2 of Cu is 1.55 times darker than one of carbon. Vacuum
      transmits 1. A crystalline
      specimen adds its diffraction contrast to ``rho t`` as an equivalent
      mass-thickness (:attr:`Specimen.bf_diffraction_ug_cm2`, 0 by default).
    - STEM HAADF: ``1 - exp(-sum_el n_el sigma_1 Z_el^1.7)`` (Z-contrast, Rutherford
      scattering to high angles); vacuum gives 0.

Area averaging, blur, texture
    The signal map is averaged over blocks of the image-pixel footprint (no
    aliasing when a pixel covers many specimen pixels) and interpolated
    bilinearly at the pixel centres. With the objective lens off the image is out of
    focus: a Gaussian blur of ``defocus_blur_nm`` (sigma). Below a field of view of
    ``fringe_fov_um`` a lattice-fringe texture is added inside material (bright
    field, lens on), with a spacing ``fringe_spacing_nm`` and an orientation that
    changes from one ``fringe_cell_nm`` cell to the next: texture, not specimen data.

Dose and noise
    Electrons per pixel ``= I t / e / N^2``; the detected counts are
    ``gain * Poisson(electrons * signal)`` (gain 1 count per electron by default, so
    variance / mean = 1).

What the beams did (:func:`beam_effects_ug_cm2`, from the holder's depth and dose)
    A TEM image shows what the instrument did to the specimen: the ion beam's
    craters (the sputtered depth removed from the top layers) and the Ga it
    implanted (``n / Y x d_b (1 - exp(-d / d_b))`` atoms/nm^2 at sputtered depth
    ``d``: every ion kept at first, saturating at the steady state; none where the
    beam went through), and the electron beam's radiolysis of beam-sensitive
    matrices (``materials.Material.damage_loss`` of the dose received).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from temsims.ioc.physics.materials import (
    ATOMIC_MASS_UNIT_KG,
    ELEMENTARY_CHARGE_C,
    atomic_number,
    ion_range_nm,
    isotope_mass_u,
    scattering_weight,
)
from temsims.ioc.physics.specimen import Specimen, Window, _crop

if TYPE_CHECKING:
    from temsims.ioc.physics.holder import Holder

ELECTRON_REST_ENERGY_KEV = 510.99895


def pv_product_kev(ht_kv: float) -> float:
    """``p v`` of an electron accelerated through ``ht_kv`` (keV): T (T + 2 m c^2) / (T + m c^2)."""
    t = float(ht_kv)
    return t * (t + 2 * ELECTRON_REST_ENERGY_KEV) / (t + ELECTRON_REST_ENERGY_KEV)


def contrast_mass_thickness(mt0_200kv_ug_cm2: float, ht_kv: float) -> float:
    """(rho t)_0 at ``ht_kv`` from its value at 200 kV: elastic scattering angles
    scale as 1 / (p v), so for a fixed aperture (rho t)_0 grows roughly as (p v)."""
    return mt0_200kv_ug_cm2 * pv_product_kev(ht_kv) / pv_product_kev(200.0)


@dataclass(frozen=True)
class OpticsParameters:
    """Named constants of image formation (estimates; each one is a knob)."""

    #: (rho t)_0 of bright-field contrast at 200 kV, ug/cm^2.
    contrast_mt0_ug_cm2: float = 30.0
    #: Gaussian sigma of the out-of-focus blur with the objective lens off, nm.
    defocus_blur_nm: float = 150.0
    #: HAADF cross-section per atom for Z = 1, nm^2 (times Z^haadf_z_exponent).
    haadf_sigma_nm2: float = 1e-6
    haadf_z_exponent: float = 1.7
    #: Lattice-fringe texture (optional touch at high magnification).
    fringe_fov_um: float = 0.1
    fringe_spacing_nm: float = 0.5
    fringe_amplitude: float = 0.12
    fringe_cell_nm: float = 40.0
    #: Camera counts per detected electron.
    camera_gain: float = 1.0


@dataclass(frozen=True)
class ImageGeometry:
    """Where the image looks and how big it is (see the module docstring)."""

    centre_x_um: float = 0.0
    centre_y_um: float = 0.0
    fov_um: float = 2.0
    size: int = 256
    tilt_a_deg: float = 0.0
    tilt_b_deg: float = 0.0

    @property
    def pixel_nm(self) -> float:
        return self.fov_um * 1000.0 / self.size

    @property
    def cos_a(self) -> float:
        return math.cos(math.radians(self.tilt_a_deg))

    @property
    def cos_b(self) -> float:
        return math.cos(math.radians(self.tilt_b_deg))

    @property
    def path_factor(self) -> float:
        """Projected thickness / true thickness."""
        return 1.0 / (self.cos_a * self.cos_b)

    def pixel_coordinates_nm(self) -> tuple[np.ndarray, np.ndarray]:
        """Specimen (x of each column (1, N), y of each row (N, 1)) in nm."""
        offsets = (np.arange(self.size) - (self.size - 1) / 2) * self.pixel_nm
        x = self.centre_x_um * 1000.0 + offsets / self.cos_b
        y = self.centre_y_um * 1000.0 + offsets / self.cos_a
        return x[None, :], y[:, None]

    def point_nm(self, dx_um: float, dy_um: float) -> tuple[float, float]:
        """Specimen point (nm) seen at offset (dx, dy) um from the image centre."""
        return ((self.centre_x_um + dx_um / self.cos_b) * 1000.0,
                (self.centre_y_um + dy_um / self.cos_a) * 1000.0)


#: Landing energy (keV) of the SIMS geometry's Ga+ (30 kV column, +4.5 kV holder): sets
#: the implanted Ga's build-up depth in a TEM image after SIMS.
SIMS_LANDING_KEV = 25.5
#: ug/cm^2 of one Ga atom per nm^2.
GA_UG_CM2_PER_NM2 = isotope_mass_u("Ga") * ATOMIC_MASS_UNIT_KG * 1e3 * 1e6 / 1e-14


def scattering_mass_thickness(specimen: Specimen, window: Window = None) -> np.ndarray:
    """``(rho t)_s`` (ug/cm^2, carbon-equivalent): each layer's mass-thickness times its
    phases' scattering weight (see the module docstring)."""
    total = 0.0
    for layer in specimen.layers:
        density = layer._mix(window, lambda m: m.density_g_cm3 * m.scattering_weight)
        total = total + density * _crop(layer.thickness_nm, window) * 0.1
    return np.array(specimen._full(total, window), np.float32)


def beam_effects_ug_cm2(specimen: Specimen, depth_nm: np.ndarray, dose_e_nm2: np.ndarray,
                        window: Window, landing_kev: float = SIMS_LANDING_KEV) -> np.ndarray:
    """Change of ``(rho t)_s`` (ug/cm^2) on ``window`` from a sputtered depth, the Ga
    implanted with it and an electron dose (``depth_nm`` and ``dose_e_nm2`` on the
    window): the craters' mass removed from the top, radiolysis of what remains, the
    implanted Ga added."""
    shape = specimen.window_shape(window)
    depth = np.broadcast_to(np.asarray(depth_nm, np.float32), shape)
    dose = np.broadcast_to(np.asarray(dose_e_nm2, np.float32), shape)
    delta = np.zeros(shape, np.float32)
    top = np.zeros(shape, np.float32)
    for layer in specimen.layers:
        thickness = np.broadcast_to(np.asarray(_crop(layer.thickness_nm, window), np.float32),
                                    shape)
        removed = np.clip(depth - top, 0.0, thickness)
        density = layer._mix(window, lambda m: m.density_g_cm3 * m.scattering_weight)
        lost = layer._mix(window, lambda m: m.density_g_cm3 * m.scattering_weight
                          * m.damage_loss(dose))
        delta -= 0.1 * (density * removed + lost * (thickness - removed))
        top = top + thickness
    if np.any(depth > 0):
        surface = specimen.surface(depth, window)
        density = surface.atomic_density_per_nm3()
        yield_ = np.maximum(surface.sputter_yield(), 1e-3)
        buildup = 0.5 * ion_range_nm(landing_kev)
        ga = density / yield_ * buildup * -np.expm1(-depth / buildup)
        ga = np.where(depth < top, ga, 0.0)  # sputtered through: nothing holds it
        delta += (ga * GA_UG_CM2_PER_NM2 * scattering_weight("Ga")).astype(np.float32)
    return delta


def electrons_per_pixel(beam_current_na: float, exposure_s: float, size: int) -> float:
    """Dose: beam current x exposure / e / pixels."""
    return beam_current_na * 1e-9 * exposure_s / ELEMENTARY_CHARGE_C / (size * size)


class ImageRenderer:
    """Renders camera images of one specimen; thread-safe, caches its maps.

    Parameters
    ----------
    specimen
        The virtual specimen.
    params
        Image-formation constants.
    """

    def __init__(self, specimen: Specimen, params: OpticsParameters | None = None,
                 holder: Holder | None = None) -> None:
        self.specimen = specimen
        self.params = params or OpticsParameters()
        #: Where the sputtered depth and the electron dose are kept (None: a pristine
        #: specimen that no beam changes).
        self.holder = holder
        self._lock = threading.Lock()
        self._mt_lock = threading.Lock()
        self._pristine: np.ndarray | None = None
        self._mt: np.ndarray | None = None
        self._mt_version = -1
        self._zsum: np.ndarray | None = None
        self._signal_cache: OrderedDict = OrderedDict()
        self._level_cache: OrderedDict = OrderedDict()

    # ---- specimen maps (full grid) ---------------------------------------------------
    @property
    def version(self) -> int:
        """The holder's version (0 without one): what the maps were made for."""
        return 0 if self.holder is None else self.holder.version

    def mass_thickness(self) -> np.ndarray:
        """Untilted ``(rho t)_s`` (ug/cm^2, carbon-equivalent) on the specimen grid, as
        the beams have left the specimen."""
        with self._mt_lock:
            version = self.version
            if self._mt is not None and self._mt_version == version:
                return self._mt
            if self._pristine is None:
                self._pristine = scattering_mass_thickness(self.specimen)
            mt = self._pristine
            if self.holder is not None and version > 0:
                depth, dose = self.holder.depth, self.holder.electron_dose
                rows, cols = np.nonzero(np.any(depth > 0, axis=1))[0], np.nonzero(
                    np.any(depth > 0, axis=0))[0]
                drows, dcols = np.nonzero(np.any(dose > 0, axis=1))[0], np.nonzero(
                    np.any(dose > 0, axis=0))[0]
                rows, cols = np.concatenate([rows, drows]), np.concatenate([cols, dcols])
                if rows.size and cols.size:
                    window = (slice(int(rows.min()), int(rows.max()) + 1),
                              slice(int(cols.min()), int(cols.max()) + 1))
                    mt = mt.copy()
                    mt[window] = np.maximum(mt[window] + beam_effects_ug_cm2(
                        self.specimen, depth[window], dose[window], window), 0.0)
            self._mt, self._mt_version = mt, version
            return mt

    def expose(self, geometry: ImageGeometry, electrons_per_px: float) -> None:
        """Record an image's electron dose on the specimen under it (holder's map)."""
        if self.holder is None or electrons_per_px <= 0:
            return
        x_nm, y_nm = geometry.pixel_coordinates_nm()
        half_x = geometry.pixel_nm / geometry.cos_b / 2
        half_y = geometry.pixel_nm / geometry.cos_a / 2
        r0, c0 = self.specimen.to_index(x_nm.min() - half_x, y_nm.min() - half_y)
        r1, c1 = self.specimen.to_index(x_nm.max() + half_x, y_nm.max() + half_y)
        ny, nx = self.specimen.shape  # grid pixels whose centres the image covers
        rows = slice(max(0, math.ceil(r0)), min(ny, math.floor(r1) + 1))
        cols = slice(max(0, math.ceil(c0)), min(nx, math.floor(c1) + 1))
        if rows.start >= rows.stop or cols.start >= cols.stop:
            return
        area_nm2 = (geometry.pixel_nm / geometry.cos_a) * (geometry.pixel_nm / geometry.cos_b)
        self.holder.expose(rows, cols, electrons_per_px / area_nm2)

    def z_weighted_density(self) -> np.ndarray:
        """sum_el n_el Z^1.7 (per nm^2) on the specimen grid (HAADF)."""
        if self._zsum is None:
            total = np.zeros(self.specimen.shape, np.float32)
            for el in self.specimen.elements():
                weight = atomic_number(el) ** self.params.haadf_z_exponent
                total += (self.specimen.areal_density_per_nm2(el) * weight).astype(np.float32)
            self._zsum = total
        return self._zsum

    @staticmethod
    def _remember(cache: OrderedDict, key, value, limit: int = 4):
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > limit:
            cache.popitem(last=False)
        return value

    def signal_map(self, mode: str, ht_kv: float, contrast_mt0: float,
                   path_factor: float) -> tuple[np.ndarray, float]:
        """Signal per electron on the specimen grid and its value in vacuum."""
        key = (mode, round(ht_kv, 6), round(contrast_mt0, 9), round(path_factor, 9),
               self.version)
        if key in self._signal_cache:
            self._signal_cache.move_to_end(key)
            return self._signal_cache[key]
        if mode == "STEM":
            sigma = self.params.haadf_sigma_nm2
            value = (-np.expm1(-self.z_weighted_density() * (sigma * path_factor)), 0.0)
        else:
            mt0 = contrast_mass_thickness(contrast_mt0, ht_kv)
            # Diffraction contrast is not a path length: it does not grow with the tilt.
            extra = np.asarray(self.specimen.bf_diffraction_ug_cm2, np.float32)
            value = (np.exp(-(self.mass_thickness() * path_factor + extra) / mt0), 1.0)
        value = (value[0].astype(np.float32), value[1])
        return self._remember(self._signal_cache, key, value)

    def _level(self, signal_key, signal: np.ndarray, vacuum: float,
               fy: int, fx: int, blur_nm: float) -> np.ndarray:
        """Block mean of ``signal`` over (fy, fx) grid pixels, blurred (nm sigma)."""
        key = (signal_key, fy, fx, round(blur_nm, 6))
        if key in self._level_cache:
            self._level_cache.move_to_end(key)
            return self._level_cache[key]
        ny, nx = signal.shape
        by, bx = max(1, ny // fy), max(1, nx // fx)
        level = signal[: by * fy, : bx * fx].reshape(by, fy, bx, fx).mean(axis=(1, 3))
        if blur_nm > 0:
            pix = self.specimen.pixel_nm
            level = ndimage.gaussian_filter(level, (blur_nm / (pix * fy), blur_nm / (pix * fx)),
                                            mode="constant", cval=vacuum, truncate=3.0)
        return self._remember(self._level_cache, key, level.astype(np.float32), limit=6)

    # ---- images ----------------------------------------------------------------------
    def expected_signal(self, geometry: ImageGeometry, *, mode: str = "TEM",
                        ht_kv: float = 200.0, contrast_mt0: float | None = None,
                        objective_on: bool = True) -> np.ndarray:
        """Noise-free signal per electron at each image pixel (N x N, float32)."""
        p = self.params
        mt0 = p.contrast_mt0_ug_cm2 if contrast_mt0 is None else contrast_mt0
        with self._lock:
            signal, vacuum = self.signal_map(mode, ht_kv, mt0, geometry.path_factor)
            signal_key = (mode, round(ht_kv, 6), round(mt0, 9), round(geometry.path_factor, 9),
                          self.version)
            grid_pix = self.specimen.pixel_nm
            blur = 0.0 if objective_on else p.defocus_blur_nm
            # Footprint of an image pixel on the specimen, and the blur, set the level.
            foot_y = max(geometry.pixel_nm / geometry.cos_a, blur / 2)
            foot_x = max(geometry.pixel_nm / geometry.cos_b, blur / 2)
            fy = max(1, int(foot_y // grid_pix))
            fx = max(1, int(foot_x // grid_pix))
            level = self._level(signal_key, signal, vacuum, fy, fx, blur)
        x_nm, y_nm = geometry.pixel_coordinates_nm()
        rows, cols = self.specimen.to_index(x_nm, y_nm)
        # Block b covers grid indices [b f, (b + 1) f): its centre is b f + (f - 1) / 2.
        lr = (np.broadcast_to(rows, (geometry.size, geometry.size)) - (fy - 1) / 2) / fy
        lc = (np.broadcast_to(cols, (geometry.size, geometry.size)) - (fx - 1) / 2) / fx
        image = ndimage.map_coordinates(level, [lr, lc], order=1, mode="constant", cval=vacuum)
        if (mode == "TEM" and objective_on and geometry.fov_um < p.fringe_fov_um
                and geometry.pixel_nm <= p.fringe_spacing_nm / 2.5):
            image = image * self._fringes(geometry, image)
        return image.astype(np.float32)

    def _fringes(self, geometry: ImageGeometry, transmission: np.ndarray) -> np.ndarray:
        """1 + a w cos(2 pi k.r / d): lattice fringes, weighted by how much material
        (w = 1 - T) is in the pixel, oriented per cell of ``fringe_cell_nm``."""
        p = self.params
        x_nm, y_nm = geometry.pixel_coordinates_nm()
        x, y = np.broadcast_arrays(x_nm, y_nm)
        ix = np.floor(x / p.fringe_cell_nm)
        iy = np.floor(y / p.fringe_cell_nm)
        h = np.sin(ix * 12.9898 + iy * 78.233 + self.specimen.seed * 0.618) * 43758.5453
        theta = (h - np.floor(h)) * math.pi
        phase = 2 * math.pi * (x * np.cos(theta) + y * np.sin(theta)) / p.fringe_spacing_nm
        weight = np.clip(1.0 - transmission, 0.0, 1.0)
        return 1.0 + p.fringe_amplitude * weight * np.cos(phase)

    def acquire(self, geometry: ImageGeometry, electrons_per_px: float,
                rng: np.random.Generator, **kwargs) -> np.ndarray:
        """Counts: gain x Poisson(electrons per pixel x signal), float32."""
        expected = self.expected_signal(geometry, **kwargs).astype(np.float64) * electrons_per_px
        counts = rng.poisson(np.clip(expected, 0.0, None))
        return (counts * self.params.camera_gain).astype(np.float32)


__all__ = [
    "GA_UG_CM2_PER_NM2",
    "SIMS_LANDING_KEV",
    "ImageGeometry",
    "ImageRenderer",
    "OpticsParameters",
    "beam_effects_ug_cm2",
    "contrast_mass_thickness",
    "electrons_per_pixel",
    "pv_product_kev",
    "scattering_mass_thickness",
]
