"""Fixtures of the host emulation: an emulated cupy backend, the numpy reference, test inputs."""

import numpy as np
import pytest

from bpgpu.backends.numpy_backend import NumpyBackend

from ..conftest import TOL
from .hostcuda import GXX

#: skip every emulated test, saying why, where there is no host compiler
needs_gxx = pytest.mark.skipif(GXX is None, reason="g++ is not installed: the host emulation of "
                                                  "the CUDA kernels compiles them with it")

#: Shapes for the kernels: 1 row, 1 column, odd sizes; with the emulated device's 1 SM the
#: backend's grid is capped at 8 blocks of 256 threads (2048 elements, 64 rows of one warp each
#: per pass), so (65, 3), (300, 13), (97, 101) and (1, 2100) make the grid-stride loops iterate;
#: (1, 2100) and (3, 70) make the lanes of a row's warp stride over the columns.
SHAPES = [(1, 1), (1, 7), (5, 1), (3, 70), (17, 33), (64, 10), (65, 3), (300, 13), (97, 101),
          (1, 2100)]


def emulated(sm_count=1, compute_capability=90):
    from .fake_cupy import emulated_backend
    return emulated_backend(sm_count, compute_capability)


@pytest.fixture
def be():
    return emulated()


@pytest.fixture(scope="session")
def ref():
    return NumpyBackend(blas_threads=1)


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return request.param


def with_specials(x, seed=0):
    """``x`` with NaN, +-inf, huge values and signed zeros at a few places (arrays of >= 8)."""
    x = np.array(x, dtype=np.float64, copy=True)
    flat = x.reshape(-1)
    if flat.size >= 8:
        rng = np.random.default_rng(seed)
        spots = rng.choice(flat.size, size=8, replace=False)
        flat[spots] = [np.nan, np.inf, -np.inf, 1e30, -1e30, 750.0, 0.0, -0.0]
    return x


def same(be, got, want, dtype, magnitude=None):
    """Device result against the numpy backend's, with the dtype's tolerance (NaN where NaN)."""
    tol = dict(TOL[dtype])
    if magnitude is not None:
        tol["atol"] = max(tol["atol"], tol["rtol"] * float(magnitude))
    np.testing.assert_allclose(be.to_host(got), np.asarray(want), **tol, equal_nan=True)


def launched(be):
    """Snapshot of the backend's launch counter: ``launched(be) - before`` is what an op ran."""
    return dict(be._launches)


def delta(before, after):
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) !=
            before.get(k, 0)}
