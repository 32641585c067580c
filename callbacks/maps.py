"""The SIMS map data model's former address: it is :mod:`temsims.analysis.maps`.

The plans build the ``map`` block and read their own maps, and plans import nothing
from temsims but protocols, shared constants and analysis (decision 0024), so the model
moved to the analysis layer. This module re-exports it, one definition, for the
callbacks, benchmarks and notebooks that import it from here.
"""

from temsims.analysis.maps import (
    MAP_KEYS,
    IncompleteMapError,
    LineAssembler,
    MapLayout,
    SimsMapAccumulator,
    assemble,
    map_block,
)

__all__ = [
    "IncompleteMapError",
    "LineAssembler",
    "MAP_KEYS",
    "MapLayout",
    "SimsMapAccumulator",
    "assemble",
    "map_block",
]
