"""How the instrument's actuators move in time: the stage's axes and the bias supply.

- :class:`Ramp`: motion with piecewise-constant acceleration. A stage move is a
  trapezoidal velocity profile (ramp to the speed in the acceleration time, cruise,
  ramp down; a triangle when the move is too short to reach the speed), a stop a
  deceleration at the move's acceleration (:mod:`temsims.ioc.stage` publishes it).
- :func:`slew`: the holder bias supply's output, which follows its target linearly at
  the ramp rate and lands on it (:mod:`temsims.ioc.bias` publishes it).

(The sector magnet's exponential settling is :class:`temsims.ioc.physics.sims.Magnet`.)
Time is passed in, in nominal seconds: nothing here waits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Ramp:
    """Motion with piecewise-constant acceleration, starting at ``x0`` with speed ``v0``.

    ``phases`` are ``(duration_s, acceleration)`` pairs; ``end`` is the exact final
    position (returned once the profile is over, so a finished move lands on its
    target without rounding).
    """

    x0: float
    v0: float
    phases: tuple[tuple[float, float], ...]
    end: float

    @property
    def duration(self) -> float:
        return sum(d for d, _ in self.phases)

    def at(self, t: float) -> tuple[float, float]:
        """Position and velocity ``t`` seconds after the start."""
        if t >= self.duration:
            return self.end, 0.0
        x, v = self.x0, self.v0
        for d, a in self.phases:
            if t <= 0.0:
                break
            s = min(t, d)
            x += v * s + 0.5 * a * s * s
            v += a * s
            t -= d
        return x, v

    @classmethod
    def trapezoid(cls, x0: float, target: float, velocity: float, accel_s: float) -> Ramp:
        """From rest at ``x0`` to rest at ``target``: ramp, cruise at ``velocity``, ramp."""
        distance = abs(target - x0)
        if distance == 0.0:
            return cls(x0, 0.0, (), target)
        sign = math.copysign(1.0, target - x0)
        if accel_s <= 0.0:
            return cls(x0, sign * velocity, ((distance / velocity, 0.0),), target)
        accel = velocity / accel_s
        if distance >= velocity * accel_s:
            cruise = distance / velocity - accel_s
            phases = ((accel_s, sign * accel), (cruise, 0.0), (accel_s, -sign * accel))
        else:  # never reaches VELO: triangle
            ramp = math.sqrt(distance / accel)
            phases = ((ramp, sign * accel), (ramp, -sign * accel))
        return cls(x0, 0.0, phases, target)

    @classmethod
    def stop(cls, x0: float, v0: float, velocity: float, accel_s: float) -> Ramp:
        """Decelerate from speed ``v0`` at the move's acceleration ``velocity/accel_s``."""
        if v0 == 0.0 or accel_s <= 0.0 or velocity <= 0.0:
            return cls(x0, 0.0, (), x0)
        accel = velocity / accel_s
        t = abs(v0) / accel
        return cls(x0, v0, ((t, -math.copysign(accel, v0)),), x0 + 0.5 * v0 * t)


def slew(output: float, target: float, rate: float, elapsed_s: float
         ) -> tuple[float, float | None]:
    """A rate-limited output ``elapsed_s`` after it was at ``output``, heading for ``target``.

    Returns ``(value, None)`` while on the way (``output`` moved by ``rate * elapsed_s``
    towards ``target``), or ``(target, t)`` once there, ``t = |target - output| / rate``
    seconds after it was at ``output``.
    """
    step = rate * elapsed_s
    diff = target - output
    if abs(diff) <= step:
        return target, abs(diff) / rate
    return output + math.copysign(step, diff), None


__all__ = ["Ramp", "slew"]
