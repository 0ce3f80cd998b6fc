"""Issue 16, finding 1: a default cut for every model (``fastfeat extract ... --model M`` without
``--layer``), declared in the registry, checked against the built bases, shown by ``fastfeat layers``."""

from __future__ import annotations

import pytest

from fastfeat.cli import main
from fastfeat.config import ExtractConfig
from fastfeat.registry import get_spec, models
from fastfeat.store import open_store


@pytest.mark.slow
@pytest.mark.parametrize("name", models())
def test_declared_default_cut_is_the_headless_base_last_layer(name):
    import keras

    from fastfeat.models import build_base, truncate

    spec = get_spec(name)
    side = max(32, spec.min_size)
    base = build_base(name, (side, side), weights=None)
    try:
        expected = "block4_conv2" if name.startswith("vgg") else base.layers[-1].name
        assert spec.default_layer == expected
        config = ExtractConfig("src", "out.h5", model=name, image_size=side, weights="none")
        assert config.layers == (spec.default_layer,)
        shape = truncate(base, config.cuts).output[spec.default_layer].shape[1:]
        assert len(shape) == 3 and all(d and d > 0 for d in shape)
    finally:
        del base
        keras.backend.clear_session()


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv3small"])
def test_extract_without_layer_works_for_a_registry_model(name, class_tree, tmp_path):
    root, _ = class_tree
    out = tmp_path / f"{name}.h5"
    argv = ["extract", str(root), "-o", str(out), "--model", name, "--weights", "none", "--image-size", "32",
            "--batch-size", "16", "--precision", "float32", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    with open_store(out) as store:
        assert store.layers == [get_spec(name).default_layer]
        assert len(store) == 9


def test_extract_without_layer_on_a_model_file_takes_its_last_layer(class_tree, tiny_model_file, tmp_path):
    root, _ = class_tree
    out = tmp_path / "file.h5"
    argv = ["extract", str(root), "-o", str(out), "--model", tiny_model_file, "--pool", "avg",
            "--precision", "float32", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    with open_store(out) as store:
        assert store.layers == ["conv3:avg"]
        assert store.features("conv3:avg").shape == (9, 4)


def test_layers_command_marks_the_default_cut(tiny_model_file, capsys):
    assert main(["layers", "mobilenetv3small", "--image-size", "32"]) == 0
    marked = [line for line in capsys.readouterr().out.splitlines() if line.endswith("<- default")]
    assert len(marked) == 1 and marked[0].startswith(get_spec("mobilenetv3small").default_layer + " ")
    assert main(["layers", tiny_model_file]) == 0
    marked = [line for line in capsys.readouterr().out.splitlines() if line.endswith("<- default")]
    assert len(marked) == 1 and marked[0].startswith("conv3 ")


def test_vgg_keeps_block4_conv2():
    assert ExtractConfig("src", "out.h5").layers == ("block4_conv2",)
    assert ExtractConfig("src", "out.h5", model="vgg16").layers == ("block4_conv2",)
