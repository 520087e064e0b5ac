"""The names of the counter-based (Philox) random streams a training run draws from.

Dropout masks and augmentation parameters are drawn on the device from Philox4x64 streams keyed
by the model's :func:`stream_key` and named by a counter: (0, training step, layer or part,
purpose). Element ``k`` of a stream depends only on (key, counter, k), so every backend draws the
same numbers without host state, a resumed run draws the ones it would have drawn, and a process
of a data-parallel run draws exactly its rows of the global batch. The last counter word names
the purpose (ASCII "dropout", "augment"), so streams drawn for different purposes never coincide.
"""

from __future__ import annotations

import numpy as np

__all__ = ["stream_key", "dropout_counter", "augment_counter", "DROPOUT_STREAM",
           "AUGMENT_STREAM", "PARAMS", "FIELD"]

#: Last word of every dropout stream's counter (ASCII "dropout").
DROPOUT_STREAM = int.from_bytes(b"dropout", "little")
#: Last word of every augmentation stream's counter (ASCII "augment").
AUGMENT_STREAM = int.from_bytes(b"augment", "little")
#: Third counter word of the augmentation streams: per-image transform parameters, elastic fields.
PARAMS, FIELD = 0, 1


def stream_key(seed):
    """The two 64-bit Philox key words of a model with this ``seed`` (a child of the seed's
    SeedSequence, independent of the host generator that draws weights and permutations)."""
    words = np.random.SeedSequence(seed, spawn_key=(1,)).generate_state(2, np.uint64)
    return int(words[0]), int(words[1])


def dropout_counter(step, layer):
    """Philox counter of the dropout stream of training step ``step`` and hidden ``layer``."""
    return 0, int(step), int(layer), DROPOUT_STREAM


def augment_counter(step, part):
    """Philox counter of augmentation stream ``part`` (:data:`PARAMS` or :data:`FIELD`) of
    training step ``step``."""
    return 0, int(step), int(part), AUGMENT_STREAM
