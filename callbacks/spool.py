"""The writer's spool: every document a session hands to storage, in a local file first.

A :class:`~temsims.callbacks.writer_process.ProcessWriter` with a spool appends each
batch of documents to ``<spool dir>/<run uid>.spool`` before it sends it to its storage
process. The file of a run is deleted once the storage process reports the run stored
(its stop document written with no error). So the spool holds exactly the runs not yet
known to be stored: when the storage process or the catalog's server dies mid-run, the
RunEngine keeps running, documents keep going to the spool, and the run is delivered
again from its file when storage is back (by the writer itself, or by hand with
``temsims catalog replay SPOOL``). Why and what it costs:
``docs/decisions/0025-spool-and-replay.md``.

File format: frames of an 8-byte little-endian length and a pickle. The first frame is a
header (``{"spool": 1, "catalog": <location>, "run": <uid>}``), each further frame a
batch ``[(name, doc), ...]`` in emission order. Append-only (``O_APPEND``); fsynced at
most every ``fsync_s`` and at the run's stop. A reader stops at a frame cut short (a
process killed while writing it) and says so. Pickle, not JSON: the documents hold
numpy arrays, and a spool is read back only by this installation, from the user's own
directory (0700): never open a spool you did not write.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger("temsims.callbacks.storage")

__all__ = ["SPOOL_ENV", "Spool", "default_spool_dir", "read_spool", "run_of"]

SPOOL_ENV = "TEMSIMS_SPOOL"
SUFFIX = ".spool"
_LENGTH = struct.Struct("<Q")
#: Most one fsync per this many seconds per run (and one at the run's stop).
FSYNC_S = 0.5


def default_spool_dir() -> Path:
    """``$TEMSIMS_SPOOL`` if set, else ``<user state dir>/temsims/spool`` (platformdirs)."""
    env = os.environ.get(SPOOL_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_state_dir("temsims", appauthor=False)) / "spool"


class Spool:
    """Append-only spool files, one per run, in ``directory`` (made 0700).

    Parameters
    ----------
    directory
        Where the files go. Checked at once: a directory that cannot be created or
        written raises ``OSError`` here, before any run.
    catalog
        The catalog location the runs are for (written in each file's header, the
        default target of ``temsims catalog replay``).
    fsync_s
        Most one ``fsync`` per run per this many seconds; always one at a stop.
    """

    def __init__(self, directory: str | Path, *, catalog: str = "", fsync_s: float = FSYNC_S
                 ) -> None:
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = self.directory / f".probe-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
        self.catalog = str(catalog)
        self.fsync_s = fsync_s
        self._lock = threading.Lock()
        self._files: dict[str, int] = {}  # run uid -> fd (open runs)
        self._synced: dict[str, float] = {}
        self._paths: dict[str, Path] = {}  # run uid -> file, until delivered
        self._runs = _RunOf()

    def path(self, run_uid: str) -> Path:
        return self.directory / f"{run_uid}{SUFFIX}"

    def append(self, docs: Iterable[tuple[str, dict]]) -> None:
        """Append a batch of documents (in order) to their runs' files."""
        by_run: dict[str, list] = {}
        for name, doc in docs:
            uid = self._runs(name, doc)
            if uid is not None:
                by_run.setdefault(uid, []).append((name, doc))
        with self._lock:
            for uid, batch in by_run.items():
                fd = self._files.get(uid)
                if fd is None:
                    fd = self._open(uid)
                _write_frame(fd, batch)
                stopped = batch[-1][0] == "stop"
                now = time.monotonic()
                if stopped or now - self._synced.get(uid, 0.0) >= self.fsync_s:
                    os.fsync(fd)
                    self._synced[uid] = now
                if stopped:
                    os.close(self._files.pop(uid))

    def _open(self, uid: str) -> int:
        path = self.path(uid)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if os.fstat(fd).st_size == 0:
            _write_frame(fd, {"spool": 1, "catalog": self.catalog, "run": uid})
        self._files[uid] = fd
        self._paths[uid] = path
        return fd

    def pending(self) -> list[tuple[str, Path, int]]:
        """Runs not yet delivered: ``(uid, file, bytes written so far)``, oldest first."""
        with self._lock:
            out = []
            for uid, path in self._paths.items():
                fd = self._files.get(uid)
                size = os.fstat(fd).st_size if fd is not None else path.stat().st_size
                out.append((uid, path, size))
            return out

    def delivered(self, run_uid: str) -> None:
        """The run is stored: forget its file."""
        with self._lock:
            fd = self._files.pop(run_uid, None)
            if fd is not None:  # stored before its stop reached the spool? keep it open
                self._files[run_uid] = fd
                return
            path = self._paths.pop(run_uid, None)
            if path is not None:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            for fd in self._files.values():
                os.fsync(fd)
                os.close(fd)
            self._files.clear()


def _write_frame(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    os.write(fd, _LENGTH.pack(len(data)) + data)  # one write: O_APPEND keeps it whole


class _RunOf:
    """The run uid a document belongs to (documents name their run or their stream)."""

    def __init__(self) -> None:
        self._descriptors: dict[str, str] = {}
        self._resources: dict[str, str] = {}

    def __call__(self, name: str, doc: dict) -> str | None:
        if name == "start":
            return doc["uid"]
        if name in ("descriptor", "stop", "resource", "stream_resource"):
            uid = doc.get("run_start")
            if name == "descriptor":
                self._descriptors[doc["uid"]] = uid
            elif name in ("resource", "stream_resource"):
                self._resources[doc["uid"]] = uid
            return uid
        if name in ("event", "event_page", "stream_datum"):
            return self._descriptors.get(doc["descriptor"])
        if name in ("datum", "datum_page"):
            return self._resources.get(doc["resource"])
        return None


def run_of() -> _RunOf:
    """A router: ``router(name, doc)`` -> the run uid of the document (or None)."""
    return _RunOf()


def read_spool(path: str | Path, upto: int | None = None
               ) -> tuple[dict[str, Any], list[tuple[str, dict]]]:
    """A spool file's header and its documents (the first ``upto`` bytes of it).

    A last frame cut short (its writer was killed while writing it) is left out, with a
    warning: its documents never reached storage either.
    """
    header: dict[str, Any] = {}
    docs: list[tuple[str, dict]] = []
    for i, obj in enumerate(_frames(Path(path), upto)):
        if i == 0:
            header = obj
        else:
            docs.extend(obj)
    return header, docs


def _frames(path: Path, upto: int | None) -> Iterator[Any]:
    data = path.read_bytes()
    if upto is not None:
        data = data[:upto]
    at = 0
    while at < len(data):
        if at + _LENGTH.size > len(data):
            break
        (n,) = _LENGTH.unpack_from(data, at)
        if at + _LENGTH.size + n > len(data):
            break
        yield pickle.loads(data[at + _LENGTH.size:at + _LENGTH.size + n])
        at += _LENGTH.size + n
    if at < len(data):
        logger.warning("%s: the last %d bytes are a frame cut short (its writer was killed "
                       "while writing it); left out", path, len(data) - at)
