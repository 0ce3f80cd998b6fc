"""The courses' dense head (Flatten - Dense(256, relu) - Dropout - Dense(softmax)) trained in Keras
over ``FeatureStore.to_dataset``: minibatches stream from the store, so memory stays bounded.

The weight decay is swept, each run early-stopped on the tuning rows; the best run is kept.
"""

from __future__ import annotations

import numpy as np

from .model import Classifier


def _dataset(store, layer, rows, base: Classifier, batch_size: int, shuffle: bool, seed: int):
    import tensorflow as tf

    lut = np.zeros(len(base.classes), np.int64)
    lut[base.columns] = np.arange(len(base.columns))
    lut = tf.constant(lut)
    mean, scale = tf.constant(base.arrays["mean"]), tf.constant(base.arrays["scale"])
    ds = store.to_dataset(layer, batch_size=batch_size, shuffle=shuffle, seed=seed, flatten=True, rows=rows)
    return ds.map(lambda x, y: ((tf.cast(x, tf.float32) - mean) / scale, tf.gather(lut, y)))


def fit_dense(store, layer, fit_rows, tune_rows, base: Classifier, *, seed=0, sweep=None, epochs=30,
              batch_size=64, hidden=256, dropout=0.5, patience=5, progress=False):  # fmt: skip
    """Train the dense head for each weight decay of ``sweep``; returns a :class:`~.train.FitResult`."""
    import keras

    from .train import SWEEPS, FitResult, _pick, _score
    from .data import encode

    values = list(sweep) if sweep is not None else list(SWEEPS["dense"])
    d, c = base.n_features, len(base.columns)
    train_ds = _dataset(store, layer, fit_rows, base, batch_size, True, seed)
    tune_ds = _dataset(store, layer, tune_rows, base, batch_size, False, seed)
    tune_view = store.arrays(layer, rows=tune_rows)[0]
    y_tune = encode(np.asarray(store.labels)[tune_rows], base.columns)
    results, best_clf = [], None
    for value in values:
        keras.utils.set_random_seed(seed)
        reg = keras.regularizers.L2(value)
        model = keras.Sequential([
            keras.Input((d,)),
            keras.layers.Dense(hidden, activation="relu", kernel_regularizer=reg, name="hidden"),
            keras.layers.Dropout(dropout, seed=seed),
            keras.layers.Dense(c, activation="softmax", kernel_regularizer=reg, name="out"),
        ])  # fmt: skip
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
        history = model.fit(train_ds, validation_data=tune_ds, epochs=int(epochs), shuffle=False, callbacks=[stop],
                            verbose=2 if progress else 0)  # fmt: skip
        w1, b1 = model.get_layer("hidden").get_weights()
        w2, b2 = model.get_layer("out").get_weights()
        arrays = dict(base.arrays, w1=w1, b1=b1, w2=w2, b2=b2)
        params = {"hidden": hidden, "dropout": dropout, "weight_decay": value,
                  "epochs": len(history.history["loss"])}  # fmt: skip
        clf = Classifier("dense", base.classes, base.columns, arrays, params, base.layer, base.feature_shape,
                         base.store_meta)  # fmt: skip
        acc, nll = _score(clf.predict_proba(tune_view)[:, base.columns], y_tune)
        results.append({"value": value, "accuracy": acc, "log_loss": nll, "converged": True,
                        "epochs": params["epochs"]})  # fmt: skip
        if _pick(results) == len(results) - 1:
            best_clf = clf
    best = values[_pick(results)]
    return FitResult(best_clf, "weight_decay", results, best, "stream",
                     ["dense head: early stopping on the tuning rows, best run kept (no refit)"])  # fmt: skip
