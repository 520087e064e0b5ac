"""The reference implementation of every op a training step needs, written with ``self.xp``.

A backend is a set of ops over device arrays. This class implements each one with array-API calls
on ``self.xp`` (numpy or cupy), always writing into preallocated outputs, so it is both the
reference other backends are checked against and a reasonably fast backend in its own right.
Subclasses override an op only where they have something faster (a fused kernel) and call
``super()`` for the dtypes or shapes their fast path does not cover.

The model (:mod:`bpgpu.mlp`) is written once in terms of these ops; a backend never contains model
math. Conventions: batches are rows, arrays are C-contiguous, ``delta`` arguments are modified in
place, and every op that reduces over a batch writes into a caller-owned accumulator so a device
backend never has to synchronise with the host inside a step.
"""

from __future__ import annotations

import contextlib

import numpy as np

__all__ = ["Backend", "OPS"]

#: Names of the ops every backend provides, with the base class's signature (checked by a test).
OPS = (
    "empty", "zeros", "asarray", "to_host", "upload", "copy", "synchronize",
    "staging_buffer", "upload_async", "mark", "wait_host",
    "gemm", "bias_activation", "activation_backward", "output_delta", "column_sums",
    "loss_sum", "count_correct", "all_finite", "gather_rows",
    "random_uniform", "dropout_forward", "dropout_backward",
    "gather_augmented", "elastic_field",
    "sgd_update", "momentum_update", "adam_update",
)

# exp(-z) overflows past these; clipping -z there changes sigmoid by less than the dtype's tiny.
EXP_LIMIT = {np.dtype(np.float32): np.float32(88.0), np.dtype(np.float64): np.float64(708.0)}
# probabilities are clipped to [tiny, 1 - epsneg] before a log: never log(0). Shared by every
# backend's loss, so all of them clip identically.
LOG_CLIP = {np.dtype(t): (t(np.finfo(t).tiny), t(1 - np.finfo(t).epsneg))
            for t in (np.float32, np.float64)}


class Backend:
    """Reference backend: every op in terms of ``self.xp``.

    Attributes
    ----------
    name : str
        Registry name (``"numpy"``, ``"numba"``, ``"cupy"``).
    xp : module
        The array module the ops are written with.
    """

    name = "base"
    xp = np

    def __init__(self):
        self._scratch_cache: dict = {}

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}>"

    @contextlib.contextmanager
    def compute_threads(self, batch_size: int):
        """Context for a run of steps of ``batch_size`` rows (thread settings); default: nothing."""
        yield None

    def thread_plan(self, batch_size: int) -> dict:
        """The threads :meth:`compute_threads` uses at ``batch_size``, for records: e.g.
        ``{"blas_threads": 2, "kernel_threads": 1}``; empty where the backend sets none."""
        return {}

    def describe(self) -> str:
        """One line saying what this backend runs on."""
        return f"{self.name} ({self.xp.__name__} {self.xp.__version__})"

    def load_kernels(self, dtypes=("float32", "float64")) -> None:
        """Compile (or load from a cache) the kernels this backend can prepare without a model,
        for ``dtypes``. The reference has none. :func:`bpgpu.warmup.warmup` calls it, then
        trains tiny models so that everything a training step runs is compiled."""

    def compile_stats(self) -> dict:
        """What this backend has compiled so far: ``kernels`` (compiled objects), ``cache_hits``
        and ``compiled`` (loaded from a cache vs compiled now); a backend that compiles epochs
        adds ``compiled_epochs``. The reference compiles nothing."""
        return {"kernels": 0, "cache_hits": 0, "compiled": 0}

    def compiles_epochs(self) -> bool:
        """Whether :meth:`compiled_epoch` may return a runner here at all. The reference: no."""
        return False

    @contextlib.contextmanager
    def compiled_epoch_mode(self, mode: str):
        """Within the block :meth:`compiled_epoch` follows ``mode``: "0" never, "1" always,
        "auto" by the backend's own rule. The reference has no compiled epochs."""
        yield

    # ------------------------------------------------------------------ memory and transfer
    def empty(self, shape, dtype):
        """Uninitialised device array of ``shape`` and ``dtype``."""
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        """Zero-filled device array of ``shape`` and ``dtype``."""
        return self.xp.zeros(shape, dtype=dtype)

    def asarray(self, host, dtype=None):
        """Copy a host array to the device (C-contiguous, optionally cast to ``dtype``)."""
        return self.xp.ascontiguousarray(self.xp.asarray(host, dtype=dtype))

    def to_host(self, arr) -> np.ndarray:
        """Return a host numpy copy of a device array (a numpy array is copied too)."""
        return np.array(arr, copy=True)

    def upload(self, host, out):
        """Copy the host array ``host`` into the existing device array ``out`` (same shape)."""
        out[...] = self.xp.asarray(host)
        return out

    # -------------------------------------------------- staging batches read from disk
    # (bpgpu.feeder): a host buffer a batch is read into, its upload queued, and events
    # that say when the device is done with a buffer. On the CPU the upload is a copy and
    # there is nothing to wait for; cupy pins the buffers and copies on a second stream.
    def staging_buffer(self, shape, dtype) -> np.ndarray:
        """A host array of ``shape`` and ``dtype`` that :meth:`upload_async` copies from."""
        return np.empty(shape, dtype)

    def upload_async(self, host, out, after=None):
        """Queue ``out[...] = host`` (``host`` from :meth:`staging_buffer`, same shape and
        dtype) once the device has passed ``after`` (an event of :meth:`mark`, or None); work
        queued afterwards sees the copy. Returns an event for :meth:`wait_host`: ``host`` may be
        written again once it has passed."""
        self.upload(host, out)
        return None

    def mark(self):
        """An event marking the work queued so far (None where work runs as it is queued)."""
        return None

    def wait_host(self, event) -> None:
        """Block the calling thread until the device has passed ``event`` (None: at once)."""

    def copy(self, src, out):
        """``out[:] = src`` between two device arrays of the same shape and dtype."""
        self.xp.copyto(out, src)
        return out

    def synchronize(self) -> None:
        """Block until all queued device work is done (no-op on the CPU)."""

    def _scratch(self, key, shape, dtype):
        """A cached work buffer, allocated once per (key, shape, dtype): no steady-state allocation.
        (Called in every step: the key is built from the arguments as given, no conversions.)"""
        k = (key, shape, dtype)
        buf = self._scratch_cache.get(k)
        if buf is None:
            buf = self._scratch_cache[k] = self.empty(shape, dtype)
        return buf

    def _ones(self, n, dtype):
        """A cached vector of ``n`` ones: row and column sums become one GEMV (far cheaper than an
        axis reduction at these sizes, on the CPU and on cuBLAS alike)."""
        buf = self._scratch_cache.get(("ones", n, dtype))
        if buf is None:
            buf = self._scratch_cache[("ones", n, dtype)] = self.xp.ones(n, dtype)
        return buf

    def _row_max(self, z, out):
        """``out[:, 0] = z.max(axis=1)``; ``out`` of shape (B, 1)."""
        return self.xp.max(z, axis=1, keepdims=True, out=out)

    def _row_sum(self, z, out):
        """``out[:, 0] = z.sum(axis=1)`` as a GEMV; ``out`` of shape (B, 1)."""
        return self.xp.matmul(z, self._ones(z.shape[1], z.dtype), out=out[:, 0])

    # ------------------------------------------------------------------ dense algebra
    def gemm(self, a, b, out, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0,
             beta: float = 0.0):
        """``out[:] = alpha * op(a) @ op(b) + beta * out`` where op transposes when asked.

        Parameters
        ----------
        a : array, shape (m, k), or (k, m) with ``trans_a``
        b : array, shape (k, n), or (n, k) with ``trans_b``
        out : array, shape (m, n)
            Written in place and returned. With ``beta == 0`` its old contents are ignored.
        alpha, beta : float
            BLAS's scalars: the model's fused SGD step passes ``alpha = -lr`` and
            ``beta = 1 - lr * weight_decay`` with ``out`` the weights (see :meth:`fuses_sgd`).
        """
        xp = self.xp
        op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
        if beta == 0.0:
            xp.matmul(op_a, op_b, out=out)
            if alpha != 1.0:
                out *= alpha
            return out
        product = self._scratch("gemm", out.shape, out.dtype)
        xp.matmul(op_a, op_b, out=product)
        return self._scale_add(out, product, alpha, beta)

    def column_sums(self, d, out, alpha: float = 1.0, beta: float = 0.0):
        """``out[:] = alpha * d.sum(axis=0) + beta * out``; ``d`` of shape (B, n), ``out`` (n,)."""
        ones = self._ones(d.shape[0], d.dtype)
        if beta == 0.0:
            self.xp.matmul(ones, d, out=out)
            if alpha != 1.0:
                out *= alpha
            return out
        sums = self._scratch("column_sums", out.shape, out.dtype)
        self.xp.matmul(ones, d, out=sums)
        return self._scale_add(out, sums, alpha, beta)

    def _scale_add(self, out, x, alpha, beta):
        """``out[:] = alpha * x + beta * out`` (``x`` is scratch and may be overwritten)."""
        if alpha != 1.0:
            x *= alpha
        if beta != 1.0:
            out *= beta
        out += x
        return out

    def compiled_epoch(self, model, ws, X_dev, T_dev, optimizer, **step_options):
        """A runner of whole training epochs in one compiled call, or None: the default, and
        wherever the backend has none for this configuration.

        The runner, called as ``runner(order, should_stop=None, progress=None)`` with the
        epoch's order (device int64 array, shape (N,)), does what
        ``model.train_step(ws.view(rows), X_dev, T_dev, order[start:start + rows], optimizer,
        **step_options)`` does for every batch of the epoch (the last one holding the
        remainder), with the same results -- a ``weights`` step option is the epoch's per-row
        factors (device array (N,), in the order's positions, rewritten in place between epochs)
        and step ``j`` takes ``weights[start:start + rows]`` --, and returns True -- or returns False where it cannot
        run that epoch, and the caller runs the steps itself. ``should_stop()`` is asked every so
        often (a fraction of a second) during the epoch; when it says True the runner abandons
        the epoch part way and returns None (the caller goes back to its last completed epoch).
        ``progress(k)`` is told every ``k`` batches run. A backend derives the runner from the
        ops ``train_step`` issues, never from a second copy of the model's math.
        """
        return None

    def fuses_sgd(self, dtype) -> bool:
        """Whether :meth:`gemm` and :meth:`column_sums` apply ``alpha``/``beta`` inside the one call
        for ``dtype`` arrays, so that plain SGD is cheaper fused into the gradient GEMMs than as a
        separate pass (:meth:`bpgpu.MLP.backward`'s ``sgd``). The reference ops take two passes:
        False."""
        return False

    # ------------------------------------------------------------------ activations
    def bias_activation(self, z, bias, activation: str):
        """In place: ``z[:] = act(z + bias)``.

        Parameters
        ----------
        z : array, shape (B, n)
            The GEMM output; overwritten with the activation's output.
        bias : array, shape (n,)
        activation : {"sigmoid", "tanh", "relu", "identity", "softmax"}
        """
        xp = self.xp
        z += bias
        if activation == "sigmoid":
            xp.negative(z, out=z)
            xp.minimum(z, EXP_LIMIT[z.dtype], out=z)  # no overflow warning for z < -88 / -708
            xp.exp(z, out=z)
            z += 1
            xp.reciprocal(z, out=z)
        elif activation == "tanh":
            xp.tanh(z, out=z)
        elif activation == "relu":
            xp.maximum(z, 0, out=z)
        elif activation == "softmax":
            m = self._scratch("rowstat", (z.shape[0], 1), z.dtype)
            self._row_max(z, m)
            z -= m  # log-sum-exp shift: exp never overflows
            xp.exp(z, out=z)
            self._row_sum(z, m)
            z /= m
        elif activation != "identity":
            raise ValueError(f"unknown activation {activation!r}")
        return z

    def activation_backward(self, delta, a, activation: str):
        """In place: ``delta[:] = delta * act'(...)`` with the derivative taken from the output ``a``.

        This is the "sigmoid-delta" contract: sigma' = a(1-a), tanh' = 1-a^2, relu' = [a > 0];
        for softmax it is the Jacobian-vector product ``a * (delta - sum(delta * a))`` per row.

        Parameters
        ----------
        delta : array, shape (B, n)
            Incoming gradient w.r.t. the activation's output; becomes the gradient w.r.t. its input.
        a : array, shape (B, n)
            The saved output of the activation.
        """
        xp = self.xp
        if activation == "identity":
            return delta
        tmp = self._scratch("act_bwd", a.shape, a.dtype)
        if activation == "sigmoid":
            xp.subtract(1, a, out=tmp)
            tmp *= a
            delta *= tmp
        elif activation == "tanh":
            xp.multiply(a, a, out=tmp)
            xp.subtract(1, tmp, out=tmp)
            delta *= tmp
        elif activation == "relu":
            xp.greater(a, 0, out=tmp)
            delta *= tmp
        elif activation == "softmax":
            s = self._scratch("rowstat", (a.shape[0], 1), a.dtype)
            xp.multiply(delta, a, out=tmp)
            self._row_sum(tmp, s)
            delta -= s
            delta *= a
        else:
            raise ValueError(f"unknown activation {activation!r}")
        return delta

    # ------------------------------------------------------------------ loss and output delta
    def output_delta(self, a, y, delta, output: str, loss: str, loss_acc=None, weights=None):
        """Gradient of the *mean* batch loss w.r.t. the output layer's pre-activation.

        ``softmax``+``ce`` and ``sigmoid``+``bce`` give ``(a - y) / B``; ``mse`` gives
        ``(a - y) / B`` times the output activation's derivative. With ``weights``, row ``i`` of
        that is then multiplied by ``weights[i]``: the gradient of ``sum_i weights[i] *
        loss_i / B`` (the model passes ``weights[i] = s_i * B / sum(s)`` for sample weights
        ``s``, so the objective is the weighted mean).

        Parameters
        ----------
        a : array, shape (B, n_out)
            Output-layer activations.
        y : array, shape (B, n_out)
            Targets (one-hot rows for classification), same dtype as ``a``.
        delta : array, shape (B, n_out)
            Written in place and returned.
        output, loss : str
            The output activation and loss (a valid pair, see :mod:`bpgpu.activations`).
        loss_acc : array, shape (1,) float64, optional
            If given, the *sum* over the batch of the per-sample loss (each times its weight,
            with ``weights``) is added to ``loss_acc[0]``.
        weights : array, shape (B,), a's dtype, optional
            Per-row factors of the delta and the loss.
        """
        if loss_acc is not None:
            self.loss_sum(a, y, loss, loss_acc, weights)
        xp = self.xp
        xp.subtract(a, y, out=delta)
        delta *= 1.0 / a.shape[0]
        if loss == "mse":
            self.activation_backward(delta, a, output)
        if weights is not None:
            delta *= weights.reshape(-1, 1)
        return delta

    def loss_sum(self, a, y, loss: str, acc, weights=None):
        """Add the sum over rows of the per-sample loss to ``acc[0]`` (float64, on the device).

        ``mse``: ½‖a − y‖²; ``bce``: −Σ[y ln a + (1−y) ln(1−a)]; ``ce``: −Σ y ln a. Logarithms are
        taken of ``a`` clipped to ``[tiny, 1 - eps]`` (bce) or ``[tiny, 1]`` (ce): never log(0).
        With ``weights``, row ``i``'s loss counts ``weights[i]`` times.

        Parameters
        ----------
        a, y : array, shape (B, n_out)
        acc : array, shape (1,), float64
        weights : array, shape (B,), a's dtype, optional
        """
        xp = self.xp
        tmp = self._scratch("loss_tmp", a.shape, a.dtype)
        tiny, one_minus_eps = LOG_CLIP[a.dtype]
        if weights is not None:
            return self._weighted_loss_sum(a, y, loss, acc, weights, tmp)
        # each sum of products is one vdot (BLAS dot), accumulated into the float64 total
        if loss == "mse":
            xp.subtract(a, y, out=tmp)
            acc += 0.5 * xp.vdot(tmp, tmp).astype(xp.float64)
        elif loss == "ce":
            xp.maximum(a, tiny, out=tmp)
            xp.log(tmp, out=tmp)
            acc -= xp.vdot(y, tmp).astype(xp.float64)
        elif loss == "bce":
            tmp2 = self._scratch("loss_tmp2", a.shape, a.dtype)
            xp.clip(a, tiny, one_minus_eps, out=tmp)
            xp.subtract(1, tmp, out=tmp2)
            xp.log(tmp, out=tmp)
            xp.log(tmp2, out=tmp2)
            tmp -= tmp2                     # y ln a + (1-y) ln(1-a) = y (ln a - ln(1-a)) + ln(1-a)
            acc -= (xp.vdot(y, tmp) + xp.sum(tmp2)).astype(xp.float64)
        else:
            raise ValueError(f"unknown loss {loss!r}")
        return acc

    def _weighted_loss_sum(self, a, y, loss, acc, weights, tmp):
        """:meth:`loss_sum` with per-row weights: each row's loss, then one dot with them."""
        xp = self.xp
        rows = self._scratch("loss_rows", (a.shape[0], 1), a.dtype)
        tiny, one_minus_eps = LOG_CLIP[a.dtype]
        if loss == "mse":
            xp.subtract(a, y, out=tmp)
            xp.multiply(tmp, tmp, out=tmp)
            tmp *= 0.5
        elif loss == "ce":
            xp.maximum(a, tiny, out=tmp)
            xp.log(tmp, out=tmp)
            xp.multiply(tmp, y, out=tmp)
            xp.negative(tmp, out=tmp)
        elif loss == "bce":
            tmp2 = self._scratch("loss_tmp2", a.shape, a.dtype)
            xp.clip(a, tiny, one_minus_eps, out=tmp)
            xp.subtract(1, tmp, out=tmp2)
            xp.log(tmp, out=tmp)
            xp.log(tmp2, out=tmp2)
            tmp -= tmp2
            tmp *= y
            tmp += tmp2
            xp.negative(tmp, out=tmp)
        else:
            raise ValueError(f"unknown loss {loss!r}")
        self._row_sum(tmp, rows)
        acc += xp.vdot(weights, rows[:, 0]).astype(xp.float64)
        return acc

    def count_correct(self, a, y, acc):
        """Add to ``acc[0]`` the number of rows whose prediction matches the target.

        With several outputs a row is correct when ``argmax(a) == argmax(y)``; with one output
        (binary) when ``(a >= 0.5) == (y >= 0.5)``.

        Parameters
        ----------
        a, y : array, shape (B, n_out)
        acc : array, shape (1,), float64
        """
        xp = self.xp
        if a.shape[1] == 1:
            acc += xp.count_nonzero((a >= 0.5) == (y >= 0.5))
        else:
            acc += xp.count_nonzero(xp.argmax(a, axis=1) == xp.argmax(y, axis=1))
        return acc

    def all_finite(self, x) -> bool:
        """True when every entry of ``x`` is finite (a host read of one flag)."""
        return bool(self.xp.isfinite(x).all())

    # ------------------------------------------------------------------ data
    def gather_rows(self, data, idx, out, scale: float = 1.0, shift: float = 0.0):
        """``out[:] = data[idx] * scale + shift`` (scale and shift only for integer ``data``).

        Parameters
        ----------
        data : array, shape (N, n), uint8 or the model's float dtype
            The dataset, resident on the device.
        idx : array, shape (B,), integer
            Row indices (a slice of the epoch's permutation).
        out : array, shape (B, n), float
            Written in place and returned.
        """
        xp = self.xp
        if data.dtype == out.dtype:
            return xp.take(data, idx, axis=0, out=out)
        raw = self._scratch("gather_raw", out.shape, data.dtype)
        xp.take(data, idx, axis=0, out=raw)
        xp.copyto(out, raw)                        # a plain cast, then a same-type multiply:
        xp.multiply(out, out.dtype.type(scale), out=out)  # faster than one mixed-type ufunc
        if shift:
            out += out.dtype.type(shift)
        return out

    # ------------------------------------------------------------------ random numbers
    def random_uniform(self, out, key, counter, offset: int = 0):
        """Fill ``out`` with uniform [0, 1) float32 numbers from a counter-based Philox stream.

        The stream is exactly numpy's ``Generator(Philox(key=key, counter=counter)).random(n,
        dtype=float32)`` (Philox4x64-10; each 64-bit output gives two 32-bit words, low half
        first; a float is ``(word >> 8) * 2**-24``), starting at element ``offset``. Element ``k``
        of the stream depends only on (key, counter, k), so any backend can compute any part of it
        on its own device without host state: every backend draws the same dropout masks, a
        resumed run draws the ones it would have drawn, and a process of a data-parallel run can
        draw just its rows of the global batch.

        Parameters
        ----------
        out : array, float32, C-contiguous, any shape
            Filled in C order with elements ``offset .. offset + out.size - 1`` of the stream.
        key : (int, int)
            The two 64-bit key words.
        counter : (int, int, int, int)
            The four 64-bit counter words; the first advances per block of 8 floats (with carry
            into the next words), the others name the stream.
        offset : int
            Index of the stream element that lands in ``out``'s first entry.
        """
        skip, first = divmod(int(offset), 8)
        words = [int(c) % (1 << 64) for c in counter]
        total = sum(w << (64 * i) for i, w in enumerate(words)) + skip
        words = [(total >> (64 * i)) & ((1 << 64) - 1) for i in range(4)]
        bitgen = np.random.Philox(key=np.array([int(k) % (1 << 64) for k in key], np.uint64),
                                  counter=np.array(words, np.uint64))
        host = np.empty(first + out.size, np.float32)
        np.random.Generator(bitgen).random(out=host, dtype=np.float32)
        return self.upload(host[first:].reshape(out.shape), out)

    # ------------------------------------------------------------------ dropout
    def dropout_forward(self, a, uniform, rate: float, mask, out):
        """Inverted dropout: ``mask = (uniform >= rate) / (1 - rate)``; ``out = a * mask``.

        Parameters
        ----------
        a : array, shape (B, n)
            Activations (left unchanged: the backward pass needs them for the derivative).
        uniform : array, shape (B, n)
            Uniform [0, 1) numbers of the step's dropout stream (:meth:`random_uniform`, drawn
            on the device from a counter-based stream, so every backend drops the same units).
        rate : float
            Probability of dropping a unit, in [0, 1).
        mask : array, shape (B, n), dtype of ``a``
            Written; keep it for :meth:`dropout_backward`.
        out : array, shape (B, n)
            The dropped activations, input of the next layer.
        """
        xp = self.xp
        xp.greater_equal(uniform, rate, out=mask)
        mask *= 1.0 / (1.0 - rate)
        xp.multiply(a, mask, out=out)
        return out

    def dropout_backward(self, delta, mask):
        """In place: ``delta *= mask`` (the mask written by :meth:`dropout_forward`)."""
        delta *= mask
        return delta

    # ------------------------------------------------------------------ augmentation
    # The batch gather with a random geometric transform per image (bpgpu.augment draws the
    # uniforms from the model's Philox streams and calls these two ops). Written vectorised over
    # the whole batch: no loop over images, and only the batch's rows are read -- the dataset is
    # never copied. The contract (for every kernel) is in the docstrings, formula by formula.
    def gather_augmented(self, data, idx, out, uniform, field, height: int, width: int,
                         translate: int = 0, rotate: float = 0.0, zoom: float = 0.0,
                         shear: float = 0.0, flip: float = 0.0, scale: float = 1.0,
                         shift: float = 0.0):
        """``out[b] = warp(data[idx[b]]) * scale + shift``: the batch gather of :meth:`gather_rows`
        with a random affine transform (and optionally an elastic displacement) per image.

        Each row of ``data`` is an image of ``height`` x ``width`` pixels (row-major). Image ``b``
        takes its transform from ``u = float64(uniform[b, :6])`` (float64 from here on):

        - translation ``tx = floor(u[0] (2T+1)) - T``, ``ty = floor(u[1] (2T+1)) - T`` (integers in
          [-T, T], ``T = translate``), rotation ``theta = (2 u[2] - 1) rotate`` (radians),
          zoom ``s = 1 + (2 u[3] - 1) zoom``, shear ``h = (2 u[4] - 1) shear``, mirror
          ``m = -1 if u[5] < flip else 1``;
        - the sampling map (the inverse of "mirror left-right if m = -1, shear x by h y, rotate
          by theta, scale by s about the centre, then translate"): with ``c, n = cos theta,
          sin theta``,
          ``a00 = (c + h n) / s``, ``a01 = (n - h c) / s``, ``a10 = -n / s``, ``a11 = c / s``;
        - output pixel (row r, column q), centre ``cx = (width-1)/2``, ``cy = (height-1)/2``,
          ``X = m (q - cx) - tx``, ``Y = (r - cy) - ty``:
          ``sx = (a00 X + a01 Y) + cx [+ field[b, 0, r, q]]``,
          ``sy = (a10 X + a11 Y) + cy [+ field[b, 1, r, q]]``;
        - bilinear sampling with zero fill: ``x0, y0 = floor(sx), floor(sy)``, ``fx = sx - x0``,
          ``fy = sy - y0``, ``p(y, x)`` the pixel, 0 outside the image,
          ``v = (1-fy) ((1-fx) p(y0,x0) + fx p(y0,x0+1)) + fy ((1-fx) p(y0+1,x0) + fx p(y0+1,x0+1))``;
        - ``out[b, r*width + q] = T(v) * T(scale) + T(shift)`` for uint8 data (``T`` = out's dtype:
          the same rounding as :meth:`gather_rows`), ``T(v)`` for float data;
        - a NaN in the field (``sx`` or ``sy`` NaN) makes that output pixel NaN, whatever the
          scale and shift: every implementation (numpy here, the Numba and CUDA kernels) keeps
          this one rule, so a broken field shows up rather than turning into pixel 0.

        A translation and mirror alone (``rotate = zoom = shear = 0``, no field) make ``a`` the
        identity and ``fx = fy = 0``: the output is then exactly the gathered image, mirrored
        and shifted by whole pixels (the same values as :meth:`gather_rows`, bit for bit).
        The same uniforms give the same images on every backend (within rounding of ``v``).

        Parameters
        ----------
        data : array, shape (N, height*width), uint8 or out's dtype
        idx : array, shape (B,), integer
        out : array, shape (B, height*width), float32 or float64
            Written in place and returned.
        uniform : array, shape (B, 8), float32
            Uniform [0, 1) numbers (columns 6 and 7 are not used: reserved, one Philox block
            per image).
        field : array, shape (B, 2, height, width), out's dtype, or None
            Elastic displacements in pixels (x first, then y), from :meth:`elastic_field`.
        height, width : int
        translate : int
            Largest shift in pixels (>= 0).
        rotate : float
            Largest rotation in radians.
        zoom, shear : float
            Largest relative change of scale (in [0, 1)), largest shear factor.
        flip : float
            Probability of a left-right mirror (for images that have no handedness).
        scale, shift : float
            Applied to integer data, as in :meth:`gather_rows`.
        """
        xp = self.xp
        B, n = out.shape
        f64 = xp.float64
        u = uniform[:, :6].astype(f64)
        span = 2 * int(translate) + 1
        tx = xp.floor(u[:, 0] * span) - translate
        ty = xp.floor(u[:, 1] * span) - translate
        theta = (2 * u[:, 2] - 1) * rotate
        s = 1 + (2 * u[:, 3] - 1) * zoom
        h = (2 * u[:, 4] - 1) * shear
        m = xp.where(u[:, 5] < flip, -1.0, 1.0)
        c, sn = xp.cos(theta), xp.sin(theta)
        a00, a01, a10, a11 = ((c + h * sn) / s, (sn - h * c) / s, -sn / s, c / s)
        cx, cy = (width - 1) / 2, (height - 1) / 2
        q = xp.arange(width, dtype=f64)[None, None, :]
        r = xp.arange(height, dtype=f64)[None, :, None]
        X = m[:, None, None] * (q - cx) - tx[:, None, None]     # (B, 1, W)
        Y = r - cy - ty[:, None, None]                          # (B, H, 1)
        col = lambda v: v[:, None, None]                        # noqa: E731
        sx = (col(a00) * X + col(a01) * Y) + cx                 # (B, H, W)
        sy = (col(a10) * X + col(a11) * Y) + cy
        if field is not None:
            sx = sx + field[:, 0]
            sy = sy + field[:, 1]
        # out-of-range coordinates (a huge field) read nothing: clip before converting to int
        sx = xp.clip(sx, -2.0, width + 1.0)
        sy = xp.clip(sy, -2.0, height + 1.0)
        x0, y0 = xp.floor(sx), xp.floor(sy)
        fx, fy = sx - x0, sy - y0
        x0, y0 = x0.astype(xp.int64), y0.astype(xp.int64)
        rows = xp.take(data, idx, axis=0).reshape(B, n)         # the batch only
        def pixel(yy, xx):
            inside = (xx >= 0) & (xx < width) & (yy >= 0) & (yy < height)
            flat = xp.where(inside, yy * width + xx, 0).reshape(B, n)
            return xp.where(inside.reshape(B, n), xp.take_along_axis(rows, flat, axis=1),
                            0).astype(f64).reshape(B, height, width)
        v = ((1 - fy) * ((1 - fx) * pixel(y0, x0) + fx * pixel(y0, x0 + 1))
             + fy * ((1 - fx) * pixel(y0 + 1, x0) + fx * pixel(y0 + 1, x0 + 1)))
        xp.copyto(out, v.reshape(B, n))                         # T(v)
        if data.dtype != out.dtype:
            xp.multiply(out, out.dtype.type(scale), out=out)
            if shift:
                out += out.dtype.type(shift)
        return out

    def elastic_field(self, uniform, out, sigma: float, alpha: float):
        """Elastic displacement fields (Simard et al. 2003) from uniform numbers:
        ``out[b, k] = alpha * G_sigma * (2 uniform[b, k] - 1)`` for k = 0 (x), 1 (y).

        ``G_sigma *`` is a 2-D Gaussian smoothing, separable: the 1-D kernel is
        ``w[j] = exp(-j^2 / (2 sigma^2)) / sum_i exp(-i^2 / (2 sigma^2))`` over
        ``|i|, |j| <= R``, ``R = int(4 sigma + 0.5)`` (scipy.ndimage.gaussian_filter's default
        truncation), applied along rows and along columns, with values outside the image taken as
        0 (scipy's mode "constant"). Computed in out's dtype. The result feeds
        :meth:`gather_augmented`'s ``field``.

        Parameters
        ----------
        uniform : array, shape (B, 2, H, W), float32
            Uniform [0, 1) numbers.
        out : array, shape (B, 2, H, W), float32 or float64
            Written and returned (displacements in pixels).
        sigma : float
            Standard deviation of the Gaussian in pixels (> 0): the field's smoothness.
        alpha : float
            Scale of the displacements (Simard: sigma 4, alpha 34 on MNIST).
        """
        xp = self.xp
        B, _, H, W = out.shape
        gh = self._gaussian_matrix(H, sigma, out.dtype, alpha)    # alpha folded into one side
        gw = self._gaussian_matrix(W, sigma, out.dtype, 1.0)
        f = self._scratch("elastic_u", (B * 2 * H, W), out.dtype)
        xp.multiply(uniform.reshape(B * 2 * H, W), 2, out=f)
        f -= 1
        rows = self._scratch("elastic_rows", (B * 2 * H, W), out.dtype)
        xp.matmul(f, gw, out=rows)                                # along each row (width)
        xp.matmul(gh, rows.reshape(B * 2, H, W), out=out.reshape(B * 2, H, W))   # along columns
        return out

    def _gaussian_matrix(self, n, sigma, dtype, factor):
        """The (n, n) matrix ``G[k, q] = factor * w[q - k]`` (0 beyond the radius): applying the
        truncated, normalised 1-D Gaussian with zero padding as one product. Symmetric. Cached."""
        key = ("gaussian", n, float(sigma), dtype, float(factor))
        g = self._scratch_cache.get(key)
        if g is None:
            radius = int(4.0 * float(sigma) + 0.5)
            j = np.arange(-radius, radius + 1, dtype=np.float64)
            w = np.exp(-0.5 * (j / float(sigma)) ** 2)
            w /= w.sum()
            d = np.arange(n)[None, :] - np.arange(n)[:, None]      # q - k
            host = np.where(np.abs(d) <= radius, w[np.clip(d + radius, 0, 2 * radius)], 0.0)
            g = self._scratch_cache[key] = self.asarray(host * factor, dtype=dtype)
        return g

    # ------------------------------------------------------------------ optimizers
    # All three work on the ONE flat parameter buffer; weights come first in it, so weight decay
    # applies to ``params[:n_decay]`` (the weights) and never to the biases.
    def _decay(self, params, grads, weight_decay, n_decay):
        if weight_decay:
            tmp = self._scratch("decay", (n_decay,), params.dtype)
            self.xp.multiply(params[:n_decay], weight_decay, out=tmp)
            grads[:n_decay] += tmp

    def sgd_update(self, params, grads, lr: float, weight_decay: float = 0.0, n_decay: int = 0):
        """Plain SGD: ``p -= lr * (g + wd * p)`` (decay on the first ``n_decay`` entries).

        Parameters
        ----------
        params, grads : array, shape (P,)
            Flat parameter and gradient buffers; ``grads`` may be overwritten.
        """
        self._decay(params, grads, weight_decay, n_decay)
        grads *= lr
        params -= grads
        return params

    def momentum_update(self, params, grads, velocity, lr: float, momentum: float,
                        weight_decay: float = 0.0, n_decay: int = 0, nesterov: bool = False):
        """SGD with momentum (PyTorch's form): ``v = mu v + g``; ``p -= lr v``, or with Nesterov
        ``p -= lr (g + mu v)``; ``g`` includes ``wd * p`` on the first ``n_decay`` entries.

        Parameters
        ----------
        params, grads, velocity : array, shape (P,)
        """
        self._decay(params, grads, weight_decay, n_decay)
        velocity *= momentum
        velocity += grads
        if nesterov:
            tmp = self._scratch("mom_tmp", params.shape, params.dtype)
            self.xp.multiply(velocity, momentum, out=tmp)
            grads += tmp
            grads *= lr
            params -= grads
        else:
            tmp = self._scratch("mom_tmp", params.shape, params.dtype)
            self.xp.multiply(velocity, lr, out=tmp)
            params -= tmp
        return params

    def adam_update(self, params, grads, m, v, lr: float, beta1: float, beta2: float, eps: float,
                    step: int, weight_decay: float = 0.0, n_decay: int = 0):
        """Adam (Kingma & Ba, PyTorch's form with L2 ``weight_decay`` added to the gradient).

        ``m = b1 m + (1-b1) g``; ``v = b2 v + (1-b2) g^2``;
        ``p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)``.

        Parameters
        ----------
        params, grads, m, v : array, shape (P,)
        step : int
            1 on the first update.
        """
        xp = self.xp
        self._decay(params, grads, weight_decay, n_decay)
        tmp = self._scratch("adam_tmp", params.shape, params.dtype)
        m *= beta1
        xp.multiply(grads, 1 - beta1, out=tmp)
        m += tmp
        v *= beta2
        xp.multiply(grads, grads, out=tmp)
        tmp *= 1 - beta2
        v += tmp
        bias1 = 1 - beta1 ** step
        bias2 = 1 - beta2 ** step
        xp.multiply(v, 1.0 / bias2, out=tmp)
        xp.sqrt(tmp, out=tmp)
        tmp += eps
        xp.divide(m, tmp, out=tmp)
        tmp *= lr / bias1
        params -= tmp
        return params
