"""Evaluation of a probe: top-1/top-5, balanced accuracy, per-class P/R/F1, the confusion matrix,
calibration (expected calibration error, reliability bins) and bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np

#: Equal-width confidence bins of the calibration error and the reliability diagram.
ECE_BINS = 15


def _recalls(y, correct, k, weights=None):
    w = np.ones(len(y)) if weights is None else weights
    support = np.bincount(y, weights=w, minlength=k)
    hits = np.bincount(y, weights=w * correct, minlength=k)
    present = support > 0
    return hits[present] / support[present]


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """(expected calibration error, reliability bins) of top-1 confidences."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        acc = float(correct[inside].mean()) if n else None
        conf = float(confidence[inside].mean()) if n else None
        if n:
            ece += abs(acc - conf) * n / len(confidence)
        table.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": n, "accuracy": acc,
                      "confidence": conf})  # fmt: skip
    return float(ece), table


def evaluate(y: np.ndarray, proba: np.ndarray, class_names: list[str], *, bootstrap: int = 500, seed: int = 0) -> dict:
    """Metrics of probabilities ``proba`` (n, K) against store labels ``y`` (n,).

    Returns a JSON-able dict: ``accuracy``, ``balanced_accuracy``, ``top5_accuracy`` (with >= 5
    classes), ``log_loss``, ``ece``, ``reliability``, ``per_class`` (name -> precision, recall, f1,
    support), ``confusion_matrix`` (rows = true class, columns = predicted, in store order),
    ``ci95`` (bootstrap percentile intervals of accuracy and balanced accuracy), ``n``.
    """
    y = np.asarray(y, np.int64)
    proba = np.asarray(proba, np.float64)
    k = len(class_names)
    if proba.shape != (len(y), k):
        raise ValueError(f"`proba` must be (n, {k}) for n = {len(y)} labels. Received: proba.shape={proba.shape}")
    pred = proba.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    confusion = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    ece, reliability = calibration(proba.max(axis=1), correct)
    out = {
        "n": int(len(y)),
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(_recalls(y, correct, k).mean()),
        "log_loss": float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None)).mean()),
        "ece": ece,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}  # fmt: skip
            for i, name in enumerate(class_names)
        },
        "macro_f1": float(f1[support > 0].mean()),
        "confusion_matrix": confusion.tolist(),
        "class_names": list(class_names),
        "reliability": reliability,
    }
    if k >= 5:
        top5 = np.argpartition(-proba, 4, axis=1)[:, :5]
        out["top5_accuracy"] = float((top5 == y[:, None]).any(axis=1).mean())
    if bootstrap:
        rng = np.random.default_rng(seed)
        acc, bal = np.empty(bootstrap), np.empty(bootstrap)
        uniform = np.full(len(y), 1.0 / len(y))
        for b in range(bootstrap):
            w = rng.multinomial(len(y), uniform).astype(np.float64)
            acc[b] = (w * correct).sum() / len(y)
            bal[b] = _recalls(y, correct, k, w).mean()
        out["ci95"] = {
            "accuracy": [float(v) for v in np.percentile(acc, [2.5, 97.5])],
            "balanced_accuracy": [float(v) for v in np.percentile(bal, [2.5, 97.5])],
            "bootstrap": int(bootstrap),
        }
    return out


def format_metrics(m: dict, max_classes: int = 20) -> str:
    """A short table: headline numbers, then per-class precision/recall/F1/support."""
    ci = m.get("ci95", {})

    def with_ci(key):
        lo_hi = ci.get(key)
        return f"{m[key]:.4f}" + (f"  [{lo_hi[0]:.4f}, {lo_hi[1]:.4f}]" if lo_hi else "")

    lines = [f"  accuracy           {with_ci('accuracy')}", f"  balanced accuracy  {with_ci('balanced_accuracy')}"]
    if "top5_accuracy" in m:
        lines.append(f"  top-5 accuracy     {m['top5_accuracy']:.4f}")
    lines += [f"  log loss           {m['log_loss']:.4f}", f"  ECE ({ECE_BINS} bins)      {m['ece']:.4f}",
              f"  {'class':<20} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]  # fmt: skip
    for i, (name, r) in enumerate(m["per_class"].items()):
        if i == max_classes:
            lines.append(f"  ... {len(m['per_class']) - max_classes} more classes in metrics.json")
            break
        lines.append(f"  {name[:20]:<20} {r['precision']:>9.3f} {r['recall']:>7.3f} {r['f1']:>7.3f} {r['support']:>8d}")
    return "\n".join(lines)
