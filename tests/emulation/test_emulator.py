"""The host emulation itself: it must catch what a GPU run would get wrong -- out-of-bounds
accesses, divergent shuffles, wrong argument types, strided or host arrays, missing defines --
and its shuffles and barriers must behave as CUDA's."""

import numpy as np
import pytest

from bpgpu.backends.cupy_backend import (PLAIN_KERNELS, compile_options, kernel_source,
                                         name_expressions)

from .conftest import needs_gxx
from .fake_cupy import EmulatedCupy
from .hostcuda import KernelError, kernel_signatures

pytestmark = [pytest.mark.emulated, needs_gxx]

PROBES = r"""
extern "C" __global__ void scale(float* x, long long n, float s) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) x[i] *= s;
}
extern "C" __global__ void write_before(float* x) { if (threadIdx.x == 0) x[-1] = 1.0f; }
extern "C" __global__ void butterfly(double* out) {
    double v = threadIdx.x + 100.0 * blockIdx.x;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}
extern "C" __global__ void broadcast(int* out) {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, (int)threadIdx.x * 3, 5);
}
extern "C" __global__ void divergent(float* x) {
    if (threadIdx.x & 1) return;
    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, x[threadIdx.x], 2);
}
extern "C" __global__ void block_barrier(int* out) {
    __shared__ int seen[64];
    seen[threadIdx.x] = threadIdx.x + 1;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = seen[blockDim.x - 1 - threadIdx.x];
}
extern "C" __global__ void sneaky(const float* x) { ((float*)x)[0] = 2.0f; }
"""


@pytest.fixture(scope="module")
def cp():
    return EmulatedCupy()


def kernel(cp, name):
    return cp.RawKernel(PROBES, name)


def test_overrun_hits_the_guard_page(cp):
    x = cp.ones(100, dtype=np.float32)
    with pytest.raises(KernelError, match=r"memory fault.*\d+ bytes past the end of a buffer of "
                                          r"400 bytes"):
        kernel(cp, "scale")((4,), (64,), (x, np.int64(100 + 1024), np.float32(2)))


def test_write_before_the_start_breaks_the_canary(cp):
    x = cp.ones(10, dtype=np.float32)
    with pytest.raises(KernelError, match="canary"):
        kernel(cp, "write_before")((1,), (32,), (x,))


def test_argument_types_are_checked(cp):
    k = kernel(cp, "scale")
    x = cp.ones(8, dtype=np.float32)
    with pytest.raises(KernelError, match="expected numpy.int64, got int"):
        k((1,), (32,), (x, 8, np.float32(2)))                 # CuPy would convert silently
    with pytest.raises(KernelError, match="expected numpy.float32, got float64"):
        k((1,), (32,), (x, np.int64(8), np.float64(2)))
    with pytest.raises(KernelError, match="dtype float64"):
        k((1,), (32,), (cp.ones(8, dtype=np.float64), np.int64(8), np.float32(2)))
    with pytest.raises(KernelError, match="not C-contiguous"):
        k((1,), (32,), (cp.ones((4, 4), dtype=np.float32).T, np.int64(16), np.float32(2)))
    with pytest.raises(KernelError, match="not in device memory"):
        k((1,), (32,), (np.ones(8, np.float32).view(type(x)), np.int64(8), np.float32(2)))
    with pytest.raises(KernelError, match="3 arguments for 1 parameters"):
        kernel(cp, "sneaky")((1,), (32,), (x, np.int64(8), np.float32(2)))


def test_const_arguments_must_not_change(cp):
    with pytest.raises(KernelError, match="memory fault.*passed as a const argument"):
        kernel(cp, "sneaky")((1,), (32,), (cp.ones(4, dtype=np.float32),))


def test_shuffles_are_cuda_shuffles(cp):
    out = cp.zeros(128, dtype=np.float64)
    kernel(cp, "butterfly")((2,), (64,), (out,))
    got = np.asarray(out).reshape(2, 2, 32)           # block, warp, lane
    for b in range(2):
        for w in range(2):
            lanes = np.arange(32) + 32 * w + 100.0 * b
            assert (got[b, w] == lanes.sum()).all()
    out = cp.zeros(64, dtype=np.int32)
    kernel(cp, "broadcast")((1,), (64,), (out,))
    np.testing.assert_array_equal(np.asarray(out), np.r_[np.full(32, 15), np.full(32, 111)])


def test_divergent_shuffle_is_an_error(cp):
    with pytest.raises(KernelError, match="divergent shuffle"):
        kernel(cp, "divergent")((1,), (32,), (cp.ones(32, dtype=np.float32),))


def test_syncthreads_is_a_block_barrier(cp):
    out = cp.zeros(128, dtype=np.int32)
    kernel(cp, "block_barrier")((2,), (64,), (out,))
    np.testing.assert_array_equal(np.asarray(out).reshape(2, 64), np.tile(np.arange(64, 0, -1),
                                                                          (2, 1)))


def test_launch_configuration_is_checked(cp):
    x = cp.ones(8, dtype=np.float32)
    with pytest.raises(KernelError, match="invalid launch configuration"):
        kernel(cp, "scale")((1,), (2048,), (x, np.int64(8), np.float32(2)))
    with pytest.raises(KernelError, match="grid must be"):
        kernel(cp, "scale")((0,), (32,), (x, np.int64(8), np.float32(2)))


def test_fused_cu_needs_the_defines(cp):
    with pytest.raises(KernelError, match="compile_options"):
        cp.RawModule(code=kernel_source(), options=("-std=c++17",))


def test_templates_are_found_only_through_name_expressions(cp):
    module = cp.RawModule(code=kernel_source(), options=compile_options(),
                          name_expressions=["gather<float>"])
    module.get_function("gather<float>")
    module.get_function("random_uniform")                  # extern "C": by its plain name
    with pytest.raises(KernelError, match="name_expressions"):
        module.get_function("gather<double>")


def test_signatures_are_read_from_the_source():
    sigs = kernel_signatures(kernel_source())
    assert set(name_expressions()) | set(PLAIN_KERNELS) == set(sigs)
    assert [p.ctype for p in sigs["gather_scale<double>"]] == [
        "const unsigned char*", "const long long*", "double*", "long long", "int", "long long",
        "double", "double"]
    assert [p.ctype for p in sigs["random_uniform"]] == [
        "float*", "long long", "int"] + ["unsigned long long"] * 6
