"""Row identity: every row names its source image in a way that survives merging, and
``split`` groups by it (stratified by class unless turned off)."""

from __future__ import annotations

import numpy as np
import pytest
from test_store import SHAPE, rows_of, write_store

from fastfeat.store import StoreWriter, merge_stores, open_store


def _part_paths(store):
    """(input part, path) of each row of a merged store: the true identity of its image."""
    part = np.repeat(np.arange(len(store.meta["merged_rows"])), store.meta["merged_rows"])
    return list(zip(part.tolist(), store.paths))


def test_merge_gives_every_source_image_its_own_identity(tmp_path):
    a = write_store(tmp_path / "a.h5", n=6)
    b = write_store(tmp_path / "b.h5", n=12)
    out = tmp_path / "m.h5"
    merge_stores([a, b], out)
    with open_store(out) as m:
        index = np.asarray(m.index)
        assert len(np.unique(index)) == 18 and np.array_equal(index, np.arange(18))
        ids = _part_paths(m)
        for seed in range(4):
            train, val = m.split(0.5, seed=seed)
            assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 18
            for side in (train, val):  # rows held together are one image: distinct identities
                assert len({ids[r] for r in side}) == len(side)
        assert m.meta["merged_index_base"] == [0, 6]


def test_merge_of_the_same_catalog_keeps_its_positions(tmp_path):
    """Stores from one catalog (shards of one run, same ``catalog_sha256``) keep their positions."""
    paths = []
    for name, (lo, hi) in (("s0", (0, 5)), ("s1", (5, 9))):
        w = StoreWriter(tmp_path / f"{name}.h5", {"conv": (SHAPE, "float32")}, capacity=hi - lo, class_names=["a"],
                        meta={"model": "toy", "layers": ["conv"], "catalog_sha256": "abc", "catalog_size": 9})
        pos = np.arange(lo, hi)
        w.append({"conv": rows_of(pos)}, np.zeros(len(pos)), [f"a/{k}.jpg" for k in pos], pos)
        w.close(complete=True)
        paths.append(tmp_path / f"{name}.h5")
    merge_stores(paths, tmp_path / "m.h5")
    with open_store(tmp_path / "m.h5") as m:
        assert np.array_equal(m.index, np.arange(9)) and m.meta["merged_index_base"] == [0, 0]
        assert m.meta["catalog_sha256"] == "abc" and m.meta["catalog_size"] == 9


def test_merge_rebases_failure_positions_too(tmp_path):
    a = write_store(tmp_path / "a.h5", n=10, fail_every=4)
    b = write_store(tmp_path / "b.h5", n=10, fail_every=4)
    merge_stores([a, b], tmp_path / "m.h5")
    with open_store(a) as sa, open_store(tmp_path / "m.h5") as m:
        both = np.concatenate([m.index, m.failure_index])
        assert len(np.unique(both)) == len(both) == 20
        assert np.array_equal(m.failure_index[: len(sa.failure_index)], sa.failure_index)


def _augmented_store(path, n=40, copies=2, classes=("a", "b", "c", "d")):
    """n images, label k % 4 except class d rare (1 in 8), each with ``copies`` augmented rows."""
    labels = np.array([k % 3 if k % 8 else 3 for k in range(n)])
    w = StoreWriter(path, {"v": ((2,), "float32")}, capacity=n * (1 + copies), class_names=list(classes),
                    meta={"model": "toy", "layers": ["v"]})
    for s in range(0, n, 8):
        pos = np.arange(s, min(s + 8, n))
        rows = np.tile(pos, 1 + copies)
        w.append({"v": np.stack([rows, rows], 1).astype(np.float32)}, labels[rows], [f"{k}.jpg" for k in rows],
                 rows, np.repeat(np.arange(1 + copies), len(pos)))
    w.close(complete=True)
    return path, labels


@pytest.mark.parametrize("stratify", [True, False])
def test_split_keeps_each_image_on_one_side(tmp_path, stratify):
    path, labels = _augmented_store(tmp_path / "aug.h5")
    with open_store(path) as s:
        index = np.asarray(s.index)
        train, val = s.split(0.25, seed=1, stratify=stratify, val_copies=None)
        assert not set(index[train]) & set(index[val])
        assert len(np.unique(index[val])) == 10 and len(val) == 30  # every copy of a held-out image
        _, val0 = s.split(0.25, seed=1, stratify=stratify)  # default: only the images themselves
        assert np.array_equal(np.unique(index[val0]), np.unique(index[val])) and len(val0) == 10
        again = s.split(0.25, seed=1, stratify=stratify, val_copies=None)
        assert all(np.array_equal(x, y) for x, y in zip(again, (train, val)))


def test_split_is_stratified_by_class(tmp_path):
    path, labels = _augmented_store(tmp_path / "aug.h5")
    with open_store(path) as s:
        per_class = np.bincount(labels, minlength=4)  # 12, 12, 11, 5 images (class d: 5)
        for seed in range(6):
            _, val = s.split(0.4, seed=seed)
            held = np.bincount(np.asarray(s.labels)[val], minlength=4)
            assert held.sum() == 16
            assert np.all(np.abs(held - per_class * 0.4) < 1), (seed, held)


def test_split_unstratified_draws_over_all_images(tmp_path):
    path, labels = _augmented_store(tmp_path / "aug.h5")
    with open_store(path) as s:
        counts = set()
        for seed in range(12):
            _, val = s.split(0.4, seed=seed, stratify=False)
            counts.add(tuple(np.bincount(np.asarray(s.labels)[val], minlength=4)))
        assert len(counts) > 3  # the class mix varies from seed to seed


def test_split_checks_its_arguments(tmp_path):
    path, _ = _augmented_store(tmp_path / "aug.h5")
    with open_store(path) as s:
        with pytest.raises(ValueError, match=r"Received: fraction=1\.5"):
            s.split(1.5)
        with pytest.raises(ValueError, match="Received: stratify='yes'"):
            s.split(0.2, stratify="yes")


def test_rows_of_images(tmp_path):
    path, _ = _augmented_store(tmp_path / "aug.h5", n=16)
    with open_store(path) as s:
        rows = s.rows_of(images=[3, 9])
        assert sorted(np.asarray(s.index)[rows].tolist()) == [3, 3, 3, 9, 9, 9]
        assert np.array_equal(np.asarray(s.copies)[s.rows_of(copies=0, images=[3])], [0])
        assert len(s.rows_of()) == s.rows


def test_store_merged_by_an_older_version_reads_with_distinct_identities(tmp_path):
    """Before ``merged_index_base``, merge kept each input's positions: the reader rebases them."""
    import h5py

    from fastfeat.store import layout

    a = write_store(tmp_path / "a.h5", n=6)
    b = write_store(tmp_path / "b.h5", n=12)
    out = tmp_path / "m.h5"
    merge_stores([a, b], out)
    with h5py.File(out, "r+") as f:  # what an older merge wrote: local positions, no base record
        f[layout.INDEX][:18] = np.concatenate([np.arange(6), np.arange(12)])
    _drop_meta_key(out, "merged_index_base")
    with open_store(out) as m:
        assert np.array_equal(m.index, np.arange(18))
        train, val = m.split(0.5, seed=0)
        ids = _part_paths(m)
        assert len({ids[r] for r in val}) == len(val)


def _drop_meta_key(path, key):
    import json

    import h5py

    from fastfeat.store import layout
    from fastfeat.store.recovery import read_meta

    with h5py.File(path, "r+") as f:
        state = f[layout.STATE][:]
        meta = read_meta(f, state)
        meta.pop(key, None)
        encoded = json.dumps(meta).encode()
        slot = int(state[layout.S_META_SLOT])
        f[layout.META_JSON][slot, : len(encoded)] = np.frombuffer(encoded, np.uint8)
        state[layout.S_META_LEN] = len(encoded)
        f[layout.STATE][:] = state
