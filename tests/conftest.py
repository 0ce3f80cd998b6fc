"""Shared fixtures: small generated image folders and a tiny saved Keras model."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# precision="auto" caches its decisions per user: tests keep theirs in a folder of their own
os.environ["FASTFEAT_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastfeat-test-cache-")
atexit.register(shutil.rmtree, os.environ["FASTFEAT_CACHE_DIR"], True)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def write_image(path, value: int, size=(24, 32), ext=".png", channels=3):
    """Write a self-verifying image: every pixel of image k is k % 251 (plus a channel offset)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    h, w = size
    image = np.full((h, w, channels), value % 251, np.uint8)
    if channels == 3:
        image[..., 1] = (value * 3) % 251
        image[..., 2] = (value * 7) % 251
    cv2.imwrite(str(path) if str(path).endswith(ext) else str(path) + ext, image)
    return image


@pytest.fixture
def class_tree(tmp_path):
    """root/{cats,dogs,eels}/… with 3, 4 and 2 small PNGs; returns (root, expected relative paths)."""
    root = tmp_path / "images"
    layout = {"cats": 3, "dogs": 4, "eels": 2}
    expected = []
    k = 0
    for cls, n in layout.items():
        for i in range(n):
            rel = os.path.join(cls, f"img_{i}.png")
            write_image(root / rel, k, size=(20 + 3 * i, 28))
            expected.append(rel)
            k += 1
    return root, expected


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory):
    """A small functional Keras model saved as .keras: input 32x32x3, layers conv1, pool1, conv2, conv3."""
    import keras

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Conv2D(4, 1, name="conv3")(x)
    model = keras.Model(inputs, x, name="tiny")
    model.save(path)
    return str(path)
