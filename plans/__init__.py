"""The temsims plan library: Bluesky plans over the devices of :mod:`temsims.devices`.

Every plan takes its devices as arguments, checks every argument before its first
message (``TypeError``/``ValueError`` naming the argument and the allowed range),
records the start-document contract of :func:`temsims.catalog.check_start_metadata`
and, when it touches the ion beam or the bias, leaves the instrument safe (beam
blanked, bias ramped to 0 V) on failure or abort (:func:`safe_state`).
"""

from temsims.plans._common import safe_state
from temsims.plans.alignment import align_ion_beam
from temsims.plans.bracketing import bracketed_sims_maps
from temsims.plans.calibration import edx_sims_calibration
from temsims.plans.coincidence import calibrate_coincidence
from temsims.plans.correlative import correlative_tem_sims
from temsims.plans.counting import calibrate_dead_time
from temsims.plans.edx import edx_line, edx_point
from temsims.plans.focus import focus_probe
from temsims.plans.mode import to_sims_mode, to_tem_mode
from temsims.plans.particles import find_labelled_particles
from temsims.plans.raster_calibration import calibrate_raster
from temsims.plans.sims import depth_profile, sims_map
from temsims.plans.spectra import calibrate_masses, mass_spectrum
from temsims.plans.tem import tem_image, tem_mosaic

__all__ = [
    "align_ion_beam",
    "calibrate_coincidence",
    "calibrate_dead_time",
    "bracketed_sims_maps",
    "calibrate_masses",
    "calibrate_raster",
    "correlative_tem_sims",
    "depth_profile",
    "edx_line",
    "edx_point",
    "edx_sims_calibration",
    "find_labelled_particles",
    "focus_probe",
    "mass_spectrum",
    "safe_state",
    "sims_map",
    "tem_image",
    "tem_mosaic",
    "to_sims_mode",
    "to_tem_mode",
]
