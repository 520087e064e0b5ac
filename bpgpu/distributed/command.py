"""A ``bpgpu`` command as one rank of ``mpirun -n P bpgpu ... --distributed``: :func:`run_command`."""

from __future__ import annotations

import os
import sys
import traceback

from .._compat import cupy_status
from ..errors import USER_ERRORS
from .comm import mpi
from .faults import _say
from .parallel import DataParallel
from .startup import use_local_gpu

__all__ = ["run_command"]


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
        if isinstance(exc, USER_ERRORS):
            if par.lead:            # one line, as bpgpu.cli.main prints it
                print(f"bpgpu: error: {_first_line(exc)}", file=sys.stderr, flush=True)
        else:                       # a bug: its traceback, wherever it happened
            _say("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        code = 2
    par.barrier("the end of the run")
    return code


def _first_line(exc):
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
