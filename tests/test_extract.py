"""End-to-end extraction: catalog -> model -> store, through the Python API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastfeat
from fastfeat.store import open_store


def _tiny_reference(model_file, images: np.ndarray, layers):
    import keras

    model = keras.saving.load_model(model_file, compile=False)
    cut = keras.Model(model.input, [model.get_layer(name).output for name in layers])
    out = cut(images.astype(np.float32), training=False)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


def test_extract_writes_features_labels_paths(class_tree, tiny_model_file, tmp_path):
    root, expected = class_tree
    out = tmp_path / "out.h5"
    report = fastfeat.extract(
        root, out, model=tiny_model_file, layers=["conv1", "conv2:avg", "conv3:max"],
        batch_size=4, interpolation="nearest", progress=False,
    )  # fmt: skip
    assert report.images == len(expected) and report.failures == 0
    assert report.shapes == {"conv1": (32, 32, 8), "conv2:avg": (16,), "conv3:max": (4,)}
    with open_store(out) as store:
        assert store.layers == ["conv1", "conv2:avg", "conv3:max"]
        assert store.paths == expected
        assert store.class_names == ["cats", "dogs", "eels"]
        np.testing.assert_array_equal(store.labels, [0, 0, 0, 1, 1, 1, 1, 2, 2])
        assert store.complete and store.failures == []
        meta = store.meta
        assert meta["model"] == os.path.abspath(tiny_model_file)
        assert meta["image_size"] == [32, 32] and meta["preprocess"] == "none"
        assert meta["versions"]["fastfeat"] == fastfeat.__version__
        conv1 = store.features("conv1")
        assert isinstance(conv1, np.memmap) and conv1.shape == (9, 32, 32, 8)

        # the reference: the same files through OpenCV nearest resize, straight through Keras
        from fastfeat.decode import load_image

        images = np.stack([load_image(os.path.join(root, p), (32, 32), interpolation="nearest") for p in expected])
        ref_conv1, ref_conv2, ref_conv3 = _tiny_reference(tiny_model_file, images, ["conv1", "conv2", "conv3"])
        np.testing.assert_allclose(conv1, ref_conv1, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(store.features("conv2:avg"), ref_conv2.mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(store.features("conv3:max"), ref_conv3.max(axis=(1, 2)), rtol=1e-5, atol=1e-5)


def test_shapes_match_layers_command(tmp_path, class_tree, capsys):
    """Several layers and pooling in one pass give the shapes `fastfeat layers` announces."""
    from fastfeat.cli import main

    assert main(["layers", "mobilenetv2", "--image-size", "64"]) == 0
    listing = {}
    for line in capsys.readouterr().out.splitlines():
        name, _, shape = line.partition("  ")
        shape = shape.split("<- default")[0]
        listing[name.strip()] = tuple(int(s) for s in shape.strip().strip("(),").split(",") if s.strip())
    root, _ = class_tree
    report = fastfeat.extract(
        root, tmp_path / "m.h5", model="mobilenetv2", weights=None, image_size=64,
        layers=["block_3_expand_relu", "block_13_expand_relu", "out_relu:avg", "out_relu:max"],
        batch_size=8, progress=False,
    )  # fmt: skip
    assert report.shapes["block_3_expand_relu"] == listing["block_3_expand_relu"]
    assert report.shapes["block_13_expand_relu"] == listing["block_13_expand_relu"]
    assert report.shapes["out_relu:avg"] == listing["out_relu"][-1:] == report.shapes["out_relu:max"]
    with open_store(tmp_path / "m.h5") as store:
        for key, shape in report.shapes.items():
            assert store.features(key).shape == (9,) + shape


def test_existing_output_needs_overwrite(class_tree, tiny_model_file, tmp_path):
    root, _ = class_tree
    out = tmp_path / "o.h5"
    kwargs = dict(model=tiny_model_file, layers=["conv3:avg"], progress=False)
    fastfeat.extract(root, out, **kwargs)
    before = os.path.getmtime(out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        fastfeat.extract(root, out, **kwargs)
    assert os.path.getmtime(out) == before
    report = fastfeat.extract(root, out, overwrite=True, **kwargs)
    assert report.images == 9


def test_resume_of_complete_store_adds_nothing(class_tree, tiny_model_file, tmp_path):
    root, _ = class_tree
    out = tmp_path / "r.h5"
    kwargs = dict(model=tiny_model_file, layers=["conv3:avg"], progress=False)
    fastfeat.extract(root, out, **kwargs)
    report = fastfeat.extract(root, out, resume=True, **kwargs)
    assert report.images == 0 and report.resumed_from == 9
    with open_store(out) as store:
        assert len(store) == 9 and store.complete


def test_resume_refuses_other_settings(class_tree, tiny_model_file, tmp_path):
    root, _ = class_tree
    out = tmp_path / "r.h5"
    fastfeat.extract(root, out, model=tiny_model_file, layers=["conv3:avg"], progress=False)
    with pytest.raises(ValueError, match=r"layers: store has \['conv3:avg'\], this run has \['conv2:avg'\]"):
        fastfeat.extract(root, out, model=tiny_model_file, layers=["conv2:avg"], resume=True, progress=False)
    with pytest.raises(ValueError, match="dtype"):
        fastfeat.extract(
            root, out, model=tiny_model_file, layers=["conv3:avg"], dtype="float16", resume=True, progress=False
        )


def test_float16_store_and_overflow_is_reported(tmp_path):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(2, 1, name="big", kernel_initializer=keras.initializers.Constant(1000.0))(inputs)
    path = tmp_path / "big.keras"
    keras.Model(inputs, x).save(path)
    from conftest import write_image

    write_image(tmp_path / "imgs" / "a.png", 200, size=(32, 32))
    out = tmp_path / "f16.h5"
    with pytest.warns(RuntimeWarning, match="overflowed float16"):
        fastfeat.extract(tmp_path / "imgs", out, model=str(path), layers=["big"], dtype="float16", progress=False)
    with open_store(out) as store:
        assert store.features("big").dtype == np.float16
        assert store.meta["float16_overflow"] > 0


def test_unknown_layer_lists_close_names(class_tree, tiny_model_file, tmp_path):
    root, _ = class_tree
    with pytest.raises(ValueError, match="Closest: conv1"):
        fastfeat.extract(root, tmp_path / "x.h5", model=tiny_model_file, layers=["conv_1"], progress=False)
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dtype="float64"), "`dtype` must be one of float32, float16"),
        (dict(on_error="ignore"), "`on_error` must be one of skip, raise"),
        (dict(batch_size=0), "`batch_size` must be >= 1"),
        (dict(layers=[]), "`layers` needs at least one"),
        (dict(interpolation="cubic"), "`interpolation` must be one of"),
        (dict(model="vgg91"), "Did you mean vgg19"),
        (dict(model="inceptionv3", image_size=32), "at least 75x75"),
        (dict(overwrite=True, resume=True), "exclude each other"),
    ],
)
def test_bad_arguments(class_tree, tmp_path, kwargs, match):
    root, _ = class_tree
    kwargs = {"model": "vgg16", "weights": None, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        fastfeat.extract(root, tmp_path / "x.h5", **kwargs)


def test_empty_folder_is_an_error(tmp_path, tiny_model_file):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images found"):
        fastfeat.extract(tmp_path / "empty", tmp_path / "x.h5", model=tiny_model_file, progress=False)


def test_missing_output_directory(class_tree, tiny_model_file, tmp_path):
    root, _ = class_tree
    with pytest.raises(FileNotFoundError, match="output directory does not exist"):
        fastfeat.extract(root, tmp_path / "nope" / "x.h5", model=tiny_model_file, layers=["conv3"], progress=False)


_MEMORY_SCRIPT = """
import json, resource, sys
import fastfeat
report = fastfeat.extract(sys.argv[1], sys.argv[2], model=sys.argv[3], layers=["conv1"], batch_size=32, progress=False)
print(json.dumps({"images": report.images, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def test_memory_stays_flat_with_number_of_images(tmp_path, tiny_model_file):
    """Streaming: 6x more images (32 KiB of features each) must not raise peak memory by their size."""
    from conftest import write_image

    runs = {}
    for n in (96, 576):
        folder = tmp_path / f"imgs{n}"
        for i in range(n):
            write_image(folder / f"{i:04d}.png", i, size=(32, 32))
        out = tmp_path / f"mem{n}.h5"
        proc = subprocess.run(
            [sys.executable, "-c", _MEMORY_SCRIPT, str(folder), str(out), tiny_model_file],
            capture_output=True, text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )  # fmt: skip
        runs[n] = json.loads(proc.stdout.strip().splitlines()[-1])
        assert runs[n]["images"] == n
    feature_mb = (576 - 96) * 32 * 32 * 8 * 4 / 2**20  # 15 MiB more features in the larger run
    growth_mb = (runs[576]["maxrss_kb"] - runs[96]["maxrss_kb"]) / 1024
    assert growth_mb < feature_mb / 2, (runs, feature_mb)


def test_augmented_copies_rows_and_reproducibility(tiny_model_file, tmp_path):
    import cv2

    root, expected, rng = tmp_path / "textured", [], np.random.default_rng(0)
    for i in range(9):  # textured images, so that a warp changes the features
        rel = os.path.join(f"c{i % 2}", f"{i}.png")
        os.makedirs(root / f"c{i % 2}", exist_ok=True)
        cv2.imwrite(str(root / rel), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        expected.append(rel)
    expected.sort()
    augment = fastfeat.Augment(rotation_range=30, width_shift_range=0.2, zoom_range=0.2, horizontal_flip=True)
    # runs compared with each other pin their precision (auto may choose differently on another machine)
    kwargs = dict(model=tiny_model_file, layers=["conv2:avg"], batch_size=4, precision="float32", progress=False)
    plain = fastfeat.extract(root, tmp_path / "plain.h5", **kwargs)
    a = fastfeat.extract(root, tmp_path / "a.h5", augment=augment, augment_copies=2, seed=7, **kwargs)
    b = fastfeat.extract(root, tmp_path / "b.h5", augment=augment.to_dict(), augment_copies=2, seed=7, **kwargs)
    assert plain.rows == 9 and a.images == 9 and a.rows == 27 and b.rows == 27
    with open_store(tmp_path / "plain.h5") as p, open_store(tmp_path / "a.h5") as x, open_store(tmp_path / "b.h5") as y:
        copies, index = x.copies, x.index
        np.testing.assert_array_equal(np.bincount(copies), [9, 9, 9])
        # row layout: per batch of 4 images, the plain rows, then copy 1, then copy 2
        np.testing.assert_array_equal(copies[:12], [0] * 4 + [1] * 4 + [2] * 4)
        np.testing.assert_array_equal(index[:12], [0, 1, 2, 3] * 3)
        for k in range(3):
            rows = copies == k
            np.testing.assert_array_equal(index[rows], np.arange(9))
            np.testing.assert_array_equal(x.labels[rows], p.labels)
            assert [x.paths[i] for i in np.flatnonzero(rows)] == expected
        feats = np.asarray(x.features("conv2:avg"))
        np.testing.assert_array_equal(feats[copies == 0], np.asarray(p.features("conv2:avg")))
        assert not np.allclose(feats[copies == 1], feats[copies == 0])
        assert not np.allclose(feats[copies == 1], feats[copies == 2])
        np.testing.assert_array_equal(feats, np.asarray(y.features("conv2:avg")))  # same seed, same copies
        assert x.meta["augment_copies"] == 2 and x.meta["seed"] == 7
        assert fastfeat.Augment.from_dict(x.meta["augment"]) == augment


def test_augment_arguments_are_checked(class_tree, tiny_model_file, tmp_path):
    root, _ = class_tree
    with pytest.raises(ValueError, match="`augment_copies` needs `augment`"):
        fastfeat.extract(root, tmp_path / "x.h5", model=tiny_model_file, augment_copies=2, progress=False)
    with pytest.raises(ValueError, match="pass augment_copies >= 1"):
        fastfeat.extract(root, tmp_path / "x.h5", model=tiny_model_file, augment=fastfeat.Augment(), progress=False)


def test_random_init_is_seeded_so_reruns_match(class_tree, tmp_path):
    """weights=None: the random initialization is seeded, so a rerun (or a resume) gives the same features."""
    root, _ = class_tree
    kwargs = dict(model="mobilenetv2", weights=None, image_size=32, layers=["out_relu:avg"], progress=False)
    fastfeat.extract(root, tmp_path / "a.h5", **kwargs)
    fastfeat.extract(root, tmp_path / "b.h5", **kwargs)
    with open_store(tmp_path / "a.h5") as a, open_store(tmp_path / "b.h5") as b:
        assert a.meta["init_seed"] == 0
        np.testing.assert_array_equal(np.asarray(a.features()), np.asarray(b.features()))


def test_resume_refuses_a_changed_catalog(tmp_path, tiny_model_file):
    from conftest import write_image

    root = tmp_path / "imgs"
    for i in range(6):
        write_image(root / "c" / f"{i:03d}.png", i)
    out = tmp_path / "s.h5"
    fastfeat.extract(root, out, model=tiny_model_file, layers=["conv3:avg"], progress=False)
    os.rename(root / "c" / "000.png", root / "c" / "999.png")  # same count, other files
    with pytest.raises(ValueError, match="catalog_sha256"):
        fastfeat.extract(root, out, model=tiny_model_file, layers=["conv3:avg"], resume=True, progress=False)


def test_refused_resume_leaves_a_complete_store_complete(class_tree, tiny_model_file, tmp_path):
    root, _ = class_tree
    out = tmp_path / "c.h5"
    fastfeat.extract(root, out, model=tiny_model_file, layers=["conv3:avg"], progress=False)
    before = out.read_bytes()
    with pytest.raises(ValueError, match="dtype"):
        fastfeat.extract(root, out, model=tiny_model_file, layers=["conv3:avg"], dtype="float16", resume=True,
                         progress=False)  # fmt: skip
    with open_store(out) as store:
        assert store.complete and len(store) == 9
    assert out.read_bytes() == before


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_pixels=0), "`max_pixels` must be a positive int"),
        (dict(interpolation="cubic"), "`interpolation` must be one of"),
        (dict(compression="zip"), "`compression` must be"),
        (dict(device="tpu"), "device"),
        (dict(preprocess="caffee"), "`preprocess` must be one of"),
    ],
)
def test_arguments_are_checked_before_anything_is_written(class_tree, tiny_model_file, tmp_path, kwargs, match):
    root, _ = class_tree
    with pytest.raises(ValueError, match=match):
        fastfeat.extract(root, tmp_path / "x.h5", model=tiny_model_file, layers=["conv3"], progress=False, **kwargs)
    assert os.listdir(tmp_path) == ["images"]


def test_preprocess_accepts_a_model_name(class_tree, tmp_path):
    root, _ = class_tree
    report = fastfeat.extract(root, tmp_path / "p.h5", model="mobilenetv2", weights=None, image_size=32,
                              layers=["out_relu:avg"], preprocess="vgg19", progress=False)  # fmt: skip
    with open_store(report.output) as store:
        assert store.meta["preprocess"] == "caffe"


def test_model_file_records_its_weights(class_tree, tiny_model_file, tmp_path):
    root, _ = class_tree
    fastfeat.extract(root, tmp_path / "m.h5", model=tiny_model_file, layers=["conv3:avg"], progress=False)
    with open_store(tmp_path / "m.h5") as store:
        assert store.meta["weights"] == "model file"
