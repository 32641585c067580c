"""EDX plans: a spectrum at a point, and a line scan of spectra between two points."""

from __future__ import annotations

import math

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp

from temsims.plans._common import (
    check_device,
    check_int,
    check_md,
    check_number,
    check_pair,
    check_within,
    device_limits,
    plan_args_md,
    region_md,
    start_metadata,
)
from temsims.plans.types import EdxDevice, Plan, StageDevice, TemColumnDevice

LIVE_TIME_RANGE_S = (0.001, 600.0)
#: EDX:X/Y/X0.. range around the image centre (um) and EDX:NPTS range.
PROBE_RANGE_UM = 100.0
NPTS_RANGE = (2, 256)


def _check_edx_devices(stage, tem, edx) -> None:
    check_device("stage", stage, StageDevice)
    check_device("tem", tem, TemColumnDevice)
    check_device("edx", edx, EdxDevice)


def edx_point(stage: StageDevice, tem: TemColumnDevice, edx: EdxDevice, *, x_um: float,
              y_um: float, live_time_s: float, md: dict | None = None) -> Plan[str]:
    """One EDX spectrum with the probe on the specimen point (x_um, y_um).

    The stage is moved so that the point is at the image centre and the probe is
    put there (EDX:X = EDX:Y = 0, Point mode).

    Parameters
    ----------
    stage : temsims.devices.stage.Stage
    tem : temsims.devices.tem.TEMColumn
        Its field of view is recorded as the region's; the beam is unblanked.
    edx : temsims.devices.edx.EDXDetector
    x_um, y_um : float
        Specimen point (um), within the stage soft limits.
    live_time_s : float
        Live time (s), 0.001..600.
    md : dict, optional
        Extra start metadata.

    Yields
    ------
    msg : Msg
        One run, one event with ``edx_spectrum`` (counts per channel) and
        ``edx_energy`` (channel centres, eV).

    Returns
    -------
    str
        The run's uid.
    """
    _check_edx_devices(stage, tem, edx)
    x_um = check_number("x_um", x_um, unit="um")
    y_um = check_number("y_um", y_um, unit="um")
    live_time_s = check_number("live_time_s", live_time_s, low=LIVE_TIME_RANGE_S[0],
                               high=LIVE_TIME_RANGE_S[1], unit="s")
    md = check_md(md)
    check_within("x_um", x_um, device_limits(stage.x), "um")
    check_within("y_um", y_um, device_limits(stage.y), "um")

    fov = yield from bps.rd(tem.fov, default_value=1.0)
    region = yield from region_md(stage, fov_um=float(fov or 1.0), x_um=x_um, y_um=y_um)
    _md = start_metadata(
        plan_name="edx_point", mode="TEM", region=region, md=md,
        plan_args=plan_args_md(stage=stage, tem=tem, edx=edx, x_um=x_um, y_um=y_um,
                               live_time_s=live_time_s),
        extra={"detectors": [edx.name], "num_points": 1,
               "edx": {"mode": "Point", "point_um": [x_um, y_um]}})

    @bpp.stage_decorator([edx])
    @bpp.run_decorator(md=_md)
    def inner():
        yield from bps.mv(edx.mode, "Point", edx.live_time, live_time_s, edx.x, 0.0,
                          edx.y, 0.0, tem.blank, "Unblanked", stage.x, x_um, stage.y, y_um)
        return (yield from bps.trigger_and_read([edx, stage.x, stage.y]))

    return (yield from inner())


def edx_line(stage: StageDevice, tem: TemColumnDevice, edx: EdxDevice, *, start: tuple,
             stop: tuple, npts: int, live_time_s: float, md: dict | None = None) -> Plan[str]:
    """An EDX line scan: ``npts`` spectra from ``start`` to ``stop`` (both included).

    The stage is moved to the midpoint of the line and the probe sweeps the line
    (EDX Line mode, X0/Y0 -> X1/Y1 relative to the image centre).

    Parameters
    ----------
    stage, tem, edx
        As in :func:`edx_point`.
    start, stop : (float, float)
        Line ends (x, y) on the specimen (um); at most 200 um apart, not equal.
    npts : int
        Points on the line, 2..256.
    live_time_s : float
        Live time per point (s), 0.001..600.
    md : dict, optional
        Extra start metadata.

    Yields
    ------
    msg : Msg
        One run, one event with ``edx_line_spectra`` (npts x nchan counts) and
        ``edx_energy``; the start document's ``edx.points_um`` lists the specimen
        position of every point.

    Returns
    -------
    str
        The run's uid.
    """
    _check_edx_devices(stage, tem, edx)
    start = check_pair("start", start, unit="um")
    stop = check_pair("stop", stop, unit="um")
    npts = check_int("npts", npts, low=NPTS_RANGE[0], high=NPTS_RANGE[1])
    live_time_s = check_number("live_time_s", live_time_s, low=LIVE_TIME_RANGE_S[0],
                               high=LIVE_TIME_RANGE_S[1], unit="s")
    md = check_md(md)
    half = ((stop[0] - start[0]) / 2.0, (stop[1] - start[1]) / 2.0)
    length = 2.0 * math.hypot(*half)
    if length == 0:
        raise ValueError("start and stop must differ (a line of zero length)")
    if max(abs(half[0]), abs(half[1])) > PROBE_RANGE_UM:
        raise ValueError(f"start..stop spans {length:g} um: each coordinate may differ by at "
                         f"most {2 * PROBE_RANGE_UM:g} um (probe range +/-{PROBE_RANGE_UM:g} um)")
    mid = ((start[0] + stop[0]) / 2.0, (start[1] + stop[1]) / 2.0)
    check_within("midpoint x of start/stop", mid[0], device_limits(stage.x), "um")
    check_within("midpoint y of start/stop", mid[1], device_limits(stage.y), "um")
    points = [[start[0] + (stop[0] - start[0]) * i / (npts - 1),
               start[1] + (stop[1] - start[1]) * i / (npts - 1)] for i in range(npts)]

    fov = yield from bps.rd(tem.fov, default_value=1.0)
    region = yield from region_md(stage, fov_um=max(float(fov or 1.0), length),
                                  x_um=mid[0], y_um=mid[1])
    _md = start_metadata(
        plan_name="edx_line", mode="TEM", region=region, md=md,
        plan_args=plan_args_md(stage=stage, tem=tem, edx=edx, start=start, stop=stop,
                               npts=npts, live_time_s=live_time_s),
        extra={"detectors": [edx.name], "num_points": npts,
               "edx": {"mode": "Line", "length_um": length,
                       "points_um": [[round(x, 6), round(y, 6)] for x, y in points]}})

    @bpp.stage_decorator([edx])
    @bpp.run_decorator(md=_md)
    def inner():
        yield from bps.mv(edx.mode, "Line", edx.live_time, live_time_s, edx.npts, npts,
                          edx.x0, -half[0], edx.y0, -half[1], edx.x1, half[0], edx.y1, half[1],
                          tem.blank, "Unblanked", stage.x, mid[0], stage.y, mid[1])
        return (yield from bps.trigger_and_read([edx, stage.x, stage.y]))

    def restore_point_mode():
        yield from bps.mv(edx.mode, "Point")

    return (yield from bpp.finalize_wrapper(inner(), restore_point_mode()))


__all__ = ["edx_line", "edx_point"]
