"""Data-parallel training over MPI: P processes give the result of one process on the global batch.

Synchronous data parallelism, the scheme Horovod builds on, through mpi4py: every process (rank)
holds the whole model and the whole data set, and ``MLP.fit`` with ``comm=`` runs on
every rank with the same arguments. Each global batch of ``B`` rows is split across the ``P``
ranks -- rank ``r`` takes the contiguous rows :func:`share` names, ``B // P`` or ``B // P + 1`` of
them, so the shares add up to exactly ``B`` and a rank may have none of a small last batch --,
every rank computes the gradient of its share, ONE Allreduce per step sums the flat gradient
buffer in place, and the optimizer then runs identically on every rank.

Equal to one process, not merely close
--------------------------------------
- Rank 0's state drives everything. At the start of ``fit`` every rank checks that it trains what
  rank 0 trains (architecture, backend, options, digests of the data), then takes rank 0's
  parameters, host generator (it draws the validation split and every epoch's permutation), dropout
  stream key and step count. Dropout and augmentation come from counter-based Philox streams named
  by (step, layer); with ``row_offset`` rank ``r`` draws exactly rows ``r0:r1`` of the mask one
  process would draw.
- Scaling. The output delta divides by the rows it has, ``b_r``; the gradient GEMMs multiply by
  ``b_r / B`` (``grad_scale``: BLAS's alpha, no extra pass), so the sum over the ranks is
  ``(1/B) sum_i grad loss_i``, the gradient of the mean over the global batch. Only the order of
  the floating-point additions differs from one process.
- Metrics (loss sums, correct counts) add up on each rank's device and are reduced once per epoch;
  every rank evaluates the whole validation set itself (the same numbers everywhere). After every
  epoch the ranks compare digests of their parameters: they must be bit-identical.
- Only rank 0 prints and writes files. A checkpoint is written by rank 0 and every rank learns
  whether that worked; ``resume`` is read by rank 0 and sent to the others, so a checkpoint
  written by P ranks resumes on any number of ranks (or in one process).

Stopping together
-----------------
Each rank notices a signal at a different moment; if each acted on its own, the Allreduces would
pair up wrongly and hang. So a signal only *asks*: the request travels as one extra element after
the flat gradient buffer, in the Allreduce every step does anyway, and all ranks stop after the
same step, go back to the end of the last completed epoch together, and rank 0 writes the
checkpoint (:class:`~bpgpu.signals.TrainingInterrupted` on every rank). Open MPI 5's ``mpirun``
answers SIGINT/SIGTERM by sending SIGTERM to every rank and killing them about 0.3 s later (too
little time to save); it forwards SIGUSR1 untouched, so ``kill -USR1 <mpirun pid>`` is the way to
stop a run cleanly through it (SIGUSR1 is a stop request here, like SIGTERM).

Faults
------
- Ranks given different data, architectures, options or backends: a :class:`DistributedError` on
  every rank at the start, naming what differs on which rank.
- A rank that raises during training prints the error with its rank and calls ``MPI_Abort``:
  mpirun ends every rank at once (exit status non-zero). A rank that dies is noticed by mpirun,
  which ends the job. A rank that hangs leaves the others waiting in a collective: every wait is
  watched, and a rank that waits longer than ``timeout`` seconds (default 300, or
  ``$BPGPU_MPI_TIMEOUT``; 0 turns the watch off) prints where it waited and aborts the job.

Overlap
-------
With ``DataParallel(comm, overlap=True)`` each layer's gradient is reduced by a non-blocking
``Iallreduce`` started as soon as back-propagation has written it (the model's ``layer_hook``), last
layer first, while the layers below are still being computed; all are waited for before the
update. On CPUs it gains little (bench/NOTES.md): Open MPI advances a non-blocking collective only
inside MPI calls, and the hook's one ``Testall`` per layer is all the progress it gets.

GPUs
----
With the cupy backend the gradients are summed by NCCL (``cupy.cuda.nccl``), one GPU per rank
(:func:`use_local_gpu` picks local rank modulo the device count; call it before building the
model), on the compute stream -- or, with ``overlap``, on a second stream that waits for each
layer's gradient. The stop flag is read one step late through pinned memory: inside an epoch
the host only waits for the step before the one it has just queued, never for the GPU to drain.
"""

# The names other code imports from here: the public API (__all__), bpgpu.cli's run_command,
# and the private helpers the tests check directly.
from .command import run_command
from .comm import DEFAULT_TIMEOUT, DistributedError, _timeout_from_env, mpi, share
from .faults import STOP_SIGNALS
from .parallel import DataParallel
from .reducers import _HostReducer, _layer_segments, _NcclReducer
from .run import DistributedRun
from .startup import _differences, start, use_local_gpu

__all__ = ["DataParallel", "DistributedError", "DistributedRun", "DEFAULT_TIMEOUT", "mpi",
           "share", "start", "use_local_gpu", "run_command"]
