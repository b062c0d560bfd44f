"""The `hcast` command on bad inputs and faults (issue 21).

Each case ends with a correct result, or exit status 2 and one line on stderr that names
the argument or file, says what was expected and what to do, and no traceback. What
depends on the process (stderr closed as `2>&-` does, stdout on `/dev/full`, the
exit status and stderr of a real `hcast` run) runs `python -m hcast.cli` in a
subprocess; the argument checks call :func:`hcast.cli.main` in this process, which is
the same code minus one interpreter start-up per case (about 10 s each on 2 shared cores).
The model is a tiny H-CAST fine-tuned once (module fixture, in a subprocess) on an image
folder of real Fashion-MNIST garments whose validation split holds a really truncated PNG.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image

from hcast.cli import main as cli_main
from hcast.data import FashionMNIST, UnreadableImageWarning
from hcast.hierarchy import Taxonomy

ROOT = Path(__file__).resolve().parents[1]

# a small H-CAST (width 32, one block per stage) on 32x32 images with 16 SLIC superpixels
TINY = ["--model", "hcast_tiny", "--model-kwargs", "embed_dim=32", "depths=[1,1,1,1]", "num_heads=2",
        "--input-size", "32", "--num-segments", "16", "--superpixel-method", "slic",
        "--workers", "0", "--device", "cpu", "--threads", "1", "--batch-size", "8"]
# four Fashion-MNIST classes (label, folder name, group)
CLASSES = [(0, "tshirt", "tops"), (2, "pullover", "tops"), (7, "sneaker", "shoes"), (9, "boot", "shoes")]


def hcast(*args, close_stderr: bool = False, stdout=subprocess.PIPE, timeout: int = 600):
    """Run `python -m hcast.cli ARGS` on this checkout; ``close_stderr`` runs it as `2>&-` does."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "hcast.cli", *map(str, args)], stdout=stdout,
                          stderr=subprocess.DEVNULL if close_stderr else subprocess.PIPE, text=True, env=env,
                          timeout=timeout, preexec_fn=(lambda: os.close(2)) if close_stderr else None)


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def main(capsys, *args) -> Result:
    """`hcast ARGS` in this process (hcast.cli.main), with what it printed."""
    capsys.readouterr()
    status = cli_main([str(a) for a in args])
    captured = capsys.readouterr()
    return Result(status, captured.out, captured.err)


def usage_error(result, *fragments: str) -> str:
    """Assert exit status 2, one error line naming each fragment, and no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def taxonomy(order=CLASSES) -> Taxonomy:
    return Taxonomy.from_named_paths([(name, group) for _, name, group in order])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run folder, data folder, truncated file): one epoch of fine-tuning on an image folder
    of 16 training and 8 validation garments plus one truncated PNG in the validation split."""
    root = tmp_path_factory.mktemp("bad_cli")
    data = root / "data"
    train = FashionMNIST(split="train")
    for split, count in (("train", 4), ("val", 2)):
        for label, name, _ in CLASSES:
            (data / split / name).mkdir(parents=True)
            hits = np.flatnonzero(train.targets.numpy() == label)[:4 + 2]
            for i in (hits[:4] if split == "train" else hits[4:4 + count]):
                train[int(i)][0].save(data / split / name / f"{i}.png")
    cut = data / "val" / "tshirt" / "cut.png"
    shutil.copy(next((data / "train" / "tshirt").iterdir()), cut)
    cut.write_bytes(cut.read_bytes()[:80])  # a header and half a chunk: Image.open works, decoding fails
    taxonomy().save(root / "taxonomy.json")
    out = root / "run"
    result = hcast("finetune", *TINY, "--no-progress", "--data", data, "--taxonomy", root / "taxonomy.json",
                   "--output", out, "--epochs", "1")
    assert result.returncode == 0, result.stderr
    return out, data, cut, result


# ----------------------------------------------------------------------------- faults (subprocesses)


def test_a_truncated_validation_image_is_named_and_the_epoch_is_kept(run):
    out, _, cut, result = run
    assert "Traceback" not in result.stderr
    assert f"image {str(cut)!r} cannot be read" in result.stderr and "left out" in result.stderr
    assert (out / "checkpoint-latest.pth").is_file() and (out / "model.safetensors").is_file()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["epoch"] == 1 and log[0]["val"]["num_samples"] == 8  # the 8 readable validation images


def test_evaluate_with_stderr_closed(run):
    """`2>&-` (sys.stderr is None): the progress bar check crashed with exit 1 and no message."""
    out, data, _, _ = run
    result = hcast("evaluate", out, data, "--split", "val", "--workers", "0", "--device", "cpu",
                   "--max-tokens", "32", close_stderr=True)
    assert result.returncode == 0 and "(8 images" in result.stdout


def test_resume_refuses_another_taxonomy_and_continues_with_stderr_closed(run, tmp_path, capsys):
    out, data, _, _ = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    before = (copy / "taxonomy.json").read_text()
    reordered = tmp_path / "reordered.json"
    taxonomy([CLASSES[1], CLASSES[0], CLASSES[2], CLASSES[3]]).save(reordered)  # same sizes, swapped labels
    args = ["finetune", *TINY, "--data", data, "--output", copy, "--epochs", "2", "--resume"]
    line = usage_error(main(capsys, *args, "--no-progress", "--taxonomy", reordered), "--resume", "another taxonomy",
                       "class 0 of level 0 is 'tshirt' there and 'pullover' here")
    assert "Resume with the taxonomy it was trained on" in line
    three_levels = tmp_path / "three.json"
    Taxonomy.from_named_paths([(n, g, "all") for _, n, g in CLASSES]).save(three_levels)
    usage_error(main(capsys, *args, "--no-progress", "--taxonomy", three_levels), "--resume",
                "(4, 2) there, (4, 2, 1) here")
    assert (copy / "taxonomy.json").read_text() == before  # nothing rewritten
    # the right taxonomy resumes: progress bars asked for (the default), stderr closed
    result = hcast(*args, "--taxonomy", out.parent / "taxonomy.json", close_stderr=True)
    assert result.returncode == 0, result.stdout
    assert [json.loads(x)["epoch"] for x in (copy / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_an_unwritable_stdout_is_one_line_not_a_traceback(run):
    """`>/dev/full`: the first print (precision.py's) raised ENOSPC with a traceback."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    out, data, _, _ = run
    image = next((data / "val" / "boot").iterdir())
    with open("/dev/full", "w") as full:  # opened for writing only; the device is not touched otherwise
        result = hcast("predict", out, image, "--device", "cpu", "--precision", "auto", stdout=full)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert result.stderr.strip() == ("hcast predict: error: cannot write to standard output: No space left on "
                                     "device; redirect it to a file or device with space.")


def test_export_to_an_existing_folder_stops_first_with_status_2(tmp_path):
    """It ran the whole export (40 s), then blamed "--max-tokens / --img-size" for "Is a directory"."""
    usage_error(hcast("export", "hcast_tiny", "--no-pretrained", "-o", tmp_path),
                f"--output: {str(tmp_path)!r} is a folder; pass the path of a file")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- bad inputs (hcast.cli.main)


def test_evaluate_leaves_the_truncated_image_out_and_says_so(run, capsys):
    out, data, cut, _ = run
    with pytest.warns(UnreadableImageWarning, match=f"image {str(cut)!r} cannot be read"):
        result = main(capsys, "evaluate", out, data, "--split", "val", "--workers", "0", "--no-progress",
                      "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "(8 images" in result.stdout and "1 of 9 images could not be read" in result.stderr


def test_predict_refuses_a_reordered_taxonomy_unless_it_replaces_the_stored_one(run, tmp_path, capsys):
    out, data, _, _ = run
    image = next((data / "val" / "sneaker").iterdir())
    reordered = tmp_path / "reordered.json"
    taxonomy([CLASSES[1], CLASSES[0], CLASSES[2], CLASSES[3]]).save(reordered)
    usage_error(main(capsys, "predict", out, image, "--taxonomy", reordered, "--device", "cpu"),
                f"--taxonomy {str(reordered)!r} disagrees with the taxonomy the model stores", "--replace-taxonomy")
    stored = main(capsys, "predict", out, image, "--device", "cpu", "--json", tmp_path / "a.json")
    replaced = main(capsys, "predict", out, image, "--taxonomy", reordered, "--replace-taxonomy", "--device", "cpu",
                    "--json", tmp_path / "b.json")
    assert stored.returncode == 0 and replaced.returncode == 0, replaced.stderr
    a, b = (json.loads((tmp_path / f).read_text())[0]["paths"][0]["levels"][0] for f in ("a.json", "b.json"))
    swap = {"tshirt": "pullover", "pullover": "tshirt"}
    assert b["name"] == swap.get(a["name"], a["name"]) and b["probability"] == a["probability"]
    three = tmp_path / "three.json"
    Taxonomy.from_named_paths([(n, g, "all") for _, n, g in CLASSES]).save(three)
    usage_error(main(capsys, "predict", out, image, "--taxonomy", three, "--replace-taxonomy", "--device", "cpu"),
                "(4, 2, 1) classes per level but the model's heads have (4, 2)")


def test_a_16_bit_png_predicts_as_its_8_bit_original(run, tmp_path, capsys):
    out, data, _, _ = run
    original = next((data / "val" / "boot").iterdir())
    deep = tmp_path / "boot16.png"
    Image.fromarray(np.asarray(Image.open(original)).astype(np.uint16) * 257).save(deep)
    assert Image.open(deep).mode.startswith("I")
    results = []
    for image in (original, deep):
        result = main(capsys, "predict", out, image, "--device", "cpu", "--json", tmp_path / f"{image.stem}.json")
        assert result.returncode == 0, result.stderr
        results.append(json.loads((tmp_path / f"{image.stem}.json").read_text())[0]["paths"])
    assert results[0] == results[1]


def test_token_budgets_beyond_the_ceiling_or_below_the_ids_are_refused(run, tmp_path, capsys):
    out, data, _, _ = run
    args = ["evaluate", out, data, "--split", "val", "--workers", "0", "--device", "cpu", "--no-progress"]
    usage_error(main(capsys, *args, "--max-tokens", "1000000"), "--max-tokens: expected at most 1024",
                "one token per pixel of the model's 32x32 inputs")
    usage_error(main(capsys, *args, "--max-tokens", "10"), "--max-tokens: 10 is below the 16 superpixels",
                "--max-tokens 16 or more")
    crafted = tmp_path / "crafted"
    shutil.copytree(out, crafted)
    config = json.loads((crafted / "config.json").read_text())
    config["model_args"]["max_tokens"] = 1048576
    (crafted / "config.json").write_text(json.dumps(config))
    image = next((data / "val" / "boot").iterdir())
    usage_error(main(capsys, "predict", crafted, image, "--device", "cpu"), str(crafted / "config.json"),
                "model_args.max_tokens=1048576 is more than one token per pixel of its 32x32 inputs")
    config["model_args"]["max_tokens"] = 8  # below the 16 superpixels: every forward would fail
    (crafted / "config.json").write_text(json.dumps(config))
    usage_error(main(capsys, "predict", crafted, image, "--device", "cpu"), str(crafted / "config.json"),
                "model_args.max_tokens=8 is below the pretrained_cfg.num_segments=16 superpixels")


@pytest.mark.parametrize("flag, value, message", [
    ("--clip-grad", "-1", "--clip-grad: expected None or 0 (off) or a positive max norm, got -1.0"),
    ("--lr", "inf", "--lr: expected a finite number, got inf"),
    ("--weight-decay", "nan", "--weight-decay: expected a finite number, got nan"),
    ("--kl-weight", "nan", "--kl-weight: expected a finite number, got nan"),
    ("--num-segments", "0", "--num-segments: expected None (the model's) or a positive number of superpixels"),
    ("--seed", "-1", "--seed: expected an integer in [0, 2**31), got -1"),
    ("--drop-path", "1.5", "--drop-path: expected None or a rate in [0, 1), got 1.5"),
    ("--label-smoothing", "1.5", "--label-smoothing: expected a smoothing in [0, 1), got 1.5"),
])
def test_finetune_flags_out_of_range(flag, value, message, capsys):
    usage_error(main(capsys, "finetune", flag, value, "--print-config"), message)


def test_finetune_inputs_checked_before_training(run, tmp_path, capsys):
    out, data, _, _ = run
    base = ["finetune", *TINY, "--no-progress", "--data", data, "--taxonomy", out / "taxonomy.json", "--epochs", "1"]
    usage_error(main(capsys, *base, "--output", tmp_path / "a", "--input-size", "7"),
                "--input-size: 7x7 inputs do not fit the model's stem, whose stride is 8 pixels")
    usage_error(main(capsys, *base, "--output", tmp_path / "b", "--batch-size", "64"),
                "--batch-size: the 16 training images give no full batch of 64", "lower --batch-size")
    (tmp_path / "notes.txt").write_text("keep me")
    usage_error(main(capsys, *base, "--output", tmp_path / "notes.txt"), "--output", "is a file, not a folder")
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_taxonomy_names_with_control_characters_are_refused(run, tmp_path, capsys):
    _, data, _, _ = run
    bad = taxonomy().to_dict()
    bad["names"][1][0] = "to\u202eps"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    usage_error(main(capsys, "finetune", *TINY, "--data", data, "--taxonomy", tmp_path / "bad.json", "--output",
                     tmp_path / "o"), "bad.json", "names[1][0]", "U+202E")


def test_export_checks_its_arguments_before_exporting(tmp_path, capsys):
    args = ["export", "hcast_tiny", "--no-pretrained"]
    usage_error(main(capsys, *args, "-o", tmp_path / "m.onnx", "--max-tokens", "10000000"),
                "--max-tokens: expected at most 4096 (one token per pixel of the 64x64 input")
    usage_error(main(capsys, *args, "-o", tmp_path / "m.onnx", "--img-size", "0", "0"),
                "--img-size: expected (H, W), positive multiples of the model's 8-pixel stem stride")
    (tmp_path / "notes.txt").write_text("x")
    usage_error(main(capsys, *args, "-o", tmp_path / "notes.txt" / "m.onnx"), "--output", "which is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
