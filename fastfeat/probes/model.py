"""A trained probe as plain arrays: :class:`Classifier` and its NumPy ``predict_proba``.

Every classifier kind (linear, forest, kNN, dense head) is held as the model's own arrays plus a
few JSON-able parameters, so it can be saved without pickle (see :mod:`.persist`) and applied
without scikit-learn or TensorFlow. Tests check each kind against the library object it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Classifier kinds a probe file may hold.
KINDS = ("linear", "forest", "knn", "dense")
#: How a linear model's scores become probabilities (each mirrors a scikit-learn predict_proba).
LINKS = ("softmax", "ovr_logistic", "modified_huber", "platt")
#: Feature bytes (float32) predicted per step: bounds the memory of prediction.
PREDICT_BYTES = 2 * 2**20


@dataclass
class Classifier:
    """A probe ready to apply to feature rows of one store layer.

    Attributes:
        kind: one of :data:`KINDS`.
        classes: class names of the store, in label order: the columns of :meth:`predict_proba`.
        columns: (C,) int64 store label of each model output (classes absent from training get 0).
        arrays: the model's own arrays (``mean``/``scale`` standardization when used).
        params: JSON-able settings (``link`` of a linear model, ``k`` of kNN, ...).
        layer: the store's feature key the probe was trained on.
        feature_shape: shape of one row of that layer.
        store_meta: the run description of the training store (what ``classify`` re-extracts with).
    """

    kind: str
    classes: list[str]
    columns: np.ndarray
    arrays: dict[str, np.ndarray]
    params: dict = field(default_factory=dict)
    layer: str = ""
    feature_shape: tuple[int, ...] = ()
    store_meta: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(np.prod(self.feature_shape)) if self.feature_shape else 0

    def predict_proba(self, X) -> np.ndarray:
        """(n, len(classes)) float32 probabilities of feature rows ``X`` (n, *feature_shape) or (n, D).

        ``X`` may be a memory map or a store view: it is read about :data:`PREDICT_BYTES` at a time.
        """
        n = len(X)
        out = np.zeros((n, len(self.classes)), np.float32)
        step = max(1, min(4096, PREDICT_BYTES // max(1, 4 * self.n_features)))
        if self.kind == "knn":  # the (step, n_train) distance block too
            step = max(1, min(step, PREDICT_BYTES // (8 * max(1, len(self.arrays["train"])))))
        for start in range(0, n, step):
            rows = np.asarray(X[start : start + step])
            out[start : start + len(rows), self.columns] = self._proba(self._prepare(rows))
        return out

    def predict(self, X) -> np.ndarray:
        """(n,) int64 store labels of the most probable class."""
        return self.predict_proba(X).argmax(axis=1).astype(np.int64)

    # -- internals -------------------------------------------------------------------------
    def _prepare(self, rows: np.ndarray) -> np.ndarray:
        rows = rows.reshape(len(rows), -1)
        if rows.shape[1] != self.n_features:
            raise ValueError(
                f"These features have {rows.shape[1]} values per row; the classifier was trained on "
                f"{self.n_features} ({self.layer!r}, shape {tuple(self.feature_shape)}). Received: X.shape={rows.shape}"
            )
        rows = rows.astype(np.float32, copy=True)
        if "mean" in self.arrays:
            rows -= self.arrays["mean"]
            rows /= self.arrays["scale"]
        return rows

    def _proba(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "linear":
            return linear_proba(x @ self.arrays["coef"].T + self.arrays["intercept"], self.params["link"], self.arrays)
        if self.kind == "forest":
            return forest_proba(x, self.arrays)
        if self.kind == "knn":
            return knn_proba(x, self.arrays["train"], self.arrays["train_columns"], int(self.params["k"]),
                             len(self.columns))  # fmt: skip
        if self.kind == "dense":
            a = self.arrays
            hidden = np.maximum(x @ a["w1"] + a["b1"], 0)
            return softmax(hidden @ a["w2"] + a["b2"])
        raise ValueError(f"Unknown classifier kind. Received: kind={self.kind!r}")


def expit(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _normalize(p: np.ndarray) -> np.ndarray:
    total = p.sum(axis=1, keepdims=True)
    zero = total[:, 0] == 0
    p[zero] = 1.0
    total[zero] = p.shape[1]
    return p / total


def linear_proba(scores: np.ndarray, link: str, arrays: dict) -> np.ndarray:
    """Probabilities from linear scores (n, C), C = 1 for two classes, as scikit-learn computes them."""
    scores = scores.astype(np.float64)
    if link == "modified_huber":
        p = (np.clip(scores, -1, 1) + 1) / 2
    elif link == "platt":
        p = expit(-(arrays["platt_a"] * scores + arrays["platt_b"]))
    elif link in ("softmax", "ovr_logistic"):
        if scores.shape[1] > 1 and link == "softmax":
            return softmax(scores)
        p = expit(scores)
    else:
        raise ValueError(f"`link` must be one of {', '.join(LINKS)}. Received: link={link!r}")
    if p.shape[1] == 1:
        return np.hstack([1 - p, p])
    return _normalize(p)


def forest_proba(x: np.ndarray, a: dict) -> np.ndarray:
    """Mean of the trees' leaf class fractions; trees are concatenated node arrays (``tree_start``)."""
    starts = a["tree_start"]
    left, right, feature, threshold, value = a["left"], a["right"], a["feature"], a["threshold"], a["value"]
    out = np.zeros((len(x), value.shape[1]), np.float64)
    rows = np.arange(len(x))
    for root in starts:
        node = np.full(len(x), root, np.int64)
        inner = left[node] >= 0
        while inner.any():
            at = node[inner]
            go_left = x[rows[inner], feature[at]] <= threshold[at]
            node[inner] = np.where(go_left, left[at], right[at])
            inner = left[node] >= 0
        out += value[node]
    return out / len(starts)


def knn_proba(x: np.ndarray, train: np.ndarray, train_columns: np.ndarray, k: int, n_columns: int) -> np.ndarray:
    """Share of each class among the ``k`` nearest training rows (Euclidean, uniform weights)."""
    d = (x * x).sum(axis=1, keepdims=True) - 2 * (x @ train.T) + (train * train).sum(axis=1)
    k = min(k, len(train))
    if k < len(train):
        nearest = np.argpartition(d, k - 1, axis=1)[:, :k]
    else:
        nearest = np.broadcast_to(np.arange(len(train)), d.shape)
    votes = train_columns[nearest]
    out = np.zeros((len(x), n_columns), np.float64)
    np.add.at(out, (np.repeat(np.arange(len(x)), k), votes.ravel()), 1.0)
    return out / k
