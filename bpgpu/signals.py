"""Ctrl-C and SIGTERM while training: asked to stop at the next batch boundary, never mid-step.

:class:`InterruptGuard` is active while :func:`bpgpu.train.fit` runs: the first SIGINT or SIGTERM
only records the request (the loop stops at the next batch boundary, or the next slice of a
compiled epoch, goes back to the end of the last completed epoch and raises
:class:`TrainingInterrupted`); a second one raises at once. :class:`Stopped` is how the loop
unwinds to that point.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["TrainingInterrupted", "InterruptGuard", "Stopped"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by SIGINT (Ctrl-C) or SIGTERM.

    Attributes
    ----------
    signum : int
        The signal.
    history : History or None
        The completed epochs; None when a second signal stopped training at once.
    restored : bool
        True when the model was put back to the end of the last completed epoch (and the
        checkpoint, if any, written): what a caller saves is then a consistent state.
    checkpoint : str or None
        The checkpoint written, if any.
    """

    def __init__(self, signum, history=None, restored=False, checkpoint=None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.history, self.restored = signum, history, restored
        self.checkpoint = checkpoint


class InterruptGuard:
    """While training: the first of :attr:`SIGNALS` asks the loop to stop at the next batch
    boundary (:meth:`request`: ``signum`` is set); a second one raises
    :class:`TrainingInterrupted` at once. Signal handlers can only be set from the main thread;
    elsewhere signals keep their usual effect. A data-parallel run's guard
    (:class:`bpgpu.distributed.faults._CollectiveGuard`) handles more signals and only records
    the request until the ranks agree."""

    #: The signals that ask to stop.
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):
                    pass
        return self

    def __exit__(self, *exc):
        self._restore()
        return False

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def request(self, signum) -> bool:
        """Record a first request to stop; False when one was recorded already."""
        if self.signum is None:
            self.signum = signum
            return True
        return False

    def _handle(self, signum, frame):
        if self.request(signum):
            return
        self._restore()
        raise TrainingInterrupted(signum)


class Stopped(Exception):
    """Internal: the interrupt guard asked the epoch loop to stop."""
