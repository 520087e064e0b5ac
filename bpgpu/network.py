"""The network: parameters, forward, backward and one update of a multi-layer perceptron,
written once.

All the model's math lives here, in terms of backend ops (:mod:`bpgpu.backends.base`); switching the
backend changes how each op runs and nothing else. Parameters live in ONE flat device buffer (all
weights first, then all biases) with per-layer views, so the optimizer updates everything in one
pass and weight decay covers a prefix. Gradients have the same layout. Workspaces
(:mod:`bpgpu.workspace`: activations, deltas, dropout masks) are allocated once per batch size and
reused: the steady-state training step allocates nothing.

:class:`Network` is the model layer's class: it knows nothing of epochs, files or command lines.
:class:`bpgpu.MLP` (:mod:`bpgpu.mlp`) is the network users hold, with ``fit`` and ``save``.

Shapes: ``W[l]`` is (n_in, n_out), ``b[l]`` is (n_out,), batches are rows. The loss is the mean over
the batch of the per-sample cost; gradients are of that mean.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np

from .activations import check_activation, check_output_loss
from .backends import get_backend
from .errors import ConfigError, DataError
from .init import init_params
from .rows import in_memory, read_rows
from .streams import dropout_counter, stream_key
from .weights import check_sample_weight, row_factors
from .workspace import Workspace

__all__ = ["Network", "DTYPES"]

#: The float types a model can compute in, by name (the CLI's --dtype choices).
DTYPES = {"float32": np.float32, "float64": np.float64}
#: Rows per forward pass at inference, at most, and elements of the widest layer's chunk, at
#: most (8 Mi: 32 MB in float32): together they bound an inference workspace's memory.
_EVAL_CHUNK, _EVAL_ELEMENTS = 8192, 1 << 23


class Network:
    """A fully connected back-propagation network.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first: ``[784, 100, 10]`` is one hidden layer of 100 units.
    activation : str or sequence of str
        Hidden activation(s): "sigmoid", "tanh", "relu" or "identity" (one per hidden layer, or one
        for all).
    output : str
        Output activation: one of the above or "softmax".
    loss : {"ce", "bce", "mse"}
        Cross-entropy (softmax output), binary cross-entropy (sigmoid output), or Nielsen's quadratic
        cost ½‖a − y‖² (any output); always the mean over the batch.
    init : {"normal", "large", "xavier", "he"}
        Weight initialisation (see :mod:`bpgpu.init`).
    dtype : {"float32", "float64"}
    backend : str or Backend
        "auto", "numpy", "numba", "cupy" or an instance.
    seed : int
        Seeds the one host generator (initial weights, validation splits, every epoch's
        permutation) and, through :func:`bpgpu.streams.stream_key`, the key of the device's
        dropout and augmentation streams.
    input_scale, input_shift : float
        Integer (uint8) inputs are mapped to ``x * input_scale + input_shift`` (default x/255);
        float inputs are used as they are.
    """

    def __init__(self, sizes, activation="sigmoid", output="softmax", loss="ce", init="normal",
                 dtype="float32", backend="auto", seed=0, input_scale=1.0 / 255, input_shift=0.0):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ConfigError(f"sizes must list at least two positive layer widths, got {sizes}")
        n_hidden = len(sizes) - 2
        acts = [activation] * n_hidden if isinstance(activation, str) else list(activation)
        if len(acts) != n_hidden:
            raise ConfigError(f"{len(acts)} hidden activations given for {n_hidden} hidden layers")
        self.activations = [check_activation(a) for a in acts] + [output]
        check_output_loss(output, loss)
        if output == "softmax" and sizes[-1] < 2:
            raise ConfigError(f"a softmax output needs at least 2 units (one per class), got "
                              f"{sizes[-1]}; a single output is sigmoid (bce) or identity (mse)")
        if not (np.isfinite(float(input_scale)) and np.isfinite(float(input_shift))):
            raise ConfigError(f"input_scale and input_shift must be finite numbers, got "
                              f"{input_scale} and {input_shift}")
        if str(dtype) not in DTYPES and np.dtype(dtype).name not in DTYPES:
            raise ConfigError(f"dtype must be float32 or float64, got {dtype}")
        self.dtype = np.dtype(DTYPES.get(str(dtype), dtype))
        self.sizes, self.output, self.loss_name, self.init = sizes, output, loss, init
        self.seed = seed
        self.input_scale, self.input_shift = float(input_scale), float(input_shift)
        self.backend = get_backend(backend)
        self.rng = np.random.default_rng(seed)
        #: Key of the counter-based (Philox) streams the device draws dropout masks and
        #: augmentations from (bpgpu.streams); a stream is named by (training step, purpose).
        self.stream_key = stream_key(seed)
        #: Training steps taken so far (names the random streams of the next step).
        self.steps = 0
        #: What the last ``fit`` left for one that continues it (bpgpu.train.TrainingState,
        #: host data), or None: kept by the training loop, read by ``continue_training``.
        self.training_state = None

        # flat layout: all weights, then all biases
        n_w = [i * o for i, o in zip(sizes[:-1], sizes[1:])]
        self.n_weights = sum(n_w)
        self.n_params = self.n_weights + sum(sizes[1:])
        #: The flat device buffer of every parameter (weights first, then biases); ``W``/``b``
        #: are views into it. Optimizers update it in place.
        self.params = self.backend.zeros((self.n_params,), self.dtype)
        #: The flat gradient buffer, same layout (``dW``/``db`` are views).
        self.grads = self.backend.zeros((self.n_params,), self.dtype)
        self.W, self.b = self._views(self.params)
        self.dW, self.db = self._views(self.grads)
        self._workspaces: dict = {}
        self.set_params(*init_params(self.rng, sizes, init))

    # ------------------------------------------------------------------ parameters
    def _views(self, flat):
        ws, bs, off = [], [], 0
        for i, o in zip(self.sizes[:-1], self.sizes[1:]):
            ws.append(flat[off:off + i * o].reshape(i, o))
            off += i * o
        for o in self.sizes[1:]:
            bs.append(flat[off:off + o])
            off += o
        return ws, bs

    @property
    def n_layers(self) -> int:
        """Number of weight layers (hidden layers + 1)."""
        return len(self.sizes) - 1

    def get_params(self):
        """Host copies of the parameters.

        Returns
        -------
        weights : list of ndarray, shapes (n_{l-1}, n_l)
        biases : list of ndarray, shapes (n_l,)
        """
        flat = self.backend.to_host(self.params)
        return self._views(flat)

    def set_params(self, weights, biases):
        """Replace the parameters with host arrays of the shapes :meth:`get_params` returns."""
        if len(weights) != self.n_layers or len(biases) != self.n_layers:
            raise ConfigError(f"expected {self.n_layers} weight and bias arrays, got "
                              f"{len(weights)} and {len(biases)}")
        flat = np.empty(self.n_params, self.dtype)
        hw, hb = self._views(flat)
        for l, (w, b) in enumerate(zip(weights, biases)):
            w, b = np.asarray(w), np.asarray(b)
            if w.shape != hw[l].shape or b.shape != hb[l].shape:
                raise ConfigError(f"layer {l}: expected W {hw[l].shape} and b {hb[l].shape}, "
                                  f"got {w.shape} and {b.shape}")
            hw[l][...] = w
            hb[l][...] = b
        if not np.all(np.isfinite(flat)):
            raise ConfigError("parameters contain NaN or inf")
        self.backend.upload(flat, self.params)

    def resident_bytes(self) -> int:
        """Bytes this model keeps on its device: parameters, gradients and cached workspaces."""
        total = self.params.nbytes + self.grads.nbytes
        return total + sum(ws.nbytes() for ws in self._workspaces.values())

    def config(self) -> dict:
        """The constructor arguments that rebuild this architecture (saved with the model)."""
        return {"sizes": list(self.sizes), "activation": self.activations[:-1],
                "output": self.output, "loss": self.loss_name, "init": self.init,
                "dtype": self.dtype.name, "seed": self.seed,
                "input_scale": self.input_scale, "input_shift": self.input_shift}

    # ------------------------------------------------------------------ the run's state
    def state(self, into=None) -> dict:
        """What carries from one training step to the next, besides the optimizer's buffers.

        Returns
        -------
        dict
            ``params`` (a device copy of the flat parameters), ``steps`` (training steps
            taken: they name the next step's random streams), ``rng`` (the host generator's
            state: it draws splits and permutations), ``stream_key`` and ``seed``. Given a
            previous state as ``into``, that dict is updated and returned, its parameter buffer
            reused: a snapshot without allocation.
        """
        state = {} if into is None else into
        buffer = state.get("params")
        if buffer is None:
            buffer = self.backend.empty(self.params.shape, self.dtype)
        state.update(params=self.backend.copy(self.params, buffer), steps=self.steps,
                     rng=copy.deepcopy(self.rng.bit_generator.state),
                     stream_key=tuple(self.stream_key), seed=self.seed)
        return state

    def load_state(self, state: dict) -> None:
        """Go to a :meth:`state` (its ``params`` a device array of this backend, a host array of
        shape (n_params,), or absent: parameters unchanged)."""
        params = state.get("params")
        if params is not None:
            if isinstance(params, np.ndarray) and self.backend.xp is not np:
                self.backend.upload(params.astype(self.dtype, copy=False), self.params)
            else:
                self.backend.copy(params, self.params)
        self.steps = int(state["steps"])
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])
        self.stream_key = tuple(int(k) for k in state["stream_key"])
        self.seed = state.get("seed", self.seed)

    def counters(self) -> dict:
        """The integers a training step advances: ``{"steps": n}``."""
        return {"steps": self.steps}

    def set_counters(self, counters: dict) -> None:
        """Set what :meth:`counters` returned (after a compiled epoch: advanced by its steps)."""
        if "steps" in counters:
            self.steps = int(counters["steps"])

    @contextlib.contextmanager
    def redirected(self, backend):
        """Within the block every op this network issues goes to ``backend`` (the compiled
        epoch's recording stand-in), and afterwards the backend and :meth:`counters` are what
        they were."""
        saved, counters = self.backend, self.counters()
        self.backend = backend
        try:
            yield self
        finally:
            self.backend = saved
            self.set_counters(counters)

    @contextlib.contextmanager
    def gradients_in(self, buffer):
        """Within the block the flat gradient buffer is ``buffer[:n_params]`` (a device array of
        the model's dtype: a data-parallel run's reduction buffer, which has room for more);
        afterwards the last gradient is copied back to the model's own buffer."""
        own = (self.grads, self.dW, self.db)
        self.grads = buffer[:self.n_params]
        self.dW, self.db = self._views(self.grads)
        try:
            yield self.grads
        finally:
            self.backend.copy(self.grads, own[0])
            self.grads, self.dW, self.db = own

    def __repr__(self):
        arch = "-".join(map(str, self.sizes))
        return (f"{type(self).__name__}({arch}, {'/'.join(self.activations)}, loss={self.loss_name}, "
                f"{self.dtype.name}, backend={self.backend.name})")

    # ------------------------------------------------------------------ data preparation
    def prepare_inputs(self, X):
        """Validate ``X`` and move it to the device (uint8 stays uint8; anything else -> dtype).

        Parameters
        ----------
        X : array-like, shape (N, n_0) or (N, ...) with prod(...) == n_0

        Returns
        -------
        device array, shape (N, n_0)
        """
        X = np.asarray(X)
        if X.ndim >= 2 and X.ndim != 2:
            X = X.reshape(X.shape[0], -1)
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise DataError(f"inputs must have shape (N, {self.sizes[0]}), got {X.shape}")
        if X.shape[0] == 0:
            raise DataError("inputs are empty (0 samples)")
        if X.dtype == np.uint8:
            return self.backend.asarray(X)
        if X.dtype.kind not in "fiub":
            raise DataError(f"inputs must be numeric, got dtype {X.dtype}")
        X = X.astype(self.dtype, copy=False)
        if not np.all(np.isfinite(X)):
            raise DataError("inputs contain NaN or inf")
        return self.backend.asarray(X)

    def targets_from(self, y, n_rows):
        """Turn labels or targets into a host float array of shape (N, n_out).

        Integer labels become one-hot rows (or a 0/1 column when there is one output); float
        targets are used as they are. Raises DataError for a length mismatch, labels out of range,
        a wrong width, or NaN.
        """
        y = np.asarray(y)
        n_out = self.sizes[-1]
        if y.shape[:1] != (n_rows,):
            raise DataError(f"got {n_rows} inputs but targets of shape {y.shape}")
        if y.dtype == bool:
            y = y.astype(np.int64)
        if y.ndim == 1 and y.dtype.kind in "iu":
            hi = 1 if n_out == 1 else n_out - 1
            if y.size and (y.min() < 0 or y.max() > hi):
                raise DataError(f"labels must be integers in [0, {hi}] for {n_out} outputs, "
                                f"found values in [{y.min()}, {y.max()}]")
            if n_out == 1:
                return y.astype(self.dtype).reshape(-1, 1)
            onehot = np.zeros((n_rows, n_out), self.dtype)
            onehot[np.arange(n_rows), y] = 1
            return onehot
        if y.dtype.kind not in "fiu":
            raise DataError(f"targets must be numeric labels or values, got dtype {y.dtype}")
        if y.ndim == 1 and n_out == 1:
            y = y.reshape(-1, 1)
        if y.ndim != 2 or y.shape[1] != n_out:
            raise DataError(f"targets must be integer labels of shape ({n_rows},) or values of "
                            f"shape ({n_rows}, {n_out}), got {y.shape} of {y.dtype}")
        y = y.astype(self.dtype)
        if not np.all(np.isfinite(y)):
            raise DataError("targets contain NaN or inf")
        return y

    # ------------------------------------------------------------------ the training step
    def workspace(self, rows, dropout=0.0, augment=None):
        """The (cached) workspace for batches of up to ``rows`` samples, training with inverted
        dropout at rate ``dropout`` on the hidden layers (0 for none, and for inference), and
        training batches warped by ``augment`` (an :class:`bpgpu.augment.Augment` resolved for
        this model's inputs, or None)."""
        key = (rows, float(dropout), augment)
        ws = self._workspaces.get(key)
        if ws is None:
            if len(self._workspaces) >= 6:  # a bound, not a cache policy: evict the oldest
                self._workspaces.pop(next(iter(self._workspaces)))
            ws = self._workspaces[key] = Workspace(self.backend, self.sizes, rows, self.dtype,
                                                   dropout, augment)
        return ws

    def train_step(self, ws, X_dev, T_dev, idx, optimizer=None, *, metrics=None,
                   count_correct=False, gradient_hook=None, row_offset=0, grad_scale=1.0,
                   layer_hook=None, weights=None):
        """One training step on rows ``idx`` of device-resident data.

        This is the only place the step's sequence is written -- gather (warped by the
        workspace's augmentation, if any), forward (with the workspace's dropout), output delta,
        backward, update -- and everything that trains
        (:func:`bpgpu.train.fit`, :meth:`step`, :meth:`gradients`, the benchmarks) calls it.

        Parameters
        ----------
        ws : workspace
            From :meth:`workspace` (or a :meth:`view` of one) with exactly ``len(idx)`` rows.
        X_dev : device array, shape (N, n_0), uint8 or the model's dtype
        T_dev : device array, shape (N, n_out), the model's dtype
            Targets (one-hot rows for classification), from :meth:`targets_from`.
        idx : device int64 array, shape (B,)
            The rows of this batch.
        optimizer : optimizer from :func:`bpgpu.optim.make_optimizer`, optional
            Applied after the backward pass (or inside the gradient GEMMs when its
            :meth:`~bpgpu.optim.SGD.fused_sgd` says so). None: compute the gradients only.
        metrics : device float64 array, shape (2,), optional
            ``[loss sum, correct count]`` accumulators: the batch's summed loss is added to
            ``metrics[0]`` (and with ``count_correct`` its correct predictions to ``metrics[1]``)
            on the device, in the same passes.
        count_correct : bool
        gradient_hook : callable(flat_grads), optional
            Called with the flat gradient buffer between the backward pass and the update (a
            data-parallel run sums it across processes there). It needs the gradients, so the
            update is never fused into the GEMMs then.
        row_offset : int
            Row of this batch within the global batch of a data-parallel step: names the rows of
            the dropout and augmentation streams this process draws (0 for a single process).
        grad_scale : float
            Factor on the gradients, applied inside the gradient GEMMs (BLAS's alpha): the local
            output delta divides by this step's ``len(idx)`` rows, so a data-parallel process
            holding ``b`` of the ``B`` rows of a global batch passes ``b / B`` and the sum over
            processes is the gradient of the mean over the global batch.
        layer_hook : callable(layer), optional
            Passed to :meth:`backward`: called as soon as each layer's gradient is written (a
            data-parallel run starts that layer's non-blocking reduction there).
        weights : device array, shape (B,), the model's dtype, optional
            Per-row factors of the output delta and the loss: ``s_i * B / sum(s)`` for sample
            weights ``s`` over the (global) batch of ``B`` rows, so the step descends the
            weighted mean loss ``sum(s_i loss_i) / sum(s)`` (:func:`row_factors`).

        A step with no rows (``ws.rows == 0``: a data-parallel process with no share of a small
        global batch) writes zero gradients, then hooks and updates like any other.
        """
        fused = None
        if optimizer is not None and gradient_hook is None:
            fused = optimizer.fused_sgd()
        if ws.rows == 0:
            self.grads.fill(0)
        else:
            self._forward_backward(ws, X_dev, T_dev, idx, metrics, count_correct, fused,
                                   row_offset, grad_scale, layer_hook, weights)
        if optimizer is not None:
            if gradient_hook is not None:
                gradient_hook(self.grads)
            if fused is None:
                optimizer.update(self.params, self.grads)
            self.steps += 1

    def _forward_backward(self, ws, X_dev, T_dev, idx, metrics, count_correct, fused, row_offset,
                          grad_scale, layer_hook, weights=None):
        """The part of :meth:`train_step` that touches the batch's rows: gather, forward,
        metrics, output delta and backward."""
        be = self.backend
        if ws.augment is None:
            be.gather_rows(X_dev, idx, ws.a[0], self.input_scale, self.input_shift)
        else:
            ws.augment.gather(be, ws, X_dev, idx, self.stream_key, self.steps, row_offset,
                              self.input_scale, self.input_shift)
        be.gather_rows(T_dev, idx, ws.y)
        self.forward(ws, training=True, row_offset=row_offset)
        if count_correct:
            be.count_correct(ws.a[-1], ws.y, metrics[1:2])
        self.backward(ws, loss_acc=None if metrics is None else metrics[0:1], sgd=fused,
                      grad_scale=grad_scale, layer_hook=layer_hook, weights=weights)

    def forward(self, ws, training=False, row_offset=0):
        """Forward pass from ``ws.a[0]``; leaves every layer's output in ``ws.a``.

        With ``training`` and a dropout workspace, hidden outputs are dropped with masks drawn
        on the device from the stream of (this step, layer); inference never drops.
        """
        be = self.backend
        L = self.n_layers
        drop = training and ws.dropout > 0
        src = ws.inp if drop else ws.a
        for l in range(1, L + 1):
            be.gemm(src[l - 1], self.W[l - 1], out=ws.a[l])
            be.bias_activation(ws.a[l], self.b[l - 1], self.activations[l - 1])
            if drop and l < L:
                be.random_uniform(ws.uniform[l], self.stream_key, dropout_counter(self.steps, l),
                                  row_offset * self.sizes[l])
                be.dropout_forward(ws.a[l], ws.uniform[l], ws.dropout, ws.mask[l], out=ws.inp[l])
        return ws.a[L]

    def backward(self, ws, loss_acc=None, sgd=None, grad_scale=1.0, layer_hook=None,
                 weights=None):
        """Backward pass after a training :meth:`forward`: fills the flat gradient buffer.

        Parameters
        ----------
        ws : workspace
            ``ws.y`` holds the targets; its dropout masks (if any) are applied to the deltas.
        loss_acc : device float64 array, shape (1,), optional
            The batch's summed loss is added to it in the same pass.
        sgd : (lr, weight_decay), optional
            Apply plain SGD to the parameters inside the gradient GEMMs instead of writing the
            gradients: ``W = (1 - lr * wd) * W - lr * inp.T @ d`` and ``b -= lr * sum(d)``, one
            BLAS call per parameter array (what :meth:`~bpgpu.optim.SGD.fused_sgd` returns where
            the backend fuses). The gradient buffer is then left untouched. Each layer's deltas
            for the layer below are computed first, with the weights not yet updated.
        grad_scale : float
            Factor on every gradient (with ``sgd``: on the gradient inside the update), folded
            into the GEMMs' alpha.
        layer_hook : callable(layer), optional
            Called with the weight layer's index ``l`` (0-based) as soon as ``dW[l]`` and
            ``db[l]`` are written, last layer first; not called with ``sgd`` (no gradients).
        weights : device array, shape (B,), optional
            Per-row factors of the output delta (see :meth:`train_step`).
        """
        be = self.backend
        L = self.n_layers
        drop = ws.dropout > 0
        src = ws.inp if drop else ws.a
        if sgd is None:                    # gradients: dW = inp.T @ d, db = column sums of d
            w_out, b_out, alpha, w_beta, b_beta = self.dW, self.db, grad_scale, 0.0, 0.0
        else:                              # the update itself, through BLAS's alpha and beta
            lr, weight_decay = sgd
            w_out, b_out, alpha, w_beta, b_beta = (self.W, self.b, -lr * grad_scale,
                                                   1.0 - lr * weight_decay, 1.0)
            layer_hook = None
        be.output_delta(ws.a[L], ws.y, ws.d[L], self.output, self.loss_name, loss_acc, weights)
        for l in range(L, 0, -1):
            if l > 1:
                be.gemm(ws.d[l], self.W[l - 1], out=ws.d[l - 1], trans_b=True)
            be.gemm(src[l - 1], ws.d[l], out=w_out[l - 1], trans_a=True, alpha=alpha, beta=w_beta)
            be.column_sums(ws.d[l], out=b_out[l - 1], alpha=alpha, beta=b_beta)
            if layer_hook is not None:
                layer_hook(l - 1)
            if l > 1:
                if drop:
                    be.dropout_backward(ws.d[l - 1], ws.mask[l - 1])
                be.activation_backward(ws.d[l - 1], ws.a[l - 1], self.activations[l - 2])

    def _set_batch(self, ws, X_dev, T_dev, start, stop):
        """Copy contiguous rows ``start:stop`` of the device data into the workspace."""
        be = self.backend
        if X_dev.dtype == np.uint8:
            be.gather_rows(X_dev, be.asarray(np.arange(start, stop)), ws.a[0],
                           self.input_scale, self.input_shift)
        else:
            be.copy(X_dev[start:stop], ws.a[0])
        if T_dev is not None:
            be.copy(T_dev[start:stop], ws.y)

    def _eval_rows(self) -> int:
        """Rows of an inference chunk: :data:`_EVAL_CHUNK`, fewer for very wide layers."""
        return max(1, min(_EVAL_CHUNK, _EVAL_ELEMENTS // max(self.sizes)))

    def _chunks(self, X_dev, T_dev=None):
        """Yield workspaces holding successive chunks of ``X_dev`` after a forward pass."""
        n = X_dev.shape[0]
        full = self.workspace(min(n, self._eval_rows()))
        for start in range(0, n, full.rows):
            stop = min(start + full.rows, n)
            ws = full.view(stop - start)
            self._set_batch(ws, X_dev, T_dev, start, stop)
            self.forward(ws)
            yield start, stop, ws

    def _stream_chunks(self, X, y=None):
        """:meth:`_chunks` of inputs that are not in memory (bpgpu.rows): each chunk of rows
        read, moved to the device and, with labels or targets ``y``, its targets built."""
        n = X.shape[0]
        if n == 0:
            raise DataError("inputs are empty (0 samples)")
        full = self.workspace(min(n, self._eval_rows()))
        for start in range(0, n, full.rows):
            stop = min(start + full.rows, n)
            ws = full.view(stop - start)
            X_dev = self.prepare_inputs(read_rows(X, np.arange(start, stop)))
            T_dev = None if y is None else self.backend.asarray(
                self.targets_from(y[start:stop], stop - start))
            self._set_batch(ws, X_dev, T_dev, 0, stop - start)
            self.forward(ws)
            yield start, stop, ws

    # ------------------------------------------------------------------ public inference API
    def predict_proba(self, X):
        """Output-layer activations for ``X``, shape (N, n_out), host numpy. ``X`` may be an
        array-like that is not in memory (a memmap, an h5py or zarr dataset): read in chunks."""
        if not in_memory(X) and hasattr(X, "shape") and hasattr(X, "dtype"):
            chunks, n = self._stream_chunks(X), X.shape[0]
        else:
            X_dev = self.prepare_inputs(X)
            chunks, n = self._chunks(X_dev), X_dev.shape[0]
        out = np.empty((n, self.sizes[-1]), self.dtype)
        for start, stop, ws in chunks:
            out[start:stop] = self.backend.to_host(ws.a[-1])
        return out

    @property
    def multilabel(self) -> bool:
        """True for independent sigmoid outputs with binary cross-entropy (several of them): each
        output is its own yes/no label, predicted by a threshold."""
        return self.output == "sigmoid" and self.loss_name == "bce" and self.sizes[-1] > 1

    def predict(self, X, threshold=0.5):
        """Predictions for ``X``: class labels, shape (N,) -- the argmax of the outputs, or
        ``output >= threshold`` with one output -- or, for a :attr:`multilabel` network, the
        0/1 indicator of every label, shape (N, n_out), ``output >= threshold``."""
        p = self.predict_proba(X)
        if self.multilabel:
            return (p >= threshold).astype(np.int64)
        if p.shape[1] == 1:
            return (p[:, 0] >= threshold).astype(np.int64)
        return p.argmax(axis=1)

    def metrics_on_device(self, X_dev, T_dev, W_dev=None):
        """Mean loss and accuracy over device-resident data, read from the device once.

        With ``W_dev`` (device array (N,) of sample weights) the loss is the weighted mean
        ``sum(w loss) / sum(w)``; accuracy always counts rows (for a :attr:`multilabel` network
        the share of rows whose every label is right, computed from the outputs on the host).
        """
        return self._metrics(self._chunks(X_dev, T_dev), X_dev.shape[0], W_dev)

    def metrics(self, X, y, W_dev=None):
        """:meth:`metrics_on_device` of host data: in memory, or an array-like read in chunks
        (labels or targets ``y`` in memory)."""
        if in_memory(X) or not (hasattr(X, "shape") and hasattr(X, "dtype")):
            X_dev = self.prepare_inputs(X)
            T_dev = self.backend.asarray(self.targets_from(y, X_dev.shape[0]))
            return self.metrics_on_device(X_dev, T_dev, W_dev)
        return self._metrics(self._stream_chunks(X, y), X.shape[0], W_dev)

    def _metrics(self, chunks, n, W_dev):
        be = self.backend
        acc = be.zeros((2,), np.float64)
        correct_rows = 0
        for start, stop, ws in chunks:
            w = None if W_dev is None else W_dev[start:stop]
            be.loss_sum(ws.a[-1], ws.y, self.loss_name, acc[0:1], w)
            if self.multilabel:
                hit = (be.to_host(ws.a[-1]) >= 0.5) == (be.to_host(ws.y) >= 0.5)
                correct_rows += int(hit.all(axis=1).sum())
            else:
                be.count_correct(ws.a[-1], ws.y, acc[1:2])
        loss_sum, correct = be.to_host(acc)
        total = n if W_dev is None else float(be.to_host(W_dev).sum())
        return float(loss_sum) / total, (correct_rows if self.multilabel else float(correct)) / n

    def evaluate(self, X, y, sample_weight=None):
        """Mean loss and accuracy on ``(X, y)``.

        Returns
        -------
        dict
            "loss" (the mean, weighted by ``sample_weight`` when given) and "accuracy" (argmax,
            or a 0.5 threshold with one output; rows count once each). A :attr:`multilabel`
            network reports "accuracy" as the subset accuracy (every label of a row right) and
            "hamming_loss" (the share of wrong labels).
        """
        W_dev = None
        if sample_weight is not None:
            w = check_sample_weight(sample_weight, len(y))
            W_dev = self.backend.asarray(w.astype(self.dtype))
        loss, accuracy = self.metrics(X, y, W_dev)
        result = {"loss": loss, "accuracy": accuracy}
        if self.multilabel:
            T = self.targets_from(y, len(y))
            wrong = (self.predict_proba(X) >= 0.5) != (T >= 0.5)
            result["hamming_loss"] = float(wrong.mean())
        return result

    def loss(self, X, Y) -> float:
        """Mean loss over the samples of ``(X, Y)`` (float)."""
        return self.evaluate(X, Y)["loss"]

    def _whole_batch(self, X, Y):
        """``(workspace, X_dev, T_dev, idx)`` for one step on all of ``(X, Y)``."""
        X_dev = self.prepare_inputs(X)
        T_dev = self.backend.asarray(self.targets_from(Y, X_dev.shape[0]))
        idx = self.backend.asarray(np.arange(X_dev.shape[0]))
        return self.workspace(X_dev.shape[0]), X_dev, T_dev, idx

    def gradients(self, X, Y, sample_weight=None):
        """Gradient of the mean loss over the batch ``(X, Y)`` (the weighted mean
        ``sum(s loss) / sum(s)`` with ``sample_weight``).

        Returns
        -------
        dW : list of ndarray, shapes (n_{l-1}, n_l), host copies
        db : list of ndarray, shapes (n_l,)
        """
        ws, X_dev, T_dev, idx = self._whole_batch(X, Y)
        factors = None
        if sample_weight is not None:
            s = check_sample_weight(sample_weight, X_dev.shape[0])
            factors = self.backend.asarray(
                row_factors(s, np.arange(s.shape[0]), s.shape[0], self.dtype))
        self.train_step(ws, X_dev, T_dev, idx, weights=factors)
        return self._views(self.backend.to_host(self.grads))

    def step(self, X, Y, lr=0.1):
        """One plain SGD step on the batch ``(X, Y)``: ``W -= lr * dL/dW`` (and biases)."""
        from .optim import make_optimizer
        opt = make_optimizer("sgd", self.backend, self.n_params, self.dtype, lr=lr)
        self.train_step(*self._whole_batch(X, Y), opt)
