"""Emulated device memory: every buffer in its own mapping between two inaccessible guard pages.

A buffer ends (to within 16 bytes, its alignment) at the page that follows it, which is mapped
with no access: a kernel that reads or writes past the end faults at once, and the host emulation
(shim.h) turns the fault into an error naming the address, which :meth:`DeviceMemory.describe`
turns into "N bytes past buffer X". The bytes between the leading guard page and the data, and
the few alignment bytes after it, hold a canary pattern checked after every launch, so a write
just before the start (or into the alignment gap) is caught too. Reads there are not. During a
launch, the buffers passed only as ``const`` arguments are mapped read-only.

:class:`DeviceArray` is a numpy array living in such a buffer, with the few attributes of
``cupy.ndarray`` that the cupy backend reads (``data.ptr``, ``_c_contiguous``, ``set``, ``get``).
Arrays that numpy creates from device arrays (ufunc results, reductions) are DeviceArrays in
ordinary host memory: the reference ops may use them, a kernel launch refuses them.

While a stream captures a CUDA graph (:func:`capturing`), an allocation, a host transfer (a
read or write of device data by the host: ``get``, ``set``, an item) and any numpy operation on
device arrays raise :class:`CaptureError`: on a GPU the first two are errors or bugs inside a
capture, and the last would be a CuPy kernel that a GPU captures but this emulation would run at
once, so a test could pass while the graph missed it. Views (slices, reshapes) stay allowed.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import weakref

import numpy as np

PAGE = mmap.PAGESIZE
ALIGN = 16
CANARY = 0xA5
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_PROT_NONE, _PROT_READ, _PROT_RW = 0, 1, 3
_MAP_PRIVATE_ANON = 0x02 | 0x20
_MAP_FAILED = ctypes.c_void_p(-1).value


class DeviceMemoryError(Exception):
    """An access outside every device buffer (a cuBLAS operand, a kernel argument)."""


class CaptureError(Exception):
    """Something a stream capture cannot hold: an allocation, a host transfer, a host op."""


#: The captures in progress in this process (the streams capturing), see :func:`no_capture`.
CAPTURING: list = []


def no_capture(what):
    """Raise :class:`CaptureError` when a stream is capturing."""
    if CAPTURING:
        raise CaptureError(f"{what} while a stream captures a CUDA graph")


class _Pointer:
    __slots__ = ("ptr",)

    def __init__(self, ptr):
        self.ptr = ptr


class PinnedBuffer(bytearray):
    """What the emulated ``cupy.cuda.alloc_pinned_memory`` returns: host bytes marked as
    page-locked."""


def is_pinned(array) -> bool:
    """Whether ``array`` is a view of a :class:`PinnedBuffer` (through any chain of views)."""
    base = array
    while base is not None:
        if isinstance(base, PinnedBuffer):
            return True
        if isinstance(base, memoryview):
            base = base.obj
            continue
        base = getattr(base, "base", None)
    return False


class DeviceArray(np.ndarray):
    """A numpy array that stands for a ``cupy.ndarray``."""

    @property
    def data(self):
        return _Pointer(self.__array_interface__["data"][0])

    @property
    def __cuda_array_interface__(self):
        """CuPy's interface (the address as ``data[0]``): how code finds a device pointer."""
        interface = dict(self.__array_interface__)
        interface["version"] = 3
        return interface

    @property
    def _c_contiguous(self):
        return self.flags.c_contiguous

    #: copies queued with a stream (CuPy's asynchronous ``set``), counted by the tests
    async_sets = 0

    def set(self, host, stream=None):
        """CuPy's ``ndarray.set``: with ``stream`` an asynchronous copy, which CUDA makes only
        from page-locked memory -- so the emulation refuses any other source there (the copy
        itself is done at once: the emulation is serial). Never inside a stream capture."""
        no_capture("a host-to-device copy (ndarray.set)")
        host = np.asarray(host)
        if host.shape != self.shape:
            raise ValueError(f"set: shape {host.shape} into {self.shape}")
        if host.dtype != self.dtype:
            raise ValueError(f"set: dtype {host.dtype} into {self.dtype}")
        if stream is not None:
            if not is_pinned(host):
                raise DeviceMemoryError("set(stream=...): the host array is not page-locked "
                                        "memory (an asynchronous copy from pageable memory is "
                                        "synchronous on a real GPU)")
            DeviceArray.async_sets += 1
        self[...] = host

    def get(self):
        no_capture("a device-to-host copy (ndarray.get)")
        return np.array(self)

    # ------------------------------------------------------------ the host's hands off in a capture
    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        no_capture(f"numpy.{ufunc.__name__} on device arrays (a CuPy kernel on a GPU)")
        plain = [x.view(np.ndarray) if isinstance(x, DeviceArray) else x for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, DeviceArray) else o
                                  for o in out)
        result = getattr(ufunc, method)(*plain, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        if isinstance(result, tuple):
            return tuple(r.view(DeviceArray) if isinstance(r, np.ndarray) else r for r in result)
        return result.view(DeviceArray) if isinstance(result, np.ndarray) else result

    def __array_function__(self, func, types, args, kwargs):
        no_capture(f"numpy.{func.__name__} on device arrays (a CuPy kernel on a GPU)")
        return super().__array_function__(func, types, args, kwargs)

    def __setitem__(self, key, value):
        no_capture("a write into a device array by the host")
        super().__setitem__(key, value)

    def fill(self, value):
        no_capture("a fill of a device array by the host")
        super().fill(value)

    def item(self, *args):
        no_capture("a device-to-host read (item)")
        return super().item(*args)

    def tolist(self):
        no_capture("a device-to-host read (tolist)")
        return super().tolist()

    def __float__(self):
        no_capture("a device-to-host read (float)")
        return super().__float__()

    def __int__(self):
        no_capture("a device-to-host read (int)")
        return super().__int__()

    def __bool__(self):
        no_capture("a device-to-host read (bool)")
        return super().__bool__()


class Allocation:
    """One mapping: [guard page][canary][data][canary][guard page]."""

    def __init__(self, nbytes):
        self.nbytes = int(nbytes)
        self.protected = False
        pages = -(-(self.nbytes + 2 * ALIGN) // PAGE)
        self.map_size = (pages + 2) * PAGE
        base = _libc.mmap(None, self.map_size, _PROT_RW, _MAP_PRIVATE_ANON, -1, 0)
        if base in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), "mmap failed")
        self.map_base = base
        for guard in (base, base + self.map_size - PAGE):
            if _libc.mprotect(guard, PAGE, _PROT_NONE) != 0:
                raise OSError(ctypes.get_errno(), "mprotect failed")
        self.region = (base + PAGE, base + self.map_size - PAGE)
        self.start = (self.region[1] - self.nbytes) & ~(ALIGN - 1)
        self.end = self.start + self.nbytes
        ctypes.memset(self.region[0], CANARY, self.start - self.region[0])
        ctypes.memset(self.end, CANARY, self.region[1] - self.end)

    def buffer(self):
        """A ctypes view of the data (it does not keep the mapping alive: the arrays do)."""
        return (ctypes.c_ubyte * self.nbytes).from_address(self.start)

    def read_only(self, flag: bool):
        """Map the data pages read-only (a kernel's ``const`` argument) or back to read-write."""
        if _libc.mprotect(self.region[0], self.region[1] - self.region[0],
                          _PROT_READ if flag else _PROT_RW) != 0:
            raise OSError(ctypes.get_errno(), "mprotect failed")
        self.protected = flag

    def canaries_intact(self) -> bool:
        head = ctypes.string_at(self.region[0], self.start - self.region[0])
        tail = ctypes.string_at(self.end, self.region[1] - self.end)
        return head.count(CANARY) == len(head) and tail.count(CANARY) == len(tail)


class DeviceMemory:
    """The emulated device's buffers, found by address (kernel arguments, cuBLAS pointers)."""

    def __init__(self):
        self._starts: list = []
        self._allocs: list = []
        self.live = 0
        #: the stream work is issued to now (its ``ptr``; 0 the legacy default stream)
        self.current_stream = 0
        #: stream ptr -> the work captured on it so far (callables, replayed by a graph)
        self.captures: dict = {}

    def capture_target(self, stream=None):
        """The list that work issued to ``stream`` (default: the current one) is captured into,
        or None when that stream is not capturing (the work then runs at once)."""
        return self.captures.get(self.current_stream if stream is None else stream)

    def empty(self, shape, dtype) -> DeviceArray:
        no_capture("an allocation of device memory")
        dtype = np.dtype(dtype)
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        alloc = Allocation(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        i = bisect.bisect(self._starts, alloc.start)
        self._starts.insert(i, alloc.start)
        self._allocs.insert(i, alloc)
        self.live += 1
        buffer = alloc.buffer()              # the arrays keep it alive; when it goes, so does
        weakref.finalize(buffer, self._free, alloc)   # the mapping
        return np.frombuffer(buffer, dtype=np.uint8).view(dtype).reshape(shape).view(DeviceArray)

    def _free(self, alloc):
        i = self._allocs.index(alloc)
        del self._allocs[i], self._starts[i]
        self.live -= 1
        _libc.munmap(alloc.map_base, alloc.map_size)

    def find(self, address, nbytes=1):
        """The allocation holding ``[address, address + nbytes)``, or None."""
        i = bisect.bisect(self._starts, address) - 1
        if i < 0:
            return None
        alloc = self._allocs[i]
        if address + max(nbytes, 0) <= alloc.end and address >= alloc.start:
            return alloc
        return None

    def owner(self, arr):
        """The allocation of a (C-contiguous) device array, or None for host memory."""
        return self.find(arr.__array_interface__["data"][0], arr.nbytes)

    def describe(self, address) -> str:
        """Where ``address`` lies relative to the nearest buffers."""
        i = bisect.bisect(self._starts, address) - 1
        notes = []
        for j in (i, i + 1):
            if 0 <= j < len(self._allocs):
                a = self._allocs[j]
                if a.map_base <= address < a.map_base + a.map_size:
                    if address >= a.end:
                        notes.append(f"{address - a.end} bytes past the end of a buffer of "
                                     f"{a.nbytes} bytes")
                    elif address < a.start:
                        notes.append(f"{a.start - address} bytes before the start of a buffer "
                                     f"of {a.nbytes} bytes")
                    elif a.protected:
                        notes.append(f"a write into a buffer of {a.nbytes} bytes passed as a "
                                     "const argument")
                    else:
                        notes.append(f"inside a buffer of {a.nbytes} bytes")
        return "; ".join(notes) or "not near any device buffer"

    def view(self, address, shape, strides, dtype):
        """A strided numpy view of device memory (cuBLAS's column-major operands), after checking
        that every element it spans lies in one buffer."""
        dtype = np.dtype(dtype)
        span = sum((n - 1) * s for n, s in zip(shape, strides)) + dtype.itemsize
        if min(shape) <= 0:
            span = 0
        alloc = self.find(address, span)
        if alloc is None:
            raise DeviceMemoryError(f"an operand of {shape} at {address:#x} spans {span} bytes "
                                    f"outside any device buffer "
                                    f"({self.describe(address + span - 1)})")
        return np.ndarray(shape, dtype, buffer=alloc.buffer(), offset=address - alloc.start,
                          strides=strides)
