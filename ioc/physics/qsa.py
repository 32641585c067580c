"""Quasi-simultaneous arrival (QSA) of secondary ions at an electron multiplier.

One Ga+ impact sputters its secondary ions within picoseconds, and those of one mass
reach their collector within a nanosecond or so of each other: far inside the
multiplier's pulse width and the counting chain's dead time. Two or more ions of one
impact on one collector therefore give one pulse. With ``K`` the mean number of ions
one primary ion delivers to the collector, and that number Poisson distributed, a
primary ion gives a pulse with probability ``1 - exp(-K)``, and the counted rate is
``(1 - exp(-K)) / K`` of the true one: ``1 - K/2`` to first order (Slodzian, Hillion,
Stadermann and Zinner, Appl. Surf. Sci. 231-232, 874 (2004): "QSA influences on
isotopic ratio measurements"; Hillion, Kilburn, Hoppe, Messenger and Weber, Geochim.
Cosmochim. Acta 72, A377 (2008)). The loss is per primary ion: it does not depend on
the beam current (unlike the dead time, which the impacts' random arrivals feed,
decision 0034), so a count-rate-against-current calibration cannot see it; it
depends on what one impact emits, so the major isotope loses more and a ratio is
biased by ``(K_major - K_minor) / 2``.

The twin applies it where a primary ion lands: the emission per primary ion of
everything one collector accepts (``Y alpha C`` times the transmission, per grid
pixel, before the beam footprint's blur) is ``K``, and the collector counts
``1 - exp(-K)`` pulses per primary ion there (decision 0043). Pure numpy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NEGLIGIBLE_K", "SERIES_K", "pulses_per_primary", "qsa_factor",
           "qsa_thinned_emission"]

#: Below this K (ions per primary ion, the emission's maximum) the thinning, K/2, is
#: left out: under 1e-5 of the counts (most molecular ions, minor isotopes of dim
#: elements), and the pass over the window is saved.
NEGLIGIBLE_K = 2e-5
#: Below this K the thinning is its series to K^2 (error < K^3/24, 5e-6).
SERIES_K = 0.05


def pulses_per_primary(k):
    """Pulses one primary ion gives on average: ``1 - exp(-K)`` (Poisson arrivals)."""
    return -np.expm1(-np.asarray(k, dtype=float))


def qsa_factor(k):
    """Counted / arrived: ``(1 - exp(-K)) / K`` (1 at ``K = 0``; ``1 - K/2`` to first
    order)."""
    k = np.asarray(k, dtype=float)
    small = np.abs(k) < 1e-8
    safe = np.where(small, 1.0, k)
    return np.where(small, 1.0 - 0.5 * k, -np.expm1(-safe) / safe)


def qsa_thinned_emission(emission, transmission: float):
    """Emission (``Y alpha C`` per primary ion, before the transmission) that gives the
    counted pulses once multiplied by the transmission: ``(1 - exp(-t e)) / t``.

    ``emission`` is everything one collector accepts at a landing point: the twin's
    maps pass a collector's summed emission per grid pixel, COUNT and mass scans each
    isotope's or molecule's own (their cross terms ``K_a K_b`` are below 1e-4 here).
    """
    e = np.asarray(emission)
    if transmission <= 0 or e.size == 0:
        return e
    k_max = float(np.max(e)) * transmission
    if not k_max > NEGLIGIBLE_K:  # also NaN-safe: nothing to thin
        return e
    if k_max < SERIES_K:
        # (1 - exp(-K)) / K = 1 - K/2 + K^2/6 - ..., the rest below K^3/24 (5e-6 at
        # 0.05): three in-place products instead of expm1 and a division (a COUNT
        # over a 4 um raster thins 4e6 pixels per species: 1.6 s -> ~0.2 s).
        f = e * np.asarray(-transmission / 6.0, dtype=e.dtype)
        f += np.asarray(0.5, dtype=e.dtype)
        f *= e
        f *= np.asarray(-transmission, dtype=e.dtype)
        f += np.asarray(1.0, dtype=e.dtype)
        f *= e
        return f
    out = -np.expm1(-e * transmission) / transmission
    return out.astype(e.dtype, copy=False) if np.issubdtype(e.dtype, np.floating) else out
