"""A decoded-image cache: every image decoded once to uint8 at the target size, then read back at
memory speed by :func:`fastfeat.image_dataset` (``cache=``) and :func:`fastfeat.extract` (``cache=``).

It is never stale: it is checked against the decode settings and every source file's
``(size, mtime_ns, inode)`` when it is opened (:class:`StaleCacheError` says what changed), and every
file is stat'ed again just before its row is served; a file changed since is decoded instead.
See ``docs/cache.md``. This package never imports TensorFlow.
"""

from __future__ import annotations

from .build import CacheReport, build_cache, ensure_cache
from .reader import CachedRows, ImageCache, StaleCacheError

__all__ = ["CacheReport", "CachedRows", "ImageCache", "StaleCacheError", "build_cache", "ensure_cache", "open_cache"]


def open_cache(path) -> ImageCache:
    """Open a cache file for reading (see :class:`ImageCache`)."""
    return ImageCache(path)
