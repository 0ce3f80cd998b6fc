"""PNG figures with matplotlib (Agg backend, never a window): confusion matrix, reliability
diagram, channel activation grid, 2-D embedding."""

from __future__ import annotations

import math

import numpy as np

from ._deps import pyplot


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return path


def confusion_png(matrix, class_names: list[str], path: str) -> str:
    """Confusion matrix (rows = true class), colours by row share, counts written in the cells."""
    plt = pyplot()
    m = np.asarray(matrix, np.float64)
    k = len(class_names)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.4 * k, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if k <= 40:
        ax.set_xticks(range(k), class_names, rotation=90)
        ax.set_yticks(range(k), class_names)
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    return _save(fig, path)


def reliability_png(table: list[dict], ece: float, path: str) -> str:
    """Reliability diagram: accuracy against mean confidence per bin, the diagonal is perfect."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    centers = [(b["lower"] + b["upper"]) / 2 for b in table]
    accs = [b["accuracy"] if b["accuracy"] is not None else 0.0 for b in table]
    width = table[0]["upper"] - table[0]["lower"] if table else 0.1
    ax.bar(centers, accs, width=width, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    return _save(fig, path)


def activation_grid_png(fmap: np.ndarray, path: str, title: str = "", channels: list[int] | None = None,
                        columns: int = 8) -> str:  # fmt: skip
    """One (H, W, C) feature map as a grid of per-channel images (each scaled to its own range)."""
    plt = pyplot()
    chosen = list(range(fmap.shape[-1])) if channels is None else list(channels)
    cols = min(columns, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, c in zip(axes.ravel(), chosen):
        ax.imshow(np.asarray(fmap[..., c], np.float32), cmap="viridis")
        ax.set_title(str(c), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def embedding_png(points: np.ndarray, labels: np.ndarray, class_names: list[str], path: str, title: str) -> str:
    """A 2-D scatter of ``points`` coloured by class (unlabelled rows in grey)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    cmap = plt.get_cmap("tab20" if len(class_names) > 10 else "tab10")
    unlabelled = labels < 0
    if unlabelled.any():
        ax.scatter(points[unlabelled, 0], points[unlabelled, 1], s=8, c="lightgray", label="(unlabelled)")
    for i, name in enumerate(class_names):
        at = labels == i
        if at.any():
            ax.scatter(points[at, 0], points[at, 1], s=8, color=cmap(i % cmap.N), label=name)
    if len(class_names) <= 20:
        ax.legend(fontsize=7, markerscale=2, loc="best")
    ax.set_title(title)
    return _save(fig, path)
