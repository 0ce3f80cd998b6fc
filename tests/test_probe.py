"""fastfeat.probe on synthetic stores: every classifier, the report files, the sweep's protocol,
agreement with scikit-learn, metrics against sklearn.metrics, argument checks."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

import fastfeat  # noqa: E402
from fastfeat.probes import load_classifier  # noqa: E402
from fastfeat.probes.metrics import evaluate  # noqa: E402
from fastfeat.store import open_store  # noqa: E402

from _probe_data import clusters, write_cluster_store  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_csv(path, dicts=False):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f) if dicts else csv.reader(f))


@pytest.fixture(scope="module")
def store4(tmp_path_factory):
    """4 overlapping classes, 16 features, 100 images each, one augmented copy per image."""
    X, y = clusters(100, 4, 16, separation=0.5, seed=0)
    return write_cluster_store(tmp_path_factory.mktemp("s") / "four.h5", X, y, copies=1)


@pytest.fixture(scope="module")
def store6(tmp_path_factory):
    """6 classes of 3x3x4 feature maps (top-5 is reported from 5 classes up)."""
    X, y = clusters(30, 6, 36, separation=0.8, seed=3, shape=(3, 3, 4))
    return write_cluster_store(tmp_path_factory.mktemp("s") / "six.h5", X, y)


def check_outputs(out, names):
    m = read_json(os.path.join(out, "metrics.json"))
    for key in ("accuracy", "balanced_accuracy", "per_class", "confusion_matrix", "ece", "reliability", "ci95"):
        assert key in m
    assert list(m["per_class"]) == names
    assert set(m["per_class"][names[0]]) == {"precision", "recall", "f1", "support"}
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (len(names), len(names))
    assert [r["support"] for r in m["per_class"].values()] == cm.sum(axis=1).tolist()  # rows = true class
    assert np.isclose(np.trace(cm) / cm.sum(), m["accuracy"])
    for png in ("confusion.png", "reliability.png"):
        with open(os.path.join(out, png), "rb") as f:
            assert f.read(8) == PNG
        from PIL import Image

        with Image.open(os.path.join(out, png)) as im:
            im.verify()
    rows = read_csv(os.path.join(out, "confusion.csv"))
    assert rows[0][1:] == names and [int(v) for v in rows[1][1:]] == cm[0].tolist()
    return m


@pytest.mark.parametrize("kind", ["logistic", "svm", "rf", "knn", "dense"])
def test_every_classifier_runs_and_writes_its_report(store4, tmp_path, kind):
    opts = {"sweep": [1e-4], "epochs": 5} if kind == "dense" else {}
    opts.update({"options": {"n_estimators": 30}} if kind == "rf" else {})
    report = fastfeat.probe(store4, classifier=kind, output=tmp_path / "out", bootstrap=50, **opts)
    names = ["class0", "class1", "class2", "class3"]
    m = check_outputs(tmp_path / "out", names)
    assert m["accuracy"] > 0.6, report.summary()  # chance is 0.25
    assert m["rows"]["eval"] == 80  # 20% of 400 images, plain rows only
    assert "accuracy" in report.summary() and kind in report.summary()
    # the saved classifier predicts what the evaluation predicted
    clf = load_classifier(tmp_path / "out")
    with open_store(store4) as s:
        _, val = s.split(0.2, 0, copies=None, val_copies=0)
        proba = clf.predict_proba(s.arrays(rows=val)[0])
        paths = [s.paths[i] for i in val]
    preds = read_csv(tmp_path / "out" / "predictions.csv", dicts=True)
    assert [p["path"] for p in preds] == paths
    assert [p["predicted"] for p in preds] == [names[k] for k in proba.argmax(axis=1)]
    np.testing.assert_allclose([float(p["probability"]) for p in preds], proba.max(axis=1), atol=1e-5)


def test_probe_is_seeded(store4):
    a = fastfeat.probe(store4, classifier="rf", bootstrap=0, options={"n_estimators": 20})
    b = fastfeat.probe(store4, classifier="rf", bootstrap=0, options={"n_estimators": 20})
    assert a.metrics == b.metrics and a.best == b.best


def test_logistic_within_two_points_of_sklearn_tuned_on_the_same_split(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = clusters(150, 5, 24, separation=0.45, seed=7)
    path = write_cluster_store(tmp_path / "s.h5", X, y)
    report = fastfeat.probe(path, classifier="logistic", bootstrap=0)
    with open_store(path) as s:
        train, val = s.split(0.2, 0, val_copies=0)
        Xtr, ytr = s.arrays(rows=train, load=True)
        Xva, yva = s.arrays(rows=val, load=True)
    scaler = StandardScaler().fit(Xtr)
    best = max(
        LogisticRegression(C=C, max_iter=2000).fit(scaler.transform(Xtr), ytr).score(scaler.transform(Xva), yva)
        for C in (0.001, 0.01, 0.1, 1, 10, 100)
    )  # tuned on the evaluated rows themselves: an optimistic reference
    assert 0.5 < best < 0.99  # a problem where the choice matters
    assert report.metrics["accuracy"] >= best - 0.02, (report.metrics["accuracy"], best)
    assert report.metrics["top5_accuracy"] == 1.0  # 5 classes


def test_sweep_never_sees_the_evaluated_images(store4, monkeypatch):
    from fastfeat.probes import api

    seen = {}
    real = api.fit_in_memory

    def spy(kind, view, labels, fit_rows, tune_rows, base, **kw):
        seen["fit"], seen["tune"] = fit_rows, tune_rows
        return real(kind, view, labels, fit_rows, tune_rows, base, **kw)

    monkeypatch.setattr(api, "fit_in_memory", spy)
    fastfeat.probe(store4, classifier="logistic", bootstrap=0)
    with open_store(store4) as s:
        index, copies = np.asarray(s.index), np.asarray(s.copies)
        _, val = s.split(0.2, 0, val_copies=None)
    evaluated = set(index[val])
    assert not evaluated & set(index[seen["fit"]]) and not evaluated & set(index[seen["tune"]])
    assert not set(index[seen["fit"]]) & set(index[seen["tune"]])
    assert (copies[seen["tune"]] == 0).all() and (copies[seen["fit"]] == 1).any()  # copies train only


def test_separate_val_store_maps_classes_by_name(tmp_path):
    X, y = clusters(60, 3, 8, separation=1.5, seed=1)
    train = write_cluster_store(tmp_path / "train.h5", X[:120], y[:120], class_names=["a", "b", "c"])
    # the same classes in another order: labels renumbered by name
    yv = np.array([1, 2, 0])[y[120:]]  # a -> 1, b -> 2, c -> 0
    val = write_cluster_store(tmp_path / "val.h5", X[120:], yv, class_names=["c", "a", "b"])
    report = fastfeat.probe(train, val=val, classifier="logistic", bootstrap=0, output=tmp_path / "o")
    assert report.metrics["accuracy"] > 0.9
    assert report.rows["eval"] == 60
    assert read_json(tmp_path / "o" / "metrics.json")["eval_split"] == "store"


def test_six_classes_feature_maps_top5(store6):
    report = fastfeat.probe(store6, classifier="knn", bootstrap=0)
    assert "top5_accuracy" in report.metrics
    assert report.classifier.feature_shape == (3, 3, 4)


def test_metrics_agree_with_sklearn_metrics():
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 300)
    y[y == 5] = 4  # class 5 has no support
    proba = rng.dirichlet(np.ones(6), 300)
    proba[np.arange(300), y] += rng.random(300)
    proba /= proba.sum(axis=1, keepdims=True)
    names = list("abcdef")
    m = evaluate(y, proba, names, bootstrap=200)
    pred = proba.argmax(axis=1)
    assert np.isclose(m["accuracy"], skm.accuracy_score(y, pred))
    with pytest.warns(UserWarning, match="not in y_true"):  # class 5 predicted, never true: left out by both
        assert np.isclose(m["balanced_accuracy"], skm.balanced_accuracy_score(y, pred))
    assert np.isclose(m["top5_accuracy"], skm.top_k_accuracy_score(y, proba, k=5, labels=range(6)))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=range(6), zero_division=0)
    assert np.allclose([m["per_class"][n]["precision"] for n in names], p)
    assert np.allclose([m["per_class"][n]["recall"] for n in names], r)
    assert np.allclose([m["per_class"][n]["f1"] for n in names], f)
    assert [m["per_class"][n]["support"] for n in names] == s.tolist()
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(6)).tolist()
    assert np.isclose(m["log_loss"], skm.log_loss(y, proba, labels=range(6)))
    lo, hi = m["ci95"]["accuracy"]
    assert lo < m["accuracy"] < hi
    # ECE: mean |accuracy - confidence| over bins, weighted by count
    conf = proba.max(axis=1)
    assert np.isclose(m["ece"], sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in m["reliability"]
                                    if b["count"]) / 300)  # fmt: skip
    assert sum(b["count"] for b in m["reliability"]) == 300 and conf.max() <= 1


def test_perfectly_calibrated_predictions_have_small_ece():
    rng = np.random.default_rng(1)
    p1 = rng.random(20000)
    y = (rng.random(20000) < p1).astype(np.int64)
    m = evaluate(y, np.stack([1 - p1, p1], axis=1), ["no", "yes"], bootstrap=0)
    assert m["ece"] < 0.02


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"classifier": "tree"}, "classifier"),
        ({"val_split": 1.5}, "val_split"),
        ({"tune_split": 0}, "tune_split"),
        ({"seed": "x"}, "seed"),
        ({"max_memory": "lots"}, "max_memory"),
        ({"epochs": 0}, "epochs"),
        ({"layer": "nope"}, "nope"),
    ],
)
def test_arguments_are_checked(store4, kwargs, match):
    with pytest.raises((ValueError, KeyError), match=match) as e:
        fastfeat.probe(store4, **kwargs)
    assert "Received" in str(e.value)


def test_existing_classifier_is_not_overwritten_silently(store4, tmp_path):
    fastfeat.probe(store4, output=tmp_path, bootstrap=0, sweep=[1.0])
    with pytest.raises(FileExistsError, match="overwrite"):
        fastfeat.probe(store4, output=tmp_path, bootstrap=0, sweep=[1.0])
    fastfeat.probe(store4, output=tmp_path, bootstrap=0, sweep=[1.0], overwrite=True)


def test_rf_over_the_memory_budget_refuses_with_advice(store4):
    with pytest.raises(ValueError, match="stream"):
        fastfeat.probe(store4, classifier="rf", max_memory="1K")


def test_missing_scikit_learn_says_what_to_install(store4, monkeypatch, tmp_path, capsys):
    import sys

    from fastfeat.cli import main
    from fastfeat.probes._deps import require

    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now fails
    with pytest.raises(ModuleNotFoundError, match=r'pip install "fastfeat\[probe\]"'):
        require("sklearn")
    assert main(["probe", store4, "-o", str(tmp_path)]) == 2
    assert 'pip install "fastfeat[probe]"' in capsys.readouterr().err


def test_probe_cli_options_and_json(store4, tmp_path, capsys):
    from fastfeat.cli import main

    argv = ["probe", store4, "--layer", "feat", "--classifier", "svm", "--sweep", "0.01,0.1", "--bootstrap", "0",
            "--max-memory", "10K", "--epochs", "2", "-o", str(tmp_path), "--json"]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["mode"] == "stream" and [s["value"] for s in printed["sweep"]] == [0.01, 0.1]
    assert main(argv) == 2  # the classifier exists: --overwrite is needed
    assert "overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("dtype, compression", [("float16", None), ("float32", "lzf")])
@pytest.mark.parametrize("max_memory", [None, "10K"])
def test_float16_and_compressed_stores(tmp_path, dtype, compression, max_memory):
    X, y = clusters(40, 3, 12, separation=1.5, seed=5)
    path = write_cluster_store(tmp_path / "s.h5", X, y, dtype=dtype, compression=compression, copies=1)
    report = fastfeat.probe(path, classifier="logistic", max_memory=max_memory, bootstrap=0)
    assert report.mode == ("stream" if max_memory else "memory")
    assert report.metrics["accuracy"] > 0.8
