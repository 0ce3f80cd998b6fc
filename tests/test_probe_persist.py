"""Classifier files: the NumPy predictions equal scikit-learn's / Keras', they round-trip through
classifier.json + .npz, and a file from an untrusted source cannot run code when loaded."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

pytest.importorskip("sklearn")

from fastfeat.probes import ClassifierFileError, load_classifier, save_classifier  # noqa: E402
from fastfeat.probes.model import Classifier  # noqa: E402
from fastfeat.probes.train import to_classifier  # noqa: E402

from _probe_data import clusters  # noqa: E402


def base(k, d, standardized=True):
    arrays = {"mean": np.zeros(d, np.float32), "scale": np.ones(d, np.float32)} if standardized else {}
    return Classifier("linear", [f"c{i}" for i in range(k)], np.arange(k), arrays, {}, "feat", (d,), {"model": "x"})


def sklearn_models(k):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import LinearSVC

    return {
        "logistic": LogisticRegression(C=0.5, max_iter=2000),
        "sgd_log": SGDClassifier(loss="log_loss", random_state=0),
        "sgd_huber": SGDClassifier(loss="modified_huber", random_state=0),
        "svm": CalibratedClassifierCV(LinearSVC(C=0.1, max_iter=20000), method="sigmoid", cv=3, ensemble=False),
        "rf": RandomForestClassifier(n_estimators=15, random_state=0),
        "knn": KNeighborsClassifier(n_neighbors=5, algorithm="brute"),
    }


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("kind", ["logistic", "sgd_log", "sgd_huber", "svm", "rf", "knn"])
def test_numpy_predictions_equal_sklearn_and_survive_a_round_trip(tmp_path, kind, k):
    X, y = clusters(40, k, 6, separation=0.8, seed=k)
    model = sklearn_models(k)[kind].fit(X, y)
    train = (X, y) if kind == "knn" else (None, None)
    clf = to_classifier(kind, model, base(k, 6, kind != "rf"), *train)
    Xq = clusters(10, k, 6, separation=0.8, seed=99)[0]
    np.testing.assert_allclose(clf.predict_proba(Xq), model.predict_proba(Xq), atol=1e-5)
    save_classifier(clf, tmp_path)
    loaded = load_classifier(tmp_path)
    assert loaded.kind == clf.kind and loaded.params == clf.params and loaded.store_meta == {"model": "x"}
    np.testing.assert_array_equal(loaded.predict_proba(Xq), clf.predict_proba(Xq))


def test_dense_head_numpy_forward_equals_keras(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dropout(0.5),
                              keras.layers.Dense(3, activation="softmax")])  # fmt: skip
    (w1, b1), (w2, b2) = model.layers[0].get_weights(), model.layers[2].get_weights()
    b = base(3, 6)
    clf = Classifier("dense", b.classes, b.columns, dict(b.arrays, w1=w1, b1=b1, w2=w2, b2=b2), {}, "feat", (6,))
    X = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    np.testing.assert_allclose(clf.predict_proba(X), model.predict(X, verbose=0), atol=1e-5)
    save_classifier(clf, tmp_path)
    np.testing.assert_array_equal(load_classifier(tmp_path).predict_proba(X), clf.predict_proba(X))


def test_classes_absent_from_training_get_zero_probability():
    from sklearn.linear_model import LogisticRegression

    X, y = clusters(20, 3, 4, seed=0)
    model = LogisticRegression().fit(X, y)
    b = base(5, 4)
    b.columns = np.array([0, 2, 4])  # store labels 0, 2, 4 trained; 1 and 3 never seen
    p = to_classifier("logistic", model, b).predict_proba(X)
    assert p.shape == (60, 5) and (p[:, [1, 3]] == 0).all()
    np.testing.assert_allclose(p[:, [0, 2, 4]], model.predict_proba(X), atol=1e-6)


class _Payload:
    """Unpickling this writes a marker file: proof that loading ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def saved(tmp_path):
    from sklearn.linear_model import LogisticRegression

    X, y = clusters(20, 3, 4, seed=0)
    save_classifier(to_classifier("logistic", LogisticRegression().fit(X, y), base(3, 4)), tmp_path / "clf")
    return tmp_path / "clf"


def test_a_pickle_inside_the_npz_is_refused_without_running(saved, tmp_path):
    marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(str(marker))
    with np.load(saved / "classifier.npz") as npz:
        arrays = dict(npz)
    arrays["coef"] = evil
    np.savez(saved / "classifier.npz", **arrays)  # object arrays are stored as a pickle
    with pytest.raises(ClassifierFileError, match="numeric arrays"):
        load_classifier(saved)
    assert not marker.exists()


def test_a_pickle_in_place_of_the_npz_is_refused_without_running(saved, tmp_path):
    marker = tmp_path / "pwned"
    with open(saved / "classifier.npz", "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    with pytest.raises(ClassifierFileError):
        load_classifier(saved)
    assert not marker.exists()


def _edit_json(saved, **changes):
    path = saved / "classifier.json"
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    doc.update(changes)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"kind": "os.system"}, "kind"),
        ({"format": "pickle"}, "not a fastfeat classifier"),
        ({"feature_shape": [5]}, "shape"),
        ({"classes": "abc"}, "classes"),
        ({"params": {"link": "eval"}}, "link"),
    ],
)
def test_malformed_json_is_refused(saved, changes, match):
    _edit_json(saved, **changes)
    with pytest.raises(ClassifierFileError, match=match):
        load_classifier(saved)


def test_out_of_range_forest_nodes_are_refused(tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    X, y = clusters(20, 2, 4, seed=0)
    clf = to_classifier("rf", RandomForestClassifier(n_estimators=2, random_state=0).fit(X, y), base(2, 4, False))
    save_classifier(clf, tmp_path)
    for name, value in (("left", 10**6), ("feature", 99), ("left", 0)):  # out of range, bad feature, a cycle
        with np.load(tmp_path / "classifier.npz") as npz:
            arrays = dict(npz)
        inner = np.flatnonzero(arrays["left"] >= 0)[0]
        arrays[name] = arrays[name].copy()
        arrays[name][inner] = value
        np.savez(tmp_path / "bad.npz", **arrays)
        os.replace(tmp_path / "bad.npz", tmp_path / "classifier.npz")
        with pytest.raises(ClassifierFileError):
            load_classifier(tmp_path)
        save_classifier(clf, tmp_path)


def test_missing_files_say_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="fastfeat probe"):
        load_classifier(tmp_path)
