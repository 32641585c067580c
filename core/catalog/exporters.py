"""Server-side exporters the temsims catalog servers register with tiled.

- ``BlueskyEventStream`` as one ``.npz`` (:data:`STREAM_NPZ`): a stream's arrays and
  its event table's columns in one response, so a reader asks once per stream rather
  than once per column (each request costs a tiled server ~30-50 ms of path look-ups
  and authentication on a 2-core machine, whatever its size;
  ``docs/decisions/0021-open-and-read-fast.md``).

Runs in the server process: only numpy and tiled's adapters here.
"""

from __future__ import annotations

import asyncio
import io
import json

#: The media type of a whole event stream as one uncompressed numpy ``.npz``.
STREAM_NPZ = "application/x-temsims-stream+npz"
#: The ``.npz`` member holding the stream's metadata (its data keys), as UTF-8 JSON.
METADATA_MEMBER = "__metadata__"
#: Prefix of the event-table columns' members (``internal/time``, ``internal/seq_num``).
TABLE_PREFIX = "internal/"


async def stream_npz_exporter(mimetype, adapter, metadata, filter_for_access):
    """One event stream (a ``BlueskyEventStream`` node as bluesky-tiled-plugins'
    TiledWriter stores it) as an ``.npz``: one member per array child, one per column
    of its ``internal`` table (``internal/<column>``) and :data:`METADATA_MEMBER`.

    ``GET /container/full/<run>/<stream>?field=a&field=internal`` exports only those
    children. Columns numpy cannot store without pickling (objects of mixed kinds)
    are left out and named in the metadata's ``temsims_skipped``.
    """
    import numpy as np

    if not any(spec.name == "BlueskyEventStream" for spec in adapter.specs):
        raise ValueError("this exporter exports BlueskyEventStream nodes only")
    adapter = await filter_for_access(adapter)
    members: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    # The children in one query (a look-up per child costs ~8 SQL statements), read
    # concurrently (each read waits on the database for its data sources first).
    children = await adapter.items_range(offset=0, limit=None)
    read = await asyncio.gather(*(node.read() for _, node in children))
    for (name, _), data in zip(children, read, strict=True):
        if hasattr(data, "columns"):  # the event table (a pandas DataFrame)
            for column in data.columns:
                values = data[column].to_numpy()
                if values.dtype == object:
                    try:
                        values = np.asarray(values.tolist())
                    except ValueError:
                        values = values.astype(object)
                if values.dtype == object:
                    skipped.append(f"{name}/{column}")
                    continue
                members[f"{name}/{column}"] = values
        else:
            values = np.asarray(data)
            if values.dtype == object:
                skipped.append(name)
                continue
            members[name] = values
    described = dict(metadata or {})
    described["temsims_skipped"] = skipped
    members[METADATA_MEMBER] = np.frombuffer(
        json.dumps(described, default=str).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **members)
    return buffer.getvalue()


def read_stream_npz(content: bytes) -> tuple[dict, dict]:
    """The ``(metadata, members)`` of :func:`stream_npz_exporter`'s response."""
    import numpy as np

    with np.load(io.BytesIO(content), allow_pickle=False) as archive:
        members = {name: archive[name] for name in archive.files}
    metadata = json.loads(members.pop(METADATA_MEMBER).tobytes().decode())
    return metadata, members
