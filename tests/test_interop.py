"""A model that leaves the trainer: ONNX (onnxruntime against predict_proba), PyTorch both ways,
safetensors loaded strictly, skl2onnx converting a scikit-learn pipeline.

The libraries are optional: each test skips with its reason when one is missing, and fails
instead under ``BPGPU_REQUIRE_EXPORT=1`` (``.ci/run`` installs the export extra and torch, then
sets it).

Tolerances: onnxruntime and PyTorch run their own GEMMs, which sum in another order than
OpenBLAS, so outputs agree to rounding, not bit for bit: within 1e-6 (float32) and 1e-12
(float64) relative to each output's magnitude, with that same relative bound of the largest
output as the floor for outputs that are (nearly) zero, where a relative error means nothing.
"""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import bpgpu
from bpgpu.activations import HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS

REQUIRE = os.environ.get("BPGPU_REQUIRE_EXPORT") == "1"
RTOL = {"float32": 1e-6, "float64": 1e-12}


def need(name):
    """The optional module ``name``; a skip with its reason without it (a failure under
    BPGPU_REQUIRE_EXPORT=1)."""
    if REQUIRE:
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"{name} is not installed (pip install "
                                            "'bpgpu[export]'; torch separately)")


def assert_close(got, want, dtype):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    rtol = RTOL[dtype]
    floor = rtol * max(float(np.abs(want).max()), 1e-300)
    excess = np.abs(got - want) - (rtol * np.abs(want) + floor)
    assert got.shape == want.shape and excess.max() <= 0, \
        f"max |diff| {np.abs(got - want).max():.3e} beyond rtol {rtol:g} (+ floor {floor:.1e})"


def loss_for(output):
    return {"softmax": "ce", "sigmoid": "bce"}.get(output, "mse")


def make_net(backend, act, out, dtype, sizes=(12, 9, 7, 5), seed=0, **kw):
    net = bpgpu.MLP(list(sizes), activation=act, output=out, loss=loss_for(out), dtype=dtype,
                    backend=backend, seed=seed, init="xavier", **kw)
    rng = np.random.default_rng(seed + 1)
    w, b = net.get_params()
    net.set_params([x + rng.normal(0, 0.3, x.shape) for x in w],
                   [x + rng.normal(0, 0.3, x.shape) for x in b])
    return net


def session(model):
    ort = need("onnxruntime")
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------ ONNX
@pytest.mark.parametrize("out", OUTPUT_ACTIVATIONS)
@pytest.mark.parametrize("act", HIDDEN_ACTIVATIONS)
def test_onnx_equals_predict_proba(backend_name, dtype, act, out):
    need("onnx")
    net = make_net(backend_name, act, out, dtype)
    X = np.random.default_rng(5).normal(size=(64, 12))
    model = net.to_onnx()
    names = [o.name for o in model.graph.output]
    result = dict(zip(names, session(model).run(None, {"input": X.astype(dtype)})))
    if out == "identity":                          # no pipeline: an identity output regresses
        assert names == ["predictions"]
        assert_close(result["predictions"], net.predict_proba(X), dtype)
        return
    assert names == ["probabilities", "label"]
    assert result["probabilities"].dtype == np.dtype(dtype)
    assert_close(result["probabilities"], net.predict_proba(X), dtype)
    np.testing.assert_array_equal(result["label"], net.predict(X))


@pytest.mark.parametrize("dtype_graph", ["float32", "float64"])
def test_onnx_uint8_images_scaled_in_the_graph(backend_name, dtype_graph, mnist_data):
    need("onnx")
    (X, y), (Xt, yt) = mnist_data
    net = bpgpu.MLP([784, 32, 10], activation="sigmoid", dtype=dtype_graph, backend=backend_name,
                    seed=0, input_scale=0.99 / 255, input_shift=0.01)
    net.record_dataset(bpgpu.datasets.load_dataset("mnist"))
    net.fit(X[:3000], y[:3000], epochs=1, lr=0.5)
    model = net.to_onnx()
    assert model.graph.input[0].type.tensor_type.elem_type == 2          # uint8
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 784          # dynamic batch
    probs, label = session(model).run(None, {"input": Xt[:1000]})
    assert_close(probs, net.predict_proba(Xt[:1000]), dtype_graph)
    np.testing.assert_array_equal(label, net.predict(Xt[:1000]))
    # the graph may also be written in the other float type, on float inputs
    other = "float64" if dtype_graph == "float32" else "float32"
    model = net.to_onnx(dtype=other, input="float")
    x = Xt[:100].astype(other) * np.dtype(other).type(0.99 / 255) + np.dtype(other).type(0.01)
    probs, _ = session(model).run(None, {"input": x})
    assert probs.dtype == np.dtype(other)
    assert_close(probs, net.predict_proba(x), "float32")


def test_onnx_csv_model_standardises_and_one_hots_in_the_graph(tmp_path):
    need("onnx")
    from .test_pipeline import write_admissions
    path = tmp_path / "a.csv"
    rows = write_admissions(path, n=150)
    for dtype in ("float32", "float64"):
        data = bpgpu.datasets.load_csv(path, target="admit", categorical=["rank"])
        net = bpgpu.MLP([len(data.feature_names), 10, 3], activation="tanh", dtype=dtype,
                        backend="numpy", seed=2)
        net.fit(data, epochs=5, lr=0.3)
        model = net.to_onnx(tmp_path / "a.onnx")
        s = session(model)
        assert [(i.name, i.type) for i in s.get_inputs()] == [
            ("gre", "tensor(double)"), ("gpa", "tensor(double)"), ("rank", "tensor(string)"),
            ("city", "tensor(string)")]
        feeds = {"gre": np.array([[float(r["gre"])] for r in rows]),
                 "gpa": np.array([[float(r["gpa"])] for r in rows]),
                 "rank": np.array([[str(r["rank"])] for r in rows], dtype=object),
                 "city": np.array([[r["city"]] for r in rows], dtype=object)}
        probs, label = s.run(None, feeds)
        assert_close(probs, net.predict_proba(path), dtype)
        np.testing.assert_array_equal(label.astype(str), net.predict(path))
        props = {p.key: p.value for p in model.metadata_props}
        assert "gre (number)" in props["bpgpu_inputs"] and \
            json.loads(props["bpgpu_pipeline"]) == net.pipeline.record()


def test_onnx_one_sigmoid_output_thresholds_its_label():
    need("onnx")
    net = make_net("numpy", "tanh", "sigmoid", "float64", sizes=(4, 6, 1))
    X = np.random.default_rng(0).normal(size=(50, 4))
    probs, label = session(net.to_onnx()).run(None, {"input": X})
    assert_close(probs, net.predict_proba(X), "float64")
    np.testing.assert_array_equal(label, net.predict(X))


def test_onnx_options_are_checked():
    need("onnx")
    net = make_net("numpy", "relu", "softmax", "float32")
    with pytest.raises(bpgpu.ConfigError, match="input must be one of"):
        net.to_onnx(input="jpeg")
    with pytest.raises(bpgpu.ConfigError, match="needs a model trained on a CSV"):
        net.to_onnx(input="columns")
    with pytest.raises(bpgpu.ConfigError, match="float32 or float64"):
        net.to_onnx(dtype="float16")


# ------------------------------------------------------------------ skl2onnx
def test_skl2onnx_converts_a_pipeline_with_bpclassifier():
    skl2onnx = need("skl2onnx")
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from bpgpu.interop import register_skl2onnx
    from bpgpu.sklearn import BPClassifier, BPRegressor
    register_skl2onnx()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5)) * 10 + 3
    y = np.array(["ash", "elm", "oak"])[(X[:, 0] > 3).astype(int) + (X[:, 1] > 5)]
    pipe = Pipeline([("scale", StandardScaler()),
                     ("bp", BPClassifier(hidden_layer_sizes=(16,), activation="tanh",
                                         max_iter=20, random_state=0, backend="numpy"))])
    pipe.fit(X, y)
    onx = skl2onnx.to_onnx(pipe, X[:1], options={id(pipe[-1]): {"zipmap": False}})
    label, probs = session(onx).run(None, {"X": X})
    assert_close(probs, pipe.predict_proba(X), "float64")
    np.testing.assert_array_equal(label, pipe.predict(X))
    # float32 inputs: the scaler runs in float32 inside the graph, the network in float64
    onx = skl2onnx.to_onnx(pipe, X[:1].astype(np.float32))
    label, probs = session(onx).run(None, {"X": X.astype(np.float32)})
    assert isinstance(probs[0], dict) and set(probs[0]) == {"ash", "elm", "oak"}   # ZipMap
    assert np.mean(label == pipe.predict(X)) >= 0.99
    reg = Pipeline([("scale", StandardScaler()),
                    ("bp", BPRegressor(hidden_layer_sizes=(8,), max_iter=20, random_state=0,
                                       backend="numpy"))]).fit(X, X[:, 0] - 2 * X[:, 1])
    (pred,) = session(skl2onnx.to_onnx(reg, X[:1])).run(None, {"X": X})
    assert_close(pred[:, 0], reg.predict(X), "float64")


# ------------------------------------------------------------------ PyTorch and safetensors
@pytest.mark.parametrize("out", OUTPUT_ACTIVATIONS)
@pytest.mark.parametrize("act", HIDDEN_ACTIVATIONS)
def test_to_torch_equals_predict_proba_and_round_trips(backend_name, dtype, act, out):
    torch = need("torch")
    from bpgpu.interop import from_torch, to_torch
    net = make_net(backend_name, act, out, dtype)
    module = to_torch(net)
    assert isinstance(module, torch.nn.Sequential)
    assert list(module.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias",
                                         "4.weight", "4.bias"]
    X = np.random.default_rng(5).normal(size=(64, 12)).astype(dtype)
    with torch.no_grad():
        got = module(torch.from_numpy(X)).numpy()
    assert_close(got, net.predict_proba(X), dtype)
    back = from_torch(module, backend="numpy")
    assert back.config()["activation"] == net.config()["activation"] and back.output == out
    assert back.dtype == net.dtype
    for a, b in zip(sum(back.get_params(), []), sum(net.get_params(), [])):
        np.testing.assert_array_equal(a, b)                   # exact: copies, no arithmetic


def test_from_torch_refuses_other_modules():
    torch = need("torch")
    from bpgpu.interop import from_torch
    nn = torch.nn
    cases = [
        (nn.Linear(3, 2), "reads a torch.nn.Sequential"),
        (nn.Sequential(nn.Conv1d(1, 1, 1)), "module 0 is Conv1d"),
        (nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), "does not follow a Linear layer"),
        (nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Tanh()), "does not follow a Linear"),
        (nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=0)), "Softmax(dim=0)"),
        (nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 2)),
         "only possible on the output layer"),
        (nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)), "do not chain"),
        (nn.Sequential(nn.Linear(3, 2).half()), "float16"),
        (nn.Sequential(), "no Linear layer"),
    ]
    for module, fragment in cases:
        with pytest.raises(bpgpu.ConfigError) as err:
            from_torch(module)
        assert fragment in str(err.value), (module, err.value)


def test_safetensors_loads_strictly_into_a_sequential(tmp_path):
    torch = need("torch")
    need("safetensors")
    from safetensors import safe_open
    from safetensors.torch import load_file

    from bpgpu.interop import write_safetensors
    net = make_net("numpy", "relu", "softmax", "float32")
    path = tmp_path / "m.safetensors"
    write_safetensors(net, path)
    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()["bpgpu_config"])
    sizes, acts = config["sizes"], config["activation"] + [config["output"]]
    modules = []        # built from the file's metadata alone, as a PyTorch user would
    for i, act in enumerate(acts):
        modules += [torch.nn.Linear(sizes[i], sizes[i + 1]),
                    {"relu": torch.nn.ReLU(), "softmax": torch.nn.Softmax(dim=1)}[act]]
    module = torch.nn.Sequential(*modules)
    result = module.load_state_dict(load_file(path), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    X = np.random.default_rng(0).normal(size=(10, 12)).astype(np.float32)
    with torch.no_grad():
        assert_close(module(torch.from_numpy(X)).numpy(), net.predict_proba(X), "float32")


# ------------------------------------------------------------------ the command and imports
def run(*args):
    return subprocess.run([sys.executable, "-m", "bpgpu", *args], capture_output=True, text=True,
                          timeout=300)


def test_export_command(tmp_path):
    need("onnx")
    need("safetensors")
    net = make_net("numpy", "sigmoid", "softmax", "float64")
    net.save(tmp_path / "m.npz")
    res = run("export", str(tmp_path / "m.npz"), "--format", "onnx", str(tmp_path / "m.onnx"))
    assert res.returncode == 0, res.stderr
    assert "outputs probabilities, label" in res.stderr
    X = np.random.default_rng(0).normal(size=(8, 12))
    probs, _ = session(need("onnx").load(str(tmp_path / "m.onnx"))).run(None, {"input": X})
    assert_close(probs, net.predict_proba(X), "float64")
    res = run("export", str(tmp_path / "m.npz"), "--format", "safetensors",
              str(tmp_path / "m.safetensors"))
    assert res.returncode == 0 and (tmp_path / "m.safetensors").stat().st_size > 0
    for args, fragment in [
        (("--format", "safetensors", "--dtype", "float32"), "apply to --format onnx"),
        (("--format", "onnx", "--input", "columns"), "needs a model trained on a CSV"),
        (("--format", "tflite"), "invalid choice"),
    ]:
        res = run("export", str(tmp_path / "m.npz"), *args, str(tmp_path / "x.out"))
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and fragment in res.stderr
    assert not (tmp_path / "x.out").exists()
    res = run("export", str(tmp_path / "nope.npz"), "--format", "onnx", str(tmp_path / "o"))
    assert res.returncode == 2 and "no such file" in res.stderr


def test_import_bpgpu_imports_no_export_library(tmp_path):
    code = ("import sys, numpy as np, bpgpu\n"
            "net = bpgpu.MLP([3, 4, 2], backend='numpy')\n"
            f"net.save({str(tmp_path / 'm.npz')!r})\n"
            f"net = bpgpu.load({str(tmp_path / 'm.npz')!r}, backend='numpy')\n"
            "net.predict(np.zeros((2, 3)))\n"
            "import bpgpu.interop, bpgpu.cli\n"
            "bpgpu.cli.build_parser()\n"
            "mods = ('onnx', 'onnxruntime', 'torch', 'skl2onnx', 'safetensors', 'PIL')\n"
            "print([m for m in mods if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_missing_library_is_named_with_its_install(monkeypatch):
    import bpgpu._compat as compat
    real = compat.optional_import
    monkeypatch.setattr(compat, "optional_import",
                        lambda name: None if name == "onnx" else real(name))
    with pytest.raises(bpgpu.ConfigError, match=r"needs onnx.*pip install 'bpgpu\[export\]'"):
        bpgpu.MLP([2, 2], backend="numpy").to_onnx()


@pytest.mark.emulated
def test_onnx_and_torch_equal_the_emulated_gpu_backend():
    """The cupy backend (its real code, on the host emulation of the CUDA kernels, since no GPU
    is here) against onnxruntime and PyTorch, every activation, output and dtype."""
    need("onnx")
    torch = need("torch")
    from bpgpu.interop import to_torch

    from .emulation.conftest import emulated, needs_gxx
    if needs_gxx.args[0]:
        pytest.skip(needs_gxx.kwargs["reason"])
    be = emulated()
    X = np.random.default_rng(5).normal(size=(33, 12))
    for dtype in ("float32", "float64"):
        for act in HIDDEN_ACTIVATIONS:
            for out in OUTPUT_ACTIVATIONS:
                net = make_net(be, act, out, dtype)
                assert net.backend.name == "cupy"
                want = net.predict_proba(X)
                got = session(net.to_onnx()).run(None, {"input": X.astype(dtype)})[0]
                assert_close(got, want, dtype)
                with torch.no_grad():
                    got = to_torch(net)(torch.from_numpy(X.astype(dtype))).numpy()
                assert_close(got, want, dtype)
