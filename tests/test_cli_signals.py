"""Signals at the edges of ``bpgpu train`` (issue 20, items 6-8), through a subprocess.

Each run injects its signal at an exact point (the process sends it to itself from a patched
function), so the edge is hit every time instead of by a timer: during the final test
evaluation, during the save after the last epoch, as fit returns, before any epoch completed, and
a second signal in the middle of a save. The rules (README, "Checkpoints, Ctrl-C and resuming"):
a first signal at any point after an epoch completed writes that epoch and exits 128 + the signal;
before that, nothing is written; a second signal stops at once, with one line and no temporary
file left.
"""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np

import bpgpu

MOONS = ["train", "--dataset", "moons", "--hidden", "8", "--batch-size", "20", "--backend",
         "numpy", "--quiet"]       # 200 rows: 10 steps per epoch; numpy: every step a call

#: Python run before ``bpgpu.cli.main``: ``kill_at(obj, name, signum, when)`` patches
#: ``obj.name`` to send ``signum`` to this process when ``when(call number)`` is true.
PRELUDE = textwrap.dedent("""
    import os, signal, sys
    import numpy
    import bpgpu, bpgpu.cli, bpgpu.network, bpgpu.train
    def kill_at(obj, name, signum, when=lambda n: n == 1, after=False):
        original = getattr(obj, name)
        calls = [0]
        def patched(*args, **kwargs):
            calls[0] += 1
            if not after and when(calls[0]):
                os.kill(os.getpid(), signum)
            out = original(*args, **kwargs)
            if after and when(calls[0]):
                os.kill(os.getpid(), signum)
            return out
        setattr(obj, name, patched)
""")


def run(fault, *args, cwd):
    code = PRELUDE + textwrap.dedent(fault) + "\nsys.exit(bpgpu.cli.main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code] + [str(a) for a in args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def the_line(res):
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("bpgpu:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def old_model(path):
    """A model file that is not what any run here trains (its bytes are compared after)."""
    bpgpu.MLP([2, 8, 2], backend="numpy", seed=123).save(path)
    return path.read_bytes()


def reference(tmp_path, epochs):
    """The parameters ``bpgpu train`` ends with after ``epochs`` uninterrupted epochs."""
    res = subprocess.run([sys.executable, "-m", "bpgpu", *MOONS, "--epochs", str(epochs),
                          "--save", "ref.npz"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return bpgpu.load(tmp_path / "ref.npz").get_params()


def same_params(path, params):
    mine = bpgpu.load(path).get_params()
    return all(np.array_equal(a, b) for a, b in zip(mine[0] + mine[1], params[0] + params[1]))


def test_sigint_during_the_final_evaluation_saves_the_last_epoch(tmp_path):
    old = old_model(tmp_path / "m.npz")
    res = run("kill_at(bpgpu.network.Network, 'evaluate', signal.SIGINT)", *MOONS,
              "--epochs", "1", "--save", "m.npz", "--checkpoint", "c.npz", cwd=tmp_path)
    assert res.returncode == 130, res.stderr
    line = the_line(res)
    assert "SIGINT: stopped; saved epoch 1: model m.npz and checkpoint c.npz" in line
    assert (tmp_path / "m.npz").read_bytes() != old
    assert same_params(tmp_path / "m.npz", reference(tmp_path, 1))


def test_sigterm_during_the_save_after_the_last_epoch_completes_it(tmp_path):
    old = old_model(tmp_path / "m.npz")
    res = run("kill_at(numpy, 'savez', signal.SIGTERM)", *MOONS, "--epochs", "2",
              "--save", "m.npz", cwd=tmp_path)
    assert res.returncode == 143, res.stderr
    assert "SIGTERM: stopped; saved epoch 2: model m.npz" in the_line(res)
    assert (tmp_path / "m.npz").read_bytes() != old
    assert same_params(tmp_path / "m.npz", reference(tmp_path, 2))


def test_a_signal_as_fit_returns_is_not_lost(tmp_path):
    """SIGINT after the last epoch's loop, still inside fit's own guard: the command's guard
    hears it too; everything is written and the exit status says it was interrupted."""
    res = run("kill_at(bpgpu.train.Run, '_epochs', signal.SIGINT, after=True)", *MOONS,
              "--epochs", "2", "--save", "m.npz", cwd=tmp_path)
    assert res.returncode == 130, res.stderr
    assert "SIGINT: stopped; saved epoch 2: model m.npz" in the_line(res)
    assert same_params(tmp_path / "m.npz", reference(tmp_path, 2))


def test_sigint_before_any_epoch_completed_writes_nothing(tmp_path):
    old = old_model(tmp_path / "m.npz")
    old_ckpt = old_model(tmp_path / "c.npz")
    res = run("kill_at(bpgpu.network.Network, 'train_step', signal.SIGINT, lambda n: n == 3)",
              *MOONS, "--epochs", "5", "--save", "m.npz", "--checkpoint", "c.npz",
              cwd=tmp_path)
    assert res.returncode == 130, res.stderr
    line = the_line(res)
    assert "stopped before the first epoch completed; nothing written" in line
    assert "m.npz, c.npz unchanged" in line
    assert (tmp_path / "m.npz").read_bytes() == old
    assert (tmp_path / "c.npz").read_bytes() == old_ckpt


def test_a_second_signal_during_the_save_removes_the_temp_file(tmp_path):
    """SIGINT in epoch 2 (the run goes back to epoch 1 and saves it), then SIGTERM while that
    save is being written: one line, exit 143, the old model intact, no temporary file."""
    old = old_model(tmp_path / "m.npz")
    fault = """
        first = [False]
        original_step = bpgpu.network.Network.train_step
        def step(self, *a, **k):
            original_step(self, *a, **k)
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 15:
                first[0] = True
                os.kill(os.getpid(), signal.SIGINT)
        bpgpu.network.Network.train_step = step
        kill_at(numpy, 'savez', signal.SIGTERM, when=lambda n: first[0])
    """
    res = run(fault, *MOONS, "--epochs", "5", "--save", "m.npz", "--checkpoint", "c.npz",
              cwd=tmp_path)
    assert res.returncode == 143, res.stderr
    line = the_line(res)
    assert "SIGTERM again: stopped at once" in line
    assert "model m.npz not written (the file there is unchanged)" in line
    assert (tmp_path / "m.npz").read_bytes() == old
    assert [p for p in os.listdir(tmp_path) if p.startswith(".bpgpu-")] == []
    from bpgpu.checkpoint import read_checkpoint
    assert read_checkpoint(tmp_path / "c.npz").epoch == 1


def test_sigterm_during_an_api_write_removes_the_temp_file(tmp_path):
    """Outside bpgpu train (SIGTERM at its default action, which would end the process at
    once): the temporary file is removed first, then the process ends as SIGTERM ends it."""
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    script = textwrap.dedent(f"""
        import os, signal
        from bpgpu.files import atomic_write
        def write(f):
            f.write(b"x" * 1000000)
            os.kill(os.getpid(), signal.SIGTERM)
            f.write(b"y" * 1000000)
        atomic_write({str(target)!r}, write)
        print("not reached")
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == -signal.SIGTERM, res.stderr
    assert "not reached" not in res.stdout
    assert target.read_bytes() == b"old"
    assert [p for p in os.listdir(tmp_path) if p.startswith(".bpgpu-")] == []
