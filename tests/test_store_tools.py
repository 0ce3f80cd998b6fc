"""Store adapters (tf.data, PyDataset, scikit-learn), merge and the ``info``/``merge`` commands."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from test_store import SHAPE, rows_of, write_store

from fastfeat.cli import main
from fastfeat.store import IncompleteStoreWarning, merge_stores, open_store
from fastfeat.store.adapters import epoch_batches
from fastfeat.store.merge import merge_class_names


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("small") / "s.h5", n=45, fail_every=9)


def _rows_ids(store):
    return {int(i): k for k, i in enumerate(store.index)}


def test_arrays_is_a_view_unless_loaded(small):
    with open_store(small) as s:
        X, y = s.arrays("conv")
        assert isinstance(X, np.memmap) and X.shape == (s.rows, int(np.prod(SHAPE)))
        assert np.array_equal(y, s.labels)
        X2, _ = s.arrays("conv", flatten=False, load=True)
        assert type(X2) is np.ndarray and X2.shape == (s.rows,) + SHAPE
        assert np.array_equal(X2, rows_of(s.index))


def test_epoch_batches_cover_every_row_once_and_reshuffle():
    a = epoch_batches(23, 5, True, seed=7, epoch=0)
    b = epoch_batches(23, 5, True, seed=7, epoch=1)
    assert [len(x) for x in a] == [5, 5, 5, 5, 3]
    assert np.array_equal(np.sort(np.concatenate(a)), np.arange(23))
    assert all(np.all(np.diff(x) > 0) for x in a)  # sorted within a batch: forward reads
    assert not all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(np.array_equal(x, y) for x, y in zip(a, epoch_batches(23, 5, True, seed=7, epoch=0)))
    assert [len(x) for x in epoch_batches(23, 5, False, 0, 0, drop_remainder=True)] == [5] * 4


@pytest.mark.parametrize("compression", ["none", "lzf"])
def test_to_dataset_batches_labels_and_reshuffle(tmp_path, compression):
    path = write_store(tmp_path / "d.h5", n=45, fail_every=9, compression=None if compression == "none" else "lzf")
    with open_store(path) as s:
        ds = s.to_dataset("conv", batch_size=8, shuffle=True, seed=3)
        assert int(ds.cardinality()) == -(-s.rows // 8)
        epochs = []
        for _ in range(2):
            seen = []
            for x, y in ds:
                x, y = x.numpy(), y.numpy()
                assert x.dtype == np.float32 and x.shape[1:] == SHAPE and len(x) <= 8
                for row, label in zip(x, y):  # every row carries its own label
                    k = next(i for i in s.index if np.array_equal(rows_of([i])[0], row))
                    assert label == k % 2
                    seen.append(int(k))
            assert sorted(seen) == sorted(s.index.tolist())
            epochs.append(seen)
        assert epochs[0] != epochs[1]
        flat = s.to_dataset("conv", batch_size=16, shuffle=False, flatten=True, drop_remainder=True)
        shapes = [tuple(x.shape) for x, _ in flat]
        assert shapes == [(16, int(np.prod(SHAPE)))] * (s.rows // 16)
        first = next(iter(flat))[0].numpy()
        assert np.array_equal(first, rows_of(s.index[:16]).reshape(16, -1))
        with pytest.raises(ValueError, match="Received: batch_size=0"):
            s.to_dataset("conv", batch_size=0)
        empty = s.to_dataset("conv", batch_size=8, rows=np.array([], np.int64))  # no batches, no work
        assert int(empty.cardinality()) == 0 and list(empty) == []


def test_to_dataset_trains_a_dense_head(small):
    import keras

    with open_store(small) as s:
        ds = s.to_dataset("conv", batch_size=16, seed=0)
        model = keras.Sequential(
            [keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(8, activation="relu"),
             keras.layers.Dropout(0.5), keras.layers.Dense(2, activation="softmax")]
        )  # fmt: skip
        model.compile("adam", "sparse_categorical_crossentropy")
        history = model.fit(ds, epochs=2, verbose=0, shuffle=False)  # the dataset shuffles itself
        assert len(history.history["loss"]) == 2


def test_to_pydataset(small):
    with open_store(small) as s:
        pyds = s.to_pydataset("conv:avg", batch_size=10, seed=1)
        assert len(pyds) == -(-s.rows // 10)
        x, y = pyds[0]
        assert x.dtype == np.float16 and x.shape == (10, SHAPE[-1]) and y.shape == (10,)
        before = [b.copy() for b in pyds.batches]
        pyds.on_epoch_end()
        assert not all(np.array_equal(a, b) for a, b in zip(before, pyds.batches))


def test_merge_class_names_by_name():
    names, maps = merge_class_names([["cat", "dog"], ["dog", "eel", "cat"]])
    assert names == ["cat", "dog", "eel"]
    assert [m.tolist() for m in maps] == [[0, 1], [1, 2, 0]]


def test_merge_round_trip_reconciles_classes(tmp_path):
    a = write_store(tmp_path / "a.h5", n=20, fail_every=6, classes=("cat", "dog"))
    b = write_store(tmp_path / "b.h5", n=13, classes=("dog", "eel", "cat"))
    out = tmp_path / "all.h5"
    summary = merge_stores([a, b], out)
    assert summary["rows"] == 20 - 4 + 13 and summary["class_names"] == ["cat", "dog", "eel"]
    with open_store(a) as sa, open_store(b) as sb, open_store(out) as m:
        assert m.complete and m.rows == sa.rows + sb.rows
        names = m.class_names
        for k in m.layers:
            assert np.array_equal(m.features(k)[:], np.concatenate([sa.features(k)[:], sb.features(k)[:]]))
        assert m.paths == sa.paths + sb.paths
        merged = [names[i] for i in m.labels]
        assert merged == [sa.class_names[i] for i in sa.labels] + [sb.class_names[i] for i in sb.labels]
        assert m.failures == sa.failures + sb.failures
        assert np.array_equal(m.index, np.concatenate([sa.index, sb.index + 20]))  # b's images come after a's 20
        assert m.meta["merged_from"] == [str(a), str(b)] and m.meta["merged_rows"] == [sa.rows, sb.rows]
        assert m.is_memmapped("conv")
    with pytest.raises(FileExistsError, match="--overwrite"):
        merge_stores([a, b], out)
    merge_stores([a, b], out, overwrite=True, compression="gzip:1")
    with open_store(out) as m:
        assert m.compression("conv") == "gzip:1" and m.rows == 29


def test_merge_refuses_incompatible_and_incomplete(tmp_path):
    a = write_store(tmp_path / "a.h5", n=10)
    b = write_store(tmp_path / "b.h5", n=10)
    from fastfeat.store import StoreWriter

    c = tmp_path / "c.h5"
    StoreWriter(c, {"conv": ((3,), "float32")}, 2, ["a"], {"model": "other", "layers": ["conv"]}).close(True)
    with pytest.raises(ValueError, match="model: .* has 'toy', .* has 'other'"):
        merge_stores([a, c], tmp_path / "x.h5")
    with pytest.raises(ValueError, match="must not be one of the inputs"):
        merge_stores([a, b], a, overwrite=True)
    with pytest.raises(ValueError, match="at least two"):
        merge_stores([a], tmp_path / "x.h5")
    d = write_store(tmp_path / "d.h5", n=10, complete=False)
    with pytest.warns(IncompleteStoreWarning), pytest.raises(ValueError, match="allow_incomplete=False"):
        merge_stores([a, d], tmp_path / "x.h5")
    with pytest.warns(IncompleteStoreWarning):
        assert merge_stores([a, d], tmp_path / "x.h5", allow_incomplete=True)["rows"] == 20


def test_info_command(tmp_path, capsys):
    path = write_store(tmp_path / "i.h5", n=30, fail_every=10, compression="gzip:4", classes=("cat", "dog"))
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    for needle in ("complete:     yes", "rows:         27", "failures: 3", "model:        toy", "conv: (27, 5, 4, 6) "
                   "float32", "compression gzip:4", "not memory-mappable", "cat: 15", "dog: 12", "failed: x/bad_1.jpg"):
        assert needle in text, (needle, text)
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    conv = info["layers"][0]
    assert info["rows"] == 27 and info["class_counts"] == {"cat": 15, "dog": 12}
    assert conv["compression_ratio"] > 1.2 and conv["memory_mappable"] is False
    assert info["size_on_disk"] > 0 and info["complete"] is True
    plain = write_store(tmp_path / "p.h5", n=10, complete=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["info", str(plain)]) == 0
    text = capsys.readouterr().out
    assert "complete:     NO" in text and "memory-mapped" in text


def test_merge_command(tmp_path, capsys):
    a = write_store(tmp_path / "a.h5", n=12)
    b = write_store(tmp_path / "b.h5", n=8)
    out = tmp_path / "m.h5"
    assert main(["merge", str(a), str(b), "-o", str(out)]) == 0
    assert "20 rows" in capsys.readouterr().out
    assert main(["merge", str(a), str(b), "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["merge", str(a), str(b), "-o", str(out), "--overwrite", "--compression", "lzf"]) == 0
    with open_store(out) as m:
        assert m.rows == 20 and m.compression("conv") == "lzf"
