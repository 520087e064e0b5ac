"""The gradient reductions of a data-parallel step: MPI on host memory, NCCL on GPUs.

Both reducers hold ``wire``, the flat gradient buffer plus one stop-flag element, and sum it over
the ranks once per step (or layer by layer with overlap, :func:`_layer_segments`'s ranges).
"""

from __future__ import annotations

import socket
import time

import numpy as np

from .._compat import cupy_status
from ..errors import BackendUnavailable
from .comm import DistributedError
from .faults import _WATCHDOG


class _HostReducer:
    """Sums the flat gradient buffer over the ranks with MPI, on host (numpy) memory.

    The model's gradient buffer becomes a view of ``wire``, which has one more element: the
    number of ranks asking to stop, summed by the same Allreduce.
    """

    def __init__(self, par, model):
        self.par, self.model = par, model
        self.MPI = par.MPI
        n = model.n_params
        self.wire = np.zeros(n + 1, model.dtype)
        self.flag = self.wire[n:]
        self.segments = _layer_segments(model)
        self.requests = []
        self.started = [False] * model.n_layers

    def begin(self, asking):
        """Before a step: this rank's stop request goes into the flag element."""
        self.flag[0] = 1 if asking else 0
        if self.par.overlap:
            self.requests.clear()
            for l in range(len(self.started)):
                self.started[l] = False

    def layer_ready(self, l):
        """Layer ``l``'s gradient is written: start its reductions (overlap only)."""
        MPI, comm = self.MPI, self.par.comm
        self.started[l] = True
        for lo, hi in self.segments[l]:
            self.requests.append(comm.Iallreduce(MPI.IN_PLACE, self.wire[lo:hi], op=MPI.SUM))
        MPI.Request.Testall(self.requests)    # drives the progress of those already started

    def finish(self, grads):
        """After back-propagation: sum the gradients (and the flag) over the ranks."""
        MPI, dog = self.MPI, _WATCHDOG
        dog.par = self.par
        if self.par.overlap:
            for l in reversed(range(len(self.started))):   # in backward's order, as every
                if not self.started[l]:        # rank must start collectives in the same order
                    self.layer_ready(l)        # (a step with no rows started none)
            dog.what, dog.since = "the gradient Iallreduce", time.monotonic()
            MPI.Request.Waitall(self.requests)
        else:
            dog.what, dog.since = "the gradient Allreduce", time.monotonic()
            self.par.comm.Allreduce(MPI.IN_PLACE, self.wire, op=MPI.SUM)
        dog.since = None

    def stop_requested(self):
        """Whether a rank asked to stop at the step just finished (the same on every rank)."""
        return self.flag[0] > 0

    def flush(self):
        """End of an epoch: nothing is pending on the host."""


class _NcclReducer:
    """Sums the flat gradient buffer over the ranks with NCCL, one GPU per rank.

    Calls are enqueued on the compute stream (or, with overlap, on a second stream that waits for
    each layer's gradient through an event); the host never waits inside an epoch. The flag
    element is copied to pinned host memory after each step's reduction and read one step later
    (after the event of that copy), the same step on every rank.
    """

    def __init__(self, par, model):
        cupy, why = cupy_status()
        if cupy is None:
            raise BackendUnavailable(f"data-parallel training on GPUs needs CuPy: {why}")
        try:
            from cupy.cuda import nccl
        except Exception as exc:
            nccl, why = None, f"{type(exc).__name__}: {exc}"
        if nccl is None or not getattr(nccl, "available", True):
            raise BackendUnavailable(
                "data-parallel training with the cupy backend sums gradients with NCCL, which "
                f"CuPy cannot load here ({why if nccl is None else 'cupy.cuda.nccl.available is False'}); "
                "install it: pip install nvidia-nccl-cu12 (or -cu13), or run on the CPU")
        self.par, self.model, self.cupy, self.nccl = par, model, cupy, nccl
        device = cupy.cuda.Device().id
        problem = None
        if model.params.device.id != device:
            problem = (f"rank {par.rank}: the model lives on GPU {model.params.device.id} but "
                       f"the rank uses GPU {device}: call bpgpu.distributed.use_local_gpu before "
                       "building the model")
        bus = cupy.cuda.runtime.deviceGetPCIBusId(device)
        gathered = par.allgather((socket.gethostname(), bus, problem), "the GPU check")
        problems = [p for _, _, p in gathered if p]
        if problems:
            raise DistributedError("; ".join(problems), report=par.lead)
        places = [(host, bus) for host, bus, _ in gathered]
        seen = {}
        for rank, place in enumerate(places):
            if place in seen:
                raise DistributedError(
                    f"ranks {seen[place]} and {rank} use the same GPU ({place[1]} on {place[0]}): "
                    "give each rank its own (bpgpu.distributed.use_local_gpu before building the "
                    "model, or CUDA_VISIBLE_DEVICES)", report=par.lead)
            seen[place] = rank
        uid = par.bcast(nccl.get_unique_id() if par.lead else None, "the NCCL set-up")
        with par.watch("the NCCL set-up"):
            self.comm = nccl.NcclCommunicator(par.size, uid, par.rank)
        n = model.n_params
        self.wire = cupy.zeros(n + 1, model.dtype)
        self.flag = self.wire[n:]
        self.kind = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                     np.dtype(np.float64): nccl.NCCL_FLOAT64}[np.dtype(model.dtype)]
        self.segments = _layer_segments(model)
        self.started = [False] * model.n_layers
        import cupyx
        self.flag_host = cupyx.empty_pinned((2,), model.dtype)
        self.copied = [cupy.cuda.Event(), cupy.cuda.Event()]
        self.count = 0
        self.asked = False
        if par.overlap:
            self.side = cupy.cuda.Stream(non_blocking=True)
            self.ready = [cupy.cuda.Event() for _ in range(model.n_layers)]
            self.reduced = cupy.cuda.Event()

    def _allreduce(self, lo, hi, stream):
        item = self.wire.itemsize
        ptr = self.wire.data.ptr + lo * item
        self.comm.allReduce(ptr, ptr, hi - lo, self.kind, self.nccl.NCCL_SUM, stream.ptr)

    def begin(self, asking):
        self.flag.fill(1 if asking else 0)
        for l in range(len(self.started)):
            self.started[l] = False

    def layer_ready(self, l):
        stream = self.cupy.cuda.get_current_stream()
        self.ready[l].record(stream)
        self.side.wait_event(self.ready[l])
        self.started[l] = True
        for lo, hi in self.segments[l]:
            self._allreduce(lo, hi, self.side)

    def finish(self, grads):
        cupy = self.cupy
        stream = cupy.cuda.get_current_stream()
        if self.par.overlap:
            for l in reversed(range(len(self.started))):   # backward's order, on every rank
                if not self.started[l]:
                    self.layer_ready(l)
            self.reduced.record(self.side)
            stream.wait_event(self.reduced)
        else:
            self._allreduce(0, self.wire.size, stream)
        slot = self.count % 2
        item = self.wire.itemsize
        cupy.cuda.runtime.memcpyAsync(self.flag_host.ctypes.data + slot * item,
                                      self.flag.data.ptr, item,
                                      cupy.cuda.runtime.memcpyDeviceToHost, stream.ptr)
        self.copied[slot].record(stream)
        self.asked = self._read(1 - slot) if self.count > 0 else False
        self.count += 1

    def _read(self, slot):
        with self.par.watch("the NCCL gradient reduction"):
            self.copied[slot].synchronize()
        return bool(self.flag_host[slot] > 0)

    def stop_requested(self):
        return self.asked

    def flush(self):
        """End of an epoch: wait for the last step's reduction; the next epoch starts afresh
        (a stop request of the last step is in the end-of-epoch agreement)."""
        if self.count > 0:
            self._read((self.count - 1) % 2)
        self.count, self.asked = 0, False


def _layer_segments(model):
    """For each weight layer, the ``[lo, hi)`` ranges of its weights and its bias in the flat
    buffer; the last layer's bias range runs on over the stop flag after the buffer (its
    gradient is the first one ready)."""
    sizes, L = model.sizes, model.n_layers
    w_off = np.cumsum([0] + [i * o for i, o in zip(sizes[:-1], sizes[1:])])
    b_off = model.n_weights + np.cumsum([0] + list(sizes[1:]))
    segments = []
    for l in range(L):
        b_hi = int(b_off[l + 1]) + (1 if l == L - 1 else 0)
        segments.append(((int(w_off[l]), int(w_off[l + 1])), (int(b_off[l]), b_hi)))
    return segments
