"""The ``temsims`` command.

``temsims ioc all``            serve the instrument (every part, loopback) until Ctrl-C or SIGTERM
``temsims ioc <part>``         serve one part alone
``temsims demo``               the main job (see :func:`cmd_demo`)
``temsims shell``              an IPython session with the temsims profile
``temsims serve DIR|URI``      a tiled server of the catalog, with API keys (:mod:`temsims.catalog.serve`)
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import textwrap
from pathlib import Path

from temsims.channel_access import IOC_PORT_OFFSETS, PART_SUFFIXES, CALayout

IOC_NAMES = tuple(IOC_PORT_OFFSETS)
#: What ``temsims --help`` says (plain terminal text).
DESCRIPTION = """The temsims command: the correlative TEM-SIMS microscope's simulated instrument,
its main job and its IPython session.

  temsims ioc all       serve the instrument (every part, loopback) until Ctrl-C or SIGTERM
  temsims ioc <part>    serve one part alone
  temsims demo          the main job: a correlative case study (--case) on the embedded
                        catalog
  temsims shell         an IPython session with the temsims profile
  temsims serve         serve a catalog (directory or PostgreSQL) to other processes and
                        machines, with API keys: a write key, read-only keys

temsims <command> --help shows each command's options and defaults."""


def describe_running(parts, prefix: str, layout: CALayout) -> str:
    """What each part serves: prefix, port, PV count, a few PV names."""
    lines = []
    for ioc in parts:
        module = importlib.import_module(f"temsims.ioc.{ioc}")
        group_cls = _group_class(module)
        part_prefix = prefix + PART_SUFFIXES[ioc]
        names = sorted(_pv_names(group_cls, part_prefix))
        shown = ", ".join(n[len(part_prefix):] for n in names[:12])
        lines.append(
            f"  {ioc:<13} {part_prefix:<18} {layout.host}:{layout.server_port(ioc)}"
            f"  {len(names):>3} PVs: {shown}{', ...' if len(names) > 12 else ''}"
        )
    lines.append(f"  {'(simulation)':<13} {prefix + 'SIM:':<18} {layout.host}:{layout.sim_port}"
                 "  part states, RESET, TIME_SCALE")
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


def cmd_ioc(args: argparse.Namespace) -> int:
    """Serve the instrument (or one part) in this process until Ctrl-C or SIGTERM."""
    from temsims.ioc import server

    parts = IOC_NAMES if args.part == "all" else (args.part,)
    argv = ["--prefix", args.prefix, "--base-port", str(args.base_port), "--host", args.host,
            "--specimen", args.specimen, "--seed", str(args.seed), "--parts", ",".join(parts),
            "--time-scale", str(args.time_scale)]
    if args.drift_nm_per_min is not None:
        argv += ["--drift-nm-per-min", str(args.drift_nm_per_min)]
    argv += ["--calibration-errors", args.calibration_errors]
    # Only the errors given explicitly: the others follow --calibration-errors.
    for name in ("fov_error_pct", "raster_rotation_deg", "landing_error_pct",
                 "eucentric_dz_um", "coincidence_um"):
        if hasattr(args, name):
            value = getattr(args, name)
            argv += [f"--{name.replace('_', '-')}",
                     *(str(v) for v in (value if name == "coincidence_um" else (value,)))]
    argv += ["--focus-error-um", str(getattr(args, "focus_error_um", 0.0))]
    if getattr(args, "relief", False):
        argv.append("--relief")
    options = server.parse_options(argv)
    layout = CALayout(base_port=args.base_port, host=args.host)
    if args.log_dir:
        import logging

        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
        logging.basicConfig(filename=str(Path(args.log_dir) / "instrument.log"),
                            level=logging.INFO)

    def announce(instrument) -> None:
        print(f"temsims: clients need EPICS_CA_ADDR_LIST='{layout.address_list()}' "
              "EPICS_CA_AUTO_ADDR_LIST=NO")
        print(describe_running(parts, args.prefix, layout))
        print("Ctrl-C or SIGTERM stops it.", flush=True)

    return server.serve(options, announce=announce)


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job (:func:`temsims.app.demo.run_demo`): the case study ``--case``
    (default the Li2CO3 particles), a catalog of the runs and its report."""
    from temsims.app.demo import DemoCannotStart, run_demo
    from temsims.app.lifecycle import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # SIGTERM stops the IOCs and the catalog as Ctrl-C does
            run_demo(case=args.case, prefix=args.prefix, base_port=args.base_port,
                     host=args.host, specimen=getattr(args, "specimen", None), seed=args.seed, catalog=args.catalog,
                     api_key=args.api_key, out=args.out, quick=args.quick,
                     log_dir=args.log_dir, time_scale=args.time_scale,
                     drift_nm_per_min=args.drift_nm_per_min)
    except KeyboardInterrupt:
        print("temsims demo: interrupted; IOCs stopped, catalog closed", file=sys.stderr)
        return 130
    except DemoCannotStart as err:  # refused before anything started: say what to do
        print(f"temsims demo: {err}", file=sys.stderr)
        return 2
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
    if args.api_key:  # tiled's client (the session's and its writer process's) reads it
        os.environ["TILED_API_KEY"] = args.api_key
    argv = [f"--profile={PROFILE_NAME}"]
    if args.ipython_dir:
        argv.append(f"--ipython-dir={args.ipython_dir}")
    install_profile(args.ipython_dir)
    start_ipython(argv=argv + passthrough)  # the session closes itself at exit
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a catalog until Ctrl-C or SIGTERM (:func:`temsims.catalog.serve.serve`)."""
    from temsims.catalog.serve import DEFAULT_READERS, serve

    try:
        return serve(args.catalog, data=args.data, host=args.host, port=args.port,
                     readers=args.reader or DEFAULT_READERS)
    except ValueError as err:
        print(f"temsims serve: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # did not start: the port taken, a database refusing
        cause = f" ({err.__cause__})" if err.__cause__ else ""
        print(f"temsims serve: {err}{cause}", file=sys.stderr)
        return 1


class _DemoHelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                         argparse.RawDescriptionHelpFormatter):
    """Defaults shown, and the description's list of cases kept one per line."""


API_KEY_HELP = ("API key for a tiled server's URI (temsims serve's write key); unset: "
                "$TILED_API_KEY")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="temsims", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def instrument_options(p: argparse.ArgumentParser, *,
                           specimen_default: str = "li2co3-particles",
                           specimen_help: str = "virtual specimen in the holder") -> None:
        p.add_argument("--prefix", default="TEMSIMS:", help="instrument PV prefix")
        p.add_argument("--base-port", type=int,
                       default=CALayout.from_environment().base_port,
                       help="CA server port of the first IOC (others follow)")
        p.add_argument("--host", default="127.0.0.1", help="interface to serve on")
        p.add_argument("--specimen", default=specimen_default,
                       choices=("li2co3-particles", "livo-cathode", "diffusion-couple",
                                "solar-cell"), help=specimen_help)
        p.add_argument("--seed", type=int, default=1, help="seed of the specimen")
        p.add_argument("--log-dir", default=None, help="write the instrument's log here")

    p_ioc = sub.add_parser(
        "ioc", help="serve the instrument's IOCs",
        description="Serve the instrument (all) or one part over Channel Access, in this "
        "process, until Ctrl-C or SIGTERM.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p_ioc.add_argument("part", choices=("all", *IOC_NAMES), help="what to serve")
    instrument_options(p_ioc)
    from temsims.ioc.server import add_simulation_arguments

    add_simulation_arguments(p_ioc)

    from temsims.app.cases import ALL_CASES, DEFAULT_CASE, available_cases

    cases = available_cases()
    p_demo = sub.add_parser(
        "demo", help="run the main job (a case study)",
        description=textwrap.fill(
            "A correlative TEM-SIMS case study on the simulated instrument, its runs "
            "stored in a catalog (a directory, or a server's URI) and linked by one "
            "correlation id, with a report (PNG, report.json) read back from the "
            "catalog.", 80) + "\n\ncases (--case):\n" + "\n".join(
            textwrap.fill(f"{c.name:<14} {c.title} (specimen {c.specimen})", 80,
                          initial_indent="  ", subsequent_indent=" " * 17)
            for c in cases.values()) + "\n" + textwrap.fill(
                f"{ALL_CASES:<14} every case above, one after another (each on IOCs "
                "with its own specimen), into one catalog; reports in OUT/<case>/ and "
                "an HTML index OUT/index.html", 80, initial_indent="  ",
                subsequent_indent=" " * 17),
        formatter_class=_DemoHelpFormatter)
    p_demo.add_argument("--case", default=DEFAULT_CASE, choices=(*cases, ALL_CASES),
                        help="which case study to run (listed above)")
    # No default: the case decides which specimen the IOCs it starts hold.
    instrument_options(p_demo, specimen_default=argparse.SUPPRESS,
                       specimen_help="specimen of the IOCs the demo starts; unset: the "
                       "case's (" + ", ".join(f"{c.name}: {c.specimen}"
                                              for c in cases.values()) + "); another is "
                       "refused")
    p_demo.add_argument("--catalog", default=None,
                        help="catalog directory or the URI of a tiled server (temsims serve); "
                        "unset: $TEMSIMS_CATALOG or the user data directory")
    p_demo.add_argument("--api-key", default=None, help=API_KEY_HELP)
    p_demo.add_argument("--out", default="temsims-report", help="report directory")
    p_demo.add_argument("--quick", action="store_true", help="reduced sizes (faster)")
    p_demo.add_argument("--time-scale", type=float, default=1.0,
                        help="simulated seconds per wall second of the instrument the demo "
                        "starts (ignored when one already answers)")
    p_demo.add_argument("--drift-nm-per-min", type=float, default=None,
                        help="specimen drift relative to the ion beam of the instrument the "
                        "demo starts, nm/min (0..1000; unset: the spectrometer's own, 3)")

    p_shell = sub.add_parser("shell", help="IPython session with the temsims profile",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p_shell.add_argument("--prefix", default="TEMSIMS:", help="instrument PV prefix")
    p_shell.add_argument("--base-port", type=int, default=CALayout.from_environment().base_port,
                         help="CA server port of the instrument's first IOC")
    p_shell.add_argument("--host", default="127.0.0.1", help="host the IOCs serve on")
    p_shell.add_argument("--catalog", default=None, help="catalog directory or tiled URI")
    p_shell.add_argument("--api-key", default=None, help=API_KEY_HELP)
    p_shell.add_argument("--ipython-dir", default=None, help="IPython directory to use")

    from temsims.catalog.serve import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_READERS

    p_serve = sub.add_parser(
        "serve", help="serve a catalog with API keys",
        description="A tiled server over a catalog directory (the layout open_catalog(DIR) "
        "uses) or a PostgreSQL database, until Ctrl-C or SIGTERM. Clients need a key: the "
        "write key (read, write, create) or a read-only key, each in a file of the state "
        "directory (DIR/serve, or DATA/serve for PostgreSQL; printed on start); requests "
        "without one are refused.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p_serve.add_argument("catalog", nargs="?", default=None, metavar="DIR|POSTGRES_URI",
                         help="catalog directory, or postgresql://user:password@host:port/db; "
                         "unset: $TEMSIMS_CATALOG or the user data directory")
    p_serve.add_argument("--data", default=None, metavar="DIR",
                         help="PostgreSQL only (required there): arrays go to DIR/data, "
                         "keys and log to DIR/serve")
    p_serve.add_argument("--host", default=DEFAULT_HOST,
                         help="interface to listen on (0.0.0.0: every interface)")
    p_serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0: a free one)")
    p_serve.add_argument("--reader", action="append", default=None, metavar="NAME",
                         help="a read-only key for NAME (repeat for more); names no longer "
                         f"given are revoked; unset: {', '.join(DEFAULT_READERS)}")

    for name, (module, help_text) in MODULE_COMMANDS.items():
        command = importlib.import_module(module)
        p_cmd = sub.add_parser(name, help=help_text, description=command.DESCRIPTION,
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        command.add_arguments(p_cmd)
    return parser


#: Commands whose options and work live in a module of their own (``add_arguments``,
#: ``main(args) -> exit code`` and ``DESCRIPTION``): name -> (module, one-line help).
MODULE_COMMANDS: dict[str, tuple[str, str]] = {
    "catalog": ("temsims.app.catalog_command", "replay a writer's spool; list incomplete runs"),
    "queue": ("temsims.app.queue", "the queue server (Redis, RE Manager) for the running instrument"),
    "view": ("temsims.app.view", "live SIMS views and a catalog writer fed from the 0MQ document stream"),
}


#: An instrument PV prefix: CA name characters, no '.' (it starts a record's field).
_PREFIX = re.compile(r"^[A-Za-z0-9_:\-]{1,40}$")
_READER = re.compile(r"^[A-Za-z0-9_\-]{1,40}$")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (exit 2, the option named with what it allows) what argparse's types let
    through but would fail later, after the IOCs or a server were started: a prefix
    with blanks or a '.', a negative seed (numpy's generators refuse it), a port
    beyond 0..65535, a reader name that cannot be a key file's, a catalog URI of a
    scheme no catalog is served on."""
    prefix = getattr(args, "prefix", None)
    if prefix is not None and not _PREFIX.match(prefix):
        parser.error(f"--prefix must be 1-40 characters of A-Z a-z 0-9 _ : - (no blank, "
                     f"no '.'), got {prefix!r}")
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < 2**32:
        parser.error(f"--seed must be in [0, 2**32), got {seed}")
    if args.command == "serve":
        if not 0 <= args.port <= 65535:
            parser.error(f"--port must be in [0, 65535] (0: a free one), got {args.port}")
        for name in args.reader or ():
            if not _READER.match(name):
                parser.error(f"--reader must be a name of 1-40 characters of A-Z a-z 0-9 "
                             f"_ -, got {name!r}")
    catalog = getattr(args, "catalog", None)
    if args.command in ("demo", "shell") and catalog:
        from temsims.catalog.locations import LOCATION_FORMS

        scheme = catalog.split("://", 1)[0] if "://" in catalog else None
        if scheme is not None and scheme.lower() not in ("http", "https"):
            parser.error(f"--catalog must be {LOCATION_FORMS}, got {catalog!r}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, passthrough = parser.parse_known_args(argv)
    check_arguments(parser, args)
    if args.command == "shell":
        return cmd_shell(args, passthrough)
    if passthrough:
        parser.error(f"unrecognized arguments: {' '.join(passthrough)}")
    if args.command == "demo" and args.drift_nm_per_min is not None \
            and not 0 <= args.drift_nm_per_min <= 1000:
        parser.error(f"--drift-nm-per-min must be within 0..1000, got {args.drift_nm_per_min}")
    if args.command == "demo" and getattr(args, "specimen", None) is not None:
        from temsims.app.cases import ALL_CASES, get_case

        if args.case == ALL_CASES:
            parser.error("--specimen does not fit --case all: each case runs on its own "
                         "(leave --specimen out)")

        wanted = get_case(args.case).specimen
        if args.specimen != wanted:
            parser.error(f"--specimen {args.specimen} does not fit --case {args.case}: it "
                         f"runs on {wanted} (leave --specimen out)")
    if args.command in ("ioc", "demo") and not 0 < args.time_scale <= 1000:
        parser.error(f"--time-scale must be in (0, 1000], got {args.time_scale}")
    if args.command == "ioc":
        return cmd_ioc(args)
    if args.command == "demo":
        return cmd_demo(args)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command in MODULE_COMMANDS:
        return importlib.import_module(MODULE_COMMANDS[args.command][0]).main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
