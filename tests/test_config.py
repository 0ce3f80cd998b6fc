"""The run description: ExtractConfig's checks (before TensorFlow), the one table of resume and
merge keys, the CLI mapped onto the config, and plans cut into contiguous parts."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fastfeat.config import ExtractConfig
from fastfeat.runkeys import MERGE_KEYS, RESUME_KEYS


def test_resume_and_merge_keys_are_those_extract_and_merge_checked():
    assert RESUME_KEYS == (
        "model", "layers", "image_size", "interpolation", "preprocess", "precision", "dtype", "weights",
        "init_seed", "exif", "reduced_decode", "max_pixels", "follow_links", "compression", "batch_size",
        "catalog_size", "catalog_sha256", "class_names", "augment_copies", "augment", "seed",
    )  # fmt: skip
    assert set(MERGE_KEYS) == {"model", "layers", "shapes", "dtype", "image_size", "preprocess", "weights",
                               "interpolation", "precision"}  # fmt: skip


def test_config_normalizes_and_is_frozen(tmp_path):
    c = ExtractConfig(tmp_path, tmp_path / "o.h5", model="resnet50", layers="conv4_block6_out:avg", image_size="48x64",
                      weights="none", classes="b,a", compression=None)  # fmt: skip
    assert c.layers == ("conv4_block6_out:avg",) and c.image_size == (48, 64) and c.weights is None
    assert c.classes == ("b", "a") and c.compression == "none" and c.seed == 0
    assert c.feature_keys == ["conv4_block6_out:avg"] and c.normalization().mode == "caffe"
    assert c.to_meta()["model"] == "resnet50" and c.to_meta()["weights"] is None
    with pytest.raises(AttributeError):
        c.model = "vgg19"
    assert c.replace(pool="max", layers=["x"]).feature_keys == ["x:max"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dtype="float64"), "Received: dtype='float64'"),
        (dict(batch_size=0), "Received: batch_size=0"),
        (dict(image_size=0), "Received: image_size=0"),
        (dict(layers=[]), "Received: layers=\\[\\]"),
        (dict(layers=["a", "a"]), "repeats a cut"),
        (dict(interpolation="cubic"), "Received: interpolation='cubic'"),
        (dict(model="vgg91"), "Did you mean vgg19"),
        (dict(model="inceptionv3", image_size=32), "at least 75x75"),
        (dict(compression="zip"), "Received: compression='zip'"),
        (dict(device="tpu"), "Received: device='tpu'"),
        (dict(augment_copies=2), "Received: augment=None"),
        (dict(max_pixels=0), "Received: max_pixels=0"),
        (dict(preprocess="nosuch"), "Received: preprocess='nosuch'"),
        (dict(overwrite=True, resume=True), "exclude each other"),
    ],
)
def test_config_checks_name_the_argument(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExtractConfig(tmp_path, tmp_path / "o.h5", **kwargs)


def test_misuse_is_refused_before_tensorflow_loads(tmp_path):
    (tmp_path / "exists.h5").write_bytes(b"x")
    code = f"""
import sys, fastfeat
for kwargs in (dict(batch_size=-1), dict(image_size=0), dict(output={str(tmp_path / 'exists.h5')!r}),
               dict(output={str(tmp_path / 'nodir' / 'o.h5')!r}), dict(output={str(tmp_path)!r})):
    args = dict(source={str(tmp_path)!r}, output={str(tmp_path / 'o.h5')!r}, weights=None, progress=False)
    args.update(kwargs)
    try:
        fastfeat.extract(**args)
    except (ValueError, OSError) as e:
        print(type(e).__name__)
print("tensorflow" in sys.modules, "keras" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[:5] == ["ValueError", "ValueError", "FileExistsError", "FileNotFoundError", "IsADirectoryError"]
    assert lines[5:] == ["False", "False"]


def test_every_cli_flag_sets_a_config_field():
    import dataclasses

    from fastfeat.cli import build_parser
    from fastfeat.commands.extract import FLAGS, config_from_args

    fields = {f.name for f in dataclasses.fields(ExtractConfig)}
    assert {name for _, name, _, _ in FLAGS} <= fields
    assert fields - {name for _, name, _, _ in FLAGS} == {"source"}  # the positional argument
    args = build_parser().parse_args(["extract", "src", "-o", "o.h5"])
    assert config_from_args(args) == ExtractConfig("src", "o.h5")  # the CLI's defaults are the config's
    args = build_parser().parse_args(
        "extract src -o o.h5 --model resnet50 --layer a:avg --layer b --image-size 64 --weights none --no-reduced-decode "
        "--quiet --max-pixels none --augment-copies 1 --rotation-range 10 --seed 3".split()
    )
    c = config_from_args(args)
    assert c.layers == ("a:avg", "b") and c.image_size == (64, 64) and c.weights is None
    assert not c.reduced_decode and not c.progress and c.max_pixels is None
    assert c.augment_copies == 1 and c.augment.rotation_range == 10 and c.seed == 3


def test_a_plan_cuts_into_contiguous_parts(class_tree, tmp_path):
    from fastfeat.plan import plan_extraction

    root, expected = class_tree
    plan = plan_extraction(ExtractConfig(root, tmp_path / "o.h5", weights=None))
    parts = plan.parts(4)
    assert [p.bounds for p in parts] == [(0, 3), (3, 5), (5, 7), (7, 9)]
    assert np.array_equal(np.concatenate([p.positions for p in parts]), np.arange(len(expected)))
    left = plan.without([0, 1, 4])
    assert [list(p.positions) for p in left.parts(2)] == [[2, 3], [5, 6, 7, 8]]
    assert [p.bounds for p in parts[1].parts(2)] == [(3, 5), (5, 5)]  # a part cut again stays inside it
