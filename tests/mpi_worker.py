"""One rank of the data-parallel tests: ``mpirun -n P python tests/mpi_worker.py SPEC.json OUT``.

Runs every case of the JSON spec in turn with ``fit(..., comm=DataParallel(MPI.COMM_WORLD))`` and
writes what happened: rank 0 writes ``OUT/<case>.npy`` (the flat parameters) and every rank writes
``OUT/<case>.rank<r>.json`` (outcome, history, error). tests/test_distributed.py builds the specs
and compares the results with single-process training.

A case is a dict:

``name``; ``backend``, ``dtype``, ``sizes``, ``seed`` (ranks other than 0 add ``1000 * rank`` to
it: rank 0's state must win); ``n``: the first n MNIST training images; ``fit``: keyword
arguments of fit (a ``checkpoint``/``resume`` path may hold ``{rank}``); ``overlap``, ``timeout``:
DataParallel's options; ``sample_weight_seed``: train with integer sample weights drawn from it; ``fault``: ``{"rank", "step", "kind"}`` with kind ``raise`` (RuntimeError),
``kill`` (SIGKILL to itself), ``hang`` (sleeps), ``signal`` (SIGTERM to itself): injected on that
rank before that training step (counted from 1, across epochs); ``differ``: ``{"rank", "what"}``
gives that rank other data (``data``), another hidden width (``hidden``), another learning rate
(``lr``) or another backend (``backend``); ``reducer``: ``"fake-nccl"`` runs the NCCL reducer
on host memory (tests/fake_nccl.py).
"""

import json
import os
import signal
import sys
import time

import numpy as np
from mpi4py import MPI

import bpgpu
from bpgpu.distributed import DataParallel
from bpgpu.errors import BpgpuError
from bpgpu.signals import TrainingInterrupted


def flat(net):
    W, b = net.get_params()
    return np.concatenate([a.ravel() for a in W + b])


def inject(net, fault):
    """Wrap the model's train_step so the fault fires before training step ``fault['step']``."""
    original, count = net.train_step, [0]

    def train_step(*args, **kwargs):
        count[0] += 1
        if count[0] == fault["step"]:
            kind = fault["kind"]
            if kind == "raise":
                raise RuntimeError(f"injected failure at step {count[0]}")
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "hang":
                time.sleep(3600)
            if kind == "signal":
                os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    net.train_step = train_step


def sample_weights(case):
    """The case's sample weights (integers 0..3 from its ``sample_weight_seed``)."""
    return np.random.default_rng(case["sample_weight_seed"]).integers(0, 4, case["n"])


def run_case(comm, case, X_all, y_all, out):
    rank = comm.Get_rank()
    differ = case.get("differ") or {}
    mine = differ.get("rank") == rank
    what = differ.get("what") if mine else None
    sizes = list(case["sizes"])
    if what == "hidden":
        sizes[1] += 1
    n = case["n"]
    X, y = X_all[:n].copy(), y_all[:n]
    if what == "data":
        X[0, 0] ^= 1
    fit = dict(case["fit"])
    for key in ("checkpoint", "resume"):
        if isinstance(fit.get(key), str):
            fit[key] = fit[key].format(rank=rank)
    if what == "lr":
        fit["lr"] = fit.get("lr", 0.1) * 2
    if "sample_weight_seed" in case:
        fit["sample_weight"] = sample_weights(case)
    backend = "numba" if what == "backend" else case.get("backend", "numpy")
    net = bpgpu.MLP(sizes, dtype=case.get("dtype", "float64"), backend=backend,
                    seed=case.get("seed", 0) + 1000 * rank)
    fault = case.get("fault")
    if fault and fault["rank"] == rank:
        inject(net, fault)
    par = DataParallel(comm, overlap=case.get("overlap", False), timeout=case.get("timeout"))
    record = {"rank": rank, "size": comm.Get_size()}
    restore = None
    if case.get("reducer") == "fake-nccl":
        import fake_nccl
        nccl, restore = fake_nccl.install(rank)
        net.params = net.params.view(fake_nccl.DeviceArray)   # "on the device", same memory
    try:
        history = net.fit(X, y, comm=par, **fit)
        record.update(outcome="ok", history=history.to_dict())
    except TrainingInterrupted as stop:
        record.update(outcome="interrupted", signum=stop.signum, restored=stop.restored,
                      checkpoint=stop.checkpoint, history=stop.history.to_dict(),
                      steps=net.steps)
    except (BpgpuError, OSError) as exc:
        record.update(outcome="error", error=type(exc).__name__, message=str(exc))
    finally:
        if restore is not None:
            record["nccl_calls"] = list(nccl.calls)
            restore()
    if rank == 0 and record["outcome"] != "error":
        np.save(os.path.join(out, case["name"] + ".npy"), flat(net))
    with open(os.path.join(out, f"{case['name']}.rank{rank}.json"), "w") as f:
        json.dump(record, f)


def main():
    spec_path, out = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    comm = MPI.COMM_WORLD
    (X_all, y_all), _ = bpgpu.datasets.mnist()
    for case in spec["cases"]:
        run_case(comm, case, X_all, y_all, out)


if __name__ == "__main__":
    main()
