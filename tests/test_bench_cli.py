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
