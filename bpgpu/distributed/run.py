"""One rank's training run: :class:`bpgpu.train.Run` with its share of each batch, reduced.

:class:`DistributedRun` steps through this rank's rows of every global batch with a reducer as the
step's gradient hook, reduces the metrics and agrees with the other ranks at the end of each
epoch, and ends the job when one rank fails; :class:`_RankThreads` sets the BLAS/numba threads
for the run, and the model's ``gradients_in`` puts its gradients into the reducer's buffer.
"""

from __future__ import annotations

import os
import signal
import traceback

import numpy as np

from .._compat import numba_status
from ..checkpoint import fingerprint
from ..errors import BpgpuError
from ..signals import Stopped, TrainingInterrupted
from ..train import Run
from .comm import DistributedError, share
from .faults import _CollectiveGuard, _say
from .reducers import _HostReducer, _NcclReducer


class DistributedRun(Run):
    """:class:`bpgpu.train.Run` on one rank of a data-parallel run (see :mod:`bpgpu.distributed`):
    this rank's share of every global batch, the gradient reduction as the step's hooks, metrics
    reduced at the end of each epoch, decisions to stop taken together, files written by rank 0.
    It overrides the run's hooks: :meth:`interrupt_guard`, :meth:`run_epoch`,
    :meth:`finish_epoch`, :meth:`save_checkpoint`, :meth:`train`.
    """

    def __init__(self, model, plan, *, parallel):
        super().__init__(model, plan)
        par = self.par = parallel
        # (first row of the share in the epoch's order, end, offset in the global batch, b/B)
        self.shares = []
        for start in range(0, self.n, self.batch):
            rows = min(start + self.batch, self.n) - start
            lo, hi = share(rows, par.size, par.rank)
            self.shares.append((start + lo, start + hi, lo, (hi - lo) / rows))
        uses_host = model.backend.xp is np
        self.reducer = (_HostReducer if uses_host else _NcclReducer)(par, model)
        self.threads = max(1, min(_cores(), (os.cpu_count() or 1) // par.node_size()))

    def interrupt_guard(self):
        """Signals only ask to stop; the ranks agree after the same step."""
        return _CollectiveGuard()

    def make_listeners(self) -> list:
        """Rank 0 alone writes the per-epoch log and TensorBoard's files."""
        return super().make_listeners() if self.par.lead else []

    # ------------------------------------------------------------------ the epoch
    def run_epoch(self, order, bar=None):
        """This rank's share of every step of one epoch; stops after the step at which any rank
        asked to."""
        model, ws, reducer = self.model, self.ws, self.reducer
        opt = self.opt
        metrics = self.metrics if self.train_metrics else None
        guard, count_correct = self.interrupt, self.count_correct
        layer_hook = reducer.layer_ready if self.par.overlap else None
        last = len(self.shares) - 1
        factors = self.factors
        inputs = self.steps(order, [(lo, hi) for lo, hi, _, _ in self.shares])
        for i, ((lo, hi, offset, scale), (X, T, rows)) in enumerate(zip(self.shares, inputs)):
            reducer.begin(guard.local is not None)
            model.train_step(ws.view(hi - lo), X, T, rows, opt, metrics=metrics,
                             count_correct=count_correct, gradient_hook=reducer.finish,
                             row_offset=offset, grad_scale=scale, layer_hook=layer_hook,
                             weights=None if factors is None else factors[lo:hi])
            if i < last and reducer.stop_requested():   # after the last step: _end_epoch agrees
                self._stop_together()
            if bar is not None:
                bar.update(1)

    def _stop_together(self):
        """Every rank is here after the same step: agree on the signal to report and stop."""
        local = self.interrupt.local or 0
        with self.par.watch("the stop agreement"):
            signum = self.par.comm.allreduce(int(local), op=self.par.MPI.MAX)
        self.interrupt.signum = signum
        raise Stopped

    # ------------------------------------------------------------------ the end of an epoch
    def finish_epoch(self, epoch, t0, progress, on_epoch) -> bool:
        """Reduce the epoch's metrics, record the epoch as one process would, then agree: stop
        if any rank stops (a callback may differ), and the parameters must be identical."""
        par, be = self.par, self.be
        self.reducer.flush()
        host = np.ascontiguousarray(be.to_host(self.metrics), np.float64)
        with par.watch("the metrics Allreduce"):
            par.comm.Allreduce(par.MPI.IN_PLACE, host, op=par.MPI.SUM)
        be.upload(host, self.metrics)
        go_on = super().finish_epoch(epoch, t0, progress and par.lead, on_epoch)
        mine = (bool(go_on), int(self.interrupt.local or 0),
                fingerprint(be.to_host(self.model.params)))
        everyone = par.allgather(mine, "the end-of-epoch agreement")
        digests = [d for _, _, d in everyone]
        if any(d != digests[0] for d in digests):
            odd = [r for r, d in enumerate(digests) if d != digests[0]]
            raise DistributedError(
                f"after epoch {epoch} the parameters of rank(s) {odd} differ from rank 0's; the "
                "ranks must run the same backend and BLAS on the same data (a reduction that "
                "does not give every rank the same sum would do this too)", report=par.lead)
        signum = max(s for _, s, _ in everyone)
        if signum:
            self.interrupt.signum = signum
        stoppers = [r for r, (g, _, _) in enumerate(everyone) if not g]
        if go_on and stoppers and not self.history.diverged:
            self.history.stop_reason = f"stopped by rank {stoppers[0]} after epoch {epoch}"
        return go_on and not stoppers

    def save_checkpoint(self):
        """Rank 0 writes; every rank learns whether it worked (an error is raised on all)."""
        par, error = self.par, None
        if par.lead:
            try:
                super().save_checkpoint()
            except (BpgpuError, OSError) as exc:
                error = exc
        failed = par.bcast(None if error is None else f"{type(error).__name__}: {error}",
                           "the checkpoint agreement")
        if failed is not None:
            if error is not None:
                error.bpgpu_collective = True
                raise error
            exc = DistributedError(f"rank 0 could not write the checkpoint: {failed}",
                                   report=False)
            exc.bpgpu_collective = True
            raise exc
        return self.options.checkpoint

    # ------------------------------------------------------------------ the whole run
    def train(self, *, progress=False, on_epoch=None):
        """:meth:`Run.train` on every rank; an error on one rank (not shared by all) prints it
        with its rank and ends the job with MPI_Abort, so no rank waits for it forever."""
        par = self.par
        try:
            with self._wired(), self._threads():
                return super().train(progress=progress and par.lead, on_epoch=on_epoch)
        except TrainingInterrupted as exc:
            if exc.restored:          # the agreed stop: every rank raises it at the same point
                raise
            par.abort(f"{signal.Signals(exc.signum).name} again: stopped at once", 128 + exc.signum)
        except BaseException as exc:
            if isinstance(exc, DistributedError) or getattr(exc, "bpgpu_collective", False):
                raise
            detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            _say(detail.rstrip("\n"))
            par.abort(f"{type(exc).__name__}: {exc} -- stopping every rank")

    def _wired(self):
        """The model's gradient buffer as a view of the reducer's (restored afterwards)."""
        return self.model.gradients_in(self.reducer.wire)

    def _threads(self):
        """BLAS (and numba) threads for this rank: the cores it may use, shared with the other
        ranks on its machine, unless the backend was given a thread count."""
        return _RankThreads(self.be, self.threads)


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _RankThreads:
    def __init__(self, backend, threads):
        self.backend, self.threads = backend, threads

    def __enter__(self):
        be = self.backend
        self.blas = getattr(be, "blas_threads", None)
        if self.blas == "auto":
            be.blas_threads = self.threads
        self.numba = None
        numba = numba_status()[0] if be.name == "numba" else None
        if numba is not None:
            self.numba = numba.get_num_threads()
            numba.set_num_threads(max(1, min(self.threads, numba.config.NUMBA_NUM_THREADS)))
        return self

    def __exit__(self, *exc):
        if self.blas == "auto":
            self.backend.blas_threads = "auto"
        if self.numba is not None:
            numba_status()[0].set_num_threads(self.numba)
        return False
