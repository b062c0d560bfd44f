"""The class tree of a hierarchical classifier: :class:`Taxonomy`.

A taxonomy has ``num_levels`` levels ordered **finest first** (level 0 holds the
fine classes a dataset labels its images with, the last level the coarsest
groups). Every class at level ``l < num_levels - 1`` has exactly one parent at
level ``l + 1``; class ids at each level are ``0 .. num_classes[l] - 1`` with no
gaps, as the per-level heads of H-CAST (Park et al., ICLR 2025) and Hier-ViT
expect. The root above the coarsest level is implicit.

Construction:

* ``Taxonomy(parents)``: parent arrays, ``parents[l][c]`` = parent (at level
  ``l + 1``) of class ``c`` at level ``l``.
* :meth:`Taxonomy.from_paths`: one ``[fine, mid, ..., coarse]`` id path per fine
  class, as the H-CAST code keeps its ``trees`` lists per dataset.
* :meth:`Taxonomy.from_named_paths`: the same with class *names* (the form
  datasets' metadata gives).
* :meth:`Taxonomy.from_nested`: a nested mapping ``{coarse: {mid: [fine, ...]}}``.
* :meth:`Taxonomy.from_edges`: ``(child, parent)`` name pairs of any tree.
* :meth:`Taxonomy.from_dict` / :meth:`Taxonomy.from_json` / :meth:`Taxonomy.load`:
  the stable JSON schema written by :meth:`Taxonomy.to_dict`, which a model's hub
  ``config.json`` carries.

Dataset-specific builders (FGVC-Aircraft, iNaturalist 2021, WordNet,
Fashion-MNIST) live in :mod:`hcast.hierarchy.taxonomies`.
"""
from __future__ import annotations

import json
import operator
import os
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, Iterable, Optional, Union

import torch

__all__ = ["Taxonomy", "TAXONOMY_SCHEMA_VERSION"]

#: Version of the dictionary/JSON schema written by :meth:`Taxonomy.to_dict`.
TAXONOMY_SCHEMA_VERSION = 1
_SCHEMA_NAME = "hcast.taxonomy"

Names = Optional[Sequence[Optional[Sequence[str]]]]


def _as_int(value: Any, what: str) -> int:
    # Accept Python/NumPy/torch integers; reject bools and floats (3.0 is not a class id).
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"{what} must be an integer class id, got {value!r} ({type(value).__name__}).")
    try:
        return operator.index(value)
    except TypeError as e:
        raise ValueError(f"{what} must be an integer class id, got {value!r} ({type(value).__name__}).") from e


def _parse_json(text: Union[str, bytes], what: str) -> Any:
    """``json.loads(text)`` with a ValueError naming ``what`` for empty, truncated or too deeply nested JSON."""
    if not text.strip():
        raise ValueError(f"{what} is empty; expected the JSON written by Taxonomy.save / Taxonomy.to_json.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); it may be truncated or "
            f"not a taxonomy file. Re-create it with Taxonomy.save(path)."
        ) from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} is not UTF-8 JSON ({e.reason}); expected the JSON written by Taxonomy.to_json.") from None
    except RecursionError:
        raise ValueError(
            f"{what} nests JSON too deeply to be a taxonomy (a taxonomy file is at most a few levels deep); "
            f"it is not a file written by Taxonomy.save."
        ) from None


# Bidirectional embeddings, overrides and isolates: they reorder how a name is displayed
# ("Trojan Source"); zero-width joiners and marks that scripts need are allowed.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _check_name(name: str, where: str) -> None:
    """A class or level name must be printable text: not empty or blank, no control
    characters (NUL, newlines, tabs, escapes: Unicode category Cc) and no bidirectional
    overrides, which would make predictions, logs and saved files print something else.

    Raises:
        ValueError: naming the entry and the offending character.
    """
    if not name.strip():
        raise ValueError(f"{where} is {name!r}: a class or level name must not be empty or blank; give it a name.")
    for i, ch in enumerate(name):
        if unicodedata.category(ch) == "Cc" or ch in _BIDI_CONTROLS:
            raise ValueError(
                f"{where} is {name!r}: it holds the control character U+{ord(ch):04X} "
                f"({unicodedata.name(ch, 'control')}) at position {i}; names must be printable text. Remove it.")


def _level_label(level: int, level_names: Optional[Sequence[str]]) -> str:
    if level_names is not None and level < len(level_names) and level_names[level] != f"level{level}":
        return f"level {level} ({level_names[level]!r})"
    return f"level {level}"


class Taxonomy:
    """A class tree with levels ordered finest first.

    Args:
        parents: ``num_levels - 1`` integer sequences; ``parents[l][c]`` is the id,
            at level ``l + 1``, of the parent of class ``c`` at level ``l``. So
            ``len(parents[0])`` is the number of fine classes, and the number of
            classes at level ``l + 1`` is ``len(parents[l + 1])`` (or, for the
            coarsest level, ``max(parents[-1]) + 1``). Empty for a one-level
            taxonomy, which then needs ``num_classes`` or ``names``.
        names: optional class names, one entry per level (finest first), each
            either ``None`` or a sequence of ``num_classes[l]`` strings.
        level_names: optional level names, finest first (e.g.
            ``("species", "family", "order")``). Defaults to ``("level0", ...)``.
        num_classes: optional class counts per level, finest first. When given,
            they are checked against ``parents`` (ids out of range raise); they
            are required only for one-level taxonomies without names.

    Raises:
        ValueError: a parent id outside ``[0, num_classes[l+1])``, negative ids,
            a class of a coarser level with no child (a gap in the ids), names or
            level names whose counts do not match, inconsistent ``num_classes``, or
            two classes of a level with one name and one parent (homonyms under
            different parents are allowed). The message names the offending level
            and class.
        TypeError: ``parents`` or ``names`` (or one level of them) of the wrong type.

    Example:
        >>> tax = Taxonomy([[0, 0, 1, 1, 1], [0, 0]])   # 5 fine, 2 mid, 1 coarse
        >>> tax.num_classes
        (5, 2, 1)
        >>> tax.ancestors(3)
        (3, 1, 0)
        >>> tax.lca_height(0, 1), tax.lca_height(0, 3)
        (1, 2)
    """

    def __init__(
        self,
        parents: Sequence[Sequence[int]],
        names: Names = None,
        level_names: Optional[Sequence[str]] = None,
        num_classes: Optional[Sequence[int]] = None,
    ) -> None:
        if isinstance(parents, (str, bytes)) or not isinstance(parents, Iterable):
            raise TypeError(
                f"parents must be a sequence of per-level integer sequences, got {type(parents).__name__}."
            )
        parent_lists: list[tuple[int, ...]] = []
        for l, level_parents in enumerate(parents):
            if torch.is_tensor(level_parents):
                level_parents = level_parents.tolist()
            if isinstance(level_parents, (str, bytes)) or not isinstance(level_parents, Iterable):
                raise TypeError(
                    f"parents[{l}] must be a sequence of integer parent ids, got {type(level_parents).__name__}."
                )
            parent_lists.append(
                tuple(_as_int(p, f"parents[{l}][{c}]") for c, p in enumerate(level_parents))
            )
        num_levels = len(parent_lists) + 1
        if level_names is not None:
            if isinstance(level_names, str):
                raise TypeError("level_names must be a sequence of strings, one per level, not one string.")
            level_names = tuple(str(n) for n in level_names)
            for l, n in enumerate(level_names):
                _check_name(n, f"level_names[{l}]")
            if len(level_names) != num_levels:
                raise ValueError(
                    f"level_names has {len(level_names)} entries but the taxonomy has {num_levels} levels "
                    f"({len(parent_lists)} parent arrays); give one name per level, finest first."
                )
        # Messages name levels by number, plus the user's level name when there is one.
        msg_names = level_names
        if level_names is None:
            level_names = tuple(f"level{l}" for l in range(num_levels))
        if names is not None and (isinstance(names, (str, bytes)) or not isinstance(names, Sequence)):
            raise TypeError(
                f"names must be a list with one entry per level, finest first (a list of class names or None), "
                f"got {type(names).__name__}."
            )
        if names is not None and len(names) != num_levels:
            raise ValueError(
                f"names has {len(names)} entries but the taxonomy has {num_levels} levels; give one "
                f"entry (a list of class names or None) per level, finest first."
            )

        counts = self._derive_counts(parent_lists, names, num_classes, msg_names)
        for l, level_parents in enumerate(parent_lists):
            self._check_parents(l, level_parents, counts, msg_names)

        self._parents = tuple(parent_lists)
        self._num_classes = tuple(counts)
        self._level_names = level_names
        self._names = self._check_names(names, counts, msg_names, parent_lists)
        self._paths_cache: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _derive_counts(
        parent_lists: list[tuple[int, ...]],
        names: Names,
        num_classes: Optional[Sequence[int]],
        level_names: Sequence[str],
    ) -> list[int]:
        num_levels = len(parent_lists) + 1
        if num_classes is not None:
            counts = [_as_int(n, f"num_classes[{l}]") for l, n in enumerate(num_classes)]
            if len(counts) != num_levels:
                raise ValueError(
                    f"num_classes has {len(counts)} entries but parents describe {num_levels} levels."
                )
        else:
            counts = []
            for l in range(num_levels):
                if l < len(parent_lists):
                    counts.append(len(parent_lists[l]))
                elif parent_lists:
                    counts.append(max(parent_lists[-1], default=-1) + 1)
                elif names is not None and names[0] is not None:
                    counts.append(len(names[0]))
                else:
                    raise ValueError(
                        "a one-level taxonomy (parents=[]) needs num_classes=(n,) or names=[[...]] to know "
                        "its number of classes."
                    )
        for l, n in enumerate(counts):
            if n < 1:
                raise ValueError(f"{_level_label(l, level_names)} has {n} classes; every level needs at least one.")
            if l < len(parent_lists) and len(parent_lists[l]) != n:
                raise ValueError(
                    f"{_level_label(l, level_names)} has {n} classes but parents[{l}] gives a parent for "
                    f"{len(parent_lists[l])} classes; give exactly one parent per class."
                )
        return counts

    @staticmethod
    def _check_parents(
        l: int, level_parents: tuple[int, ...], counts: Sequence[int], level_names: Sequence[str]
    ) -> None:
        n_up = counts[l + 1]
        has_child = [False] * n_up
        for c, p in enumerate(level_parents):
            if not 0 <= p < n_up:
                raise ValueError(
                    f"class {c} at {_level_label(l, level_names)} has parent id {p}, outside "
                    f"[0, {n_up}) at {_level_label(l + 1, level_names)}; parent ids must be 0-based and "
                    f"below the class count of the next level."
                )
            has_child[p] = True
        missing = [k for k, seen in enumerate(has_child) if not seen]
        if missing:
            raise ValueError(
                f"class {missing[0]} at {_level_label(l + 1, level_names)} has no child at "
                f"{_level_label(l, level_names)} (a gap in the class ids"
                + (f"; also {missing[1:6]}" if len(missing) > 1 else "")
                + "); ids at every level must be 0..n-1 with every class used."
            )

    @staticmethod
    def _check_names(
        names: Names,
        counts: Sequence[int],
        level_names: Sequence[str],
        parent_lists: Sequence[Sequence[int]] = (),
    ) -> tuple[Optional[tuple[str, ...]], ...]:
        if names is None:
            return tuple(None for _ in counts)
        out = []
        for l, level in enumerate(names):
            if level is None:
                out.append(None)
                continue
            if isinstance(level, (str, bytes)):
                raise TypeError(f"names[{l}] must be a sequence of class names, got a single string.")
            if not isinstance(level, Iterable):
                raise TypeError(
                    f"names[{l}] must be a list of class names for {_level_label(l, level_names)} (or None), got "
                    f"{level!r} ({type(level).__name__}); give one list of names per level, finest first."
                )
            level = tuple(str(n) for n in level)
            for c, n in enumerate(level):
                _check_name(n, f"names[{l}][{c}] (class {c} at {_level_label(l, level_names)})")
            if len(level) != counts[l]:
                raise ValueError(
                    f"names[{l}] has {len(level)} names but {_level_label(l, level_names)} has "
                    f"{counts[l]} classes; give one name per class id (or None for the level)."
                )
            # A class is known by its name and its lineage: two classes of one level may share a name only
            # under different parents (iNat's genus Pica of birds and of plants); siblings with one name, or
            # two coarsest classes with one name, could not be told apart.
            parents = parent_lists[l] if l < len(parent_lists) else (0,) * len(level)
            seen: dict[tuple[str, int], int] = {}
            dups = []
            for c, (n, p) in enumerate(zip(level, parents)):
                if (n, p) in seen:
                    dups.append(f"{n!r} (classes {seen[n, p]} and {c})")
                seen.setdefault((n, p), c)
            if dups:
                under = "under one parent" if l < len(parent_lists) else "at the coarsest level"
                raise ValueError(
                    f"names[{l}] repeats class names {under} at {_level_label(l, level_names)}: "
                    f"{', '.join(dups[:5])}{' ...' if len(dups) > 5 else ''}; give every class a distinct name "
                    f"(names identify classes in predictions, class_index and saved files)."
                )
            out.append(level)
        return tuple(out)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_paths(
        cls,
        paths: Sequence[Sequence[int]],
        names: Names = None,
        level_names: Optional[Sequence[str]] = None,
        index_base: int = 0,
    ) -> "Taxonomy":
        """Build from one leaf-to-root id path per fine class.

        Args:
            paths: ``[[fine, mid, ..., coarse], ...]``, one path per fine class
                (finest first), as in the ``trees`` lists of the H-CAST code. The fine
                ids must be exactly ``index_base .. index_base + n - 1`` (any order).
            names, level_names: as in :class:`Taxonomy`.
            index_base: the id of the first class; ``1`` for the 1-based ``trees``
                lists of H-CAST's FGVC-Aircraft and CUB code (which subtract 1 when
                reading them).

        Raises:
            ValueError: paths of unequal depth, a fine class listed twice, a class
                with two different parents, ids below ``index_base`` or gaps.
        """
        if torch.is_tensor(paths):
            paths = paths.tolist()
        rows = [list(p.tolist() if torch.is_tensor(p) else p) for p in paths]
        if not rows:
            raise ValueError("paths is empty; give one [fine, ..., coarse] path per fine class.")
        depth = len(rows[0])
        if depth < 1:
            raise ValueError("paths[0] is empty; every path needs at least the fine class id.")
        for i, row in enumerate(rows):
            if len(row) != depth:
                raise ValueError(
                    f"paths[{i}] (fine class {row[0] if row else '?'}) has {len(row)} levels but paths[0] has "
                    f"{depth}; all paths must have the same depth (finest first, down to the coarsest level)."
                )
        parsed = [[_as_int(v, f"paths[{i}][{l}]") - index_base for l, v in enumerate(row)] for i, row in enumerate(rows)]
        for i, row in enumerate(parsed):
            for l, v in enumerate(row):
                if v < 0:
                    raise ValueError(
                        f"paths[{i}][{l}] is {v + index_base}, below index_base={index_base}; pass "
                        f"index_base=1 for 1-based trees, 0 for 0-based ones."
                    )
        n_fine = len(parsed)
        fine_ids = sorted(row[0] for row in parsed)
        seen: dict[int, int] = {}
        for i, row in enumerate(parsed):
            if row[0] in seen:
                raise ValueError(
                    f"fine class {row[0] + index_base} appears in paths[{seen[row[0]]}] and paths[{i}]; a fine "
                    f"class has exactly one path (a child cannot have two parents)."
                )
            seen[row[0]] = i
        if fine_ids != list(range(n_fine)):
            missing = sorted(set(range(n_fine)) - set(fine_ids))
            raise ValueError(
                f"fine class ids must be {index_base}..{index_base + n_fine - 1} without gaps; fine class "
                f"{missing[0] + index_base} is missing."
            )
        parents: list[list[int]] = []
        for l in range(depth - 1):
            mapping: dict[int, int] = {}
            for row in parsed:
                child, parent = row[l], row[l + 1]
                if mapping.setdefault(child, parent) != parent:
                    raise ValueError(
                        f"class {child + index_base} at {_level_label(l, level_names)} has two parents, "
                        f"{mapping[child] + index_base} and {parent + index_base}, at "
                        f"{_level_label(l + 1, level_names)}; every class needs exactly one parent."
                    )
            n_level = max(mapping) + 1
            missing = [c for c in range(n_level) if c not in mapping]
            if missing:
                raise ValueError(
                    f"class {missing[0] + index_base} at {_level_label(l, level_names)} does not appear in any "
                    f"path (a gap in the class ids); ids at every level must be consecutive."
                )
            parents.append([mapping[c] for c in range(n_level)])
        num_classes = None
        if depth == 1:
            num_classes = (n_fine,)
        return cls(parents, names=names, level_names=level_names, num_classes=num_classes)

    @classmethod
    def from_named_paths(
        cls,
        paths: Iterable[Sequence[str]],
        level_names: Optional[Sequence[str]] = None,
        orders: Optional[Sequence[Optional[Sequence[str]]]] = None,
    ) -> "Taxonomy":
        """Build from leaf-to-root paths of class *names*, e.g. per-image label tuples.

        Repeated paths are fine (each distinct fine name is kept once), so the
        per-image ``(variant, family, manufacturer)`` tuples of a dataset can be
        passed as they are.

        Args:
            paths: iterable of ``(fine_name, ..., coarse_name)`` tuples, finest first.
            level_names: as in :class:`Taxonomy`.
            orders: optional per level (finest first) the class names in id order
                (``None`` for a level: ids in order of first appearance). Use it to
                keep a dataset's own label ids, e.g. the order of FGVC-Aircraft's
                ``variants.txt``.

        Raises:
            ValueError: unequal depths, a name with two different parents, a name
                not listed in ``orders`` or a listed name that never occurs.
        """
        rows = [tuple(str(n) for n in p) for p in paths]
        if not rows:
            raise ValueError("paths is empty; give at least one (fine, ..., coarse) name path.")
        depth = len(rows[0])
        for i, row in enumerate(rows):
            if len(row) != depth:
                raise ValueError(
                    f"path {i} ({row[0] if row else '?'!r}) has {len(row)} levels but path 0 has {depth}; "
                    f"all paths must have the same depth."
                )
        if orders is not None and len(orders) != depth:
            raise ValueError(f"orders has {len(orders)} entries but the paths have {depth} levels.")
        level_ids: list[dict[str, int]] = []
        for l in range(depth):
            order = orders[l] if orders is not None else None
            if order is not None:
                ids = {}
                for k, name in enumerate(order):
                    if name in ids:
                        raise ValueError(f"orders[{l}] lists class {name!r} twice.")
                    ids[name] = k
                used = {row[l] for row in rows}
                for name in used:
                    if name not in ids:
                        raise ValueError(
                            f"class {name!r} at {_level_label(l, level_names)} is not in orders[{l}]; list "
                            f"every class name of the level there."
                        )
                for name in order:
                    if name not in used:
                        raise ValueError(
                            f"class {name!r} listed in orders[{l}] never occurs in paths (it would leave a "
                            f"gap in the class ids at {_level_label(l, level_names)})."
                        )
            else:
                ids = {}
                for row in rows:
                    ids.setdefault(row[l], len(ids))
            level_ids.append(ids)
        parents: list[list[int]] = []
        for l in range(depth - 1):
            mapping: dict[str, str] = {}
            for row in rows:
                if mapping.setdefault(row[l], row[l + 1]) != row[l + 1]:
                    raise ValueError(
                        f"class {row[l]!r} at {_level_label(l, level_names)} has two parents, "
                        f"{mapping[row[l]]!r} and {row[l + 1]!r}; every class needs exactly one parent."
                    )
            inv = {k: name for name, k in level_ids[l].items()}
            parents.append([level_ids[l + 1][mapping[inv[k]]] for k in range(len(inv))])
        names = [sorted(ids, key=ids.__getitem__) for ids in level_ids]
        return cls(parents, names=names, level_names=level_names, num_classes=[len(i) for i in level_ids])

    @classmethod
    def from_nested(
        cls,
        tree: Mapping[str, Any],
        level_names: Optional[Sequence[str]] = None,
        fine_order: Optional[Sequence[str]] = None,
    ) -> "Taxonomy":
        """Build from a nested mapping, coarsest level outermost.

        ``{"Tops": ["T-shirt", "Shirt"], "Footwear": ["Sneaker"]}`` gives two levels;
        ``{"Animal": {"Dog": ["beagle", "pug"], "Cat": ["siamese"]}}`` three. The
        innermost values are lists (or tuples/sets) of fine class names; every leaf
        must sit at the same depth. Class ids follow the mapping's order (depth
        first), except fine ids, which follow ``fine_order`` when given.

        Args:
            tree: ``{coarse_name: {mid_name: [fine_name, ...]}}`` (any depth >= 1).
            level_names: level names, finest first.
            fine_order: optional fine class names in id order (e.g. a dataset's
                label order).

        Raises:
            ValueError: an empty tree, leaves at unequal depths, a name that appears
                under two parents at the same level, or an empty group.
        """
        if not isinstance(tree, Mapping):
            raise TypeError(f"tree must be a mapping {{coarse: {{...: [fine, ...]}}}}, got {type(tree).__name__}.")
        if not tree:
            raise ValueError(
                "tree is empty; give at least one coarse group, e.g. {\"Tops\": [\"T-shirt\", \"Shirt\"]}."
            )
        named_paths: list[tuple[str, ...]] = []

        def walk(node: Any, trail: tuple[str, ...]) -> None:
            if isinstance(node, Mapping):
                if not node:
                    raise ValueError(f"group {trail[-1]!r} is empty; every group needs at least one child.")
                for key, child in node.items():
                    walk(child, trail + (str(key),))
            elif isinstance(node, (list, tuple, set, frozenset)):
                if not node:
                    raise ValueError(f"group {trail[-1]!r} is empty; every group needs at least one child.")
                for leaf in node:
                    if isinstance(leaf, (Mapping, list, tuple, set)):
                        raise ValueError(
                            f"group {trail[-1]!r} mixes lists and nested groups; leaves must all sit at "
                            f"the same depth."
                        )
                    named_paths.append((str(leaf),) + tuple(reversed(trail)))
            else:
                raise ValueError(
                    f"the value under {trail[-1]!r} is {node!r}; expected a mapping of subgroups or a list of "
                    f"fine class names."
                )

        walk(tree, ())
        depth = len(named_paths[0])
        for p in named_paths:
            if len(p) != depth:
                raise ValueError(
                    f"fine class {p[0]!r} (under {' / '.join(reversed(p[1:]))}) sits at depth {len(p)} but "
                    f"{named_paths[0][0]!r} at depth {depth}; all leaves must be at the same depth."
                )
        seen: dict[tuple[int, str], str] = {}
        for p in named_paths:
            for l in range(depth - 1):
                key = (l, p[l])
                if seen.setdefault(key, p[l + 1]) != p[l + 1]:
                    raise ValueError(
                        f"class {p[l]!r} at {_level_label(l, level_names)} appears under two parents, "
                        f"{seen[key]!r} and {p[l + 1]!r}; every class needs exactly one parent."
                    )
        fine_seen: set[str] = set()
        for p in named_paths:
            if p[0] in fine_seen and depth == 1:
                raise ValueError(f"fine class {p[0]!r} is listed twice.")
            fine_seen.add(p[0])
        orders = None
        if fine_order is not None:
            orders = [list(fine_order)] + [None] * (depth - 1)
        return cls.from_named_paths(named_paths, level_names=level_names, orders=orders)

    @classmethod
    def from_edges(
        cls,
        edges: Iterable[tuple[str, str]],
        level_names: Optional[Sequence[str]] = None,
        fine_order: Optional[Sequence[str]] = None,
    ) -> "Taxonomy":
        """Build from ``(child, parent)`` name pairs of a tree.

        Nodes without a parent form the coarsest level; nodes without children
        are the fine classes and must all be equally far from the top.

        Raises:
            ValueError: a cycle (naming a class on it), a child with two different
                parents, or leaves at unequal depths.
        """
        parent_of: dict[str, str] = {}
        nodes: dict[str, None] = {}
        for i, edge in enumerate(edges):
            if len(edge) != 2:
                raise ValueError(f"edges[{i}] is {edge!r}; expected a (child, parent) pair.")
            child, parent = str(edge[0]), str(edge[1])
            if child == parent:
                raise ValueError(f"class {child!r} is its own parent (a cycle).")
            if parent_of.setdefault(child, parent) != parent:
                raise ValueError(
                    f"class {child!r} has two parents, {parent_of[child]!r} and {parent!r}; every class "
                    f"needs exactly one parent."
                )
            nodes.setdefault(child)
            nodes.setdefault(parent)
        if not nodes:
            raise ValueError("edges is empty; give (child, parent) pairs.")
        chains: dict[str, tuple[str, ...]] = {}
        for node in nodes:
            chain = [node]
            on_chain = {node}
            while chain[-1] in parent_of:
                up = parent_of[chain[-1]]
                if up in on_chain:
                    raise ValueError(f"class {up!r} is its own ancestor (a cycle through {chain[-1]!r}).")
                chain.append(up)
                on_chain.add(up)
            chains[node] = tuple(chain)
        has_child = set(parent_of.values())
        leaves = [n for n in nodes if n not in has_child]
        named_paths = [chains[leaf] for leaf in leaves]
        depth = len(named_paths[0])
        for p in named_paths:
            if len(p) != depth:
                raise ValueError(
                    f"fine class {p[0]!r} has {len(p)} levels up to its root but {named_paths[0][0]!r} has "
                    f"{depth}; all leaves must be at the same depth."
                )
        orders = None
        if fine_order is not None:
            orders = [list(fine_order)] + [None] * (depth - 1)
        return cls.from_named_paths(named_paths, level_names=level_names, orders=orders)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The taxonomy as a JSON-serialisable dict (stable schema, version 1).

        Keys: ``"format"`` (``"hcast.taxonomy"``), ``"version"`` (``1``),
        ``"level_names"``, ``"num_classes"`` (finest first), ``"parents"`` (as in the
        constructor) and ``"names"`` (per level a list of names or ``None``).
        """
        return {
            "format": _SCHEMA_NAME,
            "version": TAXONOMY_SCHEMA_VERSION,
            "level_names": list(self._level_names),
            "num_classes": list(self._num_classes),
            "parents": [list(p) for p in self._parents],
            "names": [list(n) if n is not None else None for n in self._names],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Taxonomy":
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` for unknown formats or versions."""
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a mapping as written by Taxonomy.to_dict(), got {type(data).__name__}.")
        fmt = data.get("format", _SCHEMA_NAME)
        if fmt != _SCHEMA_NAME:
            raise ValueError(f"data['format'] is {fmt!r}, expected {_SCHEMA_NAME!r}.")
        if "parents" not in data or "version" not in data:
            missing = "parents" if "parents" not in data else "version"
            raise ValueError(f"data has no {missing!r} key; expected the dict written by Taxonomy.to_dict().")
        version = data["version"]
        if version != TAXONOMY_SCHEMA_VERSION:
            newer = isinstance(version, int) and not isinstance(version, bool) and version > TAXONOMY_SCHEMA_VERSION
            raise ValueError(
                f"data['version'] is {version!r}; this hcast reads taxonomy schema version "
                f"{TAXONOMY_SCHEMA_VERSION}." + (" Upgrade hcast to read newer files." if newer else "")
            )
        return cls(
            data["parents"],
            names=data.get("names"),
            level_names=data.get("level_names"),
            num_classes=data.get("num_classes"),
        )

    def to_json(self, indent: Optional[int] = None) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: Union[str, bytes]) -> "Taxonomy":
        """Inverse of :meth:`to_json` (a JSON string, not a path: use :meth:`load` for files).

        Raises:
            ValueError: ``text`` is not JSON (or nests too deeply), or does not hold a taxonomy.
        """
        return cls.from_dict(_parse_json(text, "text"))

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write :meth:`to_json` (indented) to ``path``, atomically
        (:func:`hcast.weights.atomic_write`: never a torn file; symlinks followed, special
        files written through)."""
        from hcast._io import atomic_write

        with atomic_write(path, description="taxonomy file") as tmp:
            tmp.write_text(self.to_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Taxonomy":
        """Read a file written by :meth:`save`; a ``config.json`` with a ``"taxonomy"`` key works too.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: naming the file, when it is empty, not UTF-8, not JSON
                (e.g. truncated), nested too deeply, or does not hold a valid taxonomy.
        """
        with open(path, "rb") as f:
            raw = f.read()
        what = f"taxonomy file {os.fspath(path)!r}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{what} is not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); a taxonomy file is the "
                f"JSON written by Taxonomy.save(path). Re-create it, or point to the right file."
            ) from None
        data = _parse_json(text, what)
        if isinstance(data, Mapping) and "parents" not in data and "taxonomy" in data:
            data = data["taxonomy"]
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{what} does not hold a valid taxonomy: {e} Re-create it with Taxonomy.save(path)."
            ) from e

    # ------------------------------------------------------------------ properties
    @property
    def num_levels(self) -> int:
        """Number of levels (fine classes count as one level)."""
        return len(self._num_classes)

    @property
    def num_classes(self) -> tuple[int, ...]:
        """Class count per level, finest first (the ``level_classes`` of H-CAST models)."""
        return self._num_classes

    @property
    def num_fine(self) -> int:
        """Number of fine (level 0) classes."""
        return self._num_classes[0]

    @property
    def parents(self) -> tuple[tuple[int, ...], ...]:
        """Parent arrays as given to the constructor."""
        return self._parents

    @property
    def names(self) -> tuple[Optional[tuple[str, ...]], ...]:
        """Per level (finest first) a tuple of class names, or ``None``."""
        return self._names

    @property
    def level_names(self) -> tuple[str, ...]:
        """Level names, finest first."""
        return self._level_names

    # ------------------------------------------------------------------ queries
    def _check_level(self, level: int, arg: str = "level") -> int:
        level = _as_int(level, arg)
        if level < 0:
            level += self.num_levels
        if not 0 <= level < self.num_levels:
            raise ValueError(
                f"{arg} must be in [0, {self.num_levels}) (or negative from the coarsest), got {level}."
            )
        return level

    def _check_class(self, class_id: int, level: int = 0, arg: str = "fine_class") -> int:
        class_id = _as_int(class_id, arg)
        if not 0 <= class_id < self._num_classes[level]:
            raise ValueError(
                f"{arg} is {class_id}, outside [0, {self._num_classes[level]}) at "
                f"{_level_label(level, self._level_names)}."
            )
        return class_id

    def parent(self, class_id: int, level: int = 0) -> int:
        """Parent id (at ``level + 1``) of ``class_id`` at ``level``."""
        level = self._check_level(level)
        if level == self.num_levels - 1:
            raise ValueError(f"level {level} is the coarsest level; its classes have no parent but the root.")
        return self._parents[level][self._check_class(class_id, level, "class_id")]

    def children(self, class_id: int, level: int) -> tuple[int, ...]:
        """Ids at ``level - 1`` of the children of ``class_id`` at ``level`` (``level >= 1``)."""
        level = self._check_level(level)
        if level == 0:
            raise ValueError("level 0 holds the fine classes, which have no children.")
        class_id = self._check_class(class_id, level, "class_id")
        return tuple(c for c, p in enumerate(self._parents[level - 1]) if p == class_id)

    def ancestor(self, class_id: int, level: int, from_level: int = 0) -> int:
        """Id at ``level`` of the ancestor of ``class_id`` (a class at ``from_level <= level``)."""
        level = self._check_level(level)
        from_level = self._check_level(from_level, "from_level")
        if from_level > level:
            raise ValueError(f"from_level ({from_level}) must not be coarser than level ({level}).")
        c = self._check_class(class_id, from_level, "class_id")
        for l in range(from_level, level):
            c = self._parents[l][c]
        return c

    def ancestors(self, fine_class: int, level: Optional[int] = None) -> Union[tuple[int, ...], int]:
        """The path of a fine class: its ids at every level, finest first (its own id first).

        With ``level`` given, only the ancestor id at that level (an ``int``).
        """
        if level is not None:
            return self.ancestor(fine_class, level)
        c = self._check_class(fine_class)
        out = [c]
        for p in self._parents:
            c = p[c]
            out.append(c)
        return tuple(out)

    def paths(self) -> torch.Tensor:
        """(num_fine, num_levels) int64 tensor: row ``f`` is the path of fine class ``f``, finest first."""
        if self._paths_cache is None:
            cols = [torch.arange(self.num_fine, dtype=torch.int64)]
            for p in self._parents:
                cols.append(torch.tensor(p, dtype=torch.int64)[cols[-1]])
            self._paths_cache = torch.stack(cols, dim=1)
        return self._paths_cache.clone()

    def level_map(self, level: int) -> torch.Tensor:
        """(num_fine,) int64 tensor mapping fine class ids to their ancestor ids at ``level``.

        ``targets_l = taxonomy.level_map(l)[fine_targets]`` gives level-``l`` labels.
        """
        level = self._check_level(level)
        return self.paths()[:, level].contiguous()

    def parent_map(self, level: int) -> torch.Tensor:
        """(num_classes[level],) int64 tensor: parent ids (at ``level + 1``) of the classes at ``level``."""
        level = self._check_level(level)
        if level == self.num_levels - 1:
            raise ValueError(f"level {level} is the coarsest level; it has no parent map.")
        return torch.tensor(self._parents[level], dtype=torch.int64)

    def is_valid_path(self, path: Sequence[int]) -> bool:
        """Whether ``(id_level0, ..., id_coarsest)`` exists in the taxonomy.

        Ids out of range give ``False``; a path of the wrong length raises ``ValueError``.
        """
        if torch.is_tensor(path):
            path = path.tolist()
        path = list(path)
        if len(path) != self.num_levels:
            raise ValueError(f"path has {len(path)} ids but the taxonomy has {self.num_levels} levels.")
        for l, c in enumerate(path):
            c = _as_int(c, f"path[{l}]")
            if not 0 <= c < self._num_classes[l]:
                return False
            if l + 1 < self.num_levels and self._parents[l][c] != _as_int(path[l + 1], f"path[{l + 1}]"):
                return False
        return True

    def valid_paths_mask(self, preds: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N,) bool: for each sample whether its predicted ids form a path of the taxonomy.

        Args:
            preds: one (N,) integer tensor per level, finest first (or a
                (N, num_levels) tensor). Ids out of range count as invalid.
        """
        if torch.is_tensor(preds) and preds.dim() == 2:
            preds = preds.unbind(1)
        preds = list(preds)
        if len(preds) != self.num_levels:
            raise ValueError(
                f"preds has {len(preds)} levels but the taxonomy has {self.num_levels}; give one (N,) tensor "
                f"per level, finest first."
            )
        n = preds[0].shape[0]
        device = preds[0].device
        mask = torch.ones(n, dtype=torch.bool, device=device)
        for l, p in enumerate(preds):
            if p.dim() != 1 or p.shape[0] != n:
                raise ValueError(f"preds[{l}] has shape {tuple(p.shape)}, expected ({n},).")
            mask &= (p >= 0) & (p < self._num_classes[l])
        for l in range(self.num_levels - 1):
            pm = self.parent_map(l).to(device)
            child = preds[l].clamp(0, self._num_classes[l] - 1).long()
            mask &= pm[child] == preds[l + 1].to(torch.int64)
        return mask

    def lca_height(self, a: int, b: int) -> int:
        """Height of the lowest common ancestor of fine classes ``a`` and ``b``.

        0 if ``a == b``, 1 if they share their level-1 parent, ..., ``num_levels``
        if only the (implicit) root is shared. This is the mistake severity of
        "Making Better Mistakes" (Bertinetto et al., CVPR 2020) on this tree.
        """
        pa, pb = self.ancestors(a), self.ancestors(b)
        for h, (x, y) in enumerate(zip(pa, pb)):
            if x == y:
                return h
        return self.num_levels

    def lca_height_matrix(self) -> torch.Tensor:
        """(num_fine, num_fine) int64 tensor of :meth:`lca_height` for all pairs.

        Memory is ``8 * num_fine**2`` bytes (0.8 GB for iNat21's 10000 species).
        """
        paths = self.paths()
        out = torch.full((self.num_fine, self.num_fine), self.num_levels, dtype=torch.int64)
        for l in range(self.num_levels - 1, -1, -1):
            col = paths[:, l]
            out.masked_fill_(col[:, None] == col[None, :], l)
        return out

    def class_index(self, name: str, level: int = 0) -> int:
        """Id of the class called ``name`` at ``level`` (requires names)."""
        level = self._check_level(level)
        names = self._names[level]
        if names is None:
            raise ValueError(f"{_level_label(level, self._level_names)} has no class names.")
        hits = [i for i, n in enumerate(names) if n == name]
        if not hits:
            raise ValueError(f"no class named {name!r} at {_level_label(level, self._level_names)}.")
        if len(hits) > 1:  # homonyms under different parents
            raise ValueError(f"{len(hits)} classes are named {name!r} at {_level_label(level, self._level_names)}: {hits}.")
        return hits[0]

    def disagreement(self, other: "Taxonomy", this: str = "here", that: str = "there") -> Optional[str]:
        """How ``other`` contradicts this taxonomy, in words, or ``None`` when it agrees.

        They disagree when their classes per level, their parents, or the class names of a
        level both name differ (a reordered file relabels every class); names or level names
        that only one of them has are no contradiction. Used wherever a taxonomy from a file
        meets the one a model or checkpoint stores (``hcast predict --taxonomy``,
        ``--resume``).

        Args:
            other: the taxonomy to compare.
            this, that: how the message calls ``self`` and ``other`` (e.g. ``"in the model"``).
        """
        if self.num_classes != other.num_classes:
            return f"classes per level {self.num_classes} {this}, {other.num_classes} {that}"
        if self.parents != other.parents:
            return f"the same sizes, but other parents {this} and {that}"
        for level, (a, b) in enumerate(zip(self.names, other.names)):
            if a is not None and b is not None and a != b:
                i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
                return f"the same sizes, but class {i} of level {level} is {a[i]!r} {this} and {b[i]!r} {that}"
        return None

    # ------------------------------------------------------------------ dunder
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Taxonomy):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self._parents, self._num_classes))

    def __repr__(self) -> str:
        levels = ", ".join(f"{n}={c}" for n, c in zip(self._level_names, self._num_classes))
        return f"Taxonomy({levels})"
