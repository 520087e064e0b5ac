"""The CUDA kernels without a GPU: they ship with the package and compile for sm_80 and sm_90."""

import re
import shutil
import subprocess

import pytest

from bpgpu.backends.cupy_backend import KERNEL_NAMES, kernel_source

NVCC = shutil.which("nvcc")


def test_fused_cu_ships_with_the_package():
    src = kernel_source()
    assert "GRID_STRIDE" in src and "INSTANTIATE(float)" in src and "INSTANTIATE(double)" in src


def test_every_launched_kernel_is_defined_and_instantiated():
    src = kernel_source()
    block = src[src.index("#define INSTANTIATE"):]
    for name in KERNEL_NAMES:
        assert re.search(rf"__global__ void {name}\(", src), name
        assert f"void {name}<T>(" in block, name


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_fused_cu_compiles(tmp_path, arch):
    src = tmp_path / "fused.cu"
    src.write_text(kernel_source())
    res = subprocess.run([NVCC, "-std=c++14", f"-arch={arch}", "-Werror", "all-warnings",
                          "-cubin", str(src), "-o", str(tmp_path / f"fused_{arch}.cubin")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    cubin = (tmp_path / f"fused_{arch}.cubin").read_bytes()
    for name in KERNEL_NAMES:   # mangled names contain the kernel name
        assert name.encode() in cubin, name
