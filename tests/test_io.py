"""Save/load: round trip on every backend, atomic writes, and clear errors for bad files."""

import json
import os
import zipfile

import numpy as np
import pytest

import bpgpu
from bpgpu import io as bio

from .conftest import TOL


def test_round_trip_every_backend(backend_name, dtype, tmp_path):
    net = bpgpu.MLP([6, 5, 4, 3], activation=["tanh", "relu"], output="softmax", dtype=dtype,
                    backend=backend_name, seed=3, input_scale=0.5, input_shift=0.1)
    path = tmp_path / "m.npz"
    net.save(path)
    for target in ("numpy", backend_name):
        back = bpgpu.load(path, backend=target)
        assert back.config() == net.config() and back.backend.name == target
        for a, b in zip(back.get_params()[0] + back.get_params()[1],
                        net.get_params()[0] + net.get_params()[1]):
            np.testing.assert_array_equal(a, b)   # exact: stored and read back, no math
        X = np.random.default_rng(0).normal(size=(4, 6))
        # same backend: same calls on the same shapes and thread count -> same bits;
        # across backends: same to rounding
        if target == backend_name:
            np.testing.assert_array_equal(back.predict_proba(X), net.predict_proba(X))
        else:
            np.testing.assert_allclose(back.predict_proba(X), net.predict_proba(X), **TOL[dtype])
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".bpgpu-")]


def test_failed_write_leaves_old_file_untouched(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(b"precious")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        bio.atomic_write(path, boom)
    assert path.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["m.npz"]


def test_truncated_file(tmp_path):
    path = tmp_path / "m.npz"
    bpgpu.MLP([4, 3, 2]).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(bpgpu.ModelFileError, match="truncated|unreadable"):
        bpgpu.load(path)


def test_foreign_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.arange(3))
    with pytest.raises(bpgpu.ModelFileError, match="not a bpgpu model"):
        bpgpu.load(path)


def test_not_a_zip_and_missing(tmp_path):
    path = tmp_path / "x.npz"
    path.write_text("hello")
    with pytest.raises(bpgpu.ModelFileError):
        bpgpu.load(path)
    with pytest.raises(bpgpu.ModelFileError, match="no such file"):
        bpgpu.load(tmp_path / "nope.npz")


def _rewrite_meta(path, change):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["metadata.json"].tobytes())
    change(meta, arrays)
    arrays["metadata.json"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)


def test_future_version_and_inconsistent_shapes(tmp_path):
    path = tmp_path / "m.npz"
    bpgpu.MLP([4, 3, 2]).save(path)
    _rewrite_meta(path, lambda m, a: m.__setitem__("format_version", 99))
    with pytest.raises(bpgpu.ModelFileError, match="version 99"):
        bpgpu.load(path)
    bpgpu.MLP([4, 3, 2]).save(path)
    _rewrite_meta(path, lambda m, a: m["config"].__setitem__("sizes", [4, 5, 2]))
    with pytest.raises(bpgpu.ModelFileError, match="inconsistent"):
        bpgpu.load(path)
    assert zipfile.is_zipfile(path)
