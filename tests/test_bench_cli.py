"""`bpgpu bench` end to end on a small sample: table, files, and the no-torch message."""

import json
import subprocess
import sys

import pytest

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
                "host_alloc_peak_bytes_per_epoch", "resident_bytes"):
        assert key in row, key
    assert 0 < row["gemm_time_fraction"] < 1 and row["gemm_ceiling_gflops"] > 0
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
