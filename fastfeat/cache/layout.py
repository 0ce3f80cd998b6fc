"""What a decoded-image cache holds, and the two facts it is checked against: decode settings and
per-file fingerprints. Shared by the builder and the reader; no TensorFlow, no OpenCV pixels.

A cache is a fastfeat feature store (:mod:`fastfeat.store.layout`) with two layers:

``/features/images``       (N, H, W, 3) uint8, the decoded, resized RGB image of each readable file
``/features/fingerprint``  (N, 3) int64, ``(size, mtime_ns, inode)`` of the file when it was read

plus the store's labels, paths (relative to the source root), class names and failures, and a
``meta`` record with ``kind = "fastfeat-image-cache"`` and the decode settings of :data:`SETTINGS`.
Files that could not be read have no row, only a failure entry; readers decode them again
(so a file repaired since is read, and a still-broken one fails exactly as without the cache).
"""

from __future__ import annotations

import os

import numpy as np

KIND = "fastfeat-image-cache"
CACHE_FORMAT = 1
IMAGES = "images"
FINGERPRINT = "fingerprint"
#: Meta entries that decide the pixels of a row: a cache answers only for these exact values.
SETTINGS = ("image_size", "interpolation", "exif", "reduced_decode", "max_pixels", "opencv", "pillow")
#: The fingerprint of a file that cannot be stat'ed (missing, a broken link).
MISSING = (-1, -1, -1)


def settings_of(options) -> dict:
    """The :data:`SETTINGS` of a :class:`fastfeat.loader.DecodeOptions`, plus the versions of the
    decoders (OpenCV, and Pillow, the fallback): another build may decode other pixels."""
    import cv2
    import PIL

    return {
        "image_size": [int(options.size[0]), int(options.size[1])],
        "interpolation": options.interpolation,
        "exif": bool(options.exif),
        "reduced_decode": bool(options.reduced),
        "max_pixels": None if options.max_pixels is None else int(options.max_pixels),
        "opencv": cv2.__version__,
        "pillow": PIL.__version__,
    }


def setting_changes(stored: dict, wanted: dict) -> list[str]:
    """One line per decode setting that differs: ``"image_size: cache [32, 32], asked [64, 64]"``."""
    return [
        f"{key}: cache {stored.get(key)!r}, asked {wanted.get(key)!r}"
        for key in SETTINGS
        if stored.get(key) != wanted.get(key)
    ]


def fingerprint(path: str) -> tuple[int, int, int]:
    """``(size, mtime_ns, inode)`` of the file ``path`` points to (links followed), or
    :data:`MISSING`. Taken *before* a file is read, so a write during or after the read shows up."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return MISSING
    return (int(st.st_size), int(st.st_mtime_ns), int(st.st_ino))


def fingerprints(paths: list[str]) -> np.ndarray:
    """(n, 3) int64 :func:`fingerprint` of each path."""
    out = np.empty((len(paths), 3), np.int64)
    for i, path in enumerate(paths):
        out[i] = fingerprint(path)
    return out
