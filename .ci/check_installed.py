"""Check an installed bpgpu (run from outside the checkout): every module imports, none is missing.

Usage: ``python check_installed.py SOURCE_ROOT``. The modules expected are those of the source tree
(``bpgpu/`` and ``kernels/`` as ``bpgpu.kernels``); the modules found are those pkgutil walks in the
installed package. Both sets must be equal, every module must import, the package must come from
site-packages (not the checkout) and the shipped data (MNIST, the CUDA sources) must be readable.
"""

import importlib
import importlib.resources
import os
import pkgutil
import sys
from pathlib import Path


def source_modules(root: Path) -> set[str]:
    names = set()
    for top, prefix in ((root / "bpgpu", "bpgpu"), (root / "kernels", "bpgpu.kernels")):
        for path in top.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            parts = (prefix,) + path.relative_to(top).with_suffix("").parts
            names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def installed_modules(package) -> set[str]:
    names = {package.__name__}
    errors = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".",
                                      onerror=errors.append):
        names.add(info.name)
    if errors:
        raise SystemExit(f"check: pkgutil could not import {errors}")
    return names


def main(root: Path) -> None:
    import bpgpu
    where = Path(bpgpu.__file__).resolve()
    if where.parent == (root / "bpgpu").resolve():
        raise SystemExit(f"check: bpgpu was imported from the checkout ({where}), not the install")
    found = installed_modules(bpgpu)
    expected = source_modules(root)
    if found != expected:
        raise SystemExit(f"check: the install lacks {sorted(expected - found)} and has extra "
                         f"{sorted(found - expected)}")
    failed = []
    for name in sorted(found):
        if name.endswith(".__main__"):   # importing it runs the command line
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # report every failure, not only the first
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    if failed:
        raise SystemExit("check: modules that do not import:\n  " + "\n  ".join(failed))
    kernels = importlib.resources.files("bpgpu.kernels")
    if not kernels.joinpath("fused.cu").read_text().strip():
        raise SystemExit("check: bpgpu.kernels/fused.cu is empty")
    (X, y), (Xt, yt) = bpgpu.datasets.mnist()   # verified against SHA256SUMS inside
    print(f"check: {len(found)} modules import from {where.parent}; MNIST {X.shape} + {Xt.shape}, "
          f"fused.cu shipped")


if __name__ == "__main__":
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        raise SystemExit(__doc__.splitlines()[2])
    main(Path(sys.argv[1]))
