"""What a rank does when something goes wrong around a collective: watch, report, stop together.

:class:`_Watchdog` aborts the job when this process waits in one collective longer than its
timeout; :func:`_say` prints on the process's own stderr (seen even on silenced ranks);
:class:`_CollectiveGuard` turns a stop signal into a request that the ranks agree on after the
same step.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from ..signals import InterruptGuard

#: Signals that ask a data-parallel run to stop (SIGUSR1: what Open MPI's mpirun forwards without
#: killing the ranks).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class _Watchdog:
    """Aborts the job when this process waits in one collective longer than its timeout.

    The main thread marks the start (``par``, ``what``, ``since``) and the end (``since = None``)
    of each wait: attribute writes, cheap enough for every step. One daemon thread per process,
    started with the first DataParallel that has a timeout, looks four times a second. mpi4py
    releases the GIL inside blocking MPI calls and initialises MPI with MPI_THREAD_MULTIPLE, so
    the thread can call MPI_Abort while the main thread is blocked in an Allreduce.
    """

    def __init__(self):
        self.par, self.what, self.since = None, "", None
        self._thread = None

    def ensure_running(self):
        """Start the watching thread (once per process)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="bpgpu-mpi-watchdog",
                                            daemon=True)
            self._thread.start()

    def _loop(self):
        while True:
            time.sleep(0.25)
            par, what, since = self.par, self.what, self.since
            if since is None or par is None or par.timeout <= 0:
                continue
            if time.monotonic() - since > par.timeout:
                message = (f"waited {par.timeout:g} s in {what} for the other ranks: one of "
                           "them died or hangs; stopping every rank (BPGPU_MPI_TIMEOUT sets the "
                           "limit)")
                if par.MPI.Query_thread() == par.MPI.THREAD_MULTIPLE:
                    par.abort(message)
                _say(f"bpgpu: rank {par.rank} of {par.size}: {message}")
                os._exit(1)   # without MPI_THREAD_MULTIPLE: mpirun ends a job whose rank exits


_WATCHDOG = _Watchdog()


def _say(line):
    """Print a line on the process's own stderr (``bpgpu train --distributed`` silences
    ``sys.stderr`` on ranks other than 0; what a failing rank says must still be seen)."""
    stream = sys.__stderr__ or sys.stderr
    print(line, file=stream, flush=True)


class _Watched:
    def __init__(self, par, what):
        self.par, self.what = par, what

    def __enter__(self):
        _WATCHDOG.par, _WATCHDOG.what, _WATCHDOG.since = self.par, self.what, time.monotonic()

    def __exit__(self, *exc):
        _WATCHDOG.since = None
        return False


class _CollectiveGuard(InterruptGuard):
    """Signals only ask to stop (``local``); ``signum`` is set when the ranks have agreed, after
    the same step on every rank. A second signal still stops this rank at once (and with it,
    through MPI_Abort, the job)."""

    SIGNALS = STOP_SIGNALS

    def __init__(self):
        super().__init__()
        self.local = None

    def request(self, signum) -> bool:
        if self.local is None:
            self.local = signum
            return True
        return False
