"""Parity with the Keras course recipe: flow_from_directory(interpolation="nearest") + a truncated model.

The reference is exactly what users run today::

    gen = ImageDataGenerator(preprocessing_function=<family>.preprocess_input)
    it = gen.flow_from_directory(root, target_size=..., interpolation="nearest", shuffle=False)
    cut = keras.Model(base.input, base.get_layer(name).output)

with the same weights file given to ``fastfeat.extract``. The image tree mixes JPEG (4:4:4,
4:2:0, progressive, grayscale, upper-case extension), PNG (RGB, RGBA, grayscale, grayscale +
alpha, palette with transparency), BMP, PPM and TIFF, of several sizes (smaller and larger than
the target), in class folders with nested subfolders. Only formats Keras' white list reads are
used (it skips webp, gif and pgm).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from _images import encode, smooth_rgb, write
from PIL import Image

import fastfeat
from fastfeat.catalog import build_catalog
from fastfeat.loader import DecodeOptions, Loader
from fastfeat.store import open_store

pytestmark = [
    # Pillow's own chatter when Keras converts a palette PNG with transparency to RGB.
    pytest.mark.filterwarnings("ignore:Palette images with Transparency:UserWarning"),
]


def _tree(root) -> None:
    """Class folders with nested subfolders and mixed formats, sizes and modes."""
    files = {
        "alpha/a.jpg": encode(smooth_rgb(40, 52, 1), "JPEG", quality=92, subsampling=0),
        "alpha/b.png": encode(np.dstack([smooth_rgb(33, 47, 2), smooth_rgb(33, 47, 3)[..., 0]]), "PNG"),
        "alpha/nested/c.jpg": encode(smooth_rgb(64, 64, 4)[..., 1], "JPEG"),  # grayscale JPEG
        "alpha/nested/deeper/d.png": encode(smooth_rgb(20, 30, 5)[..., 2], "PNG"),  # grayscale PNG
        "alpha/nested/e.JPG": encode(smooth_rgb(90, 70, 6), "JPEG", quality=80),  # 4:2:0, upper-case
        "beta/f.jpeg": encode(smooth_rgb(31, 77, 7), "JPEG", progressive=True),
        "beta/g.bmp": encode(smooth_rgb(50, 45, 8), "BMP"),
        "beta/h.tif": encode(smooth_rgb(28, 36, 9), "TIFF"),
        "beta/sub/i.ppm": encode(smooth_rgb(35, 35, 10), "PPM"),
        "gamma/j.png": encode(Image.fromarray(smooth_rgb(44, 38, 11)).quantize(32), "PNG", transparency=3),
        "gamma/k.png": encode(Image.fromarray(smooth_rgb(26, 60, 12)[..., :2], "LA"), "PNG"),  # gray + alpha
        "gamma/l.png": encode(smooth_rgb(96, 120, 13), "PNG"),
    }
    for rel, data in files.items():
        write(os.path.join(root, rel), data)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity") / "images"
    _tree(root)
    return str(root)


def _keras_iterator(root, family, size, batch_size=5):
    import tensorflow as tf

    gen = tf.keras.preprocessing.image.ImageDataGenerator(preprocessing_function=family.preprocess_input)
    return gen.flow_from_directory(
        root, target_size=size, interpolation="nearest", shuffle=False, batch_size=batch_size, class_mode="sparse"
    )


def _keras_inputs(iterator) -> np.ndarray:
    return np.concatenate([iterator[i][0] for i in range(len(iterator))])


# (fastfeat name, keras.applications module, constructor, layer, input size, mode)
MODELS = [
    ("vgg16", "vgg16", "VGG16", "block2_conv2", 32, "caffe"),
    ("vgg19", "vgg19", "VGG19", "block1_conv2", 40, "caffe"),
    ("resnet50", "resnet50", "ResNet50", "conv2_block1_out", 32, "caffe"),
    ("mobilenetv2", "mobilenet_v2", "MobileNetV2", "block_2_add", 32, "tf"),
    ("inceptionv3", "inception_v3", "InceptionV3", "mixed0", 75, "tf"),
    ("densenet121", "densenet", "DenseNet121", "conv2_block2_concat", 32, "torch"),
]


@pytest.mark.parametrize("mode,module", [("caffe", "vgg16"), ("tf", "mobilenet_v2"), ("torch", "densenet")])
def test_inputs_bit_identical_to_keras(tree, mode, module):
    """fastfeat's decode + resize + Numba normalization give Keras' exact input batch, bit for bit."""
    import keras

    size = (36, 44)
    family = getattr(keras.applications, module)
    iterator = _keras_iterator(tree, family, size)
    expected = _keras_inputs(iterator)

    catalog = build_catalog(tree)
    assert catalog.paths == iterator.filenames
    loader = Loader(catalog, DecodeOptions(size, "nearest"), mode)
    images = np.stack([loader.load(i)[0] for i in range(len(catalog))])
    assert not loader.reasons
    got = loader.normalize(images, np.arange(len(catalog)))
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
@pytest.mark.parametrize("name,module,constructor,layer,side,mode", MODELS, ids=[m[0] for m in MODELS])
def test_features_match_keras_reference(tree, tmp_path, name, module, constructor, layer, side, mode):
    import keras

    from fastfeat.models import get_spec

    assert get_spec(name).preprocess == mode
    size = (side, side)
    keras.utils.set_random_seed(1)
    base = getattr(keras.applications, constructor)(include_top=False, weights=None, input_shape=size + (3,))
    weights = tmp_path / "w.weights.h5"
    base.save_weights(weights)

    out = tmp_path / "features.h5"
    report = fastfeat.extract(
        tree, out, model=name, layers=[layer], image_size=side, batch_size=4,
        weights=str(weights), interpolation="nearest", precision="float32", progress=False,
    )  # fmt: skip

    family = getattr(keras.applications, module)
    iterator = _keras_iterator(tree, family, size)
    cut = keras.Model(base.input, base.get_layer(layer).output)
    expected = np.concatenate([np.asarray(cut(iterator[i][0], training=False)) for i in range(len(iterator))])

    assert report.images == iterator.samples and report.failures == 0
    with open_store(out) as store:
        assert store.paths == iterator.filenames
        assert store.class_names == sorted(iterator.class_indices, key=iterator.class_indices.get)
        np.testing.assert_array_equal(store.labels, iterator.classes)
        got = np.asarray(store.features(layer))
    assert got.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0
    assert np.abs(got - expected).max() / scale < 1e-4
