"""Planning a run apart from running it: :class:`ExtractPlan` says what to extract (the settings,
the catalog, the catalog positions still to do, and what a resumed store fixes) and can be cut
into contiguous parts that run anywhere; :func:`run_meta` is the store's run description.
Never imports TensorFlow.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np

from .catalog import Catalog, build_catalog, warn_left_out
from .config import ExtractConfig
from .precision import PRECISIONS
from .runkeys import RESUME_KEYS, RUN_KEYS, check_resumable


@dataclass(frozen=True)
class ExtractPlan:
    """What one run (or one part of it) extracts.

    Attributes:
        config: the settings.
        catalog: the whole catalog (positions refer to it).
        positions: sorted catalog positions to extract.
        precision: the inference precision: the config's, or the one a resumed store recorded
            (so the rows it adds match those it has).
        batch_size: the batch size (the resumed store's when the config leaves it to us), or
            ``None`` to choose it within memory.
        stored: the run description of the store being resumed (read-only), or ``None``.
        bounds: the ``[start, stop)`` range of catalog positions this plan covers.
        complete: the store being resumed is complete already (its run finished: nothing to do).
    """

    config: ExtractConfig
    catalog: Catalog
    positions: np.ndarray
    precision: str
    batch_size: int | None
    stored: dict | None = None
    bounds: tuple[int, int] = (0, 0)
    complete: bool = False

    def __len__(self) -> int:
        return len(self.positions)

    def parts(self, n: int) -> list[ExtractPlan]:
        """``n`` plans over contiguous, deterministic ranges of the catalog (its
        :meth:`~fastfeat.catalog.Catalog.part_bounds`), in order: together they do what this one does."""
        out = []
        for start, stop in self.catalog.part_bounds(n):
            lo, hi = max(start, self.bounds[0]), min(stop, self.bounds[1])
            chosen = self.positions[(self.positions >= lo) & (self.positions < hi)]
            out.append(replace(self, positions=chosen, bounds=(lo, max(lo, hi))))
        return out

    def without(self, done) -> ExtractPlan:
        """This plan less the catalog positions ``done`` (rows or failures already stored)."""
        return replace(self, positions=np.setdiff1d(self.positions, np.asarray(done, np.int64), assume_unique=True))


def stored_meta(output: str) -> dict | None:
    """The run description of an existing store, read-only; ``None`` if it cannot be read (the
    writer then says why it cannot be resumed)."""
    return stored_state(output)[0]


def stored_state(output: str) -> tuple[dict | None, bool]:
    """(run description, whether its run finished) of an existing store, read-only; ``(None,
    False)`` if it cannot be read (the writer then says why it cannot be resumed)."""
    from .store import open_store

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an incomplete store is exactly what a resume expects
            with open_store(output) as store:
                return dict(store.meta), bool(store.complete)
    except Exception:  # noqa: BLE001 -- damaged or foreign: StoreWriter(mode="resume") reports it
        return None, False


def plan_extraction(config: ExtractConfig) -> ExtractPlan:
    """Read the catalog (and, for a resume, the store's settings) and plan the whole run."""
    catalog = build_catalog(config.source, classes=config.classes, follow_links=config.follow_links)
    warn_left_out(catalog)
    stored, complete = stored_state(config.output) if config.resume and os.path.exists(config.output) else (None, False)
    precision, batch_size = config.precision, config.batch_size
    if stored is not None:  # a resumed run keeps what the first run chose, so its rows match
        if precision == "auto" and stored.get("precision") in PRECISIONS:
            precision = stored["precision"]
        if batch_size is None and isinstance(stored.get("batch_size"), int):
            batch_size = stored["batch_size"]
    positions = np.arange(len(catalog), dtype=np.int64)
    return ExtractPlan(config, catalog, positions, precision, batch_size, stored, (0, len(catalog)), complete)


def check_resume_settings(plan: ExtractPlan) -> None:
    """Refuse a resume whose settings differ from the store's, on every resume key known without
    the model (the rest is checked once it is built): before anything is built or downloaded."""
    if plan.stored is None:
        return
    config, catalog = plan.config, plan.catalog
    wanted = config.to_meta()
    wanted.update(catalog_size=len(catalog), catalog_sha256=catalog.fingerprint(), class_names=list(catalog.class_names))
    if config.image_size is not None:
        wanted["image_size"] = list(config.image_size)
    if config.precision != "auto":
        wanted["precision"] = config.precision
    if config.layers is None:  # a model file's last layer: known once it is loaded
        wanted.pop("layers")
    keys = [k for k in RESUME_KEYS if k in wanted]
    check_resumable({k: plan.stored.get(k) for k in keys}, {k: wanted[k] for k in keys})


def run_meta(plan: ExtractPlan, built) -> dict:
    """The store's run description (every key of :data:`fastfeat.runkeys.RUN_KEYS`, in its order)."""
    from .extractor import library_versions

    catalog = plan.catalog
    values = plan.config.to_meta()
    values.update(
        shapes={k: list(v) for k, v in built.shapes.items()},
        image_size=list(built.size),
        precision=built.precision,
        precision_auto=built.auto.to_meta() if built.auto is not None else None,
        init_seed=built.init_seed,
        batch_size=built.batch_size,
        batch_size_auto=built.batch_size_auto,
        device=built.runtime.device.spec,
        runtime=built.runtime.to_meta(),
        catalog_size=len(catalog),
        catalog_sha256=catalog.fingerprint(),
        class_names=list(catalog.class_names),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        versions=library_versions(),
    )
    return {key: values[key] for key, _, _ in RUN_KEYS}
