"""Save/load: round trip on every backend, atomic writes, and clear errors for bad files."""

import json
import os
import zipfile

import numpy as np
import pytest

import bpgpu
from bpgpu import files as bfiles
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
        bfiles.atomic_write(path, boom)
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


# ------------------------------------------------------------------ damaged archives, precisely
def _zip_with_central_flag(path, offset, value):
    """Rewrite one field of every central-directory entry (offsets from the entry's start)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        data[at + offset:at + offset + 2] = value.to_bytes(2, "little")
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("offset,value,match", [
    (8, 0x20, "NotImplementedError"),        # flag bit 5, "compressed patched data"
    (8, 0x01, "RuntimeError|encrypted"),      # flag bit 0, an encrypted member
    (10, 99, "compression method 99"),        # an unknown compression method
])
def test_zip_features_a_model_never_uses(tmp_path, offset, value, match):
    path = tmp_path / "m.npz"
    bpgpu.MLP([4, 3, 2]).save(path)
    _zip_with_central_flag(path, offset, value)
    with pytest.raises(bpgpu.ModelFileError, match=match):
        bpgpu.load(path)


def _npz_by_hand(path, members):
    """An .npz whose members are given as raw bytes (header and data written separately)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, raw in members.items():
            zf.writestr(name + ".npy", raw)


def _npy(shape, dtype, data: bytes):
    import io as _io
    buf = _io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(
        np.dtype(dtype)), "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def test_header_claiming_huge_array_is_checked_before_allocating(tmp_path):
    """A W0 header claiming 2^31 x 784 float32 (6 TiB) over 48 bytes of data: caught by size."""
    path = tmp_path / "m.npz"
    net = bpgpu.MLP([4, 3, 2])
    meta = {"format": bio.FORMAT, "format_version": bio.FORMAT_VERSION, "config": net.config()}
    members = {"metadata.json": _npy((len(json.dumps(meta)),), np.uint8, json.dumps(meta).encode()),
               "W0": _npy((2 ** 31, 784), np.float32, bytes(48))}
    _npz_by_hand(path, members)
    with pytest.raises(bpgpu.ModelFileError, match="header says"):
        bpgpu.load(path)


def test_recorded_sizes_are_checked_before_the_model_allocates(tmp_path):
    path = tmp_path / "m.npz"
    bpgpu.MLP([4, 3, 2]).save(path)
    _rewrite_meta(path, lambda m, a: m["config"].__setitem__("sizes", [4, 10 ** 9, 2]))
    with pytest.raises(bpgpu.ModelFileError, match=r"inconsistent.*need W \(4, 1000000000\)"):
        bpgpu.load(path)
    _rewrite_meta(path, lambda m, a: m["config"].__setitem__("sizes", {"a": 1}))
    with pytest.raises(bpgpu.ModelFileError, match="not a list of integers"):
        bpgpu.load(path)


def test_non_float_parameters_are_refused(tmp_path):
    path = tmp_path / "m.npz"
    bpgpu.MLP([4, 3, 2]).save(path)
    _rewrite_meta(path, lambda m, a: a.__setitem__("W0", a["W0"].astype(np.int64)))
    with pytest.raises(bpgpu.ModelFileError, match="not floating point"):
        bpgpu.load(path)


# ------------------------------------------------------------------ file modes and durability
@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path):
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize("mask,want", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_umask_mode(tmp_path, umask, mask, want):
    umask(mask)
    model, record = tmp_path / "m.npz", tmp_path / "r.json"
    bpgpu.MLP([4, 3, 2]).save(model)
    bfiles.atomic_write(record, lambda f: f.write(b"{}\n"))
    assert _mode(model) == want and _mode(record) == want


def test_plots_get_the_umask_mode(tmp_path, umask):
    pytest.importorskip("matplotlib", reason="plots need the plot extra")
    from bpgpu.plots import plot_confusion
    umask(0o022)
    plot_confusion([0, 1, 1], [0, 1, 0], tmp_path / "c.png")
    assert _mode(tmp_path / "c.png") == 0o644


@pytest.mark.parametrize("existing", [0o600, 0o640, 0o664])
def test_replacing_a_file_keeps_its_mode(tmp_path, umask, existing):
    umask(0o022)
    path = tmp_path / "m.npz"
    path.write_bytes(b"old")
    os.chmod(path, existing)
    bpgpu.MLP([4, 3, 2]).save(path)
    assert _mode(path) == existing and bpgpu.load(path).sizes == [4, 3, 2]


def test_data_then_rename_then_directory_are_synced(tmp_path, monkeypatch):
    import stat
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)
    monkeypatch.setattr(bfiles.os, "fsync", fsync)
    monkeypatch.setattr(bfiles.os, "replace", replace)
    bfiles.atomic_write(tmp_path / "x.bin", lambda f: f.write(b"data"))
    assert events == ["fsync file", "rename", "fsync dir"]
    assert (tmp_path / "x.bin").read_bytes() == b"data"
