"""image_dataset as a drop-in for keras.utils.image_dataset_from_directory (issue 16, item 15): the same
validation split for the same seed, and raw 0..255 pixels by default."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fastfeat import image_dataset


@pytest.fixture
def folder(tmp_path):
    from conftest import write_image

    root = tmp_path / "photos"
    for i in range(42):
        write_image(root / ("cat" if i % 3 else "dog") / f"{i:02d}.png", i, size=(12, 12))
    return root


@pytest.mark.parametrize("seed, split", [(1337, 0.25), (0, 0.2), (7, 0.5)])
def test_same_validation_split_as_keras(folder, seed, split):
    import keras

    kwargs = dict(image_size=(8, 8), validation_split=split, subset="both", seed=seed)
    k_train, k_val = keras.utils.image_dataset_from_directory(folder, verbose=False, **kwargs)
    f_train, f_val = image_dataset(folder, **kwargs)
    assert sorted(map(os.path.abspath, k_val.file_paths)) == sorted(f_val.file_paths)
    assert sorted(map(os.path.abspath, k_train.file_paths)) == sorted(f_train.file_paths)


def test_raw_pixels_by_default_like_keras(folder):
    import keras

    kwargs = dict(image_size=(12, 12), shuffle=False, batch_size=42)
    (k_images, _), = keras.utils.image_dataset_from_directory(folder, verbose=False, **kwargs).take(1)
    (f_images, _), = image_dataset(folder, **kwargs).take(1)
    np.testing.assert_array_equal(f_images.numpy(), k_images.numpy())  # same size: no resize, raw 0..255
