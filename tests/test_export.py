"""`fastfeat export` through the real parser: rows as CSV, a layer as .npy / .csv / .parquet, streamed,
equal to what the store holds."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from fastfeat.cli import main
from fastfeat.store import StoreWriter, open_store
from fastfeat.store import export as E


@pytest.fixture
def store(tmp_path):
    """6 rows: 3 images, plain rows then one augmented copy each; two layers, one of them wide."""
    path = tmp_path / "s.h5"
    rng = np.random.default_rng(0)
    writer = StoreWriter(path, {"map": ((2, 3, 4), "float32"), "vec:avg": ((5,), "float16")}, capacity=6,
                         class_names=["cat", "dog"], meta={"layers": ["map", "vec:avg"]}, mode="create")  # fmt: skip
    feats = {"map": rng.normal(size=(6, 2, 3, 4)).astype(np.float32),
             "vec:avg": rng.normal(size=(6, 5)).astype(np.float16)}  # fmt: skip
    writer.append(feats, np.array([0, 1, 1, 0, 1, 1]), ["a.png", "b.png", "c.png"] * 2, np.array([0, 1, 2] * 2),
                  np.array([0, 0, 0, 1, 1, 1]))  # fmt: skip
    writer.commit()
    writer.close(complete=True)
    return path, feats


def test_rows_to_stdout_and_to_a_file(store, tmp_path, capsys):
    path, _ = store
    assert main(["export", str(path), "--rows"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "row,path,label,class,copy,image" and len(lines) == 7
    assert lines[4] == "3,a.png,0,cat,1,0"
    out = tmp_path / "rows.csv"
    assert main(["export", str(path), "--rows", "-o", str(out)]) == 0
    assert main(["export", str(path), "--rows", "-o", str(out)]) == 2  # exists: refused without --overwrite
    assert main(["export", str(path), "--rows", "-o", str(out), "--overwrite"]) == 0


@pytest.mark.parametrize("layer", ["map", "vec:avg"])
def test_npy_and_csv_equal_the_store(store, tmp_path, layer, monkeypatch):
    path, feats = store
    monkeypatch.setattr(E, "STEP_BYTES", 64)  # several steps even on this tiny store
    npy = tmp_path / "f.npy"
    assert main(["export", str(path), "--layer", layer, "-o", str(npy)]) == 0
    np.testing.assert_array_equal(np.load(npy), feats[layer])
    with open(tmp_path / "f.rows.csv") as f:
        assert [r["path"] for r in csv.DictReader(f)] == ["a.png", "b.png", "c.png"] * 2
    out = tmp_path / "f.csv"
    assert main(["export", str(path), "--layer", layer, "-o", str(out)]) == 0
    with open(out) as f:
        rows = list(csv.reader(f))
    width = int(np.prod(feats[layer].shape[1:]))
    assert rows[0][:6] == list(E.ROW_COLUMNS) and len(rows[0]) == 6 + width
    values = np.array([[float(v) for v in r[6:]] for r in rows[1:]])
    np.testing.assert_array_equal(values, feats[layer].reshape(6, -1).astype(np.float64))


def test_parquet_equals_the_store(store, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    path, feats = store
    out = tmp_path / "f.parquet"
    assert main(["export", str(path), "--layer", "map", "-o", str(out)]) == 0
    table = pq.read_table(out)
    assert table.column_names == [*E.ROW_COLUMNS, "features"]
    np.testing.assert_array_equal(np.array(table.column("features").to_pylist(), np.float32), feats["map"].reshape(6, -1))
    assert table.column("class").to_pylist() == ["cat", "dog", "dog", "cat", "dog", "dog"]


def test_export_errors_name_what_to_change(store, tmp_path, monkeypatch, capsys):
    path, _ = store
    assert main(["export", str(path), "-o", str(tmp_path / "x.txt")]) == 2
    assert "Received: format='txt'" in capsys.readouterr().err
    assert main(["export", str(path)]) == 2
    assert "-o/--output" in capsys.readouterr().err
    monkeypatch.setattr(E, "MAX_CSV_COLUMNS", 10)
    assert main(["export", str(path), "--layer", "map", "-o", str(tmp_path / "wide.csv")]) == 2
    assert "too wide for CSV" in capsys.readouterr().err
    with open_store(path) as s:
        assert E.row_table(s)[5] == {"row": 5, "path": "c.png", "label": 1, "class": "dog", "copy": 1, "image": 2}
