"""Property-based fuzzing of every file reader: a damaged file is a BpgpuError or a valid result.

Each test starts from a valid file (an IDX file raw and gzipped, a CSV, a saved model) and applies
random mutations -- bit flips, byte overwrites, truncation, insertions, deletions, duplicated
spans. Whatever comes out must be either the reader's own error (a subclass of
:class:`bpgpu.BpgpuError`) or a result that passes the reader's own contract; never another
exception, never a hang (every example runs under an alarm), and never a huge allocation (the
readers check sizes declared in headers against the bytes present before allocating). Each test is
bounded to a few seconds by its example count.
"""

import contextlib
import gzip
import signal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bpgpu
from bpgpu.datasets import load_csv, read_idx, write_idx
from bpgpu.datasets.idx import read_idx_bytes

#: seconds one example may take before it counts as a hang
HANG_S = 5

FUZZ = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def no_hang(seconds=HANG_S):
    """Fail, instead of stalling the suite, if the body runs longer than ``seconds``."""
    if not hasattr(signal, "setitimer"):   # Windows: no interval timers; the bound is max_examples
        yield
        return

    def alarm(signum, frame):
        raise TimeoutError(f"reader ran longer than {seconds} s on one input (a hang?)")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@st.composite
def mutated(draw, base: bytes, landmarks=()):
    """``base`` after 1 to 4 random mutations, half of them (when ``landmarks`` are given) within
    64 bytes after one of those offsets: the structures a format's reader parses (zip headers),
    which uniform positions in a large file would rarely hit."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "byte", "truncate", "insert", "delete", "repeat"]))
        if landmarks and draw(st.booleans()):
            pos = min(draw(st.sampled_from(landmarks)) + draw(st.integers(0, 63)),
                      max(len(data) - 1, 0))
        else:
            pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and data:
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif kind == "repeat":
            span = data[pos:pos + draw(st.integers(1, 32))]
            data[pos:pos] = span
    return bytes(data)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------ IDX
IDX_ARRAY = np.arange(5 * 3 * 4, dtype=np.uint8).reshape(5, 3, 4)
IDX_RAW = bytes([0, 0, 0x08, 3]) + np.array(IDX_ARRAY.shape, ">u4").tobytes() + IDX_ARRAY.tobytes()
IDX_FLOAT = np.linspace(-2, 2, 12).reshape(3, 4)
IDX_RAW_F8 = (bytes([0, 0, 0x0E, 2]) + np.array(IDX_FLOAT.shape, ">u4").tobytes()
              + IDX_FLOAT.astype(">f8").tobytes())


def _check_idx(read):
    with no_hang():
        try:
            arr = read()
        except bpgpu.BpgpuError:
            return
    assert isinstance(arr, np.ndarray) and 1 <= arr.ndim
    assert arr.dtype.isnative and arr.flags.c_contiguous


@settings(max_examples=400, **FUZZ)
@given(data=st.one_of(mutated(IDX_RAW), mutated(IDX_RAW_F8)))
def test_idx_bytes(data):
    _check_idx(lambda: read_idx_bytes(data, "fuzz"))


@settings(max_examples=150, **FUZZ)
@given(data=mutated(IDX_RAW))
def test_idx_raw_file(work, data):
    p = work / "raw.idx"
    p.write_bytes(data)
    _check_idx(lambda: read_idx(p))


@settings(max_examples=300, **FUZZ)
@given(data=st.one_of(mutated(gzip.compress(IDX_RAW)),              # a damaged gzip stream
                      mutated(IDX_RAW).map(gzip.compress)))        # a sound stream, bad content
def test_idx_gzip_file(work, data):
    p = work / "x.gz"
    p.write_bytes(data)
    _check_idx(lambda: read_idx(p))


def test_idx_unmutated_round_trip(work):
    """The fuzzed bases themselves read back exactly (so the tests above start from valid files)."""
    for gz in (False, True):
        p = work / ("base.gz" if gz else "base.idx")
        write_idx(p, IDX_ARRAY, compress=gz)
        np.testing.assert_array_equal(read_idx(p), IDX_ARRAY)   # uint8: integers
    # exact: float64 stored big-endian and read back, a byte swap, no arithmetic
    np.testing.assert_array_equal(read_idx_bytes(IDX_RAW_F8), IDX_FLOAT)


# ------------------------------------------------------------------ CSV
CITIES = ["Zürich", "Málaga", "Lyon"]
CSV_TEXT = ("gre,gpa,rank,city,admit\n" + "".join(
    f"{380 + 20 * i},{2.5 + 0.1 * (i % 15):.2f},{1 + i % 4},{CITIES[i % 3]},{(i * 7) % 2}\n"
    for i in range(24)))


def _check_csv(path):
    with no_hang():
        try:
            d = load_csv(path, test_fraction=0.25, seed=0)
        except bpgpu.BpgpuError:
            return
    n_train, n_test = len(d.X_train), len(d.X_test)
    assert d.X_train.shape == (n_train, len(d.feature_names)) and n_train >= 1
    assert d.X_test.shape == (n_test, len(d.feature_names))
    assert np.all(np.isfinite(d.X_train)) and np.all(np.isfinite(d.X_test))
    assert d.y_train.shape == (n_train,) and d.y_test.shape == (n_test,)
    if d.task == "classification":
        assert d.y_train.dtype == np.int64 and d.classes
        assert 0 <= d.y_train.min() and d.y_train.max() < len(d.classes)
    else:
        assert d.task == "regression" and np.all(np.isfinite(d.y_train))


@settings(max_examples=250, **FUZZ)
@given(data=st.one_of(mutated(CSV_TEXT.encode("utf-8")), mutated(CSV_TEXT.encode("latin-1")),
                      mutated(CSV_TEXT.encode("utf-16"))))
def test_csv(work, data):
    p = work / "x.csv"
    p.write_bytes(data)
    _check_csv(p)


def test_csv_unmutated_loads(work):
    for enc in ("utf-8", "latin-1", "utf-16"):
        p = work / f"base-{enc}.csv"
        p.write_bytes(CSV_TEXT.encode(enc))
        d = load_csv(p, test_fraction=0.25)
        assert "city=Zürich" in d.feature_names and d.task == "classification"


# ------------------------------------------------------------------ saved models
@pytest.fixture(scope="module")
def model_bytes(work):
    p = work / "base.npz"
    bpgpu.MLP([5, 4, 3], activation="tanh", seed=1, backend="numpy").save(p)
    return p.read_bytes()


def _check_model(path):
    with no_hang():
        try:
            net = bpgpu.load(path, backend="numpy")
        except bpgpu.BpgpuError:
            return
    X = np.linspace(-1, 1, 2 * net.sizes[0]).reshape(2, net.sizes[0])
    p = net.predict_proba(X)
    assert p.shape == (2, net.sizes[-1]) and np.all(np.isfinite(p))


@settings(max_examples=500, **FUZZ)
@given(data=st.data())
def test_model_file(work, model_bytes, data):
    zip_headers = [i for i in range(len(model_bytes)) if model_bytes.startswith(b"PK", i)]
    blob = data.draw(mutated(model_bytes, landmarks=zip_headers))
    p = work / "m.npz"
    p.write_bytes(blob)
    _check_model(p)


def test_model_unmutated_loads(work, model_bytes):
    p = work / "ok.npz"
    p.write_bytes(model_bytes)
    assert bpgpu.load(p, backend="numpy").sizes == [5, 4, 3]
