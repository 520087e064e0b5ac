"""The start and the command line of a data-parallel run: the same work on every rank, one GPU each.

:func:`start` checks that every rank trains what rank 0 trains (:func:`_identity`,
:func:`_differences`) and gives every rank rank 0's state; :func:`run_command` runs a ``bpgpu``
command as one rank of ``mpirun ... --distributed``; :func:`use_local_gpu` gives each rank its own
GPU.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import numpy as np

from .._compat import cupy_status
from ..errors import BackendUnavailable, BpgpuError
from .comm import DataParallel, DistributedError, mpi
from .faults import _say


def _identity(model, X, y, validation_data, settings):
    """What must be the same on every rank: the network, backend, options and data digests."""
    from ..checkpoint import fingerprint
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
    from ..checkpoint import read_checkpoint
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
    from ..cli import UsageError
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
