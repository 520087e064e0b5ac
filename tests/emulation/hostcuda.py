"""Compile a CUDA source as host C++ (with shim.h) and launch its kernels from Python.

The kernels' signatures are read from the source itself -- its explicit template instantiations
(expanding an ``INSTANTIATE(T)`` macro) and its ``extern "C" __global__`` definitions -- and each
one gets a C wrapper that runs the grid through ``emu::launch``. :class:`HostKernel` is called
like CuPy's ``RawKernel`` (``kernel(grid, block, args)``) and checks, before it runs anything,
that every argument has exactly the C type of its parameter: a device array of the right dtype,
C-contiguous, in emulated device memory, for a pointer; a numpy scalar of exactly the right type
for a value (CuPy would convert a Python int or float silently; here that is an error, so the
backend's types are always explicit). During the launch the buffers passed only as ``const``
are read-only (a write faults); after it, the canaries around every buffer it passed are checked.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SHIM = Path(__file__).with_name("shim.h")
GXX = shutil.which("g++")

#: pointee C type -> dtype of the device array a pointer parameter takes
POINTEE = {"float": np.float32, "double": np.float64, "long long": np.int64, "int": np.int32,
           "unsigned char": np.uint8, "unsigned long long": np.uint64}
#: value C type -> (numpy scalar type the launcher must pass, ctypes type)
VALUE = {"int": (np.int32, ctypes.c_int32), "long long": (np.int64, ctypes.c_int64),
         "float": (np.float32, ctypes.c_float), "double": (np.float64, ctypes.c_double),
         "unsigned long long": (np.uint64, ctypes.c_uint64),
         "unsigned int": (np.uint32, ctypes.c_uint32), "unsigned": (np.uint32, ctypes.c_uint32)}
#: options of CuPy's RawModule the emulation understands (anything else is an error)
_STD = re.compile(r"^--?std=c\+\+(1[147]|20)$")


class KernelError(Exception):
    """A launch the GPU would reject or get wrong: a wrong argument, a barrier error, a fault."""


class Param:
    """One kernel parameter: its C type, whether it is a pointer, to const, and its base type."""

    def __init__(self, ctype: str):
        self.ctype = ctype
        self.pointer = ctype.endswith("*")
        self.const = ctype.startswith("const ")
        self.base = ctype.removeprefix("const ").rstrip("*").strip()
        table = POINTEE if self.pointer else VALUE
        if self.base not in table:
            raise KernelError(f"parameter type {ctype!r} is not emulated")

    def __repr__(self):
        return self.ctype


def _normalise(ctype: str) -> str:
    ctype = re.sub(r"\s+", " ", ctype.strip())
    return re.sub(r"\s*\*\s*", "*", ctype)


def _split_params(text: str, named: bool) -> list:
    out = []
    for p in (p.strip() for p in text.split(",")):
        if not p or p == "void":
            continue
        if named:   # drop the parameter's name: the last identifier
            p = re.sub(r"[A-Za-z_]\w*\s*$", "", p)
        out.append(Param(_normalise(p)))
    return out


def kernel_signatures(source: str) -> dict:
    """``{name expression: [Param, ...]}`` of every kernel a source instantiates or exports:
    ``"gather<float>"`` for a template instantiation, ``"random_uniform"`` for extern "C"."""
    text = re.sub(r"\\\n", " ", source)
    text = re.sub(r"//[^\n]*", "", text)
    macros = dict(re.findall(r"^\s*#define\s+(INSTANTIATE\w*)\(\s*\w+\s*\)(.*)$", text, re.M))
    params = dict(re.findall(r"^\s*#define\s+(INSTANTIATE\w*)\(\s*(\w+)\s*\)", text, re.M))
    expanded = [text]
    for macro, arg in re.findall(r"^\s*(INSTANTIATE\w*)\(([^)]*)\)\s*$", text, re.M):
        body = macros[macro]
        expanded.append(re.sub(rf"\b{params[macro]}\b", arg.strip(), body))
    text_all = "\n".join(expanded)
    sigs = {}
    for name, targ, plist in re.findall(
            r"template\s+__global__\s+void\s+(\w+)\s*<([^<>]+)>\s*\(([^)]*)\)\s*;", text_all):
        if targ.strip() in params.values():    # the macro's own body, before expansion
            continue
        sigs[f"{name}<{targ.strip()}>"] = _split_params(plist, named=False)
    for name, plist in re.findall(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)',
                                  text):
        sigs[name] = _split_params(plist, named=True)
    return sigs


def _cache_dir() -> Path:
    d = Path(os.environ.get("BPGPU_EMULATION_CACHE",
                            Path(tempfile.gettempdir()) / f"bpgpu-emulation-{os.getuid()}"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def build_library(path, command, what):
    """Make the shared library ``path`` (a cache entry) unless it exists: ``command(tmp, out)``
    writes its sources into the directory ``tmp`` and returns the compiler command that builds
    ``out``; the result is installed atomically (a concurrent builder never sees half a file).
    KernelError with the compiler's message (``what`` names the build) when it fails."""
    if path.exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lib.so"
        res = subprocess.run(command(Path(tmp), out), capture_output=True, text=True)
        if res.returncode != 0:
            raise KernelError(f"{what} failed:\n{res.stderr[-4000:]}")
        tmp_target = path.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(out, tmp_target)
        os.replace(tmp_target, path)


def build(source: str, options=()) -> tuple:
    """Compile ``source`` for the host; return ``(ctypes library, {expression: (symbol,
    params)})``. Cached on disk by the hash of everything that goes into the build."""
    if GXX is None:
        raise KernelError("g++ is not installed")
    flags = []
    for opt in options:
        if _STD.match(opt):
            flags.append("-std=c++" + opt.split("c++")[1])
        elif opt.startswith("-D") and len(opt) > 2:
            flags.append(opt)
        else:
            raise KernelError(f"option {opt!r} is not understood by the host emulation")
    if not any(f.startswith("-std=") for f in flags):
        flags.append("-std=c++17")   # CuPy 14's default for NVRTC
    sigs = kernel_signatures(source)
    wrappers, table = [], {}
    for i, (expr, plist) in enumerate(sorted(sigs.items())):
        symbol = f"emu_kernel_{i}"
        args = ", ".join(f"*({p.ctype}*)a[{j}]" for j, p in enumerate(plist))
        wrappers.append(
            f'extern "C" int {symbol}(const unsigned* g, const unsigned* b, void** a, char* e, '
            f"int n) {{ return emu::launch(g, b, e, n, [a] {{ {expr}({args}); }}); }}")
        table[expr] = (symbol, plist)
    unit = '#include "shim.h"\n#include "kernel.cu"\n' + "\n".join(wrappers) + "\n"
    version = subprocess.run([GXX, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([SHIM.read_text(), source, unit, version, *flags])
                         .encode()).hexdigest()[:20]
    lib_path = _cache_dir() / f"emu-{key}.so"

    def compile_unit(tmp, out):
        (tmp / "kernel.cu").write_text(source)
        (tmp / "unit.cpp").write_text(unit)
        return [GXX, *flags, "-O1", "-fPIC", "-shared", "-fno-fast-math", "-ffp-contract=off",
                "-fno-strict-aliasing", "-U_FORTIFY_SOURCE", "-D_FORTIFY_SOURCE=0",
                "-Wno-unknown-pragmas", f"-I{SHIM.parent}", f"-I{tmp}", str(tmp / "unit.cpp"),
                "-o", str(out)]
    build_library(lib_path, compile_unit, "host compile")
    lib = ctypes.CDLL(str(lib_path))
    for symbol, _ in table.values():
        fn = getattr(lib, symbol)
        fn.restype = ctypes.c_int
        fn.argtypes = (ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                       ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_int)
    return lib, table


def _dims(d, what):
    d = (d,) if isinstance(d, (int, np.integer)) else tuple(d)
    if not 1 <= len(d) <= 3 or any(not isinstance(v, (int, np.integer)) or v < 1 for v in d):
        raise KernelError(f"{what} must be 1 to 3 positive integers, got {d!r}")
    return (ctypes.c_uint * 3)(*(list(map(int, d)) + [1, 1])[:3])


class HostKernel:
    """One kernel of a host-compiled module, called as CuPy's RawKernel is. A launch on a
    capturing stream is checked now and recorded, arguments by value as CUDA captures them, to
    run when the graph is replayed."""

    def __init__(self, memory, lib, symbol, expr, params, on_launch=None):
        self.memory, self.expr, self.params = memory, expr, params
        self.fn = getattr(lib, symbol)
        self.on_launch = on_launch

    def __call__(self, grid, block, args, shared_mem=0):
        if shared_mem:
            raise KernelError("dynamic shared memory is not emulated")
        if not isinstance(args, tuple):
            raise KernelError(f"{self.expr}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.params):
            raise KernelError(f"{self.expr}: {len(args)} arguments for {len(self.params)} "
                              f"parameters {self.params}")
        values, owners, consts, writable = [], [], [], []
        for j, (p, a) in enumerate(zip(self.params, args)):
            where = f"{self.expr} argument {j} ({p.ctype})"
            if p.pointer:
                if not isinstance(a, np.ndarray) or not hasattr(a, "_c_contiguous"):
                    raise KernelError(f"{where}: expected a device array, got {type(a).__name__}")
                if a.dtype != POINTEE[p.base]:
                    raise KernelError(f"{where}: array of dtype {a.dtype}")
                if not a.flags.c_contiguous:
                    raise KernelError(f"{where}: array of strides {a.strides} is not "
                                      "C-contiguous (a raw kernel ignores strides)")
                owner = self.memory.owner(a)
                if owner is None:
                    raise KernelError(f"{where}: the array is not in device memory")
                address = a.__array_interface__["data"][0]
                owners.append(owner)
                (consts if p.const else writable).append(owner)
                values.append(ctypes.c_void_p(address))
            else:
                scalar, ctype = VALUE[p.base]
                if type(a) is not scalar:
                    raise KernelError(f"{where}: expected numpy.{scalar.__name__}, got "
                                      f"{type(a).__name__} {a!r}")
                values.append(ctype(a))
        argv = (ctypes.c_void_p * max(1, len(values)))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        grid, block = _dims(grid, "grid"), _dims(block, "block")
        run = lambda: self._run(grid, block, argv, values, owners, consts, writable)  # noqa
        captured = self.memory.capture_target()
        if captured is not None:       # a capturing stream: the arguments as they are now
            captured.append(run)
        else:
            run()

    def _run(self, grid, block, argv, values, owners, consts, writable):
        """The launch itself (``values`` keeps the argument objects ``argv`` points to alive)."""
        err = ctypes.create_string_buffer(1024)
        protect = [o for o in set(consts) if o not in writable]   # aliased: left writable
        for owner in protect:
            owner.read_only(True)
        try:
            rc = self.fn(grid, block, argv, err, len(err))
            message = err.value.decode(errors="replace")
            if rc == 2:                  # described while the const buffers are still read-only
                address = int(re.search(r"address (0x[0-9a-f]+|\(nil\))", message).group(1)
                              .replace("(nil)", "0x0"), 16)
                message += f" ({self.memory.describe(address)})"
        finally:
            for owner in protect:
                owner.read_only(False)
        if rc:
            raise KernelError(f"{self.expr}: {message}")
        for owner in owners:
            if not owner.canaries_intact():
                raise KernelError(f"{self.expr}: wrote outside a buffer of {owner.nbytes} bytes "
                                  "(its canary bytes changed)")
        if self.on_launch is not None:
            self.on_launch(self.expr, grid, block)


class HostModule:
    """CuPy's ``RawModule(code=..., options=..., name_expressions=...)``, compiled for the host.

    As with NVRTC, every name expression must name a kernel of the source (else compilation
    fails), and :meth:`get_function` finds a template instantiation only through its name
    expression; an extern "C" kernel by its plain name.
    """

    def __init__(self, memory, code, options=(), name_expressions=None, on_launch=None):
        self.memory, self.on_launch = memory, on_launch
        self.lib, self.table = build(code, tuple(options))
        self.name_expressions = tuple(name_expressions or ())
        for expr in self.name_expressions:
            if expr not in self.table:
                raise KernelError(f"name expression {expr!r} names no kernel of the source")

    def get_function(self, name):
        if name not in self.table or ("<" in name and name not in self.name_expressions):
            raise KernelError(f"no kernel {name!r} in the module (cuModuleGetFunction would "
                              "fail: templates are found only through name_expressions)")
        symbol, params = self.table[name]
        return HostKernel(self.memory, self.lib, symbol, name, params, self.on_launch)
