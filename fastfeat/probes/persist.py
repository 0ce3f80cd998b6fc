"""Saving and loading a :class:`~.model.Classifier` without pickle.

A probe directory holds ``classifier.json`` (kind, classes, layer, parameters, the run
description of the training store) and ``classifier.npz`` (the model's own numeric arrays).
Loading parses JSON and reads the arrays with ``np.load(allow_pickle=False)``, then checks every
name, dtype and shape against what the kind needs: a file from an untrusted source can fail to
load, but it cannot run code.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .model import KINDS, LINKS, Classifier

FORMAT = "fastfeat-classifier"
VERSION = 1
JSON_NAME = "classifier.json"
NPZ_NAME = "classifier.npz"

#: Arrays each kind needs (standardization ``mean``/``scale`` is optional for every kind).
REQUIRED = {
    "linear": ("coef", "intercept"),
    "forest": ("tree_start", "left", "right", "feature", "threshold", "value"),
    "knn": ("train", "train_columns"),
    "dense": ("w1", "b1", "w2", "b2"),
}
OPTIONAL = ("mean", "scale", "platt_a", "platt_b")


class ClassifierFileError(ValueError):
    """A probe directory that is not a valid fastfeat classifier."""


def save_classifier(clf: Classifier, directory: str | os.PathLike) -> str:
    """Write ``clf`` into ``directory`` (created if needed); returns the JSON file's path."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    _check(clf, directory)
    np.savez(os.path.join(directory, NPZ_NAME), **{k: np.ascontiguousarray(v) for k, v in clf.arrays.items()},
             columns=np.asarray(clf.columns, np.int64))  # fmt: skip
    doc = {
        "format": FORMAT, "version": VERSION, "kind": clf.kind, "classes": list(clf.classes),
        "layer": clf.layer, "feature_shape": [int(d) for d in clf.feature_shape], "params": clf.params,
        "store_meta": clf.store_meta,
    }  # fmt: skip
    path = os.path.join(directory, JSON_NAME)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, default=str)
    return path


def load_classifier(directory: str | os.PathLike) -> Classifier:
    """Load a classifier saved by :func:`save_classifier` (or a probe's output directory).

    Raises:
        ClassifierFileError: the files are not a well-formed classifier (nothing in them is executed).
    """
    directory = os.fspath(directory)
    json_path, npz_path = os.path.join(directory, JSON_NAME), os.path.join(directory, NPZ_NAME)
    for p in (json_path, npz_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(
                f"No classifier in {directory!r}: {os.path.basename(p)} is missing "
                f"(write one with `fastfeat probe ... -o DIR`). Received: directory={directory!r}"
            )
    try:
        with open(json_path, encoding="utf-8") as f:
            doc = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClassifierFileError(f"{json_path!r} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ClassifierFileError(f"{json_path!r} is not a fastfeat classifier (format {FORMAT!r} version {VERSION}).")
    arrays = {}
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            for name in npz.files:
                arrays[name] = npz[name]
    except ValueError as e:  # object arrays need pickle, which is refused
        raise ClassifierFileError(f"{npz_path!r} holds something other than plain numeric arrays: {e}") from None
    except (OSError, EOFError) as e:
        raise ClassifierFileError(f"{npz_path!r} is not a readable .npz file: {e}") from None
    columns = arrays.pop("columns", None)
    try:
        clf = Classifier(
            kind=doc["kind"], classes=doc["classes"], columns=columns, arrays=arrays,
            params=doc.get("params") or {}, layer=doc.get("layer", ""), feature_shape=tuple(doc["feature_shape"]),
            store_meta=doc.get("store_meta") or {},
        )  # fmt: skip
    except (KeyError, TypeError) as e:
        raise ClassifierFileError(f"{json_path!r} lacks a field of a classifier: {e}") from None
    _check(clf, directory)
    return clf


def _fail(directory, what):
    raise ClassifierFileError(f"The classifier in {directory!r} is malformed: {what}")


def _check(clf: Classifier, directory: str) -> None:
    """Names, dtypes and shapes of everything a kind uses, so prediction cannot index out of bounds."""
    if clf.kind not in KINDS:
        _fail(directory, f"kind must be one of {', '.join(KINDS)}. Received: kind={clf.kind!r}")
    if not isinstance(clf.classes, list) or not all(isinstance(c, str) for c in clf.classes) or not clf.classes:
        _fail(directory, f"classes must be a non-empty list of names. Received: classes={clf.classes!r}")
    if not isinstance(clf.params, dict) or not isinstance(clf.store_meta, dict) or not isinstance(clf.layer, str):
        _fail(directory, "params and store_meta must be objects, layer a string")
    if not all(isinstance(d, int) and d > 0 for d in clf.feature_shape) or not clf.feature_shape:
        _fail(directory, f"feature_shape must be positive integers. Received: feature_shape={clf.feature_shape!r}")
    K, D = len(clf.classes), clf.n_features
    a = clf.arrays
    for name in REQUIRED[clf.kind]:
        if name not in a:
            _fail(directory, f"a {clf.kind} classifier needs the array {name!r}")
    for name, arr in list(a.items()) + [("columns", clf.columns)]:
        if name != "columns" and name not in REQUIRED[clf.kind] + OPTIONAL:
            _fail(directory, f"unexpected array {name!r}")
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iuf":
            _fail(directory, f"{name!r} must be a numeric array. Received: {getattr(arr, 'dtype', type(arr))}")
    cols = clf.columns
    if cols.ndim != 1 or len(cols) < 1 or len(np.unique(cols)) != len(cols) or cols.min() < 0 or cols.max() >= K:
        _fail(directory, f"columns must be distinct labels in [0, {K})")
    C = len(cols)

    def shape(name, expected):
        if a[name].shape != expected:
            _fail(directory, f"{name!r} must have shape {expected}. Received: {a[name].shape}")

    if "mean" in a or "scale" in a:
        shape("mean", (D,)) if "mean" in a else _fail(directory, "scale without mean")
        shape("scale", (D,)) if "scale" in a else _fail(directory, "mean without scale")
    if clf.kind == "linear":
        link = clf.params.get("link")
        if link not in LINKS:
            _fail(directory, f"link must be one of {', '.join(LINKS)}. Received: link={link!r}")
        rows = 1 if C == 2 else C
        shape("coef", (rows, D))
        shape("intercept", (rows,))
        if link == "platt":
            shape("platt_a", (rows,))
            shape("platt_b", (rows,))
    elif clf.kind == "forest":
        n = len(a["left"])
        for name in ("right", "feature", "threshold"):
            shape(name, (n,))
        shape("value", (n, C))
        for name in ("left", "right", "feature", "tree_start"):
            if a[name].dtype.kind not in "iu":
                _fail(directory, f"{name!r} must hold integers")
        st, left, right, feat = a["tree_start"], a["left"], a["right"], a["feature"]
        inner = left >= 0
        if st.ndim != 1 or not len(st) or st.min() < 0 or st.max() >= n:
            _fail(directory, "tree_start must be node positions")
        if (left[inner] >= n).any() or (right[inner] < 0).any() or (right[inner] >= n).any():
            _fail(directory, "child positions out of range")
        if (left[inner] <= np.flatnonzero(inner)).any() or (right[inner] <= np.flatnonzero(inner)).any():
            _fail(directory, "children must come after their parent (no cycles)")
        if (feat[inner] < 0).any() or (feat[inner] >= D).any():
            _fail(directory, "split features out of range")
    elif clf.kind == "knn":
        train, tc = a["train"], a["train_columns"]
        if train.ndim != 2 or train.shape[1] != D or tc.shape != (len(train),) or tc.dtype.kind not in "iu":
            _fail(directory, "train must be (n, D) with one train_columns entry per row")
        if len(tc) and (tc.min() < 0 or tc.max() >= C):
            _fail(directory, "train_columns out of range")
        k = clf.params.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            _fail(directory, f"k must be a positive integer. Received: k={k!r}")
    elif clf.kind == "dense":
        h = a["w1"].shape[1] if a["w1"].ndim == 2 else -1
        shape("w1", (D, h))
        shape("b1", (h,))
        shape("w2", (h, C))
        shape("b2", (C,))
