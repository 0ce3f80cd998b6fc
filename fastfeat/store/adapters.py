"""Feeding a store to training code: tf.data, Keras ``PyDataset`` and scikit-learn arrays.

Batches are read from the memory map (or decompressed) with their indices sorted, so reads go
forward through the file; the batch composition is still random. TensorFlow and Keras are
imported inside the functions that need them, never by ``open_store``.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..workers import ordered_map
from .rows import RowSource, select_rows


def _check_batch(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    return int(batch_size)


def epoch_batches(n: int, batch_size: int, shuffle: bool, seed: int, epoch: int, drop_remainder: bool = False):
    """Row indices of each batch of one epoch, each sorted (a new permutation every epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_remainder else n
    return [np.sort(order[i : i + batch_size]) for i in range(0, stop, batch_size)]


def _subset(store, layer, flatten, copies, rows):
    """(features view, labels) of the chosen rows; the view reads nothing until indexed."""
    from .views import RowSubset

    features = store.features(layer, flatten=flatten)
    labels = np.asarray(store.labels)
    chosen = select_rows(store, copies, rows)
    if chosen is None:
        return features, labels
    return RowSubset(features, chosen), labels[chosen]


def arrays(
    store: RowSource,
    layer: str | None = None,
    flatten: bool = True,
    load: bool = False,
    copies=None,
    rows=None,
):
    """(X, y) for scikit-learn.

    Args:
        store: an open store.
        layer: the feature key (may be omitted when there is only one).
        flatten: X as (N, -1) (a view, no copy).
        load: copy X into memory. Otherwise X is the memory map (or the chunked view), which
            estimators read as they go; ``np.asarray(X)`` loads it.
        copies: which rows of a store with augmented copies (``augment_copies``): ``None``
            every row, ``0`` only the images themselves, or a list of copy ids (``[0, 1]``).
            Evaluate on ``copies=0``; train on augmented rows only of training images (see
            :meth:`FeatureStore.split`), or copies of one image leak into the evaluation.
        rows: explicit row positions (e.g. from :meth:`FeatureStore.split`).

    Returns:
        ``(X, y)`` with ``y`` the int64 labels. With ``copies`` or ``rows``, ``X`` is a view of
        just those rows (read when indexed; ``load=True`` or ``np.asarray(X)`` loads them).
    """
    X, y = _subset(store, layer, flatten, copies, rows)
    if load:
        X = np.array(X)
    return X, y


def iterate_batches(
    store: RowSource,
    layer: str | None = None,
    batch_size: int = 64,
    shuffle: bool = True,
    seed: int | None = None,
    flatten: bool = False,
    drop_remainder: bool = False,
    prefetch: int = 4,
    copies=None,
    rows=None,
):
    """An endless-epoch iterator factory: each call of the returned function yields one epoch
    of ``(features, labels)`` NumPy batches, read by a background thread, reshuffled each epoch.
    ``copies``/``rows`` choose rows as in :func:`arrays`."""
    epoch, read, features, labels = _epoch_source(store, layer, batch_size, shuffle, seed, flatten, drop_remainder,
                                                  copies, rows)  # fmt: skip

    def one_epoch():
        yield from ordered_map(read, epoch(), threads=1, ahead=max(0, int(prefetch) - 1))

    return one_epoch, features, labels


def _epoch_source(store, layer, batch_size, shuffle, seed, flatten, drop_remainder, copies, rows):
    """``(epoch, read, features, labels)``: ``epoch()`` gives the next epoch's batches of row
    indices (a new permutation each call), ``read(indices)`` one ``(features, labels)`` batch."""
    batch_size = _check_batch(batch_size)
    features, labels = _subset(store, layer, flatten, copies, rows)
    seed = int(np.random.SeedSequence().entropy % (2**63)) if seed is None else int(seed)
    epochs = itertools.count()

    def read(idx):
        return np.ascontiguousarray(features[idx]), labels[idx]

    def epoch():
        return epoch_batches(len(features), batch_size, shuffle, seed, next(epochs), drop_remainder)

    return epoch, read, features, labels


def to_dataset(
    store: RowSource,
    layer: str | None = None,
    batch_size: int = 64,
    shuffle: bool = True,
    seed: int | None = None,
    flatten: bool = False,
    drop_remainder: bool = False,
    prefetch: int = 4,
    copies=None,
    rows=None,
):
    """A ``tf.data.Dataset`` of ``(features, labels)`` batches for ``model.fit``.

    Args:
        store: an open store.
        layer: the feature key (may be omitted when there is only one).
        batch_size: rows per batch.
        shuffle: a new random order every epoch (each pass over the dataset).
        seed: makes the sequence of epoch orders reproducible.
        flatten: features as (batch, -1), for a Dense head without a Flatten layer.
        drop_remainder: drop the last, smaller batch.
        prefetch: batches read ahead by the background thread.
        copies: ``None`` every row, ``0`` only the images themselves (no augmented copies), or
            a list of copy ids. Validate on ``copies=0`` rows of held-out images only.
        rows: explicit row positions, e.g. ``train, val = store.split(0.2)`` then
            ``store.to_dataset(rows=train)`` and ``store.to_dataset(rows=val, copies=0)``.

    Returns:
        A ``tf.data.Dataset`` yielding (float features, int64 labels), one epoch per iteration
        (one iteration at a time), of known length. It shuffles itself: pass ``shuffle=False`` to
        ``model.fit`` (Keras otherwise warns that it ignores its own shuffle).

    The batches are read by a background thread that outlives the epoch (:mod:`fastfeat.feed`):
    it starts the next epoch's first batches as an epoch ends. Measured (2,000 rows of 1,280
    float32, batch 64, 2 cores): a ``from_generator`` epoch took 54.7 ms, 27.7 ms of it before the
    first batch.
    """
    epoch, read, features, _ = _epoch_source(store, layer, batch_size, shuffle, seed, flatten, drop_remainder,
                                             copies, rows)  # fmt: skip
    import tensorflow as tf

    from ..feed import EpochFeed, feed_dataset

    first = int(batch_size) if drop_remainder else None
    signature = (
        tf.TensorSpec((first,) + tuple(features.shape[1:]), tf.as_dtype(features.dtype)),
        tf.TensorSpec((first,), tf.int64),
    )
    n = len(features)
    batches = n // batch_size if drop_remainder else -(-n // batch_size)
    feed = EpochFeed(epoch, read, batches, threads=1, ahead=max(0, int(prefetch) - 1))
    return feed_dataset(feed, signature).prefetch(1)


def to_pydataset(
    store: RowSource,
    layer: str | None = None,
    batch_size: int = 64,
    shuffle: bool = True,
    seed: int | None = None,
    flatten: bool = False,
    copies=None,
    rows=None,
    **kwargs,
):
    """A ``keras.utils.PyDataset`` of ``(features, labels)`` batches, reshuffled at each epoch end.

    ``copies``/``rows`` choose rows as in :func:`to_dataset`. ``kwargs`` go to ``PyDataset``
    (``workers``, ``use_multiprocessing``, ``max_queue_size``).
    """
    batch_size = _check_batch(batch_size)
    features, labels = _subset(store, layer, flatten, copies, rows)
    import keras
    seed = int(np.random.SeedSequence().entropy % (2**63)) if seed is None else int(seed)

    class StorePyDataset(keras.utils.PyDataset):
        """Batches of a fastfeat store (see :func:`fastfeat.store.adapters.to_pydataset`)."""

        def __init__(self):
            super().__init__(**kwargs)
            self.epoch = 0
            self.batches = epoch_batches(len(features), batch_size, shuffle, seed, 0)

        def __len__(self):
            return len(self.batches)

        def __getitem__(self, i):
            idx = self.batches[i]
            return np.ascontiguousarray(features[idx]), labels[idx]

        def on_epoch_end(self):
            self.epoch += 1
            self.batches = epoch_batches(len(features), batch_size, shuffle, seed, self.epoch)

    return StorePyDataset()
