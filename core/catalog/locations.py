"""Checks of a catalog location before anything is started for it.

:func:`temsims.catalog.open_catalog` takes a directory (created if needed) or the
``http(s)://`` URI of a tiled server. A location that cannot be one of them is
refused here, at once and with one line naming it, instead of after a server process
was asked for it (a corrupt database: a traceback from the server's log after 3-4 s)
or not at all (``"ftp://host/x"`` was taken for a relative directory named
``ftp:``).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

#: What a location may be, for the messages.
LOCATION_FORMS = "a writable directory or an http(s):// URI of a tiled server"
#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"
#: The database files of a catalog directory (``server.directory_storage``).
DATABASE_FILES = ("catalog.db", "tabular.db")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class CatalogLocationError(ValueError):
    """A catalog location that cannot be opened; the message names it and why."""


def check_location(location: object) -> str | Path:
    """``location`` if it can be a catalog, else :class:`CatalogLocationError`.

    A URI must be ``http://`` or ``https://``. A directory must be creatable (or
    exist) and writable (a probe file is created and removed: ``os.access`` says
    yes to root on a read-only file system), and its database files, where they
    exist, must be SQLite databases.
    """
    if isinstance(location, bytes) or not isinstance(location, str | os.PathLike):
        raise CatalogLocationError(
            f"catalog location must be {LOCATION_FORMS} (str or Path), got "
            f"{location!r} ({type(location).__name__})")
    if isinstance(location, str):
        if not location.strip():
            raise CatalogLocationError(f"catalog location is empty; give {LOCATION_FORMS}")
        scheme = _SCHEME.match(location)
        if scheme:
            if scheme.group(1).lower() in ("http", "https"):
                return location
            raise CatalogLocationError(
                f"catalog location {location!r}: scheme {scheme.group(1)!r} is not served; "
                f"give {LOCATION_FORMS}")
    directory = Path(location).expanduser()
    _check_directory(directory, location)
    return location


def _check_directory(directory: Path, location: object) -> None:
    def refuse(why: str) -> CatalogLocationError:
        return CatalogLocationError(f"catalog location {str(location)!r}: {why}; "
                                    f"give {LOCATION_FORMS}")

    if directory.exists() and not directory.is_dir():
        raise refuse("is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise refuse(f"cannot be created ({err.strerror or err})") from None
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".temsims-probe-"):
            pass
    except OSError as err:
        raise refuse(f"is not writable ({err.strerror or err})") from None
    for name in DATABASE_FILES:
        path = directory / name
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as f:
                header = f.read(len(SQLITE_HEADER))
            if header != SQLITE_HEADER:
                raise refuse(f"{name} is not a SQLite database (corrupt or foreign file)")


__all__ = ["LOCATION_FORMS", "CatalogLocationError", "check_location"]
