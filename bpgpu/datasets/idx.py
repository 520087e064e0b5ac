"""Reader for the IDX format of MNIST and Fashion-MNIST (gzip-compressed or raw).

IDX: two zero bytes, a type code, the number of dimensions, then each dimension as a big-endian
uint32, then the data in C order, big-endian. The reader checks every one of those and says exactly
what is wrong with a bad file (bad magic, unknown type, truncated data, trailing bytes, a damaged
gzip stream). It never allocates more than the file holds: the header's dimensions are checked
against the data actually present before any array is made, and a gzip stream is decompressed only
up to the size its header declares (a corrupt or hostile header cannot make it allocate gigabytes).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from ..errors import DataError

__all__ = ["read_idx", "read_idx_bytes", "map_idx", "is_gzip", "write_idx"]

_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
          0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


#: numpy's oldest supported limit on dimensions; real IDX files have 1 to 4
_MAX_DIMS = 32
_GZIP_CHUNK = 8 << 20   # decompressed bytes per step of the bounded gunzip


def _declared_size(head) -> int | None:
    """Total size (header + data) an IDX header declares, or None while it is incomplete or
    invalid (then read_idx_bytes says what is wrong with it)."""
    if len(head) < 4 or head[0] or head[1] or head[2] not in _TYPES or not 0 < head[3] <= _MAX_DIMS:
        return None
    header = 4 + 4 * head[3]
    if len(head) < header:
        return None
    dims = np.frombuffer(bytes(head[4:header]), ">u4")
    return header + math.prod(int(d) for d in dims) * _TYPES[head[2]].itemsize


def _gunzip(data: bytes, path) -> bytes:
    """Decompress gzip ``data`` (one or more members), stopping as soon as the output exceeds the
    size the IDX header at its start declares."""
    out = bytearray()
    rest = data
    while True:   # one gzip member per pass
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)   # the gzip wrapper checks CRC32 and length
        while not d.eof:
            chunk = d.decompress(rest, _GZIP_CHUNK)
            if not chunk and len(d.unconsumed_tail) == len(rest):   # no progress: input is over
                raise DataError(f"{path}: damaged or truncated gzip stream (it ends early)")
            rest = d.unconsumed_tail
            out += chunk
            limit = _declared_size(out)
            if limit is not None and len(out) > limit:
                raise DataError(f"{path}: more data than its IDX header declares "
                                f"({limit} bytes in all)")
            if limit is None and len(out) >= 4 + 4 * _MAX_DIMS:
                return bytes(out)   # a header no reader accepts: read_idx_bytes says why
        rest = d.unused_data
        if not rest:
            return bytes(out)
        if rest[:2] != b"\x1f\x8b":
            raise DataError(f"{path}: {len(rest)} bytes after the end of the gzip stream")


def _raw_bytes(path) -> bytes:
    """The decompressed content of an IDX file (gzip detected by its magic number)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data[:2] == b"\x1f\x8b":
        try:
            return _gunzip(data, path)
        except zlib.error as exc:
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
    if ndim == 0 or ndim > _MAX_DIMS:
        raise DataError(f"{name}: IDX header declares {ndim} dimensions (1 to {_MAX_DIMS} "
                        "supported)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated header ({len(data)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = _TYPES[code]
    expected = math.prod(dims) * dtype.itemsize   # exact integers: no overflow, checked first
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


def is_gzip(path) -> bool:
    """True when the file at ``path`` starts with the gzip magic number."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def map_idx(path) -> np.ndarray:
    """An uncompressed IDX file of single-byte values as a read-only ``np.memmap`` (never read
    whole: training streams it, :mod:`bpgpu.rows`); any other IDX file read as
    :func:`read_idx` reads it. The header and the file's size get the same checks.

    Raises
    ------
    DataError
        With the file name and exactly what is wrong.
    """
    path = os.fspath(path)
    if not os.path.isfile(path) or is_gzip(path):
        return read_idx(path)
    with open(path, "rb") as f:
        head = f.read(4 + 4 * _MAX_DIMS)
    size = os.path.getsize(path)
    declared = _declared_size(head)
    if declared is None or declared != size or _TYPES[head[2]].itemsize != 1:
        return read_idx(path)            # says what is wrong; multi-byte types are converted
    ndim = head[3]
    dims = tuple(int(d) for d in np.frombuffer(head, ">u4", ndim, 4))
    if 0 in dims:                        # nothing to map (mmap refuses an empty length)
        return np.zeros(dims, _TYPES[head[2]])
    return np.memmap(path, _TYPES[head[2]], "r", offset=4 + 4 * ndim, shape=dims)


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
