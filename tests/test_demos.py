"""Every demo runs (reduced where it is slow), reaches its floor, and writes a real picture."""

import subprocess
import sys

import numpy as np
import pytest

from bpgpu import demos

pytest.importorskip("matplotlib")


def assert_real_png(path, min_w=300, min_h=200):
    import matplotlib.image as mpimg
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert w >= min_w and h >= min_h, (w, h)
    assert img[..., :3].std() > 0.02          # not a blank canvas


def test_moons(tmp_path):
    res = demos.moons(out=str(tmp_path), verbose=False)
    assert res["train_accuracy"] >= 0.95 and res["test_accuracy"] >= 0.93
    assert_real_png(res["picture"])


def test_xor_all_four_correct(capsys):
    res = demos.xor()
    assert res["correct"] == 4
    assert "target  output" in capsys.readouterr().out


def test_regression(tmp_path):
    res = demos.regression(out=str(tmp_path), verbose=False)
    assert res["rmse"] < 0.1
    assert_real_png(res["picture"])


def test_digits_scorecard_after_one_epoch(tmp_path, capsys):
    """Rashid's recogniser, one full epoch: performance >= 0.94 (he reports ~0.95)."""
    res = demos.digits(out=str(tmp_path))
    assert res["performance"] >= 0.94
    assert "scorecard" in capsys.readouterr().out
    assert_real_png(res["picture"], 600, 400)


def test_costs_show_the_learning_slowdown(tmp_path):
    res = demos.costs(out=str(tmp_path), verbose=False)
    quad, ce = np.array(res["quadratic"]), np.array(res["cross_entropy"])
    # after 30 epochs the cross-entropy neuron has learned far more, relative to its start
    assert ce[30] / ce[0] < 0.5 * quad[30] / quad[0]
    assert_real_png(res["picture"])


def test_init_comparison(tmp_path):
    res = demos.init(out=str(tmp_path), train_samples=3000, epochs=3, verbose=False)
    curves = res["curves"]
    assert set(curves) == {"large", "normal", "xavier", "he"}
    assert curves["normal"][-1] > curves["large"][-1]     # the textbook's point
    assert_real_png(res["picture"])


def test_tabular(tmp_path):
    pytest.importorskip("sklearn")
    res = demos.tabular(out=str(tmp_path), verbose=False)
    assert res["test_accuracy"] >= 0.9


def test_demo_command(tmp_path):
    res = subprocess.run([sys.executable, "-m", "bpgpu", "demo", "moons", "--out", str(tmp_path),
                          "--backend", "numpy"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "accuracy" in res.stdout and "moons.png" in res.stdout
    assert (tmp_path / "moons.png").is_file()


def test_train_plot_writes_history_confusion_and_weights(tmp_path):
    plot = tmp_path / "run.png"
    res = subprocess.run([sys.executable, "-m", "bpgpu", "train", "--epochs", "1", "--quiet",
                          "--hidden", "16", "--plot", str(plot)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    for p in (plot, tmp_path / "run-confusion.png", tmp_path / "run-weights.png"):
        assert_real_png(p)


def test_plot_without_matplotlib_says_how(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; from bpgpu.cli import main; "
            f"sys.exit(main(['train', '--dataset', 'xor', '--plot', r'{tmp_path / 'p.png'}']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 2 and "pip install 'bpgpu[plot]'" in res.stderr
    assert not (tmp_path / "p.png").exists()
