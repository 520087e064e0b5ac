"""The training step a CUDA graph captures, lowered from the ops ``train_step`` issues.

:mod:`bpgpu.backends.recording` records three full batches of ``model.train_step`` and
generalises their arguments (``c0 + c1 * j`` for batch ``j`` of the epoch). An argument that does
not change from batch to batch is captured as it is: such an op is issued by calling the cupy
backend's own op with the recorded arguments, so the graph holds exactly the launches (and
cuBLAS calls) of an eager step. Three kinds of argument change, and each op that takes one is
issued as its kernel's "_at" form (kernels/fused.cu: the same body), which reads the change from
the step state in device memory -- ``state[0]`` the batch's index ``j``, ``state[1]`` the model's
step count ``s``:

- the batch's indices (``gather_rows``, ``gather_augmented``): the slice ``order[c0 + c1 j:]`` of
  the epoch's order, which the graph reads from its own copy of it;
- the Philox counter of dropout and augmentation (``random_uniform``): each word ``a + b s``;
- Adam's step (``adam_update``): its two bias-corrected scalars, row ``j`` of a table the host
  computes once per epoch with the eager launch's formula (:func:`cupy_backend.adam_scalars`).

Any other change, an op without a fast path for the recorded arguments (the backend's
:data:`~bpgpu.backends.cupy_rules.FAST_PATHS`, the same condition the op itself checks), or
an op that is not lowered here (the elastic field's smoothing, which runs CuPy's matmul) leaves
the epoch to the eager path (:class:`~bpgpu.backends.recording.Unsupported`). :attr:`Step.key`
describes everything captured, so an epoch whose recording has the same key replays the same
graph (a learning rate changed by a schedule gives a new key, and a new capture).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cupy_rules import FAST_PATHS, adam_constants, adam_rates, philox_counter
from .recording import Unsupported, address

__all__ = ["Step", "lower"]

_WORD = 1 << 64
_GATHERS = ("gather_rows", "gather_augmented")


@dataclass
class Step:
    """One training step ready to capture.

    Attributes
    ----------
    key : tuple
        Everything the captured launches depend on (ops, arrays, constants, per-batch forms).
    nodes : list of callable
        Called in order, each issues one op's launches (reading the step state).
    adam : tuple or None
        ``(dtype, lr, beta1, beta2, c0, c1)``: Adam's step is ``c0 + c1 j``; its table rows.
    """
    key: tuple
    nodes: list = field(default_factory=list)
    adam: tuple | None = None

    def table(self, n_batches):
        """Adam's scalars for batches ``0 .. n_batches - 1``, shape (n_batches, 2), or None."""
        if self.adam is None:
            return None
        dtype, lr, beta1, beta2, c0, c1 = self.adam
        rows = [adam_rates(lr, beta1, beta2, c0 + c1 * j) for j in range(n_batches)]
        return np.array(rows, np.float64).astype(dtype)    # each rounded as adam_scalars does


def _varies(arg) -> bool:
    """Whether a generalised argument changes from batch to batch."""
    kind = arg[0]
    if kind == "I":
        return arg[1][1] != 0
    if kind == "W":
        return any(w[1] != 0 for w in arg[1])
    if kind == "A":
        return arg[2][1] != 0 or any(d[1] != 0 for d in arg[3])
    return False


def _describe(arg, value, order_buffer):
    """The key of one argument: arrays by address and shape, the order's slices by form."""
    if arg[0] == "A":
        if arg[1] == order_buffer:
            return ("order", arg[2], tuple(d[0] for d in arg[3]))
        return ("A", address(value), tuple(value.shape), str(value.dtype))
    if arg[0] in "IW":
        return (arg[0], arg[1])
    return arg


class _Lowering:
    """Lowers each generalised op (see the module docstring) into :class:`Step` nodes."""

    def __init__(self, be, recording, ctx):
        self.be, self.ctx = be, ctx
        names = recording.buffers.names
        self.recording = recording
        self.order_buffer = names.index("order") if "order" in names else -1
        model_slopes = next((s for obj, s in recording.advance if obj is ctx.model), {})
        self.steps = model_slopes.get("steps")     # (start, per step) of the model's counter

    def lower(self, op, args, raw) -> tuple:
        """Append the op's node to the step; return its key."""
        checked = [self._checkable(op, values) for values in raw]
        fits = FAST_PATHS.get(op)
        if fits is None or not all(fits(self.be, *values) for values in checked):
            raise Unsupported(f"{op}: not lowered into a captured step, or its arguments are "
                              "outside the cupy backend's fast path")
        varying = [k for k, a in enumerate(args) if _varies(a)]
        # what changes per batch enters the key in the form the graph reads it (below), so an
        # epoch that starts at another step count keeps the same key
        key = [op] + [_describe(a, v, self.order_buffer) for k, (a, v) in
                      enumerate(zip(args, raw[0])) if k not in varying or op in _GATHERS]
        if op in _GATHERS:
            key.append(self._gather(op, args, raw[0], varying))
        elif op == "random_uniform" and varying:
            key.append(self._random(args, raw[0], varying))
        elif op == "output_delta" and varying:
            key.append(self._weighted(args, raw[0], varying))
        elif op == "adam_update" and varying:
            key.append(self._adam(args, raw[0], varying))
        elif varying:
            raise Unsupported(f"{op}: an argument changes from batch to batch in a way the "
                              "captured step cannot read from the device")
        else:
            method, values = getattr(self.be, op), raw[0]
            self.ctx.step.nodes.append(lambda: method(*values))
        return tuple(key)

    def _checkable(self, op, values):
        """The recorded arguments with the stand-in of the order (a host array) replaced by
        the device order's slice of the same shape, for the fast-path check."""
        if op in _GATHERS:
            values = list(values)
            values[1] = self.ctx.order[:values[1].shape[0]]
        elif op == "output_delta" and len(values) > 6 and values[6] is not None \
                and self.ctx.weights is not None:
            values = list(values)
            values[6] = self.ctx.weights[:values[6].shape[0]]
        return values

    def _weighted(self, args, values, varying):
        """output_delta with the batch's slice of the epoch's per-row factors: the captured
        kernel reads it at ``offset + stride * state[0]`` of the factors buffer."""
        names = self.recording.buffers.names
        index = args[6]
        if (varying != [6] or self.ctx.weights is None or "weights" not in names
                or index[0] != "A" or index[1] != names.index("weights")):
            raise Unsupported("output_delta: the weights are not a slice of the epoch's factors")
        c0, c1, c2 = index[2]
        a = values[0]
        be, ctx = self.be, self.ctx
        full = be.output_delta_launch(*values[:6]) + (
            ctx.weights, ctx.state, np.int64(c0 + c2 * a.shape[0]), np.int64(c1))
        ctx.step.nodes.append(lambda: be._launch("output_delta_at", a.dtype, a.shape[0], full,
                                                 per_row=True))
        return ("weights at", c1)

    def _gather(self, op, args, values, varying):
        index = args[1]
        if index[0] != "A" or index[1] != self.order_buffer or varying != [1]:
            raise Unsupported(f"{op}: the batch's indices are not a slice of the epoch's order")
        c0, c1, c2 = index[2]
        rows = values[1].shape[0]
        be, ctx = self.be, self.ctx
        data, out = values[0], values[2]
        if op == "gather_rows":
            name, launch = be.gather_launch(data, out, values[3], values[4])
            work, per_block = out.size, False
        else:
            name, launch = be.gather_augmented_launch(data, out, *values[3:])
            work, per_block = out.shape[0], True
        full = (launch[:1] + (ctx.order, ctx.state, np.int64(c0 + c2 * rows), np.int64(c1))
                + launch[1:])
        ctx.step.nodes.append(lambda: be._launch(name + "_at", out.dtype, work, full,
                                                 per_block=per_block))
        return ("at", c1)

    def _random(self, args, values, varying):
        if varying != [2] or self.steps is None or self.steps[1] != 1:
            raise Unsupported("random_uniform: the Philox counter does not follow the model's "
                              "step count")
        start = self.steps[0]
        out, key, counter, offset = values
        first, _ = philox_counter(counter, offset)
        # word k at batch j is c0 + c1 j, and the model's step count s = start + j
        a = [(c0 - c1 * start) % _WORD for c0, c1, _ in args[2][1]]
        b = [c1 % _WORD for _, c1, _ in args[2][1]]
        n = out.size
        launch = ((out, np.int64(n), np.int32(first), np.uint64(int(key[0]) % _WORD),
                   np.uint64(int(key[1]) % _WORD)) + tuple(np.uint64(w) for w in a + b)
                  + (np.uint64(int(offset) // 8 + 1), self.ctx.state))
        be = self.be
        self.ctx.step.nodes.append(lambda: be._launch("random_uniform_at", out.dtype,
                                                      (first + n + 7) // 8, launch))
        return ("philox", tuple(a), tuple(b))

    def _adam(self, args, values, varying):
        if varying != [8]:
            raise Unsupported("adam_update: an argument other than its step changes")
        params, grads, m, v, lr, beta1, beta2, eps, _, weight_decay, n_decay = values
        c0, c1, _ = args[8][1]
        ctx, be = self.ctx, self.be
        ctx.step.adam = (params.dtype, lr, beta1, beta2, c0, c1)
        table = ctx.adam_table(params.dtype)
        t = params.dtype.type
        launch = ((params, grads, m, v, table, ctx.state)
                  + adam_constants(params.dtype, beta1, beta2, eps)
                  + (t(weight_decay), np.int64(n_decay), np.int64(params.size)))
        ctx.step.nodes.append(lambda: be._launch("adam_update_at", params.dtype, params.size,
                                                 launch))
        return ("table", c1)


def lower(be, recording, ops, ctx) -> Step:
    """The :class:`Step` of the generalised ``ops`` of ``recording``
    (:func:`bpgpu.backends.recording.generalise`). ``ctx`` is the runner: it provides ``model``,
    ``order`` and ``state`` (its device buffers), ``adam_table(dtype)``, and receives the step
    being built as ``ctx.step``.

    Raises
    ------
    Unsupported
        An op or argument the captured step cannot hold.
    """
    ctx.step = Step(key=())
    lowering = _Lowering(be, recording, ctx)
    key = tuple(lowering.lower(op, args, raw) for op, args, raw in ops)
    ctx.step.key = key
    return ctx.step
