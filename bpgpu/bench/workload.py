"""The two numbers of a training step: FLOPs and the minimum bytes it must move.

For layer widths ``n_0 .. n_L`` and batch ``B`` (float ``s`` bytes per element):

- FLOPs: forward GEMMs ``2 B n_{l-1} n_l`` per layer; backward ``2 B n_{l-1} n_l`` for every dW and
  the same again for every delta propagated to a hidden layer (not to the input). Elementwise work
  is a few FLOPs per activation and is left out (it is memory-bound, see bytes).
- Bytes (a lower bound, with everything streamed once): the parameters read twice (forward and
  backward) and updated (read + write, plus the gradient written and read), the input batch read
  as uint8, and each activation written once and read twice.
"""

from __future__ import annotations

__all__ = ["step_flops", "step_bytes", "gemm_flops"]


def step_flops(sizes, batch) -> int:
    """GEMM FLOPs of one training step (forward + backward)."""
    total = 0
    for l, (i, o) in enumerate(zip(sizes[:-1], sizes[1:])):
        total += 2 * batch * i * o          # forward
        total += 2 * batch * i * o          # dW
        if l > 0:
            total += 2 * batch * i * o      # delta to the previous (hidden) layer
    return total


def gemm_flops(m, n, k) -> int:
    """FLOPs of an (m, k) @ (k, n) product."""
    return 2 * m * n * k


def step_bytes(sizes, batch, itemsize=4) -> int:
    """Minimum bytes one step moves (see the module docstring)."""
    params = sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))
    acts = sum(batch * n for n in sizes[1:])
    return (params * itemsize * 5            # W read fwd + bwd, grad write + read, W write
            + batch * sizes[0]               # uint8 input
            + acts * itemsize * 3)           # write once, read twice
