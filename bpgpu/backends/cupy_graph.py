"""An epoch of the cupy backend as replays of ONE captured training step: a CUDA graph.

At MNIST sizes a GPU step is mostly launch overhead: ~14 kernel launches and cuBLAS calls of a
few microseconds of host time each, for well under a millisecond of arithmetic per epoch. A CUDA
graph of the whole step is launched with one call and runs its nodes at ~1-1.5 us each
(bench/NOTES.md has the prediction). The step stays defined once, in
:meth:`bpgpu.network.Network.train_step`: it is recorded and lowered (:mod:`bpgpu.backends.
cupy_step`), and what the graph captures is the cupy backend's own launches for it.

How an epoch of ``N`` rows in batches of ``B`` runs (:class:`GraphEpoch`), on a stream of its own
(ordered after the caller's stream by an event, and the caller's after it at the end):

1. the step is recorded and lowered from the model's current state (cheap: three recorded
   steps), and its :attr:`~bpgpu.backends.cupy_step.Step.key` compared with the captured one;
2. the epoch's order is checked once (as the eager gather checks it) and copied into the graph's
   own order buffer; Adam's per-batch scalars, if any, are uploaded as one table;
3. the runner's first capture comes after :data:`WARM_STEPS` eager steps on the same stream
   (everything compiled, every cache the ops keep filled: nothing allocates inside the capture);
   a new capture is made whenever the key changes (a schedule's new learning rate);
4. the step state (batch index, model step count) is set on the device, and the graph is
   replayed once per remaining full batch -- its last node advances the state;
5. the model's and optimizer's counters are moved on by the full batches, and the remainder
   batch, if any, runs eagerly (``model.train_step``).

Results are those of the eager steps bit for bit: the same kernels with the same arguments and
the same cuBLAS calls on the same handle (tests/emulation/test_graph.py). The eager path stays
the reference and the fallback: the runner returns False, with :attr:`GraphEpoch.reason`, where
GEMMs cannot be captured (no ctypes cuBLAS), the step issues an op or argument the lowering does
not hold (a ``gradient_hook``, the elastic field), or the epoch has too few full batches.

When: ``BPGPU_CUDA_GRAPH=0`` turns graphs off, ``=1`` captures every epoch of at least two full
batches, and by default (``auto``) epochs of at least :data:`MIN_BATCHES` full batches.
"""

from __future__ import annotations

import collections
import contextlib

import numpy as np

from .cupy_step import lower
from .epoch_switch import EpochSwitch
from .recording import FULL_RECORDINGS, Unsupported, generalise, record

__all__ = ["GraphEpoch", "ENV", "MIN_BATCHES", "WARM_STEPS", "SLICE", "STATS", "mode",
           "override", "enabled"]

#: Environment variable: "0" never captures, "1" captures every epoch it can.
ENV = "BPGPU_CUDA_GRAPH"
#: In the default mode, epochs of fewer full batches run eagerly (a capture costs about as much
#: host time as a few eager steps; below this the saving is too small to matter).
MIN_BATCHES = 16
#: Eager steps before the runner's first capture (on the capture stream).
WARM_STEPS = 2
#: Replays between two questions to ``should_stop`` (Ctrl-C) and two ``progress`` calls.
SLICE = 64
#: What the graphs of this process did: epochs replayed, epochs left to the eager path, epochs
#: abandoned part way, captures made, replays launched.
STATS = {"graph_epochs": 0, "fallback_epochs": 0, "abandoned_epochs": 0, "captures": 0,
         "replays": 0}

#: ``BPGPU_CUDA_GRAPH``: "0" never, "1" every epoch of at least two full batches, "auto" epochs
#: of at least :data:`MIN_BATCHES`; ``mode()``, ``override(value)`` (a block that ignores the
#: environment) and ``enabled()`` (False for "0").
SWITCH = EpochSwitch(ENV)
mode, override, enabled = SWITCH.mode, SWITCH.override, SWITCH.enabled


class GraphEpoch:
    """Runs an epoch -- what ``model.train_step(ws.view(rows), X_dev, T_dev, order[start:start +
    rows], optimizer, **step_options)`` does for each batch -- as graph replays (module
    docstring). Built by :meth:`CupyBackend.compiled_epoch`; called with the epoch's order
    (device int64, shape (N,)) as :meth:`bpgpu.backends.base.Backend.compiled_epoch` says:
    True when it ran the epoch, False when the caller must (:attr:`reason` says why), None when
    ``should_stop()`` said so part way.
    """

    def __init__(self, backend, model, ws, X_dev, T_dev, optimizer, step_options):
        self.be, self.model, self.ws = backend, model, ws
        self.X_dev, self.T_dev, self.optimizer = X_dev, T_dev, optimizer
        self.options = dict(step_options)
        #: the epoch's per-row factors (rewritten in place every epoch; None: unweighted)
        self.weights = self.options.get("weights")
        self.n, self.batch = X_dev.shape[0], ws.rows
        self.reason = None
        self.step = None              # the step being lowered (cupy_step.lower sets it)
        xp = backend.xp
        self.order = backend.empty((max(self.n, FULL_RECORDINGS * self.batch),), np.int64)
        self.state = backend.zeros((2,), np.int64)
        self._tables: dict = {}
        self._stream = xp.cuda.Stream(non_blocking=True)
        self._ready, self._done = xp.cuda.Event(), xp.cuda.Event()
        self._graph = self._key = None
        self._nodes: collections.Counter = collections.Counter()   # launches in one replay

    def adam_table(self, dtype):
        """The device buffer of Adam's per-batch scalars (allocated once, outside a capture)."""
        table = self._tables.get(dtype)
        if table is None:
            table = self._tables[dtype] = self.be.empty((max(1, self.n // self.batch), 2), dtype)
        return table

    def _refusal(self, n_full):
        """Why this epoch runs eagerly (None: it does not)."""
        if mode() == "0":
            return f"{ENV}=0"
        if n_full < 2:
            return "an epoch of fewer than 2 full batches has nothing to replay"
        if mode() == "auto" and n_full < MIN_BATCHES:
            return (f"epochs of fewer than {MIN_BATCHES} full batches run eagerly ({ENV}=1 "
                    "captures them)")
        return self.be.capture_ready(self.model.dtype)

    def __call__(self, order, should_stop=None, progress=None):
        """Run the epoch in the order ``order`` (see the class docstring)."""
        n_full = self.n // self.batch
        why = self.reason or self._refusal(n_full)
        step = None
        if why is None:
            try:
                recording = record(self.model, self.optimizer, self.ws, self.X_dev, self.T_dev,
                                   self.options, [self.batch] * FULL_RECORDINGS)
                step = lower(self.be, recording, generalise(recording), self)
            except Unsupported as exc:
                why = self.reason = str(exc)
        if why is not None:
            STATS["fallback_epochs"] += 1
            return False
        with self._own_stream():
            return self._run(order, recording, step, n_full, should_stop, progress)

    @contextlib.contextmanager
    def _own_stream(self):
        """Within the block work goes to the runner's stream, which first waits for what the
        caller's stream has queued (and the caller's waits for it afterwards)."""
        caller = self.be.xp.cuda.get_current_stream()
        self._ready.record(caller)
        self._stream.wait_event(self._ready)
        try:
            with self._stream:
                yield
        finally:
            self._done.record(self._stream)
            caller.wait_event(self._done)

    def _eager(self, order, start, rows):
        options = self.options
        if self.weights is not None:           # the batch's factors, as the order's slice
            options = dict(options, weights=self.weights[start:start + rows])
        self.model.train_step(self.ws.view(rows), self.X_dev, self.T_dev,
                              order[start:start + rows], self.optimizer, **options)

    def _run(self, order, recording, step, n_full, should_stop, progress):
        be, batch = self.be, self.batch
        be._check_indices(order, self.X_dev.shape[0])      # once per order, as the eager gather
        be.copy(order, self.order[:self.n])
        j = 0
        if self._graph is None or step.key != self._key:
            if self._graph is None:
                j = min(WARM_STEPS, n_full - 1)
                for k in range(j):
                    self._eager(order, k * batch, batch)
            if not self._capture(step):                  # finish the epoch eagerly
                for k in range(j, n_full):
                    self._eager(order, k * batch, batch)
                j = n_full
        if j < n_full:
            table = step.table(n_full)
            if table is not None:
                be.upload(table, self.adam_table(table.dtype))
            be._launch_one("step_set", (self.state, np.int64(j),
                                        np.int64(self.model.counters()["steps"])))
            if not self._replay(j, n_full, should_stop, progress):
                STATS["abandoned_epochs"] += 1
                return None
            for obj, slopes in recording.advance:
                obj.set_counters({name: start + per_step * n_full
                                  for name, (start, per_step) in slopes.items()})
        elif progress is not None:
            progress(n_full)
        if self.n % batch:
            self._eager(order, n_full * batch, self.n % batch)
            if progress is not None:
                progress(1)
        STATS["graph_epochs"] += 1
        return True

    def _capture(self, step) -> bool:
        """Capture ``step`` (plus the node that advances the step state) as the graph; False,
        with :attr:`reason` set, when the capture fails (the epoch then finishes eagerly)."""
        be = self.be
        counted = collections.Counter(be._launches), be._host_calls
        be._ctypes_blas().bind(self._stream.ptr)         # before, not inside, the capture
        self._stream.begin_capture()
        try:
            for node in step.nodes:
                node()
            be._launch_one("step_advance", (self.state, np.int64(1), np.int64(1)))
        except Exception as exc:
            self._stream.end_capture()
            self.reason = f"the capture failed: {type(exc).__name__}: {exc}"
            return False
        finally:
            launched = collections.Counter(be._launches)
            launched.subtract(counted[0])
            be._launches, be._host_calls = counted
        graph = self._stream.end_capture()
        graph.upload(self._stream)
        self._graph, self._key = graph, step.key
        self._nodes = +launched
        STATS["captures"] += 1
        return True

    def _replay(self, first, n_full, should_stop, progress) -> bool:
        """Launch the graph for batches ``first .. n_full - 1`` in slices of :data:`SLICE`;
        False when ``should_stop()`` says so between two slices."""
        be, graph, stream = self.be, self._graph, self._stream
        done = first
        if progress is not None and first:
            progress(first)
        while done < n_full:
            upto = min(n_full, done + SLICE)
            for _ in range(upto - done):
                graph.launch(stream)
            k = upto - done
            be._launches.update({name: count * k for name, count in self._nodes.items()})
            be._host_calls += k
            STATS["replays"] += k
            if progress is not None:
                progress(k)
            done = upto
            if done < n_full and should_stop is not None and should_stop():
                return False
        return True
