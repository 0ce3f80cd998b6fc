"""``fastfeat show``: pictures of stored features. A grid of the channel activation maps of one
image (the courses' "visualizing intermediate activations") and a 2-D embedding (PCA, or t-SNE)
of pooled features coloured by class."""

from __future__ import annotations

import os
import re

import numpy as np

from ._deps import require
from .data import layer_key as _layer_key

EMBEDDINGS = ("pca", "tsne")
#: Channels drawn by default (the first ones).
DEFAULT_CHANNELS = 32


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def find_row(store, image) -> int:
    """Row of ``image``: a row number, or a path as stored (``class/file.jpg``); its plain row."""
    if isinstance(image, (int, np.integer)) and not isinstance(image, bool):
        if not 0 <= int(image) < len(store):
            raise ValueError(f"`image` must be a row in [0, {len(store)}) or a stored path. Received: image={image!r}")
        return int(image)
    copies = np.asarray(store.copies)
    for i, p in enumerate(store.paths):
        if p == os.fspath(image) and copies[i] == 0:
            return i
    raise ValueError(
        f"`image` is not a path of this store (paths look like {store.paths[:1]}). Received: image={image!r}"
    )


def activations(store, layer: str | None, output_dir: str, image=0, channels=None) -> str:
    """PNG of the channels of one (H, W, C) feature map; returns its path."""
    from .plots import activation_grid_png

    key = _layer_key(store, layer)
    shape = store.shape(key)[1:]
    if len(shape) != 3:
        raise ValueError(f"Activation maps need an (H, W, C) layer; {key!r} rows have shape {shape} "
                         f"(pooled?). Received: layer={key!r}")  # fmt: skip
    row = find_row(store, image)
    chosen = list(range(min(DEFAULT_CHANNELS, shape[-1]))) if channels is None else [int(c) for c in channels]
    bad = [c for c in chosen if not 0 <= c < shape[-1]]
    if bad or not chosen:
        raise ValueError(f"`channels` must lie in [0, {shape[-1]}). Received: channels={channels!r}")
    fmap = np.asarray(store.features(key)[row])
    path = os.path.join(output_dir, f"activations_{_safe(key)}_row{row}.png")
    return activation_grid_png(fmap, path, title=f"{key} of {store.paths[row]}", channels=chosen)


def pooled(store, key: str, rows: np.ndarray) -> np.ndarray:
    """(len(rows), C) float32: feature maps averaged over their spatial axes, vectors as they are."""
    view = store.features(key)
    out = []
    for start in range(0, len(rows), 256):
        x = np.asarray(view[rows[start : start + 256]], np.float32)
        out.append(x.reshape(len(x), -1, x.shape[-1]).mean(axis=1) if x.ndim > 2 else x.reshape(len(x), -1))
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def embedding(store, layer: str | None, output_dir: str, method: str = "pca", max_points: int = 2000,
              seed: int = 0) -> str:  # fmt: skip
    """PNG of a 2-D embedding of (spatially averaged) features of up to ``max_points`` images."""
    if method not in EMBEDDINGS:
        raise ValueError(f"`method` must be one of {', '.join(EMBEDDINGS)}. Received: method={method!r}")
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or max_points < 3:
        raise ValueError(f"`max_points` must be an integer >= 3. Received: max_points={max_points!r}")
    require("sklearn")
    from .plots import embedding_png

    key = _layer_key(store, layer)
    rows = store.rows_of(0)
    if len(rows) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_points, replace=False))
    if len(rows) < 3:
        raise ValueError(f"An embedding needs at least 3 images. Received: {len(rows)} plain rows")
    x = pooled(store, key, rows)
    x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 1e-12, x.std(axis=0), 1)
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed)
        points = pca.fit_transform(x) if x.shape[1] >= 2 else np.hstack([x, np.zeros_like(x)])
        share = pca.explained_variance_ratio_.sum() if x.shape[1] >= 2 else 1.0
        title = f"PCA of {key} ({share:.0%} of the variance), {len(rows)} images"
    else:
        from sklearn.manifold import TSNE

        points = TSNE(n_components=2, perplexity=min(30.0, (len(rows) - 1) / 3), init="pca",
                      random_state=seed).fit_transform(x)  # fmt: skip
        title = f"t-SNE of {key}, {len(rows)} images"
    path = os.path.join(output_dir, f"embedding_{method}_{_safe(key)}.png")
    return embedding_png(points, np.asarray(store.labels)[rows], store.class_names, path, title)


def show(
    store,
    layer: str | None = None,
    output_dir: str | os.PathLike = ".",
    *,
    activation_maps: bool | None = None,
    image=0,
    channels=None,
    method: str | None = "pca",
    max_points: int = 2000,
    seed: int = 0,
) -> list[str]:
    """Write the pictures of ``layer`` into ``output_dir``; returns the PNG paths.

    Args:
        store: a store path or an open :class:`~fastfeat.FeatureStore`.
        layer: the feature key (may be omitted when the store has one).
        output_dir: where the PNGs go (created).
        activation_maps: draw the channel grid of ``image`` (default: when the layer is a feature map).
        image: row number or stored path of the image whose activations are drawn.
        channels: channel numbers to draw (default: the first 32).
        method: embedding, ``pca`` or ``tsne``; ``None`` for no embedding.
        max_points: images drawn in the embedding (a seeded sample of the plain rows).
        seed: the sample and the embedding.
    """
    from ..store import open_store

    owned = not hasattr(store, "features")
    store = open_store(store) if owned else store
    try:
        output_dir = os.fspath(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        maps = len(store.shape(_layer_key(store, layer))) == 4
        written = []
        if activation_maps or (activation_maps is None and maps):
            written.append(activations(store, layer, output_dir, image=image, channels=channels))
        if method is not None:
            written.append(embedding(store, layer, output_dir, method=method, max_points=max_points, seed=seed))
        if not written:
            raise ValueError("Nothing to draw: pass activation_maps=True or an embedding method. Received: method=None")
        return written
    finally:
        if owned:
            store.close()
