"""Inputs that were accepted but wrong (issue 20, items 9, 12, 14 and 16): each is refused with
one clear line before any training (the CLI through a subprocess), or a precise exception in
the API."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import bpgpu
from bpgpu.datasets import load_dataset, write_idx
from bpgpu.errors import BpgpuError, ConfigError, DataError


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bpgpu"] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=dict(os.environ, BPGPU_BACKEND="numpy"))


def refused(res, *fragments):
    """Exit 2, one ``bpgpu: error:`` line holding every fragment, no traceback, no epoch run,
    nothing saved."""
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("bpgpu:")]
    assert len(lines) == 1 and lines[0].startswith("bpgpu: error:"), res.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "epoch 1" not in res.stderr and "test: loss" not in res.stdout, res.stderr
    return lines[0]


def write_csv(path, labels, columns=2):
    rows = "".join(",".join(str((i * 7 + c) % 11) for c in range(columns)) + f",{label}\n"
                   for i, label in enumerate(labels))
    path.write_text(",".join(f"x{c}" for c in range(columns)) + ",label\n" + rows)
    return path


def write_idx_dir(d, train_shape, test_shape, labels=None):
    """An IDX directory of random images: ``train_shape`` and ``test_shape`` are (N, H, W)."""
    d.mkdir()
    rng = np.random.default_rng(0)
    for split, shape in (("train", train_shape), ("t10k", test_shape)):
        write_idx(d / f"{split}-images-idx3-ubyte", rng.integers(0, 256, shape, dtype=np.uint8))
        lab = (labels if labels is not None else np.arange(shape[0])) % 10
        write_idx(d / f"{split}-labels-idx1-ubyte", np.asarray(lab[:shape[0]], np.uint8))
    return d


# ------------------------------------------------------------------ item 9: one class
def test_a_csv_target_with_one_class_is_refused(tmp_path):
    csv = write_csv(tmp_path / "one.csv", ["yes"] * 40)
    refused(run("train", "--dataset", csv, "--save", tmp_path / "m.npz"),
            "a classifier needs at least 2 classes", "'yes'")
    assert not (tmp_path / "m.npz").exists()
    with pytest.raises(DataError, match="at least 2 classes"):
        load_dataset(csv)


def test_a_one_class_idx_directory_is_refused(tmp_path):
    d = write_idx_dir(tmp_path / "idx", (30, 4, 4), (10, 4, 4), labels=np.zeros(30, int))
    refused(run("train", "--dataset", d), "a classifier needs at least 2 classes")


def test_a_softmax_needs_two_outputs_and_a_classifier_two_classes():
    with pytest.raises(ConfigError, match="softmax output needs at least 2 units"):
        bpgpu.MLP([784, 1], output="softmax", loss="ce")
    bpgpu.MLP([4, 1], output="sigmoid", loss="bce")                  # one output: still fine
    from bpgpu.sklearn import BPClassifier
    with pytest.raises(ValueError, match="at least 2 classes"):
        BPClassifier().partial_fit(np.zeros((10, 2)), np.zeros(10, int), classes=[0])


# ------------------------------------------------------------------ item 12: gradcheck
@pytest.mark.parametrize("eps", ["0", "nan", "-1e-6", "inf"])
def test_gradcheck_refuses_a_step_that_is_not_a_finite_positive_number(eps):
    refused(run("gradcheck", "--dataset", "xor", f"--eps={eps}"), "--eps", "finite number > 0")


def test_gradcheck_of_a_regression_csv_checks_the_network_train_builds(tmp_path):
    csv = tmp_path / "reg.csv"
    csv.write_text("a,b,y\n" + "".join(f"{i % 7},{i % 5},{(i % 7) * 0.5 + (i % 5):.2f}\n"
                                       for i in range(60)))
    res = run("gradcheck", "--dataset", csv, "--hidden", "4")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "identity" in res.stdout and "mse" in res.stdout and "(OK" in res.stdout, res.stdout


# ------------------------------------------------------------------ item 14: dataset shapes
def test_an_idx_directory_with_no_images(tmp_path):
    d = write_idx_dir(tmp_path / "idx", (0, 4, 4), (10, 4, 4))
    refused(run("train", "--dataset", d), "holds no images")


def test_an_idx_directory_whose_splits_differ_in_image_size(tmp_path):
    d = write_idx_dir(tmp_path / "idx", (30, 4, 4), (10, 5, 5))
    refused(run("train", "--dataset", d, "--save", tmp_path / "m.npz"), "4x4", "5x5")
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("rows", [1, 2])
def test_a_csv_with_too_few_rows_to_test(tmp_path, rows):
    csv = write_csv(tmp_path / "few.csv", ["a", "b"][:rows] * 1)
    line = refused(run("train", "--dataset", csv))
    assert "few.csv" in line and ("rows" in line or "classes" in line), line


# ------------------------------------------------------------------ item 16: numbers and augment
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_weight_decay_must_be_finite(value):
    refused(run("train", "--dataset", "moons", f"--weight-decay={value}"), "weight_decay")


@pytest.mark.parametrize("name", ["input_scale", "input_shift"])
def test_input_scale_and_shift_must_be_finite(name):
    for bad in (math.nan, math.inf):
        with pytest.raises(ConfigError, match="finite"):
            bpgpu.MLP([2, 3, 2], **{name: bad})


def test_an_augment_shift_larger_than_the_image_is_refused():
    from bpgpu.augment import resolve_augment
    with pytest.raises(ConfigError, match="shift=28 would move 28x28 images"):
        resolve_augment("shift=28", 784)
    assert resolve_augment("shift=27", 784).shift == 27
    X = np.zeros((8, 28, 28), np.uint8)
    with pytest.raises(BpgpuError, match="shift=99999999999"):
        bpgpu.MLP([784, 4, 10], backend="numpy").fit(X, np.arange(8) % 10, epochs=1,
                                                     augment="shift=99999999999")


def test_an_augment_shape_that_does_not_match_the_data_is_refused():
    from bpgpu.augment import resolve_augment
    with pytest.raises(ConfigError, match="27x29 is 783 pixels"):
        resolve_augment("shape=27x29", 784)                         # no transform: still checked
    with pytest.raises(ConfigError, match="does not match the images of X, 28x28"):
        resolve_augment("shape=14x56,shift=2", 784, (28, 28))
    assert resolve_augment("shape=28x28", 784) is None              # nothing to do: no augment


def test_augment_errors_on_the_command_line(tmp_path):
    d = write_idx_dir(tmp_path / "idx", (30, 4, 4), (10, 4, 4))
    refused(run("train", "--dataset", d, "--augment", "shift=99999999999"),
            "shift=99999999999", "at most shift=3")
    refused(run("train", "--dataset", d, "--augment", "shape=3x5"), "shape 3x5")
