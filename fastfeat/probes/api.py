"""``fastfeat.probe``: train a classifier on a store's features, evaluate it on held-out images,
save it with its report and figures."""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .data import check_rows, default_memory_budget, feature_stats, layer_key, parse_memory
from .metrics import evaluate, format_metrics
from .model import Classifier
from .persist import JSON_NAME, save_classifier
from .train import MEMORY_FACTOR, STANDARDIZED, fit_in_memory, fit_streaming

CLASSIFIERS = ("logistic", "svm", "rf", "knn", "dense")


@dataclass
class ProbeReport:
    """What :func:`probe` did and measured.

    Attributes:
        classifier: the trained :class:`~fastfeat.probes.model.Classifier`.
        kind: ``logistic``, ``svm``, ``rf``, ``knn`` or ``dense``.
        metrics: the evaluation (see :func:`fastfeat.probes.metrics.evaluate`), also in ``metrics.json``.
        sweep: one entry per regularization value tried: value, tuning accuracy and log loss.
        best: the value chosen; ``param`` its name.
        mode: ``memory`` (features loaded as float32) or ``stream`` (minibatches).
        output: the directory written (``None`` if none).
    """

    classifier: Classifier
    kind: str
    layer: str
    store: str
    metrics: dict
    param: str
    best: object
    sweep: list = field(default_factory=list)
    mode: str = "memory"
    rows: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    output: str | None = None
    seconds: float = 0.0
    predictions: dict = field(default_factory=dict)

    def summary(self) -> str:
        """A short table of the evaluation."""
        head = (f"fastfeat probe: {self.kind} on {self.layer!r} of {self.store} ({self.mode}; "
                f"{self.rows.get('fit', 0)} fit + {self.rows.get('tune', 0)} tuning rows, "
                f"{self.rows.get('eval', 0)} evaluated) in {self.seconds:.1f} s")  # fmt: skip
        lines = [head, f"  {self.param} = {self.best} (chosen on the tuning rows)", format_metrics(self.metrics)]
        lines += [f"  note: {n}" for n in self.notes]
        if self.output:
            lines.append(f"  written: {self.output}/metrics.json, confusion.png/.csv, reliability.png, "
                         "predictions.csv, classifier.json/.npz")  # fmt: skip
        return "\n".join(lines)


def _check(classifier, val, val_split, tune_split, seed, epochs, batch_size):
    if classifier not in CLASSIFIERS:
        raise ValueError(f"`classifier` must be one of {', '.join(CLASSIFIERS)}. Received: classifier={classifier!r}")
    if val is None and not (isinstance(val_split, (int, float)) and 0 < float(val_split) < 1):
        raise ValueError(
            f"`val_split` must be in (0, 1) when no `val` store is given. Received: val_split={val_split!r}"
        )
    if not (isinstance(tune_split, (int, float)) and 0 < float(tune_split) < 1):
        raise ValueError(f"`tune_split` must be in (0, 1). Received: tune_split={tune_split!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")


def probe(
    store,
    layer: str | None = None,
    *,
    val=None,
    val_split: float = 0.2,
    classifier: str = "logistic",
    output: str | os.PathLike | None = None,
    seed: int = 0,
    sweep: list | None = None,
    tune_split: float = 0.2,
    max_memory: int | str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    bootstrap: int = 500,
    overwrite: bool = False,
    progress: bool = False,
    options: dict | None = None,
) -> ProbeReport:
    """Train a classifier on the features of ``layer`` and evaluate it on held-out images.

    Args:
        store: a store path or an open :class:`~fastfeat.FeatureStore`.
        layer: the feature key (may be omitted when the store has one).
        val: a second store (path or open) to evaluate on; otherwise ``val_split`` of the images
            of ``store`` are held out (split by image: no image, nor an augmented copy of it, on
            both sides). Augmented copies train; only plain rows are evaluated.
        val_split: share of the images held out when ``val`` is not given.
        classifier: ``logistic``, ``svm`` (linear, Platt-calibrated), ``rf`` (random forest),
            ``knn`` or ``dense`` (Flatten-Dense(256)-Dropout-Dense in Keras).
        output: a directory for metrics.json, confusion.png/.csv, reliability.png, predictions.csv
            and the classifier (classifier.json + .npz); ``None`` writes nothing.
        seed: seeds the splits and the models.
        sweep: regularization values to try (default: :data:`fastfeat.probes.train.SWEEPS`).
        tune_split: share of the training images the sweep is scored on (never the evaluated ones).
        max_memory: bytes (or ``"2G"``) the training matrix may take; above it logistic/svm stream
            minibatches (``SGDClassifier.partial_fit``), rf/knn refuse. Default: half the free memory.
        epochs: passes over the data of the streamed / dense models (default 10 / 30).
        batch_size: minibatch rows of the streamed / dense models (default 256 / 64).
        bootstrap: resamples of the confidence intervals (0: none).
        overwrite: replace a classifier already in ``output``.
        progress: show Keras' per-epoch lines (dense).
        options: extra settings (``n_estimators`` of rf, ``max_iter``, ``n_jobs``, ``hidden``, ``dropout``).

    Returns:
        A :class:`ProbeReport`; ``print(report.summary())`` prints the table.
    """
    _check(classifier, val, val_split, tune_split, seed, epochs, batch_size)
    budget = parse_memory(max_memory) if max_memory is not None else default_memory_budget()
    bootstrap = int(bootstrap)
    if output is not None:
        output = os.fspath(output)
        if os.path.exists(os.path.join(output, JSON_NAME)) and not overwrite:
            raise FileExistsError(
                f"{output!r} already holds a classifier. Pass overwrite=True (--overwrite) to replace it."
            )
    t0 = time.perf_counter()
    from ..store import open_store

    owned = []
    try:
        if not hasattr(store, "features"):
            store = open_store(store)
            owned.append(store)
        if val is not None and not hasattr(val, "features"):
            val = open_store(val)
            owned.append(val)
        return _probe(store, layer, val, val_split, classifier, output, int(seed), sweep, float(tune_split), budget,
                      epochs, batch_size, bootstrap, progress, options or {}, t0)  # fmt: skip
    finally:
        for s in owned:
            s.close()


def _probe(store, layer, val, val_split, kind, output, seed, sweep, tune_split, budget, epochs, batch_size,
           bootstrap, progress, options, t0) -> ProbeReport:  # fmt: skip
    key = layer_key(store, layer)
    labels = np.asarray(store.labels)
    names = store.class_names
    if val is None:
        train, test = store.split(val_split, seed, copies=None, val_copies=0)
        test_store, test_labels = store, labels
    else:
        train, test_store = store.rows_of(None), val
        test = val.rows_of(0)
        test_labels = _labels_in(val, names)
        layer_key(val, key)
        if tuple(val.shape(key)[1:]) != tuple(store.shape(key)[1:]):
            raise ValueError(f"`val` has {key!r} rows of shape {val.shape(key)[1:]}, the store {store.shape(key)[1:]}. "
                             f"Received: val={val.path!r}")  # fmt: skip
    train = check_rows(store, train, "training")
    test = np.sort(test[test_labels[test] >= 0]) if len(test) else test
    if len(test) == 0:
        raise ValueError(f"No labelled plain rows to evaluate on. Received: val_split={val_split!r}, val={val!r}")
    inner_fit, inner_tune = store.split(tune_split, seed + 1, copies=None, val_copies=0)
    fit_rows, tune_rows = np.intersect1d(train, inner_fit), np.intersect1d(train, inner_tune)
    if len(fit_rows) == 0 or len(tune_rows) == 0:
        raise ValueError(f"Too few training images to hold out tuning rows ({len(train)} rows). "
                         f"Received: tune_split={tune_split!r}")  # fmt: skip
    columns = np.unique(labels[np.concatenate([fit_rows, tune_rows])])
    if len(columns) < 2:
        raise ValueError(f"A classifier needs at least two classes among the training rows. Received: {len(columns)}")
    view = store.features(key, flatten=True)
    shape = tuple(int(d) for d in store.shape(key)[1:])
    base = Classifier("linear", names, columns, {}, {}, key, shape, _meta(store))
    standardize = kind in STANDARDIZED
    if standardize:
        base.arrays["mean"], base.arrays["scale"] = feature_stats(view, np.concatenate([fit_rows, tune_rows]))
    need = (len(fit_rows) + len(tune_rows)) * view.shape[1] * 4 * MEMORY_FACTOR.get(kind, 1.0)
    if kind == "dense":
        from .dense import fit_dense

        result = fit_dense(store, key, fit_rows, tune_rows, base, seed=seed, sweep=sweep, epochs=epochs or 30,
                           batch_size=batch_size or 64, progress=progress,
                           **{k: options[k] for k in ("hidden", "dropout", "patience") if k in options})  # fmt: skip
    elif need > budget and kind in ("logistic", "svm"):
        result = fit_streaming(kind, store, key, labels, fit_rows, tune_rows, base, seed=seed, sweep=sweep,
                               epochs=epochs or 10, batch_size=batch_size or 256)  # fmt: skip
    elif need > budget:
        raise ValueError(
            f"The {kind} probe needs its training features in memory (about {need / 2**30:.2f} GiB), more than "
            f"max_memory ({budget / 2**30:.2f} GiB). Use classifier='logistic', 'svm' or 'dense' (they stream), "
            f"pool the layer, or raise max_memory. Received: max_memory={budget}"
        )
    else:
        result = fit_in_memory(kind, view, labels, fit_rows, tune_rows, base, seed=seed, sweep=sweep, options=options)
    if len(tune_rows) < 20:
        result.notes.append(f"only {len(tune_rows)} tuning rows: the regularization choice is noisy")
    clf = result.classifier
    proba = clf.predict_proba(test_store.arrays(key, rows=test)[0])
    metrics = evaluate(test_labels[test], proba, names, bootstrap=bootstrap, seed=seed)
    all_paths = test_store.paths
    predictions = {"path": [all_paths[i] for i in test.tolist()], "true": test_labels[test],
                   "predicted": proba.argmax(axis=1), "probability": proba.max(axis=1)}  # fmt: skip
    report = ProbeReport(
        clf, kind, key, store.path, metrics, result.param, result.best, result.sweep, result.mode,
        {"fit": int(len(fit_rows)), "tune": int(len(tune_rows)), "eval": int(len(test))}, result.notes, output,
        predictions=predictions,
    )  # fmt: skip
    report.seconds = time.perf_counter() - t0
    if output is not None:
        _write(report, test_store.path, val is not None)
    return report


def _meta(store) -> dict:
    meta = json.loads(json.dumps(dict(store.meta), default=str))  # JSON-able copy
    meta["store"] = os.path.abspath(store.path)
    return meta


def _labels_in(val, names: list[str]) -> np.ndarray:
    """Labels of ``val`` renumbered to the training store's class order (by name)."""
    missing = [n for n in val.class_names if n not in names]
    if missing:
        raise ValueError(f"`val` has classes the training store lacks: {missing[:5]}. Received: val={val.path!r}")
    lut = np.array([names.index(n) for n in val.class_names] + [-1], np.int64)
    return lut[np.asarray(val.labels)]  # -1 (unlabelled) reads the last entry, -1


def _write(report: ProbeReport, eval_store: str, separate: bool) -> None:
    from .plots import confusion_png, reliability_png

    out = report.output
    os.makedirs(out, exist_ok=True)
    names = report.classifier.classes
    save_classifier(report.classifier, out)
    doc = dict(report.metrics, classifier=report.kind, layer=report.layer, store=os.path.abspath(report.store),
               eval_store=os.path.abspath(eval_store), eval_split="store" if separate else "val_split",
               mode=report.mode, param=report.param, best=report.best, sweep=report.sweep, rows=report.rows,
               notes=report.notes, seconds=report.seconds)  # fmt: skip
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, default=str)
    with open(os.path.join(out, "confusion.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted"] + names)
        for name, row in zip(names, report.metrics["confusion_matrix"]):
            w.writerow([name] + row)
    p = report.predictions
    with open(os.path.join(out, "predictions.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "true", "predicted", "probability"])
        for path, t, k, prob in zip(p["path"], p["true"].tolist(), p["predicted"].tolist(), p["probability"].tolist()):
            w.writerow([path, names[t], names[k], f"{prob:.6f}"])
    confusion_png(report.metrics["confusion_matrix"], names, os.path.join(out, "confusion.png"))
    reliability_png(report.metrics["reliability"], report.metrics["ece"], os.path.join(out, "reliability.png"))
