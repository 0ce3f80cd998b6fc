"""The normalization kernel, jitted and plain, against NumPy and keras.applications.*.preprocess_input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastfeat import kernels
from fastfeat.kernels import normalize_batch
from fastfeat.preprocess import MODES, Normalization, get_normalization

# mode -> the keras.applications module whose preprocess_input uses it
KERAS_FAMILY = {"caffe": "vgg16", "tf": "mobilenet_v2", "torch": "densenet"}
SHAPES = [(1, 1, 1), (1, 7, 5), (3, 13, 17), (2, 32, 32)]


def _batch(shape, seed=0) -> np.ndarray:
    n, h, w = shape
    x = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    flat = x.reshape(-1, 3)
    flat[0] = 0  # both ends of the range
    flat[-1] = 255
    return x


def _keras_reference(mode: str, x: np.ndarray) -> np.ndarray:
    if mode == "rescale":  # ImageDataGenerator(rescale=1/255): x *= rescale, in float32
        out = x.astype(np.float32)
        out *= 1.0 / 255
        return out
    if mode == "none":
        return x.astype(np.float32)
    import keras

    return getattr(keras.applications, KERAS_FAMILY[mode]).preprocess_input(x.astype(np.float32))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", MODES)
def test_kernel_matches_keras_bit_for_bit(mode, shape):
    x = _batch(shape)
    norm = get_normalization(mode)
    expected = _keras_reference(mode, x)
    np.testing.assert_array_equal(norm.apply(x), expected)
    for fn in (normalize_batch, normalize_batch.py_func):
        out = np.full(x.shape, np.nan, np.float32)
        fn(x, out, *norm.kernel_args())
        np.testing.assert_array_equal(out, expected)


def test_kernel_writes_only_the_first_rows_of_a_larger_buffer():
    """A short last batch is written into ``dst[:n]`` of the run's buffer; the rest is untouched."""
    x = _batch((3, 8, 8))
    out = np.full((5, 8, 8, 3), -7.0, np.float32)
    normalize_batch(x, out, *get_normalization("caffe").kernel_args())
    np.testing.assert_array_equal(out[:3], get_normalization("caffe").apply(x))
    assert (out[3:] == -7.0).all()


def test_kernel_is_compiled_unless_disabled():
    if kernels.DISABLE_JIT:
        assert normalize_batch.py_func is normalize_batch
    else:
        assert normalize_batch.py_func is not normalize_batch
        assert normalize_batch.signatures or hasattr(normalize_batch, "compile")


def test_caffe_reorders_channels_and_subtracts_the_bgr_mean():
    x = np.zeros((1, 1, 1, 3), np.uint8)
    x[0, 0, 0] = (10, 20, 30)  # RGB
    out = get_normalization("caffe").apply(x)[0, 0, 0]
    np.testing.assert_allclose(out, [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)


def test_apply_accepts_float_input_like_keras():
    x = np.random.default_rng(1).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    for mode in ("caffe", "tf", "torch"):
        np.testing.assert_array_equal(get_normalization(mode).apply(x), _keras_reference(mode, x))


def test_lookup_table_shape_and_custom_normalization():
    custom = Normalization("custom", bgr=False, divisor=2.0, mean=(1.0, 2.0, 3.0), std=(2.0, 2.0, 2.0))
    perm, lut = custom.kernel_args()
    assert lut.shape == (3, 256) and lut.dtype == np.float32 and perm.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(lut[:, 10], [(5 - 1) / 2, (5 - 2) / 2, (5 - 3) / 2])
    assert get_normalization(custom) is custom


@pytest.mark.parametrize("bad", ["Caffe2", "", None, "inception"])
def test_unknown_mode_is_refused_with_the_list(bad):
    with pytest.raises(ValueError, match=r"`preprocess` must be one of caffe, tf, torch, rescale, none\. Received"):
        get_normalization(bad)


def test_mode_names_are_case_insensitive():
    assert get_normalization("TORCH") is get_normalization("torch")


def test_apply_refuses_images_without_three_channels():
    with pytest.raises(ValueError, match="Received: images.shape"):
        get_normalization("tf").apply(np.zeros((2, 2, 4), np.uint8))


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 63, 1000, 2 * 224 * 224 * 3 + 5])
def test_to_float32_streaming_cast_jitted_and_plain(size):
    """Every alignment of the output (the streaming stores cover the 64-byte aligned middle, the
    ends are converted one by one): equal to NumPy's cast, nothing written outside ``dst``."""
    src = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    for offset in range(0, 17, 3):
        for fn in (kernels.to_float32, kernels.to_float32.py_func):
            memory = np.full(size + 48, -7.0, np.float32)
            dst = memory[offset + 8 : offset + 8 + size]
            fn(src, dst)
            np.testing.assert_array_equal(dst, src.astype(np.float32))
            assert (memory[: offset + 8] == -7.0).all() and (memory[offset + 8 + size :] == -7.0).all()
    with pytest.raises(ValueError, match="same size"):
        kernels.to_float32(src, np.empty(size + 1, np.float32))


@pytest.mark.parametrize("offset", [0, 1, 2, 5, 16])
def test_normalize_batch_streaming_blocks_at_every_alignment(offset):
    """The kernel writes 16 pixels at a time with streaming stores from the first 64-byte
    boundary on: every alignment of ``dst`` gives Normalization.apply's bits, and nothing is
    written outside ``dst``."""
    x = np.random.default_rng(offset).integers(0, 256, (3, 17, 19, 3), dtype=np.uint8)
    for mode in ("caffe", "tf", "torch", "rescale", "none"):
        norm = get_normalization(mode)
        for fn in (normalize_batch, normalize_batch.py_func):
            memory = np.full(x.size + 64, -7.0, np.float32)
            out = memory[offset + 8 : offset + 8 + x.size].reshape(x.shape)
            fn(x, out, *norm.kernel_args())
            np.testing.assert_array_equal(out, norm.apply(x))
            assert (memory[: offset + 8] == -7.0).all() and (memory[offset + 8 + x.size :] == -7.0).all()


def test_disable_jit_runs_plain_python():
    """FASTFEAT_DISABLE_JIT=1: no compilation, same results (in a fresh interpreter)."""
    code = textwrap.dedent(
        """
        import numpy as np
        from fastfeat import kernels
        from fastfeat.kernels import normalize_batch
        from fastfeat.preprocess import get_normalization
        assert kernels.DISABLE_JIT and normalize_batch.py_func is normalize_batch
        assert not hasattr(normalize_batch, "signatures")
        x = np.random.default_rng(0).integers(0, 256, (2, 5, 3, 3), dtype=np.uint8)
        for mode in ("caffe", "tf", "torch", "rescale", "none"):
            norm = get_normalization(mode)
            out = np.empty(x.shape, np.float32)
            normalize_batch(x, out, *norm.kernel_args())
            assert np.array_equal(out, norm.apply(x)), mode
        flat = np.empty(x.size, np.float32)
        kernels.to_float32(x.reshape(-1), flat)
        assert np.array_equal(flat, x.reshape(-1).astype(np.float32))
        print("ok")
        """
    )
    env = dict(os.environ, FASTFEAT_DISABLE_JIT="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
