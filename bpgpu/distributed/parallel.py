""":class:`DataParallel`: what ``fit`` takes to train on every rank of an MPI communicator.

It is the communicator (:class:`~bpgpu.distributed.comm.Communicator`) plus the two calls
:func:`bpgpu.train.fit` makes of a data-parallel run: :meth:`DataParallel.start` (check that the
ranks were given the same work and give them rank 0's state) and :meth:`DataParallel.make_run`
(the :class:`~bpgpu.distributed.run.DistributedRun` of the resolved plan).
"""

from __future__ import annotations

from .comm import Communicator
from .run import DistributedRun
from .startup import start, use_local_gpu

__all__ = ["DataParallel", "use_local_gpu"]


class DataParallel(Communicator):
    """A communicator and the options of a data-parallel run (what ``fit(comm=...)`` takes);
    its parameters (``comm``, ``overlap``, ``timeout``) are :class:`Communicator`'s.
    """

    @classmethod
    def of(cls, comm):
        """``comm`` itself when it is a DataParallel, else ``DataParallel(comm)``."""
        return comm if isinstance(comm, cls) else cls(comm)

    def start(self, model, X, y, validation_data, options, sample_weight=None):
        """The start of ``fit`` on this rank (:func:`bpgpu.distributed.startup.start`): the
        checkpoint to resume (read by rank 0, sent to every rank) or None."""
        return start(self, model, X, y, validation_data, options, sample_weight)

    def make_run(self, model, plan):
        """This rank's :class:`DistributedRun` of ``fit``'s :class:`~bpgpu.train.Plan`."""
        return DistributedRun(model, plan, parallel=self)
