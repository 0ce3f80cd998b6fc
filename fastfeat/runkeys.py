"""The keys of a store's run description (``meta``) and which of them a resume and a merge must
match: one table, read by :mod:`fastfeat.config` (the run description) and by the store
(``fastfeat merge``). A leaf module: it imports nothing.
"""

from __future__ import annotations

#: Every entry of a store's run description: (key, must match to resume the store, must match to
#: merge it with another). Rows written with another value of a resume key would not be the rows
#: the first run wrote; features that differ in a merge key are not comparable (the inference
#: precision too: float32 and bfloat16 features of one image differ by up to ~1e-2).
RUN_KEYS = (
    ("model", True, True), ("layers", True, True), ("shapes", False, True), ("image_size", True, True),
    ("interpolation", True, True), ("preprocess", True, True), ("precision", True, True),
    ("precision_requested", False, False), ("precision_auto", False, False), ("dtype", True, True),
    ("weights", True, True), ("init_seed", True, False), ("exif", True, False), ("reduced_decode", True, False),
    ("max_pixels", True, False), ("follow_links", True, False), ("compression", True, False),
    ("batch_size", True, False), ("batch_size_auto", False, False), ("device", False, False),
    ("runtime", False, False), ("source", False, False), ("catalog_size", True, False),
    ("catalog_sha256", True, False), ("class_names", True, False), ("augment_copies", True, False),
    ("augment", True, False), ("seed", True, False), ("created", False, False), ("versions", False, False),
)  # fmt: skip
#: Run settings that must match for ``--resume`` to continue a store.
RESUME_KEYS = tuple(key for key, resume, _ in RUN_KEYS if resume)
#: Run settings that must agree for features to be comparable, hence mergeable.
MERGE_KEYS = tuple(key for key, _, merge in RUN_KEYS if merge)


def differences(first: dict, second: dict, keys) -> list[tuple[str, object, object]]:
    """``(key, first value, second value)`` for every key of ``keys`` whose values differ."""
    return [(k, first.get(k), second.get(k)) for k in keys if first.get(k) != second.get(k)]


def check_resumable(stored: dict, wanted: dict) -> None:
    """Raise ``ValueError`` listing every resume key on which a store's meta and a run's differ."""
    diffs = [f"  {k}: store has {a!r}, this run has {b!r}" for k, a, b in differences(stored, wanted, RESUME_KEYS)]
    if diffs:
        raise ValueError("Cannot resume: the store was written with other settings:\n" + "\n".join(diffs))
