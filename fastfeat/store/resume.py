"""Resuming a store: open it in place (uncompressed), or rebuild it from its committed rows
(compressed), after checking it read-only (:mod:`fastfeat.store.recovery`).
"""

from __future__ import annotations

import errno
import os

import h5py
import numpy as np

from . import layout, recovery
from .create import create_store, encode_meta
from .recovery import UnrecoverableStoreError


def open_for_resume(path: str) -> tuple[h5py.File, dict | None, np.ndarray | None]:
    """Open a store to resume it: ``(file, pending rows, state)``.

    An uncompressed store is opened in place (``pending`` and ``state`` are ``None``); a
    compressed one is rebuilt (:func:`rebuild`). Raises :class:`UnrecoverableStoreError`, having
    changed nothing, when the file is not an intact fastfeat store.
    """
    # read-only first: a foreign or damaged file is refused without a byte of it changing
    problem = recovery.check_resumable_path(path)
    if problem:
        raise UnrecoverableStoreError(
            f"Cannot resume {path!r}: {problem}. Write it again with --overwrite."
        )
    intact_bytes = recovery.repair_short_file(path)
    try:
        f = h5py.File(path, "r+", libver=layout.LIBVER)
    except OSError as e:
        raise UnrecoverableStoreError(
            f"Cannot resume {path!r}: HDF5 cannot open it ({e}). Write it again with --overwrite."
        ) from e
    try:
        problem = recovery.check_resumable_file(f, intact_bytes)
    except (KeyError, ValueError, OSError) as e:
        problem = f"its structure is damaged ({e})"
    if problem:
        f.close()
        raise UnrecoverableStoreError(
            f"Cannot resume {path!r}: {problem}. Write it again with --overwrite."
        )
    if any(ds.compression is not None for ds in f[layout.FEATURES].values()):
        return rebuild(path, f)
    return f, None, None


def rebuild(path: str, old: h5py.File) -> tuple[h5py.File, dict, np.ndarray]:
    """Resume a compressed store by copying its committed rows into a fresh file.

    Compressed chunks are allocated as they are written, so a killed writer can leave chunk
    index entries (for uncommitted rows) pointing past the end HDF5 recorded; writing those
    chunks again in place could free space that is in use. The committed chunks are copied
    as stored bytes (each one decoded once, to check it), the rows of a last partial chunk
    go back to the pending buffer, and the new file replaces the old one atomically.
    """
    try:
        state = old[layout.STATE][:].astype(np.int64)
        rows, failed = int(state[layout.S_ROWS]), int(state[layout.S_FAILED])
        spec = {}
        for key, ds in old[layout.FEATURES].items():
            comp = None if ds.compression is None else (
                f"gzip:{ds.compression_opts}" if ds.compression == "gzip" else ds.compression
            )  # fmt: skip
            spec[key] = (ds.shape[1:], ds.dtype, ds.chunks[0], comp)
        capacity = max(old[layout.LABELS].shape[0], 1)
        names = [os.fsdecode(n) for n in old[layout.CLASS_NAMES][()]]
        meta = recovery.read_meta(old, state)
        pending: dict[str, np.ndarray] = {}
        # rows in whole chunks of every compressed feature: what the new file holds on disk
        whole = min(
            [rows] + [rows // ds.chunks[0] * ds.chunks[0] for ds in old[layout.FEATURES].values() if ds.compression]
        )

        def fill(new: h5py.File) -> None:
            for key, ds in old[layout.FEATURES].items():
                pending[key] = recovery.copy_committed_rows(ds, new[layout.FEATURES][key], rows)
            for name in (layout.LABELS, layout.INDEX, layout.COPY):
                new[name][:rows] = old[name][:rows]
            new[layout.FAILURE_INDEX][:failed] = old[layout.FAILURE_INDEX][:failed]
            for name, n, slot in (
                (layout.PATHS, rows, layout.S_PATH_BYTES),
                (layout.FAILURE_PATHS, failed, layout.S_FPATH_BYTES),
                (layout.FAILURE_REASONS, failed, layout.S_FREASON_BYTES),
            ):
                used = int(state[slot])
                new[name][layout.ENDS][:n] = old[name][layout.ENDS][:n]
                if used > new[name][layout.BYTES].shape[0]:
                    new[name][layout.BYTES].resize(used, axis=0)
                new[name][layout.BYTES][:used] = old[name][layout.BYTES][:used]
            new.flush()
            state[layout.S_META_SLOT] = 0  # the new file holds the description in slot 0
            state[layout.S_META_LEN] = len(encode_meta(meta))
            # The rows of a last partial chunk stay pending (in memory) until their chunk is
            # written whole, so the new file may only publish rows that lie in written chunks,
            # cut where no image has rows on both sides (whole batches: all copies of an image).
            cut = recovery.safe_cut(old[layout.INDEX][:rows], whole)
            disk = state.copy()
            disk[layout.S_ROWS] = cut
            if cut < rows:
                disk[layout.S_COMPLETE] = 0
                disk[layout.S_PATH_BYTES] = int(old[layout.PATHS][layout.ENDS][cut - 1]) if cut else 0
            new[layout.STATE][:] = disk
    except (KeyError, ValueError, OSError, RuntimeError) as e:
        old.close()
        raise UnrecoverableStoreError(
            f"Cannot resume {path!r}: its committed rows cannot be read ({e}). "
            "Write it again with --overwrite."
        ) from e
    try:
        f = create_store(path, spec, capacity, names, meta, None, None, fill=fill)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise
        raise UnrecoverableStoreError(
            f"Cannot resume {path!r}: its committed rows cannot be read ({e}). "
            "Write it again with --overwrite."
        ) from e
    except (KeyError, ValueError, RuntimeError) as e:
        raise UnrecoverableStoreError(
            f"Cannot resume {path!r}: its committed rows cannot be read ({e}). "
            "Write it again with --overwrite."
        ) from e
    finally:
        old.close()
    return f, pending, state  # the committed rows, some of them pending in memory
