"""Packaging: pyproject's package list and package data cover every package and data file on disk.

setuptools' package discovery cannot name ``kernels/`` as ``bpgpu.kernels``, so pyproject lists the
packages; this test is what keeps that list from forgetting one (``bpgpu.bench`` once went missing
from ``pip install .``). ``.ci/run`` checks the same from the other side: it builds a wheel, installs
it and imports every module of the source tree from it.
"""

import fnmatch
import os
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: the TOML reader pip carries
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _config():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def _package_dirs(cfg):
    """Every package name -> its directory, as setuptools will map it."""
    mapping = cfg.get("package-dir", {})
    found = {}
    for top, name in ((ROOT / "bpgpu", "bpgpu"),) + tuple(
            (ROOT / d, n) for n, d in mapping.items()):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            if "__init__.py" in filenames:
                rel = Path(dirpath).relative_to(top)
                found[".".join((name,) + rel.parts)] = Path(dirpath)
    return found


def test_every_package_on_disk_is_listed():
    cfg = _config()
    on_disk = _package_dirs(cfg)
    assert {"bpgpu", "bpgpu.bench", "bpgpu.kernels"} <= set(on_disk)
    assert sorted(cfg["packages"]) == sorted(on_disk)
    assert cfg["package-dir"] == {"bpgpu.kernels": "kernels"}


def test_every_data_file_is_package_data():
    """A file that is not Python source ships only if a package-data pattern names it."""
    cfg = _config()
    data = cfg.get("package-data", {})
    missing = []
    for name, directory in _package_dirs(cfg).items():
        patterns = data.get(name, [])
        for dirpath, dirnames, filenames in os.walk(directory):
            dirnames[:] = [d for d in dirnames
                           if d != "__pycache__" and not (Path(dirpath) / d / "__init__.py").exists()]
            for fn in filenames:
                rel = (Path(dirpath) / fn).relative_to(directory).as_posix()
                if fn.endswith((".py", ".pyc")):
                    continue
                if not any(fnmatch.fnmatch(rel, p) for p in patterns):
                    missing.append(f"{name}: {rel}")
    assert not missing, f"not in package-data, so not installed: {missing}"
    assert "*.cu" in data["bpgpu.kernels"]
    assert any(fnmatch.fnmatch("data/mnist/train-images-idx3-ubyte.gz", p)
               for p in data["bpgpu.datasets"])
