"""``fastfeat classify``: apply a saved probe to new images, extracting their features with exactly
the settings recorded in the training store (model, weights, layer, size, interpolation,
preprocessing, precision, dtype, decoding)."""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from .persist import load_classifier

#: Store settings passed back to ``fastfeat.extract`` (name in the store's meta -> extract argument).
_SETTINGS = {
    "interpolation": "interpolation", "preprocess": "preprocess", "dtype": "dtype", "exif": "exif",
    "reduced_decode": "reduced_decode", "max_pixels": "max_pixels", "follow_links": "follow_links",
}  # fmt: skip


@dataclass
class ClassifyResult:
    """Predictions of :func:`classify`, one entry per file in catalog order.

    Attributes:
        rows: dicts with ``path``, ``predicted``, ``probability``, ``top`` ([(class, p)] of the
            top-k), ``label`` (the file's folder class, or ``None``) and ``error`` (why the file
            could not be read, or ``None``).
        output: the CSV written (``None`` if none).
    """

    rows: list = field(default_factory=list)
    output: str | None = None

    @property
    def failures(self) -> list:
        return [r for r in self.rows if r["error"] is not None]

    def summary(self) -> str:
        ok = len(self.rows) - len(self.failures)
        lines = [f"fastfeat classify: {ok} images classified, {len(self.failures)} unreadable"
                 + (f" -> {self.output}" if self.output else "")]  # fmt: skip
        lines += [f"  unreadable: {r['path']}: {r['error']}" for r in self.failures[:10]]
        return "\n".join(lines)


def extract_settings(meta: dict) -> dict:
    """``fastfeat.extract`` keyword arguments that reproduce the store described by ``meta``."""
    if not meta.get("model") or not meta.get("image_size"):
        raise ValueError(
            "This classifier was trained on a store without a recorded extraction run (model, image size): "
            f"it cannot extract new images the same way. Received: model={meta.get('model')!r}"
        )
    weights = meta.get("weights")
    if weights == "model file":
        weights = None
    elif weights not in (None, "imagenet") and not os.path.exists(weights):
        raise FileNotFoundError(f"The weights file the store was extracted with is gone: {weights!r}")
    model = meta["model"]
    if os.path.isabs(model) and not os.path.exists(model):
        raise FileNotFoundError(f"The model file the store was extracted with is gone: {model!r}")
    out = {"model": model, "weights": weights, "image_size": tuple(int(d) for d in meta["image_size"]),
           "precision": meta.get("precision") or "float32"}  # fmt: skip
    out.update({arg: meta[key] for key, arg in _SETTINGS.items() if key in meta})
    if isinstance(meta.get("batch_size"), int):
        out["batch_size"] = meta["batch_size"]
    return out


def classify(
    classifier: str | os.PathLike,
    images: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    top_k: int = 1,
    batch_size: int | None = None,
    device: str | None = "auto",
    progress: bool = False,
) -> ClassifyResult:
    """Classify the images of ``images`` (a folder, a flat folder or a ``.txt``/``.csv`` file list).

    Args:
        classifier: a directory written by :func:`fastfeat.probe` (``classifier.json`` + ``.npz``).
        images: what to classify; files that cannot be read are listed with their reason.
        output: CSV to write: ``path``, ``predicted``, ``probability``, ``top2``/``top2_probability``
            ... up to ``top_k``, ``label`` (folder class, if any), ``error``.
        top_k: how many ranked classes per image.
        batch_size: images per forward pass (default: the training store's).
        device: ``auto``, ``cpu``, ``gpu`` or ``gpu:N``.
        progress: show the extraction's progress bar.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive integer. Received: top_k={top_k!r}")
    clf = load_classifier(classifier)
    settings = extract_settings(clf.store_meta)
    if batch_size is not None:
        settings["batch_size"] = batch_size
    top_k = min(int(top_k), len(clf.classes))
    from ..extraction import extract
    from ..store import open_store

    with tempfile.TemporaryDirectory(prefix="fastfeat-classify-") as tmp:
        path = os.path.join(tmp, "features.h5")
        extract(images, path, layers=[clf.layer], device=device, progress=progress, on_error="skip", **settings)
        with open_store(path) as store:
            proba = clf.predict_proba(store.features(clf.layer))
            rows = _rows(store, proba, clf.classes, top_k)
    result = ClassifyResult(rows, None if output is None else os.fspath(output))
    if output is not None:
        write_csv(result.rows, result.output, top_k)
    return result


def _rows(store, proba, classes, top_k) -> list:
    order = np.argsort(-proba, axis=1, kind="stable")[:, :top_k]
    names = store.class_names
    labels = np.asarray(store.labels)
    keyed = []
    for i, (path, pos) in enumerate(zip(store.paths, np.asarray(store.index).tolist())):
        top = [(classes[j], float(proba[i, j])) for j in order[i]]
        label = names[labels[i]] if labels[i] >= 0 and names else None
        keyed.append((pos, {"path": path, "predicted": top[0][0], "probability": top[0][1], "top": top,
                            "label": label, "error": None}))  # fmt: skip
    for (path, reason), pos in zip(store.failures, np.asarray(store.failure_index).tolist()):
        keyed.append((pos, {"path": path, "predicted": None, "probability": None, "top": [], "label": None,
                            "error": reason}))  # fmt: skip
    keyed.sort(key=lambda item: item[0])
    return [r for _, r in keyed]


def write_csv(rows: list, path: str, top_k: int) -> str:
    """The predictions as CSV (empty prediction cells for unreadable files)."""
    header = ["path", "predicted", "probability"]
    for k in range(2, top_k + 1):
        header += [f"top{k}", f"top{k}_probability"]
    header += ["label", "error"]
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            line = [r["path"], r["predicted"] or "", "" if r["probability"] is None else f"{r['probability']:.6f}"]
            for k in range(1, top_k):
                line += [r["top"][k][0], f"{r['top'][k][1]:.6f}"] if k < len(r["top"]) else ["", ""]
            line += [r["label"] or "", r["error"] or ""]
            w.writerow(line)
    return path
