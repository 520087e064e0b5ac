"""Import hygiene: `import bpgpu` never imports numba or cupy; auto selection explains itself."""

import subprocess
import sys

import bpgpu
from bpgpu.backends import auto_reason, available_backends, get_backend, use_backend


def test_import_bpgpu_imports_neither_numba_nor_cupy():
    code = ("import sys, bpgpu; bpgpu.available_backends(); net = bpgpu.MLP([2, 2], backend='numpy');"
            "print('numba' in sys.modules, 'cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # available_backends() may probe numba/cupy; a plain import must not
    code2 = "import sys, bpgpu; print('numba' in sys.modules, 'cupy' in sys.modules)"
    out2 = subprocess.run([sys.executable, "-c", code2], capture_output=True, text=True, check=True)
    assert out2.stdout.split() == ["False", "False"]
    assert out.returncode == 0


def test_every_backend_reports_a_reason():
    infos = available_backends()
    assert {i.name for i in infos} >= {"numpy", "cupy"}
    assert all(i.reason for i in infos)
    assert next(i for i in infos if i.name == "numpy").available


def test_auto_picks_the_best_available_and_says_why(monkeypatch):
    monkeypatch.delenv("BPGPU_BACKEND", raising=False)
    name, why = auto_reason()
    infos = {i.name: i for i in available_backends()}
    expected = next(n for n in ("cupy", "numba", "numpy") if n in infos and infos[n].available)
    assert name == expected and why.startswith(expected)
    assert get_backend("auto").name == expected


def test_env_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv("BPGPU_BACKEND", "numpy")
    assert get_backend("auto").name == "numpy"
    assert "BPGPU_BACKEND" in auto_reason()[1]


def test_use_backend_context():
    with use_backend("numpy"):
        assert bpgpu.MLP([2, 2], backend=None).backend.name == "numpy"
