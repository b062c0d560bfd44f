"""Write hcast/hierarchy/benchmarks/*.json from the H-CAST authors' metadata.

How the package data files were made (run once; the files are committed):

    git clone https://github.com/ngocquanai/HiOT && git -C HiOT checkout b1a222b
    git clone https://github.com/PRIS-CV/Fine-Grained-or-Not
    python scripts/make_benchmark_taxonomies.py HiOT Fine-Grained-or-Not

Each file keeps the authors' label orders (the released heads depend on them) and names
its sources in its ``"source"`` field. Only the standard library is used (the CUB names
come from an .xlsx file, read as the zip of XML it is).
"""
from __future__ import annotations

import argparse
import ast
import gzip
import json
import subprocess
import sys
import zipfile
import xml.etree.ElementTree as ET
from pathlib import Path

HIOT_COMMIT = "b1a222b"
HIOT = f"github.com/ngocquanai/HiOT@{HIOT_COMMIT}"
OUT = Path(__file__).resolve().parent.parent / "hcast" / "hierarchy" / "benchmarks"


def git_show(repo: Path, rev: str, path: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def taxonomy_dict(parents, names, level_names):
    counts = [len(parents[0])] + [len(p) for p in parents[1:]] + [max(parents[-1]) + 1]
    return {"format": "hcast.taxonomy", "version": 1, "level_names": list(level_names), "num_classes": counts,
            "parents": [list(p) for p in parents], "names": names}


def write(name: str, data: dict, compress: bool = False) -> None:
    text = json.dumps(data, indent=None if compress else 1, ensure_ascii=False, separators=(",", ":") if compress else None)
    path = OUT / (name + (".json.gz" if compress else ".json"))
    if compress:
        path.write_bytes(gzip.compress(text.encode(), compresslevel=9, mtime=0))
    else:
        path.write_text(text + "\n", encoding="utf-8")
    print(f"{path.name}: {path.stat().st_size} bytes")


def breeds(hiot: Path) -> None:
    for subset in ("living17", "nonliving26", "entity13", "entity30"):
        labels = json.loads(git_show(hiot, HIOT_COMMIT, f"data/{subset}_label_names.json"))
        supers = json.loads(git_show(hiot, HIOT_COMMIT, f"data/{subset}_super_names.json"))
        tree = json.loads(git_show(hiot, HIOT_COMMIT, f"data/{subset}_tree.json"))
        n = len(labels)
        assert [row[0] for row in tree] == list(range(n))
        fine = [labels[str(i)] for i in range(n)]  # [ImageNet index, WordNet id, description]
        parents = [[row[1] for row in tree]]
        write(f"breeds_{subset}", {
            "source": (f"{HIOT} data/{subset}_label_names.json (fine classes in the authors' label order), "
                       f"data/{subset}_super_names.json and data/{subset}_tree.json; BREEDS (Santurkar et al., "
                       f"ICLR 2021) source split."),
            "benchmark": f"breeds-{subset}",
            "taxonomy": taxonomy_dict(parents, [[f[2] for f in fine], [supers[str(i)] for i in range(len(supers))]],
                                      ("subclass", "superclass")),
            "wnids": [f[1] for f in fine],
            "imagenet_index": [f[0] for f in fine],
        })


def read_xlsx_rows(path: Path):
    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    with zipfile.ZipFile(path) as z:
        strings = ["".join(t.text or "" for t in si.iter(f"{{{ns['m']}}}t"))
                   for si in ET.fromstring(z.read("xl/sharedStrings.xml")).findall("m:si", ns)]
        sheet = ET.fromstring(z.read("xl/worksheets/sheet1.xml"))
    for row in sheet.iter(f"{{{ns['m']}}}row"):
        values = []
        for cell in row.findall("m:c", ns):
            v = cell.find("m:v", ns)
            text = v.text if v is not None else ""
            values.append(strings[int(text)] if cell.get("t") == "s" else text)
        yield values


def python_list(source: str, name: str):
    """The literal list ``name = [...]`` in a Python file, without running the file."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(name)


def cub(hiot: Path, pris: Path) -> None:
    trees = python_list(git_show(hiot, HIOT_COMMIT, "deit/dataset/birds_get_tree_target_2.py"), "trees")
    # rows: [id, species, family, order, (Chinese names)]
    sheet = pris / "birds" / "Birds_name.xlsx"
    if not sheet.is_file():
        sheet = Path("/tmp/Birds_name.xlsx")
        sheet.write_bytes(subprocess.run(["git", "-C", str(pris), "show", "HEAD:birds/Birds_name.xlsx"],
                                         check=True, capture_output=True).stdout)
    rows = [r for r in read_xlsx_rows(sheet)][1:]
    assert len(trees) == len(rows) == 200
    # Species names as CUB-200-2011's classes.txt spells them (the sheet differs in two).
    rows[69][1], rows[140][1] = "Green_Violetear", "Artic_Tern"
    species, family_of, order_of, fam_names, ord_names = [], [], [], {}, {}
    for i, (tree, row) in enumerate(zip(trees, rows)):
        assert tree[0] == i + 1 == int(row[0])
        species.append(row[1])
        f, o = tree[2] - 1, tree[1] - 1  # trees rows are [species, order, family], 1-based
        family_of.append(f)
        fam_names.setdefault(f, []).append(row[2])
        ord_names.setdefault(o, row[3])
    fam_order = {}
    for s, f in enumerate(family_of):
        fam_order.setdefault(f, trees[s][1] - 1)
    families = []
    for f in range(len(fam_names)):
        names = sorted(set(fam_names[f]), key=fam_names[f].count, reverse=True)
        families.append(names[0])
    # The authors' tree gives the Red-legged Kittiwake (species 84) a family id of its own under
    # Coraciiformes; its name in the source is Laridae, the gulls' family. Keep names unique.
    kittiwake = family_of[83]
    families[kittiwake] = "Laridae (Red-legged Kittiwake)"
    write("cub200", {
        "source": (f"{HIOT} deit/dataset/birds_get_tree_target_2.py (ids, from github.com/PRIS-CV/Fine-Grained-or-Not "
                   f"birds/birds_get_tree_target_2.py); family and order names from "
                   f"github.com/PRIS-CV/Fine-Grained-or-Not birds/Birds_name.xlsx (commit 8a18810). Species ids are CUB-200-2011's class ids minus 1."),
        "benchmark": "cub200",
        "notes": [
            "species names are CUB-200-2011's class folder names (classes.txt without the 'NNN.'); Birds_name.xlsx "
            "spells 070 Green_Violet_ear and 141 Arctic_Tern.",
            "family 7 holds only species 84 (Red_legged_Kittiwake) and sits under Coraciiformes in the authors' "
            "tree; the source names its family Laridae like family 4 (gulls and terns), renamed here to keep names "
            "unique.",
            "family 23: the source names it Passerellidae for every species but Dark_eyed_Junco (Emberizidae).",
        ],
        "taxonomy": taxonomy_dict([family_of, [fam_order[f] for f in range(len(fam_order))]],
                                  [species, families, [ord_names[o] for o in range(len(ord_names))]],
                                  ("species", "family", "order")),
    })


def aircraft(hiot: Path) -> None:
    trees = python_list(git_show(hiot, HIOT_COMMIT, "deit/dataset/aircraft.py"), "trees")
    csv = git_show(hiot, HIOT_COMMIT, "data/Air.csv").lstrip("\ufeff")
    variants = {}
    for line in csv.splitlines():
        name, index = line.rsplit(",", 1)
        variants[int(index) - 1] = name.strip().strip('"')
    assert sorted(variants) == list(range(100)) and len(trees) == 100
    fam_of = [t[1] - 1 for t in trees]
    man_of = {}
    for t in trees:
        man_of.setdefault(t[1] - 1, t[2] - 1)
    write("fgvc_aircraft", {
        "source": (f"{HIOT} data/Air.csv (variant names in the authors' label order) and deit/dataset/aircraft.py "
                   f"`trees` (variant -> family -> manufacturer ids, from github.com/PRIS-CV/Fine-Grained-or-Not). "
                   f"Family and manufacturer names are read from the dataset's images_family_*.txt and "
                   f"images_manufacturer_*.txt at load time."),
        "benchmark": "fgvc-aircraft",
        "taxonomy": taxonomy_dict([fam_of, [man_of[f] for f in range(len(man_of))]],
                                  [[variants[i] for i in range(100)], None, None],
                                  ("variant", "family", "manufacturer")),
    })


def inat21(hiot: Path) -> None:
    tree = json.loads(git_show(hiot, HIOT_COMMIT, "data/inat21_3tree.json"))
    assert [r[0] for r in tree] == list(range(10000))
    fam_order = {}
    for _, f, o in tree:
        fam_order.setdefault(f, o)
    write("inat21_mini", {
        "source": (f"{HIOT} data/inat21_3tree.json: rows [species, family, order]; species ids are iNat21's "
                   f"category ids. Class names are read from the dataset's train_mini.json / val.json."),
        "benchmark": "inat21-mini",
        "taxonomy": taxonomy_dict([[r[1] for r in tree], [fam_order[f] for f in range(len(fam_order))]],
                                  [None, None, None], ("species", "family", "order")),
    }, compress=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hiot", type=Path, help="a git clone of github.com/ngocquanai/HiOT")
    parser.add_argument("pris", type=Path, help="a git clone of github.com/PRIS-CV/Fine-Grained-or-Not")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    breeds(args.hiot)
    cub(args.hiot, args.pris)
    aircraft(args.hiot)
    inat21(args.hiot)


if __name__ == "__main__":
    sys.exit(main())
