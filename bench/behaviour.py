"""Fingerprints of training results, for showing that a change of structure changed no behaviour.

``python bench/behaviour.py`` trains a fixed matrix of short runs (numpy and numba; float32 and
float64; sgd, momentum, adam; dropout; augmentation; the compiled numba epoch on and off; a
resumed run; a 2-rank MPI run when mpi4py and mpirun are at hand) and prints one line per case:
the SHA-256 of the final parameters' bytes (and of the optimizer's state where it has one). Run it
on the tree before and after a change, on the same machine, and compare the lines: every hash must
be equal. It is not a test with fixed hashes: BLAS kernels round differently per CPU.

Only the public API is used (``bpgpu.MLP``, ``fit``, ``resume``, ``bpgpu.distributed``), so the
same script runs on older trees: ``PYTHONPATH=<old tree's installed copy> python bench/behaviour.py``.
``--mpi-rank`` is the entry of the ranks it launches itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

#: (name, backend, dtype, fit options, compiled epoch "0"/"1"/None for the default)
CASES = []
for _backend in ("numpy", "numba"):
    for _dtype in ("float32", "float64"):
        for _opt in ("sgd", "momentum", "adam"):
            CASES.append((f"{_backend}-{_dtype}-{_opt}", _backend, _dtype,
                          dict(optimizer=_opt, lr=0.05), None))
        CASES.append((f"{_backend}-{_dtype}-momentum-dropout-wd", _backend, _dtype,
                      dict(optimizer="momentum", lr=0.05, dropout=0.2, weight_decay=1e-4), None))
        CASES.append((f"{_backend}-{_dtype}-sgd-augment", _backend, _dtype,
                      dict(optimizer="sgd", lr=0.05, augment="shift=2,rotate=8"), None))
        CASES.append((f"{_backend}-{_dtype}-adam-schedule-split", _backend, _dtype,
                      dict(optimizer="adam", lr=0.01, schedule="cosine:warmup=1",
                           validation_split=0.1), None))
for _mode in ("0", "1"):
    for _opt in ("sgd", "momentum", "adam"):
        CASES.append((f"numba-float32-{_opt}-compiled{_mode}", "numba", "float32",
                      dict(optimizer=_opt, lr=0.05, dropout=0.1), _mode))
    CASES.append((f"numba-float64-sgd-augment-compiled{_mode}", "numba", "float64",
                  dict(optimizer="sgd", lr=0.05, augment="shift=1"), _mode))

N_ROWS, SIZES, EPOCHS, BATCH = 3000, [784, 48, 10], 3, 50


def _data():
    import bpgpu
    (X, y), _ = bpgpu.datasets.mnist()
    return X[:N_ROWS], y[:N_ROWS]


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _params(net):
    W, b = net.get_params()
    return np.concatenate([a.ravel() for a in W + b])


def _run(backend, dtype, options, compiled, epochs=EPOCHS, **extra):
    import bpgpu
    if compiled is None:
        os.environ.pop("BPGPU_COMPILED_EPOCH", None)
    else:
        os.environ["BPGPU_COMPILED_EPOCH"] = compiled
    X, y = _data()
    net = bpgpu.MLP(SIZES, activation="relu", init="he", dtype=dtype, backend=backend, seed=3)
    history = net.fit(X, y, epochs=epochs, batch_size=BATCH, **options, **extra)
    return net, history


def case_lines():
    """``name hash`` for every case of :data:`CASES`, then the resume case."""
    lines = []
    for name, backend, dtype, options, compiled in CASES:
        net, history = _run(backend, dtype, options, compiled)
        losses = np.array([v for v in history.loss if v is not None], np.float64)
        lines.append(f"{name:<44} params {_digest(_params(net))} loss {_digest(losses)}")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("numpy", "numba"):
            path = os.path.join(tmp, f"{backend}.npz")
            options = dict(optimizer="adam", lr=0.01, dropout=0.1)
            _run(backend, "float32", options, None, epochs=1, checkpoint=path)
            net, _ = _run(backend, "float32", options, None, epochs=EPOCHS, resume=path,
                          checkpoint=path)
            lines.append(f"{backend + '-float32-adam-resumed':<44} params "
                         f"{_digest(_params(net))}")
    return lines


def _mpirun():
    bindir = os.path.dirname(sys.executable)
    mpirun = shutil.which("mpirun", path=bindir + os.pathsep + os.environ.get("PATH", ""))
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    return mpirun


def mpi_lines():
    """The 2-rank case: ``mpirun -n 2`` this script with ``--mpi-rank``; rank 0 prints the line."""
    mpirun = _mpirun()
    if mpirun is None:
        return ["mpi: skipped (no mpi4py or mpirun)"]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    lines = []
    for backend in ("numpy", "numba"):
        out = subprocess.run([mpirun, "--oversubscribe", "-n", "2", sys.executable,
                              os.path.abspath(__file__), "--mpi-rank", backend],
                             capture_output=True, text=True, env=env, timeout=600)
        if out.returncode != 0:
            raise SystemExit(f"mpirun failed:\n{out.stdout}\n{out.stderr}")
        lines += [line for line in out.stdout.splitlines() if line.startswith("mpi-")]
    return lines


def mpi_rank(backend):
    from mpi4py import MPI

    from bpgpu.distributed import DataParallel
    options = dict(optimizer="momentum", lr=0.05, dropout=0.1)
    net, _ = _run(backend, "float64", options, None, comm=DataParallel(MPI.COMM_WORLD))
    if MPI.COMM_WORLD.Get_rank() == 0:
        print(f"{'mpi-2ranks-' + backend + '-float64-momentum':<44} params "
              f"{_digest(_params(net))}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mpi-rank", metavar="BACKEND", help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="PATH", help="also write the lines as JSON")
    args = parser.parse_args(argv)
    if args.mpi_rank:
        return mpi_rank(args.mpi_rank)
    import bpgpu
    lines = case_lines() + mpi_lines()
    print(f"# bpgpu from {os.path.dirname(bpgpu.__file__)}; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(lines, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
