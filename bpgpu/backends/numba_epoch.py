"""A whole training epoch as ONE call into Numba-compiled code, derived from ``MLP.train_step``.

The numba backend's steps are fused kernels and BLAS calls, but each is dispatched from Python:
at batch 64 that dispatch is a sizeable part of the step (bench/NOTES.md). This module removes it
without writing the model's math a second time. The step stays defined once, in
:meth:`bpgpu.MLP.train_step`; what is compiled is the sequence of backend ops that method issues:

1. **Record.** ``train_step`` runs with a recording stand-in for the backend (:class:`_Recorder`)
   that computes nothing and logs every op call: its name, each array argument as the buffer it
   lies in (parameters, gradients, optimizer state, workspace, data, the epoch's order, the
   metrics accumulator) with its offset and shape, and every scalar. Three full batches and up to
   two shorter ones are recorded, from the model's current state (restored afterwards).
2. **Generalise.** Across the recordings every integer -- offsets, shapes, Adam's step, the step
   word of the dropout streams' Philox counter -- must be ``c0 + c1 * step + c2 * rows`` (the
   batch's index in the epoch and its number of rows); floats, names and flags must not change.
   So must the integer attributes of the model and the optimizer that a step advances
   (``model.steps``, Adam's ``t``): after the compiled epoch they are advanced by as many steps.
3. **Generate** Python source for an ``@njit`` epoch: a loop over the batches, in it one call per
   recorded op to the function of the same name in ``kernels/epoch.py`` (what the backend's method
   does, in Numba), with the arguments as views of the buffers -- the remainder batch as views of
   the first rows, as ``ws.view`` makes them. Numbers come from tables passed at each call (a
   learning rate may change between epochs without recompiling); the source holds only the op
   sequence, the buffers and the flags, so one compiled epoch serves every size of a network.
4. **Compile** once per source: kept in memory, and on disk -- the source is written to a cache
   directory under a name hashing it with the sources of the kernels it calls and the library
   versions, imported, and compiled with ``cache=True``, so a new process loads it from Numba's
   cache instead of compiling.

The results are bit-identical to the steps run one by one (same kernels, same BLAS calls, in the
same order; tests/test_compiled_epoch.py). The per-step path stays the reference and the
fallback: the runner returns False, and keeps the reason in :attr:`CompiledEpoch.reason`, where
numpy's CBLAS was not found (kernels/blas.py), a ``gradient_hook`` is given (data-parallel
training calls Python between backward and update), an op is replaced on the backend instance
(a benchmark timing its GEMMs), the step issues an op or an argument the generator does not know
(the elastic field of augmentation: its smoothing runs as GEMMs on host arrays), or numpy's
matmul would take its dot path (one row times one column).

When: ``BPGPU_COMPILED_EPOCH=0`` in the environment turns compiled epochs off, ``=1`` compiles
every epoch; by default epochs of at least :data:`MIN_BATCHES` batches are compiled (a new
source costs seconds to compile, once per machine: MNIST-sized work) and smaller ones use a
compiled form only when it is cached already.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import os
import sys
import tempfile
import time
from importlib import resources

import numpy as np

from ..activations import ACT_CODES, LOSS_CODES
from .base import EXP_LIMIT, LOG_CLIP, OPS, Backend
from .numba_backend import PARALLEL_MIN, SERIAL_MAX_CORES, _ok, _ok_augment, _ok_rows

__all__ = ["CompiledEpoch", "ENV", "MIN_BATCHES", "SLICE_SECONDS", "mode", "override",
           "enabled", "STATS", "Unsupported"]

#: Environment variable: "0" turns compiled epochs off (every epoch runs step by step).
ENV = "BPGPU_COMPILED_EPOCH"
#: What the compiled epochs of this process did (for benchmarks and tests): epochs run compiled,
#: epochs left to the per-step path, sources compiled now, sources loaded from Numba's disk cache,
#: and the seconds those took.
STATS = {"compiled_epochs": 0, "fallback_epochs": 0, "abandoned_epochs": 0, "compiled": 0,
         "cache_loads": 0, "compile_seconds": 0.0}
#: Seconds of training per compiled call when the caller asks between calls whether to stop
#: (Ctrl-C): the first slice runs this many batches, later ones are sized from its time.
SLICE_SECONDS = 0.1
_FIRST_SLICE = 4

#: Recordings of full batches (3 fix and check the per-step terms of every integer).
_FULL_RECORDINGS = 3
_WORD = 1 << 64


class Unsupported(Exception):
    """This step cannot be compiled into an epoch; the message says why."""


#: In the default mode an epoch of fewer batches runs step by step unless its compiled form is
#: at hand already (in memory or in the disk cache): compiling a new one costs seconds, more
#: than such a fit's steps cost in Python.
MIN_BATCHES = 50


_OVERRIDE = []


def mode() -> str:
    """``BPGPU_COMPILED_EPOCH``: "0" never compile epochs, "1" always (any epoch size), unset or
    "auto" compile epochs of at least :data:`MIN_BATCHES` batches, and use compiled forms of
    smaller ones that are cached already. Inside :func:`override`, its mode."""
    if _OVERRIDE:
        return _OVERRIDE[-1]
    value = os.environ.get(ENV, "auto").strip().lower()
    return value if value in ("0", "1") else "auto"


@contextlib.contextmanager
def override(value: str):
    """Within the block, :func:`mode` is ``value`` ("0", "1" or "auto") whatever the
    environment says (``bpgpu warmup`` compiles the textbook epochs with it)."""
    _OVERRIDE.append(value)
    try:
        yield
    finally:
        _OVERRIDE.pop()


def enabled() -> bool:
    """False when ``BPGPU_COMPILED_EPOCH=0`` is set."""
    return mode() != "0"


# ------------------------------------------------------------------------------ 1. record
def _parameters(name):
    """``(names, defaults)`` of the op's parameters after ``self`` (Backend's signature)."""
    params = list(inspect.signature(getattr(Backend, name)).parameters.values())[1:]
    return ([p.name for p in params],
            {p.name: p.default for p in params if p.default is not inspect.Parameter.empty})


_PARAMETERS = {name: _parameters(name) for name in OPS}


class _Recorder:
    """Stands in for the backend while ``train_step`` runs: logs ``(op, arguments)`` -- all of
    the op's parameters in Backend's order, defaults filled in -- and computes nothing. Backend
    facts the step asks for (``fuses_sgd``) come from the real backend; anything else the step
    touches is not recordable."""

    def __init__(self, backend):
        self._backend = backend
        self.ops = []

    def fuses_sgd(self, dtype) -> bool:
        return self._backend.fuses_sgd(dtype)

    def __getattr__(self, name):
        if name not in _PARAMETERS:
            raise Unsupported(f"the step used backend.{name}, which the epoch compiler does not "
                              f"record")
        names, defaults = _PARAMETERS[name]

        def record(*args, **kwargs):
            values = list(args) + [kwargs.pop(p) if p in kwargs else defaults[p]
                                   for p in names[len(args):]]
            if kwargs or len(values) != len(names):
                raise TypeError(f"{name}() got arguments {sorted(kwargs)} it does not take")
            self.ops.append((name, values))

        return record


def _arrays(prefix, value):
    """``(path, array)`` for every array reachable through lists, tuples and dicts."""
    if isinstance(value, np.ndarray):
        return [(prefix, value)]
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, (list, tuple)) else ())
    return [found for key, item in items for found in _arrays(f"{prefix}.{key}", item)]


def _address(arr) -> int:
    return arr.__array_interface__["data"][0]


class _Buffers:
    """The buffers a step's arrays may lie in, each passed whole to the compiled epoch."""

    def __init__(self, named):
        self.names, self.arrays, self._spans, seen = [], [], [], set()
        for name, arr in named:
            key = (_address(arr), arr.nbytes, arr.dtype)
            if not arr.flags.c_contiguous or key in seen:
                continue
            seen.add(key)
            self.names.append(name)
            self.arrays.append(arr)
            self._spans.append(key)

    def locate(self, arr):
        """``(buffer index, offset in elements, shape)`` of a C-contiguous array in a buffer."""
        if not arr.flags.c_contiguous:
            raise Unsupported("the step passed a non-contiguous array to an op")
        start, end = _address(arr), _address(arr) + arr.nbytes
        best = None
        for i, (base, nbytes, dtype) in enumerate(self._spans):
            if (dtype == arr.dtype and base <= start and end <= base + nbytes
                    and (start - base) % arr.itemsize == 0
                    and (best is None or nbytes > self._spans[best][1])):
                best = i
        if best is None:
            raise Unsupported("the step passed an array that is not in the model, its optimizer, "
                              "its workspace, the data or the metrics")
        return best, (start - self._spans[best][0]) // arr.itemsize, arr.shape


def _describe(value, buffers):
    """One recorded argument as ``(kind, ...)``: A array, K constant, I int, F float, W words."""
    if isinstance(value, np.ndarray):
        return ("A",) + buffers.locate(value)
    if value is None or isinstance(value, (bool, np.bool_, str)):
        return ("K", bool(value) if isinstance(value, np.bool_) else value)
    if isinstance(value, (int, np.integer)):
        return ("I", int(value))
    if isinstance(value, float):
        return ("F", float(value))
    if isinstance(value, tuple) and all(isinstance(v, (int, np.integer))
                                        and not isinstance(v, bool) for v in value):
        return ("W", tuple(int(v) for v in value))
    raise Unsupported(f"the step passed a {type(value).__name__} to an op")


def _numbers(obj) -> dict:
    return {k: v for k, v in vars(obj).items()
            if isinstance(v, (bool, int, float, np.integer, np.floating))}


# ------------------------------------------------------------------------------ 2. generalise
def _fit(values, points, words=False):
    """``(c0, c1, c2)`` with ``value == c0 + c1 * step + c2 * rows`` at every recorded
    ``(step, rows)`` (modulo 2**64 for Philox words, which may not depend on rows)."""
    (s0, r0), v0 = points[0], values[0]
    c1 = values[1] - v0
    c2 = 0
    if len(points) > _FULL_RECORDINGS and not words:
        (s, r), v = points[_FULL_RECORDINGS], values[_FULL_RECORDINGS]
        num = v - v0 - c1 * (s - s0)
        if num % (r - r0):
            raise Unsupported("an integer argument is not linear in the batch's rows")
        c2 = num // (r - r0)
    c0 = v0 - c1 * s0 - c2 * r0
    for (s, r), v in zip(points, values):
        ok = ((c0 + c1 * s - v) % _WORD == 0) if words else (c0 + c1 * s + c2 * r == v)
        if not ok:
            raise Unsupported("an integer argument changes from step to step in a way the "
                              "compiled epoch does not follow (not c0 + c1*step + c2*rows)")
    if words:
        return c0 % _WORD, c1 % _WORD, 0
    return c0, c1, c2


class _Source:
    """Builds the epoch's source from the generalised ops, and what it is called with.

    Kept small, because Numba's compile time grows with every expression: numbers are read from
    the tables once, before the loop; a view that is the same in every step (a layer's weights
    in the flat parameters) is made in Python and passed as an argument; a view of a batch's
    rows is ``buffer[:rows]``.
    """

    def __init__(self, buffers, parallel):
        self.buffers, self.parallel = buffers, parallel
        self.F, self.I, self.U = [], [], []
        self.pre, self.body = [], []
        self.fixed = []                     # (buffer, offset, shape) of the argument views A0..
        self.flat = set()                   # buffers also needed flat in the loop
        self.max_cols = 1

    # numbers -------------------------------------------------------------------------------
    def _local(self, table, value):
        """A local read from a table before the loop. One per use, never shared between equal
        values: the source must not depend on the numbers (a rate that changes between epochs
        would otherwise change the source, and compile it again)."""
        values = {"F": self.F, "I": self.I, "U": self.U}[table]
        values.append(value)
        name = f"{table.lower()}{len(values) - 1}"
        self.pre.append(f"{name} = {table}[{len(values) - 1}]")
        return name

    def float_(self, value) -> str:
        return self._local("F", float(value))

    def int_(self, coefficients) -> str:
        """The expression of an integer ``c0 + c1*j + c2*rows``."""
        c0, c1, c2 = coefficients
        terms = [self._local("I", c0)]
        if c1:
            terms.append(f"j * {self._local('I', c1)}")
        if c2:
            terms.append("rows" if c2 == 1 else f"rows * {self._local('I', c2)}")
        return " + ".join(terms)

    def word(self, coefficients) -> str:
        c0, c1, _ = coefficients
        if not c1:
            return self._local("U", c0)
        return f"{self._local('U', c0)} + np.uint64(j) * {self._local('U', c1)}"

    def view(self, buffer, offset, shape) -> str:
        """The expression of ``buffer``'s elements ``offset ..`` seen with ``shape``."""
        root = self.buffers.arrays[buffer]
        if not any(c[1] or c[2] for c in [offset, *shape]):          # the same in every step
            self.fixed.append((buffer, offset[0], tuple(c[0] for c in shape)))
            return f"A{len(self.fixed) - 1}"
        if (offset == (0, 0, 0) and len(shape) == root.ndim and shape[0] == (0, 0, 1)
                and all(c == (n, 0, 0) for c, n in zip(shape[1:], root.shape[1:]))):
            return f"R{buffer}[:rows]"                             # a batch's leading rows
        self.flat.add(buffer)
        off = self.int_(offset)
        dims = [self.int_(c) for c in shape]
        expr = f"R{buffer}f[{off}:{off} + {' * '.join(f'({d})' for d in dims)}]"
        return expr if len(dims) == 1 else f"{expr}.reshape(({', '.join(dims)}))"

    def emit(self, line):
        self.body.append(line)

    def text(self) -> str:
        roots = ", ".join(f"R{i}" for i in range(len(self.buffers.arrays)))
        fixed = "".join(f"A{i}, " for i in range(len(self.fixed)))
        pre = [f"R{b}f = R{b}.reshape(-1)" for b in sorted(self.flat)] + self.pre
        lines = [
            "# Generated by bpgpu.backends.numba_epoch from the backend ops MLP.train_step issued;",
            "# one call per op to bpgpu.kernels.epoch. Do not edit: regenerated when it changes.",
            "import numpy as np",
            "from numba import njit",
            "from bpgpu.kernels import epoch",
            "",
            f"_e = epoch.{'ADAPTIVE' if self.parallel else 'SERIAL'}",
            "",
            "",
            '@njit(cache=True, error_model="numpy", nogil=True)',
            f"def epoch(j0, j1, n, batch, n_batches, {roots}, {fixed}F, I, U, acc, ones, words,",
            "          sink, gemm_address, gemv_address, ilp64, par, par_min):",
        ]
        lines += [f"    {line}" for line in pre]
        lines += ["    for j in range(j0, j1):",
                  "        rows = min(batch, n - j * batch)"]
        lines += [f"        {line}" for line in self.body]
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ 3. lowering
# One function per op: checks, on every recording, what the numba backend checks before its
# fast path (anything else is left to the per-step path), then emits the call. ``a`` holds the
# generalised arguments (in Backend's signature order), ``raw`` the recorded values per recording.
def _check(condition, op):
    if not condition:
        raise Unsupported(f"{op}: arguments outside the numba backend's fast path")


def _lower_gather_rows(src, a, raw, e):
    for data, idx, out, *_ in raw:
        scaled = data.dtype == np.uint8
        _check(out.dtype in (np.float32, np.float64) and out.ndim == data.ndim == 2
               and idx.ndim == 1 and idx.dtype.kind in "iu"
               and out.shape == (idx.shape[0], data.shape[1])
               and (scaled or data.dtype == out.dtype), "gather_rows")
    scaled = raw[0][0].dtype == np.uint8
    src.emit(f"_e.gather_rows({e[0]}, {e[1]}, {e[2]}, {e[3]}, {e[4]}, {scaled}, par, par_min)")


def _lower_gather_augmented(src, a, raw, e):
    for data, idx, out, uniform, field, height, width, translate, *_ in raw:
        _check(field is None and _ok_augment(data, idx, out, uniform, field, height, width,
                                             translate), "gather_augmented")
    scaled = raw[0][0].dtype == np.uint8
    args = ", ".join(e[k] for k in (0, 1, 2, 3) + tuple(range(5, 14)))
    src.emit(f"_e.gather_augmented({args}, {scaled}, par, par_min)")


def _mnk(a, b, out, trans_a):
    return out.shape[0], out.shape[1], a.shape[0] if trans_a else a.shape[1]


def _overlap(x, y):
    return (_address(x) < _address(y) + y.nbytes) and (_address(y) < _address(x) + x.nbytes)


def _lower_gemm(src, a, raw, e):
    for x, y, out, *_ in raw:
        _check(x.ndim == y.ndim == out.ndim == 2 and x.dtype == y.dtype == out.dtype
               and not _overlap(out, x) and not _overlap(out, y), "gemm")
    alpha, beta = a[5][1], a[6][1]
    if alpha == 1.0 and beta == 0.0:           # numpy's matmul: its dot case is not compiled
        for x, y, out, trans_a, *_ in raw:
            m, n, k = _mnk(x, y, out, trans_a)
            _check(not (m == 1 and n == 1 and k > 1), "gemm (numpy's dot case)")
        src.emit(f"_e.matmul(gemm_address, gemv_address, ilp64, {e[0]}, {e[1]}, {e[2]}, "
                 f"{e[3]}, {e[4]})")
    else:
        src.emit(f"_e.gemm(gemm_address, ilp64, {e[0]}, {e[1]}, {e[2]}, {e[3]}, {e[4]}, "
                 f"{e[5]}, {e[6]})")


def _lower_bias_activation(src, a, raw, e):
    activation = a[2][1]
    _check(activation in ACT_CODES, "bias_activation")
    for z, bias, _ in raw:
        _check(_ok_rows(z, bias), "bias_activation")
    limit = src.float_(EXP_LIMIT[raw[0][0].dtype])
    src.emit(f"_e.bias_activation({e[0]}, {e[1]}, {ACT_CODES[activation]}, {limit}, par, "
             f"par_min)")


def _lower_activation_backward(src, a, raw, e):
    activation = a[2][1]
    if activation == "identity":
        return
    _check(activation in ACT_CODES, "activation_backward")
    for delta, out, _ in raw:
        _check(_ok(delta, out) and delta.ndim == 2, "activation_backward")
    src.emit(f"_e.activation_backward({e[0]}, {e[1]}, {ACT_CODES[activation]}, par, par_min)")


def _lower_output_delta(src, a, raw, e):
    output, loss = a[3][1], a[4][1]
    _check(output in ACT_CODES and loss in LOSS_CODES, "output_delta")
    for out, y, delta, _, _, acc in raw:
        _check(_ok(out, y, delta) and out.ndim == 2
               and (acc is None or (acc.dtype == np.float64 and acc.shape == (1,))),
               "output_delta")
    tiny, one_minus_eps = (src.float_(v) for v in LOG_CLIP[raw[0][0].dtype])
    want = a[5][0] == "A"
    src.emit(f"_e.output_delta({e[0]}, {e[1]}, {e[2]}, {ACT_CODES[output]}, {LOSS_CODES[loss]},"
             f" {tiny}, {one_minus_eps}, {e[5] if want else 'sink'}, {want}, par, par_min)")


def _lower_column_sums(src, a, raw, e):
    plain = a[2][1] == 1.0 and a[3][1] == 0.0
    for d, out, *_ in raw:
        _check(_ok_rows(d, out), "column_sums")
        if plain and d.size >= PARALLEL_MIN:      # numpy's matmul(ones, d): not its dot case
            _check(d.shape[1] > 1, "column_sums (numpy's dot case)")
        src.max_cols = max(src.max_cols, d.shape[1])
    src.emit(f"_e.column_sums(gemm_address, gemv_address, ilp64, {e[0]}, {e[1]}, {e[2]}, "
             f"{e[3]}, acc, ones, {PARALLEL_MIN})")


def _lower_count_correct(src, a, raw, e):
    for out, y, acc in raw:
        _check(_ok(out, y) and out.ndim == 2 and acc.dtype == np.float64 and acc.shape == (1,),
               "count_correct")
    src.emit(f"_e.count_correct({e[0]}, {e[1]}, {e[2]}, par, par_min)")


def _lower_random_uniform(src, a, raw, e):
    for out, key, counter, _ in raw:
        _check(out.dtype == np.float32 and len(key) == 2 and len(counter) == 4,
               "random_uniform")
    for k, word in enumerate(e[1] + e[2]):
        src.emit(f"words[{k}] = {word}")
    src.emit(f"_e.random_uniform({e[0]}, words, {e[3]}, par, par_min)")


def _lower_dropout_forward(src, a, raw, e):
    for act, uniform, _, mask, out in raw:
        _check(_ok(act, mask, out) and uniform.dtype == np.float32
               and uniform.shape == act.shape and act.ndim == 2, "dropout_forward")
    src.emit(f"_e.dropout_forward({e[0]}, {e[1]}, {e[2]}, {e[3]}, {e[4]}, par, par_min)")


def _lower_dropout_backward(src, a, raw, e):
    for delta, mask in raw:
        _check(_ok(delta, mask) and delta.ndim == 2, "dropout_backward")
    src.emit(f"_e.dropout_backward({e[0]}, {e[1]}, par, par_min)")


def _check_update(raw, n_arrays, op):
    for args in raw:
        arrays, n_decay = args[:n_arrays], args[-1]
        _check(_ok(*arrays) and arrays[0].ndim == 1 and 0 <= n_decay <= arrays[0].size, op)


def _lower_sgd_update(src, a, raw, e):
    _check_update(raw, 2, "sgd_update")
    src.emit(f"_e.sgd_update({', '.join(e)})")


def _lower_momentum_update(src, a, raw, e):
    _check_update([args[:-1] for args in raw], 3, "momentum_update")
    src.emit(f"_e.momentum_update({', '.join(e)})")


def _lower_adam_update(src, a, raw, e):
    _check_update(raw, 4, "adam_update")
    src.emit(f"_e.adam_update({', '.join(e)})")


_LOWER = {name[len("_lower_"):]: fn for name, fn in globals().items()
          if name.startswith("_lower_")}


# ------------------------------------------------------------------------------ 4. compile
_KERNEL_SOURCES = ("epoch.py", "cpu.py", "augment.py", "blas.py", "intrinsics.py")
_COMPILED: dict = {}          # source hash -> dispatcher
_READY: set = set()           # (dispatcher, argument types) compiled or loaded


def _fingerprint() -> str:
    """What a compiled epoch depends on besides its own source: the kernels' sources, this
    generator, and the library versions (Numba's cache does not notice a callee's change)."""
    import numba
    h = hashlib.sha256(f"{numba.__version__} {np.__version__} {sys.version}".encode())
    kernels = resources.files("bpgpu.kernels")
    for name in _KERNEL_SOURCES:
        h.update(kernels.joinpath(name).read_bytes())
    with open(__file__, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


_FINGERPRINT = None


def _cache_dir() -> str:
    """Where generated epoch modules (and, beside them, Numba's cache of them) are kept:
    ``$NUMBA_CACHE_DIR/bpgpu-epoch``, else next to the kernels' own Numba cache, else the user's
    cache directory, else a temporary directory (compiled once per process then)."""
    candidates = []
    if os.environ.get("NUMBA_CACHE_DIR"):
        candidates.append(os.path.join(os.environ["NUMBA_CACHE_DIR"], "bpgpu-epoch"))
    try:
        candidates.append(os.path.join(str(resources.files("bpgpu.kernels")), "__pycache__",
                                       "bpgpu-epoch"))
    except (ModuleNotFoundError, TypeError):
        pass
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates.append(os.path.join(xdg, "bpgpu", "epoch"))
    for path in candidates:
        try:
            os.makedirs(path, exist_ok=True)
            if os.access(path, os.W_OK):
                return path
        except OSError:
            continue
    return tempfile.mkdtemp(prefix="bpgpu-epoch-")


def _dispatcher(source: str, existing_only=False):
    """The compiled-epoch dispatcher of ``source`` (generated module imported once); with
    ``existing_only``, None unless it is in memory or its module is in the cache directory."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        _FINGERPRINT = _fingerprint()
    key = hashlib.sha256((_FINGERPRINT + source).encode()).hexdigest()[:24]
    fn = _COMPILED.get(key)
    if fn is not None:
        return fn
    name = f"bpgpu_epoch_{key}"
    path = os.path.join(_cache_dir(), name + ".py")
    if existing_only and not os.path.exists(path):
        return None
    if not os.path.exists(path):                   # same name, same text: keep its mtime, which
        tmp = f"{path}.{os.getpid()}.tmp"          # Numba's cache index checks
        with open(tmp, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    fn = _COMPILED[key] = module.epoch
    return fn


# ------------------------------------------------------------------------------ the runner
class CompiledEpoch:
    """Runs every training step of an epoch -- what ``model.train_step(ws.view(rows), X_dev,
    T_dev, order[start:start + rows], optimizer, **step_options)`` does for each batch -- in one
    call into Numba-compiled code.

    Built by :meth:`NumbaBackend.compiled_epoch`; call it with the epoch's order (device int64
    array, shape (N,)). Returns True when the epoch ran, False when it cannot be compiled (the
    caller then runs the steps itself; :attr:`reason` says why, and later calls return False at
    once).
    """

    def __init__(self, backend, model, ws, X_dev, T_dev, optimizer, step_options):
        self.backend, self.model, self.ws = backend, model, ws
        self.X_dev, self.T_dev, self.optimizer = X_dev, T_dev, optimizer
        self.options = dict(step_options)
        self.n, self.batch = X_dev.shape[0], ws.rows
        self.reason = None
        self._scratch = None

    def __call__(self, order, should_stop=None, progress=None):
        """Run the epoch in the order ``order``; True when it ran, False when it cannot.

        With ``should_stop`` (a callable), the epoch runs in slices of about
        :data:`SLICE_SECONDS` each and ``should_stop()`` is asked after every slice: compiled
        code does not see signals, so this is how Ctrl-C reaches a long epoch. When it answers
        True before the last slice, the epoch is abandoned part way and None is returned: the
        parameters and optimizer state are then mid-epoch and the model's step counters are not
        advanced (the caller goes back to its last completed epoch). ``progress(k)`` is called
        with the number of batches each slice ran.
        """
        if self.reason is None:
            try:
                plan = self._plan()
                args = self._arguments(plan, order)
                small = mode() == "auto" and args[2] < MIN_BATCHES
                fn = _dispatcher(plan["source"], existing_only=small)
                if fn is None:
                    raise Unsupported(f"epochs of fewer than {MIN_BATCHES} batches run step by "
                                      f"step unless compiled already ({ENV}=1 compiles them)")
                self._compile(fn, args)
            except Unsupported as exc:
                self.reason = str(exc)
        if self.reason is not None:
            STATS["fallback_epochs"] += 1
            return False
        n_batches = args[2]
        done, per_call = 0, n_batches if should_stop is None else _FIRST_SLICE
        while done < n_batches:
            upto = min(n_batches, done + per_call)
            t0 = time.perf_counter()
            fn(done, upto, *args)
            took = time.perf_counter() - t0
            if progress is not None:
                progress(upto - done)
            if upto < n_batches and should_stop is not None:
                if should_stop():
                    STATS["abandoned_epochs"] += 1
                    return None
                per_call = max(1, min(n_batches, int((upto - done) * SLICE_SECONDS
                                                     / max(took, 1e-6))))
            done = upto
        for obj, slopes in plan["advance"]:
            for attr, (start, slope) in slopes.items():
                setattr(obj, attr, start + slope * n_batches)
        STATS["compiled_epochs"] += 1
        return True

    # -------------------------------------------------------------------- record + generalise
    def _rows_recorded(self):
        """Rows of the recorded batches: 3 full ones, then the epoch's remainder (or another
        short batch) and one more short batch to check the rows terms."""
        b = self.batch
        rows = [b] * _FULL_RECORDINGS
        if b >= 2:
            first = self.n % b or max(1, b // 2)
            rows.append(first)
            if b >= 3:
                rows.append(first - 1 if first > 1 else first + 1)
        return rows

    def _record(self, rows_list):
        model, opt, ws = self.model, self.optimizer, self.ws
        b = self.batch
        order = np.zeros(len(rows_list) * b, np.int64)       # stands for the epoch's order
        named = [("params", model.params), ("grads", model.grads)]
        named += _arrays("opt", {k: v for k, v in sorted(vars(opt).items())
                                 if isinstance(v, np.ndarray)})
        named += _arrays("ws", vars(ws))
        named += [("X", self.X_dev), ("T", self.T_dev), ("order", order)]
        if isinstance(self.options.get("metrics"), np.ndarray):
            named.append(("metrics", self.options["metrics"]))
        buffers = _Buffers(named)
        if self.options.get("gradient_hook") is not None:
            raise Unsupported("a gradient_hook runs Python between backward and update")
        wrapped = sorted(name for name in OPS if name in vars(self.backend))
        if wrapped:      # e.g. timed or traced by a benchmark: compiled code would bypass it
            raise Unsupported(f"backend op(s) {', '.join(wrapped)} are replaced on this backend "
                              f"instance; the compiled epoch would not call them")
        watched = (model, opt)
        before = [_numbers(obj) for obj in watched]
        states, traces = [], []
        recorder = _Recorder(self.backend)
        saved = model.backend, opt.backend
        try:
            model.backend = opt.backend = recorder
            for j, rows in enumerate(rows_list):
                recorder.ops = []
                model.train_step(ws.view(rows), self.X_dev, self.T_dev,
                                 order[j * b:j * b + rows], opt, **self.options)
                traces.append(recorder.ops)
                states.append([_numbers(obj) for obj in watched])
        except Unsupported:
            raise
        except Exception as exc:        # whatever the step needed that the recorder is not
            raise Unsupported(f"recording the step failed: {type(exc).__name__}: {exc}") from exc
        finally:
            model.backend, opt.backend = saved
            for obj, numbers in zip(watched, before):
                for attr in set(vars(obj)) - set(numbers) - {"backend"}:
                    if isinstance(vars(obj)[attr], (int, float, np.number)):
                        delattr(obj, attr)
                for attr, value in numbers.items():
                    setattr(obj, attr, value)
        advance = []
        for i, obj in enumerate(watched):
            slopes = {}
            for attr, start in before[i].items():
                seq = [start] + [s[i].get(attr) for s in states]
                if all(v == start for v in seq):
                    continue
                step = seq[1] - start
                if (isinstance(start, (bool, float, np.floating))
                        or any(v != start + k * step for k, v in enumerate(seq))):
                    raise Unsupported(f"{type(obj).__name__}.{attr} changes in a step in a way "
                                      f"the compiled epoch does not follow")
                slopes[attr] = (start, step)
            advance.append((obj, slopes))
        return buffers, traces, advance

    def _plan(self):
        rows_list = self._rows_recorded()
        buffers, traces, advance = self._record(rows_list)
        points = [(j, rows) for j, rows in enumerate(rows_list)]
        first = traces[0]
        if any(len(t) != len(first) or [op for op, _ in t] != [op for op, _ in first]
               for t in traces):
            raise Unsupported("the step issues different ops from batch to batch")
        src = _Source(buffers, (os.cpu_count() or 1) > SERIAL_MAX_CORES)
        memo = {}             # id -> description (the recorded objects all stay alive meanwhile)
        for i, (op, _) in enumerate(first):
            lower = _LOWER.get(op)
            if lower is None:
                raise Unsupported(f"the op {op} is not compiled into epochs")
            raw = [t[i][1] for t in traces]
            described = [[memo[id(v)] if id(v) in memo
                          else memo.setdefault(id(v), _describe(v, buffers)) for v in args]
                         for args in raw]
            args, exprs = [], []
            for k in range(len(raw[0])):
                column = [d[k] for d in described]
                kind = column[0][0]
                if any(c[0] != kind for c in column):
                    raise Unsupported(f"{op}: an argument changes kind between steps")
                if kind in "KF":
                    if any(c[1] != column[0][1] for c in column):
                        raise Unsupported(f"{op}: a {'float' if kind == 'F' else 'flag'} "
                                          f"argument changes between steps")
                    exprs.append(src.float_(column[0][1]) if kind == "F"
                                 else repr(column[0][1]))
                elif kind == "I":
                    exprs.append(src.int_(_fit([c[1] for c in column], points)))
                elif kind == "W":
                    if any(len(c[1]) != len(column[0][1]) for c in column):
                        raise Unsupported(f"{op}: a tuple argument changes length")
                    exprs.append([src.word(_fit([c[1][w] for c in column], points, words=True))
                                  for w in range(len(column[0][1]))])
                else:                                             # an array
                    if any(c[1] != column[0][1] or len(c[3]) != len(column[0][3])
                           for c in column):
                        raise Unsupported(f"{op}: an array argument moves between buffers")
                    offset = _fit([c[2] for c in column], points)
                    shape = [_fit([c[3][d] for c in column], points)
                             for d in range(len(column[0][3]))]
                    exprs.append(src.view(column[0][1], offset, shape))
                args.append(column[0])
            lower(src, args, raw, exprs)
        return {"source": src.text(), "buffers": buffers, "fixed": src.fixed, "F": src.F,
                "I": src.I, "U": src.U, "max_cols": src.max_cols, "advance": advance}

    # -------------------------------------------------------------------- arguments, compile
    def _arguments(self, plan, order):
        be, dtype = self.backend, self.model.dtype
        blas = be._fused_blas(dtype)
        if blas is None:
            raise Unsupported("numpy's CBLAS was not found or failed its check (kernels/blas.py)")
        if not (isinstance(order, np.ndarray) and order.dtype == np.int64
                and order.shape == (self.n,) and order.flags.c_contiguous):
            raise Unsupported("the epoch's order is not a contiguous int64 array of N rows")
        if self._scratch is None or self._scratch[0].shape[0] < plan["max_cols"]:
            self._scratch = (np.empty(max(plan["max_cols"], max(self.model.sizes)), dtype),
                             np.ones(self.batch, dtype), np.zeros(6, np.uint64),
                             np.zeros(1, np.float64))
        buffers = plan["buffers"]
        roots = [order if name == "order" else arr for name, arr in zip(buffers.names,
                                                                        buffers.arrays)]
        fixed = [roots[b].reshape(-1)[off:off + int(np.prod(shape))].reshape(shape)
                 for b, off, shape in plan["fixed"]]
        n_batches = -(-self.n // self.batch)
        return (self.n, self.batch, n_batches, *roots, *fixed,
                np.array(plan["F"], np.float64), np.array(plan["I"], np.int64),
                np.array(plan["U"], np.uint64), *self._scratch,
                blas[0], blas[1], bool(blas[2]), bool(be._parallel_ok), PARALLEL_MIN)

    @staticmethod
    def _compile(fn, args):
        """Compile ``fn`` for these arguments now (or load it from Numba's cache), timed."""
        import numba
        signature = tuple(numba.typeof(a) for a in (0, 1) + tuple(args))   # j0, j1 first
        if (fn, signature) in _READY:
            return
        hits = sum(fn.stats.cache_hits.values())
        t0 = time.perf_counter()
        fn.compile(signature)
        STATS["compile_seconds"] += time.perf_counter() - t0
        if sum(fn.stats.cache_hits.values()) > hits:
            STATS["cache_loads"] += 1
        else:
            STATS["compiled"] += 1
        _READY.add((fn, signature))
