"""``bpgpu train --recipe``, ``--augment`` and ``--schedule``: the recipes table is valid, explicit
options override a recipe, bad specs are one-line errors (exit 2) before any work, and a run
with augmentation and a schedule checkpoints and resumes from the checkpoint alone."""

import json
import subprocess
import sys

import pytest

from bpgpu.augment import make_augment
from bpgpu.cli import RESUMED_OPTIONS, _apply_recipe, build_parser, main
from bpgpu.datasets.named import NAMES
from bpgpu.recipes import RECIPES, recipe_for
from bpgpu.schedules import make_schedule


def _args(argv):
    args = build_parser().parse_args(argv)
    args.argv = list(argv)
    return args


def test_every_recipe_names_real_options_with_valid_values():
    train = build_parser().train_parser
    dests = {a.dest for a in train._actions}
    for name, per_dataset in RECIPES.items():
        for dataset, options in per_dataset.items():
            assert dataset in NAMES
            assert set(options) <= dests, set(options) - dests
            make_augment(options.get("augment"))
            make_schedule(options.get("schedule"), options.get("lr", 0.1),
                          options.get("epochs", 10))
            args = _args(["train", "--recipe", name, "--dataset", dataset])
            _apply_recipe(args)
            for key, value in options.items():
                assert getattr(args, key) == value


def test_explicit_options_override_the_recipe(capsys):
    args = _args(["train", "--recipe", "best", "--epochs", "3", "--hidden", "64", "--lr=0.2"])
    _apply_recipe(args)
    best = recipe_for("best", "mnist")
    assert (args.epochs, args.hidden, args.lr) == (3, [64], 0.2)
    assert args.augment == best["augment"] and args.dropout == best["dropout"]
    line = capsys.readouterr().err
    assert line.startswith("recipe best for mnist:") and "--epochs" not in line
    assert f"--augment {best['augment']}" in line


def test_recipe_lookup_errors():
    with pytest.raises(KeyError, match="not for dataset"):
        recipe_for("best", "xor")
    with pytest.raises(KeyError, match="unknown recipe"):
        recipe_for("fastest", "mnist")
    assert recipe_for("best", "fashion") == recipe_for("best", "fashion-mnist")


@pytest.mark.parametrize("argv,message", [
    (["--augment", "shift=x"], "augment: shift='x' is not an integer"),
    (["--augment", "rotate=400"], "at most 180"),
    (["--schedule", "cosine:warmup=20", "--epochs", "3"], "warmup (20) must be shorter"),
    (["--schedule", "exponential"], "unknown schedule 'exponential'"),
    (["--recipe", "best", "--dataset", "moons"], "has settings for mnist, fashion-mnist"),
    (["--dataset", "moons", "--augment", "shift=1"], "not a square image"),
])
def test_bad_specs_are_one_line_and_exit_2(argv, message, capsys):
    assert main(["train", "--quiet"] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bpgpu: error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_train_with_augment_and_schedule_checkpoints_and_resumes(tmp_path):
    assert {"augment", "schedule"} <= set(RESUMED_OPTIONS)
    ck, js = tmp_path / "c.npz", tmp_path / "run.json"
    common = [sys.executable, "-m", "bpgpu", "train", "--quiet", "--backend", "numpy"]
    first = subprocess.run(common + ["--hidden", "16", "--epochs", "1", "--augment",
                                     "shift=1,rotate=5", "--schedule", "step:every=1,factor=0.5",
                                     "--checkpoint", str(ck)],
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(common + ["--resume", str(ck), "--epochs", "2", "--json", str(js)],
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    record = json.loads(js.read_text())
    assert record["fit"]["augment"] == "shift=1,rotate=5"
    assert record["history"]["lr"] == [0.05, 0.025] and record["history"]["epoch"] == [1, 2]
