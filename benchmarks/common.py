"""Shared helpers for the benchmarks: a realistic JPEG dataset, the machine, timing, tables, JSON.

Benchmarks are scripts, never tests. Each one compares candidates side by side in one process
on the same images and reports medians and ratios (shared machines are noisy: a lone absolute
time means little).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def make_jpeg_dataset(
    root: str,
    n: int = 320,
    classes: int = 4,
    size: tuple[int, int] = (375, 500),
    quality: int = 90,
    seed: int = 0,
) -> str:
    """Write ``n`` photo-like JPEGs (smooth gradients, shapes and texture; about 500x375, quality 90)
    into ``root/class_k/``. Reuses an existing dataset of the same spec. Returns ``root``."""
    import cv2

    stamp = os.path.join(root, f".fastfeat-bench-{n}-{classes}-{size[0]}x{size[1]}-q{quality}-s{seed}")
    if os.path.exists(stamp):
        return root
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class_{c}"), exist_ok=True)
    for i in range(n):
        base = rng.uniform(0, 255, 3).astype(np.float32)
        gx, gy = rng.uniform(-0.3, 0.3, 2)
        image = base + (gx * xx + gy * yy)[..., None]
        for _ in range(6):  # a few soft blobs and bars, like objects on a background
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            r = rng.uniform(20, 120)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            image += blob[..., None] * rng.uniform(-120, 120, 3)
        image += rng.normal(0, 12, (h, w, 3))  # sensor noise / texture: makes JPEGs realistically sized
        image = np.clip(image, 0, 255).astype(np.uint8)
        path = os.path.join(root, f"class_{i % classes}", f"img_{i:05d}.jpg")
        cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    open(stamp, "w").close()
    return root


def machine() -> dict:
    """A short description of the machine the numbers come from."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "")
        info["avx512_bf16"] = "avx512_bf16" in flags
        info["amx"] = "amx_bf16" in flags
    except OSError:
        pass
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def timeit(fn, repeats: int = 3, warmup: int = 1) -> dict:
    """Run ``fn`` (which returns an item count) ``warmup`` + ``repeats`` times; median items/s."""
    for _ in range(warmup):
        fn()
    rates, seconds = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        count = fn()
        dt = time.perf_counter() - t0
        seconds.append(dt)
        rates.append(count / dt)
    return {"median_per_s": statistics.median(rates), "runs_per_s": rates, "seconds": seconds}


def print_table(rows: list[dict], columns: list[str], title: str = "") -> None:
    """Print rows (dicts) as a fixed-width table."""
    if title:
        print(f"\n{title}")
    widths = {c: max([len(c), *(len(_fmt(r.get(c))) for r in rows)]) for c in columns}  # rows may be empty
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    return "" if v is None else str(v)


def write_json(name: str, payload: dict, path: str | None = None) -> str:
    """Write ``payload`` (plus the machine) to ``benchmarks/results/<name>.json``; returns the path."""
    path = path or os.path.join(RESULTS_DIR, f"{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **payload}
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)
    return path
