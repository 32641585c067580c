"""``temsims catalog``: look after a catalog's runs by hand.

``temsims catalog replay SPOOL [--catalog LOC] [--api-key KEY] [--keep]``
    Store the runs of a writer's spool (a ``<run uid>.spool`` file, or a directory of
    them; :mod:`temsims.callbacks.spool`) in their catalog: each run is deleted from the
    catalog if part of it is there (what a writer that died had stored), then written
    whole from the spool; the file is removed once its run is stored (unless
    ``--keep``). A run cut short (its session died) is stored without a stop document.
``temsims catalog incomplete [--catalog LOC] [--api-key KEY]``
    List the runs without a stop document (:meth:`temsims.catalog.Runs.incomplete`).

Why a spool: ``docs/decisions/0025-spool-and-replay.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """Look after a catalog's runs by hand.

  temsims catalog replay SPOOL     store the runs of a writer's spool (a .spool file or a
                                   directory of them) in their catalog, whole; removes
                                   each file once its run is stored
  temsims catalog incomplete       list the runs that have no stop document"""

__all__ = ["DESCRIPTION", "add_arguments", "main", "replay"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", required=True)
    p_replay = sub.add_parser("replay", help="store the runs of a spool in their catalog",
                              description="Store the runs of a spool (a .spool file or a "
                              "directory of them) in their catalog, whole.")
    p_replay.add_argument("spool", help="a <run uid>.spool file or a spool directory")
    p_replay.add_argument("--catalog", default=None,
                          help="catalog directory or tiled URI; unset: the one each spool "
                          "file names")
    p_replay.add_argument("--api-key", default=None, help="API key for a tiled URI")
    p_replay.add_argument("--keep", action="store_true",
                          help="keep the spool files after storing their runs")
    p_inc = sub.add_parser("incomplete", help="list runs without a stop document")
    p_inc.add_argument("--catalog", default=None,
                       help="catalog directory or tiled URI; unset: $TEMSIMS_CATALOG or "
                       "the user data directory")
    p_inc.add_argument("--api-key", default=None, help="API key for a tiled URI")


def replay(spool: str | Path, catalog: str | Path | None = None, *,
           api_key: str | None = None, keep: bool = False) -> list[tuple[str, int, bool]]:
    """Store the runs of ``spool`` in ``catalog`` (default: the one each file names).

    Returns
    -------
    list
        ``(run uid, documents stored, whether the run has its stop)`` per file, in the
        order the files were written.
    """
    from temsims.callbacks.spool import SUFFIX, read_spool
    from temsims.callbacks.writer_process import delete_partial_run
    from temsims.catalog import open_catalog, storing_chain

    spool = Path(spool)
    files = ([spool] if spool.is_file()
             else sorted(spool.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime))
    if not files:
        raise FileNotFoundError(f"no spool file ({SUFFIX}) at {spool}")
    out = []
    opened: dict[str, object] = {}
    try:
        for path in files:
            header, docs = read_spool(path)
            if not docs or docs[0][0] != "start":
                raise ValueError(f"{path}: no start document; not a run's spool")
            location = str(catalog) if catalog is not None else header.get("catalog")
            if not location:
                raise ValueError(f"{path} names no catalog: give --catalog")
            if location not in opened:
                opened[location] = open_catalog(location, api_key=api_key)
            cat = opened[location]
            uid = docs[0][1]["uid"]
            delete_partial_run(cat.runs, uid)
            chain = storing_chain(cat.runs)
            for name, doc in docs:
                chain(name, doc)
            chain.flush_events()  # a run without its stop: its last events too
            has_stop = docs[-1][0] == "stop"
            if not keep:
                path.unlink()
            out.append((uid, len(docs), has_stop))
    finally:
        for cat in opened.values():
            cat.close()
    return out


def main(args: argparse.Namespace) -> int:
    if args.action == "replay":
        try:
            stored = replay(args.spool, args.catalog, api_key=args.api_key, keep=args.keep)
        except (OSError, ValueError) as err:
            print(f"temsims catalog replay: {err}", file=sys.stderr)
            return 1
        for uid, n, has_stop in stored:
            print(f"stored run {uid}: {n} documents"
                  + ("" if has_stop else " (no stop document: the run was cut short)"))
        return 0
    from temsims.catalog import open_catalog

    with open_catalog(args.catalog, api_key=args.api_key) as cat:
        for run in cat.incomplete().values():
            start = run.metadata["start"]
            print(f"{start['uid']}  scan {start.get('scan_id')}  {start.get('plan_name')}")
    return 0
