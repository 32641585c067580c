"""Read a temsims catalog from a separate process: ``python read_back.py DIR OUT [QUERIES_JSON]``.

Writes ``OUT.json`` (start/stop metadata, column dtypes, the warnings reading each
run's primary stream as xarray raised, query results as lists of uids) and ``OUT.npz`` (every column of every run's primary stream, keyed
``<uid>/<column>``). Used by tests/catalog to check what another process sees.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np

from temsims.catalog import open_catalog


def main(directory: str, out: str, queries_json: str = "{}") -> None:
    queries = json.loads(queries_json)
    cat = open_catalog(directory)
    try:
        report: dict = {"runs": {}, "queries": {}}
        arrays: dict[str, np.ndarray] = {}
        for uid in cat.runs:
            run = cat.runs[uid]
            entry = {"start": run.metadata["start"], "stop": run.metadata.get("stop"),
                     "dtypes": {}, "streams": list(run)}
            if "primary" in run:
                stream = run["primary"]
                for key in stream:
                    value = np.asarray(stream[key].read())
                    arrays[f"{uid}/{key}"] = value
                    entry["dtypes"][key] = value.dtype.str
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    ds = stream.read()  # the xarray view of the same data
                entry["read_warnings"] = [str(w.message) for w in caught]
                entry["xarray_vars"] = sorted(ds.data_vars)
            report["runs"][uid] = entry
        for label, (method, args) in queries.items():
            result = getattr(cat, method)(*args)
            if method == "latest":
                report["queries"][label] = [result.metadata["start"]["uid"]] if result else []
            else:
                report["queries"][label] = list(result)
        with open(out + ".json", "w") as f:
            json.dump(report, f)
        np.savez(out + ".npz", **arrays)
    finally:
        cat.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
