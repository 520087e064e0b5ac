"""The files a command writes (issue 20, items 1-5 and 13), through a subprocess: nothing that is
not a regular file is replaced, a symbolic link is written through, outputs that would overwrite
each other (or the data, or the checkpoint being resumed) are refused, every output's directory
is probed before any work, a full disk never loses the trained model, and the messages name the
user's paths."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import bpgpu
from bpgpu.checkpoint import read_checkpoint

#: a fast run: moons, a small network, the numpy backend
FAST = ["train", "--dataset", "moons", "--hidden", "8", "--epochs", "2", "--batch-size", "20",
        "--backend", "numpy", "--quiet"]


def run(*args, cwd=None, env=None, code=None):
    """``bpgpu ARGS`` in a subprocess (``code``: Python run first, in the same process)."""
    cmd = ([sys.executable, "-m", "bpgpu"] if code is None
           else [sys.executable, "-c", code + "\nimport bpgpu.cli\n"
                                            "sys.exit(bpgpu.cli.main(sys.argv[1:]))"])
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=dict(os.environ, **(env or {})))


def one_line_error(res, *fragments):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("bpgpu:")]
    assert len(lines) == 1 and lines[0].startswith("bpgpu: error:"), res.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def before_training(res):
    """The run was refused before training: no epoch line, no model line."""
    assert "model: MLP" not in res.stderr and "test: loss" not in res.stdout, res.stderr


def no_temp_files(*directories):
    for d in directories:
        left = [p for p in os.listdir(d) if p.startswith(".bpgpu-")]
        assert not left, left


# ------------------------------------------------------------------ item 1: not a regular file
def char_device(tmp_path):
    """A character device to refuse: a null device made in ``tmp_path`` (root), else /dev/null
    (a regression then replaces only the private node, never the system's)."""
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        return str(node)
    except (PermissionError, AttributeError):
        if not stat.S_ISCHR(os.stat("/dev/null").st_mode):
            pytest.skip("no character device to test with (not root, /dev/null replaced)")
        return "/dev/null"


def test_save_refuses_a_device_and_a_directory(tmp_path):
    device = char_device(tmp_path)
    res = run(*FAST, "--save", device)
    one_line_error(res, f"--save {device}", "character device")
    before_training(res)
    assert stat.S_ISCHR(os.stat(device).st_mode)
    os.mkfifo(tmp_path / "fifo.npz")
    one_line_error(run(*FAST, "--save", tmp_path / "fifo.npz"), "FIFO")
    one_line_error(run(*FAST, "--json", tmp_path), "is a directory")
    (tmp_path / "link.npz").symlink_to(device)
    one_line_error(run(*FAST, "--checkpoint", tmp_path / "link.npz"), f"a link to {device}")


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path):
    (tmp_path / "runs").mkdir()
    old = tmp_path / "runs" / "42.npz"
    bpgpu.MLP([2, 3, 2], seed=9).save(old)
    (tmp_path / "latest.npz").symlink_to("runs/42.npz")
    (tmp_path / "new.npz").symlink_to("runs/43.npz")            # dangling: creates the target
    res = run(*FAST, "--save", "latest.npz", "--checkpoint", "new.npz", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert os.readlink(tmp_path / "latest.npz") == "runs/42.npz"
    assert os.readlink(tmp_path / "new.npz") == "runs/43.npz"
    assert bpgpu.load(old).sizes == [2, 8, 2]                    # the target was replaced
    assert read_checkpoint(tmp_path / "runs" / "43.npz").epoch == 2
    no_temp_files(tmp_path, tmp_path / "runs")


def test_the_api_refuses_what_is_not_a_regular_file(tmp_path):
    from bpgpu.files import WriteError
    net = bpgpu.MLP([2, 3, 2])
    device = char_device(tmp_path)
    with pytest.raises(WriteError, match=f"cannot write {device}: .*character device"):
        net.save(device)
    with pytest.raises(WriteError, match="empty file name"):
        net.save("")
    with pytest.raises(WriteError, match="is a directory"):
        net.save(tmp_path)


# ------------------------------------------------------------------ item 2: clashes
@pytest.mark.parametrize("args,fragment", [
    (["--save", "s.npz", "--checkpoint", "s.npz"], "--checkpoint s.npz is the same file as "
                                                   "--save s.npz"),
    (["--save", "j.npz", "--json", "j.npz"], "--json j.npz is the same file as --save j.npz"),
    (["--json", "d.json", "--plot", "d.json"], "--plot d.json is the same file as --json"),
    (["--save", "q-confusion.png", "--plot", "q.png"], "--plot's confusion matrix "
                                                       "q-confusion.png is the same file"),
    (["--save", "ab.npz", "--checkpoint", "./sub/../ab.npz"], "same file"),
    (["--save", "a.npz", "--json", "link.json"], "same file"),          # a symlink to a.npz
    (["--save", "l.npz", "--log", "l.npz"], "--log l.npz is the same file as --save l.npz"),
    (["--json", "r.jsonl", "--log", "r.jsonl"], "--log r.jsonl is the same file as --json"),
])
def test_outputs_that_would_overwrite_each_other_are_refused(tmp_path, args, fragment):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.npz").write_bytes(b"old")
    (tmp_path / "link.json").symlink_to("a.npz")
    res = run(*FAST, *args, cwd=tmp_path)
    one_line_error(res, fragment)
    before_training(res)
    assert (tmp_path / "a.npz").read_bytes() == b"old"


def test_a_hard_link_is_the_same_file(tmp_path):
    (tmp_path / "m.npz").write_bytes(b"old")
    os.link(tmp_path / "m.npz", tmp_path / "r.json")
    one_line_error(run(*FAST, "--save", "m.npz", "--json", "r.json", cwd=tmp_path), "same file")


def test_the_checkpoint_being_resumed_and_the_data_are_not_overwritten(tmp_path):
    res = run(*FAST, "--checkpoint", "c.npz", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    before = (tmp_path / "c.npz").read_bytes()
    for flag in ("--save", "--json", "--plot"):
        res = run("train", "--resume", "c.npz", "--epochs", "3", flag, "c.npz", cwd=tmp_path)
        one_line_error(res, f"{flag} c.npz")
        assert (tmp_path / "c.npz").read_bytes() == before
    res = run("train", "--resume", "c.npz", "--epochs", "3", "--checkpoint", "c.npz",
              cwd=tmp_path)                                      # continuing it is the point
    assert res.returncode == 0 and read_checkpoint(tmp_path / "c.npz").epoch == 3, res.stderr
    csv = tmp_path / "d.csv"
    csv.write_text("x,y,label\n" + "".join(f"{i % 7},{i % 5},{'ab'[i % 2]}\n" for i in range(40)))
    res = run("train", "--dataset", csv, "--epochs", "1", "--quiet", "--json", csv)
    one_line_error(res, "would overwrite --dataset")
    assert csv.read_text().startswith("x,y,label")


# ------------------------------------------------------------------ item 3: probed directories
@pytest.mark.parametrize("flag,path", [("--save", "/proc/m.npz"), ("--save", "/sys/m.npz"),
                                       ("--json", "/proc/x.json"), ("--plot", "/proc/x.png"),
                                       ("--checkpoint", "/proc/c.npz"),
                                       ("--log", "/proc/l.jsonl")])
def test_outputs_in_a_place_where_nothing_can_be_created(flag, path):
    if not os.path.isdir(os.path.dirname(path)):
        pytest.skip(f"{os.path.dirname(path)} does not exist here")
    res = run(*FAST, flag, path)
    line = one_line_error(res, f"{flag} {path}", "cannot create and rename")
    assert ".bpgpu-" not in line                     # the user's path, never the temp file
    before_training(res)


def test_a_directory_where_a_derived_plot_goes_is_refused_before_training(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "q-confusion.png").mkdir()
    res = run(*FAST, "--plot", "q.png", cwd=tmp_path)
    one_line_error(res, "--plot's confusion matrix q-confusion.png", "is a directory")
    before_training(res)


def test_bench_outputs_are_checked_before_measuring(tmp_path):
    one_line_error(run("bench", "--json", "/proc/b.json"), "--json /proc/b.json",
                   "cannot create and rename")
    one_line_error(run("bench", "--json", "x.json", "--markdown", "x.json", cwd=tmp_path),
                   "--markdown x.json is the same file as --json x.json")


# ------------------------------------------------------------------ item 13: bench arguments
def test_bench_arguments_that_escaped_as_tracebacks(tmp_path):
    one_line_error(run("bench", "--batch-sizes", "0"), "--batch-sizes")
    (tmp_path / "latin.md").write_bytes(b"caf\xe9\n<!-- bench-table -->\n")
    pytest.importorskip("matplotlib")
    res = run("bench", "--update-readme", "latin.md", "--markdown", "b.md", "--plot", "b.png",
              cwd=tmp_path)
    one_line_error(res, "--update-readme latin.md: not UTF-8")
    res = run("bench", "--update-readme", "nosuch.md", "--markdown", "b.md", "--plot", "b.png",
              cwd=tmp_path)
    one_line_error(res, "--update-readme nosuch.md: no such file")
    assert res.stdout == ""                                      # nothing was measured


# ------------------------------------------------------------------ item 4: a full disk
def _full_disk_checks(res, full, elsewhere):
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    line = [line for line in res.stderr.splitlines() if line.startswith("bpgpu:")]
    assert len(line) == 1, res.stderr
    assert f"checkpoint {full / 'c.npz'} not written after epoch 1" in line[0]
    assert "No space left on device" in line[0] and f"model {elsewhere / 'm.npz'}" in line[0]
    model = bpgpu.load(elsewhere / "m.npz")                      # the trained model is kept
    assert model.sizes == [2, 64, 2]
    record = json.loads((elsewhere / "r.json").read_text())
    assert len(record["history"]["epoch"]) == 1 and "not written" in \
        record["history"]["stop_reason"]
    no_temp_files(full, elsewhere)


def _full_disk_run(full, elsewhere, code=None):
    return run("train", "--dataset", "moons", "--hidden", "64", "--epochs", "3", "--backend",
               "numpy", "--quiet", "--checkpoint", full / "c.npz", "--save", elsewhere / "m.npz",
               "--json", elsewhere / "r.json", code=code)


def test_a_full_disk_during_a_checkpoint_keeps_the_model(tmp_path):
    """Linux's /dev/full stands in for the full disk: every write to it fails with ENOSPC (the
    temporary checkpoint file's descriptor is swapped for one on /dev/full)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    full, elsewhere = tmp_path / "full", tmp_path / "other"
    full.mkdir()
    elsewhere.mkdir()
    code = ("import os, sys\nfrom bpgpu import files\noriginal = files._create_temp\n"
            "def create(directory):\n    fd, tmp = original(directory)\n"
            "    if os.path.basename(directory) == 'full':\n"
            "        os.close(fd)\n        fd = os.open('/dev/full', os.O_WRONLY)\n"
            "    return fd, tmp\nfiles._create_temp = create\n")
    _full_disk_checks(_full_disk_run(full, elsewhere, code), full, elsewhere)
    assert not (full / "c.npz").exists()


def test_a_real_full_tmpfs_during_a_checkpoint(tmp_path):
    """The same on a real file system that is full: a 4 KiB tmpfs (needs root to mount)."""
    full, elsewhere = tmp_path / "full", tmp_path / "other"
    full.mkdir()
    elsewhere.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(full)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        (full / "filler").write_bytes(b"\0" * 4096)
        _full_disk_checks(_full_disk_run(full, elsewhere), full, elsewhere)
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_a_failed_checkpoint_in_the_api(tmp_path, monkeypatch):
    """fit raises CheckpointNotWritten (an OSError naming the file) after the epoch whose
    checkpoint failed; the model is that epoch's, the previous checkpoint intact."""
    import errno
    from bpgpu import checkpoint
    from bpgpu.checkpoint import CheckpointNotWritten
    X, y = bpgpu.datasets.moons(100, 0.2, 0)
    path = tmp_path / "c.npz"
    calls = []
    real = checkpoint.save

    def save(model, where, **kw):
        calls.append(where)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(model, where, **kw)
    monkeypatch.setattr(checkpoint, "save", save)
    net = bpgpu.MLP([2, 8, 2], backend="numpy", seed=1)
    with pytest.raises(CheckpointNotWritten) as info:
        net.fit(X, y, epochs=4, batch_size=20, checkpoint=path)
    exc = info.value
    assert exc.errno == errno.ENOSPC and exc.filename == str(path) and exc.epoch == 2
    assert str(path) in str(exc) and exc.history.epoch == [1, 2]
    two = bpgpu.MLP([2, 8, 2], backend="numpy", seed=1)
    two.fit(X, y, epochs=2, batch_size=20)
    assert all(np.array_equal(a, b) for a, b in zip(net.get_params()[0], two.get_params()[0]))
    assert read_checkpoint(path).epoch == 1


# ------------------------------------------------------------------ item 5
def test_empty_names_are_refused():
    for flag in ("--save", "--checkpoint", "--json", "--plot"):
        one_line_error(run(*FAST, flag, ""), f"{flag} '': an empty file name")
    for flag in ("--resume", "--dataset", "--target"):
        one_line_error(run(*FAST, flag, ""), f"{flag} '': an empty name")


def test_bpgpu_backend_the_same_in_info_and_train():
    for value in ("", "auto"):                      # empty or auto: the machine's choice
        res = run("train", "--dataset", "xor", "--hidden", "3", "--epochs", "1", "--quiet",
                  env={"BPGPU_BACKEND": value})
        assert res.returncode == 0, res.stderr
        info = run("info", env={"BPGPU_BACKEND": value})
        assert "(from BPGPU_BACKEND)" not in info.stdout
    info = run("info", env={"BPGPU_BACKEND": "foo"})
    assert info.returncode == 0
    auto = next(line for line in info.stdout.splitlines() if line.startswith("auto:"))
    assert "foo (from BPGPU_BACKEND), which is not a backend: unusable" in auto
    one_line_error(run("train", "--dataset", "xor", env={"BPGPU_BACKEND": "foo"}),
                   "unknown backend 'foo'")
    from bpgpu._compat import has_cupy_gpu
    if not has_cupy_gpu():
        auto = next(line for line in run("info", env={"BPGPU_BACKEND": "cupy"}).stdout
                    .splitlines() if line.startswith("auto:"))
        assert "cupy (from BPGPU_BACKEND), which is not available" in auto


def test_a_csv_run_resumes_from_another_directory(tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    (here / "d.csv").write_text("x1,x2,label\n" + "".join(
        f"{i % 7},{(i * 3) % 5},{'ab'[i % 2]}\n" for i in range(60)))
    res = run("train", "--dataset", "d.csv", "--hidden", "4", "--epochs", "2", "--quiet",
              "--backend", "numpy", "--checkpoint", "c.npz", cwd=here)
    assert res.returncode == 0, res.stderr
    saved = read_checkpoint(here / "c.npz").state["info"]["train_options"]["dataset"]
    assert saved == str(here / "d.csv")
    res = run("train", "--resume", here / "c.npz", "--epochs", "3", cwd=there)
    assert res.returncode == 0, res.stderr
    assert read_checkpoint(here / "c.npz").epoch == 3
    # a checkpoint of an older bpgpu recorded the path as given: found beside the checkpoint
    with np.load(here / "c.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(arrays["metadata.json"].tobytes())
    meta["checkpoint"]["info"]["train_options"]["dataset"] = "d.csv"
    arrays["metadata.json"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(here / "old.npz", **arrays)
    res = run("train", "--resume", here / "old.npz", "--epochs", "4", cwd=there)
    assert res.returncode == 0, res.stderr
