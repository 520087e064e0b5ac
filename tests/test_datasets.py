"""IDX reader (good, corrupt, truncated, mislabelled files), MNIST, Fashion-MNIST, toy sets, CSV."""

import gzip
import hashlib
import os
import shutil

import numpy as np
import pytest

import bpgpu
from bpgpu.datasets import load_csv, load_dataset, load_idx_dir, read_idx, write_idx


def test_mnist_ships_and_matches_its_documented_statistics(mnist_data):
    (X, y), (Xt, yt) = mnist_data
    assert X.shape == (60000, 784) and Xt.shape == (10000, 784) and X.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(y),
                                  [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    assert (X / 255.0).mean() == pytest.approx(0.1307, abs=1e-4)
    assert (X / 255.0).std() == pytest.approx(0.3081, abs=1e-4)
    assert yt.min() == 0 and yt.max() == 9


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_package():
    (X, y), (Xt, yt) = bpgpu.datasets.fashion_mnist()
    assert X.shape == (60000, 784) and Xt.shape == (10000, 784)
    np.testing.assert_array_equal(np.bincount(y), [6000] * 10)


def test_fashion_mnist_missing_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("BPGPU_DATA", str(tmp_path))
    import importlib
    mnist_module = importlib.import_module("bpgpu.datasets.mnist")  # the function shadows it
    monkeypatch.setattr(mnist_module, "FASHION_MNIST_DIRS", ())
    with pytest.raises(bpgpu.DataError, match="dataset-fashion-mnist"):
        bpgpu.datasets.fashion_mnist()


def _fake_dir(tmp_path, n=5, gz=True, labels=None):
    rng = np.random.default_rng(0)
    d = tmp_path / "idx"
    d.mkdir(exist_ok=True)
    ext = ".gz" if gz else ""
    for split, count in (("train", n), ("t10k", n - 1)):
        write_idx(d / f"{split}-images-idx3-ubyte{ext}", rng.integers(0, 256, (count, 4, 4),
                                                                       dtype=np.uint8))
        lab = labels if labels is not None and split == "train" else rng.integers(0, 10, count)
        write_idx(d / f"{split}-labels-idx1-ubyte{ext}", np.asarray(lab, np.uint8))
    return d


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_round_trip(tmp_path, gz):
    d = _fake_dir(tmp_path, gz=gz)
    (X, y), (Xt, yt) = load_idx_dir(d)
    assert X.shape == (5, 16) and Xt.shape == (4, 16) and y.dtype == np.int64
    data = load_dataset(d)
    assert data.n_inputs == 16 and data.n_outputs == int(max(y.max(), yt.max())) + 1


def test_idx_truncated(tmp_path):
    d = _fake_dir(tmp_path, gz=False)
    p = d / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(bpgpu.DataError, match="truncated"):
        read_idx(p)
    with pytest.raises(bpgpu.DataError, match="truncated"):
        load_idx_dir(d)


def test_idx_trailing_bytes(tmp_path):
    p = tmp_path / "x.idx"
    write_idx(p, np.zeros((2, 3), np.uint8))
    p.write_bytes(p.read_bytes() + b"xx")
    with pytest.raises(bpgpu.DataError, match="2 unexpected bytes"):
        read_idx(p)


@pytest.mark.parametrize("head,match", [(b"\x01\x00\x08\x01", "bad magic"),
                                        (b"\x00\x00\x07\x01", "unknown IDX data type"),
                                        (b"\x00\x00\x08\x03\x00\x00", "truncated header"),
                                        (b"\x00\x00", "too short")])
def test_idx_bad_headers(tmp_path, head, match):
    p = tmp_path / "x.idx"
    p.write_bytes(head)
    with pytest.raises(bpgpu.DataError, match=match):
        read_idx(p)


def test_idx_damaged_gzip(tmp_path):
    p = tmp_path / "x.gz"
    write_idx(p, np.zeros((100, 100), np.uint8))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 30])
    with pytest.raises(bpgpu.DataError, match="gzip"):
        read_idx(p)


def test_idx_mislabelled_counts_and_range(tmp_path):
    d = _fake_dir(tmp_path, labels=[1, 2, 3])           # 5 images, 3 labels
    with pytest.raises(bpgpu.DataError, match="5 images but 3 labels"):
        load_idx_dir(d)
    d = _fake_dir(tmp_path, labels=[1, 2, 3, 4, 11])   # label 11 of 10 classes
    with pytest.raises(bpgpu.DataError, match="labels outside"):
        load_idx_dir(d)


def test_idx_checksum_mismatch(tmp_path):
    d = _fake_dir(tmp_path)
    (d / "SHA256SUMS").write_text(f"{'0' * 64}  train-images-idx3-ubyte\n")
    with pytest.raises(bpgpu.DataError, match="checksum"):
        load_idx_dir(d)
    raw = gzip.decompress((d / "train-images-idx3-ubyte.gz").read_bytes())
    (d / "SHA256SUMS").write_text(f"{hashlib.sha256(raw).hexdigest()}  train-images-idx3-ubyte\n")
    load_idx_dir(d)


def test_idx_missing_file(tmp_path):
    d = _fake_dir(tmp_path)
    os.remove(d / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(bpgpu.DataError, match="missing t10k-labels"):
        load_idx_dir(d)


def test_shipped_mnist_checksums_are_checked(tmp_path):
    from importlib import resources
    src = resources.files("bpgpu.datasets") / "data" / "mnist"
    d = tmp_path / "m"
    shutil.copytree(src, d)
    target = d / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(target.read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    target.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(bpgpu.DataError, match="checksum mismatch"):
        load_idx_dir(d)


def test_xor_and_moons():
    X, y = bpgpu.datasets.xor()
    assert X.shape == (4, 2) and list(y) == [0, 1, 1, 0]
    X, y = bpgpu.datasets.moons(201, 0.2, seed=1)
    assert X.shape == (201, 2) and np.bincount(y).tolist() == [100, 101]
    X2, _ = bpgpu.datasets.moons(201, 0.2, seed=1)
    np.testing.assert_array_equal(X, X2)   # exact: same seed, same calls
    clean, yc = bpgpu.datasets.moons(400, 0.0, seed=2)
    r0 = np.hypot(*clean[yc == 0].T)
    np.testing.assert_allclose(r0, 1.0)


ADMISSIONS = """admit,gre,gpa,rank
0,380,3.61,3
1,660,3.67,3
1,800,4.0,1
1,640,3.19,4
0,520,2.93,4
1,760,3.0,2
1,560,2.98,1
0,400,3.08,2
1,540,3.39,3
0,700,3.92,2
"""


def test_csv_graduate_admissions(tmp_path):
    p = tmp_path / "admissions.csv"
    p.write_text(ADMISSIONS)
    data = load_csv(p, target="admit", categorical=["rank"], test_fraction=0.2, seed=0)
    assert data.task == "classification" and data.classes == ["0", "1"]
    assert data.X_train.shape == (8, 2 + 4) and data.X_test.shape == (2, 6)
    assert data.feature_names[:2] == ["gre", "gpa"]
    assert data.feature_names[2:] == [f"rank={r}" for r in "1234"]
    np.testing.assert_allclose(data.X_train[:, :2].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(data.X_train[:, :2].std(axis=0), 1)
    assert set(data.X_train[:, 2:].sum(axis=1)) == {1.0}   # exact: zeros and one 1.0 per row


def test_csv_errors(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("a,b\n1,\n")
    with pytest.raises(bpgpu.DataError, match="line 2: missing value in column 'b'"):
        load_csv(p)
    p.write_text("a,b\n1,2,3\n")
    with pytest.raises(bpgpu.DataError, match="3 fields"):
        load_csv(p)
    p.write_text("a,b\n1,2\n")
    with pytest.raises(bpgpu.DataError, match="no column 'z'"):
        load_csv(p, target="z")


def test_csv_regression_target(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("x,colour,y\n" + "".join(f"{i},{'rg'[i % 2]},{i * 0.37:.3f}\n" for i in range(30)))
    data = load_csv(p, test_fraction=0.0)
    assert data.task == "regression" and data.y_train.dtype == np.float64
    assert data.feature_names == ["x", "colour=g", "colour=r"]


# ------------------------------------------------------------------ IDX headers that lie
@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_claiming_2_31_rows_is_checked_against_the_data(tmp_path, gz):
    """A header claiming 2^31 x 28 x 28 images over 10 bytes: an error, not a 1.6 TB allocation."""
    head = bytes([0, 0, 8, 3]) + np.array([2 ** 31, 28, 28], ">u4").tobytes()
    p = tmp_path / ("x.gz" if gz else "x.idx")
    p.write_bytes(gzip.compress(head + bytes(10)) if gz else head + bytes(10))
    with pytest.raises(bpgpu.DataError, match="truncated"):
        read_idx(p)


def test_idx_gzip_is_decompressed_only_as_far_as_the_header_declares(tmp_path):
    """A small header over a large run of zeros (a gzip 'bomb'): stops after the declared size."""
    head = bytes([0, 0, 8, 1]) + np.array([16], ">u4").tobytes()
    p = tmp_path / "bomb.gz"
    p.write_bytes(gzip.compress(head + bytes(64 << 20), compresslevel=1))
    with pytest.raises(bpgpu.DataError, match="more data than its IDX header declares"):
        read_idx(p)


def test_idx_gzip_members_and_trailing_bytes(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(4, 6)
    raw = bytes([0, 0, 8, 2]) + np.array(arr.shape, ">u4").tobytes() + arr.tobytes()
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(raw[:10]) + gzip.compress(raw[10:]))   # two gzip members
    np.testing.assert_array_equal(read_idx(p), arr)   # uint8: integers
    p.write_bytes(gzip.compress(raw) + b"junk")
    with pytest.raises(bpgpu.DataError, match="4 bytes after the end of the gzip stream"):
        read_idx(p)


def test_idx_too_many_dimensions(tmp_path):
    p = tmp_path / "x.idx"
    p.write_bytes(bytes([0, 0, 8, 40]) + np.ones(40, ">u4").tobytes() + b"\x07")
    with pytest.raises(bpgpu.DataError, match="40 dimensions"):
        read_idx(p)


# ------------------------------------------------------------------ CSV encodings and bad values
ACCENTED = "ville,température,catégorie\n" + "".join(
    f"{['Zürich', 'Besançon', 'Málaga'][i % 3]},{10 + i * 0.5},{['été', 'hiver'][i % 2]}\n"
    for i in range(12))


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "latin-1", "cp1252", "utf-16"])
def test_csv_encodings_are_detected(tmp_path, encoding):
    """UTF-8 (with or without BOM), UTF-16 with its BOM, and Latin-1 / Windows-1252 exports."""
    p = tmp_path / "x.csv"
    p.write_bytes(ACCENTED.encode(encoding))
    data = load_csv(p, test_fraction=0.0)
    assert data.classes == ["hiver", "été"]
    assert "ville=Besançon" in data.feature_names and "température" in data.feature_names


def test_csv_windows_1252_punctuation(tmp_path):
    p = tmp_path / "x.csv"
    p.write_bytes("price,label\n€5,“a”\n€6,’b’\n€5,“a”\n".encode("cp1252"))
    data = load_csv(p, test_fraction=0.0)
    assert data.classes == ["’b’", "“a”"] and "price=€5" in data.feature_names


def test_csv_explicit_encoding(tmp_path):
    p = tmp_path / "x.csv"
    p.write_bytes(ACCENTED.encode("latin-1"))
    assert load_csv(p, encoding="latin-1", test_fraction=0.0).classes == ["hiver", "été"]
    with pytest.raises(bpgpu.DataError, match="not valid utf-8"):
        load_csv(p, encoding="utf-8")
    with pytest.raises(bpgpu.DataError, match="unknown encoding"):
        load_csv(p, encoding="no-such-codec")


@pytest.mark.parametrize("text,match", [
    ("a,b\n1,nan\n2,3\n", "line 2: column 'b' holds 'nan', not a finite number"),
    ("a,b\n1,2\n1e999,3\n", "line 3: column 'a' holds '1e999'"),
    ("a,a\n1,2\n", "column 'a' appears twice"),
    ("a\n1\n2\n", "no feature columns"),
    ("a,b\n1,2\n3,\"" + "x" * 200_000 + "\"\n", "line 3: not readable as CSV"),
    ("id,y\n" + "".join(f"row{i},{i % 2}\n" for i in range(1200)), "1200 distinct values"),
])
def test_csv_bad_values_name_line_and_column(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(bpgpu.DataError, match=match):
        load_csv(p, test_fraction=0.0)


def test_csv_blank_lines_are_skipped_and_lines_counted(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n\n3,4\n\n5,\n")
    with pytest.raises(bpgpu.DataError, match="line 6: missing value in column 'b'"):
        load_csv(p)


def test_csv_huge_values_are_standardised_without_overflow(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,y\n1e300,0\n-1e300,1\n1e300,0\n-1e300,1\n")
    data = load_csv(p, test_fraction=0.0)
    assert np.all(np.isfinite(data.X_train)) and sorted(data.X_train[:, 0]) == [-1, -1, 1, 1]
