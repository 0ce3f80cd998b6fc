"""The catalog: which files to read, in which order, with which labels.

Three sources are understood:

* a directory of class subfolders (``root/<class>/**/<image>``): labels inferred, classes in
  sorted order as ``flow_from_directory`` does (or fixed with ``classes=``), files found
  recursively inside each class folder, in sorted order;
* a flat directory of images (no class subfolders with images): no labels;
* a file list: ``.txt`` with one path per line, or ``.csv`` with a ``path`` column and an
  optional ``label`` column. Relative paths are relative to the list's folder.

The order is deterministic, so a run can be resumed and a catalog split into shards. Paths are
kept relative to the root. This module never imports TensorFlow.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


@dataclass(frozen=True)
class Catalog:
    """What to read.

    Attributes:
        root: absolute directory the paths are relative to.
        paths: file paths relative to ``root``, in reading order.
        labels: int64 array of class indices, -1 where unlabeled (flat folders, lists without labels).
        class_names: class names; ``labels`` index into it.
    """

    root: str
    paths: list[str]
    labels: np.ndarray
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def abspath(self, i: int) -> str:
        """Absolute path of item ``i``."""
        return os.path.join(self.root, self.paths[i])

    @property
    def labeled(self) -> bool:
        return bool(self.class_names)

    def counts(self) -> dict[str, int]:
        """Number of items per class name."""
        bins = np.bincount(self.labels[self.labels >= 0], minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, bins)}


def _is_image(name: str, extensions: tuple[str, ...]) -> bool:
    return name.lower().endswith(extensions)


def _walk_images(top: str, root: str, follow_links: bool, extensions: tuple[str, ...]) -> list[str]:
    """Image files under ``top``, recursively, sorted as Keras' ``_iter_valid_files`` does.

    Returned paths are relative to ``root``. With ``follow_links=False`` symlinked directories are
    not entered; symlinked files are kept only if they resolve inside ``root``.
    """
    real_root = os.path.realpath(root)
    found = []
    seen_dirs = set()
    for dirpath, dirnames, filenames in sorted(os.walk(top, followlinks=follow_links), key=lambda t: t[0]):
        if follow_links:
            real = os.path.realpath(dirpath)
            if real in seen_dirs:  # link loop: walked this directory already
                dirnames[:] = []
                continue
            seen_dirs.add(real)
        for name in sorted(filenames):
            if not _is_image(name, extensions):
                continue
            full = os.path.join(dirpath, name)
            if not follow_links and os.path.islink(full):
                target = os.path.realpath(full)
                if os.path.commonpath([real_root, target]) != real_root:
                    continue  # a link that escapes the root is not followed
            found.append(os.path.relpath(full, root))
    return found


def _from_directory(root: str, classes, follow_links: bool, extensions) -> Catalog:
    entries = sorted(os.listdir(root))
    subdirs = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    if not follow_links:
        subdirs = [d for d in subdirs if not os.path.islink(os.path.join(root, d))]
    if classes is not None:
        missing = [c for c in classes if c not in subdirs]
        if missing:
            raise ValueError(
                f"`classes` names folders that do not exist under {root!r}: {missing}. "
                f"Available: {subdirs}. Received: classes={list(classes)}"
            )
        class_names = list(classes)
    else:
        class_names = subdirs

    top_files = [e for e in entries if _is_image(e, extensions) and os.path.isfile(os.path.join(root, e))]
    per_class = [_walk_images(os.path.join(root, c), root, follow_links, extensions) for c in class_names]
    if classes is None and top_files and not any(per_class):
        class_names, per_class = [], []  # a flat folder of images

    if not class_names:  # flat directory, no labels
        paths = _walk_images(root, root, follow_links, extensions) if not top_files else sorted(top_files)
        return Catalog(root, paths, np.full(len(paths), -1, dtype=np.int64), [])
    paths, labels = [], []
    for index, files in enumerate(per_class):
        paths.extend(files)
        labels.extend([index] * len(files))
    return Catalog(root, paths, np.asarray(labels, dtype=np.int64), class_names)


def _from_list(list_path: str, classes) -> Catalog:
    root = os.path.dirname(os.path.abspath(list_path))
    raw_paths, raw_labels = [], []
    if list_path.lower().endswith(".csv"):
        with open(list_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ValueError(
                    f"A CSV file list needs a 'path' column (and optionally 'label'). "
                    f"Received columns: {reader.fieldnames} in {list_path!r}"
                )
            has_label = "label" in reader.fieldnames
            for row in reader:
                if not row["path"]:
                    continue
                raw_paths.append(row["path"])
                raw_labels.append(row["label"] if has_label else None)
    else:
        with open(list_path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    raw_paths.append(line)
                    raw_labels.append(None)
    paths = [os.path.relpath(os.path.join(root, p), root) for p in raw_paths]
    labeled = any(label not in (None, "") for label in raw_labels)
    if not labeled:
        return Catalog(root, paths, np.full(len(paths), -1, dtype=np.int64), [])
    names = sorted({str(label) for label in raw_labels if label not in (None, "")})
    if classes is not None:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise ValueError(f"The file list has labels not in `classes`: {unknown}. Received: classes={list(classes)}")
        names = list(classes)
    index = {name: i for i, name in enumerate(names)}
    labels = np.asarray([index[str(lb)] if lb not in (None, "") else -1 for lb in raw_labels], dtype=np.int64)
    return Catalog(root, paths, labels, names)


def build_catalog(
    source: str | os.PathLike,
    classes: list[str] | None = None,
    follow_links: bool = False,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
) -> Catalog:
    """Build the catalog of images to read from a directory or a file list.

    Args:
        source: a directory (class subfolders, or a flat folder of images), or a ``.txt``/``.csv``
            file list.
        classes: fixes the class names and their order (default: sorted subfolder names, or sorted
            labels of a CSV list).
        follow_links: enter symlinked folders and follow links out of the root.
        extensions: lower-case file extensions to keep.

    Raises:
        FileNotFoundError: if ``source`` does not exist.
        ValueError: if ``classes`` names unknown classes, or nothing matches.
    """
    source = os.fspath(source)
    if isinstance(classes, str):
        classes = [c for c in classes.split(",") if c]
    if not os.path.exists(source):
        raise FileNotFoundError(f"No such directory or file list: {source!r}")
    if os.path.isdir(source):
        catalog = _from_directory(os.path.abspath(source), classes, follow_links, tuple(extensions))
    elif source.lower().endswith((".txt", ".csv")):
        catalog = _from_list(source, classes)
    else:
        raise ValueError(f"`source` must be a directory or a .txt/.csv file list. Received: source={source!r}")
    if len(catalog) == 0:
        raise ValueError(
            f"No images found in {source!r} (extensions: {', '.join(e.lstrip('.') for e in extensions)})."
        )
    return catalog
