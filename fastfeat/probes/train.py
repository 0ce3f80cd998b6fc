"""Fitting the scikit-learn probes: a small regularization sweep scored on tuning rows only, then a
refit on every training row; or, when the features do not fit the memory budget, streamed
minibatches through ``SGDClassifier.partial_fit``.

Each fitted model is turned into a :class:`~.model.Classifier` (its own arrays), which is what is
evaluated, saved and applied by ``classify``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from ._deps import require
from .data import encode, load_rows
from .model import Classifier

#: Default sweeps: the regularization values tried, strongest regularization first.
SWEEPS = {
    "logistic": (0.001, 0.01, 0.1, 1.0, 10.0, 100.0),  # C
    "svm": (0.0001, 0.001, 0.01, 0.1, 1.0),  # C
    "rf": (10, 3, 1),  # min_samples_leaf
    "knn": (31, 15, 7, 3, 1),  # k
    "sgd": (0.01, 0.001, 0.0001, 0.00001),  # alpha of the streamed linear models
    "dense": (0.001, 0.0001, 0.00001),  # L2 weight decay of the dense head
}
#: Bytes of working memory per float32 feature value of the training matrix, by classifier
#: (liblinear copies to float64; calibration fits cross-validation folds).
MEMORY_FACTOR = {"logistic": 2.0, "svm": 4.0, "rf": 2.0, "knn": 2.0}
STANDARDIZED = ("logistic", "svm", "knn", "dense", "sgd")


@dataclass
class FitResult:
    """What training produced: the classifier and the sweep that chose its regularization."""

    classifier: Classifier
    param: str
    sweep: list = field(default_factory=list)  # [{"value", "accuracy", "log_loss", "converged"}]
    best: float | int | None = None
    mode: str = "memory"  # or "stream"
    notes: list = field(default_factory=list)


def _score(proba: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    accuracy = float((proba.argmax(axis=1) == y).mean())
    log_loss = float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None)).mean())
    return accuracy, log_loss


def _pick(sweep: list) -> int:
    """Best tuning accuracy, then lowest log loss, then the first (strongest regularization)."""
    return max(range(len(sweep)), key=lambda i: (sweep[i]["accuracy"], -sweep[i]["log_loss"], -i))


def _quiet_fit(model, X, y) -> bool:
    """Fit; returns False (instead of warning) when the solver stopped before converging."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(X, y)
    others = [w for w in caught if not issubclass(w.category, ConvergenceWarning)]
    for w in others:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return len(others) == len(caught)


def _estimator(kind: str, value, seed: int, n_fit: int, options: dict):
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=value, max_iter=options.get("max_iter", 1000), random_state=seed)
    if kind == "svm":
        from sklearn.svm import LinearSVC

        return LinearSVC(C=value, max_iter=options.get("max_iter", 5000), random_state=seed)
    if kind == "rf":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=options.get("n_estimators", 100), min_samples_leaf=value,
                                      random_state=seed, n_jobs=options.get("n_jobs"))  # fmt: skip
    if kind == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        return KNeighborsClassifier(n_neighbors=min(int(value), n_fit), algorithm="brute")
    raise ValueError(f"Unknown classifier. Received: classifier={kind!r}")


def _sweep_proba(kind, model, X):
    if kind == "svm":  # uncalibrated during the sweep: softmax of the margins only ranks
        from .model import softmax

        d = model.decision_function(X)
        d = np.stack([-d, d], axis=1) if d.ndim == 1 else d
        return softmax(np.asarray(d, np.float64))
    return model.predict_proba(X)


def fit_in_memory(kind, view, labels, fit_rows, tune_rows, base: Classifier, *, seed=0, sweep=None,
                  options=None) -> FitResult:  # fmt: skip
    """Sweep on (fit rows -> tune rows), refit the best on fit + tune rows; float32 throughout."""
    require("sklearn")
    options = options or {}
    values = list(sweep) if sweep is not None else list(SWEEPS[kind])
    rows = np.concatenate([fit_rows, tune_rows])  # fit rows first: X[:nf] and X[nf:] are views
    mean, scale = (base.arrays["mean"], base.arrays["scale"]) if kind in STANDARDIZED else (None, None)
    X = load_rows(view, rows, mean, scale)
    y = encode(labels[rows], base.columns)
    nf = len(fit_rows)
    results = []
    for value in values:
        model = _estimator(kind, value, seed, nf, options)
        converged = _quiet_fit(model, X[:nf], y[:nf])
        acc, nll = _score(_full(_sweep_proba(kind, model, X[nf:]), model.classes_, len(base.columns)), y[nf:])
        results.append({"value": value, "accuracy": acc, "log_loss": nll, "converged": converged})
    best = values[_pick(results)]
    notes = [f"{kind} {PARAM[kind]}={r['value']}: the solver did not converge" for r in results if not r["converged"]]
    if kind == "svm":
        model, converged = _calibrated_svm(best, seed, X, y, options)
    else:
        model = _estimator(kind, best, seed, len(X), options)
        converged = _quiet_fit(model, X, y)
    if not converged:
        notes.append(f"final {kind} fit ({PARAM[kind]}={best}): the solver did not converge")
    clf = to_classifier(kind, model, base, X if kind == "knn" else None, y if kind == "knn" else None)
    return FitResult(clf, PARAM[kind], results, best, "memory", notes)


PARAM = {"logistic": "C", "svm": "C", "rf": "min_samples_leaf", "knn": "k", "sgd": "alpha", "dense": "weight_decay"}


def _full(proba, model_classes, n_columns):
    out = np.zeros((len(proba), n_columns))
    out[:, np.asarray(model_classes, np.int64)] = proba
    return out


def _calibrated_svm(C, seed, X, y, options):
    from sklearn.calibration import CalibratedClassifierCV

    smallest = int(np.bincount(y).min())
    if smallest < 2:
        raise ValueError("The svm probe calibrates its probabilities by cross-validation and needs at least "
                         f"2 training images per class. Received: a class with {smallest}")  # fmt: skip
    svc = _estimator("svm", C, seed, len(X), options)
    model = CalibratedClassifierCV(svc, method="sigmoid", cv=min(3, smallest), ensemble=False)
    return model, _quiet_fit(model, X, y)


def to_classifier(kind: str, model, base: Classifier, X=None, y=None) -> Classifier:
    """The arrays of a fitted scikit-learn model, in a copy of ``base`` (classes, layer, scaler)."""
    arrays = dict(base.arrays) if kind in STANDARDIZED else {}
    params: dict = {}
    if kind in ("logistic", "sgd_log"):
        kind_out, params["link"] = "linear", ("softmax" if kind == "logistic" else "ovr_logistic")
        arrays["coef"], arrays["intercept"] = model.coef_, model.intercept_
    elif kind == "sgd_huber":
        kind_out, params["link"] = "linear", "modified_huber"
        arrays["coef"], arrays["intercept"] = model.coef_, model.intercept_
    elif kind == "svm":
        calibrated = model.calibrated_classifiers_[0]
        kind_out, params["link"] = "linear", "platt"
        arrays["coef"], arrays["intercept"] = calibrated.estimator.coef_, calibrated.estimator.intercept_
        arrays["platt_a"] = np.array([c.a_ for c in calibrated.calibrators], np.float64)
        arrays["platt_b"] = np.array([c.b_ for c in calibrated.calibrators], np.float64)
    elif kind == "rf":
        kind_out, params["n_estimators"] = "forest", len(model.estimators_)
        arrays.update(forest_arrays(model))
    elif kind == "knn":
        kind_out, params["k"] = "knn", int(model.n_neighbors)
        arrays["train"], arrays["train_columns"] = np.asarray(X, np.float32), np.asarray(y, np.int64)
    else:
        raise ValueError(f"Unknown classifier. Received: kind={kind!r}")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    return Classifier(kind_out, base.classes, base.columns, arrays, params, base.layer, base.feature_shape,
                      base.store_meta)  # fmt: skip


def forest_arrays(model) -> dict:
    """The trees of a fitted random forest as concatenated node arrays (children re-based)."""
    parts = {k: [] for k in ("left", "right", "feature", "threshold", "value")}
    starts, offset = [], 0
    for tree in (e.tree_ for e in model.estimators_):
        starts.append(offset)
        for name, child in (("left", tree.children_left), ("right", tree.children_right)):
            parts[name].append(np.where(child >= 0, child + offset, -1))
        parts["feature"].append(tree.feature)
        parts["threshold"].append(tree.threshold)
        value = tree.value[:, 0, :].astype(np.float64)
        total = value.sum(axis=1, keepdims=True)
        parts["value"].append(value / np.where(total == 0, 1, total))
        offset += tree.node_count
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out["left"], out["right"], out["feature"] = (out[k].astype(np.int64) for k in ("left", "right", "feature"))
    out["tree_start"] = np.array(starts, np.int64)
    return out


def fit_streaming(kind, store, layer, labels, fit_rows, tune_rows, base: Classifier, *, seed=0, sweep=None,
                  epochs=10, batch_size=256) -> FitResult:  # fmt: skip
    """Linear probes in bounded memory: ``SGDClassifier.partial_fit`` over shuffled minibatches of
    the fit rows (``log_loss`` for logistic, ``modified_huber`` for svm), alpha swept on the tuning
    rows, the best model kept. Only one minibatch is ever converted to float64."""
    require("sklearn")
    from sklearn.linear_model import SGDClassifier

    from ..store.adapters import iterate_batches

    loss, tag = ("log_loss", "sgd_log") if kind == "logistic" else ("modified_huber", "sgd_huber")
    values = list(sweep) if sweep is not None else list(SWEEPS["sgd"])
    mean, scale = base.arrays["mean"], base.arrays["scale"]
    classes = np.arange(len(base.columns))
    one_epoch, _, _ = iterate_batches(store, layer, batch_size=batch_size, shuffle=True, seed=seed, flatten=True,
                                      prefetch=2, rows=fit_rows)  # fmt: skip
    tune_view = store.arrays(layer, rows=tune_rows)[0]
    y_tune = encode(labels[tune_rows], base.columns)
    results, best_clf = [], None
    for value in values:
        model = SGDClassifier(loss=loss, alpha=value, random_state=seed)
        for _ in range(int(epochs)):
            for x, yb in one_epoch():
                x = x.astype(np.float32)
                x -= mean
                x /= scale
                model.partial_fit(x, encode(yb, base.columns), classes=classes)
        clf = to_classifier(tag, model, base)
        acc, nll = _score(clf.predict_proba(tune_view)[:, base.columns], y_tune)
        results.append({"value": value, "accuracy": acc, "log_loss": nll, "converged": True})
        if _pick(results) == len(results) - 1:
            best_clf = clf
    best = values[_pick(results)]
    note = f"streamed: SGDClassifier(loss={loss!r}), {epochs} epochs per alpha, best kept (no refit)"
    return FitResult(best_clf, "alpha", results, best, "stream", [note])
