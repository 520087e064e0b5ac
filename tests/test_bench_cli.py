"""`bpgpu bench` end to end on a small sample: table, files, and the no-torch message."""

import json
import subprocess
import sys

import numpy as np
import pytest

import bpgpu

BENCH = ["bench", "--backends", "numpy", "--batch-sizes", "64", "--sizes", "784-16-10",
         "--epochs", "1", "--samples", "2000", "--quiet"]


def run(args, hide_torch=False):
    prefix = "import sys; sys.modules['torch'] = None; " if hide_torch else "import sys; "
    code = prefix + f"from bpgpu.cli import main; sys.exit(main({args!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)


def test_bench_without_torch_prints_table_and_says_so(tmp_path):
    out = tmp_path / "b.json"
    res = run(BENCH + ["--vs", "torch", "--json", str(out), "--markdown", str(tmp_path / "b.md")],
              hide_torch=True)
    assert res.returncode == 0, res.stderr
    assert "| numpy | 784-16-10 | 64 |" in res.stdout
    assert "torch" in res.stderr and "not installed" in res.stderr
    rec = json.loads(out.read_text())
    row = rec["rows"][0]
    for key in ("samples_per_s", "samples_per_s_min", "samples_per_s_max", "us_per_step",
                "gflops", "fraction_of_ceiling", "gemm_time_fraction", "blas_threads",
                "host_alloc_peak_bytes_per_epoch", "resident_bytes", "compiled_epoch"):
        assert key in row, key
    assert 0 < row["gemm_time_fraction"] <= 1 and row["gemm_ceiling_gflops"] > 0
    assert row["compiled_epoch"] is False                     # the numpy backend has none
    assert rec["machine"]["cpu"] and rec["machine"]["versions"]["numpy"]
    assert "| backend |" in (tmp_path / "b.md").read_text()


def test_bench_with_torch_reports_ratio():
    pytest.importorskip("torch")
    res = run(BENCH + ["--vs", "torch"])
    assert res.returncode == 0, res.stderr
    line = next(l for l in res.stdout.splitlines() if l.startswith("| numpy"))
    assert line.rstrip().endswith("× |")


def test_bench_bad_sizes_is_a_clean_error():
    res = run(["bench", "--sizes", "784-x-10"])
    assert res.returncode == 2 and "bpgpu: error: --sizes" in res.stderr


def test_bench_vs_another_backend_interleaves_it(tmp_path):
    """``--vs numpy`` on a numba row: the numpy backend runs the same epochs, interleaved, and the
    row gets its samples/s and the ratio; the Markdown table grows a "vs numpy" column."""
    pytest.importorskip("numba")
    out = tmp_path / "b.json"
    args = ["bench", "--backends", "numba", "--batch-sizes", "64", "--sizes", "784-16-10",
            "--epochs", "2", "--samples", "2000", "--quiet", "--vs", "numpy", "--json", str(out)]
    res = run(args)
    assert res.returncode == 0, res.stderr
    row = json.loads(out.read_text())["rows"][0]
    assert row["numpy_samples_per_s"] > 0 and row["vs_numpy"] > 0
    header = next(line for line in res.stdout.splitlines() if line.startswith("| backend"))
    assert header.rstrip().endswith("vs numpy |")
    assert json.loads(out.read_text())["method"]["interleaved_with"] == ["numpy"]


@pytest.mark.parametrize("vs", ["pandas", "numpy,numba", "torch,tensorflow"])
def test_bench_bad_vs_is_a_clean_error(vs):
    res = run(["bench", "--vs", vs])
    assert res.returncode == 2 and res.stderr.startswith("bpgpu: error: --vs")
    assert len(res.stderr.strip().splitlines()) == 1


def test_bench_vs_jax_without_jax_is_one_line_and_exit_2():
    code = ("import sys; sys.modules['jax'] = None; from bpgpu.cli import main; "
            f"sys.exit(main({BENCH + ['--vs', 'jax']!r}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("bpgpu: error: --vs jax: jax is not installed")
    assert "pip install 'bpgpu[bench]'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_bench_vs_jax_interleaves_both_forms(tmp_path):
    """``--vs jax``: JAX's whole-epoch scan and its jitted step run the same epochs, interleaved;
    the row gets both throughputs and ratios, the machine record JAX's version and XLA's threads,
    the Markdown table its JAX columns (before a backend's "vs numpy"), the chart its lines."""
    pytest.importorskip("jax")
    pytest.importorskip("matplotlib")
    out, md, png = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"
    args = ["bench", "--backends", "numpy", "--batch-sizes", "64", "--sizes", "784-16-10",
            "--epochs", "2", "--samples", "1000", "--quiet", "--vs", "jax",
            "--json", str(out), "--markdown", str(md), "--plot", str(png)]
    res = run(args)
    assert res.returncode == 0, res.stderr
    rec = json.loads(out.read_text())
    row = rec["rows"][0]
    for form in ("scan", "step"):
        assert row[f"jax_{form}_samples_per_s"] > 0 and row[f"vs_jax_{form}"] > 0
        assert (row[f"jax_{form}_samples_per_s_min"] <= row[f"jax_{form}_samples_per_s"]
                <= row[f"jax_{form}_samples_per_s_max"])
    assert row["jax_threads"] >= 1 and row["jax_device"] == "cpu"
    assert rec["method"]["interleaved_with"] == ["jax"]
    jax = rec["machine"]["jax"]
    assert jax["available"] and jax["jax"] and jax["enable_x64"] is False
    assert "intra_op_threads" in jax and "xla_flags" in jax
    header = next(line for line in res.stdout.splitlines() if line.startswith("| backend"))
    assert header.rstrip().endswith("| jax scan samples/s | vs JAX scan | vs JAX step |")
    line = next(line for line in res.stdout.splitlines() if line.startswith("| numpy"))
    assert line.count("×") == 2
    assert "- JAX: " in md.read_text() and png.stat().st_size > 0


def test_jax_columns_sit_before_a_backends_column():
    from bpgpu.bench.report import markdown_table
    row = {"backend": "numba", "sizes": "784-100-10", "batch": 64, "dtype": "float32",
           "samples_per_s": 2e5, "samples_per_s_min": 1e5, "samples_per_s_max": 3e5,
           "us_per_step": 320.0, "gflops": 60.0, "vs_numpy": 1.5,
           "jax_scan_samples_per_s": 1.8e5, "vs_jax_scan": 1.11, "vs_jax_step": 1.4}
    no_jax = {k: v for k, v in row.items() if "jax" not in k}
    head, _, line = markdown_table([row]).splitlines()
    assert head.endswith("| vs JAX scan | vs JAX step | vs numpy |")
    assert line.endswith("| 180.0k | 1.11× | 1.40× | 1.50× |")
    assert "JAX" not in markdown_table([no_jax])
    head, rule, line = markdown_table([row, no_jax]).splitlines()[:3]
    assert head.count("|") == rule.count("|") == line.count("|")


# ------------------------------------------------------------------ machine record: GEMM kernels
AVX512 = {"sse2", "avx", "avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


def test_record_names_openblas_kernels_and_xla_threads():
    from bpgpu.sysinfo import cpu_flags, cpu_vector_isa, machine_record
    rec = machine_record()
    assert rec["xla_cpu"]["intra_op_threads"] >= 1
    for k in rec["blas_kernels"]:                  # one per OpenBLAS numpy loaded
        assert k["kernels"] and k["summary"].startswith(f"{k['kernels']} kernels")
        assert k["cpu_isa"] == cpu_vector_isa(cpu_flags())[0]


@pytest.mark.parametrize("flags,kernels,coretype,faster,summary", [
    (AVX512, "Haswell", "Haswell", True,
     "Haswell kernels on an AVX-512 CPU: OPENBLAS_CORETYPE is set (Haswell); unset it for the "
     "SkylakeX kernels"),
    (AVX512, "Haswell", "", True,
     "Haswell kernels on an AVX-512 CPU: this OpenBLAS does not pick its SkylakeX kernels here "
     "(OPENBLAS_CORETYPE=SkylakeX may)"),
    (AVX512, "SkylakeX", "", False, "SkylakeX kernels: the widest this AVX-512 CPU runs"),
    (AVX512 - {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}, "Zen", "Haswell", False,
     "Zen kernels: the widest this AVX2 CPU runs (no AVX-512); OPENBLAS_CORETYPE=Haswell is set "
     "and selects the same width"),
    ({"sse2", "avx", "avx2", "fma"}, "Sandybridge", "Sandybridge", True,
     "Sandybridge kernels on an AVX2 CPU: OPENBLAS_CORETYPE is set (Sandybridge); unset it for "
     "the Haswell kernels"),
    (set(), "ARMV8SVE", "", False,
     "ARMV8SVE kernels (vector width of this kernel set or CPU not classified)"),
])
def test_openblas_kernel_verdict(monkeypatch, flags, kernels, coretype, faster, summary):
    from bpgpu import sysinfo
    monkeypatch.setattr(sysinfo, "_openblas_libraries", lambda: [("/x/libopenblas.so", kernels)])
    (k,) = sysinfo.openblas_kernels(flags=flags, coretype=coretype)
    assert k["faster_available"] is faster and k["summary"] == summary
    assert k["library"] == "libopenblas.so" and k["coretype_env"] == coretype


def test_openblas_kernels_without_threadpoolctl_asks_openblas_itself(monkeypatch):
    """The fallback reads OpenBLAS's own openblas_get_corename: the same libraries and names
    threadpoolctl gives (scipy's LP64 OpenBLAS too, when scipy is there: a second spelling)."""
    import os

    from bpgpu import _compat, sysinfo
    try:
        import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS beside numpy's)
    except ImportError:
        pass
    with_tpc = sysinfo._openblas_libraries()
    if not with_tpc:
        pytest.skip("numpy's BLAS here is not OpenBLAS")
    real = _compat.optional_import
    monkeypatch.setattr(_compat, "optional_import",
                        lambda name: None if name == "threadpoolctl" else real(name))
    without = sysinfo._openblas_libraries()

    def names(libs):
        return sorted((os.path.basename(path), kernels) for path, kernels in libs)

    assert names(without) == names(with_tpc)


# ------------------------------------------------------------------ bench/gemm_providers.py
def _gemm_providers():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "bench" / "gemm_providers.py"
    spec = importlib.util.spec_from_file_location("gemm_providers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gemm_provider_shapes_are_the_steps_gemms():
    """The evaluation times exactly the GEMMs whose FLOPs bpgpu.bench.workload counts, stored as
    the step stores them (Aᵀ·D reads A as (B, n); D·Wᵀ reads W as (n1, n2))."""
    from bpgpu.bench.workload import step_flops
    gp = _gemm_providers()
    for sizes, batch in gp.WORKLOADS:
        gemms = gp.step_gemms(sizes, batch)
        assert sum(2 * m * n * k for _, m, n, k, _, _ in gemms) == step_flops(sizes, batch)
        for _, m, n, k, ta, tb in gemms:
            a, b, c = gp.operands(m, n, k, ta, tb)
            assert c.shape == (m, n) and ((a.T if ta else a) @ (b.T if tb else b)).shape == (m, n)
            assert (not ta or a.shape[0] == batch) and (not tb or b.shape == tuple(sizes[1:]))


def test_gemm_provider_table_names_the_fastest_and_the_blis_ratio():
    gp = _gemm_providers()
    base = {"sizes": "784-100-10", "batch": 64, "gemm": "forward 1", "m": 64, "n": 100,
            "k": 784, "trans_a": False, "trans_b": False, "err": 1e-7}
    rows = [dict(base, provider="openblas-auto", threads=1, us=20.0, cpu_us=19.0),
            dict(base, provider="openblas-auto", threads=2, us=16.0, cpu_us=30.0),
            dict(base, provider="blis-native", threads=1, us=25.0, cpu_us=15.2)]
    report = {"providers": {"openblas-auto": "x", "blis-native": "y"}, "results": rows}
    text = gp.markdown(report)
    line = next(l for l in text.splitlines() if l.startswith("| 784-100-10 | 64 | forward 1"))
    assert line.endswith("| openblas-auto 2t | 1.00× | 0.80× (blis-native) |")
    assert "| 784-100-10 | 64 | 20 | 16 | 25 |" in text
    cpu = gp.markdown(report, "cpu_us", threads=1)           # by CPU time, one thread only
    line = next(l for l in cpu.splitlines() if l.startswith("| 784-100-10 | 64 | forward 1"))
    assert "openblas-auto 2t" not in cpu
    assert line.endswith("| blis-native 1t | 1.25× | 1.25× (blis-native) |")


# ------------------------------------------------------------------ bench/outside_gemm.py
def test_outside_gemm_strips_exactly_the_gemm_calls():
    """The instrument removes the generated epoch's GEMM calls and nothing else, and what is
    left is still a valid module of the same shape."""
    pytest.importorskip("numba")
    import importlib.util
    from pathlib import Path

    import bpgpu
    from bpgpu.optim import make_optimizer
    path = Path(__file__).resolve().parents[1] / "bench" / "outside_gemm.py"
    spec = importlib.util.spec_from_file_location("outside_gemm", path)
    og = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(og)
    rng = np.random.default_rng(0)
    X, y = rng.integers(0, 256, (200, 12), dtype=np.uint8), rng.integers(0, 3, 200)
    net = bpgpu.MLP([12, 8, 3], backend="numba")
    be = net.backend
    opt = make_optimizer("sgd", be, net.n_params, net.dtype, lr=0.1)
    runner = be.compiled_epoch(net, net.workspace(16), net.prepare_inputs(X),
                               be.asarray(net.targets_from(y, 200)), opt)
    if runner is None:
        pytest.skip("compiled epochs are switched off in this environment")
    source = runner._plan()["source"]
    stripped = og.without_gemms(source)
    gemm_lines = [l for l in source.splitlines() if l.lstrip().startswith(og.GEMM_CALLS)]
    assert len(gemm_lines) == 5                     # 2 forward, 1 delta, 2 weight gradients
    assert not any(l.lstrip().startswith(og.GEMM_CALLS) for l in stripped.splitlines())
    kept = [l for l in source.splitlines() if l not in gemm_lines]
    assert [l for l in stripped.splitlines() if l.strip() != "pass"] == kept
    compile(stripped, "stripped", "exec")


def test_torch_peer_walks_the_models_batches(mnist_data):
    """The PyTorch peer does the very work bpgpu does: same weights, same permutations (from the
    model's generator), same updates -- so one float64 epoch ends at the same parameters."""
    torch_ref = pytest.importorskip("bpgpu.bench.torch_ref")
    if torch_ref.torch_status()[0] is None:
        pytest.skip(torch_ref.torch_status()[1])
    (X, y), _ = mnist_data
    X, y = X[:650], y[:650]
    net = bpgpu.MLP([784, 16, 10], activation="sigmoid", dtype="float64", backend="numpy", seed=3)
    peer = torch_ref.TorchTrainer(net)
    peer.fit(X, y, epochs=2, batch_size=64, lr=0.1)
    net.fit(X, y, epochs=2, batch_size=64, lr=0.1)
    W, b = net.get_params()
    for (tw, tb), w, bias in zip(peer.layers, W, b):
        np.testing.assert_allclose(tw.detach().numpy().T, w, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(tb.detach().numpy(), bias, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_torch_graphed_peer_is_the_eager_peer(mnist_data, momentum):
    """The graphed PyTorch form (static index buffer, one static step: what CUDA captures) does
    exactly the eager form's work -- on the CPU it runs the static step directly -- and, with a
    remainder batch, still walks the model's batches."""
    torch_ref = pytest.importorskip("bpgpu.bench.torch_ref")
    if torch_ref.torch_status()[0] is None:
        pytest.skip(torch_ref.torch_status()[1])
    (X, y), _ = mnist_data
    X, y = X[:650], y[:650]                               # 10 full batches and 10 rows
    net = bpgpu.MLP([784, 16, 10], activation="sigmoid", dtype="float64", backend="numpy", seed=3)
    peers = [torch_ref.TorchTrainer(net, graph=g) for g in (True, False)]
    for peer in peers:
        peer.fit(X, y, epochs=2, batch_size=64, lr=0.1, momentum=momentum)
    assert peers[0]._static is not None and peers[1]._static is None
    for a, b in zip(peers[0].params, peers[1].params):
        assert np.array_equal(a.detach().numpy(), b.detach().numpy())
    net.fit(X, y, epochs=2, batch_size=64, lr=0.1, momentum=momentum,
            optimizer="momentum" if momentum else "sgd")
    W, _ = net.get_params()
    for (tw, _), w in zip(peers[0].layers, W):
        np.testing.assert_allclose(tw.detach().numpy().T, w, rtol=1e-9, atol=1e-11)
