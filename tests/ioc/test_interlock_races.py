"""The SIMS interlock against timing, in process: no CA client, no load needed.

The column judges "SIMS geometry" from the world at the instant it commits an unblank,
and a part being stopped counts as down from the moment its stop begins. Each test
forces the interleaving that the interlock fuzzing (``tests/faults``) can only meet by
chance under load: the geometry leaving while the put is in an await, a put meeting a
part that is being killed, a killed part's last cleanup publishing its position.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from temsims.channel_access import find_free_base_port
from temsims.ioc.bias import BiasIOC
from temsims.ioc.column import ColumnIOC
from temsims.ioc.server import PartServer, part_group_class
from temsims.ioc.world import Clock, World

SIMS = {"stage.A": -68.0, "tem.objective": "Off"}


def world_in_sims_geometry(time_scale: float = 200.0) -> World:
    world = World(Clock(time_scale))
    world.publish("stage", "stage.A", SIMS["stage.A"])
    world.publish("tem", "tem.objective", SIMS["tem.objective"])
    return world


async def _settle() -> None:
    for _ in range(5):  # the world's dispatch, then the task it creates
        await asyncio.sleep(0)


def _tilt_away_inside(pv, world: World, alpha: float = 10.0) -> None:
    """Make ``pv``'s next writes tilt the stage out of the window and yield to the loop
    (a monitor queue that makes a write await) before they go on."""
    write = pv.write

    async def write_after_tilt(*args, **kwargs):
        world.publish("stage", "stage.A", alpha)
        await _settle()
        return await write(*args, **kwargs)

    pv.write = write_after_tilt


def test_unblank_refused_when_the_tilt_leaves_inside_the_put():
    """Regression: the geometry was judged, then the put awaited a STATUS write; a tilt
    landing in that await was checked while BLANK_RBV was still Blanked (nothing to
    blank), then the put wrote Unblanked: beam on at alpha 10 deg until the 10 Hz
    re-check."""

    async def main() -> tuple[str, str, str]:
        world = world_in_sims_geometry()
        column = ColumnIOC(prefix="RACE:FIB:", world=world)
        await column.startup_hook(None)
        assert column.geometry_blocker() is None
        _tilt_away_inside(column.status, world)
        _tilt_away_inside(column.blank_rbv, world)
        with pytest.raises(PermissionError, match="SIMS interlock"):
            await column.blank.write("Unblanked")
        await _settle()
        return column.blank_rbv.value, column.status.value, column.sample_current_rbv.value

    blank, status, sample_current = asyncio.run(main())
    assert blank == "Blanked"
    assert status.startswith("Refused: alpha 10.0 deg")
    assert sample_current == 0.0


def test_unblank_still_taken_in_sims_geometry():
    async def main() -> tuple[str, str]:
        column = ColumnIOC(prefix="RACE:FIB:", world=world_in_sims_geometry())
        await column.startup_hook(None)
        await column.blank.write("Unblanked")
        await _settle()
        return column.blank_rbv.value, column.status.value

    assert asyncio.run(main()) == ("Unblanked", "OK")


def test_bias_enable_refused_when_the_tilt_leaves_inside_the_put():
    """The bias output's enable, the same check-then-commit as the unblank."""

    async def main() -> tuple[str, str, float]:
        world = world_in_sims_geometry()
        bias = BiasIOC(prefix="RACE:BIAS:", world=world)
        await bias.startup_hook(None)
        _tilt_away_inside(bias.status, world)
        _tilt_away_inside(bias.enable_rbv, world)
        with pytest.raises(PermissionError, match="SIMS interlock"):
            await bias.enable.write("On")
        await _settle()
        return bias.enable_rbv.value, bias.status.value, bias.voltage_rbv.value

    enable, status, volts = asyncio.run(main())
    assert enable == "Off"
    assert status.startswith("Refused: alpha 10.0 deg")
    assert volts == 0.0


def test_world_ignores_a_part_that_is_down_until_it_is_up():
    world = world_in_sims_geometry()
    world.part_down("stage")
    assert world.get("stage.A") is None
    world.publish("stage", "stage.A", -68.0)  # a dying part's cleanup
    assert world.get("stage.A") is None
    world.part_up("stage")
    assert world.get("stage.A") is None  # until the restarted part publishes
    world.publish("stage", "stage.A", 0.0)
    assert world.get("stage.A") == 0.0


@pytest.fixture
def stage_server():
    world = world_in_sims_geometry(time_scale=1.0)  # its moves last seconds
    world.part_down("stage")  # the real stage replaces the stand-in values above
    cls = part_group_class("stage")
    port = find_free_base_port(2)
    server = PartServer("stage", lambda: cls(prefix="RACE:STAGE:", world=world), port,
                        "127.0.0.1", world)
    server.start()
    yield server, world
    server.kill()


def _published(world: World, key: str, timeout: float = 10.0):
    """``key`` once a started part has published it (its start-up hook runs after
    ``PartServer.start`` returns)."""
    deadline = time.monotonic() + timeout
    while world.get(key) is None:
        assert time.monotonic() < deadline, f"{key} never published"
        time.sleep(0.005)
    return world.get(key)


def test_a_part_being_killed_is_down_for_its_peers_before_it_stops(stage_server):
    """Regression: the world took a part as down only after its thread had ended; in
    between (long under load) its last tilt still let the column unblank. Killed
    mid-move, its cancelled move's last position must not come back either."""
    server, world = stage_server
    assert _published(world, "stage.A") == 0.0
    seen_at_shutdown: list = []
    shutdown = server._shutdown

    async def recording_shutdown() -> None:
        seen_at_shutdown.append(world.get("stage.A"))
        await shutdown()

    server._shutdown = recording_shutdown
    axis = server.group.axes["A"]

    async def start_move() -> None:
        await server.group.alpha.write(-68.0)  # 14 s at 5 deg/s

    server.call(start_move)
    assert axis.moving
    server.kill()
    assert seen_at_shutdown == [None]
    assert world.get("stage.A") is None
    server.start()
    assert _published(world, "stage.A") == 0.0  # a fresh stage, at home
