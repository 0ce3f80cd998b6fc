"""The model registry, layer shapes against real outputs, truncation, pooling and model files."""

from __future__ import annotations

import numpy as np
import pytest

from fastfeat import models as M
from fastfeat.precision import policy_names, relative_error


# -- registry -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", M.models())
def test_registry_entry_is_sane(name):
    import keras

    from fastfeat.preprocess import MODES

    spec = M.get_spec(name)
    assert spec.name == name
    assert callable(getattr(keras.applications, spec.constructor))
    assert spec.preprocess in MODES
    h, w = spec.default_size
    assert h == w and h >= spec.min_size >= 32


def test_get_spec_is_lenient_about_spelling():
    assert M.get_spec("ResNet-50").name == "resnet50"
    assert M.get_spec("mobilenet_v2").name == "mobilenetv2"


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match=r"Did you mean vgg19.*Received: model='vgg91'"):
        M.get_spec("vgg91")


@pytest.mark.parametrize(
    "spec, expected",
    [("conv1", ("conv1", "none")), ("conv1:avg", ("conv1", "avg")), ("a:b:MAX", ("a:b", "max"))],
)
def test_parse_layer(spec, expected):
    assert M.parse_layer(spec) == expected
    assert M.feature_key(*expected) == (expected[0] if expected[1] == "none" else f"{expected[0]}:{expected[1]}")


def test_parse_layer_rejects_unknown_pool():
    with pytest.raises(ValueError, match="Pooling must be one of none, avg, max"):
        M.parse_layer("conv1:mean")


@pytest.mark.parametrize("value, expected", [(None, None), (64, (64, 64)), ("48x64", (48, 64)), ((32, 40), (32, 40))])
def test_normalize_size(value, expected):
    assert M.normalize_size(value) == expected


def test_normalize_size_rejects_nonsense():
    with pytest.raises(ValueError, match=r"Received: image_size=\(0, 3\)"):
        M.normalize_size((0, 3))


@pytest.mark.parametrize("value", [0, -2, True, "0", "abc", "3x4x5", (32.5, 32), (1, 2, 3), [0, 4]])
def test_image_size_check_names_the_value(value):
    from fastfeat import checks

    with pytest.raises(ValueError, match=r"must be a positive int, a \(height, width\) pair .* Received: size="):
        checks.image_size(value, name="size")
    with pytest.raises(ValueError, match="Received: image_size=None"):
        checks.image_size(None, allow_none=False)


def test_build_base_checks_size_weights_and_precision(tmp_path):
    with pytest.raises(ValueError, match="at least 75x75"):
        M.build_base("inceptionv3", (64, 64), weights=None)
    with pytest.raises(FileNotFoundError, match="No such weights file"):
        M.build_base("mobilenetv2", (64, 64), weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(ValueError, match=r"Received: precision='float8'"):
        M.build_base("mobilenetv2", (64, 64), weights=None, precision="float8")
    with pytest.raises(FileNotFoundError, match="No such model file"):
        M.build_base(str(tmp_path / "missing.keras"))


# -- layer shapes vs real outputs -----------------------------------------------------------------
SMALL = [
    ("mobilenetv2", (64, 64), ["block_1_expand_relu", "block_6_project", "out_relu"]),
    ("vgg16", (48, 40), ["block1_conv2", "block3_pool", "block5_conv3"]),
    ("resnet50v2", (64, 64), ["conv2_block1_out", "post_relu"]),
    ("mobilenetv3small", (64, 64), ["expanded_conv_project_bn", "conv_1_bn"]),
]


@pytest.mark.parametrize("name, size, layers", SMALL, ids=[s[0] for s in SMALL])
def test_listed_shapes_match_real_outputs(name, size, layers):
    base = M.build_base(name, size, weights=None)
    listed = dict(M.list_layers(base))
    assert M.input_size_of(base) == size
    cuts = [(layer, "none") for layer in layers] + [(layers[-1], "avg"), (layers[-1], "max")]
    extractor = M.truncate(base, cuts)
    x = np.random.default_rng(0).uniform(-1, 1, (2, *size, 3)).astype(np.float32)
    out = {k: np.asarray(v) for k, v in M.make_infer_fn(extractor)(x).items()}
    assert set(out) == {layers_key for layers_key in (M.feature_key(*c) for c in cuts)}
    for layer in layers:
        assert out[layer].shape == (2, *listed[layer]), layer
        assert out[layer].dtype == np.float32
    last = out[layers[-1]]
    np.testing.assert_allclose(out[f"{layers[-1]}:avg"], last.mean(axis=(1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out[f"{layers[-1]}:max"], last.max(axis=(1, 2)), rtol=1e-6, atol=1e-6)


def test_unknown_layer_lists_close_names():
    base = M.build_base("vgg16", (32, 32), weights=None)
    message = r"no layer 'block4_conv9'\. Closest: block4_conv.*Received: layer='block4_conv9'"
    with pytest.raises(ValueError, match=message):
        M.truncate(base, [("block4_conv9", "none")])


def test_pooling_needs_a_4d_output(tiny_model_file):
    import keras

    inputs = keras.Input((8,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(3, name="dense")(inputs))
    with pytest.raises(ValueError, match="Pooling needs a 4-D"):
        M.truncate(model, [("dense", "avg")])


# -- model files and precision --------------------------------------------------------------------
def test_model_file_loads_safe_and_rebuilds_under_bf16(tiny_model_file):
    import keras

    original = keras.saving.load_model(tiny_model_file, compile=False)
    assert policy_names(original) == {"float32"}
    rebuilt = M.build_base(tiny_model_file, precision="mixed_bfloat16")
    assert policy_names(rebuilt) == {"mixed_bfloat16"}
    assert [layer.name for layer in rebuilt.layers] == [layer.name for layer in original.layers]
    for a, b in zip(original.get_weights(), rebuilt.get_weights()):
        np.testing.assert_array_equal(a, b)  # variables stay float32 under a mixed policy
    x = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    ref = M.make_infer_fn(M.truncate(original, [("conv3", "none")]))(x)["conv3"].numpy()
    bf16 = M.make_infer_fn(M.truncate(rebuilt, [("conv3", "none")]))(x)["conv3"].numpy()
    assert bf16.dtype == np.float32
    assert 0 < relative_error(ref, bf16) <= 2e-2  # really computed in bf16, and close
    assert M.build_base(tiny_model_file, precision="float32").get_layer("conv1").dtype_policy.name == "float32"


def test_model_saved_mixed_is_rebuilt_to_float32(tmp_path):
    import keras

    path = tmp_path / "mixed.keras"
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv", dtype="mixed_bfloat16")(inputs)
    keras.Model(inputs, x).save(path)
    model = M.build_base(str(path), precision="float32")
    assert policy_names(model) == {"float32"}


def test_model_file_with_lambda_needs_unsafe_mode(tmp_path):
    import keras

    path = tmp_path / "lambda.keras"
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    keras.Model(inputs, x).save(path)
    with pytest.raises(ValueError, match="safe_mode"):
        M.build_base(str(path))
    model = M.build_base(str(path), precision="mixed_bfloat16", safe_mode=False)
    assert policy_names(model) == {"mixed_bfloat16"}


def test_extractor_builder_shares_weights_across_precisions():
    base = M.build_base("mobilenetv2", (48, 48), weights=None)
    build = M.extractor_builder(base, [("block_3_expand_relu", "none")])
    x = np.random.default_rng(2).uniform(-1, 1, (2, 48, 48, 3)).astype(np.float32)
    ref = build("float32")(x)["block_3_expand_relu"].numpy()
    np.testing.assert_array_equal(ref, build("float32")(x)["block_3_expand_relu"].numpy())
    bf16 = build("mixed_bfloat16")(x)["block_3_expand_relu"].numpy()
    assert 0 < relative_error(ref, bf16) <= 2e-2
