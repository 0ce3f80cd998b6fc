"""Synthetic stores for the probe tests: Gaussian class clusters written with StoreWriter."""

from __future__ import annotations

import numpy as np

from fastfeat.store import StoreWriter


def clusters(n_per_class, k, d, separation=1.0, seed=0, shape=None):
    """(X float32, y) of ``k`` Gaussian clusters with unit noise, centres ``separation`` apart on average."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * separation
    y = np.repeat(np.arange(k), n_per_class)
    X = (centres[y] + rng.normal(size=(len(y), d))).astype(np.float32)
    order = rng.permutation(len(y))
    X, y = X[order], y[order]
    if shape is not None:
        X = X.reshape((len(X),) + tuple(shape))
    return X, y


def write_cluster_store(path, X, y, class_names=None, key="feat", copies=0, dtype="float32", batch=256,
                        compression=None, seed=1):  # fmt: skip
    """A store of rows X (label y), image k at catalog position k, plus ``copies`` noisy augmented copies."""
    k = int(y.max()) + 1
    class_names = class_names or [f"class{i}" for i in range(k)]
    w = StoreWriter(
        path, {key: (X.shape[1:], dtype)}, capacity=len(X) * (1 + copies), class_names=class_names,
        meta={"model": "synthetic", "layers": [key]}, mode="overwrite", compression=compression,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    for s in range(0, len(X), batch):
        pos = np.arange(s, min(s + batch, len(X)))
        for c in range(copies + 1):
            feats = X[pos] if c == 0 else (X[pos] + 0.3 * rng.normal(size=X[pos].shape)).astype(np.float32)
            w.append({key: feats}, y[pos], [f"{class_names[y[i]]}/img_{i}.png" for i in pos], pos,
                     np.full(len(pos), c, np.int32))  # fmt: skip
        w.commit()
    w.close(complete=True)
    return str(path)
