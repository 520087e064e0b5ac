"""TensorBoard event files of a training run, through tensorboardX (an optional extra; no
TensorFlow).

``fit(tensorboard=DIR)`` / ``bpgpu train --tensorboard DIR``: after every completed epoch the
scalars ``train/loss``, ``train/accuracy``, ``val/loss``, ``val/accuracy``, ``lr`` and
``samples_per_s`` at step = epoch; the run's hyper-parameters once, at the start, in TensorBoard's
HParams form (the network, the backend and every training option); with
``tensorboard_histograms=N`` (``--tensorboard-histograms N``) the weights and biases of every
layer as histograms every N epochs. Each run adds an event file to DIR (a resumed run's steps
continue after the checkpoint's epoch), which TensorBoard shows as it grows. A path, not a
writer object, so scikit-learn's ``clone`` and the checkpoint keep working.
"""

from __future__ import annotations

import json

from ._compat import optional_import
from .errors import ConfigError

__all__ = ["TensorBoardLog", "SCALARS"]

#: History field -> scalar tag.
SCALARS = {"loss": "train/loss", "accuracy": "train/accuracy", "val_loss": "val/loss",
           "val_accuracy": "val/accuracy", "lr": "lr"}


def _writer_class():
    module = optional_import("tensorboardX")
    if module is None:
        raise ConfigError("tensorboard= needs tensorboardX: pip install 'bpgpu[tensorboard]'")
    return module


class TensorBoardLog:
    """The event file of one run.

    Parameters
    ----------
    logdir : path
    model : Network
        Its config and, for histograms, its parameters.
    options : dict
        The run's training options (JSON-plain), recorded as hyper-parameters.
    n_samples : int
        Training rows per epoch (for samples per second).
    histograms_every : int or None
        Write weight histograms every this many epochs (None: never).
    """

    def __init__(self, logdir, model, options, n_samples, histograms_every=None):
        tbx = _writer_class()
        self.model, self.n, self.every = model, n_samples, histograms_every
        self.writer = tbx.SummaryWriter(logdir=str(logdir))
        hparams = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
                   for k, v in dict(options, **{f"model.{k}": v for k, v in
                                                model.config().items()}).items()
                   if v is not None}
        hparams["backend"] = model.backend.name
        from tensorboardX.summary import hparams as hparams_summary
        experiment, start, end = hparams_summary(hparams, {tag: 0.0 for tag in SCALARS.values()})
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary)

    def append(self, history):
        """The scalars (and histograms, when due) of the last epoch of ``history``."""
        epoch = history.epoch[-1]
        for field, tag in SCALARS.items():
            values = getattr(history, field)
            if values and values[-1] is not None:
                self.writer.add_scalar(tag, values[-1], epoch)
        seconds = history.time[-1]
        if seconds > 0:
            self.writer.add_scalar("samples_per_s", self.n / seconds, epoch)
        if self.every and epoch % self.every == 0:
            weights, biases = self.model.get_params()
            for layer, (w, b) in enumerate(zip(weights, biases)):
                self.writer.add_histogram(f"layer{layer}/weights", w, epoch)
                self.writer.add_histogram(f"layer{layer}/biases", b, epoch)
        self.writer.flush()

    def close(self):
        self.writer.close()
