"""The ion beam's geometry errors a real instrument has, drawn from its seed.

Decisions 0029 (raster field and rotation) and 0042 (TEM/FIB coincidence) model five
errors; a real dual-beam always has all of them, and a lab calibrates them away at
the start of a session (``calibrate_coincidence``, ``calibrate_raster``). The
instrument's default (``--calibration-errors typical``, decision 0042's 2026-12-05
amendment) is one such set, drawn from the instrument's seed so that a run is
reproducible; ``none`` is the exact instrument (unit tests of other physics). The
errors are the simulator's truth: published nowhere, read only by the tests.

Ranges (each uniform; the sign of the field and rotation errors random):

- raster field of view 2-4 % (a column's field calibration against a grating is good
  to a few %), rotation 1-2 deg (the scan's angle to the stage after a lens change);
- the beams' offset at 0 V within +-1 um per axis (coincidence set at installation,
  moved by source exchanges and aperture changes);
- what the bias beam-shift table leaves of the landing shift, +-0.3 % of it (0042:
  the holder's seat moves the gap by a few um): up to +-0.27 um on +4.5 kV;
- the specimen's height above the eucentric point, +-1 um (after a lab's tilt-wobble
  eucentric routine at the TEM's magnification): up to +-0.93 um at -68 deg.
"""

from __future__ import annotations

import numpy as np

#: ``--calibration-errors`` choices: the instrument's own draw, or the exact geometry.
CALIBRATION_ERRORS = ("typical", "none")
#: Ranges of the typical draw (see the module docstring).
FOV_ERROR_PCT = (2.0, 4.0)
ROTATION_ERROR_DEG = (1.0, 2.0)
COINCIDENCE_UM = 1.0
LANDING_ERROR_PCT = 0.3
EUCENTRIC_DZ_UM = 1.0
#: Offset of the errors' generator from the instrument's seed (the dead time, mass
#: bias and field factor use others: 0034, 0035, 0036).
SEED_OFFSET = 5000


def draw_geometry_errors(seed: int, kind: str = "typical") -> dict[str, object]:
    """The instrument's geometry errors, as the IOC server's options name them.

    Parameters
    ----------
    seed : int
        The instrument's seed (``--seed``).
    kind : {"typical", "none"}
        ``typical``: drawn in the module's ranges; ``none``: all zero.

    Returns
    -------
    dict
        ``fov_error_pct``, ``raster_rotation_deg``, ``landing_error_pct``,
        ``eucentric_dz_um`` (floats) and ``coincidence_um`` ((x, y) um).
    """
    if kind not in CALIBRATION_ERRORS:
        raise ValueError(f"calibration errors {kind!r}: expected one of {CALIBRATION_ERRORS}")
    if kind == "none":
        return {"fov_error_pct": 0.0, "raster_rotation_deg": 0.0, "landing_error_pct": 0.0,
                "eucentric_dz_um": 0.0, "coincidence_um": (0.0, 0.0)}
    rng = np.random.default_rng(int(seed) + SEED_OFFSET)
    sign = rng.choice((-1.0, 1.0), size=2)
    return {
        "fov_error_pct": float(sign[0] * rng.uniform(*FOV_ERROR_PCT)),
        "raster_rotation_deg": float(sign[1] * rng.uniform(*ROTATION_ERROR_DEG)),
        "landing_error_pct": float(rng.uniform(-LANDING_ERROR_PCT, LANDING_ERROR_PCT)),
        "eucentric_dz_um": float(rng.uniform(-EUCENTRIC_DZ_UM, EUCENTRIC_DZ_UM)),
        "coincidence_um": tuple(float(v) for v in
                                rng.uniform(-COINCIDENCE_UM, COINCIDENCE_UM, 2)),
    }


__all__ = ["CALIBRATION_ERRORS", "draw_geometry_errors"]
