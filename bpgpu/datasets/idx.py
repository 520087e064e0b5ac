"""Reader for the IDX format of MNIST and Fashion-MNIST (gzip-compressed or raw).

IDX: two zero bytes, a type code, the number of dimensions, then each dimension as a big-endian
uint32, then the data in C order, big-endian. The reader checks every one of those and says exactly
what is wrong with a bad file (bad magic, unknown type, truncated data, trailing bytes, a damaged
gzip stream).
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from ..errors import DataError

__all__ = ["read_idx", "read_idx_bytes", "write_idx"]

_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
          0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _raw_bytes(path) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(f"{path}: damaged or truncated gzip stream ({exc})") from None
    return data


def read_idx_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse decompressed IDX bytes into an array (native byte order)."""
    if len(data) < 4:
        raise DataError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"{name}: bad magic number {data[:4].hex()} (an IDX file starts with two "
                        "zero bytes)")
    code, ndim = data[2], data[3]
    if code not in _TYPES:
        raise DataError(f"{name}: unknown IDX data type 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated header ({len(data)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = _TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found < expected:
        raise DataError(f"{name}: truncated: header says {dims} ({expected} bytes of data), "
                        f"file holds {found}")
    if found > expected:
        raise DataError(f"{name}: {found - expected} unexpected bytes after the {dims} data")
    arr = np.frombuffer(data, dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw, detected by content) into a numpy array.

    Raises
    ------
    DataError
        With the file name and exactly what is wrong.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    return read_idx_bytes(_raw_bytes(path), path)


def write_idx(path, array, compress=None) -> None:
    """Write ``array`` as IDX (gzip when ``compress`` or the name ends in .gz). For tests/tools."""
    array = np.asarray(array)
    codes = {v.newbyteorder("=") if v.itemsize > 1 else v: k for k, v in _TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("=") if array.dtype.itemsize > 1 else array.dtype)
    if code is None:
        raise DataError(f"cannot write dtype {array.dtype} as IDX")
    head = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    body = array.astype(_TYPES[code], copy=False).tobytes()
    compress = str(path).endswith(".gz") if compress is None else compress
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(head + body)
