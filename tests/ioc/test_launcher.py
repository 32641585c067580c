"""The launcher: five IOCs on their own loopback ports, each restartable alone."""

from catools import caget

from temsims.channel_access import IOC_PORT_OFFSETS, CALayout


def test_every_ioc_answers_on_its_own_port(instrument):
    for ioc in IOC_PORT_OFFSETS:
        uptime = caget(instrument.prefix(ioc) + "UPTIME", timeout=2)
        assert uptime >= 0.0
    ports = {instrument.layout.server_port(ioc) for ioc in IOC_PORT_OFFSETS}
    assert len(ports) == 5


def test_one_ioc_restarts_alone(fresh_instrument):
    procs = fresh_instrument(iocs=("stage", "bias"))
    stage_pid = procs.processes["stage"].pid
    old_bias = procs.processes["bias"].pid
    procs.restart("bias")
    assert procs.processes["bias"].pid != old_bias
    assert procs.processes["stage"].pid == stage_pid
    assert caget(procs.prefix("bias") + "UPTIME", timeout=2) < 5.0


def test_layout_lists_only_loopback():
    env = CALayout(base_port=30000).server_environment("tem")
    assert env["EPICS_CA_ADDR_LIST"].split() == [
        f"127.0.0.1:{30000 + off}" for off in IOC_PORT_OFFSETS.values()
    ]
    assert env["EPICS_CAS_BEACON_ADDR_LIST"] == "127.0.0.1"
    assert env["EPICS_CA_SERVER_PORT"] == "30002"
    assert env["EPICS_CA_AUTO_ADDR_LIST"] == "NO"
