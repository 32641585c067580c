"""``python -m temsims.catalog host HOST_DIR [--detach]`` (the catalog host: decision
0014) and ``python -m temsims.catalog stop-host``."""

from __future__ import annotations

import sys
from pathlib import Path

from temsims.catalog.server import _host_main, stop_catalog_host


def _main(argv: list[str]) -> None:
    usage = ("usage: python -m temsims.catalog host HOST_DIR [--detach]\n"
             "       python -m temsims.catalog stop-host")
    if len(argv) in (2, 3) and argv[0] == "host" and argv[2:] in ([], ["--detach"]):
        _host_main(Path(argv[1]), detach=argv[2:] == ["--detach"])
    elif argv == ["stop-host"]:
        print("stopped" if stop_catalog_host() else "no catalog host was running")
    else:
        sys.exit(usage)


if __name__ == "__main__":
    _main(sys.argv[1:])
