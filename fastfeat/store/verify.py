"""Checking what a store's bytes claim before trusting them, and :func:`verify_store`.

Stores are files people download and share, so readers treat them as untrusted input.
:func:`read_checked_state` runs when a store is opened: it checks, from HDF5 metadata only,
that ``/state`` and every dataset have the types, shapes and filters fastfeat writes and that
the committed rows and bytes fit in the datasets and the file (so no read allocates more than
the file could hold). :func:`verify_store` (``fastfeat info --verify``) also reads every chunk
of every dataset and reports each damaged one. This module never imports TensorFlow.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import h5py
import numpy as np

from . import codecs, layout
from .codecs import DamagedStoreError

#: Datasets beside the features: name -> (dtype kinds, what counts their used length).
AUX = {
    layout.LABELS: ("i", layout.S_ROWS),
    layout.INDEX: ("i", layout.S_ROWS),
    layout.COPY: ("i", layout.S_ROWS),
    f"{layout.PATHS}/{layout.ENDS}": ("i", layout.S_ROWS),
    f"{layout.PATHS}/{layout.BYTES}": ("u", layout.S_PATH_BYTES),
    layout.FAILURE_INDEX: ("i", layout.S_FAILED),
    f"{layout.FAILURE_PATHS}/{layout.ENDS}": ("i", layout.S_FAILED),
    f"{layout.FAILURE_PATHS}/{layout.BYTES}": ("u", layout.S_FPATH_BYTES),
    f"{layout.FAILURE_REASONS}/{layout.ENDS}": ("i", layout.S_FAILED),
    f"{layout.FAILURE_REASONS}/{layout.BYTES}": ("u", layout.S_FREASON_BYTES),
}
#: The string columns: group -> (count slot, byte-count slot).
STRINGS = {
    layout.PATHS: (layout.S_ROWS, layout.S_PATH_BYTES),
    layout.FAILURE_PATHS: (layout.S_FAILED, layout.S_FPATH_BYTES),
    layout.FAILURE_REASONS: (layout.S_FAILED, layout.S_FREASON_BYTES),
}
#: Rows read per step of an uncompressed dataset.
BLOCK_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Damage:
    """One damaged part of a store: ``dataset`` (e.g. ``"features/conv"``, ``"state"``),
    ``rows`` as ``(first, stop)`` when it concerns rows, and ``reason``."""

    dataset: str
    rows: tuple[int, int] | None
    reason: str

    def __str__(self) -> str:
        rows = f" rows {self.rows[0]}..{self.rows[1] - 1}" if self.rows else ""
        return f"{self.dataset}{rows}: {self.reason}"


@dataclass
class VerifyReport:
    """What :func:`verify_store` found: ``damage`` is empty for an intact store."""

    path: str
    rows: int | None = None
    chunks: int = 0
    damage: list[Damage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage

    def to_dict(self) -> dict:
        return {
            "path": self.path, "ok": self.ok, "rows": self.rows, "chunks_read": self.chunks,
            "damage": [{"dataset": d.dataset, "rows": d.rows, "reason": d.reason} for d in self.damage],
        }  # fmt: skip

    def format(self) -> str:
        if self.ok:
            return f"{self.path}: verified, no damage ({self.chunks:,} chunks read, {self.rows:,} rows)"
        n = len(self.damage)
        lines = [f"{self.path}: DAMAGED ({n} problem{'s' if n != 1 else ''}, {self.chunks:,} chunks read)"]
        lines += [f"  {d}" for d in self.damage]
        return "\n".join(lines)


def _get(f: h5py.File, name: str) -> h5py.Dataset | None:
    try:
        obj = f.get(name)
    except (KeyError, OSError, RuntimeError, ValueError):
        return None
    return obj if isinstance(obj, h5py.Dataset) else None


def _expanding(ds: h5py.Dataset) -> list[int]:
    dcpl = ds.id.get_create_plist()
    filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
    return [fid for fid in filters if fid not in codecs.NON_EXPANDING]


def layout_problems(f: h5py.File) -> list[Damage]:
    """Datasets that are missing or not of the type, shape and filters fastfeat writes (HDF5
    metadata only). Only features may be compressed: HDF5's own decompression has no memory
    bound, and every other dataset is read through it."""
    out = []
    state = _get(f, layout.STATE)
    if state is None or state.shape != (layout.STATE_SIZE,) or state.dtype != np.int64 or state.chunks is not None:
        out.append(Damage(layout.STATE, None, f"not a contiguous ({layout.STATE_SIZE},) int64 record"))
    elif state.id.get_offset() is None:
        out.append(Damage(layout.STATE, None, "its space was never allocated"))
    meta = _get(f, layout.META_JSON)
    if meta is None or meta.shape != (2, layout.META_BYTES) or meta.dtype != np.uint8 or _expanding(meta):
        out.append(Damage(layout.META_JSON, None, f"not an uncompressed (2, {layout.META_BYTES}) uint8 dataset"))
    for name, (kinds, _) in AUX.items():
        ds = _get(f, name)
        if ds is None or ds.ndim != 1 or ds.dtype.kind not in kinds or _expanding(ds):
            out.append(Damage(name, None, "missing, or not an uncompressed 1-D integer dataset"))
    names = _get(f, layout.CLASS_NAMES)
    if names is None or names.ndim != 1 or _expanding(names) or (
        h5py.check_vlen_dtype(names.dtype) not in (bytes, str) and names.dtype.kind != "S"
    ):
        out.append(Damage(layout.CLASS_NAMES, None, "missing, or not an uncompressed 1-D dataset of strings"))
    group = f.get(layout.FEATURES)
    if not isinstance(group, h5py.Group):
        out.append(Damage(layout.FEATURES, None, "missing"))
    else:
        for key in group:
            ds = _get(group, key)
            if ds is None or ds.ndim < 1:
                out.append(Damage(f"{layout.FEATURES}/{key}", None, "not an array dataset"))
    return out


def read_meta(f: h5py.File, state: np.ndarray) -> dict:
    """The current run description: the ``/meta_json`` slot ``state`` points at."""
    slot, n = int(state[layout.S_META_SLOT]), int(state[layout.S_META_LEN])
    if not (0 <= slot <= 1 and 0 < n <= layout.META_BYTES):
        raise DamagedStoreError(f"the meta record is damaged (slot {slot}, {n} bytes)", f.filename, "meta_json")
    try:
        meta = json.loads(f[layout.META_JSON][slot, :n].tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # invalid UTF-8 or JSON, or nested too deep
        raise DamagedStoreError(f"the run description is not valid JSON ({e})", f.filename, "meta_json") from e
    if not isinstance(meta, dict):
        raise DamagedStoreError("the run description is not a JSON object", f.filename, "meta_json")
    return meta


def read_state(f: h5py.File, path: str) -> np.ndarray:
    """``/state`` read from the file itself (``pread``), never from an HDF5 cache."""
    offset = f[layout.STATE].id.get_offset()
    fd = os.open(path, os.O_RDONLY)
    try:
        raw = os.pread(fd, layout.STATE_SIZE * 8, offset)
    finally:
        os.close(fd)
    if len(raw) != layout.STATE_SIZE * 8:
        raise DamagedStoreError("the file ends inside the /state record", path, layout.STATE)
    return np.frombuffer(raw, dtype=f[layout.STATE].dtype).astype(np.int64)


def state_problems(f: h5py.File, state: np.ndarray, file_size: int) -> list[Damage]:
    """Counts in ``/state`` that the datasets or the file cannot hold (metadata only)."""
    rows = int(state[layout.S_ROWS])
    out = []
    for slot, what in ((layout.S_ROWS, "rows"), (layout.S_FAILED, "failures")):
        n = int(state[slot])
        # every committed row (failure) has 8 uncompressed bytes of labels (index) in the file
        if not 0 <= n <= file_size // 8:
            out.append(Damage(layout.STATE, None, f"it claims {n} {what}; {file_size} bytes of file cannot hold them"))
    for slot, name in ((layout.S_PATH_BYTES, "paths"), (layout.S_FPATH_BYTES, "failure paths"),
                       (layout.S_FREASON_BYTES, "failure reasons")):  # fmt: skip
        if not 0 <= int(state[slot]) <= file_size:
            out.append(Damage(layout.STATE, None, f"it claims {int(state[slot])} bytes of {name}"))
    if out:
        return out
    for name, (_, slot) in AUX.items():
        held = f[name].shape[0]
        if int(state[slot]) > held:
            out.append(Damage(name, None, f"/state claims {int(state[slot])} entries; the dataset holds {held}"))
    for key, ds in f[layout.FEATURES].items():
        if rows > ds.shape[0]:
            name = f"{layout.FEATURES}/{key}"
            out.append(Damage(name, None, f"/state claims {rows} rows; the dataset holds {ds.shape[0]}"))
    return out


def read_checked_state(f: h5py.File, path: str) -> np.ndarray:
    """``/state``, after checking the store's layout and that its counts fit (what opening a
    store trusts; cheap, metadata only).

    Raises:
        DamagedStoreError: the first problem found.
    """
    problems = layout_problems(f)
    if not problems:
        state = read_state(f, path)
        problems = state_problems(f, state, os.path.getsize(path))
    if problems:
        first = problems[0]
        raise DamagedStoreError(first.reason, path, first.dataset, first.rows)
    return state


def _blocks(ds: h5py.Dataset, n: int) -> list[tuple[int, int]]:
    """Row ranges of ``ds[:n]``: its chunks, or blocks of about ``BLOCK_BYTES``."""
    if ds.chunks is not None:
        step = int(ds.chunks[0])
    else:
        row = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
        step = max(1, BLOCK_BYTES // row)
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _read_blocks(report: VerifyReport, name: str, ds: h5py.Dataset, n: int, check=None) -> None:
    """Read ``ds[:n]`` through h5py block by block; ``check(block, first)`` returns a reason."""
    for a, b in _blocks(ds, n):
        report.chunks += 1
        try:
            block = ds[a:b]
        except (OSError, RuntimeError, ValueError) as e:
            report.damage.append(Damage(name, (a, b), f"HDF5 cannot read it ({e})"))
            continue
        reason = check(block, a) if check is not None else None
        if reason:
            report.damage.append(Damage(name, (a, b), reason))


def _verify_features(report: VerifyReport, path: str, key: str, ds: h5py.Dataset, rows: int, workers: int) -> None:
    from .views import map_features

    name = f"{layout.FEATURES}/{key}"
    try:
        view = map_features(path, ds, rows, workers=1)
    except DamagedStoreError as e:
        report.damage.append(Damage(name, e.rows, e.reason))
        return

    def read(span):
        try:
            np.ascontiguousarray(view[span[0] : span[1]])
        except DamagedStoreError as e:
            return Damage(name, e.rows or span, e.reason)
        return None

    spans = _blocks(ds, rows)
    report.chunks += len(spans)
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="fastfeat-verify") as pool:
        report.damage.extend(d for d in pool.map(read, spans) if d is not None)
    closer = getattr(view, "close", None)
    if closer is not None and not isinstance(view, np.ndarray):
        closer()


def _string_check(used: int):
    state = {"last": 0}

    def check(ends, first):
        ends = np.asarray(ends, np.int64)
        prev = np.concatenate([[state["last"]], ends[:-1]])
        state["last"] = int(ends[-1]) if ends.size else state["last"]
        bad = np.flatnonzero((ends < prev) | (ends > used))
        if bad.size:
            return f"row {first + int(bad[0])}: end offset {int(ends[bad[0]])} is out of order or past {used} bytes"
        return None

    return check


def verify_store(path: str | os.PathLike, workers: int | None = None) -> VerifyReport:
    """Read every chunk of every dataset of a store and report what is damaged.

    Args:
        path: the ``.h5`` store.
        workers: threads decoding feature chunks (default: up to 4, one per core).

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is False when anything is damaged.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such store: {path!r}. Received: path={path!r}")
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"`workers` must be a positive integer. Received: workers={workers!r}")
    report = VerifyReport(path)
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as e:
        report.damage.append(Damage("file", None, f"HDF5 cannot open it ({e})"))
        return report
    with f:
        try:
            _verify_file(report, f, path, workers)
        except (OSError, RuntimeError, KeyError) as e:  # HDF5 metadata that cannot be walked
            report.damage.append(Damage("file", None, f"HDF5 cannot read its structure ({e})"))
    return report


def _verify_file(report: VerifyReport, f: h5py.File, path: str, workers: int) -> None:
    if f.attrs.get(layout.ATTR_FORMAT) is None:
        report.damage.append(Damage("file", None, f"not a fastfeat store (no {layout.ATTR_FORMAT!r} attribute)"))
        return
    report.damage.extend(layout_problems(f))
    if report.damage:
        return
    try:
        state = read_state(f, path)
    except DamagedStoreError as e:
        report.damage.append(Damage(layout.STATE, None, e.reason))
        return
    problems = state_problems(f, state, os.path.getsize(path))
    report.damage.extend(problems)
    if problems:  # check what the datasets hold, as far as they go
        state = state.copy()
        held = {slot: [f[n].shape[0] for n, (_, s) in AUX.items() if s == slot] for _, slot in AUX.values()}
        held[layout.S_ROWS] += [d.shape[0] for d in f[layout.FEATURES].values()]
        for slot, sizes in held.items():
            state[slot] = min(max(0, int(state[slot])), min(sizes))
    rows = report.rows = int(state[layout.S_ROWS])
    try:
        read_meta(f, state)
    except DamagedStoreError as e:
        report.damage.append(Damage(layout.META_JSON, None, e.reason))
    n_classes = None
    try:
        n_classes = len(f[layout.CLASS_NAMES][()])
    except (OSError, RuntimeError, ValueError) as e:
        report.damage.append(Damage(layout.CLASS_NAMES, None, f"HDF5 cannot read it ({e})"))
    for key, ds in f[layout.FEATURES].items():
        _verify_features(report, path, key, ds, min(rows, ds.shape[0]), workers)
    _verify_columns(report, f, state, n_classes)


def _verify_columns(report: VerifyReport, f: h5py.File, state: np.ndarray, n_classes: int | None) -> None:
    """Labels, index, copies, failures and the string columns, against ``state``."""
    rows, failed = int(state[layout.S_ROWS]), int(state[layout.S_FAILED])

    def labels_check(block, first):
        bad = np.flatnonzero((block < -1) | (block >= n_classes)) if n_classes is not None else []
        if not len(bad):
            return None
        return f"row {first + int(bad[0])}: label {int(block[bad[0]])} not in -1..{n_classes - 1}"

    def non_negative(block, first):
        bad = np.flatnonzero(block < 0)
        return f"row {first + int(bad[0])}: negative value {int(block[bad[0]])}" if bad.size else None

    _read_blocks(report, layout.LABELS, f[layout.LABELS], rows, labels_check)
    _read_blocks(report, layout.INDEX, f[layout.INDEX], rows, non_negative)
    _read_blocks(report, layout.COPY, f[layout.COPY], rows, non_negative)
    _read_blocks(report, layout.FAILURE_INDEX, f[layout.FAILURE_INDEX], failed, non_negative)
    for group, (count_slot, bytes_slot) in STRINGS.items():
        n, used = (rows if count_slot == layout.S_ROWS else failed), int(state[bytes_slot])
        ends_name, bytes_name = f"{group}/{layout.ENDS}", f"{group}/{layout.BYTES}"
        ends, blob = f[ends_name], f[bytes_name]
        _read_blocks(report, ends_name, ends, n, _string_check(used))
        if n and not any(d.dataset == ends_name for d in report.damage):
            last = int(ends[n - 1])
            if last != used:
                report.damage.append(Damage(ends_name, (n - 1, n), f"ends at byte {last}; /state says {used}"))
        _read_blocks(report, bytes_name, blob, min(used, blob.shape[0]))
