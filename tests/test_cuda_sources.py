"""The CUDA kernels without a GPU: they ship with the package, every kernel the backend launches
is defined and instantiated, the activation and loss codes come from the one table, and the
source compiles with nvcc for sm_80 and sm_90 with exactly the options CuPy's NVRTC gets."""

import re
import shutil
import subprocess

import pytest

from bpgpu.activations import ACT_CODES, LOSS_CODES
from bpgpu.backends.cupy_backend import (KERNEL_NAMES, PLAIN_KERNELS, TEMPLATE_KERNELS,
                                         compile_options, kernel_source, name_expressions)

NVCC = shutil.which("nvcc")


def test_fused_cu_ships_with_the_package():
    src = kernel_source()
    assert "GRID_STRIDE" in src and "INSTANTIATE(float)" in src and "INSTANTIATE(double)" in src


def test_every_launched_kernel_is_defined_and_instantiated():
    src = kernel_source()
    block = src[src.index("#define INSTANTIATE"):]
    for name in TEMPLATE_KERNELS:
        assert re.search(rf"__global__ void {name}\(", src), name
        assert f"void {name}<T>(" in block, name
    for name in PLAIN_KERNELS:
        assert re.search(rf'extern "C" __global__ void {name}\(', src), name
    assert set(KERNEL_NAMES) == set(TEMPLATE_KERNELS) | set(PLAIN_KERNELS)
    assert len(name_expressions()) == 2 * len(TEMPLATE_KERNELS)


def test_codes_come_from_the_one_table():
    """fused.cu names the codes only through BPGPU_* macros; the options define every one."""
    src = kernel_source()
    options = compile_options()
    for name, code in ACT_CODES.items():
        assert f"-DBPGPU_ACT_{name.upper()}={code}" in options
    for name, code in LOSS_CODES.items():
        assert f"-DBPGPU_LOSS_{name.upper()}={code}" in options
    body = src[src.index("#define FULL_WARP"):]
    # no activation or loss compared with a bare number
    assert not re.search(r"\b(act|out_act|loss)\s*==\s*\d", body)
    # no hard-coded exp limits: EXP_LIMIT is an argument
    assert "88.0" not in body and "708" not in body


def _nvcc(tmp_path, arch, options, extra=()):
    src = tmp_path / "fused.cu"
    src.write_text(kernel_source())
    out = tmp_path / f"fused_{arch}.cubin"
    res = subprocess.run([NVCC, *options, f"-arch={arch}", "-Werror", "all-warnings", *extra,
                          "-cubin", str(src), "-o", str(out)],
                         capture_output=True, text=True, timeout=600)
    return res, out


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_fused_cu_compiles(tmp_path, arch):
    res, out = _nvcc(tmp_path, arch, compile_options(), ("-Xptxas", "-v"))
    assert res.returncode == 0, res.stderr
    cubin = out.read_bytes()
    for name in KERNEL_NAMES:   # mangled names contain the kernel name
        assert name.encode() in cubin, name
    # nothing spills to local memory (the Philox block's words stay in registers)
    spills = re.findall(r"(\d+) bytes spill stores", res.stderr)
    assert spills and all(s == "0" for s in spills), res.stderr


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_fused_cu_without_defines_fails(tmp_path):
    res, _ = _nvcc(tmp_path, "sm_80", ("-std=c++17",))
    assert res.returncode != 0 and "compile_options" in res.stderr
