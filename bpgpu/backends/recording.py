"""Recording the ops one training step issues, and generalising them over an epoch's steps.

A backend that runs a whole epoch without Python between its steps (the numba backend's
compiled epoch, :mod:`bpgpu.backends.numba_epoch`) must do exactly what ``model.train_step``
does, without a second copy of the model's math. So the step is *recorded*: ``train_step`` runs
with a :class:`Recorder` standing in for the backend (through the model's and optimizer's
``redirected``), which computes nothing and logs every op call -- its name and all its arguments
in :class:`~bpgpu.backends.base.Backend`'s signature order, defaults filled in. Each array argument
is then located in one of the run's buffers (:class:`Buffers`: parameters, gradients, optimizer
state, workspace, data, the epoch's order, the metrics accumulator) as an offset and a shape.

:func:`generalise` compares several recorded steps (three full batches and up to two shorter
ones): every integer -- offsets, shapes, Adam's step, the step word of a Philox counter -- must be
``c0 + c1 * step + c2 * rows`` (the batch's index in the epoch and its number of rows); floats,
names and flags must not change. So must the counters the model and optimizer advance per step
(their ``counters()``): :attr:`Recording.advance` says by how much per step.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from .base import OPS, Backend

__all__ = ["Unsupported", "Recorder", "Buffers", "Recording", "record", "generalise",
           "FULL_RECORDINGS", "PARAMETER_NAMES", "rows_to_record", "address"]

#: Recordings of full batches (3 fix and check the per-step terms of every integer).
FULL_RECORDINGS = 3
_WORD = 1 << 64


class Unsupported(Exception):
    """This step cannot be run as a recorded epoch; the message says why."""


def _parameters(name):
    """``(names, defaults)`` of the op's parameters after ``self`` (Backend's signature)."""
    params = list(inspect.signature(getattr(Backend, name)).parameters.values())[1:]
    return ([p.name for p in params],
            {p.name: p.default for p in params if p.default is not inspect.Parameter.empty})


_PARAMETERS = {name: _parameters(name) for name in OPS}
#: Op name -> its parameter names after ``self``, in Backend's order (how arguments are recorded).
PARAMETER_NAMES = {name: names for name, (names, _) in _PARAMETERS.items()}


class Recorder:
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

        def record_op(*args, **kwargs):
            values = list(args) + [kwargs.pop(p) if p in kwargs else defaults[p]
                                   for p in names[len(args):]]
            if kwargs or len(values) != len(names):
                raise TypeError(f"{name}() got arguments {sorted(kwargs)} it does not take")
            self.ops.append((name, values))

        return record_op


def address(arr) -> int:
    """The address of an array's first element (numpy arrays)."""
    return arr.__array_interface__["data"][0]


class Buffers:
    """The buffers a step's arrays may lie in (``(name, array)`` pairs; repeats and
    non-contiguous arrays are skipped), each passed whole to the compiled epoch."""

    def __init__(self, named):
        self.names, self.arrays, self._spans, seen = [], [], [], set()
        for name, arr in named:
            key = (address(arr), arr.nbytes, arr.dtype)
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
        start, end = address(arr), address(arr) + arr.nbytes
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


def _fit(values, points, words=False):
    """``(c0, c1, c2)`` with ``value == c0 + c1 * step + c2 * rows`` at every recorded
    ``(step, rows)`` (modulo 2**64 for Philox words, which may not depend on rows)."""
    (s0, r0), v0 = points[0], values[0]
    c1 = values[1] - v0
    c2 = 0
    if len(points) > FULL_RECORDINGS and not words:
        (s, r), v = points[FULL_RECORDINGS], values[FULL_RECORDINGS]
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


def rows_to_record(batch, n):
    """Rows of the batches to record for an epoch of ``n`` rows in batches of ``batch``: 3 full
    ones, then the epoch's remainder (or another short batch) and one more short batch, which
    fix the rows terms."""
    rows = [batch] * FULL_RECORDINGS
    if batch >= 2:
        first = n % batch or max(1, batch // 2)
        rows.append(first)
        if batch >= 3:
            rows.append(first - 1 if first > 1 else first + 1)
    return rows


@dataclass
class Recording:
    """What :func:`record` saw.

    Attributes
    ----------
    buffers : Buffers
        Where the arrays lie (one of them, named ``"order"``, stands for the epoch's order).
    traces : list of list of (op, values)
        The ops of each recorded step.
    points : list of (step, rows)
        The recorded steps' index and rows.
    advance : list of (object, {counter: (start, per_step)})
        How much each step advances the model's and the optimizer's counters.
    """
    buffers: Buffers
    traces: list
    points: list
    advance: list


def record(model, optimizer, ws, X_dev, T_dev, options, rows_list) -> Recording:
    """Run ``model.train_step(ws.view(rows), X_dev, T_dev, order[...], optimizer, **options)``
    once per entry of ``rows_list`` with a :class:`Recorder` for the backend, from the current
    state (the model's and optimizer's counters come back as they were). An epoch-long
    ``options["weights"]`` (per-row factors in the order's positions) is sliced per step as the
    order is, and recorded as the buffer named ``"weights"``.

    Raises
    ------
    Unsupported
        A ``gradient_hook`` (Python between backward and update), an array outside the run's
        buffers, an op or argument the recorder does not know, counters that do not advance by
        the same amount every step.
    """
    b = ws.rows
    order = np.zeros(len(rows_list) * b, np.int64)       # stands for the epoch's order
    options = dict(options)
    weights = options.pop("weights", None)               # the epoch's per-row factors
    named = [("params", model.params), ("grads", model.grads)]
    named += [(f"opt.{name}", getattr(optimizer, name)) for name in optimizer.buffers]
    named += [(f"ws.{name}", arr) for name, arr in ws.named_arrays()]
    named += [("X", X_dev), ("T", T_dev), ("order", order)]
    if weights is not None:                              # stands for them, like the order
        weights = np.zeros(len(rows_list) * b, weights.dtype)
        named.append(("weights", weights))
    if isinstance(options.get("metrics"), np.ndarray):
        named.append(("metrics", options["metrics"]))
    buffers = Buffers(named)
    if options.get("gradient_hook") is not None:
        raise Unsupported("a gradient_hook runs Python between backward and update")
    watched = (model, optimizer)
    before = [obj.counters() for obj in watched]
    states, traces = [], []
    recorder = Recorder(model.backend)
    try:
        with model.redirected(recorder), optimizer.redirected(recorder):
            for j, rows in enumerate(rows_list):
                recorder.ops = []
                per_step = ({} if weights is None
                            else {"weights": weights[j * b:j * b + rows]})
                model.train_step(ws.view(rows), X_dev, T_dev, order[j * b:j * b + rows],
                                 optimizer, **options, **per_step)
                traces.append(recorder.ops)
                states.append([obj.counters() for obj in watched])
    except Unsupported:
        raise
    except Exception as exc:        # whatever the step needed that the recorder is not
        raise Unsupported(f"recording the step failed: {type(exc).__name__}: {exc}") from exc
    advance = []
    for i, obj in enumerate(watched):
        slopes = {}
        for name, start in before[i].items():
            seq = [start] + [s[i][name] for s in states]
            step = seq[1] - start
            if any(v != start + k * step for k, v in enumerate(seq)):
                raise Unsupported(f"{type(obj).__name__}'s counter {name} changes in a step in "
                                  "a way the compiled epoch does not follow")
            if step:
                slopes[name] = (start, step)
        advance.append((obj, slopes))
    return Recording(buffers, traces, list(enumerate(rows_list)), advance)


def generalise(recording):
    """The recorded ops as one op list for every step: ``[(op, args, raw), ...]``.

    ``args`` holds one generalised argument per parameter: ``("K", value)`` (a name, flag or
    None), ``("F", value)`` (a float), ``("I", (c0, c1, c2))`` (an integer), ``("W", [(c0, c1,
    0), ...])`` (Philox words, modulo 2**64), ``("A", buffer, (c0, c1, c2), [(c0, c1, c2), ...])``
    (an array: its buffer, offset and shape); ``raw`` the argument values of each recording.

    Raises
    ------
    Unsupported
        Steps that issue different ops, or arguments that change in a way the epoch cannot
        follow.
    """
    traces, points, buffers = recording.traces, recording.points, recording.buffers
    first = traces[0]
    if any(len(t) != len(first) or [op for op, _ in t] != [op for op, _ in first]
           for t in traces):
        raise Unsupported("the step issues different ops from batch to batch")
    memo = {}             # id -> description (the recorded objects all stay alive meanwhile)
    ops = []
    for i, (op, _) in enumerate(first):
        raw = [t[i][1] for t in traces]
        described = [[memo[id(v)] if id(v) in memo
                      else memo.setdefault(id(v), _describe(v, buffers)) for v in args]
                     for args in raw]
        args = [_general([d[k] for d in described], points, op) for k in range(len(raw[0]))]
        ops.append((op, args, raw))
    return ops


def _general(column, points, op):
    """One argument's descriptions across the recordings, generalised (see :func:`generalise`)."""
    kind = column[0][0]
    if any(c[0] != kind for c in column):
        raise Unsupported(f"{op}: an argument changes kind between steps")
    if kind in "KF":
        if any(c[1] != column[0][1] for c in column):
            raise Unsupported(f"{op}: a {'float' if kind == 'F' else 'flag'} argument changes "
                              f"between steps")
        return column[0]
    if kind == "I":
        return ("I", _fit([c[1] for c in column], points))
    if kind == "W":
        if any(len(c[1]) != len(column[0][1]) for c in column):
            raise Unsupported(f"{op}: a tuple argument changes length")
        return ("W", [_fit([c[1][w] for c in column], points, words=True)
                      for w in range(len(column[0][1]))])
    if any(c[1] != column[0][1] or len(c[3]) != len(column[0][3]) for c in column):
        raise Unsupported(f"{op}: an array argument moves between buffers")
    offset = _fit([c[2] for c in column], points)
    shape = [_fit([c[3][d] for c in column], points) for d in range(len(column[0][3]))]
    return ("A", column[0][1], offset, shape)
