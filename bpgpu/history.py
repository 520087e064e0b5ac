"""What a training run did, epoch by epoch: :class:`History`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["History"]


@dataclass
class History:
    """What happened during :func:`fit`, one entry per completed epoch.

    ``loss``/``accuracy`` are running means over the epoch's batches (measured before each update,
    like Keras); ``val_*`` are measured after the epoch. ``loss_increased[i]`` flags an epoch whose
    training loss went up (the textbook "WARNING - Loss Increasing"). ``lr[i]`` is the learning
    rate the epoch ran with (set by the schedule).
    """
    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    time: list = field(default_factory=list)
    loss_increased: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    best_epoch: int | None = None
    stop_reason: str = "completed"
    diverged: bool = False
    backend: str = ""

    def to_dict(self) -> dict:
        """Plain-Python form for JSON."""
        return asdict(self)

    def epoch_line(self, i: int = -1) -> str:
        """One human-readable line for epoch ``i``."""
        parts = [f"epoch {self.epoch[i]}"]
        if self.loss[i] is not None:
            parts.append(f"loss {self.loss[i]:.4f}")
        if self.accuracy[i] is not None:
            parts.append(f"acc {self.accuracy[i]:.4f}")
        if self.val_loss and self.val_loss[i] is not None:
            parts.append(f"val_loss {self.val_loss[i]:.4f}")
            if self.val_accuracy[i] is not None:
                parts.append(f"val_acc {self.val_accuracy[i]:.4f}")
        if self.lr and len(self.lr) == len(self.epoch) and len(set(self.lr)) > 1:
            parts.append(f"lr {self.lr[i]:.4g}")           # shown once the schedule changed it
        parts.append(f"{self.time[i]:.2f}s")
        line = "  ".join(parts)
        if self.loss_increased[i]:
            line += "  WARNING - Loss Increasing"
        return line
