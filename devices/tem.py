"""TEM column (``TEM:``): high tension, imaging mode, objective lens, FOV, blanker, dose.

The camera and the EDX detector of the same IOC are their own devices
(:mod:`temsims.devices.camera`, :mod:`temsims.devices.edx`).
"""

from __future__ import annotations

from ophyd import Component as Cpt
from ophyd import Device

from temsims.devices.common import Readback, SwitchSignal, ValidatedSignal


class TEMColumn(Device):
    """The electron column. Setpoints read back their ``*_RBV`` PV.

    ``objective`` (Off/On) and ``blank`` (Unblanked/Blanked) are read with every event
    (normal); the optics setup (HT, mode, FOV, beam current, contrast) is configuration.
    Switching the objective On is refused client-side while the IOC would refuse it is
    not knowable here (it depends on the bias supply): change geometry with the plans
    :func:`temsims.plans.to_sims_mode` and :func:`temsims.plans.to_tem_mode`.
    """

    ht = Cpt(ValidatedSignal, "HT_RBV", write_pv="HT", kind="config", doc="High tension (kV)")
    mode = Cpt(ValidatedSignal, "MODE_RBV", write_pv="MODE", string=True, kind="config",
               doc="TEM or STEM")
    objective = Cpt(SwitchSignal, "OBJ_RBV", write_pv="OBJ", kind="normal",
                    doc="Objective lens Off/On (set() ends at the readback)")
    objective_status = Cpt(Readback, "OBJ_STATUS", string=True, kind="omitted")
    fov = Cpt(ValidatedSignal, "FOV_RBV", write_pv="FOV", kind="config",
              doc="Field of view (um)")
    blank = Cpt(ValidatedSignal, "BLANK_RBV", write_pv="BLANK", string=True, kind="normal",
                doc="Electron beam blanker Unblanked/Blanked")
    beam_current = Cpt(ValidatedSignal, "BEAM_CURRENT", kind="config",
                       doc="Electron beam current (nA)")
    contrast = Cpt(ValidatedSignal, "CONTRAST_RBV", write_pv="CONTRAST", kind="config",
                   doc="Mass-thickness contrast (rho t)_0 at 200 kV (ug/cm^2)")
    stage_status = Cpt(Readback, "STAGE_STATUS", string=True, kind="omitted")
