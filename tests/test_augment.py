"""Augment: Keras parity of the fused kernel, jitted vs plain Python, parameter sampling, config."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.ndimage

from fastfeat import warp
from fastfeat.augment import Augment, apply_transform, normalization_args, transform_matrices, uniforms
from fastfeat.preprocess import get_normalization

FILL_MODES = ("constant", "nearest", "reflect", "wrap")
KERAS_KEYS = ("theta", "tx", "ty", "shear", "zx", "zy", "flip_horizontal", "flip_vertical")


def make_image(size: int, seed: int) -> np.ndarray:
    """A square uint8 RGB image with smooth structure, edges and noise (the hard case for resampling)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    base = 127 + 90 * np.sin(xx / rng.uniform(2, 6))[..., None] * np.cos(yy / rng.uniform(2, 6))[..., None]
    base = base + rng.normal(0, 20, (size, size, 3))
    base[size // 3 : size // 2, size // 4 :] = rng.uniform(0, 255, 3)  # a hard-edged bar
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def keras_generator():
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    return ImageDataGenerator


def keras_draws(generator_cls, mode, count, seed, **extra):
    """(image, params, keras output) triples from Keras' own random draws on square images."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        size = int(rng.integers(24, 65))
        x = make_image(size, seed * 100 + k)
        gen = generator_cls(rotation_range=45, width_shift_range=0.3, height_shift_range=0.3, shear_range=30,
                            zoom_range=0.3, horizontal_flip=True, vertical_flip=True, fill_mode=mode, cval=37.0,
                            **extra)  # fmt: skip
        params = gen.get_random_transform(x.shape, seed=seed * 1000 + k)
        expected = gen.apply_transform(x.astype(np.float32), params)
        out.append((x, params, expected))
    return out


def assert_parity(actual: np.ndarray, expected: np.ndarray) -> None:
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    within = float(np.mean(diff <= 1.0))
    assert within >= 0.99, f"only {within:.4f} of pixels within 1 grey level (max diff {diff.max()})"
    assert diff.mean() < 0.5, f"mean absolute difference {diff.mean()}"


def kernel_batch(x: np.ndarray, params: dict, mode: str, cval: float, normalization="none", order: int = 1):
    """Run the uint8 batch kernel (the training/extraction path) on one image with Keras' dict."""
    p = {k: np.array([float(params.get(k) or 0.0)]) for k in ("theta", "tx", "ty", "shear")}
    p.update(zx=np.array([params.get("zx", 1.0)]), zy=np.array([params.get("zy", 1.0)]))
    flips = np.array([[bool(params.get("flip_horizontal")), bool(params.get("flip_vertical"))]], np.uint8)
    shift = params.get("channel_shift_intensity")
    bright = params.get("brightness")
    norm = get_normalization(normalization)
    src = x[None].copy()
    out = np.empty(src.shape, np.float32)
    args = (src, out, transform_matrices(p, *x.shape[:2]), flips, np.array([np.nan if shift is None else shift]),
            np.array([np.nan if bright is None else bright]), warp.FILL_MODES[mode], float(cval), order,
            *normalization_args(norm))  # fmt: skip
    return args, norm


# -- Keras parity ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", FILL_MODES)
def test_apply_transform_matches_keras(keras_generator, mode):
    for x, params, expected in keras_draws(keras_generator, mode, 8, seed=FILL_MODES.index(mode) + 1):
        assert_parity(apply_transform(x, params, fill_mode=mode, cval=37.0), expected)


@pytest.mark.parametrize("mode", FILL_MODES)
def test_batch_kernel_matches_keras(keras_generator, mode):
    """The fast path (taps gathered from the uint8 image, four-lane float32 blend) against Keras, and un-jitted."""
    draws = keras_draws(keras_generator, mode, 6, seed=10 + FILL_MODES.index(mode))
    for k, (x, params, expected) in enumerate(draws):
        args, norm = kernel_batch(x, params, mode, 37.0)
        warp.augment_batch(*args)
        assert_parity(args[1][0], expected)
        if k == 0:  # the same kernel as plain Python
            jitted = args[1].copy()
            warp.augment_batch.py_func(*args)
            np.testing.assert_allclose(args[1], jitted, rtol=0, atol=1e-4)


@pytest.mark.parametrize("mode", FILL_MODES)
def test_brightness_and_channel_shift_match_keras(keras_generator, mode):
    draws = keras_draws(keras_generator, mode, 4, seed=20, brightness_range=(0.5, 1.5), channel_shift_range=40.0)
    for x, params, expected in draws:
        assert params["brightness"] is not None and params["channel_shift_intensity"] is not None
        assert_parity(apply_transform(x, params, fill_mode=mode, cval=37.0), expected)
        args, norm = kernel_batch(x, params, mode, 37.0, normalization="caffe")
        warp.augment_batch(*args)  # left raw by the kernel ...
        assert_parity(norm.apply(args[1][0]), norm.apply(expected))  # ... and normalized by the caller


def test_nearest_interpolation_matches_keras(keras_generator):
    for mode in FILL_MODES:
        gen = keras_generator(rotation_range=40, zoom_range=0.3, shear_range=20, fill_mode=mode, interpolation_order=0)
        x = make_image(40, 3)
        params = gen.get_random_transform(x.shape, seed=5)
        expected = gen.apply_transform(x.astype(np.float32), params)
        assert_parity(apply_transform(x, params, fill_mode=mode, order=0), expected)


def test_identity_is_the_normalization_exactly():
    x = np.stack([make_image(32, s) for s in range(3)])
    for mode in ("caffe", "tf", "torch", "rescale", "none"):
        out = Augment().batch_transform(mode, seed=0)(x, np.arange(3))
        np.testing.assert_array_equal(out, get_normalization(mode).apply(x))


NORMALIZATIONS = ("caffe", "tf", "torch", "rescale", "none")


def reference_batch(aug: Augment, x: np.ndarray, seed: int) -> np.ndarray:
    """What ``aug.batch_transform(..., seed)`` should give before normalization: Keras' apply_transform
    (scipy's double-precision arithmetic) on each image's own parameters."""
    p = aug.sample(np.arange(len(x)), x.shape[1:3], seed=seed, copy=1)
    return np.stack([apply_transform(x[i], {k: p[k][i].item() for k in KERAS_KEYS}, fill_mode=aug.fill_mode,
                                     cval=aug.cval) for i in range(len(x))])  # fmt: skip


@pytest.mark.parametrize("mode", FILL_MODES)
def test_unwarped_pixels_are_the_normalization_exactly(mode):
    """Whole-pixel shifts and flips (every weight exactly 1 or 0) are bit-identical to normalizing the
    shifted raw image, edge, wrapped and cval (37.5, off the uint8 grid) pixels included."""
    x = np.stack([make_image(32, s) for s in range(4)])
    aug = Augment(width_shift_range=[3, 5], height_shift_range=[2], horizontal_flip=True, vertical_flip=True,
                  fill_mode=mode, cval=37.5)  # fmt: skip
    raw = reference_batch(aug, x, seed=4)
    for name in NORMALIZATIONS:
        norm = get_normalization(name)
        np.testing.assert_array_equal(aug.batch_transform(name, seed=4)(x, np.arange(4)), norm.apply(raw), err_msg=name)
    if mode == "constant":
        assert (raw == 37.5).all(axis=-1).mean() > 0.1  # the fill was checked too


@pytest.mark.parametrize("normalization", ["caffe", "torch", "none"])
def test_constant_fill_is_the_normalized_cval_exactly(normalization):
    """Warped images: pixels outside the image are exactly ``Normalization.apply(cval)`` for a cval off
    the uint8 grid; the others are "warp, then normalize"."""
    x = (100 + np.stack([make_image(48, s) for s in range(6)]).astype(np.uint16) * 155 // 255).astype(np.uint8)
    aug = Augment(rotation_range=40, width_shift_range=0.3, height_shift_range=0.3, shear_range=20, zoom_range=0.3,
                  horizontal_flip=True, vertical_flip=True, fill_mode="constant", cval=37.5)  # fmt: skip
    norm = get_normalization(normalization)
    fill = norm.apply(np.full((1, 3), 37.5, np.float32))[0]
    out = aug.batch_transform(normalization, seed=2)(x, np.arange(6))
    raw = reference_batch(aug, x, seed=2)  # image values are >= 100: only fill pixels are 37.5
    filled = (out == fill).all(axis=-1)
    expected = (raw == 37.5).all(axis=-1)
    assert expected.mean() > 0.1
    # float32 coordinates (the kernel) against double (scipy) may disagree on a pixel at the very edge
    assert np.count_nonzero(filled != expected) <= 0.001 * filled.size
    assert not ((out == fill).any(axis=-1) & ~filled).any()  # no pixel half cval
    inside = ~filled & ~expected
    unit = float(np.max(np.abs(norm.apply(np.ones((1, 3))) - norm.apply(np.zeros((1, 3))))))  # d(normalized)/d(raw)
    np.testing.assert_allclose(out[inside], norm.apply(raw)[inside], rtol=0, atol=2e-3 * unit)


@pytest.mark.parametrize("mode", ["reflect", "wrap"])
def test_reflect_and_wrap_match_scipy(mode):
    """The batch kernel against ``scipy.ndimage.affine_transform`` itself, per channel, then Keras' flips."""
    x = np.stack([make_image(36, s) for s in range(4)])
    aug = Augment(rotation_range=60, width_shift_range=0.4, height_shift_range=0.4, shear_range=20, zoom_range=0.4,
                  horizontal_flip=True, vertical_flip=True, fill_mode=mode)  # fmt: skip
    p = aug.sample(np.arange(4), (36, 36), seed=9, copy=1)
    mats = transform_matrices(p, 36, 36)
    expected = np.empty(x.shape, np.float64)
    for i, a in enumerate(mats):
        for c in range(3):
            expected[i, ..., c] = scipy.ndimage.affine_transform(
                x[i, ..., c].astype(np.float64), np.array([[a[0], a[1]], [a[3], a[4]]]), offset=(a[2], a[5]),
                order=1, mode=mode)  # fmt: skip
        if p["flip_horizontal"][i]:
            expected[i] = expected[i, :, ::-1]
        if p["flip_vertical"][i]:
            expected[i] = expected[i, ::-1]
    assert p["flip_horizontal"].any() and p["flip_vertical"].any()
    for name in ("none", "caffe"):
        out = aug.batch_transform(name, seed=9)(x, np.arange(4))
        np.testing.assert_allclose(out, get_normalization(name).apply(expected), rtol=0, atol=1e-3, err_msg=name)


def test_vector_blend_equals_the_scalar_blend():
    """The compiled four-lane blend (``_gather_rgb`` jitted) equals its plain definition bit for bit,
    and writes no further than the next column's first value."""
    rng = np.random.default_rng(0)
    h = w = 20
    s = rng.integers(0, 256, h * w * 3 + 1, dtype=np.uint8)  # the image and its spare byte
    iy, ix = rng.integers(0, h, w), rng.integers(0, w, w)
    iy[-3:], ix[-3:] = h - 1, w - 1  # the last pixel, whose fourth byte is the spare one
    taps = np.stack([(iy * w + ix) * 3, np.where(iy < h - 1, 3 * w, 0), np.where(ix < w - 1, 3, 0)]).astype(np.uint32)
    weights = rng.random((4, w), dtype=np.float32)
    start = 3 * w  # the second row of a two-row output
    for bgr in (False, True):
        for mean in (np.zeros(4, np.float32), np.array([103.939, 116.779, 123.68, 0.0], np.float32)):
            for c0, c1 in ((0, w - 1), (3, 11), (5, w - 1), (4, 3)):
                compiled = np.full(6 * w, -1.0, np.float32)
                plain = compiled.copy()
                warp._gather_rgb(s, compiled, start, taps, weights, c0, c1, bgr, mean)
                warp._gather_rgb.py_func(s, plain, start, taps, weights, c0, c1, bgr, mean)
                end = start + 3 * (c1 + 1) if c1 >= c0 else start + 3 * c0
                np.testing.assert_array_equal(compiled[start + 3 * c0 : end], plain[start + 3 * c0 : end])
                assert (compiled[: start + 3 * c0] == -1).all() and (compiled[end + 1 :] == -1).all()
                if c1 >= c0:  # spot check against the definition: column c0, first output channel
                    channel = 2 if bgr else 0
                    k, down, right = (int(t) for t in taps[:, c0])
                    value = np.float32(0.0)
                    for j, d in enumerate((0, right, down, down + right)):
                        value = value + np.float32(s[k + d + channel]) * weights[j, c0]
                    assert compiled[start + 3 * c0] == value - mean[0]


@pytest.mark.parametrize("channels", [1, 2, 4])
@pytest.mark.parametrize("mode", FILL_MODES)
def test_batch_kernel_other_channel_counts(mode, channels):
    """1, 2 and 4 channels (the generic scalar gather) equal the same planes warped as RGB (the vector blend)."""
    rgb = np.stack([make_image(40, s) for s in range(2)])  # (2, 40, 40, 3)
    planes = np.concatenate([rgb, rgb[..., :1]], axis=-1)[..., :channels].copy()
    params = Augment(rotation_range=35, zoom_range=0.3, shear_range=10, width_shift_range=0.2,
                     horizontal_flip=True, vertical_flip=True, fill_mode=mode, cval=200.0).sample(
        np.arange(2), (40, 40), seed=3)  # fmt: skip
    mats = transform_matrices(params, 40, 40)
    flips = np.stack([params["flip_horizontal"], params["flip_vertical"]], axis=1).astype(np.uint8)
    nan = np.full(2, np.nan)
    perm, scale, divisor, mean, std = normalization_args(get_normalization("rescale"))
    common = (mats, flips, nan, nan, warp.FILL_MODES[mode], 200.0, 1)
    expected = np.empty(rgb.shape, np.float32)
    warp.augment_batch(rgb, expected, *common, perm, scale, divisor, mean, std)
    generic = (np.arange(channels, dtype=np.int64), scale, divisor, np.zeros(channels, np.float32),
               np.ones(channels, np.float32))  # fmt: skip
    out = np.empty(planes.shape, np.float32)
    warp.augment_batch(planes, out, *common, *generic)
    reference = np.concatenate([expected, expected[..., :1]], axis=-1)[..., :channels]
    np.testing.assert_array_equal(out, reference)
    plain = np.empty(planes.shape, np.float32)
    warp.augment_batch.py_func(planes, plain, *common, *generic)
    np.testing.assert_allclose(plain, out, rtol=0, atol=1e-4)


def test_normalized_augmentation_equals_augment_then_normalize():
    """The kernel interpolates raw values and normalizes after, as Keras augments then preprocesses."""
    x = make_image(48, 7)
    params = {"theta": 17.0, "tx": 3.5, "ty": -2.25, "shear": 8.0, "zx": 0.9, "zy": 1.15, "flip_horizontal": True}
    for mode in ("caffe", "torch"):
        args, norm = kernel_batch(x, params, "reflect", 0.0, normalization=mode)
        warp.augment_batch(*args)
        reference = norm.apply(apply_transform(x, params, fill_mode="reflect"))
        np.testing.assert_allclose(args[1][0], reference, rtol=0, atol=1e-3)


def test_shifts_follow_the_documented_axes():
    """width_shift_range moves content horizontally, height_shift_range vertically (not tf-keras#310)."""
    x = np.zeros((20, 30, 3), np.uint8)
    x[8, 12] = 200
    for name, axis in (("width_shift_range", 1), ("height_shift_range", 0)):
        aug = Augment(**{name: [4]}, fill_mode="constant")  # exactly 4 pixels, random sign
        out = aug.batch_transform("none", seed=3)(np.repeat(x[None], 16, 0), np.arange(16))
        for image in out:
            peak = np.argwhere(image[..., 0] > 100)
            assert len(peak) == 1
            moved = peak[0] - np.array([8, 12])
            assert abs(moved[axis]) == 4 and moved[1 - axis] == 0, (name, moved)


# -- edge rules against scipy, jitted and not ----------------------------------------------------------
@pytest.mark.parametrize("mode", FILL_MODES)
def test_map_coordinate_matches_scipy(mode):
    line = np.array([3.0, 10.0, 200.0, 50.0, 90.0, 7.0, 120.0])
    n = len(line)
    points = np.concatenate([np.linspace(-3 * n, 4 * n, 1001), np.arange(-2 * n, 3 * n, 0.5), [-1e-9, n - 1 + 1e-9]])
    expected = scipy.ndimage.map_coordinates(line, [points], order=1, mode=mode, cval=-5.0)
    code = warp.FILL_MODES[mode]
    for fn in (warp.map_coordinate, warp.map_coordinate.py_func):
        got = []
        for p in points:
            v = fn(float(p), n, code)
            if v <= -1.0:
                got.append(-5.0)
                continue
            i0 = int(np.floor(v))
            f = v - i0
            a, b = line[min(max(i0, 0), n - 1)], line[min(max(i0 + 1, 0), n - 1)]
            got.append(a * (1 - f) + b * f)
        np.testing.assert_allclose(got, expected, atol=1e-9)


def test_kernel_without_jit_matches(tmp_path):
    """FASTFEAT_DISABLE_JIT=1 runs every kernel as plain Python: same pixels."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, numpy as np\n"
        "from fastfeat.augment import Augment\n"
        "from fastfeat import warp\n"
        "assert not hasattr(warp.augment_batch, 'signatures'), 'still jitted'\n"
        "x = np.load(sys.argv[1])\n"
        "aug = Augment(rotation_range=40, width_shift_range=0.2, shear_range=10, zoom_range=0.2,\n"
        "              horizontal_flip=True, fill_mode='reflect', brightness_range=(0.8, 1.2))\n"
        "np.save(sys.argv[2], aug.batch_transform('caffe', seed=5)(x, np.arange(len(x))))\n"
        "aug2 = Augment(rotation_range=40, fill_mode='wrap')\n"
        "np.save(sys.argv[3], aug2.batch_transform('tf', seed=6)(x, np.arange(len(x))))\n"
        "aug3 = Augment(rotation_range=40, shear_range=10, zoom_range=0.3, horizontal_flip=True,\n"
        "               fill_mode='constant', cval=37.5)\n"
        "np.save(sys.argv[4], aug3.batch_transform('caffe', seed=7)(x, np.arange(len(x))))\n"
        "aug4 = Augment(rotation_range=40, width_shift_range=0.3, vertical_flip=True, fill_mode='nearest')\n"
        "np.save(sys.argv[5], aug4.batch_transform('torch', seed=8)(x, np.arange(len(x))))\n"
    )
    x = np.stack([make_image(20, s) for s in range(3)])
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, FASTFEAT_DISABLE_JIT="1")
    subprocess.run([sys.executable, str(script), str(tmp_path / "x.npy"), str(tmp_path / "a.npy"),
                    str(tmp_path / "b.npy"), str(tmp_path / "c.npy"), str(tmp_path / "d.npy")],
                   check=True, env=env, timeout=120)  # fmt: skip
    aug = Augment(rotation_range=40, width_shift_range=0.2, shear_range=10, zoom_range=0.2,
                  horizontal_flip=True, fill_mode="reflect", brightness_range=(0.8, 1.2))  # fmt: skip
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), aug.batch_transform("caffe", seed=5)(x, np.arange(3)),
                               rtol=0, atol=1e-4)  # fmt: skip
    aug2 = Augment(rotation_range=40, fill_mode="wrap")
    np.testing.assert_allclose(np.load(tmp_path / "b.npy"), aug2.batch_transform("tf", seed=6)(x, np.arange(3)),
                               rtol=0, atol=1e-5)  # fmt: skip
    # the fast path for nearest and constant (the vector blend compiled, its plain definition here): same bits
    aug3 = Augment(rotation_range=40, shear_range=10, zoom_range=0.3, horizontal_flip=True, fill_mode="constant",
                   cval=37.5)  # fmt: skip
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), aug3.batch_transform("caffe", seed=7)(x, np.arange(3)))
    aug4 = Augment(rotation_range=40, width_shift_range=0.3, vertical_flip=True, fill_mode="nearest")
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), aug4.batch_transform("torch", seed=8)(x, np.arange(3)))


# -- parameter sampling -------------------------------------------------------------------------
COURSE = dict(rotation_range=30, width_shift_range=0.2, height_shift_range=0.1, shear_range=0.2, zoom_range=0.2,
              horizontal_flip=True, fill_mode="nearest")  # fmt: skip


def test_sampled_ranges_and_axes():
    n = 4000
    p = Augment(**COURSE).sample(np.arange(n), (100, 300), seed=1)  # h=100, w=300: axes tell apart
    assert np.all(np.abs(p["theta"]) <= 30) and np.ptp(p["theta"]) > 58
    assert np.all(np.abs(p["tx"]) <= 0.2 * 300) and np.max(np.abs(p["tx"])) > 0.19 * 300  # width -> tx (columns)
    assert np.all(np.abs(p["ty"]) <= 0.1 * 100) and np.max(np.abs(p["ty"])) > 0.09 * 100  # height -> ty (rows)
    assert np.all(np.abs(p["shear"]) <= 0.2)
    for key in ("zx", "zy"):
        assert np.all((p[key] >= 0.8) & (p[key] <= 1.2))
        assert abs(np.mean(p[key]) - 1.0) < 0.01
    assert abs(np.corrcoef(p["zx"], p["zy"])[0, 1]) < 0.05  # drawn independently
    assert abs(np.mean(p["flip_horizontal"]) - 0.5) < 0.03
    assert not p["flip_vertical"].any()
    assert np.isnan(p["brightness"]).all() and np.isnan(p["channel_shift_intensity"]).all()
    # uniform: each decile of the rotation range holds about a tenth of the draws
    counts = np.histogram(p["theta"], bins=10, range=(-30, 30))[0]
    assert counts.min() > 0.08 * n and counts.max() < 0.12 * n


def test_integer_and_list_shift_rules():
    p = Augment(width_shift_range=3, height_shift_range=[0.1, 0.2]).sample(np.arange(2000), (50, 60), seed=2)
    assert set(np.unique(p["tx"])) == {-2.0, -1.0, 0.0, 1.0, 2.0}  # np.random.choice(3) with a sign
    assert set(np.round(np.abs(p["ty"]), 6)) == {5.0, 10.0}  # list of fractions of the height
    assert (p["ty"] < 0).any() and (p["ty"] > 0).any()
    p = Augment(width_shift_range=5.0, brightness_range=(0.5, 0.9), channel_shift_range=10).sample(
        np.arange(500), (50, 60), seed=2
    )
    assert np.all(np.abs(p["tx"]) <= 5.0) and len(np.unique(p["tx"])) > 400  # floats >= 1 are pixels
    assert np.all((p["brightness"] >= 0.5) & (p["brightness"] <= 0.9))
    assert np.all(np.abs(p["channel_shift_intensity"]) <= 10)


def test_parameters_depend_only_on_seed_position_and_copy():
    aug = Augment(**COURSE)
    x = np.stack([make_image(32, s) for s in range(8)])
    positions = np.arange(100, 108)
    t = aug.batch_transform("caffe", seed=11, copy=1)
    whole = t(x, positions)
    halves = np.concatenate([t(x[:3], positions[:3]), t(x[3:], positions[3:])])
    np.testing.assert_array_equal(whole, halves)  # batching does not matter
    np.testing.assert_array_equal(whole, aug.batch_transform("caffe", seed=11, copy=1)(x, positions))
    other_copy = aug.batch_transform("caffe", seed=11, copy=2)(x, positions)
    other_seed = aug.batch_transform("caffe", seed=12, copy=1)(x, positions)
    moved = t(x, positions + 1)
    for other in (other_copy, other_seed, moved):
        assert all(not np.array_equal(a, b) for a, b in zip(whole, other))
    u = uniforms(3, np.arange(1000), 0, 12)
    assert u.shape == (1000, 12) and u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.1


def test_get_random_transform_is_a_keras_dict():
    d = Augment(**COURSE).get_random_transform((224, 224), seed=1, stream=5, copy=1)
    assert set(d) == set(KERAS_KEYS) | {"channel_shift_intensity", "brightness"}
    assert d["brightness"] is None and d["channel_shift_intensity"] is None
    x = make_image(32, 1)
    np.testing.assert_array_equal(apply_transform(x, {}), x.astype(np.float32))


# -- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(rotation_range=-1), "rotation_range"),
        (dict(rotation_range="30"), "rotation_range"),
        (dict(width_shift_range=[]), "width_shift_range"),
        (dict(height_shift_range=-0.1), "height_shift_range"),
        (dict(shear_range=float("nan")), "shear_range"),
        (dict(zoom_range=1.5), "zoom_range"),
        (dict(zoom_range=(1.2, 0.8)), "zoom_range"),
        (dict(zoom_range=(0.8, 1.2, 1.3)), "zoom_range"),
        (dict(brightness_range=0.5), "brightness_range"),
        (dict(brightness_range=(-1, 2)), "brightness_range"),
        (dict(channel_shift_range=-3), "channel_shift_range"),
        (dict(fill_mode="mirror"), "fill_mode"),
        (dict(cval=None), "cval"),
        (dict(horizontal_flip="yes"), "horizontal_flip"),
        (dict(interpolation_order=3), "interpolation_order"),
    ],
)
def test_invalid_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=rf"`{name}`.*Received: {name}="):
        Augment(**kwargs)


def test_config_round_trip(tmp_path):
    aug = Augment(**COURSE, brightness_range=(0.7, 1.3), cval=3)
    assert Augment.from_dict(json.loads(json.dumps(aug.to_dict()))) == aug
    path = tmp_path / "augment.json"
    aug.to_json(path)
    assert Augment.from_json(path) == aug
    assert Augment.from_dict({"rotation_range": 10}) == Augment(rotation_range=10)
    with pytest.raises(ValueError, match="Unknown augmentation arguments.*rotation"):
        Augment.from_dict({"rotaton_range": 10})
    path.write_text("{not json")
    with pytest.raises(ValueError, match="Invalid JSON"):
        Augment.from_json(path)


def test_batch_transform_arguments():
    with pytest.raises(ValueError, match="Received: copy=-1"):
        Augment().batch_transform("none", seed=0, copy=-1)
    with pytest.raises(ValueError, match="Received: seed=1.5"):
        Augment().batch_transform("none", seed=1.5)
    with pytest.raises(ValueError, match="preprocess"):
        Augment().batch_transform("bogus", seed=1)
    empty = Augment().batch_transform("none", seed=0)(np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0, np.int64))
    assert empty.shape == (0, 8, 8, 3) and empty.dtype == np.float32


def test_non_square_images_turn_about_their_centre():
    """Keras centres non-square images wrongly (rows on (w-1)/2); fastfeat uses the true centre."""
    x = np.zeros((6, 10, 3), np.uint8)
    x[2, 3] = 200
    turned = apply_transform(x, {"theta": 180}, fill_mode="constant")
    assert np.argwhere(turned[..., 0] > 100).tolist() == [[6 - 1 - 2, 10 - 1 - 3]]
    args, _ = kernel_batch(x, {"theta": 180}, "constant", 0.0)
    warp.augment_batch(*args)  # the batch path agrees
    np.testing.assert_allclose(args[1][0], turned, atol=1e-3)


def test_kernel_fuzzed_jitted_reads_only_the_image():
    """Random mappings, sizes, fill modes and flips through the compiled kernel: every batch lies
    between canary bytes of 255 in memory while its pixels are 10..20, so a tap read outside an
    image (beyond the one spare byte the vector blend ignores) would show as a value above 20."""
    rng = np.random.default_rng(0)
    perm, scale, divisor, mean, std = normalization_args(get_normalization("none"))
    for trial in range(300):
        n, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 10)), int(rng.integers(1, 10))
        size = n * h * w * 3
        memory = np.full(size + 128, 255, np.uint8)
        src = memory[64 : 64 + size].reshape(n, h, w, 3)
        src[...] = rng.integers(10, 21, src.shape)
        theta = rng.uniform(-np.pi, np.pi, n)
        zoom = rng.choice([0.0, 0.01, 1.0, 3.0, 50.0], (n, 2)) * rng.uniform(0.5, 1.5, (n, 2))
        mats = np.stack([zoom[:, 0] * np.cos(theta), -zoom[:, 1] * np.sin(theta), rng.normal(0, 3 * h, n),
                         zoom[:, 0] * np.sin(theta), zoom[:, 1] * np.cos(theta), rng.normal(0, 3 * w, n)], axis=1)
        if trial % 7 == 0:
            mats[:, [2, 5]] = rng.choice([-1e6, 1e6, 2.0**24], (n, 2))  # far outside, at the bound
        flips = rng.integers(0, 2, (n, 2)).astype(np.uint8)
        nan = np.full(n, np.nan)
        mode = int(trial % 4)
        dst = np.full((n, h, w, 3), np.nan, np.float32)
        warp.augment_batch(src, dst, mats, flips, nan, nan, mode, 15.0, 1, perm, scale, divisor, mean, std)
        assert np.isfinite(dst).all(), trial
        assert dst.min() >= 10 - 1e-3 and dst.max() <= 20 + 1e-3, (trial, dst.min(), dst.max())
        assert (memory[:64] == 255).all() and (memory[64 + size :] == 255).all()  # nothing written outside


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 2.0**24 + 1, -1e300])
def test_kernel_refuses_unbounded_mappings(bad):
    perm, scale, divisor, mean, std = normalization_args(get_normalization("none"))
    src = np.zeros((1, 4, 4, 3), np.uint8)
    mats = np.array([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
    mats[0, 2] = bad
    nan = np.full(1, np.nan)
    with pytest.raises(ValueError, match="finite and at most 2"):
        warp.augment_batch(src, np.empty((1, 4, 4, 3), np.float32), mats, np.zeros((1, 2), np.uint8), nan, nan, 1,
                           0.0, 1, perm, scale, divisor, mean, std)  # fmt: skip
