"""The CI script's choice of OpenBLAS kernel sets, checked through ``.ci/run --plan``.

The SkylakeX (AVX-512) run must happen exactly on CPUs whose flags list ``avx512f`` (running those
kernels elsewhere is an illegal instruction), and the Haswell pin exactly on CPUs with AVX2.
"""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CPUS = {
    "avx512": "flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl\n",
    # avx512fp16 / avx512bw without avx512f is no AVX-512 foundation: a whole-word match matters
    "avx512-lookalike": "flags\t\t: fpu sse avx avx2 avx512fp16 avx512bw\n",
    "avx2": "flags\t\t: fpu sse sse2 avx avx2 fma\n",
    # the model name mentions avx512f but the flags do not: only the flags count
    "avx2-named-512": "model name\t: avx512f lookalike\nflags\t\t: fpu sse avx avx2\n",
    "arm": "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n",
}


def plan(cpuinfo: Path) -> str:
    res = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--plan"], capture_output=True,
                         text=True, timeout=60,
                         env=dict(os.environ, BPGPU_CI_CPUINFO=str(cpuinfo)))
    assert res.returncode == 0, res.stderr
    assert "plan only, nothing was run" in res.stdout
    return res.stdout


@pytest.mark.parametrize("cpu,haswell,skylakex", [
    ("avx512", True, True), ("avx512-lookalike", True, False), ("avx2", True, False),
    ("avx2-named-512", True, False), ("arm", False, False)])
def test_kernel_sets_follow_the_cpu_flags(tmp_path, cpu, haswell, skylakex):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\n" + CPUS[cpu])
    out = plan(info)
    assert ("ci: OPENBLAS_CORETYPE=Haswell" in out) == haswell
    assert ("OPENBLAS_CORETYPE=SkylakeX" in out) == skylakex
    if skylakex:   # the second run is the numerics tests, and it checks the kernels took effect
        assert "openblas_kernels.py SkylakeX" in out
        for f in ("test_backend_ops.py", "test_model_math.py", "test_parity.py", "test_training.py"):
            assert f in out
        assert out.count("OPENBLAS_CORETYPE=SkylakeX") == 2   # the kernel check and the tests
    else:
        assert "skipped: the numerics tests on SkylakeX kernels" in out
    if not haswell:
        assert "OpenBLAS chooses its own kernels" in out
    # the wheel is built, installed and used from outside the checkout whatever the CPU
    for text in ("build a wheel", "check_installed.py", "bpgpu info", "bpgpu train",
                 "bpgpu bench", "bpgpu demo xor"):
        assert text in out


def test_this_machine(tmp_path):
    """On the real /proc/cpuinfo the plan agrees with the flags Python reads from it."""
    info = Path("/proc/cpuinfo")
    if not info.exists():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = set()
    for line in info.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags |= set(value.split())
    out = plan(info)
    assert ("OPENBLAS_CORETYPE=SkylakeX" in out) == ("avx512f" in flags and "avx2" in flags)
    assert ("ci: OPENBLAS_CORETYPE=Haswell" in out) == ("avx2" in flags)
