"""Taxonomies of datasets, built from the datasets' own metadata.

* :func:`fashion_mnist_taxonomy`: a documented two-level clothing taxonomy for
  Fashion-MNIST (10 garments -> 5 groups), used in hcast's tests and examples.
* :func:`fgvc_aircraft_taxonomy`: variant -> family -> manufacturer from the
  FGVC-Aircraft 2013b ``data/`` folder.
* :func:`inat21_taxonomy`: any chosen ranks from iNaturalist 2021's category
  records (the ``"categories"`` list of its annotation JSON).
* :func:`wordnet_taxonomy`: fine WordNet ids (``"n02084071"``) grouped under
  given coarser WordNet ids through hypernym closure, read with nltk from a
  local WordNet (Debian's ``wordnet-base`` installs it under /usr/share/wordnet).

See docs/taxonomies.md.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from hcast.hierarchy.taxonomy import Taxonomy

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_GROUPS",
    "fashion_mnist_taxonomy",
    "fgvc_aircraft_taxonomy",
    "inat21_taxonomy",
    "INAT21_RANKS",
    "wordnet_taxonomy",
    "DEFAULT_WORDNET_DIRS",
]

PathLike = Union[str, os.PathLike]

#: Fashion-MNIST's ten label names, in label-id order (Xiao et al., 2017).
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: The five groups of :func:`fashion_mnist_taxonomy`, in coarse-id order, with their garments.
FASHION_MNIST_GROUPS = {
    "Tops": ("T-shirt/top", "Pullover", "Coat", "Shirt"),
    "Bottoms": ("Trouser",),
    "Dresses": ("Dress",),
    "Footwear": ("Sandal", "Sneaker", "Ankle boot"),
    "Bags": ("Bag",),
}


def fashion_mnist_taxonomy() -> Taxonomy:
    """Two-level taxonomy of Fashion-MNIST: 10 garments (level 0) -> 5 groups (level 1).

    Fine ids are Fashion-MNIST's label ids. Groups (coarse ids 0..4):

    ====  ========  ==============================================
    id    group     garments (fine ids)
    ====  ========  ==============================================
    0     Tops      T-shirt/top (0), Pullover (2), Coat (4), Shirt (6)
    1     Bottoms   Trouser (1)
    2     Dresses   Dress (3)
    3     Footwear  Sandal (5), Sneaker (7), Ankle boot (9)
    4     Bags      Bag (8)
    ====  ========  ==============================================

    Why: the groups follow where a garment is worn (upper body, legs, whole body,
    feet, carried), the split used by clothing retailers' top-level menus. Coat
    goes with the tops rather than a one-class "Outerwear" group because it is
    an upper-body garment and is, with Pullover and Shirt, the class Fashion-MNIST
    classifiers confuse most: the coarse level then groups the visually
    confusable classes, as the coarse levels of BREEDS/iNat do, so that
    consistency between levels is a real test rather than a trivial one.

    Returns:
        Taxonomy with ``num_classes == (10, 5)``, ``level_names == ("garment", "group")``
        and class names at both levels.
    """
    group_ids = {g: k for k, g in enumerate(FASHION_MNIST_GROUPS)}
    parent_of = {garment: group_ids[g] for g, garments in FASHION_MNIST_GROUPS.items() for garment in garments}
    parents = [parent_of[name] for name in FASHION_MNIST_CLASSES]
    return Taxonomy(
        [parents],
        names=[FASHION_MNIST_CLASSES, tuple(FASHION_MNIST_GROUPS)],
        level_names=("garment", "group"),
    )


# ---------------------------------------------------------------------------- FGVC-Aircraft

_AIRCRAFT_LEVELS = ("variant", "family", "manufacturer")


def _find_aircraft_data_dir(root: PathLike) -> str:
    root = os.fspath(root)
    for cand in (root, os.path.join(root, "data"), os.path.join(root, "fgvc-aircraft-2013b", "data")):
        if os.path.isfile(os.path.join(cand, "variants.txt")):
            return cand
    raise FileNotFoundError(
        f"no FGVC-Aircraft metadata (variants.txt) under {root!r}; pass the 'fgvc-aircraft-2013b' folder, "
        f"its 'data' subfolder, or their parent."
    )


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f if line.strip()]


def _read_image_labels(path: str) -> dict[str, str]:
    """``<image id> <name>`` lines (names may contain spaces) -> {image id: name}."""
    out = {}
    for k, line in enumerate(_read_lines(path)):
        parts = line.strip().split(" ", 1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{k + 1}: expected '<image id> <name>', got {line!r}.")
        out[parts[0]] = parts[1].strip()
    return out


def fgvc_aircraft_taxonomy(root: PathLike, splits: Sequence[str] = ("trainval", "test")) -> Taxonomy:
    """variant (100) -> family (70) -> manufacturer (30) taxonomy of FGVC-Aircraft 2013b.

    Reads the dataset's own metadata in ``data/``: ``variants.txt``,
    ``families.txt`` and ``manufacturers.txt`` (one name per line: their order
    gives the class ids, as torchvision's ``FGVCAircraft`` uses) and, to derive
    the tree, ``images_{variant,family,manufacturer}_{split}.txt`` (lines
    ``<image id> <name>``, joined on the image id).

    The ids differ from those of the H-CAST code, which renumbers the variants
    through its own ``data/Air.csv``; to match H-CAST's checkpoints use
    ``Taxonomy.from_paths(trees, index_base=1)`` with its ``trees`` list.

    Args:
        root: the ``fgvc-aircraft-2013b`` folder, its ``data`` subfolder, or their parent.
        splits: which ``images_*_{split}.txt`` files to read (every listed file
            that exists; at least one must).

    Returns:
        Taxonomy with level names ``("variant", "family", "manufacturer")`` and class names.

    Raises:
        FileNotFoundError: no metadata under ``root``.
        ValueError: a variant with two families (or family with two
            manufacturers), or an image missing from one of the three files.
    """
    data = _find_aircraft_data_dir(root)
    orders = [_read_lines(os.path.join(data, f"{name}.txt")) for name in ("variants", "families", "manufacturers")]
    orders = [[n.strip() for n in order] for order in orders]
    named_paths: list[tuple[str, str, str]] = []
    found = False
    for split in splits:
        files = [os.path.join(data, f"images_{level}_{split}.txt") for level in _AIRCRAFT_LEVELS]
        if not all(os.path.isfile(f) for f in files):
            continue
        found = True
        per_level = [_read_image_labels(f) for f in files]
        for image_id, variant in per_level[0].items():
            for level, labels in zip(_AIRCRAFT_LEVELS[1:], per_level[1:]):
                if image_id not in labels:
                    raise ValueError(
                        f"image {image_id} is in images_variant_{split}.txt but not in images_{level}_{split}.txt."
                    )
            named_paths.append((variant, per_level[1][image_id], per_level[2][image_id]))
    if not found:
        raise FileNotFoundError(
            f"none of the splits {tuple(splits)} has all three images_{{variant,family,manufacturer}}_<split>.txt "
            f"files in {data!r}."
        )
    # Keep only the classes the read splits use if a listed class never occurs (partial copies).
    used = [set(p[l] for p in named_paths) for l in range(3)]
    orders = [[n for n in order if n in used[l]] for l, order in enumerate(orders)]
    return Taxonomy.from_named_paths(named_paths, level_names=_AIRCRAFT_LEVELS, orders=orders)


# ---------------------------------------------------------------------------- iNaturalist 2021

#: Taxonomic ranks of iNaturalist 2021's category records, finest first ("name" is the species).
INAT21_RANKS = ("name", "genus", "family", "order", "class", "phylum", "kingdom")
_INAT_RANK_ALIASES = {"species": "name"}


def inat21_taxonomy(
    categories: Union[PathLike, Mapping[str, Any], Sequence[Mapping[str, Any]]],
    ranks: Sequence[str] = ("name", "family", "order"),
) -> Taxonomy:
    """Taxonomy over chosen ranks of iNaturalist 2021's category records.

    Args:
        categories: the path of an iNat21 annotation JSON (``train.json``,
            ``train_mini.json``, ``val.json``), the loaded dict (its
            ``"categories"`` list is used), or that list itself. Each record has
            ``"id"``, ``"name"`` (the species), ``"kingdom"``, ``"phylum"``,
            ``"class"``, ``"order"``, ``"family"``, ``"genus"``, ...
        ranks: ranks to use, finest first, from
            ``("name"/"species", "genus", "family", "order", "class", "phylum", "kingdom")``.
            Default ``("name", "family", "order")``: the species -> family -> order
            tree on which H-CAST trains (10000, 1103, 273 classes on iNat21).

    Ids: with ``ranks[0] == "name"`` the fine ids are the records' ``"id"`` (which
    must be 0..n-1, as in iNat21); otherwise, and for every coarser rank, ids
    follow first appearance over the records sorted by ``"id"`` (iNat21 sorts its
    categories by taxonomy, so this is taxonomic order). A taxon is identified
    by its whole lineage, so homonyms in different kingdoms stay apart; class
    names are the rank values (``"Abronia umbellata"``, ``"Nyctaginaceae"``, ...).

    Raises:
        ValueError: an unknown rank, ranks not finest first, a record without a
            chosen rank, or species ids with gaps/duplicates.
    """
    if isinstance(categories, (str, os.PathLike)):
        with open(categories, encoding="utf-8") as f:
            categories = json.load(f)
    if isinstance(categories, Mapping):
        if "categories" not in categories:
            raise ValueError("the annotation dict has no 'categories' key; pass an iNat21 annotation JSON.")
        categories = categories["categories"]
    records = list(categories)
    if not records:
        raise ValueError("categories is empty.")
    ranks = tuple(_INAT_RANK_ALIASES.get(r, r) for r in ranks)
    for r in ranks:
        if r not in INAT21_RANKS:
            raise ValueError(f"unknown rank {r!r}; choose ranks from {INAT21_RANKS} (or 'species'), finest first.")
    pos = [INAT21_RANKS.index(r) for r in ranks]
    if pos != sorted(set(pos)):
        raise ValueError(f"ranks {ranks} must be distinct and ordered finest first, as in {INAT21_RANKS}.")
    for rec in records:
        if "id" not in rec:
            raise ValueError(f"category record {rec!r} has no 'id'.")
    records.sort(key=lambda rec: int(rec["id"]))

    lineage_ranks = tuple(reversed(INAT21_RANKS))  # kingdom .. name

    def lineage(rec: Mapping[str, Any], rank: str) -> tuple[str, ...]:
        keys = lineage_ranks[: lineage_ranks.index(rank) + 1]
        out = []
        for k in keys:
            if k not in rec:
                raise ValueError(f"category {rec['id']} ({rec.get('name', '?')!r}) has no {k!r} field.")
            out.append(str(rec[k]))
        return tuple(out)

    level_ids: list[dict[tuple[str, ...], int]] = [{} for _ in ranks]
    for rec in records:
        for l, r in enumerate(ranks):
            ids = level_ids[l]
            key = lineage(rec, r)
            if l == 0 and r == "name":
                if key in ids:
                    raise ValueError(f"species {rec['name']!r} appears twice (ids {ids[key]} and {rec['id']}).")
                ids[key] = int(rec["id"])
            else:
                ids.setdefault(key, len(ids))
    if ranks[0] == "name":
        got = sorted(level_ids[0].values())
        if got != list(range(len(got))):
            missing = sorted(set(range(len(got))) - set(got))
            raise ValueError(
                f"category ids must be 0..{len(got) - 1} without gaps to serve as fine class ids; id "
                f"{missing[0] if missing else '?'} is missing. Choose a coarser finest rank or renumber."
            )
    parents: list[list[int]] = []
    for l in range(len(ranks) - 1):
        parent = [-1] * len(level_ids[l])
        for key, k in level_ids[l].items():
            up = key[: lineage_ranks.index(ranks[l + 1]) + 1]
            parent[k] = level_ids[l + 1][up]
        parents.append(parent)
    names = []
    for ids in level_ids:
        level_names_list = [""] * len(ids)
        for key, k in ids.items():
            level_names_list[k] = key[-1]
        names.append(level_names_list)
    level_names = tuple("species" if r == "name" else r for r in ranks)
    return Taxonomy(parents, names=names, level_names=level_names, num_classes=[len(i) for i in level_ids])


# ---------------------------------------------------------------------------- WordNet

#: Where :func:`wordnet_taxonomy` looks for WordNet's dict files when no directory is given
#: (after ``$HCAST_WORDNET_DIR``): Debian's ``wordnet-base`` and nltk's own data folders.
DEFAULT_WORDNET_DIRS = ("/usr/share/wordnet",)

# The 45 lexicographer files of WordNet 3.0 (lexnames(5WN)); Debian's wordnet-base ships no
# `lexnames` file, which nltk's reader needs, so it is served from this table when missing.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_LEX_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def _find_wordnet_dir(wordnet_dir: Optional[PathLike]) -> str:
    cands = []
    if wordnet_dir is not None:
        cands.append(os.fspath(wordnet_dir))
    else:
        if os.environ.get("HCAST_WORDNET_DIR"):
            cands.append(os.environ["HCAST_WORDNET_DIR"])
        cands.extend(DEFAULT_WORDNET_DIRS)
        try:
            import nltk.data

            for p in nltk.data.path:
                cands.append(os.path.join(str(p), "corpora", "wordnet"))
        except ImportError:
            pass
    for c in cands:
        if os.path.isfile(os.path.join(c, "data.noun")) and os.path.isfile(os.path.join(c, "index.noun")):
            return c
    raise FileNotFoundError(
        f"no WordNet dict files (data.noun, index.noun) in {cands}; install Debian's `wordnet-base` "
        f"(apt-get install wordnet-base), run nltk.download('wordnet'), or pass wordnet_dir=."
    )


_READERS: dict[str, Any] = {}


def _wordnet_reader(wordnet_dir: Optional[PathLike] = None):
    """An nltk ``WordNetCorpusReader`` on a local WordNet directory (cached per directory).

    nltk only opens files under its trusted data roots (``nltk.data.path``), so the
    directory is appended to ``nltk.data.path`` once. The reader is for lookups by
    offset (``synset_from_pos_and_offset``) and relations: it does not load the
    lemma index, so lookups by word (``reader.synsets("dog")``) find nothing.
    """
    path = os.path.realpath(_find_wordnet_dir(wordnet_dir))
    if path in _READERS:
        return _READERS[path]
    try:
        import io
        import warnings

        import nltk.data
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError as e:  # pragma: no cover - nltk is in the test extra
        raise ImportError("wordnet_taxonomy needs nltk: pip install nltk (or hcast[test]).") from e

    class _LocalWordNetReader(WordNetCorpusReader):
        def open(self, file):  # noqa: A003 - nltk's API name
            if file == "lexnames" and not os.path.isfile(os.path.join(path, "lexnames")):
                lines = [f"{k:02d}\t{n}\t{_LEX_CATEGORY[n.split('.')[0]]}\n" for k, n in enumerate(_LEXNAMES)]
                return io.StringIO("".join(lines))
            return super().open(file)

        def map_wn(self, version="wordnet"):
            # nltk maps other WordNet versions onto this one for multilingual (OMW) data by loading its
            # own downloaded 'wordnet' corpus; hcast uses no OMW data and must work offline.
            return None

    if path not in [os.path.realpath(str(p)) for p in nltk.data.path]:
        nltk.data.path.append(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": we need none
        reader = _LocalWordNetReader(path, None)
    _READERS[path] = reader
    return reader


def _synset_of(reader: Any, wnid: str, what: str):
    wnid = str(wnid)
    if len(wnid) < 2 or wnid[0] not in "nvasr" or not wnid[1:].isdigit():
        raise ValueError(f"{what} {wnid!r} is not a WordNet id like 'n02084071' (pos letter + 8-digit offset).")
    try:
        return reader.synset_from_pos_and_offset(wnid[0], int(wnid[1:]))
    except Exception as e:  # nltk raises WordNetError (or others) for unknown offsets
        raise ValueError(f"{what} {wnid!r} is not in this WordNet ({reader.get_version()}): {e}") from e


def wordnet_taxonomy(
    fine_wnids: Sequence[str],
    level_wnids: Sequence[Sequence[str]],
    level_names: Optional[Sequence[str]] = None,
    wordnet_dir: Optional[PathLike] = None,
) -> Taxonomy:
    """Taxonomy of WordNet ids (ImageNet-style ``"n02084071"``) through hypernym closure.

    Every fine synset's ancestor at level ``l`` is the one synset of
    ``level_wnids[l - 1]`` among the fine synset itself and its (instance)
    hypernym closure in WordNet; the same holds between the coarser levels, so
    the result is a tree (a class with two parents raises).

    Args:
        fine_wnids: the fine classes, in class-id order (e.g. a dataset's label order).
        level_wnids: for each coarser level, finest first, its WordNet ids in
            class-id order. Every listed id must be the ancestor of some fine class.
        level_names: level names, finest first (default ``("level0", ...)``).
        wordnet_dir: a WordNet dict directory (``data.noun``, ``index.noun``, ...);
            default ``$HCAST_WORDNET_DIR``, then ``/usr/share/wordnet`` (Debian's
            ``wordnet-base``), then nltk's ``corpora/wordnet``. Read with nltk.

    Class names are the WordNet ids; ``synset.name()`` etc. can be had with nltk.

    Raises:
        FileNotFoundError: no WordNet found.
        ValueError: a malformed or unknown WordNet id; a fine class with no or with
            several ancestors at a level (naming both); a coarser id never used.
    """
    reader = _wordnet_reader(wordnet_dir)
    fine_wnids = [str(w) for w in fine_wnids]
    levels = [[str(w) for w in lv] for lv in level_wnids]
    if isinstance(level_wnids, (str, bytes)) or any(isinstance(lv, str) for lv in level_wnids):
        raise TypeError("level_wnids must be a list of lists of WordNet ids, one list per coarser level.")
    level_sets = []
    for l, lv in enumerate(levels, start=1):
        syn = {}
        for w in lv:
            if w in syn:
                raise ValueError(f"WordNet id {w!r} is listed twice at level {l}.")
            syn[w] = _synset_of(reader, w, f"level_wnids[{l - 1}] entry")
        level_sets.append(syn)

    def ancestors_in(wnid: str, l: int, what: str) -> str:
        s = _synset_of(reader, wnid, what)
        closure = {s} | set(s.closure(lambda x: x.hypernyms() + x.instance_hypernyms()))
        hits = [w for w, t in level_sets[l - 1].items() if t in closure]
        if not hits:
            raise ValueError(
                f"{what} {wnid!r} ({s.name()}) has no ancestor among the level-{l} WordNet ids; add one of its "
                f"hypernyms to level_wnids[{l - 1}]."
            )
        if len(hits) > 1:
            raise ValueError(
                f"{what} {wnid!r} ({s.name()}) has {len(hits)} ancestors at level {l}: {hits}; a class needs "
                f"exactly one parent, so keep one of them."
            )
        return hits[0]

    named_paths = []
    for w in fine_wnids:
        path = [w]
        for l in range(1, len(levels) + 1):
            path.append(ancestors_in(w, l, "fine class"))
        named_paths.append(tuple(path))
    # The coarser levels must nest too: each level-l id's own level-(l+1) ancestor must agree with
    # its fine classes' (from_named_paths raises "two parents" otherwise).
    for l in range(1, len(levels)):
        for w in levels[l - 1]:
            up = ancestors_in(w, l + 1, f"level-{l} class")
            for p in named_paths:
                if p[l] == w and p[l + 1] != up:
                    raise ValueError(
                        f"level-{l} class {w!r} lies under {up!r} at level {l + 1}, but its fine class {p[0]!r} "
                        f"lies under {p[l + 1]!r}: the levels do not nest."
                    )
    if len(set(fine_wnids)) != len(fine_wnids):
        dup = next(w for w in fine_wnids if fine_wnids.count(w) > 1)
        raise ValueError(f"fine class {dup!r} is listed twice in fine_wnids.")
    return Taxonomy.from_named_paths(named_paths, level_names=level_names, orders=[fine_wnids] + levels)
