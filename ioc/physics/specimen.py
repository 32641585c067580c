"""The virtual specimen: one physics model that every simulated detector renders.

A :class:`Specimen` is a stack of depth layers over an in-plane nanometre grid
(``pixel_nm``, centred on the holder axis: stage x = y = 0 looks at the grid
centre). Each :class:`Layer` is a mixture of :class:`~temsims.ioc.physics.materials.Material`
phases with per-pixel weights, a per-pixel thickness, optional dopant elements and
isotope-abundance overrides. Arrays are stored with the smallest broadcastable shape
(``(1, nx)`` for a profile along x, a scalar for a uniform film), so a specimen costs
a few tens of MB.

From that the simulator asks, per pixel and at a sputtered depth:
composition, atomic density, sputter yield, ionisation probability (mixed
log-linearly between phases: the matrix effect), and through the whole thickness:
mass-thickness (TEM) and areal density per element (EDX).

The ground truth (:attr:`Specimen.truth`) is for the tests that score the analysis;
nothing outside ``temsims.ioc`` and ``tests`` may read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage, special

from temsims.constants import reference_region
from temsims.ioc.physics.materials import (
    AVOGADRO,
    MATERIALS,
    Material,
    isotope_mass_u,
    natural_abundances,
    parse_species,
)

ArrayLike = np.ndarray | float
Window = tuple[slice, slice] | None

DEFAULT_PIXEL_NM = 2.0
DEFAULT_GRID = 2048  # 4.096 um at 2 nm


def _crop(value: ArrayLike, window: Window) -> ArrayLike:
    """Crop a broadcastable array to ``window`` (rows, cols), keeping size-1 axes."""
    if window is None or np.ndim(value) == 0:
        return value
    rows, cols = window
    arr = np.asarray(value)
    return arr[rows if arr.shape[0] > 1 else slice(None), cols if arr.shape[1] > 1 else slice(None)]


@dataclass
class Layer:
    """One depth layer of the specimen.

    Parameters
    ----------
    name
        Layer name (``"particles"``, ``"support film"``...).
    thickness_nm
        Per-pixel thickness, broadcastable to the grid.
    phases
        Material name -> weight map (weights sum to 1 where the layer exists).
    dopants
        Element -> atomic fraction map added on top of the phases (the phases are
        scaled down by the total dopant fraction).
    isotope_abundance
        Isotope label (``"6Li"``) -> abundance map replacing the natural abundance;
        for a two-isotope element the other isotope takes the complement.
    """

    name: str
    thickness_nm: ArrayLike
    phases: dict[str, ArrayLike]
    dopants: dict[str, ArrayLike] = field(default_factory=dict)
    isotope_abundance: dict[str, ArrayLike] = field(default_factory=dict)

    def materials(self) -> dict[str, Material]:
        return {name: MATERIALS[name] for name in self.phases}

    def elements(self) -> set[str]:
        els = set(self.dopants)
        for material in self.materials().values():
            els.update(material.composition)
        return els

    def element_fraction(self, symbol: str, window: Window = None) -> ArrayLike:
        dopant_total: ArrayLike = 0.0
        for value in self.dopants.values():
            dopant_total = dopant_total + _crop(value, window)
        fraction: ArrayLike = 0.0
        for name, weight in self.phases.items():
            comp = MATERIALS[name].composition.get(symbol, 0.0)
            if comp:
                fraction = fraction + _crop(weight, window) * comp
        fraction = fraction * (1.0 - dopant_total)
        if symbol in self.dopants:
            fraction = fraction + _crop(self.dopants[symbol], window)
        return fraction

    def abundance(self, isotope: str, window: Window = None) -> ArrayLike:
        symbol, _ = parse_species(isotope)
        if isotope in self.isotope_abundance:
            return _crop(self.isotope_abundance[isotope], window)
        natural = natural_abundances(symbol)
        overridden = [iso for iso in natural if iso in self.isotope_abundance]
        if overridden and len(natural) == 2:
            return 1.0 - _crop(self.isotope_abundance[overridden[0]], window)
        return natural.get(isotope, 0.0)

    def species_fraction(self, species: str, window: Window = None) -> ArrayLike:
        """Atomic fraction of an element (``"Li"``) or isotope (``"6Li"``)."""
        symbol, mass_number = parse_species(species)
        fraction = self.element_fraction(symbol, window)
        if mass_number is None:
            return fraction
        return fraction * self.abundance(species, window)

    def _mix(self, window: Window, prop: Callable[[Material], float], log: bool = False):
        total: ArrayLike = 0.0
        for name, weight in self.phases.items():
            value = prop(MATERIALS[name])
            w = _crop(weight, window)
            total = total + w * (np.log(value) if log else value)
        return np.exp(total) if log else total

    def density_g_cm3(self, window: Window = None) -> ArrayLike:
        return self._mix(window, lambda m: m.density_g_cm3)

    def atomic_density_per_nm3(self, window: Window = None) -> ArrayLike:
        return self._mix(window, lambda m: m.atomic_density_per_nm3)

    def sputter_yield(self, window: Window = None, energy_kev: float | None = None,
                      incidence_deg=None) -> ArrayLike:
        """Matrix atoms per ion (:meth:`Material.yield_at`; the angle may be an array
        broadcastable to the window: the local incidence on a relief)."""
        return self._mix(window, lambda m: m.yield_at(energy_kev, incidence_deg))

    def ionisation(self, symbol: str, polarity: int, window: Window = None) -> ArrayLike:
        """Ionisation probability, mixed log-linearly between phases (matrix effect)."""
        return self._mix(window, lambda m: m.ionisation(symbol, polarity), log=True)


@dataclass
class Specimen:
    """A virtual specimen: layers (top, facing the ion beam, first) and its truth."""

    name: str
    seed: int
    layers: list[Layer]
    pixel_nm: float = DEFAULT_PIXEL_NM
    shape: tuple[int, int] = (DEFAULT_GRID, DEFAULT_GRID)
    truth: dict[str, Any] = field(default_factory=dict)
    #: Bright-field diffraction contrast as an equivalent mass-thickness (ug/cm^2),
    #: broadcastable to the grid: a crystal near a Bragg condition sends electrons
    #: outside the objective aperture, darker than its mass-thickness alone. 0 for an
    #: amorphous specimen (only the polycrystalline recipes set it).
    bf_diffraction_ug_cm2: ArrayLike = 0.0
    #: The isotope standard mounted on it (public: a lab knows where its standard
    #: sits), from :data:`temsims.constants.REFERENCE_REGIONS`; None without one.
    reference: dict[str, Any] | None = None

    # ---- geometry -------------------------------------------------------------------
    @property
    def extent_nm(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) of the grid edges, centred on 0."""
        ny, nx = self.shape
        half_x, half_y = nx * self.pixel_nm / 2, ny * self.pixel_nm / 2
        return (-half_x, half_x, -half_y, half_y)

    def x_nm(self) -> np.ndarray:
        nx = self.shape[1]
        return (np.arange(nx) - (nx - 1) / 2) * self.pixel_nm

    def y_nm(self) -> np.ndarray:
        ny = self.shape[0]
        return (np.arange(ny) - (ny - 1) / 2) * self.pixel_nm

    def to_index(self, x_nm: np.ndarray, y_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fractional (row, col) grid indices of specimen coordinates in nm."""
        ny, nx = self.shape
        return (np.asarray(y_nm) / self.pixel_nm + (ny - 1) / 2,
                np.asarray(x_nm) / self.pixel_nm + (nx - 1) / 2)

    def window_for(self, x_nm: np.ndarray, y_nm: np.ndarray, margin_px: int = 8) -> Window:
        """Grid window (rows, cols) covering the given coordinates plus a margin."""
        rows, cols = self.to_index(x_nm, y_nm)
        ny, nx = self.shape
        # Never empty: a field wholly beyond the grid's far edges (an uncorrected
        # coincidence offset near the border) keeps the edge row / column, as one
        # beyond the near edges does, instead of a zero-size window.
        r0 = int(np.clip(np.floor(np.min(rows)) - margin_px, 0, ny - 1))
        r1 = int(np.clip(np.ceil(np.max(rows)) + margin_px + 1, 0, ny))
        c0 = int(np.clip(np.floor(np.min(cols)) - margin_px, 0, nx - 1))
        c1 = int(np.clip(np.ceil(np.max(cols)) + margin_px + 1, 0, nx))
        return (slice(r0, max(r1, r0 + 1)), slice(c0, max(c1, c0 + 1)))

    def window_shape(self, window: Window) -> tuple[int, int]:
        if window is None:
            return self.shape
        rows, cols = window
        return (len(range(*rows.indices(self.shape[0]))), len(range(*cols.indices(self.shape[1]))))

    def _full(self, value: ArrayLike, window: Window) -> np.ndarray:
        return np.broadcast_to(np.asarray(value, dtype=np.float32), self.window_shape(window))

    # ---- species --------------------------------------------------------------------
    def elements(self) -> list[str]:
        els: set[str] = set()
        for layer in self.layers:
            els |= layer.elements()
        return sorted(els)

    def species(self) -> list[str]:
        """Every isotope present, e.g. ``["12C", "13C", "6Li", "7Li", "16O", ...]``."""
        out = []
        for el in self.elements():
            out.extend(natural_abundances(el))
        return out

    # ---- through the whole thickness (TEM, EDX) -------------------------------------
    def thickness_nm(self, window: Window = None) -> np.ndarray:
        total: ArrayLike = 0.0
        for layer in self.layers:
            total = total + _crop(layer.thickness_nm, window)
        return np.array(self._full(total, window))

    def mass_thickness_ug_cm2(self, window: Window = None) -> np.ndarray:
        """Projected mass-thickness rho*t in ug/cm^2 (1 g/cm^3 x 1 nm = 0.1 ug/cm^2)."""
        total: ArrayLike = 0.0
        for layer in self.layers:
            total = total + layer.density_g_cm3(window) * _crop(layer.thickness_nm, window) * 0.1
        return np.array(self._full(total, window))

    def areal_density_per_nm2(self, species: str, window: Window = None) -> np.ndarray:
        """Atoms of ``species`` per nm^2 of projected area, through every layer."""
        total: ArrayLike = 0.0
        for layer in self.layers:
            total = total + (layer.species_fraction(species, window)
                             * layer.atomic_density_per_nm3(window)
                             * _crop(layer.thickness_nm, window))
        return np.array(self._full(total, window))

    def mean_atomic_number(self, window: Window = None) -> np.ndarray:
        """Atom-weighted mean Z through the thickness (for the Bremsstrahlung)."""
        from temsims.ioc.physics.materials import atomic_number

        atoms = np.zeros(self.window_shape(window))
        z_sum = np.zeros_like(atoms)
        for el in self.elements():
            n = self.areal_density_per_nm2(el, window)
            atoms += n
            z_sum += n * atomic_number(el)
        return np.divide(z_sum, atoms, out=np.zeros_like(atoms), where=atoms > 0)

    # ---- at a sputtered depth (SIMS) ------------------------------------------------
    def layer_at_depth(self, depth_nm: np.ndarray, window: Window = None,
                       bottoms: list | None = None) -> np.ndarray:
        """Index of the layer exposed at ``depth_nm`` (per pixel); -1 where sputtered
        through every layer. ``bottoms``: each layer's bottom (nm from the surface, per
        pixel) on ``window`` when the caller has them (``sims.layer_bounds``)."""
        depth = np.asarray(depth_nm)
        if bottoms is None:
            bottoms, top = [], 0.0
            for layer in self.layers:
                top = top + _crop(layer.thickness_nm, window)
                bottoms.append(top)
        index = np.full(np.broadcast_shapes(depth.shape, self.window_shape(window)), -1, np.int8)
        # The first layer whose bottom lies below the depth: assigned from the last up.
        for i in range(len(bottoms) - 1, -1, -1):
            np.copyto(index, np.int8(i), where=depth < bottoms[i])
        return index

    def _select(self, index: np.ndarray, getter: Callable[[Layer], ArrayLike],
                window: Window) -> np.ndarray:
        out = np.zeros(index.shape, dtype=np.float64)
        for i, layer in enumerate(self.layers):
            mask = index == i
            if mask.any():
                value = np.broadcast_to(np.asarray(getter(layer), dtype=np.float64), index.shape)
                out[mask] = value[mask]
        return out

    def surface(self, depth_nm: np.ndarray, window: Window = None) -> SurfaceState:
        """What the ion beam meets at ``depth_nm``: see :class:`SurfaceState`."""
        index = self.layer_at_depth(depth_nm, window)
        return SurfaceState(self, index, window)

    # ---- summary --------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Public description (no truth): name, seed, grid, layers and elements."""
        return {
            "name": self.name,
            "seed": self.seed,
            "pixel_nm": self.pixel_nm,
            "shape": list(self.shape),
            "layers": [layer.name for layer in self.layers],
            "elements": self.elements(),
            "reference": None if self.reference is None else dict(self.reference),
        }


@dataclass
class SurfaceState:
    """Per-pixel properties of the exposed surface at one sputtered depth."""

    specimen: Specimen
    layer_index: np.ndarray
    window: Window

    def _get(self, getter: Callable[[Layer], ArrayLike]) -> np.ndarray:
        return self.specimen._select(self.layer_index, getter, self.window)

    def fraction(self, species: str) -> np.ndarray:
        return self._get(lambda layer: layer.species_fraction(species, self.window))

    def atomic_density_per_nm3(self) -> np.ndarray:
        return self._get(lambda layer: layer.atomic_density_per_nm3(self.window))

    def sputter_yield(self, energy_kev: float | None = None, incidence_deg=None) -> np.ndarray:
        return self._get(lambda layer: layer.sputter_yield(self.window, energy_kev,
                                                           incidence_deg))

    def ionisation(self, symbol: str, polarity: int) -> np.ndarray:
        return self._get(lambda layer: layer.ionisation(symbol, polarity, self.window))


# ======================================================================================
# Specimen recipes
# ======================================================================================
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_px: float) -> np.ndarray:
    """Gaussian-correlated noise with unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    return noise / (noise.std() or 1.0)


def li2co3_particles(
    seed: int = 1,
    *,
    n_particles: int = 40,
    diameter_range_nm: tuple[float, float] = (20.0, 200.0),
    labelled_fraction: float = 0.3,
    label_li6_abundance: float = 0.95,
    film_thickness_nm: float = 20.0,
    field_nm: float = 3400.0,
    pixel_nm: float = DEFAULT_PIXEL_NM,
    grid: int = DEFAULT_GRID,
    with_reference: bool = True,
) -> Specimen:
    """Li2CO3 nanoparticles on a thin carbon film, some labelled with 6Li.

    Spherical particles (diameters log-uniform in ``diameter_range_nm``) placed without
    overlap in the central ``field_nm`` square; a fraction ``labelled_fraction`` of
    them (rounded, at least one) carry ``label_li6_abundance`` 6Li, the rest natural
    Li (LSVEC). The particle layer's thickness is the sphere's chord. With
    ``with_reference``, the natural-Li Li2CO3 pad of
    :data:`temsims.constants.REFERENCE_REGIONS` sits beside the field (outside it:
    particles keep ``field_nm`` <= 3400 nm clear of it).
    """
    rng = np.random.default_rng(seed)
    radii_lo, radii_hi = np.log(diameter_range_nm[0] / 2), np.log(diameter_range_nm[1] / 2)
    particles: list[dict[str, Any]] = []
    attempts = 0
    while len(particles) < n_particles and attempts < 50 * n_particles:
        attempts += 1
        r = float(np.exp(rng.uniform(radii_lo, radii_hi)))
        x, y = rng.uniform(-field_nm / 2 + r, field_nm / 2 - r, size=2)
        gap = 30.0  # keep particles separable in a ~15-50 nm resolution SIMS map
        if all(np.hypot(x - p["x_nm"], y - p["y_nm"]) > r + p["radius_nm"] + gap
               for p in particles):
            particles.append({"x_nm": float(x), "y_nm": float(y), "radius_nm": r})
    n_labelled = max(1, int(round(labelled_fraction * len(particles))))
    labelled = set(rng.choice(len(particles), size=n_labelled, replace=False).tolist())

    shape = (grid, grid)
    thickness = np.zeros(shape, np.float32)
    li6 = np.full(shape, np.nan, np.float32)
    spec = Specimen("li2co3-particles", seed, [], pixel_nm=pixel_nm, shape=shape)
    natural_li6 = natural_abundances("Li")["6Li"]
    for i, p in enumerate(particles):
        p["id"] = i
        p["labelled"] = i in labelled
        p["li6_abundance"] = label_li6_abundance if p["labelled"] else natural_li6
        p["li6_li7_ratio"] = p["li6_abundance"] / (1.0 - p["li6_abundance"])
        r = p["radius_nm"]
        win = spec.window_for(np.array([p["x_nm"] - r, p["x_nm"] + r]),
                              np.array([p["y_nm"] - r, p["y_nm"] + r]), margin_px=2)
        yy = spec.y_nm()[win[0]][:, None]
        xx = spec.x_nm()[win[1]][None, :]
        d2 = (xx - p["x_nm"]) ** 2 + (yy - p["y_nm"]) ** 2
        chord = 2.0 * np.sqrt(np.clip(r * r - d2, 0.0, None))
        inside = chord > 0
        thickness[win] = np.where(inside, chord, thickness[win])
        li6[win] = np.where(inside, p["li6_abundance"], li6[win])
    li6 = np.where(np.isnan(li6), natural_li6, li6).astype(np.float32)
    # The natural-Li standard beside the field (temsims.constants.REFERENCE_REGIONS):
    # a flat Li2CO3 pad in the particles' matrix, natural Li (decision 0035).
    ref = reference_region(spec.name) if with_reference else None
    if ref is not None:
        half = 500.0 * ref["width_um"]
        cx, cy = 1000.0 * ref["x_um"], 1000.0 * ref["y_um"]
        yy, xx = spec.y_nm()[:, None], spec.x_nm()[None, :]
        pad = (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
        thickness[pad] = ref["thickness_nm"]
        li6[pad] = natural_li6
        spec.reference = ref

    spec.layers = [
        Layer("particles", thickness, {"Li2CO3": 1.0}, isotope_abundance={"6Li": li6}),
        Layer("support film", float(film_thickness_nm), {"C-film": 1.0}),
    ]
    spec.truth = {
        "particles": particles,
        "natural_li6_li7": natural_li6 / (1 - natural_li6),
        "label_li6_li7": label_li6_abundance / (1 - label_li6_abundance),
        "film_thickness_nm": film_thickness_nm,
        "particle_thickness_nm": thickness,
        "li6_abundance": li6,
    }
    return spec


def livo_cathode(
    seed: int = 1,
    *,
    al_top_nm: float = -800.0,
    cathode_top_nm: float = 600.0,
    lipon_thickness_nm: float = 100.0,
    interface_roughness_nm: float = 8.0,
    lamella_thickness_nm: tuple[float, float] = (60.0, 100.0),
    v_in_lipon: float = 0.02,
    v_in_lipon_decay_nm: float = 40.0,
    v_in_al: float = 0.01,
    v_in_al_decay_nm: float = 60.0,
    pixel_nm: float = DEFAULT_PIXEL_NM,
    grid: int = DEFAULT_GRID,
) -> Specimen:
    """Cross-section lamella of a sputtered LiV3O8 cathode under 100 nm LiPON on Al.

    Growth runs along +y: Al current collector, LiV3O8 film, LiPON, then the Pt-C
    protective cap of the lamella preparation. Interfaces are rough; vanadium
    dissolved from the cathode reaches into the LiPON and the Al with exponential
    tails. The lamella is a wedge (thickness varies along x).
    """
    rng = np.random.default_rng(seed)
    shape = (grid, grid)
    spec = Specimen("livo-cathode", seed, [], pixel_nm=pixel_nm, shape=shape)
    y = spec.y_nm()[:, None]
    x = spec.x_nm()[None, :]
    rough = [interface_roughness_nm * _smooth_noise(rng, (1, grid), 25.0) for _ in range(3)]
    b_al = al_top_nm + rough[0]
    b_cat = cathode_top_nm + rough[1]
    b_lipon = cathode_top_nm + lipon_thickness_nm + rough[2]
    width = 2.0  # nm: interface sharpness in the phase weights

    def step(boundary):  # 0 below boundary, 1 above
        return 0.5 * (1 + special.erf((y - boundary) / width))

    s_al, s_cat, s_lipon = step(b_al), step(b_cat), step(b_lipon)
    phases = {
        "Al": (1 - s_al).astype(np.float32),
        "LiV3O8": (s_al - s_cat).astype(np.float32),
        "LiPON": (s_cat - s_lipon).astype(np.float32),
        "Pt-C": s_lipon.astype(np.float32),
    }
    dv_lipon = v_in_lipon * np.exp(-np.clip(y - b_cat, 0, None) / v_in_lipon_decay_nm)
    dv_lipon = dv_lipon * phases["LiPON"]
    dv_al = v_in_al * np.exp(-np.clip(b_al - y, 0, None) / v_in_al_decay_nm) * phases["Al"]
    t_lo, t_hi = lamella_thickness_nm
    thickness = (t_lo + (t_hi - t_lo) * (x - x.min()) / (x.max() - x.min())).astype(np.float32)
    spec.layers = [
        Layer("lamella", thickness, phases, dopants={"V": (dv_lipon + dv_al).astype(np.float32)}),
    ]
    spec.truth = {
        "interfaces_y_nm": {"Al/LiV3O8": b_al.ravel(), "LiV3O8/LiPON": b_cat.ravel(),
                            "LiPON/Pt-C": b_lipon.ravel()},
        "v_dissolved": (dv_lipon + dv_al).astype(np.float32),
        "thickness_nm": thickness,
    }
    return spec


def diffusion_couple(
    seed: int = 1,
    *,
    solute: str = "Cu",
    solvent: str = "Ni",
    interface_x_nm: float = -100.0,
    diffusion_length_nm: float = 700.0,
    thickness_nm: float = 100.0,
    pixel_nm: float = DEFAULT_PIXEL_NM,
    grid: int = DEFAULT_GRID,
) -> Specimen:
    """Two elements interdiffused along x: C(x) = erfc((x - x0) / L) / 2.

    With the defaults the solute runs from 99.996 at.% at the left edge to ~5 ppm at
    the right edge of a 4.1 um grid; the concentration is constant through the
    lamella thickness (the gradient is in the lamella plane). The solute's
    ionisation depends on the local matrix, so RSF(C) varies along the couple.
    ``seed`` only names the specimen (the profile is deterministic).
    """
    spec = Specimen("diffusion-couple", seed, [], pixel_nm=pixel_nm, shape=(grid, grid))
    x = spec.x_nm()[None, :]
    conc = (0.5 * special.erfc((x - interface_x_nm) / diffusion_length_nm)).astype(np.float32)
    spec.layers = [
        Layer("couple", float(thickness_nm), {solute: conc, solvent: (1 - conc).astype(np.float32)}),
    ]
    spec.truth = {
        "solute": solute,
        "solvent": solvent,
        "interface_x_nm": interface_x_nm,
        "diffusion_length_nm": diffusion_length_nm,
        "solute_fraction": conc.ravel(),
        "x_nm": spec.x_nm(),
    }
    return spec


def solar_cell(
    seed: int = 1,
    *,
    buffer_thickness_nm: float = 40.0,
    absorber_thickness_nm: float = 150.0,
    grain_size_nm: float = 400.0,
    ga_ratio_range: tuple[float, float] = (0.2, 0.4),  # within the two phases
    na_boundary: float = 5e-3,
    na_interior: float = 2e-5,
    boundary_width_nm: float = 6.0,
    grain_contrast_ug_cm2: float = 40.0,
    boundary_contrast_ug_cm2: float = 20.0,
    pixel_nm: float = DEFAULT_PIXEL_NM,
    grid: int = DEFAULT_GRID,
) -> Specimen:
    """Plan-view lamella of a chalcopyrite cell: CdS buffer over a Cu(In,Ga)Se2 absorber.

    The absorber has Voronoi grains with a per-grain Ga/(In+Ga) ratio and trace Na
    segregated to the grain boundaries. Ga of the absorber overlaps with the Ga
    implanted from the beam. A second SIMS map sputters through the thin buffer and
    shows the absorber below.

    In bright field the grains differ by diffraction contrast (each grain's orientation
    puts it nearer or farther from a Bragg condition: an equivalent mass-thickness
    uniform in 0..``grain_contrast_ug_cm2``, against ~105 ug/cm^2 of the stack and a
    contrast parameter of 30), and the boundaries are thin dark lines (strain and
    the dislocations that accommodate the misorientation:
    ``boundary_contrast_ug_cm2`` on the 4 nm of boundary pixels); the grains'
    densities alone (5.70 and 5.75 g/cm^3) would differ by < 3 % in transmission.
    """
    rng = np.random.default_rng(seed)
    shape = (grid, grid)
    spec = Specimen("solar-cell", seed, [], pixel_nm=pixel_nm, shape=shape)
    extent = grid * pixel_nm
    n_grains = max(4, int((extent / grain_size_nm) ** 2))
    centres = rng.uniform(0, grid, size=(n_grains, 2))
    seeds = np.zeros(shape, np.int32)
    rows = np.clip(centres[:, 0].astype(int), 0, grid - 1)
    cols = np.clip(centres[:, 1].astype(int), 0, grid - 1)
    seeds[rows, cols] = np.arange(1, n_grains + 1)
    distance, (ir, ic) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    grains = seeds[ir, ic]
    boundary = ndimage.morphological_gradient(grains, size=3) > 0
    dist_gb = ndimage.distance_transform_edt(~boundary) * pixel_nm
    na = (na_interior + (na_boundary - na_interior) * np.exp(-dist_gb / boundary_width_nm))
    ga_ratio = rng.uniform(*ga_ratio_range, size=n_grains + 1)[grains]
    # Each grain mixes the Ga-poor (Ga/(In+Ga) = 0.2) and Ga-rich (0.4) absorber phases.
    w_high = np.clip((ga_ratio - 0.2) / 0.2, 0.0, 1.0).astype(np.float32)
    spec.layers = [
        Layer("buffer", float(buffer_thickness_nm), {"CdS": 1.0}),
        Layer("absorber", float(absorber_thickness_nm),
              {"CIGS-lowGa": 1.0 - w_high, "CIGS-highGa": w_high},
              dopants={"Na": na.astype(np.float32)}),
    ]
    spec.truth = {
        "grains": grains,
        "ga_ratio": ga_ratio.astype(np.float32),
        "na_fraction": na.astype(np.float32),
        "buffer_thickness_nm": buffer_thickness_nm,
        "absorber_thickness_nm": absorber_thickness_nm,
        "grain_boundary": boundary,
        "grain_boundary_distance_nm": dist_gb.astype(np.float32),
    }
    # Drawn after everything above, so the composition of a seed is what it was.
    orientation = rng.uniform(0.0, grain_contrast_ug_cm2, size=n_grains + 1)
    spec.bf_diffraction_ug_cm2 = (orientation[grains]
                                  + boundary_contrast_ug_cm2 * boundary).astype(np.float32)
    return spec


SPECIMENS: dict[str, Callable[..., Specimen]] = {
    "li2co3-particles": li2co3_particles,
    "livo-cathode": livo_cathode,
    "diffusion-couple": diffusion_couple,
    "solar-cell": solar_cell,
}


def build_specimen(name: str, seed: int = 1, **params: Any) -> Specimen:
    """Build the named specimen; the same (name, seed, params) gives the same specimen."""
    try:
        recipe = SPECIMENS[name]
    except KeyError:
        raise ValueError(f"unknown specimen {name!r}; expected one of {sorted(SPECIMENS)}") from None
    return recipe(seed, **params)


def isotope_masses(specimen: Specimen) -> dict[str, float]:
    """Masses (u) of every isotope in the specimen, from periodictable."""
    return {label: isotope_mass_u(label) for label in specimen.species()}


__all__ = [
    "AVOGADRO",
    "Layer",
    "SPECIMENS",
    "Specimen",
    "SurfaceState",
    "build_specimen",
    "isotope_masses",
]
