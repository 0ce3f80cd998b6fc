"""image_dataset: labels, paths, splits, per-epoch shuffling and augmentation, unreadable files, model.fit."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from fastfeat.augment import Augment
from fastfeat.dataset import image_dataset, resolve_preprocess, split_positions
from fastfeat.preprocess import get_normalization

CLASSES = ("cat", "dog", "fox")
PER_CLASS = 6


def _value(class_index: int, k: int) -> int:
    return 10 + 40 * class_index + 5 * k  # distinct per image, so each image says who it is


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/<class>/img_k.png, 24x32 images filled with a value unique to (class, k)."""
    root = tmp_path_factory.mktemp("images")
    for ci, name in enumerate(CLASSES):
        os.makedirs(root / name)
        for k in range(PER_CLASS):
            image = np.full((24, 32, 3), _value(ci, k), np.uint8)
            image[..., 1] //= 2  # channels differ: catches channel-order mistakes
            cv2.imwrite(str(root / name / f"img_{k}.png"), image)
    return str(root)


def collect(ds):
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def identify(images: np.ndarray) -> list[int]:
    """The fill value of each raw (preprocess=None) un-augmented image."""
    return [int(round(float(im[..., 0].mean()))) for im in images]


def test_labels_class_names_and_paths(folder):
    ds = image_dataset(folder, image_size=(16, 16), batch_size=4, preprocess=None, shuffle=False)
    assert ds.class_names == list(CLASSES)
    assert len(ds.file_paths) == len(CLASSES) * PER_CLASS
    x, y = collect(ds)
    assert x.shape == (18, 16, 16, 3) and x.dtype == np.float32 and y.dtype == np.int32
    for path, value, label in zip(ds.file_paths, identify(x), y):
        ci = CLASSES.index(os.path.basename(os.path.dirname(path)))
        k = int(os.path.basename(path)[4:-4])
        assert os.path.isabs(path)
        assert (value, label) == (_value(ci, k), ci)
    np.testing.assert_array_equal(x[0, ..., 1], np.full((16, 16), _value(0, 0) // 2))  # RGB order, raw 0..255


def test_preprocess_by_model_name_and_mode(folder):
    raw, _ = collect(image_dataset(folder, image_size=(8, 8), preprocess=None, shuffle=False))
    for preprocess, mode in (("vgg19", "caffe"), ("resnet50v2", "tf"), ("torch", "torch"), ("caffe", "caffe")):
        x, _ = collect(image_dataset(folder, image_size=(8, 8), preprocess=preprocess, shuffle=False))
        np.testing.assert_allclose(x, get_normalization(mode).apply(raw), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="Received: preprocess='nosuchmodel'"):
        resolve_preprocess("nosuchmodel")


def test_label_modes(folder):
    _, y = collect(image_dataset(folder, image_size=(8, 8), label_mode="categorical", shuffle=False))
    assert y.shape == (18, 3) and y.dtype == np.float32 and np.all(y.sum(1) == 1)
    two = image_dataset(folder, image_size=(8, 8), label_mode="binary", classes=["cat", "fox"], shuffle=False)
    _, y = collect(two)
    assert two.class_names == ["cat", "fox"] and y.shape == (12, 1) and set(y.ravel()) == {0.0, 1.0}
    images_only = image_dataset(folder, image_size=(8, 8), label_mode=None, batch_size=5)
    assert [tuple(b.shape) for b in images_only] == [(5, 8, 8, 3)] * 3 + [(3, 8, 8, 3)]
    with pytest.raises(ValueError, match="exactly 2 classes"):
        image_dataset(folder, label_mode="binary")


def test_validation_split_is_disjoint_and_complete(folder):
    train = image_dataset(folder, image_size=(8, 8), validation_split=0.25, subset="training", seed=3)
    val = image_dataset(folder, image_size=(8, 8), validation_split=0.25, subset="validation", seed=3)
    assert len(val.file_paths) == int(0.25 * 18) and len(train.file_paths) == 18 - len(val.file_paths)
    assert not set(train.file_paths) & set(val.file_paths)
    assert sorted(train.file_paths + val.file_paths) == sorted(image_dataset(folder, shuffle=False).file_paths)
    both = image_dataset(folder, image_size=(8, 8), validation_split=0.25, subset="both", seed=3)
    assert both[0].file_paths == train.file_paths and both[1].file_paths == val.file_paths
    assert collect(val)[0].shape[0] == len(val.file_paths)
    other = image_dataset(folder, image_size=(8, 8), validation_split=0.25, subset="validation", seed=4)
    assert other.file_paths != val.file_paths
    tr, va = split_positions(10, 0.3, shuffle=False, seed=None)
    assert list(va) == [7, 8, 9] and list(tr) == list(range(7))


def test_reshuffles_each_epoch_reproducibly(folder):
    ds = image_dataset(folder, image_size=(8, 8), batch_size=5, preprocess=None, seed=7)
    first, second = identify(collect(ds)[0]), identify(collect(ds)[0])
    assert sorted(first) == sorted(second) and first != second
    again = image_dataset(folder, image_size=(8, 8), batch_size=5, preprocess=None, seed=7)
    assert identify(collect(again)[0]) == first


def test_kept_batches_stay_intact_and_epochs_follow_each_other_however_they_are_read(folder):
    """Batch buffers are reused only when nothing refers to them; each iteration is the next
    epoch, whether the one before was read to its end (its successor computed ahead) or left."""
    kwargs = dict(image_size=(8, 8), batch_size=4, preprocess=None, seed=3,
                  augment=Augment(rotation_range=30, horizontal_flip=True))  # fmt: skip
    ds = image_dataset(folder, **kwargs)
    kept = [x for x, _ in ds]  # tensors kept across the later epochs
    copies = [x.numpy().copy() for x in kept]
    epochs = [collect(ds)[0] for _ in range(3)]
    for tensor, copy in zip(kept, copies):
        np.testing.assert_array_equal(tensor.numpy(), copy)
    peeked = image_dataset(folder, **kwargs)
    first_batch = next(iter(peeked))[0].numpy()  # epoch 0, left after one batch
    np.testing.assert_array_equal(first_batch, copies[0])
    np.testing.assert_array_equal(collect(peeked)[0], epochs[0])  # then epoch 1
    taken = image_dataset(folder, **kwargs)
    assert len(list(taken.take(2))) == 2  # epoch 0, left after two batches
    np.testing.assert_array_equal(collect(taken)[0], epochs[0])
    np.testing.assert_array_equal(collect(taken)[0], epochs[1])


def test_augmentation_differs_each_epoch_and_follows_the_seed(folder):
    aug = Augment(rotation_range=40, zoom_range=0.3, horizontal_flip=True, fill_mode="constant", cval=0)
    kwargs = dict(image_size=(16, 16), batch_size=6, preprocess=None, augment=aug, shuffle=False)
    ds = image_dataset(folder, seed=1, **kwargs)
    epoch1, epoch2 = collect(ds)[0], collect(ds)[0]
    assert not np.array_equal(epoch1, epoch2)
    np.testing.assert_array_equal(collect(image_dataset(folder, seed=1, **kwargs))[0], epoch1)
    assert not np.array_equal(collect(image_dataset(folder, seed=2, **kwargs))[0], epoch1)
    assert (epoch1 == 0).any()  # constant fill shows up: the warp really ran
    x, _ = collect(image_dataset(folder, seed=1, **dict(kwargs, augment=aug.to_dict())))
    np.testing.assert_array_equal(x, epoch1)  # a config dict works the same


def test_unreadable_images_are_dropped_with_one_warning(folder, tmp_path):
    root = tmp_path / "mixed"
    os.makedirs(root / "a")
    os.makedirs(root / "b")
    for k in range(3):
        cv2.imwrite(str(root / "a" / f"{k}.png"), np.full((10, 10, 3), 50 + k, np.uint8))
        cv2.imwrite(str(root / "b" / f"{k}.png"), np.full((10, 10, 3), 150 + k, np.uint8))
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "b" / "empty.png").write_bytes(b"")
    ds = image_dataset(str(root), image_size=(10, 10), batch_size=4, preprocess=None, shuffle=False)
    with pytest.warns(UserWarning, match="skipping unreadable image") as record:
        x, y = collect(ds)
    assert len([w for w in record if "unreadable" in str(w.message)]) == 1
    assert x.shape[0] == 6 and list(y) == [0, 0, 0, 1, 1, 1]
    assert identify(x) == [50, 51, 52, 150, 151, 152]
    assert int(ds.cardinality()) == 2  # known: batches shrink instead of disappearing
    assert sorted(os.path.basename(p) for p in ds.unreadable) == ["broken.jpg", "empty.png"]


def test_argument_errors(folder):
    cases = [
        (dict(image_size=(0, 5)), "image_size"),
        (dict(batch_size=0), "batch_size"),
        (dict(label_mode="sparse"), "label_mode"),
        (dict(validation_split=1.5, subset="training", seed=1), "validation_split"),
        (dict(validation_split=0.2), "subset"),
        (dict(validation_split=0.2, subset="train", seed=1), "subset"),
        (dict(validation_split=0.2, subset="training"), "seed"),
        (dict(augment="flip"), "augment"),
        (dict(interpolation="cubic-ish"), "interpolation"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=rf"Received: (.*, )?{name}="):
            image_dataset(folder, **kwargs)


def test_fits_a_tiny_model(folder):
    import keras

    ds = image_dataset(folder, image_size=(16, 16), batch_size=6, preprocess="tf", seed=0,
                       augment=Augment(rotation_range=20, horizontal_flip=True), label_mode="categorical")  # fmt: skip
    model = keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")]
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    history = model.fit(ds, epochs=2, verbose=0, shuffle=False)  # the dataset reshuffles itself
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    # the same dataset as validation data, with a prefetch, and repeated with steps per epoch:
    # Keras' iterations of one dataset follow each other (one at a time, as the epoch feed needs)
    cached = ds.prefetch(2)
    history = model.fit(cached, validation_data=cached, epochs=3, verbose=0, shuffle=False)
    assert len(history.history["val_loss"]) == 3 and np.isfinite(history.history["val_loss"]).all()
    history = model.fit(ds.repeat(), epochs=3, steps_per_epoch=2, verbose=0, shuffle=False)  # epochs across passes
    assert len(history.history["loss"]) == 3


def test_decode_settings_are_passed_through(tmp_path):
    """max_pixels refuses big images (dropped with a warning); reduced_decode=False decodes in full."""
    import cv2
    import pytest

    import fastfeat

    root = tmp_path / "imgs" / "a"
    root.mkdir(parents=True)
    cv2.imwrite(str(root / "big.jpg"), np.full((64, 64, 3), 128, np.uint8))
    cv2.imwrite(str(root / "small.jpg"), np.full((8, 8, 3), 128, np.uint8))
    with pytest.warns(UserWarning, match="big.jpg"):
        ds = fastfeat.image_dataset(tmp_path / "imgs", image_size=(8, 8), batch_size=4, shuffle=False,
                                    preprocess=None, max_pixels=100, reduced_decode=False)  # fmt: skip
        batches = list(ds)
    assert sum(int(x.shape[0]) for x, _ in batches) == 1
    assert "too large" in next(iter(ds.unreadable.values()))


def test_unlabeled_rows_of_a_file_list_get_no_class(folder, tmp_path):
    """A .csv whose rows partly lack a label: -1 stays -1 (int), and is all zeros when categorical
    (not a one-hot of the last class)."""
    listing = tmp_path / "list.csv"
    rows = [f"{folder}/cat/img_0.png,cat", f"{folder}/fox/img_1.png,", f"{folder}/fox/img_2.png,fox"]
    listing.write_text("path,label\n" + "\n".join(rows) + "\n")
    kwargs = dict(image_size=(8, 8), batch_size=3, preprocess=None, shuffle=False)
    _, y_int = collect(image_dataset(listing, **kwargs))
    np.testing.assert_array_equal(y_int, [0, -1, 1])
    _, y_cat = collect(image_dataset(listing, label_mode="categorical", **kwargs))
    np.testing.assert_array_equal(y_cat, [[1, 0], [0, 0], [0, 1]])
    assert y_cat.dtype == np.float32


def test_dataset_runs_without_the_autotuner_unless_asked(folder):
    """Autotuning capped image_dataset at ~760 img/s here; a user can still turn it back on."""
    import tensorflow as tf

    ds = image_dataset(folder, image_size=(8, 8), batch_size=4, seed=0)
    assert ds.options().autotune.enabled is False
    assert int(ds.cardinality()) == -(-len(ds.file_paths) // 4)
    options = tf.data.Options()
    options.autotune.enabled = True
    chained = ds.map(lambda x, y: (x * 2, y)).with_options(options)
    assert chained.options().autotune.enabled is True
    assert sum(int(x.shape[0]) for x, _ in chained) == len(ds.file_paths)
