"""Which rows: image identity, copy selection and the train/validation split of a store.

A row's image identity is its ``/index`` value: the position of its source image in the store's
catalog. In a store written by one run that is the catalog position; in a merged store it is the
position in the concatenation of the inputs' catalogs (see :mod:`fastfeat.store.merge`), so every
source image has one identity and the augmented copies of an image share it. Everything here
takes plain arrays (or any object with ``rows``, ``index``, ``copies`` and ``labels``) and never
imports the reader, TensorFlow or h5py.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class RowSource(Protocol):
    """What row selection reads from a store (``FeatureStore`` is one)."""

    @property
    def index(self) -> np.ndarray: ...

    @property
    def copies(self) -> np.ndarray: ...

    @property
    def labels(self) -> np.ndarray: ...

    def __len__(self) -> int: ...

    def features(self, layer: str | None = None, flatten: bool = False): ...


def copy_ids(copies) -> np.ndarray:
    """``copies`` (``0``, a copy id or a list of them) as an int64 array, validated."""
    ids = np.atleast_1d(np.asarray(copies))
    if ids.dtype.kind not in "iu" or ids.ndim != 1 or (ids.size and ids.min() < 0):
        raise ValueError(
            f"`copies` must be None, 0 (no augmented copies), a copy id or a list of copy ids >= 0. "
            f"Received: copies={copies!r}"
        )
    return ids.astype(np.int64)


def select_rows(store: RowSource, copies=None, rows=None, images=None) -> np.ndarray | None:
    """Sorted row positions chosen by ``copies``, ``rows`` and ``images`` (``None``: every row).

    ``copies``: ``None`` (every row), ``0`` (the images themselves, no augmented copies), an int
    ``k`` or a list of copy ids. ``rows``: explicit row positions (e.g. from
    :meth:`FeatureStore.split`). ``images``: image identities (``index`` values): every row of
    those images. Given together, a row must satisfy each.
    """
    if copies is None and rows is None and images is None:
        return None
    n = len(store)
    chosen = np.arange(n, dtype=np.int64) if rows is None else np.unique(np.asarray(rows, np.int64))
    if chosen.size and (chosen[0] < 0 or chosen[-1] >= n):
        raise IndexError(f"`rows` must lie in [0, {n}). Received: rows from {chosen[0]} to {chosen[-1]}")
    if copies is not None:
        chosen = chosen[np.isin(np.asarray(store.copies)[chosen], copy_ids(copies))]
    if images is not None:
        wanted = np.atleast_1d(np.asarray(images))
        if wanted.dtype.kind not in "iu" or wanted.ndim != 1:
            raise ValueError(f"`images` must be image ids (ints, `index` values). Received: images={images!r}")
        chosen = chosen[np.isin(np.asarray(store.index)[chosen], wanted)]
    return chosen


def held_out_images(
    index: np.ndarray, labels: np.ndarray, fraction: float, seed: int | None, stratify: bool = True
) -> np.ndarray:
    """The image ids held out: ``round(images * fraction)`` of them, drawn with ``seed``.

    With ``stratify`` each class (the unlabeled images form one more) gives its share of the
    held-out images, rounded by largest remainder so the total is the same as without: a
    validation set with the classes in the proportions of the whole store.
    """
    images, first = np.unique(np.asarray(index), return_index=True)
    total = int(round(len(images) * float(fraction)))
    rng = np.random.default_rng(seed)
    if not stratify:
        return np.sort(rng.permutation(images)[:total])
    image_labels = np.asarray(labels)[first]
    classes, counts = np.unique(image_labels, return_counts=True)
    quota = counts * float(fraction)
    take = np.floor(quota).astype(np.int64)
    short = total - int(take.sum())
    if short > 0:  # largest remainders first; ties in class order
        order = np.lexsort((np.arange(len(classes)), -(quota - take)))
        take[order[:short]] += 1
    held = [rng.permutation(images[image_labels == c])[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(held)) if held else images[:0]


def split_rows(
    store: RowSource,
    fraction: float = 0.2,
    seed: int | None = 0,
    copies=None,
    val_copies=0,
    stratify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) by image: see :meth:`FeatureStore.split`."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating, np.integer)) or not (
        0.0 <= float(fraction) <= 1.0
    ):
        raise ValueError(f"`fraction` must be a number in [0, 1]. Received: fraction={fraction!r}")
    if not isinstance(stratify, (bool, np.bool_)):
        raise ValueError(f"`stratify` must be True or False. Received: stratify={stratify!r}")
    index = np.asarray(store.index)
    held = held_out_images(index, np.asarray(store.labels), fraction, seed, bool(stratify))
    is_val = np.isin(index, held)
    train, val = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if copies is not None:
        train = np.intersect1d(train, select_rows(store, copies))
    if val_copies is not None:
        val = np.intersect1d(val, select_rows(store, val_copies))
    return train.astype(np.int64), val.astype(np.int64)


def rebase_parts(index: np.ndarray, part_rows: list[int]) -> np.ndarray:
    """Distinct identities for a store merged before merge rebased ``/index``: each part's
    positions shifted past the largest of the parts before it."""
    index = np.asarray(index, np.int64).copy()
    base, start = 0, 0
    for rows in part_rows:
        part = index[start : start + int(rows)]
        top = int(part.max()) + 1 if len(part) else 0
        part += base
        base, start = base + top, start + int(rows)
    return index
