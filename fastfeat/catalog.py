"""The catalog: which files to read, in which order, with which labels.

Three sources are understood:

* a directory of class subfolders (``root/<class>/**/<image>``): labels inferred, classes in
  sorted order as ``flow_from_directory`` does (or fixed with ``classes=``), files found
  recursively inside each class folder, in the order of Keras' ``_iter_valid_files``
  (directories sorted by path, files sorted by name); images lying beside the class folders are
  ignored, as Keras ignores them;
* a flat directory of images (no subfolder holds an image): its top-level images, no labels;
* a file list: ``.txt`` with one path per line (``#`` comments and blank lines skipped), or
  ``.csv`` with a header row naming a ``path`` column and optionally a ``label`` column.
  Relative paths are relative to the list's folder. Listed files are not filtered by extension:
  a listed file that is not an image is reported as a failure when read.

Extensions are matched case-insensitively. The order is deterministic, so a run can be resumed
and a catalog split into shards. Paths are kept relative to the root.

Links: by default (``follow_links=False``) symlinked folders are not entered, nor counted as
classes, and a symlinked file is kept only if it resolves inside the root, so no catalog path
escapes the root. Broken links and file link loops inside the root are kept: reading them fails
with a reason, reported per file. With ``follow_links=True`` linked folders are walked too, but
a link back to an ancestor folder (a loop) is not entered, so the walk always terminates.

File names that are not valid UTF-8 (bytes names on Linux) are carried as ``os.fsdecode`` gives
them (surrogate escapes) and round-trip to the same bytes. This module never imports TensorFlow.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
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
        left_out: what the folder rules left out, for a warning: ``classes`` (class folders not
            named by ``classes=``), ``loose`` (images lying in the root beside class folders).
    """

    root: str
    paths: list[str]
    labels: np.ndarray
    class_names: list[str] = field(default_factory=list)
    left_out: dict = field(default_factory=dict, compare=False, repr=False)

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

    def fingerprint(self) -> str:
        """sha256 (hex) of the paths and labels, in order: the same files in the same order with
        the same labels give the same fingerprint (a resume, a shard, a cache must see them)."""
        digest = hashlib.sha256()
        for path in self.paths:
            digest.update(os.fsencode(path) + b"\0")
        digest.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def part_bounds(self, parts: int) -> list[tuple[int, int]]:
        """``[start, stop)`` of each of ``parts`` contiguous, deterministic ranges covering the
        catalog in order (sizes differ by at most one, the larger ones first)."""
        return part_bounds(len(self), parts)

    def part(self, k: int, parts: int) -> Catalog:
        """Part ``k`` of :meth:`part_bounds` as a catalog of its own (same root and classes;
        positions in it start at 0, add ``part_bounds(parts)[k][0]`` for the whole's)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < int(parts):
            raise ValueError(f"`k` must be an int in [0, parts). Received: k={k!r}, parts={parts!r}")
        start, stop = self.part_bounds(parts)[int(k)]
        return self.subset(start, stop)

    def subset(self, start: int, stop: int) -> Catalog:
        """Items ``[start, stop)`` as a catalog (same root and class names)."""
        if not 0 <= int(start) <= int(stop) <= len(self):
            raise ValueError(f"`start`, `stop` must satisfy 0 <= start <= stop <= {len(self)}. "
                             f"Received: start={start!r}, stop={stop!r}")  # fmt: skip
        return Catalog(self.root, self.paths[start:stop], self.labels[start:stop].copy(), list(self.class_names))


def part_bounds(size: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``parts`` contiguous ranges covering ``range(size)`` in order, as
    ``np.array_split`` cuts them (sizes differ by at most one, the larger ones first)."""
    if isinstance(parts, bool) or not isinstance(parts, (int, np.integer)) or parts < 1:
        raise ValueError(f"`parts` must be a positive int. Received: parts={parts!r}")
    base, extra = divmod(int(size), int(parts))
    stops = np.cumsum([base + (1 if k < extra else 0) for k in range(int(parts))])
    starts = np.concatenate([[0], stops[:-1]])
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def _is_image(name: str, extensions: tuple[str, ...]) -> bool:
    return name.lower().endswith(extensions)


def _inside(real_root: str, path: str) -> bool:
    """Whether ``path``, with every link resolved, lies in ``real_root``."""
    target = os.path.realpath(path)
    return target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep)


def _is_class_dir(path: str, follow_links: bool) -> bool:
    return os.path.isdir(path) and (follow_links or not os.path.islink(path))


def _keep_file(path: str, real_root: str, follow_links: bool) -> bool:
    """Without ``follow_links``, a symlinked file is kept only if it resolves inside the root."""
    return follow_links or not os.path.islink(path) or _inside(real_root, path)


def _walk_images(top: str, root: str, follow_links: bool, extensions: tuple[str, ...]) -> list[str]:
    """Image files under ``top``, recursively, in the order of Keras' ``_iter_valid_files``.

    That order is: directories sorted by their path (as strings), files sorted by name within
    each. Returned paths are relative to ``root``.

    With ``follow_links=False`` (the default) symlinked directories are not entered and a
    symlinked file is kept only if its target lies inside ``root``, so no path escapes the root;
    a broken link inside the root is kept (it is reported as a failure when read). With
    ``follow_links=True`` linked directories are entered (as Keras does), except a link back to
    one of the directory's own ancestors (a loop), which is not entered.
    """
    real_root = os.path.realpath(root)
    walked = []
    real_of = {}  # walked directory -> its real path, to recognise a link back to an ancestor
    for dirpath, dirnames, filenames in os.walk(top, followlinks=follow_links):
        dirnames.sort()
        if follow_links:
            real = real_of[dirpath] = os.path.realpath(dirpath)
            if _loops(dirpath, real, top, real_of):
                dirnames[:] = []
                continue
        names = sorted(
            name
            for name in filenames
            if _is_image(name, extensions) and _keep_file(os.path.join(dirpath, name), real_root, follow_links)
        )
        walked.append((dirpath, names))
    walked.sort(key=lambda item: item[0])
    return [os.path.relpath(os.path.join(dirpath, name), root) for dirpath, names in walked for name in names]


def _loops(dirpath: str, real: str, top: str, real_of: dict[str, str]) -> bool:
    """Whether ``dirpath`` is (through links) one of its own ancestors up to ``top``."""
    parent = dirpath
    while parent != top:
        parent = os.path.dirname(parent)
        if real_of.get(parent) == real:
            return True
        if not parent or parent == os.path.dirname(parent):
            break
    return False


def _from_directory(root: str, classes: list[str] | None, follow_links: bool, extensions) -> Catalog:
    entries = sorted(os.listdir(root))
    subdirs = [e for e in entries if _is_class_dir(os.path.join(root, e), follow_links)]
    if classes is not None:
        missing = [c for c in classes if c not in subdirs]
        if missing:
            raise ValueError(
                f"`classes` names folders that are not class folders of {root!r}: {missing} "
                f"(symbolic links count only with follow_links=True). Available: {subdirs}. "
                f"Received: classes={list(classes)}"
            )
        class_names = list(classes)
    else:
        class_names = subdirs

    per_class = [_walk_images(os.path.join(root, c), root, follow_links, extensions) for c in class_names]
    if classes is None and not any(per_class):  # no class folder holds an image: a flat folder
        real_root = os.path.realpath(root)
        paths = [
            e
            for e in entries
            if _is_image(e, extensions)
            and not os.path.isdir(os.path.join(root, e))
            and _keep_file(os.path.join(root, e), real_root, follow_links)
        ]
        return Catalog(root, paths, np.full(len(paths), -1, dtype=np.int64), [])
    # Images lying beside the class folders are ignored, as flow_from_directory ignores them.
    paths, labels = [], []
    for index, files in enumerate(per_class):
        paths.extend(files)
        labels.extend([index] * len(files))
    loose = [e for e in entries if _is_image(e, extensions) and not os.path.isdir(os.path.join(root, e))]
    left_out = {"classes": [d for d in subdirs if d not in class_names], "loose": loose}
    return Catalog(root, paths, np.asarray(labels, dtype=np.int64), class_names, left_out)


class CatalogWarning(UserWarning):
    """The folder rules left images out (class folders not in ``classes``, images beside class folders)."""


def warn_left_out(catalog: Catalog) -> None:
    """One warning for class folders ``classes=`` (``--classes``) left out, one for images lying
    in the root of a class-folder tree (which no loader reads)."""
    dropped, loose = catalog.left_out.get("classes") or [], catalog.left_out.get("loose") or []
    if dropped:
        shown = ", ".join(map(repr, dropped[:5])) + (f" and {len(dropped) - 5} more" if len(dropped) > 5 else "")
        warnings.warn(
            f"`classes` (--classes) keeps {len(catalog.class_names)} class folders of {catalog.root!r}; the images "
            f"of {len(dropped)} more are not read: {shown}",
            CatalogWarning,
            stacklevel=3,
        )
    if loose:
        shown = ", ".join(map(repr, loose[:3])) + (f" and {len(loose) - 3} more" if len(loose) > 3 else "")
        warnings.warn(
            f"{len(loose)} images lie in {catalog.root!r} beside its class folders and are not read (as Keras' "
            f"loaders ignore them): {shown}. Move them into a class folder, or list the files in a .txt/.csv",
            CatalogWarning,
            stacklevel=3,
        )


def _list_entry(root: str, entry: str) -> str:
    """A list entry as a catalog path: relative entries normalized, absolute ones made relative if inside."""
    if os.path.isabs(entry):
        entry = os.path.normpath(entry)
        inside = os.path.commonpath([root, entry]) == root
        return os.path.relpath(entry, root) if inside else entry
    return os.path.normpath(entry)


def _read_list(list_path: str) -> tuple[list[str], list[str | None]]:
    """Raw (paths, labels) of a ``.txt`` or ``.csv`` file list.

    Names that are not valid UTF-8 survive through ``surrogateescape``, as :func:`os.fsdecode`
    would give them.
    """
    raw_paths, raw_labels = [], []
    with open(list_path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        if list_path.lower().endswith(".csv"):
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            if "path" not in header:
                raise ValueError(
                    "A CSV file list needs a header row with a 'path' column (and optionally 'label'). "
                    f"Received: columns={header} in {list_path!r}"
                )
            col_path = header.index("path")
            col_label = header.index("label") if "label" in header else None
            for row in reader:
                if len(row) <= col_path or not row[col_path].strip():
                    continue
                raw_paths.append(row[col_path].strip())
                label = row[col_label].strip() if col_label is not None and len(row) > col_label else ""
                raw_labels.append(label or None)
        else:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    raw_paths.append(line)
                    raw_labels.append(None)
    return raw_paths, raw_labels


def _from_list(list_path: str, classes: list[str] | None) -> Catalog:
    root = os.path.dirname(os.path.abspath(list_path))
    raw_paths, raw_labels = _read_list(list_path)
    paths = [_list_entry(root, p) for p in raw_paths]
    if all(label is None for label in raw_labels):
        if classes is not None:
            raise ValueError(
                f"`classes` was given but the file list {list_path!r} has no labels. Received: classes={list(classes)}"
            )
        return Catalog(root, paths, np.full(len(paths), -1, dtype=np.int64), [])
    names = sorted({label for label in raw_labels if label is not None})
    if classes is not None:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise ValueError(f"The file list has labels not in `classes`: {unknown}. Received: classes={list(classes)}")
        names = list(classes)
    index = {name: i for i, name in enumerate(names)}
    labels = np.asarray([-1 if label is None else index[label] for label in raw_labels], dtype=np.int64)
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
        follow_links: enter symlinked folders and follow links out of the root. By default
            symlinked folders are not entered (nor counted as classes) and symlinked files are
            kept only if they point inside the root: no catalog path escapes the root.
        extensions: file extensions to keep (case-insensitive, with or without the dot).

    Raises:
        FileNotFoundError: if ``source`` does not exist.
        ValueError: if ``classes`` names unknown classes, or nothing matches.
    """
    source = os.fsdecode(os.fspath(source))
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    if classes is not None:
        classes = [os.fsdecode(c) for c in classes] or None
    if classes is not None and len(set(classes)) != len(classes):
        raise ValueError(f"`classes` repeats a name. Received: classes={classes}")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if not exts:
        raise ValueError(f"`extensions` needs at least one extension. Received: extensions={extensions!r}")
    if not os.path.exists(source):
        raise FileNotFoundError(f"No such directory or file list. Received: source={source!r}")
    if os.path.isdir(source):
        catalog = _from_directory(os.path.abspath(source), classes, follow_links, exts)
    elif source.lower().endswith((".txt", ".csv")):
        catalog = _from_list(source, classes)
    else:
        raise ValueError(
            f"`source` must be a directory or a .txt/.csv file list. Received: source={source!r}"
        )
    if len(catalog) == 0:
        raise ValueError(
            f"No images found (extensions: {', '.join(e.lstrip('.') for e in exts)}; "
            "a folder of class subfolders or a flat folder of images was expected). "
            f"Received: source={source!r}"
        )
    return catalog
