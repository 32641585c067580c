"""The ``temsims`` command.

``temsims ioc all``            serve every IOC (subprocesses, loopback) until Ctrl-C
``temsims ioc <part> [...]``   serve one IOC in this process (caproto options pass through)
``temsims demo``               the main job (see :func:`cmd_demo`)
``temsims shell``              an IPython session with the temsims profile
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from temsims.channel_access import IOC_PORT_OFFSETS, PART_SUFFIXES, CALayout

IOC_NAMES = tuple(IOC_PORT_OFFSETS)


def _start_all(args: argparse.Namespace):
    from temsims.ioc.launcher import InstrumentProcesses

    layout = CALayout(base_port=args.base_port, host=args.host)
    procs = InstrumentProcesses(
        layout=layout, instrument_prefix=args.prefix, specimen=args.specimen,
        seed=args.seed, log_dir=Path(args.log_dir) if args.log_dir else None,
    )
    return procs.start(timeout=60)


def describe_running(procs) -> str:
    """What each IOC of ``procs`` serves: prefix, port, PV count, a few PV names."""
    lines = []
    for ioc in procs.iocs:
        module = importlib.import_module(f"temsims.ioc.{ioc}")
        group_cls = _group_class(module)
        names = sorted(_pv_names(group_cls, procs.prefix(ioc)))
        shown = ", ".join(n[len(procs.prefix(ioc)):] for n in names[:12])
        lines.append(
            f"  {ioc:<13} {procs.prefix(ioc):<18} 127.0.0.1:{procs.layout.server_port(ioc)}"
            f"  {len(names):>3} PVs: {shown}{', ...' if len(names) > 12 else ''}"
        )
    return "\n".join(lines)


def _group_class(module):
    from temsims.ioc.common import InstrumentIOC

    candidates = [
        obj for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, InstrumentIOC) and obj is not InstrumentIOC
        and obj.__module__ == module.__name__
    ]
    return candidates[0]


def _pv_names(group_cls, prefix: str) -> list[str]:
    """PV names a group class serves, read from its pvproperties without building it."""
    from caproto.server import PVGroup, SubGroup, pvproperty

    names: list[str] = []

    def walk(cls, pre: str) -> None:
        for attr in dir(cls):
            value = getattr(cls, attr, None)
            if isinstance(value, pvproperty):
                names.append(pre + value.pvspec.name)
                record = value.pvspec.record
                if record:
                    names.append(pre + value.pvspec.name + ".VAL")
            elif isinstance(value, SubGroup):
                sub_prefix = value.prefix if value.prefix is not None else f"{attr}:"
                group = value.group_cls
                if isinstance(group, type) and issubclass(group, PVGroup):
                    walk(group, pre + sub_prefix)

    walk(group_cls, prefix)
    return names


def cmd_ioc(args: argparse.Namespace, passthrough: list[str]) -> int:
    if args.part == "all":
        procs = _start_all(args)
        print(f"temsims: serving {len(procs.iocs)} IOCs on {args.host} "
              f"(CA ports from {args.base_port}; clients: "
              f"EPICS_CA_ADDR_LIST='{procs.layout.address_list()}' EPICS_CA_AUTO_ADDR_LIST=NO)")
        print(describe_running(procs))
        print("Ctrl-C stops them.", flush=True)
        try:
            # The repeater may exit at once when one already listens: watch the IOCs.
            iocs = [procs.processes[name] for name in procs.iocs]
            while all(p.poll() is None for p in iocs):
                time.sleep(0.5)
            print("temsims: an IOC exited; stopping the others", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            procs.stop()
    module = importlib.import_module(f"temsims.ioc.{args.part}")
    argv = ["--prefix", args.prefix + PART_SUFFIXES[args.part],
            "--instrument-prefix", args.prefix]
    if args.part in ("tem", "spectrometer"):
        argv += ["--specimen", args.specimen, "--seed", str(args.seed)]
    import os

    os.environ.update(CALayout(base_port=args.base_port, host=args.host)
                      .server_environment(args.part))
    module.main(argv + passthrough)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job (:func:`temsims.demo.run_demo`): correlative TEM-SIMS and the
    labelled-particle search, a catalog of the runs and a PNG report."""
    from temsims.demo import run_demo

    run_demo(prefix=args.prefix, base_port=args.base_port, host=args.host,
             specimen=args.specimen, seed=args.seed, catalog=args.catalog, out=args.out,
             quick=args.quick, log_dir=args.log_dir)
    return 0


def cmd_shell(args: argparse.Namespace, passthrough: list[str]) -> int:
    """Install the temsims IPython profile and start IPython with it."""
    import os

    from IPython import start_ipython

    from temsims.profile import PROFILE_NAME, install_profile

    os.environ.update(CALayout(base_port=args.base_port, host=args.host).client_environment())
    os.environ["TEMSIMS_PREFIX"] = args.prefix
    if args.catalog:
        os.environ["TEMSIMS_CATALOG"] = args.catalog
    argv = [f"--profile={PROFILE_NAME}"]
    if args.ipython_dir:
        argv.append(f"--ipython-dir={args.ipython_dir}")
    install_profile(args.ipython_dir)
    start_ipython(argv=argv + passthrough)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="temsims", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def instrument_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--prefix", default="TEMSIMS:", help="instrument PV prefix")
        p.add_argument("--base-port", type=int,
                       default=CALayout.from_environment().base_port,
                       help="CA server port of the first IOC (others follow)")
        p.add_argument("--host", default="127.0.0.1", help="interface to serve on")
        p.add_argument("--specimen", default="li2co3-particles")
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--log-dir", default=None, help="write each IOC's log here")

    p_ioc = sub.add_parser("ioc", help="serve the instrument's IOCs")
    p_ioc.add_argument("part", choices=("all", *IOC_NAMES))
    instrument_options(p_ioc)

    p_demo = sub.add_parser("demo", help="run the main job")
    instrument_options(p_demo)
    p_demo.add_argument("--catalog", default=None, help="catalog directory")
    p_demo.add_argument("--out", default="temsims-report", help="report directory")
    p_demo.add_argument("--quick", action="store_true", help="reduced sizes (faster)")

    p_shell = sub.add_parser("shell", help="IPython session with the temsims profile")
    p_shell.add_argument("--prefix", default="TEMSIMS:", help="instrument PV prefix")
    p_shell.add_argument("--base-port", type=int, default=CALayout.from_environment().base_port)
    p_shell.add_argument("--host", default="127.0.0.1")
    p_shell.add_argument("--catalog", default=None, help="catalog directory or tiled URI")
    p_shell.add_argument("--ipython-dir", default=None, help="IPython directory to use")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, passthrough = parser.parse_known_args(argv)
    if args.command == "ioc":
        return cmd_ioc(args, passthrough)
    if args.command == "shell":
        return cmd_shell(args, passthrough)
    if passthrough:
        parser.error(f"unrecognized arguments: {' '.join(passthrough)}")
    if args.command == "demo":
        return cmd_demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
