"""The start of a data-parallel run: the same work on every rank, rank 0's state, one GPU each.

:func:`start` checks that every rank trains what rank 0 trains (:func:`_identity`,
:func:`_differences`) and gives every rank rank 0's state; :func:`use_local_gpu` gives each rank
its own GPU.
"""

from __future__ import annotations

import numpy as np

from .._compat import cupy_status
from ..checkpoint import data_fingerprints, read_checkpoint
from ..errors import BackendUnavailable, BpgpuError
from ..options import plain
from .comm import DistributedError

__all__ = ["start", "use_local_gpu"]


def _identity(model, X, y, validation_data, options, sample_weight=None):
    """What must be the same on every rank: the network, backend, options and data digests."""
    network = {k: v for k, v in model.config().items() if k != "seed"}  # rank 0's seed wins
    return {"network": plain(network), "backend": model.backend.name,
            "options": options.agreement(),
            "data": data_fingerprints(X, y, validation_data, sample_weight)}


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
                    what = ", ".join(k.replace("_", " ") for k in keys) + " differ"
                else:
                    what = "; ".join(f"{k} {b.get(k)!r} (rank 0: {a.get(k)!r})" for k in keys)
            else:
                what = f"{b!r} (rank 0: {a!r})"
            parts.append(f"rank {rank}: {section}: {what}")
    return "; ".join(parts)


def start(par, model, X, y, validation_data, options, sample_weight=None):
    """The start of a data-parallel ``fit`` on the rank of ``par`` (a
    :class:`~bpgpu.distributed.comm.Communicator`): check, then give every rank rank 0's state.

    Every rank gathers every other rank's :func:`_identity`; any difference is a
    :class:`DistributedError` on all of them. Then rank 0's network state (parameters,
    generator state, stream key, step count, seed) is broadcast, and rank 0 reads
    ``options.resume`` (if given) and sends it.

    Returns
    -------
    bpgpu.checkpoint.Checkpoint or None
    """
    par.started = True
    everyone = par.allgather(_identity(model, X, y, validation_data, options, sample_weight),
                             "the start-up check")
    failed = [(rank, who[1]) for rank, who in enumerate(everyone) if isinstance(who, tuple)]
    if failed:          # ranks that stopped before fit (see run_command) sent their error here
        raise DistributedError("; ".join(f"rank {r}: {m}" for r, m in failed), report=par.lead)
    problem = _differences(everyone)
    if problem:
        raise DistributedError("the ranks were given different work; " + problem,
                               report=par.lead)
    state = model.state()
    host = np.ascontiguousarray(model.backend.to_host(state.pop("params")))
    state = par.bcast(state if par.lead else None, "the start-up broadcast")
    with par.watch("the start-up broadcast"):
        par.comm.Bcast(host, root=0)
    model.load_state(dict(state, params=host))
    return _read_on_lead(par, options.resume) if options.resume is not None else None


def _read_on_lead(par, path):
    """The checkpoint at ``path``, read by rank 0 and sent to every rank (an error on all)."""
    outcome, saved, error = None, None, None
    if par.lead:
        try:
            saved = read_checkpoint(path)
        except (BpgpuError, OSError) as exc:
            outcome, error = f"{type(exc).__name__}: {exc}", exc
    outcome = par.bcast(saved if outcome is None else outcome, "reading the checkpoint")
    if isinstance(outcome, str):
        if par.lead:
            raise error
        raise DistributedError(f"rank 0 could not read the checkpoint: {outcome}", report=False)
    return outcome


def use_local_gpu(par):
    """Make this rank use its own GPU: local rank (among the ranks on this machine) modulo the
    number of devices. Call it before building the model. ``par`` is a
    :class:`~bpgpu.distributed.comm.Communicator` (a DataParallel). Returns the device id."""
    cupy, why = cupy_status()
    if cupy is None:
        raise BackendUnavailable(f"one GPU per rank needs a working CuPy: {why}")
    local = par.comm.Split_type(par.MPI.COMM_TYPE_SHARED, key=par.rank)
    try:
        local_rank = local.Get_rank()
    finally:
        local.Free()
    device = local_rank % cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(device).use()
    return device
