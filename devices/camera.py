"""TEM camera (``TEM:CAM:``): a Triggerable detector giving a 2-D float32 image."""

from __future__ import annotations

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device

from temsims.devices.common import Reading, ShapedArray, ValidatedSignal

#: Slack (s) added to the exposure for the put-completion of an acquisition.
ACQUIRE_SLACK_S = 30.0


def _image_shape(camera) -> tuple[int, int]:
    n = int(camera.size.get())
    return (n, n)


class TEMCamera(Device):
    """The TEM camera: ``trigger()`` acquires one image (put with completion).

    ``image`` (dims y, x) is ``SIZE x SIZE`` float32 counts, row 0 the -y edge;
    ``describe()`` gives its shape and ``dtype_numpy``. Exposure and size are
    configuration; counter, dose and the stage state the image was computed at are
    read with it.
    """

    exposure = Cpt(ValidatedSignal, "CAM:EXPOSURE", kind="config", doc="Exposure (s)")
    size = Cpt(ValidatedSignal, "CAM:SIZE", kind="config", doc="Square image size (px)")
    acquire = Cpt(ValidatedSignal, "CAM:ACQUIRE", string=True, kind="omitted")
    image = Cpt(ShapedArray, "CAM:IMAGE", shape=_image_shape, dtype=np.float32,
                dims=("y", "x"), kind="normal", doc="Image (counts), SIZE x SIZE")
    counter = Cpt(Reading, "CAM:COUNTER", kind="normal", doc="Images acquired")
    pixel_nm = Cpt(Reading, "CAM:PIXEL_NM", kind="config", doc="Pixel size (nm)")
    dose = Cpt(Reading, "CAM:DOSE", kind="hinted", doc="Electrons per pixel")
    center_x = Cpt(Reading, "CAM:CENTER_X", kind="normal", doc="Image centre x (um)")
    center_y = Cpt(Reading, "CAM:CENTER_Y", kind="normal", doc="Image centre y (um)")
    tilt_a = Cpt(Reading, "CAM:TILT_A", kind="normal", doc="Alpha tilt of the image (deg)")
    tilt_b = Cpt(Reading, "CAM:TILT_B", kind="normal", doc="Beta tilt of the image (deg)")

    def trigger(self):
        """Acquire one image; the status finishes when the IOC has published it."""
        exposure = float(self.exposure.get())
        return self.acquire.set("Acquire", timeout=exposure + ACQUIRE_SLACK_S)
