"""The model users hold: :class:`MLP`, a :class:`~bpgpu.network.Network` that trains, saves and
loads itself.

The network's math is :mod:`bpgpu.network` (the model layer); training is :mod:`bpgpu.train`, the
file format :mod:`bpgpu.io`, data-parallel runs :mod:`bpgpu.distributed` (the run layer). This
module joins them into the one class of the public API, so that those layers never import each
other upward: ``net.fit`` calls :func:`bpgpu.train.fit` with the network, ``net.save`` calls
:func:`bpgpu.io.save`, and :func:`load` builds an :class:`MLP` from a file.
"""

from __future__ import annotations

from .network import Network

__all__ = ["MLP", "load"]


class MLP(Network):
    """A fully connected back-propagation network that trains, saves and loads itself.

    Parameters are those of :class:`~bpgpu.network.Network`: ``sizes``, ``activation``,
    ``output``, ``loss``, ``init``, ``dtype``, ``backend``, ``seed``, ``input_scale``,
    ``input_shift``.
    """

    def fit(self, X, y, *, comm=None, **options):
        """Train with mini-batch gradient descent: :func:`bpgpu.train.fit` with this network
        (every option is described there).

        ``comm`` (an mpi4py communicator or a :class:`bpgpu.distributed.DataParallel`) trains
        data-parallel on its ranks; every rank calls ``fit`` with the same arguments.

        Returns
        -------
        History
        """
        from .train import fit
        parallel = None
        if comm is not None:
            from .distributed import DataParallel
            parallel = DataParallel.of(comm)
        return fit(self, X, y, parallel=parallel, **options)

    def save(self, path):
        """Write the model to ``path`` (.npz + JSON metadata), atomically."""
        from .io import save
        return save(self, path)


def load(path, backend="auto") -> MLP:
    """Load a model written by :meth:`MLP.save` (or a checkpoint: the model it holds) onto
    ``backend``; see :func:`bpgpu.io.load`."""
    from .io import load as load_network
    return load_network(path, backend, cls=MLP)
