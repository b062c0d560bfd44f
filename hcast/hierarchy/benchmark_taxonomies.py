"""The class trees of the benchmarks H-CAST was trained and evaluated on, in the authors' label orders.

H-CAST's released heads (Park et al., ICLR 2025; github.com/ngocquanai/HiOT @ b1a222b)
number the classes of every level in the authors' own order, which is neither
alphabetical nor the dataset's folder order for most benchmarks. These taxonomies carry
those orders, so that class id ``i`` of a level here is output ``i`` of that level's head:

==========================  ===================  ===============================================
name                        classes per level    levels (finest first)
==========================  ===================  ===============================================
``breeds-living17``         34 / 17              ImageNet subclass / BREEDS superclass
``breeds-nonliving26``      52 / 26              ImageNet subclass / BREEDS superclass
``breeds-entity13``         130 / 13             ImageNet subclass / BREEDS superclass
``breeds-entity30``         120 / 30             ImageNet subclass / BREEDS superclass
``cub200``                  200 / 38 / 13        species / family / order
``fgvc-aircraft``           100 / 70 / 30        variant / family / manufacturer
``inat21-mini``             10000 / 1103 / 273   species / family / order
==========================  ===================  ===============================================

The data ship with hcast as small JSON files in ``hcast/hierarchy/benchmarks/`` (a few KB
each, iNat21's gzipped), each naming its source in a ``"source"`` field;
``scripts/make_benchmark_taxonomies.py`` writes them from the authors' repository. For
BREEDS the fine classes' WordNet ids come with them (:func:`benchmark_metadata`).
FGVC-Aircraft's family and manufacturer names and iNat21's names are not in the authors'
files: those levels carry ``None`` names here and the dataset loaders
(:mod:`hcast.data.aircraft`, :mod:`hcast.data.inat`) fill them from the dataset's own files.
"""
from __future__ import annotations

import copy
import functools
import gzip
import json
from importlib import resources
from typing import Any, Dict, Tuple

from hcast.hierarchy.taxonomy import Taxonomy

__all__ = ["BENCHMARK_TAXONOMIES", "benchmark_metadata", "benchmark_taxonomy", "canonical_benchmark_name"]

_FILES = {
    "breeds-living17": "breeds_living17.json",
    "breeds-nonliving26": "breeds_nonliving26.json",
    "breeds-entity13": "breeds_entity13.json",
    "breeds-entity30": "breeds_entity30.json",
    "cub200": "cub200.json",
    "fgvc-aircraft": "fgvc_aircraft.json",
    "inat21-mini": "inat21_mini.json.gz",
}

#: Names :func:`benchmark_taxonomy` accepts (aliases such as ``"living17"``, ``"cub"`` or
#: ``"aircraft"`` work too).
BENCHMARK_TAXONOMIES: Tuple[str, ...] = tuple(_FILES)

_ALIASES = {
    "living17": "breeds-living17", "nonliving26": "breeds-nonliving26", "entity13": "breeds-entity13",
    "entity30": "breeds-entity30", "cub": "cub200", "cub-200": "cub200", "cub-200-2011": "cub200",
    "cub200-2011": "cub200", "aircraft": "fgvc-aircraft", "fgvc-aircraft-2013b": "fgvc-aircraft",
    "inat21": "inat21-mini", "inat21-mini": "inat21-mini", "inat2021-mini": "inat21-mini",
}


def canonical_benchmark_name(name: str) -> str:
    """``name`` as one of :data:`BENCHMARK_TAXONOMIES` (case, ``_`` and aliases folded).

    Raises:
        ValueError: for a name that is no benchmark hcast knows; the message lists them.
    """
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _FILES:
        raise ValueError(f"benchmark: expected one of {', '.join(BENCHMARK_TAXONOMIES)}, got {name!r}.")
    return key


@functools.lru_cache(maxsize=None)
def _load(name: str) -> Dict[str, Any]:
    path = resources.files("hcast.hierarchy") / "benchmarks" / _FILES[name]
    data = path.read_bytes()
    if _FILES[name].endswith(".gz"):
        data = gzip.decompress(data)
    return json.loads(data)


def benchmark_metadata(name: str) -> Dict[str, Any]:
    """The whole metadata file of a benchmark (a fresh copy).

    Keys: ``"source"`` (where the facts come from), ``"benchmark"``, ``"taxonomy"``
    (:meth:`Taxonomy.to_dict` form), optional ``"notes"``; BREEDS files add ``"wnids"``
    (WordNet id of each fine class, in label order) and ``"imagenet_index"`` (its
    ImageNet-1k class index).

    Raises:
        ValueError: for an unknown benchmark name.
    """
    return copy.deepcopy(_load(canonical_benchmark_name(name)))


def benchmark_taxonomy(name: str) -> Taxonomy:
    """The taxonomy of benchmark ``name`` with class ids in the H-CAST authors' label order.

    Args:
        name: one of :data:`BENCHMARK_TAXONOMIES` (or an alias, e.g. ``"living17"``).

    Returns:
        a :class:`Taxonomy`, levels finest first, with level names and, where the
        authors' files give them, class names (see the module docstring).

    Raises:
        ValueError: for an unknown benchmark name.

    Example:
        >>> tax = benchmark_taxonomy("breeds-living17")
        >>> tax.num_classes, tax.names[0][0], tax.names[1][tax.parent(0)]
        ((34, 17), 'eft', 'salamander')
    """
    return Taxonomy.from_dict(_load(canonical_benchmark_name(name))["taxonomy"])
