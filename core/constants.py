"""The instrument's geometry, as its documentation states it: one place for the numbers
the IOCs (the simulated hardware), the devices, the plans, the live views and the
analysis all use. No work on import; nothing here knows Channel Access.
"""

from __future__ import annotations

#: Alpha tilt of the SIMS geometry (deg): the specimen faces the ion column and the
#: secondary-ion extraction.
SIMS_TILT_DEG = -68.0
#: Alpha tilt of the TEM geometry (deg).
TEM_TILT_DEG = 0.0
#: How far alpha may be from either geometry's tilt and still count as in it (deg).
TILT_TOLERANCE_DEG = 1.0
#: Angle between the Ga+ beam and the specimen normal in the SIMS geometry (deg): the
#: raster's y axis is stretched by 1 / cos(incidence) on the specimen.
SIMS_INCIDENCE_DEG = 45.0

__all__ = ["SIMS_INCIDENCE_DEG", "SIMS_TILT_DEG", "TEM_TILT_DEG", "TILT_TOLERANCE_DEG"]
