"""The bpgpu command through a subprocess: real exit codes, one-line errors, files written or not."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import bpgpu


def run(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "bpgpu", *args], capture_output=True, text=True,
                          timeout=300, env=e)


def assert_clean_error(res, fragment):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpgpu: error:"), res.stderr
    assert fragment in lines[0]


def test_info_lists_backends_and_auto_choice():
    res = run("info")
    assert res.returncode == 0, res.stderr
    for text in ("cpu:", "blas:", "numpy  yes", "auto:", "gpu:"):
        assert text in res.stdout
    rec = json.loads(run("info", "--json").stdout)
    assert rec["auto_backend"] in ("numpy", "numba", "cupy") and rec["cores"] >= 1


def test_train_save_json_then_evaluate(tmp_path):
    model, report = tmp_path / "m.npz", tmp_path / "r.json"
    res = run("train", "--dataset", "moons", "--hidden", "8", "--activation", "tanh", "--init",
              "xavier", "--optimizer", "adam", "--lr", "0.02", "--epochs", "40", "--batch-size",
              "20", "--backend", "numpy", "--save", str(model), "--json", str(report))
    assert res.returncode == 0, res.stderr
    assert "test: loss" in res.stdout and "epoch 40" in res.stderr
    rep = json.loads(report.read_text())
    assert rep["backend"] == "numpy" and len(rep["history"]["loss"]) == 40
    assert rep["test"]["accuracy"] > 0.9 and rep["wall_time_s"] > 0
    res = run("evaluate", str(model), "--dataset", "moons")
    assert res.returncode == 0 and "accuracy" in res.stdout


def test_backend_env_variable():
    res = run("train", "--dataset", "xor", "--hidden", "3", "--epochs", "1", "--quiet",
              env={"BPGPU_BACKEND": "numpy"})
    assert res.returncode == 0 and "backend: numpy" in res.stderr


def test_train_textbook_csv(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("x1,x2,label\n" + "".join(f"{i % 7},{(i * 3) % 5},{'ab'[i % 2]}\n"
                                          for i in range(60)))
    res = run("train", "--dataset", str(p), "--hidden", "4", "--epochs", "2", "--quiet")
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("args,fragment", [
    (["train", "--backend", "tpu"], "argument --backend: invalid choice: 'tpu'"),
    (["train", "--dataset", "nowhere"], "unknown dataset"),
    (["train", "--epochs", "x"], "argument --epochs: expected an integer >= 1, got 'x'"),
    (["train", "--epochs", "0"], "expected an integer >= 1, got 0"),
    (["train", "--hidden", "abc"], "argument --hidden: expected comma-separated integers"),
    (["train", "--seed", "-1"], "argument --seed: expected an integer >= 0"),
    (["train", "--early-stopping", "0"], "argument --early-stopping"),
    (["train", "--save", "/"], "is a directory"),
    (["gradcheck", "--hidden", "3,x"], "argument --hidden"),
    (["bench", "--batch-sizes", "64,x"], "argument --batch-sizes"),
    (["bench", "--samples", "0"], "argument --samples"),
    (["demo", "nope"], "invalid choice: 'nope'"),
    (["evaluate", "/"], "a directory, not a model file"),
    (["train", "--loss", "ce", "--output", "sigmoid", "--dataset", "xor"], "softmax"),
    (["train", "--save", "/no/such/dir/m.npz"], "does not exist"),
    (["train", "--json", "/no/such/dir/r.json"], "does not exist"),
    (["evaluate", "/no/such/model.npz"], "no such file"),
    (["frobnicate"], "invalid choice"),
])
def test_errors_are_one_line_exit_2(args, fragment):
    assert_clean_error(run(*args), fragment)


def test_corrupt_model_file_is_a_clean_error(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"PK\x03\x04garbage")
    assert_clean_error(run("evaluate", str(p)), "bad.npz")


def test_cupy_backend_without_gpu_is_a_clean_error():
    from bpgpu._compat import has_cupy_gpu
    if has_cupy_gpu():
        pytest.skip("a CUDA device works here")
    assert_clean_error(run("train", "--backend", "cupy", "--dataset", "xor"), "cupy")


def test_diverging_run_keeps_no_model(tmp_path):
    model = tmp_path / "m.npz"
    res = run("train", "--dataset", "moons", "--hidden", "16", "--activation", "relu", "--init",
              "large", "--lr", "10000", "--optimizer", "sgd", "--epochs", "30", "--quiet",
              "--save", str(model))
    assert res.returncode in (0, 1)
    if res.returncode == 1:
        assert "diverged" in res.stderr


def test_gradcheck_command():
    res = run("gradcheck", "--dataset", "xor", "--hidden", "3", "--backend", "numpy")
    assert res.returncode == 0, res.stderr
    assert "layer 0" in res.stdout and "layer 1" in res.stdout and "OK" in res.stdout


def test_default_train_reaches_975_on_mnist(tmp_path):
    """The README's main job: the default `bpgpu train` on MNIST (numpy, no GPU) >= 97.5 %."""
    report = tmp_path / "r.json"
    res = run("train", "--quiet", "--backend", "numpy", "--json", str(report))
    assert res.returncode == 0, res.stderr
    rep = json.loads(report.read_text())
    assert rep["test"]["accuracy"] >= 0.975, rep["test"]


def test_version():
    res = run("--version")
    assert res.returncode == 0 and bpgpu.__version__ in res.stdout


def test_env_backend_that_does_not_exist_is_a_clean_error():
    assert_clean_error(run("train", "--dataset", "xor", env={"BPGPU_BACKEND": "tpu"}),
                       "unknown backend")


def test_demo_out_that_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    assert_clean_error(run("demo", "xor", "--out", str(f)), "not a directory")


def test_damaged_inputs_are_one_line(tmp_path):
    """The three escapes issue 10 found: a zip feature numpy cannot read, a non-UTF-8 CSV that is
    not text at all, a bad --hidden (above); each is one line and exit 2."""
    model = tmp_path / "m.npz"
    bpgpu.MLP([2, 3, 2]).save(model)
    data = bytearray(model.read_bytes())
    at = data.find(b"PK\x01\x02")
    data[at + 8] |= 0x20   # "compressed patched data": zipfile raises NotImplementedError
    model.write_bytes(bytes(data))
    assert_clean_error(run("evaluate", str(model), "--dataset", "xor"), "m.npz")
    csv = tmp_path / "bin.csv"
    csv.write_bytes(b"a,b\n1,\x00" + bytes(range(256)) * 1000 + b"\n")
    res = run("train", "--dataset", str(csv), "--epochs", "1", "--quiet")
    assert_clean_error(res, "bin.csv")


def test_latin1_csv_trains(tmp_path):
    """A Latin-1 spreadsheet export loads (the encoding is detected) instead of failing."""
    p = tmp_path / "villes.csv"
    p.write_bytes(("température,région,classe\n" + "".join(
        f"{i % 9},{['Zürich', 'Besançon'][i % 2]},{'ab'[i % 2]}\n" for i in range(40)))
        .encode("latin-1"))
    res = run("train", "--dataset", str(p), "--hidden", "4", "--epochs", "2", "--quiet")
    assert res.returncode == 0, res.stderr


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    """A model larger than memory (e.g. --hidden 10000000000): one line, exit 2 (in-process, with
    the allocation failure simulated rather than provoked)."""
    from bpgpu import cli, mlp

    def no_memory(*a, **k):
        raise MemoryError("Unable to allocate 74.5 GiB")
    monkeypatch.setattr(mlp.MLP, "__init__", no_memory)
    assert cli.main(["train", "--dataset", "xor", "--hidden", "10000000000", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bpgpu: error: not enough memory"), err


def test_choices_come_from_the_module_tables():
    """--activation, --output, --loss, --init, --optimizer, --backend, --dtype and the demo names
    offer exactly what the modules that own them define."""
    from bpgpu import activations, backends, demos, init, network, optim
    from bpgpu.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    want = {"activation": activations.HIDDEN_ACTIVATIONS,
            "output": activations.OUTPUT_ACTIVATIONS, "loss": activations.LOSSES,
            "init": init.INITS, "optimizer": optim.OPTIMIZERS,
            "backend": ("auto",) + backends.backend_names(), "dtype": tuple(network.DTYPES)}
    train = {a.dest: a.choices for a in sub["train"]._actions}
    for dest, names in want.items():
        assert tuple(train[dest]) == tuple(names), dest
    grad = {a.dest: a.choices for a in sub["gradcheck"]._actions}
    for dest in ("activation", "output", "loss", "init", "backend"):
        assert tuple(grad[dest]) == tuple(want[dest]), dest
    for cmd in ("evaluate", "demo"):
        assert tuple(next(a for a in sub[cmd]._actions if a.dest == "backend").choices) == \
            want["backend"]
    assert tuple(next(a for a in sub["demo"]._actions if a.dest == "name").choices) == \
        tuple(demos.DEMOS)
    assert tuple(next(a for a in sub["bench"]._actions if a.dest == "dtype").choices) == \
        want["dtype"]


def _labelled_csv(path):
    rng = np.random.default_rng(0)
    rows = ["gre,gpa,admit"]
    for _ in range(120):
        gre, gpa = rng.uniform(300, 800), rng.uniform(2, 4)
        rows.append(f"{gre:.0f},{gpa:.2f},{'yes' if gre / 800 + gpa / 4 > 1.4 else 'no'}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_class_weight_on_the_command_line_names_the_files_labels(tmp_path):
    data, report = _labelled_csv(tmp_path / "adm.csv"), tmp_path / "r.json"
    res = run("train", "--dataset", str(data), "--target", "admit", "--epochs", "2",
              "--backend", "numpy", "--quiet", "--class-weight", '{"yes": 3}',
              "--json", str(report))
    assert res.returncode == 0, res.stderr
    classes = json.loads(report.read_text())["fit"]["class_weight"]
    assert classes == {"1": 3}                      # 'yes' is the second label of ['no', 'yes']
    res = run("train", "--dataset", str(data), "--target", "admit", "--epochs", "1",
              "--backend", "numpy", "--class-weight", '{"maybe": 3}')
    assert_clean_error(res, "'maybe', not among the labels 'no', 'yes'")


def test_class_weight_by_label_maps_keys_and_passes_other_forms():
    from bpgpu.errors import ConfigError
    from bpgpu.weights import class_weight_by_label
    assert class_weight_by_label('{"b": 2, "a": 0.5}', ["a", "b"]) == {1: 2, 0: 0.5}
    assert class_weight_by_label({3: 2}, [1, 3]) == {1: 2}   # integer labels as the file wrote them
    assert class_weight_by_label("balanced", ["a", "b"]) == "balanced"
    assert class_weight_by_label({"1": 2}, None) == {"1": 2}
    with pytest.raises(ConfigError, match="not a JSON object"):
        class_weight_by_label("{nope", ["a"])
