"""``image_dataset``: a fast drop-in for ``flow_from_directory`` / ``image_dataset_from_directory``.

The pipeline (the extract loader's, see :mod:`fastfeat.loader`)::

    catalog positions -> order and per-image random keys for this epoch (from seed and epoch)
        -> batches -> ordered parallel map on worker threads (per batch: read + decode + resize
           every image into one buffer, drop unreadable, fused augment + normalize kernel,
           labels; one batch per core at once, OpenCV and Numba release the GIL)
        -> tf.data (:mod:`fastfeat.feed`: ``range().map(numpy_function)``, known cardinality; the
           workers outlive the epoch and start on the next one's first batches)

Each iteration of the dataset is one epoch (``model.fit`` iterates it once per epoch): a new
shuffle and new augmentation draws every epoch, the same sequence of epochs for the same ``seed``.
The worker threads stay with the dataset and start the next epoch's first batches as soon as an
epoch's last ones are under way, so epochs follow each other without the pipeline emptying;
iterate a dataset once at a time (a second iteration running at the same time raises).
The catalog rules are :func:`fastfeat.build_catalog`'s (the same as ``fastfeat extract``). Each
image's augmentation parameters depend on ``(seed, key)``, where ``key`` is drawn per image and
epoch. Unreadable images are dropped from their batch (they never reach the model; that batch is
smaller), with one warning per dataset; ``dataset.unreadable`` maps their paths to the reason.
"""

from __future__ import annotations

import itertools
import os
import threading
import warnings

import numpy as np

from . import checks
from .augment import Augment
from .catalog import IMAGE_EXTENSIONS, Catalog, build_catalog
from .decode import DEFAULT_MAX_PIXELS
from .feed import EpochFeed, feed_dataset
from .loader import DecodeOptions, Loader, pipeline_threads
from .preprocess import Normalization, resolve_preprocess  # noqa: F401 -- resolve_preprocess re-exported

LABEL_MODES = ("int", "categorical", "binary", None)
SUBSETS = ("training", "validation", "both")


def _check_args(image_size, batch_size, label_mode, validation_split, subset, shuffle, seed, augment):
    image_size = checks.image_size(image_size, allow_none=False)
    checks.positive_int(batch_size, "batch_size")
    if label_mode not in LABEL_MODES:
        raise ValueError(
            f"`label_mode` must be one of 'int', 'categorical', 'binary' or None. Received: label_mode={label_mode!r}"
        )
    if validation_split is not None and not 0 < validation_split < 1:
        raise ValueError(
            f"`validation_split` must be strictly between 0 and 1. Received: validation_split={validation_split!r}"
        )
    if (validation_split is None) != (subset is None):
        raise ValueError(
            "`validation_split` and `subset` go together: give both or neither. "
            f"Received: validation_split={validation_split!r}, subset={subset!r}"
        )
    if subset is not None and subset not in SUBSETS:
        raise ValueError(f"`subset` must be 'training', 'validation' or 'both'. Received: subset={subset!r}")
    if validation_split is not None and shuffle and seed is None:
        raise ValueError(
            "If using `validation_split` and shuffling the data, you must provide a `seed` argument, so that "
            f"training and validation subsets do not overlap. Received: seed={seed!r}"
        )
    if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)):
        raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}")
    if isinstance(augment, dict):
        augment = Augment.from_dict(augment)
    if augment is not None and not isinstance(augment, Augment):
        raise ValueError(f"`augment` must be None, an Augment, or its dict. Received: augment={augment!r}")
    return image_size, augment


def split_positions(n: int, validation_split: float | None, shuffle: bool, seed: int | None):
    """``(training, validation)`` catalog positions, each sorted; disjoint and together complete.

    The same split as ``keras.utils.image_dataset_from_directory`` for the same ``seed`` and files:
    with ``shuffle`` the file list is permuted by ``np.random.RandomState(seed)`` (as Keras'
    ``index_directory`` does) and the last ``int(split * n)`` go to validation; without it the
    catalog's last items are the validation set. (The catalog lists files in Keras' order; a folder
    holding formats Keras skips, such as TIFF or WebP, has other files and so another split.)
    """
    order = np.random.RandomState(seed).permutation(n) if shuffle else np.arange(n)
    num_val = int(validation_split * n) if validation_split else 0
    return np.sort(order[: n - num_val]), np.sort(order[n - num_val :])


def image_dataset(
    directory: str | os.PathLike,
    image_size: tuple[int, int] = (224, 224),
    batch_size: int = 32,
    preprocess: str | Normalization | None = None,
    augment: Augment | dict | None = None,
    shuffle: bool = True,
    seed: int | None = None,
    validation_split: float | None = None,
    subset: str | None = None,
    interpolation: str = "bilinear",
    classes: list[str] | None = None,
    label_mode: str | None = "int",
    follow_links: bool = False,
    exif: bool = False,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    reduced_decode: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    cache: str | os.PathLike | None = None,
):
    """A ``tf.data.Dataset`` of ``(images, labels)`` batches for ``model.fit``, from a folder of images.

    Args:
        directory: a folder of class subfolders (or a flat folder, or a .txt/.csv file list), read
            with :func:`fastfeat.build_catalog`'s rules.
        image_size: (height, width) the images are resized to.
        batch_size: images per batch (the last batch may be smaller).
        preprocess: a model short name (its ``preprocess_input``), a mode (``caffe``, ``tf``, ``torch``,
            ``rescale``, ``none``), or ``None`` (the default) for raw 0..255 float32 as Keras'
            loaders give, for models that normalize inside (or with a preprocessing layer).
        augment: an :class:`fastfeat.Augment` (or its dict) applied to every image, new draws each epoch.
        shuffle: reshuffle the images every epoch (else catalog order).
        seed: makes the shuffles, the split and the augmentation reproducible (random if ``None``).
        validation_split: fraction held out for validation (with ``subset``).
        subset: ``training``, ``validation`` or ``both`` (returns a pair).
        interpolation: resize method (``nearest`` reproduces ``flow_from_directory``'s pixels).
        classes: fixes the class names and their order.
        label_mode: ``int`` (int32), ``categorical`` (one-hot float32), ``binary`` (float32 (b, 1),
            two classes), or ``None`` (images only).
        follow_links: enter symlinked folders.
        exif: apply EXIF orientation (Keras does not).
        extensions: image file extensions to keep.
        reduced_decode: allow JPEG DCT-domain downscaling for images at least twice the target
            size (faster; never used with ``nearest``, which must match Keras' pixels).
        max_pixels: refuse images declaring more pixels than this (``None``: no limit).
        cache: a decoded-image cache file (:func:`fastfeat.build_cache`) to read images from
            instead of decoding them; built first if it does not exist. The batches are the same
            as without it; a cache made with other decode settings, or older than its files, is
            refused (:class:`fastfeat.cache.StaleCacheError` says what changed).

    Returns:
        The dataset (or a ``(training, validation)`` pair for ``subset="both"``), with attributes
        ``class_names``, ``file_paths`` (absolute, catalog order; with ``shuffle=False`` the order
        the images come in) and ``unreadable`` (path -> reason, filled as images fail). Each
        iteration is the next epoch; one iteration at a time (make one dataset per concurrent
        reader).

    Raises:
        ValueError: on invalid arguments (the message names the argument).

    Example::

        train, val = fastfeat.image_dataset("data/train", preprocess="vgg19", seed=1, validation_split=0.2,
                                            subset="both", augment=fastfeat.Augment(rotation_range=30,
                                            horizontal_flip=True), label_mode="categorical")
        model.fit(train, validation_data=val, epochs=10, shuffle=False)  # the dataset shuffles itself;
        # Keras 3 warns about shuffle=True (its default) with any tf.data.Dataset.
    """
    image_size, augment = _check_args(image_size, batch_size, label_mode, validation_split, subset, shuffle, seed,
                                      augment)  # fmt: skip
    norm = resolve_preprocess(preprocess)
    options = DecodeOptions(size=image_size, interpolation=interpolation, exif=exif, reduced=reduced_decode,
                            max_pixels=max_pixels)  # fmt: skip
    catalog = build_catalog(directory, classes=classes, follow_links=follow_links, extensions=extensions)
    if label_mode is not None and not catalog.labeled:
        raise ValueError(
            f"{os.fspath(directory)!r} has no class subfolders (or labels), so there is nothing to label: pass "
            f"label_mode=None. Received: label_mode={label_mode!r}"
        )
    if label_mode == "binary" and len(catalog.class_names) != 2:
        raise ValueError(
            f"label_mode='binary' needs exactly 2 classes; found {len(catalog.class_names)}: {catalog.class_names}. "
            f"Received: label_mode={label_mode!r}"
        )
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31 - 1))
    training, validation = split_positions(len(catalog), validation_split, shuffle, seed)
    build = dict(catalog=catalog, options=options, norm=norm, augment=augment, batch_size=int(batch_size),
                 shuffle=shuffle, seed=int(seed), label_mode=label_mode)  # fmt: skip
    if cache is not None:  # lazy: the cache module is not needed without one
        from .cache import ensure_cache

        build["cache"] = ensure_cache(cache, catalog, options)
    if subset == "both":
        return _build(training, **build), _build(validation, **build)
    positions = validation if subset == "validation" else training
    if len(positions) == 0:
        raise ValueError(f"The {subset or 'requested'} subset of {os.fspath(directory)!r} is empty. "
                         f"Received: validation_split={validation_split!r}")  # fmt: skip
    return _build(positions, **build)


def _build(positions, catalog: Catalog, options, norm, augment, batch_size, shuffle, seed, label_mode, cache=None):
    import tensorflow as tf

    h, w = options.size
    transform = augment.batch_transform(norm, seed=seed, copy=0) if augment is not None else None
    loader = Loader(catalog, options, normalization=norm, transform=transform, cache=cache)
    unreadable: dict[str, str] = {}
    lock = threading.Lock()

    def note_unreadable(position: int) -> None:
        path = catalog.abspath(position)
        with lock:
            first = not unreadable
            unreadable[path] = loader.reasons.get(position, "unreadable")
        if first:
            warnings.warn(
                f"image_dataset: skipping unreadable image {path} ({unreadable[path]}). Unreadable images are "
                "dropped without further warnings; see `dataset.unreadable`.",
                UserWarning,
                stacklevel=2,
            )

    labels = catalog.labels.astype(np.int32)
    num_classes = len(catalog.class_names)

    def load_batch(batch):
        """One call per batch on a worker thread: decode every image into one buffer, drop the
        unreadable ones, then the fused augment + normalize kernel, and the labels."""
        batch_positions, batch_keys = batch
        images, ok = loader.decode_batch(batch_positions, reuse=True)
        for position in batch_positions[~ok]:
            note_unreadable(int(position))
        if not ok.all():  # dropped here, not by a filter before batching: the number of batches
            images, batch_positions, batch_keys = images[ok], batch_positions[ok], batch_keys[ok]
        x = loader.normalize(images, batch_keys)  # stays known to model.fit
        if label_mode is None:
            return x
        y = labels[batch_positions]
        if label_mode == "categorical":  # an unlabeled row (-1, file lists) is all zeros, as tf.one_hot gives
            y = (y[:, None] == np.arange(num_classes)).astype(np.float32)
        elif label_mode == "binary":
            y = y.astype(np.float32)[:, None]
        return x, y

    positions = np.asarray(positions, np.int64)
    epochs = itertools.count()

    def one_epoch():
        """A new order (if shuffling) and new augmentation streams each epoch, from ``seed``."""
        rng = np.random.default_rng([seed, next(epochs)])
        order = rng.permutation(positions) if shuffle else positions
        keys = rng.integers(0, 2**63 - 1, len(order), dtype=np.int64)  # per-image augmentation streams
        return [(order[i : i + batch_size], keys[i : i + batch_size]) for i in range(0, len(order), batch_size)]

    x_spec = tf.TensorSpec((None, h, w, 3), tf.float32)
    y_spec = {
        "int": tf.TensorSpec((None,), tf.int32),
        "categorical": tf.TensorSpec((None, num_classes), tf.float32),
        "binary": tf.TensorSpec((None, 1), tf.float32),
    }.get(label_mode)
    signature = x_spec if y_spec is None else (x_spec, y_spec)
    feed = EpochFeed(one_epoch, load_batch, -(-len(positions) // batch_size), pipeline_threads())
    ds = feed_dataset(feed, signature)
    ds.class_names = list(catalog.class_names)
    ds.file_paths = [catalog.abspath(int(p)) for p in positions]
    ds.unreadable = unreadable
    ds._fastfeat_feed = feed  # for benchmarks (EpochFeed.wait_idle); not an API
    return ds
