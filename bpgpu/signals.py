"""Ctrl-C and SIGTERM while training: asked to stop at the next batch boundary, never mid-step.

:class:`InterruptGuard` is active while :func:`bpgpu.train.fit` runs: the first SIGINT or SIGTERM
only records the request (the loop stops at the next batch boundary, or the next slice of a
compiled epoch, goes back to the end of the last completed epoch and raises
:class:`TrainingInterrupted`); a second one raises at once. :class:`Stopped` is how the loop
unwinds to that point.

Guards nest: a guard entered while another one handles the signals (``bpgpu train`` holds one
from before training until its last file is written) passes every signal it receives on to that
outer guard too, so a signal that arrives as training ends is never lost, and a signal after the
one that stopped training counts as the second.
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
        The checkpoint written, if any (None too when no epoch had completed: nothing is
        written then).
    checkpoint_error : OSError or None
        Why the checkpoint could not be written, if that failed (e.g. a full disk).
    """

    def __init__(self, signum, history=None, restored=False, checkpoint=None,
                 checkpoint_error=None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.history, self.restored = signum, history, restored
        self.checkpoint, self.checkpoint_error = checkpoint, checkpoint_error


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
        self._outer = None        # the guard that handled the signals before this one

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):
                    continue
                outer = getattr(self._previous[sig], "__self__", None)
                if isinstance(outer, InterruptGuard) and outer is not self:
                    self._outer = outer
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
        if self._outer is not None:       # it sees every signal too (see the module docstring)
            self._outer.request(signum)
        if self.request(signum):
            return
        self._restore()
        raise TrainingInterrupted(signum)


class Stopped(Exception):
    """Internal: the interrupt guard asked the epoch loop to stop."""
