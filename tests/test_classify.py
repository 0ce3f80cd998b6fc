"""End to end on real extracted features: extract -> probe -> classify through the real parser.
The images are generated here (three classes of noisy colour/texture), so no test saw them."""

from __future__ import annotations

import csv
import json
import os
import shutil

import cv2
import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

import fastfeat  # noqa: E402
from fastfeat.cli import main  # noqa: E402
from fastfeat.store import open_store  # noqa: E402

CLASSES = ("reddish", "greenish", "striped")
PER_CLASS = 14


def make_image(cls: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 90, (24, 24, 3)).astype(np.int32)
    if cls == 0:
        img[..., 2] += 120  # BGR: red
    elif cls == 1:
        img[..., 1] += 120
    else:
        img[::4] += 150
    img += int(rng.integers(0, 40))
    return np.clip(img, 0, 255).astype(np.uint8)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, tiny_model_file):
    root = tmp_path_factory.mktemp("images")
    for c, name in enumerate(CLASSES):
        os.makedirs(root / name)
        for i in range(PER_CLASS):
            cv2.imwrite(str(root / name / f"img_{i}.png"), make_image(c, 1000 * c + i))
    store = root.parent / "features.h5"
    fastfeat.extract(root, store, model=tiny_model_file, layers=["conv2:avg"], precision="float32",
                     progress=False)  # fmt: skip
    return root, str(store)


def test_extract_probe_classify_through_the_cli(extracted, tmp_path, capsys):
    root, store = extracted
    out = tmp_path / "probe"
    assert main(["probe", store, "--layer", "conv2:avg", "--val-split", "0.3", "--classifier", "logistic",
                 "-o", str(out), "--bootstrap", "50"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "balanced accuracy" in printed and "reddish" in printed
    with open(out / "metrics.json", encoding="utf-8") as f:
        metrics = json.load(f)
    assert metrics["accuracy"] >= 0.8, metrics  # chance is 1/3
    evaluated = read_csv(out / "predictions.csv")
    assert len(evaluated) == metrics["n"] >= 9
    # the held-out images, copied into a new folder, plus one file that is not an image
    new = tmp_path / "new"
    for row in evaluated:
        os.makedirs(new / os.path.dirname(row["path"]), exist_ok=True)
        shutil.copy(root / row["path"], new / row["path"])
    (new / "striped" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    csv_path = tmp_path / "predictions.csv"
    assert main(["classify", str(out), str(new), "-o", str(csv_path), "--top-k", "2", "--quiet"]) == 0
    rows = read_csv(csv_path)
    assert list(rows[0]) == ["path", "predicted", "probability", "top2", "top2_probability", "label", "error"]
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == len(evaluated) + 1
    broken = by_path[os.path.join("striped", "broken.png")]
    assert broken["error"] and broken["predicted"] == "" and broken["probability"] == ""
    for row in evaluated:  # classify predicts what the probe's own evaluation predicted
        got = by_path[row["path"]]
        assert got["predicted"] == row["predicted"], (row, got)
        assert abs(float(got["probability"]) - float(row["probability"])) < 1e-3
        assert got["label"] == row["true"] and not got["error"]
        assert float(got["probability"]) >= float(got["top2_probability"])


def test_probe_logistic_within_two_points_of_sklearn_on_extracted_features(extracted):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    _, store = extracted
    report = fastfeat.probe(store, "conv2:avg", val_split=0.3, classifier="logistic", bootstrap=0)
    with open_store(store) as s:
        train, val = s.split(0.3, 0, val_copies=0)
        Xtr, ytr = s.arrays("conv2:avg", rows=train, load=True)
        Xva, yva = s.arrays("conv2:avg", rows=val, load=True)
    scaler = StandardScaler().fit(Xtr)
    best = max(LogisticRegression(C=C, max_iter=5000).fit(scaler.transform(Xtr), ytr).score(scaler.transform(Xva), yva)
               for C in (0.001, 0.01, 0.1, 1, 10, 100))  # fmt: skip
    assert report.metrics["accuracy"] >= best - 0.02


def test_classify_reuses_the_recorded_extraction_settings(extracted, tmp_path):
    from fastfeat.probes.classify import classify, extract_settings

    _, store = extracted
    report = fastfeat.probe(store, classifier="knn", output=tmp_path / "p", bootstrap=0)
    meta = report.classifier.store_meta
    settings = extract_settings(meta)
    for key in ("model", "image_size", "precision", "interpolation", "preprocess", "dtype"):
        assert key in settings
    assert settings["precision"] == "float32" and settings["weights"] is None  # "model file"
    images = tmp_path / "list.txt"
    images.write_text(f"{extracted[0] / 'reddish' / 'img_0.png'}\n{tmp_path / 'missing.png'}\n")
    result = classify(tmp_path / "p", images, tmp_path / "out.csv")
    assert len(result.rows) == 2 and len(result.failures) == 1
    assert result.rows[0]["predicted"] == "reddish" and result.rows[1]["error"]
    assert "1 unreadable" in result.summary()


def test_classify_refuses_a_classifier_without_an_extraction_record(tmp_path):
    from _probe_data import clusters, write_cluster_store

    X, y = clusters(20, 2, 4, separation=2)
    store = write_cluster_store(tmp_path / "s.h5", X, y)
    fastfeat.probe(store, output=tmp_path / "p", bootstrap=0)
    assert main(["classify", str(tmp_path / "p"), str(tmp_path), "-o", str(tmp_path / "x.csv")]) == 2
    assert main(["classify", str(tmp_path / "nothing"), str(tmp_path), "-o", str(tmp_path / "x.csv")]) == 2
