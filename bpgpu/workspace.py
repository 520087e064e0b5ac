"""The device buffers of one training or inference batch, allocated once per batch size.

A :class:`Workspace` holds every per-row array a step writes -- layer outputs, deltas, targets,
the inputs of the next layer under dropout, the dropout masks and their uniforms, and the
augmentation's buffers -- so the steady-state step allocates nothing. Its row buffers are named
once, in :data:`ROW_BUFFERS`: :meth:`Workspace.view` (the remainder batch), :meth:`nbytes` and
:meth:`named_arrays` (what the compiled epoch's recorder locates arrays in) all walk that list.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Workspace", "ROW_BUFFERS"]

#: The workspace's row buffers (each an array, a list or a dict of arrays with batch rows first):
#: ``a[l]`` layer l's output (``a[0]`` the input batch), ``d[l]`` the delta of layer l (``d[0]``
#: is None), ``y`` the targets, ``inp[l]`` what feeds layer l+1 in training (``a[l]`` itself, or
#: its dropped-out copy), ``mask``/``uniform`` the dropout masks and their uniform numbers per
#: hidden layer, ``aug`` the augmentation's buffers (also attributes: ``aug_uniform``, ...).
ROW_BUFFERS = ("a", "d", "y", "inp", "mask", "uniform", "aug")


def _rows(value, n):
    """``value`` (an array, None, or a list/dict of them) cut to its first ``n`` rows."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_rows(v, n) for v in value]
    if isinstance(value, dict):
        return {k: _rows(v, n) for k, v in value.items()}
    return value[:n]


def _arrays(prefix, value):
    """``(path, array)`` for every array in ``value`` (an array, None, a list or a dict)."""
    if value is None:
        return []
    if isinstance(value, (list, dict)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return [found for key, item in items for found in _arrays(f"{prefix}.{key}", item)]
    return [(prefix, value)]


class Workspace:
    """Device buffers for a training or inference batch of up to ``rows`` samples.

    Parameters
    ----------
    backend : Backend
    sizes : list of int
        The network's layer widths.
    rows : int
    dtype : numpy dtype
    dropout : float
        Inverted-dropout rate of the hidden layers in training steps run on this workspace (0:
        none; inference never drops). Its masks and uniforms exist only then.
    augment : bpgpu.augment.Augment or None
        Warps the training batches gathered into it (resolved for the model's inputs); its
        buffers exist only then.
    """

    def __init__(self, backend, sizes, rows, dtype, dropout=0.0, augment=None):
        self.rows = rows
        self.dropout = float(dropout)
        self.augment = augment
        self.a = [backend.empty((rows, n), dtype) for n in sizes]
        self.d = [None] + [backend.empty((rows, n), dtype) for n in sizes[1:]]
        self.y = backend.empty((rows, sizes[-1]), dtype)
        self.inp = list(self.a)
        self.mask, self.uniform = {}, {}
        if self.dropout:
            for l in range(1, len(sizes) - 1):  # hidden layers only
                shape = (rows, sizes[l])
                self.inp[l] = backend.empty(shape, dtype)
                self.mask[l] = backend.empty(shape, dtype)
                self.uniform[l] = backend.empty(shape, np.float32)
        self.aug = augment.buffers(backend, rows, dtype) if augment is not None else {}
        self._name_aug()

    def _name_aug(self):
        for name, buf in self.aug.items():
            setattr(self, name, buf)

    def view(self, n):
        """A workspace over the first ``n`` rows (row slices of C arrays stay contiguous)."""
        if n == self.rows:
            return self
        v = object.__new__(Workspace)
        v.rows, v.dropout, v.augment = n, self.dropout, self.augment
        for name in ROW_BUFFERS:
            setattr(v, name, _rows(getattr(self, name), n))
        v._name_aug()
        return v

    def named_arrays(self):
        """``(name, array)`` of every row buffer, ``inp`` entries that are ``a``'s own included
        (callers that count memory skip repeats by identity)."""
        return [found for name in ROW_BUFFERS for found in _arrays(name, getattr(self, name))]

    def nbytes(self) -> int:
        """Bytes of the distinct buffers this workspace holds."""
        seen, total = set(), 0
        for _, arr in self.named_arrays():
            if id(arr) not in seen:
                seen.add(id(arr))
                total += arr.nbytes
        return total
