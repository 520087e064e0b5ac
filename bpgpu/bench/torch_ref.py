"""PyTorch eager on the identical work, for side-by-side figures.

Same initial weights (copied from the bpgpu model), same per-epoch permutations (from a copy of the
model's own generator, taken when the peer is built, so it walks the batches the model will), the same
uint8 dataset on the same device gathered and scaled per batch, the same
activations and mean loss, plain SGD. Only available when torch is installed; :func:`torch_status`
says why not otherwise.

With ``graph=True`` every full batch runs one static step -- gather from a fixed index buffer,
forward, backward, optimizer step, all on preallocated tensors -- which on CUDA is captured once
as a ``torch.cuda.CUDAGraph`` (after :data:`WARM_STEPS` eager steps on a side stream, as PyTorch's
documentation prescribes; they are the epoch's first real steps) and replayed; the remainder
batch runs eagerly. On the CPU the same static step runs directly, so its code path is tested
against the eager form without a GPU (the graph adds nothing on the CPU).
"""

from __future__ import annotations

import copy
import time

import numpy as np

from .._compat import optional_import

__all__ = ["torch_status", "TorchTrainer", "WARM_STEPS"]

#: Eager steps (on a side stream) before the CUDA capture of the graphed form.
WARM_STEPS = 3


def torch_status():
    """``(torch_module_or_None, reason)``."""
    torch = optional_import("torch")
    if torch is None:
        return None, "torch is not installed (pip install torch==2.13.0+cpu, or a CUDA build)"
    return torch, f"torch {torch.__version__}"


class TorchTrainer:
    """Trains the same MLP as a bpgpu model, in PyTorch eager mode.

    Parameters
    ----------
    model : bpgpu.MLP
        Supplies sizes, activations, loss, dtype, initial weights, input scaling and the
        generator state that draws the permutations.
    device : {"cpu", "cuda"}
        On "cuda", float32 matmuls use TF32 exactly when the cupy backend's process-wide setting
        (:func:`bpgpu.backends.tf32_state`) allows it, so both sides do the same arithmetic.
    """

    def __init__(self, model, device="cpu", graph=False):
        torch, why = torch_status()
        if torch is None:
            raise RuntimeError(why)
        self.torch, self.device = torch, torch.device(device)
        self.dtype = torch.float32 if model.dtype == np.float32 else torch.float64
        weights, biases = model.get_params()
        self.params = []
        self.layers = []
        for w, b in zip(weights, biases):
            W = torch.tensor(np.ascontiguousarray(w.T), dtype=self.dtype, device=self.device,
                             requires_grad=True)
            B = torch.tensor(b, dtype=self.dtype, device=self.device, requires_grad=True)
            self.layers.append((W, B))
            self.params += [W, B]
        self.activations = model.activations
        self.loss_name, self.output = model.loss_name, model.output
        self.scale, self.shift = model.input_scale, model.input_shift
        self.rng = copy.deepcopy(model.rng)
        self.graph = bool(graph)
        self._static = self._cuda_graph = None
        if self.device.type == "cuda":
            from ..backends import tf32_state
            torch.backends.cuda.matmul.allow_tf32 = bool(tf32_state())

    def _forward(self, x):
        F = self.torch.nn.functional
        for (W, b), act in zip(self.layers, self.activations):
            x = F.linear(x, W, b)
            if act == "sigmoid":
                x = self.torch.sigmoid(x)
            elif act == "tanh":
                x = self.torch.tanh(x)
            elif act == "relu":
                x = self.torch.relu(x)
            elif act == "softmax" and self.loss_name != "ce":
                x = self.torch.softmax(x, dim=1)
        return x

    def _loss(self, out, yb, tb):
        F = self.torch.nn.functional
        if self.loss_name == "ce":             # out holds logits: log-softmax inside
            return F.cross_entropy(out, yb)
        if self.loss_name == "bce":
            return F.binary_cross_entropy(out, tb, reduction="sum") / out.shape[0]
        return 0.5 * ((out - tb) ** 2).sum() / out.shape[0]

    def fit(self, X, y, epochs=1, batch_size=64, lr=0.1, momentum=0.0, perms=None):
        """Train with SGD (PyTorch's momentum form, as bpgpu's); return per-epoch wall times
        (synchronised). ``perms``: the epochs' permutations (default: drawn from the copy of the
        model's generator, as the model's own fit would draw them)."""
        torch = self.torch
        Xd = torch.from_numpy(np.ascontiguousarray(X)).to(self.device)
        yd = torch.from_numpy(np.asarray(y, np.int64)).to(self.device)
        n_out = self.layers[-1][0].shape[0]
        Td = torch.nn.functional.one_hot(yd, n_out).to(self.dtype) if n_out > 1 else \
            yd.to(self.dtype).reshape(-1, 1)
        opt = self._opt = getattr(self, "_opt", None) or torch.optim.SGD(self.params, lr=lr,
                                                                          momentum=momentum)
        times = []
        n = Xd.shape[0]
        for e in range(epochs):
            perm = perms[e] if perms is not None else self.rng.permutation(n)
            order = torch.from_numpy(perm).to(self.device)
            self._sync()
            t0 = time.perf_counter()
            start = 0
            if self.graph:
                start = self._graphed_epoch(Xd, yd, Td, order, batch_size, opt)
            for s in range(start, n, batch_size):
                self._step(Xd, yd, Td, order[s:s + batch_size], opt)
            self._sync()
            times.append(time.perf_counter() - t0)
        return times

    def _step(self, Xd, yd, Td, idx, opt):
        """One eager step on the rows ``idx``."""
        xb = Xd.index_select(0, idx).to(self.dtype).mul_(self.scale)
        if self.shift:
            xb.add_(self.shift)
        loss = self._loss(self._forward(xb), yd.index_select(0, idx), Td.index_select(0, idx))
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()

    def _graphed_epoch(self, Xd, yd, Td, order, batch, opt):
        """The epoch's full batches through the static step (replays of its CUDA graph on
        CUDA); returns where the eager remainder starts."""
        torch = self.torch
        n_full = Xd.shape[0] // batch
        if n_full == 0:
            return 0
        if self._static is None or self._static.shape[0] != batch:
            self._static, self._cuda_graph = torch.empty(batch, dtype=torch.int64,
                                                         device=self.device), None
        idx = self._static
        run = lambda: self._step(Xd, yd, Td, idx, opt)            # noqa: E731
        j = 0
        if self.device.type == "cuda" and self._cuda_graph is None:
            j = min(WARM_STEPS, n_full)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for k in range(j):
                    idx.copy_(order[k * batch:(k + 1) * batch])
                    run()
            torch.cuda.current_stream().wait_stream(side)
            if j < n_full:
                self._cuda_graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self._cuda_graph):
                    run()                 # captured, not run: replayed below for batch j on
        replay = self._cuda_graph.replay if self._cuda_graph is not None else run
        for k in range(j, n_full):
            idx.copy_(order[k * batch:(k + 1) * batch])
            replay()
        return n_full * batch

    def evaluate(self, X, y):
        """Test accuracy (argmax), computed on the device."""
        torch = self.torch
        with torch.no_grad():
            Xd = torch.from_numpy(np.ascontiguousarray(X)).to(self.device).to(self.dtype)
            Xd.mul_(self.scale).add_(self.shift)
            pred = self._forward(Xd).argmax(dim=1).cpu().numpy()
        return float((pred == np.asarray(y)).mean())

    def _sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
