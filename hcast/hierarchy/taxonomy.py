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
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
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


# ============================================================================ construction
# Every way to make a Taxonomy goes parse -> validate -> build, so that one defect gets one
# message whatever the input format:
# * one parser per format (_parse_parents for Taxonomy(parents) and from_dict/load, _parse_id_paths,
#   _parse_named_paths, _parse_nested, _parse_edges) turns its input into a _ParentMap and checks only
#   the format itself: types (TypeError), shapes, which argument holds what;
# * _validate checks the tree the map describes, one rule per defect: not empty, printable names, ids
#   in range, no cycle, one parent per class, each fine class once, no gaps in the ids, every fine
#   class at the same depth, level names / class names / orders that fit;
# * _build numbers the classes and makes the parent arrays a Taxonomy stores.

Node = Hashable


@dataclass
class _ParentMap:
    """What an input says about a tree, before any check: the intermediate form of every constructor.

    A node is a ``(level, key)`` pair when the input states each class's level (parent arrays, id or
    name paths, nested mappings) and a bare class name when it does not (edges). Keys are class ids
    counted from ``id_base`` (id forms) or class names (``id_base is None``).
    """

    source: str  # the argument (or file) named in messages: "paths", "tree", "edges", "parents"
    form: str  # what ``source`` should hold, for "give ..." hints
    leveled: bool
    id_base: Optional[int] = None
    id_hint: str = ""  # how to fix an id out of range, for id forms
    #: every node -> where it is first stated (``paths[3][1]``, ``tree['Tops'][0]``), in order of first statement
    nodes: dict = field(default_factory=dict)
    #: (child, parent, where) as stated; repeats allowed, contradictions are the validator's to find
    links: list = field(default_factory=list)
    #: (fine class, where, depth stated by a path or None), as stated; None: the nodes without children
    leaves: Optional[list] = None
    num_classes: Optional[list] = None  # class counts per level the input declares (parent arrays)
    names: Optional[list] = None  # class names per level, for id forms (name forms use the keys)
    level_names: Optional[tuple] = None
    #: (argument, level, class names in id order) per ordered level (name forms); None: first appearance
    orders: Optional[list] = None
    orders_len: Optional[tuple] = None  # (argument, number of levels it lists), checked against the depth

    def state(self, node: Node, where: str) -> None:
        self.nodes.setdefault(node, where)

    def link(self, child: Node, parent: Node, where: str, child_where: str, parent_where: str) -> None:
        self.state(child, child_where)
        self.state(parent, parent_where)
        self.links.append((child, parent, where))

    def add_path(self, keys: Sequence[Any], node_wheres: Sequence[str], link_wheres: Sequence[str], where: str) -> None:
        """A leaf-to-root path stated at once: its nodes ``(level, key)``, links and fine class."""
        nodes = list(enumerate(keys))
        for node, w in zip(nodes, node_wheres):
            self.state(node, w)
        for l in range(len(nodes) - 1):
            self.links.append((nodes[l], nodes[l + 1], link_wheres[l]))
        self.leaves.append((nodes[0], where, len(nodes)))

    def key(self, node: Node) -> Any:
        return node[1] if self.leveled else node

    def label(self, node: Node, level: Optional[int] = None) -> str:
        """``class 'x' at level 1 ('family')`` (``level`` is needed for edges only)."""
        if self.leveled:
            level = node[0]
        at = f" at {_level_label(level, self.level_names)}" if level is not None else ""
        return f"class {self.key(node)!r}{at}"


@dataclass
class _Tree:
    """What :func:`_validate` found: the map as a tree."""

    depth: int
    parent: dict  # node -> its parent node (the coarsest nodes have none)
    level: dict  # node -> level, finest first
    fine: list  # the fine classes, in order of statement
    counts: list  # classes per level


def _in(wheres: Sequence[str]) -> str:
    return " (in " + " and ".join(wheres) + ")"


def _validate(pm: _ParentMap) -> _Tree:
    """The one check of every taxonomy input. Raises ``ValueError`` naming ``pm.source``, the
    offending classes, where the input states them, and what to do."""
    if pm.level_names is not None:
        for l, n in enumerate(pm.level_names):
            _check_name(n, f"level_names[{l}]")
    if not pm.nodes:
        raise ValueError(f"{pm.source} is empty; give {pm.form}.")
    _check_keys(pm)
    _check_no_cycle(pm)
    children = _children(pm)
    parent = _check_one_parent(pm, children)
    fine = _check_fine_once(pm, children)
    if pm.leveled:
        _check_no_gap(pm, children)
    depth, level = _check_depth(pm, parent, fine)
    counts = [0] * depth
    for node in pm.nodes:
        counts[level[node]] += 1
    if pm.level_names is not None and len(pm.level_names) != depth:
        raise ValueError(
            f"level_names has {len(pm.level_names)} entries but the taxonomy has {depth} levels; give one "
            f"name per level, finest first."
        )
    _check_orders(pm, level, depth)
    _check_class_names(pm, parent, counts)
    return _Tree(depth, parent, level, [n for n, _, _ in fine], counts)


def _check_keys(pm: _ParentMap) -> None:
    """Class names are printable text; class ids lie in ``[id_base, id_base + num_classes)``."""
    for node, where in pm.nodes.items():
        key = pm.key(node)
        if pm.id_base is None:
            _check_name(key, where)
            continue
        lo, level = pm.id_base, node[0]
        hi = lo + pm.num_classes[level] if pm.num_classes is not None else None
        if key < lo:
            raise ValueError(f"{where} is {key}, below the first class id {lo} at "
                             f"{_level_label(level, pm.level_names)}; {pm.id_hint}")
        if hi is not None and key >= hi:
            raise ValueError(f"{where} is {key}, outside [{lo}, {hi}) at "
                             f"{_level_label(level, pm.level_names)}; {pm.id_hint}")


def _children(pm: _ParentMap) -> dict:
    out: dict = {}
    for child, parent, _ in pm.links:
        kids = out.setdefault(parent, {})
        kids.setdefault(child)
    return out


def _check_no_cycle(pm: _ParentMap) -> None:
    """No class is its own ancestor (only edges can say so: the other forms state levels)."""
    ups: dict = {}
    for child, parent, where in pm.links:
        if child == parent:
            raise ValueError(
                f"{pm.label(child)} is its own parent{_in([where])}: a cycle. A taxonomy is a tree: remove "
                f"this link."
            )
        ups.setdefault(child, []).append((parent, where))
    done: set = set()
    for start in pm.nodes:
        if start in done:
            continue
        path, wheres, on_path = [start], [], {start: 0}
        stack = [iter(ups.get(start, ()))]
        while stack:
            step = next(stack[-1], None)
            if step is None:  # every parent of path[-1] explored
                stack.pop()
                done.add(path[-1])
                del on_path[path.pop()]
                if wheres:
                    wheres.pop()
                continue
            up, where = step
            if up in on_path:
                cycle = path[on_path[up]:] + [up]
                raise ValueError(
                    f"{pm.label(up)} is its own ancestor (a cycle: {' -> '.join(repr(pm.key(n)) for n in cycle)})"
                    f"{_in(wheres[on_path[up]:] + [where])}; a taxonomy is a tree: remove one of these links."
                )
            if up not in done:
                on_path[up] = len(path)
                path.append(up)
                wheres.append(where)
                stack.append(iter(ups.get(up, ())))


def _heights(pm: _ParentMap, children: dict) -> dict:
    """Level of every node of an acyclic map counted from the leaves (for messages about edges)."""
    height = {n: 0 for n in pm.nodes}
    pending = {n: len(children.get(n, ())) for n in pm.nodes}
    ups: dict = {}
    for child, parent, _ in pm.links:
        ups.setdefault(child, {}).setdefault(parent)
    ready = [n for n, k in pending.items() if k == 0]
    while ready:
        n = ready.pop()
        for up in ups.get(n, ()):
            height[up] = max(height[up], height[n] + 1)
            pending[up] -= 1
            if pending[up] == 0:
                ready.append(up)
    return height


def _check_one_parent(pm: _ParentMap, children: dict) -> dict:
    """Every class has at most one parent; returns child -> parent."""
    parent: dict = {}
    where_of: dict = {}
    for child, up, where in pm.links:
        if parent.setdefault(child, up) != up:
            level = None if pm.leveled else _heights(pm, children)[child]
            raise ValueError(
                f"{pm.label(child, level)} has two parents, {pm.key(parent[child])!r} and {pm.key(up)!r}"
                f"{_in([where_of[child], where])}; every class needs exactly one parent: keep one of them."
            )
        where_of.setdefault(child, where)
    return parent


def _check_fine_once(pm: _ParentMap, children: dict) -> list:
    """Every fine class is stated once; returns the fine classes as (node, where, stated depth)."""
    if pm.leaves is None:
        return [(n, w, None) for n, w in pm.nodes.items() if n not in children]
    seen: dict = {}
    for node, where, _ in pm.leaves:
        if node in seen:
            raise ValueError(
                f"fine class {pm.key(node)!r} is listed twice{_in([seen[node], where])}; list every fine class once."
            )
        seen[node] = where
    return pm.leaves


def _check_no_gap(pm: _ParentMap, children: dict) -> None:
    """Every class of a coarser level has a child; class ids run 0..n-1 (from ``id_base``) with none unused."""
    by_level: dict = {}
    for node in pm.nodes:
        by_level.setdefault(node[0], []).append(node)
    for level in sorted(by_level):
        nodes = by_level[level]
        if pm.id_base is not None:
            base = pm.id_base
            n = pm.num_classes[level] if pm.num_classes is not None else max(k for _, k in nodes) + 1 - base
            used = {k for _, k in nodes} if level == 0 else {k for _, k in nodes if (level, k) in children}
            missing = [k for k in range(base, base + n) if k not in used]
        else:
            missing = [] if level == 0 else [k for _, k in nodes if (level, k) not in children]
        if not missing:
            continue
        also = f"; also {missing[1:6]}" if len(missing) > 1 else ""
        if level == 0:
            raise ValueError(
                f"fine class {missing[0]!r} is missing from {pm.source} (a gap in the class ids{also}); the fine "
                f"class ids must be {pm.id_base}..{pm.id_base + n - 1} with every id used."
            )
        raise ValueError(
            f"class {missing[0]!r} at {_level_label(level, pm.level_names)} has no child at "
            f"{_level_label(level - 1, pm.level_names)} (a gap in the class ids{also}); ids at every level must "
            f"be consecutive with every class used."
        )


def _check_depth(pm: _ParentMap, parent: dict, fine: list) -> tuple[int, dict]:
    """Every fine class sits at the same depth; returns the depth and every node's level."""
    chain: dict = {}

    def chain_length(node: Node) -> int:  # nodes from ``node`` up to its root (iterative: trees can be deep)
        trail = []
        while node not in chain and node in parent:
            trail.append(node)
            node = parent[node]
        n = chain.setdefault(node, 1)
        for t in reversed(trail):
            n += 1
            chain[t] = n
        return n

    ref, ref_where, stated = fine[0]
    depth = stated if stated is not None else chain_length(ref)
    for node, where, stated in fine[1:]:
        d = stated if stated is not None else chain_length(node)
        if d != depth:
            raise ValueError(
                f"fine class {pm.key(node)!r} has {d} levels up to its root but fine class {pm.key(ref)!r} has "
                f"{depth}{_in([where, ref_where])}; every fine class must sit at the same depth, with one class "
                f"per level from the finest to the coarsest."
            )
    if pm.leveled:
        return depth, {n: n[0] for n in pm.nodes}
    return depth, {n: depth - chain_length(n) for n in pm.nodes}


def _check_orders(pm: _ParentMap, level: dict, depth: int) -> None:
    """Class orders (name forms) list every class of their level once, and no other name."""
    if pm.orders_len is not None and pm.orders_len[1] != depth:
        arg, n = pm.orders_len
        raise ValueError(f"{arg} has {n} entries but {pm.source} has {depth} levels; give one per level, finest first.")
    for arg, l, order in pm.orders or ():
        listed: set = set()
        for name in order:
            if name in listed:
                raise ValueError(f"{arg} lists class {name!r} twice.")
            listed.add(name)
        used = [pm.key(n) for n in pm.nodes if level[n] == l]
        for name in used:
            if name not in listed:
                raise ValueError(
                    f"class {name!r} at {_level_label(l, pm.level_names)} is not in {arg}; list every class name "
                    f"of the level there."
                )
        used_set = set(used)
        for name in order:
            if name not in used_set:
                raise ValueError(
                    f"class {name!r} listed in {arg} never occurs in {pm.source} (it would leave a gap in the "
                    f"class ids at {_level_label(l, pm.level_names)})."
                )


def _check_class_names(pm: _ParentMap, parent: dict, counts: Sequence[int]) -> None:
    """Class names given beside ids (``names=``): one printable name per class, distinct under one parent."""
    if pm.names is None:
        return
    depth = len(counts)
    if len(pm.names) != depth:
        raise ValueError(
            f"names has {len(pm.names)} entries but the taxonomy has {depth} levels; give one entry (a list of "
            f"class names or None) per level, finest first."
        )
    base = pm.id_base or 0
    for l, level in enumerate(pm.names):
        if level is None:
            continue
        label = _level_label(l, pm.level_names)
        for c, n in enumerate(level):
            _check_name(n, f"names[{l}][{c}] (class {c} at {label})")
        if len(level) != counts[l]:
            raise ValueError(
                f"names[{l}] has {len(level)} names but {label} has {counts[l]} classes; give one name per "
                f"class id (or None for the level)."
            )
        # A class is known by its name and its lineage: two classes of one level may share a name only
        # under different parents (iNat's genus Pica of birds and of plants); siblings with one name, or
        # two coarsest classes with one name, could not be told apart.
        seen: dict = {}
        dups = []
        for c, n in enumerate(level):
            up = parent.get((l, c + base))
            if (n, up) in seen:
                dups.append(f"{n!r} (classes {seen[n, up]} and {c})")
            seen.setdefault((n, up), c)
        if dups:
            under = "under one parent" if l < depth - 1 else "at the coarsest level"
            raise ValueError(
                f"names[{l}] repeats class names {under} at {label}: {', '.join(dups[:5])}"
                f"{' ...' if len(dups) > 5 else ''}; give every class a distinct name (names identify classes "
                f"in predictions, class_index and saved files)."
            )


def _build(pm: _ParentMap, tree: _Tree) -> tuple:
    """Parent arrays, class counts, class names and level names of a validated map."""
    depth = tree.depth
    level_names = pm.level_names if pm.level_names is not None else tuple(f"level{l}" for l in range(depth))
    if pm.id_base is not None:  # ids as given
        base = pm.id_base
        parents = tuple(
            tuple(tree.parent[(l, c + base)][1] - base for c in range(tree.counts[l])) for l in range(depth - 1)
        )
        names = tuple(pm.names) if pm.names is not None else (None,) * depth
        return parents, tuple(tree.counts), names, level_names
    # Names: ids follow the given orders, else first appearance on the fine classes' paths in order.
    order: list = [dict() for _ in range(depth)]
    for arg, l, listed in pm.orders or ():
        for name in listed:
            order[l].setdefault((l, name) if pm.leveled else name)
    for node in tree.fine:
        while True:
            order[tree.level[node]].setdefault(node)
            if node not in tree.parent:
                break
            node = tree.parent[node]
    ids = [{n: i for i, n in enumerate(level)} for level in order]
    parents = tuple(tuple(ids[l + 1][tree.parent[n]] for n in order[l]) for l in range(depth - 1))
    names = tuple(tuple(pm.key(n) for n in level) for level in order)
    return parents, tuple(tree.counts), names, level_names


# ------------------------------------------------------------------ parsers: one per input format


def _parse_level_names(level_names: Optional[Sequence[str]]) -> Optional[tuple]:
    if level_names is None:
        return None
    if isinstance(level_names, str):
        raise TypeError("level_names must be a sequence of strings, one per level, not one string.")
    return tuple(str(n) for n in level_names)


def _parse_names(names: Names, level_names: Optional[Sequence[str]]) -> Optional[list]:
    """``names=`` beside class ids: one entry per level, a list of class names or None."""
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise TypeError(
            f"names must be a list with one entry per level, finest first (a list of class names or None), "
            f"got {type(names).__name__}."
        )
    out: list = []
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
        out.append(tuple(str(n) for n in level))
    return out


def _parse_parents(
    parents: Any, names: Names, level_names: Optional[Sequence[str]], num_classes: Optional[Sequence[int]]
) -> _ParentMap:
    """Parent arrays (``Taxonomy(parents)``, :meth:`Taxonomy.from_dict`): ``parents[l][c]`` is the parent of
    class ``c`` at level ``l``."""
    if isinstance(parents, (str, bytes)) or not isinstance(parents, Iterable):
        raise TypeError(f"parents must be a sequence of per-level integer sequences, got {type(parents).__name__}.")
    parent_lists: list[tuple[int, ...]] = []
    for l, level_parents in enumerate(parents):
        if torch.is_tensor(level_parents):
            level_parents = level_parents.tolist()
        if isinstance(level_parents, (str, bytes)) or not isinstance(level_parents, Iterable):
            raise TypeError(
                f"parents[{l}] must be a sequence of integer parent ids, got {type(level_parents).__name__}."
            )
        parent_lists.append(tuple(_as_int(p, f"parents[{l}][{c}]") for c, p in enumerate(level_parents)))
    num_levels = len(parent_lists) + 1
    level_names = _parse_level_names(level_names)
    names = _parse_names(names, level_names)
    counts = None
    if num_classes is not None:
        counts = [_as_int(n, f"num_classes[{l}]") for l, n in enumerate(num_classes)]
        if len(counts) != num_levels:
            raise ValueError(f"num_classes has {len(counts)} entries but parents describe {num_levels} levels.")
    sizes = [len(p) for p in parent_lists]
    if not parent_lists:  # one level: nothing but a class count
        if counts is None and names and names[0] is not None:
            sizes = [len(names[0])]
        elif counts is not None:
            sizes = [counts[0]]
        else:
            raise ValueError(
                "a one-level taxonomy (parents=[]) needs num_classes=(n,) or names=[[...]] to know "
                "its number of classes."
            )
    for l, n in enumerate(counts if counts is not None else sizes):
        if n < 1:
            raise ValueError(f"{_level_label(l, level_names)} has {n} classes; every level needs at least one.")
        if counts is not None and l < len(sizes) and sizes[l] != n:
            raise ValueError(
                f"{_level_label(l, level_names)} has {n} classes but parents[{l}] gives a parent for "
                f"{sizes[l]} classes; give exactly one parent per class."
            )
    pm = _ParentMap(
        "parents", "one parent id per class and level", leveled=True, id_base=0, leaves=[], num_classes=counts,
        names=names, level_names=level_names,
        id_hint="parent ids must be 0-based and below the class count of the next level.",
    )
    for c in range(sizes[0]):
        pm.state((0, c), f"class {c} at {_level_label(0, level_names)}")
        pm.leaves.append(((0, c), f"parents[0][{c}]" if parent_lists else f"class {c}", None))
    for l, level_parents in enumerate(parent_lists):
        for c, p in enumerate(level_parents):
            where = f"parents[{l}][{c}]"
            pm.link((l, c), (l + 1, p), where, f"class {c} at {_level_label(l, level_names)}",
                    f"{where} (the parent of class {c} at {_level_label(l, level_names)})")
    return pm


def _parse_id_paths(paths: Any, names: Names, level_names: Optional[Sequence[str]], index_base: int) -> _ParentMap:
    """:meth:`Taxonomy.from_paths`: one ``[fine, ..., coarse]`` id path per fine class."""
    if torch.is_tensor(paths):
        paths = paths.tolist()
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Iterable):
        raise TypeError(f"paths must be a sequence of [fine, ..., coarse] id paths, got {type(paths).__name__}.")
    base = _as_int(index_base, "index_base")
    level_names = _parse_level_names(level_names)
    pm = _ParentMap(
        "paths", "one [fine, ..., coarse] id path per fine class", leveled=True, id_base=base, leaves=[],
        names=_parse_names(names, level_names), level_names=level_names,
        id_hint=f"class ids count from index_base={base}: pass index_base=1 for 1-based trees (as H-CAST's), "
                f"0 for 0-based ones.",
    )
    for i, row in enumerate(paths):
        row = row.tolist() if torch.is_tensor(row) else row
        if isinstance(row, (str, bytes)) or not isinstance(row, Iterable):
            raise TypeError(f"paths[{i}] must be a [fine, ..., coarse] sequence of class ids, got {type(row).__name__}.")
        keys = [_as_int(v, f"paths[{i}][{l}]") for l, v in enumerate(row)]
        if not keys:
            raise ValueError(f"paths[{i}] is empty; every path needs at least the fine class id.")
        pm.add_path(keys, [f"paths[{i}][{l}]" for l in range(len(keys))], [f"paths[{i}]"] * len(keys), f"paths[{i}]")
    return pm


def _parse_named_paths(
    paths: Iterable[Sequence[str]],
    level_names: Optional[Sequence[str]],
    orders: Optional[Sequence[Optional[Sequence[str]]]],
) -> _ParentMap:
    """:meth:`Taxonomy.from_named_paths`: ``(fine, ..., coarse)`` name paths; repeats are one path."""
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Iterable):
        raise TypeError(f"paths must be an iterable of (fine, ..., coarse) name tuples, got {type(paths).__name__}.")
    pm = _ParentMap(
        "paths", "at least one (fine, ..., coarse) name path", leveled=True, leaves=[],
        level_names=_parse_level_names(level_names),
    )
    seen: set = set()
    for i, row in enumerate(paths):
        if isinstance(row, (str, bytes)) or not isinstance(row, Iterable):
            raise TypeError(f"paths[{i}] must be a (fine, ..., coarse) tuple of class names, got {type(row).__name__}.")
        row = tuple(str(n) for n in row)
        if row in seen:  # per-image label tuples repeat their path
            continue
        seen.add(row)
        if not row:
            raise ValueError(f"paths[{i}] is empty; every path needs at least the fine class name.")
        pm.add_path(row, [f"paths[{i}][{l}]" for l in range(len(row))], [f"paths[{i}]"] * len(row), f"paths[{i}]")
    if orders is not None:
        if isinstance(orders, (str, bytes)) or not isinstance(orders, Sequence):
            raise TypeError(f"orders must be a list with one entry per level (names in id order, or None), "
                            f"got {type(orders).__name__}.")
        pm.orders = [(f"orders[{l}]", l, list(o)) for l, o in enumerate(orders) if o is not None]
        pm.orders_len = ("orders", len(orders))
    return pm


def _parse_nested(
    tree: Mapping[str, Any], level_names: Optional[Sequence[str]], fine_order: Optional[Sequence[str]]
) -> _ParentMap:
    """:meth:`Taxonomy.from_nested`: ``{coarse: {mid: [fine, ...]}}``."""
    if not isinstance(tree, Mapping):
        raise TypeError(f"tree must be a mapping {{coarse: {{...: [fine, ...]}}}}, got {type(tree).__name__}.")
    pm = _ParentMap(
        "tree", 'at least one coarse group, e.g. {"Tops": ["T-shirt", "Shirt"]}', leveled=True, leaves=[],
        level_names=_parse_level_names(level_names),
    )

    def walk(node: Any, trail: tuple, wheres: tuple) -> None:  # trail: keys from the coarsest down
        where = wheres[-1] if wheres else "tree"
        if isinstance(node, Mapping):
            if not node and trail:
                raise ValueError(f"group {where} is empty; every group needs at least one child.")
            for key, child in node.items():
                walk(child, trail + (str(key),), wheres + (f"{where}[{key!r}]",))
        elif isinstance(node, (list, tuple, set, frozenset)) and trail:
            if not node:
                raise ValueError(f"group {where} is empty; every group needs at least one child.")
            for j, leaf in enumerate(node):
                if isinstance(leaf, (Mapping, list, tuple, set, frozenset)):
                    raise ValueError(
                        f"{where}[{j}] is a {type(leaf).__name__} in a list of fine class names; a group holds "
                        f"either subgroups (a mapping) or fine class names (a list)."
                    )
                row = (str(leaf),) + tuple(reversed(trail))
                node_wheres = (f"{where}[{j}]",) + tuple(reversed(wheres))
                pm.add_path(row, node_wheres, node_wheres, f"{where}[{j}]")
        else:
            raise ValueError(
                f"{where} is {node!r}; expected a mapping of subgroups or a list of fine class names."
            )

    walk(tree, (), ())
    if fine_order is not None:
        pm.orders = [("fine_order", 0, list(fine_order))]
    return pm


def _parse_edges(
    edges: Iterable[tuple[str, str]], level_names: Optional[Sequence[str]], fine_order: Optional[Sequence[str]]
) -> _ParentMap:
    """:meth:`Taxonomy.from_edges`: ``(child, parent)`` name pairs; levels follow from the depth."""
    if isinstance(edges, (str, bytes)) or not isinstance(edges, Iterable):
        raise TypeError(f"edges must be an iterable of (child, parent) pairs, got {type(edges).__name__}.")
    pm = _ParentMap("edges", "(child, parent) name pairs", leveled=False, level_names=_parse_level_names(level_names))
    for i, edge in enumerate(edges):
        if isinstance(edge, (str, bytes)) or not isinstance(edge, Sequence) or len(edge) != 2:
            raise ValueError(f"edges[{i}] is {edge!r}; expected a (child, parent) pair.")
        pm.link(str(edge[0]), str(edge[1]), f"edges[{i}]", f"edges[{i}][0]", f"edges[{i}][1]")
    if fine_order is not None:
        pm.orders = [("fine_order", 0, list(fine_order))]
    return pm



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
        self._init(_parse_parents(parents, names, level_names, num_classes))

    def _init(self, parent_map: _ParentMap) -> None:
        """Validate and build: the one path every constructor ends in."""
        parents, num_classes, names, level_names = _build(parent_map, _validate(parent_map))
        self._parents = parents
        self._num_classes = num_classes
        self._level_names = level_names
        self._names = names
        self._paths_cache: Optional[torch.Tensor] = None

    @classmethod
    def _from_map(cls, parent_map: _ParentMap) -> "Taxonomy":
        taxonomy = cls.__new__(cls)
        taxonomy._init(parent_map)
        return taxonomy

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
                (finest first), as in the ``trees`` lists of the H-CAST code (a list or an
                integer tensor). The fine ids must be exactly ``index_base .. index_base + n - 1``
                (any order).
            names, level_names: as in :class:`Taxonomy`.
            index_base: the id of the first class; ``1`` for the 1-based ``trees``
                lists of H-CAST's FGVC-Aircraft and CUB code (which subtract 1 when
                reading them).

        Raises:
            TypeError: ``paths`` (or one path) is not a sequence.
            ValueError: paths of unequal depth, a fine class listed twice, a class
                with two different parents, ids below ``index_base`` or gaps. The
                message names the class and the paths that state it.
        """
        return cls._from_map(_parse_id_paths(paths, names, level_names, index_base))

    @classmethod
    def from_named_paths(
        cls,
        paths: Iterable[Sequence[str]],
        level_names: Optional[Sequence[str]] = None,
        orders: Optional[Sequence[Optional[Sequence[str]]]] = None,
    ) -> "Taxonomy":
        """Build from leaf-to-root paths of class *names*, e.g. per-image label tuples.

        Repeated paths are fine (each distinct path is kept once), so the
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
            TypeError: ``paths`` or one path is not a sequence.
            ValueError: unequal depths, a name with two different parents, an empty or
                unprintable name, a name not listed in ``orders`` or a listed name that
                never occurs.
        """
        return cls._from_map(_parse_named_paths(paths, level_names, orders))

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
            TypeError: ``tree`` is not a mapping.
            ValueError: an empty tree or group, leaves at unequal depths, a name that
                appears under two parents at the same level, a fine class listed twice.
                The message names the place in ``tree`` (``tree['Tops'][1]``).
        """
        return cls._from_map(_parse_nested(tree, level_names, fine_order))

    @classmethod
    def from_edges(
        cls,
        edges: Iterable[tuple[str, str]],
        level_names: Optional[Sequence[str]] = None,
        fine_order: Optional[Sequence[str]] = None,
    ) -> "Taxonomy":
        """Build from ``(child, parent)`` name pairs of a tree.

        Nodes without a parent form the coarsest level; nodes without children
        are the fine classes and must all be equally far from the top. Fine ids
        follow ``fine_order`` when given, else the order in which the fine classes
        first appear; coarser ids follow first appearance on the fine classes' paths.

        Raises:
            ValueError: a cycle (naming the classes and edges on it), a child with two
                different parents, or leaves at unequal depths.
        """
        return cls._from_map(_parse_edges(edges, level_names, fine_order))

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
        (:func:`hcast._io.atomic_write`: never a torn file; symlinks followed, special
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
