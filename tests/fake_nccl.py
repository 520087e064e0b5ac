"""A host-memory stand-in for the parts of CuPy and NCCL that bpgpu.distributed's NCCL reducer uses.

With it, ``_NcclReducer`` runs its own control flow under ``mpirun`` without a GPU: the pointer
arithmetic of the flat buffer and its per-layer segments, the stop flag copied to "pinned" memory
and read one step late, the two event slots, the overlap stream's ordering, the GPU checks. Every
"device" array is a numpy array (:class:`DeviceArray`, with ``.data.ptr`` and ``.device.id``);
``NcclCommunicator.allReduce`` is an MPI Allreduce of the memory its pointer names; streams and
events are synchronous no-ops. It checks the reducer's logic, not CUDA: the GPU tests do that.

``install(rank)`` puts the fakes in ``sys.modules`` and in bpgpu.distributed.reducers, and makes the
distributed run use the NCCL reducer for host arrays; it returns the fake nccl module (its
``calls`` lists the element count of every allReduce) and a function that undoes all that.
"""

import ctypes
import sys
import types

import numpy as np


class DeviceArray(np.ndarray):
    """A numpy array that answers ``.data.ptr`` and ``.device.id`` like a CuPy array."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)

    @property
    def device(self):
        return types.SimpleNamespace(id=0)


class _Event:
    def record(self, stream=None):
        pass

    def synchronize(self):
        pass


class _Stream:
    ptr = 0

    def __init__(self, non_blocking=False):
        pass

    def wait_event(self, event):
        pass


def _as_array(ptr, count, dtype):
    ctype = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}[dtype]
    return np.ctypeslib.as_array((ctype * count).from_address(ptr))


def install(rank):
    from mpi4py import MPI

    import bpgpu.distributed.reducers as reducers
    import bpgpu.distributed.run as run

    comm = MPI.COMM_WORLD.Dup()
    kinds = {0: np.dtype(np.float32), 1: np.dtype(np.float64)}
    calls = []

    class NcclCommunicator:
        def __init__(self, size, uid, r):
            assert (size, r) == (comm.Get_size(), comm.Get_rank()) and uid == b"fake-uid"

        def allReduce(self, send, recv, count, kind, op, stream):
            assert send == recv and op == nccl.NCCL_SUM
            calls.append(count)
            comm.Allreduce(MPI.IN_PLACE, _as_array(recv, count, kinds[kind]), op=MPI.SUM)

    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.available = True
    nccl.NCCL_FLOAT32, nccl.NCCL_FLOAT64, nccl.NCCL_SUM = 0, 1, 7
    nccl.get_unique_id = lambda: b"fake-uid"
    nccl.NcclCommunicator = NcclCommunicator
    nccl.calls = calls

    runtime = types.SimpleNamespace(
        memcpyDeviceToHost=2,
        memcpyAsync=lambda dst, src, size, kind, stream: ctypes.memmove(dst, src, size),
        deviceGetPCIBusId=lambda device: f"0000:{rank:02x}:00.0",
        getDeviceCount=lambda: 1)
    cuda = types.ModuleType("cupy.cuda")
    cuda.nccl, cuda.runtime = nccl, runtime
    cuda.Event, cuda.Stream = _Event, _Stream
    cuda.Device = lambda device=None: types.SimpleNamespace(id=0, use=lambda: None)
    cuda.get_current_stream = lambda: _Stream()
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda
    cupy.zeros = lambda shape, dtype: np.zeros(shape, dtype).view(DeviceArray)
    cupyx = types.ModuleType("cupyx")
    cupyx.empty_pinned = lambda shape, dtype: np.zeros(shape, dtype)
    fakes = {"cupy": cupy, "cupy.cuda": cuda, "cupy.cuda.nccl": nccl, "cupyx": cupyx}
    saved_modules = {name: sys.modules.get(name) for name in fakes}
    saved = (reducers.cupy_status, run._HostReducer)
    sys.modules.update(fakes)
    reducers.cupy_status = lambda: (cupy, "fake")
    run._HostReducer = reducers._NcclReducer     # host arrays, NCCL's reducer

    def restore():
        reducers.cupy_status, run._HostReducer = saved
        for name, module in saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        comm.Free()

    return nccl, restore
