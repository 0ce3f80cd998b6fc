"""Keras-compatible data augmentation: :class:`Augment`, its random parameters, and the batch transform.

:class:`Augment` takes ``ImageDataGenerator``'s argument names and meanings (rotation, shifts,
shear, zoom, flips, fill mode, brightness, channel shift). Its random parameters come from a
counter-based generator: the parameters of one image depend only on ``(seed, stream, copy)``,
where ``stream`` is the image's catalog position (feature extraction) or a per-epoch random key
(training with :func:`fastfeat.image_dataset`). Batching, threading and resumed runs therefore
never change them. The pixels are produced by the fused kernel :func:`fastfeat.warp.augment_batch`.

Differences from Keras, on purpose:

* ``width_shift_range`` shifts horizontally and ``height_shift_range`` vertically, as Keras
  documents (Keras >= 2.9 swaps them, tf-keras#310). In the parameter dict, as in Keras'
  ``apply_transform``, ``tx`` is the horizontal (column) shift and ``ty`` the vertical one.
* The warp is centred on the true image centre. Keras centres the column axis on ``(h - 1) / 2``
  and the row axis on ``(w - 1) / 2``, which is only right for square images.
* Brightness follows Keras' path for pixel values in 0..255 (conversion to uint8 by truncation,
  then PIL's brightness). Keras rescales instead when a value lies outside 0..255, which can only
  happen with ``fill_mode="constant"`` and a ``cval`` outside 0..255.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from .kernels import empty_aligned
from .preprocess import Normalization, get_normalization
from .warp import FILL_MODES, augment_batch, augment_batch_raw

_DRAWS = 12  # uniforms drawn per image; fixed slots keep each parameter's stream stable
_SLOT = {"theta": 0, "tx": 1, "tx_sign": 2, "ty": 3, "ty_sign": 4, "shear": 5, "zx": 6, "zy": 7,
         "flip_h": 8, "flip_v": 9, "channel": 10, "brightness": 11}  # fmt: skip


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _fail(name: str, what: str, value) -> ValueError:
    return ValueError(f"`{name}` {what}. Received: {name}={value!r}")


@dataclass
class Augment:
    """Random image augmentation with ``ImageDataGenerator``'s arguments and meanings.

    Args:
        rotation_range: degrees; the angle is drawn from ``[-rotation_range, rotation_range]``.
        width_shift_range: horizontal shift. A float < 1 is a fraction of the width, >= 1 pixels,
            drawn from ``[-v, v]``; an int ``k`` draws whole pixels from ``{-(k-1), ..., k-1}`` and a
            list draws one of its values with a random sign (Keras' rules).
        height_shift_range: vertical shift, same rules with the height.
        brightness_range: ``(lo, hi)`` brightness factors (1 is unchanged), or ``None``.
        shear_range: shear angle in degrees, drawn from ``[-shear_range, shear_range]``.
        zoom_range: ``z`` for ``[1 - z, 1 + z]``, or ``(lo, hi)``; x and y are drawn independently.
            Values above 1 zoom out (Keras' convention).
        channel_shift_range: one intensity in ``[-v, v]`` added to every channel, clipped to the
            image's range.
        fill_mode: ``constant``, ``nearest``, ``reflect`` or ``wrap`` (scipy's edge rules).
        cval: the fill value for ``constant``.
        horizontal_flip: flip left-right with probability 1/2.
        vertical_flip: flip up-down with probability 1/2.
        interpolation_order: 1 bilinear (Keras' default), 0 nearest.

    Raises:
        ValueError: naming the first invalid argument.
    """

    rotation_range: float = 0.0
    width_shift_range: float | list[float] = 0.0
    height_shift_range: float | list[float] = 0.0
    brightness_range: tuple[float, float] | None = None
    shear_range: float = 0.0
    zoom_range: float | tuple[float, float] = 0.0
    channel_shift_range: float = 0.0
    fill_mode: str = "nearest"
    cval: float = 0.0
    horizontal_flip: bool = False
    vertical_flip: bool = False
    interpolation_order: int = 1

    def __post_init__(self):
        for name in ("rotation_range", "shear_range", "channel_shift_range"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise _fail(name, "must be a non-negative number", value)
        for name in ("width_shift_range", "height_shift_range"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple, np.ndarray)):
                if len(value) == 0 or not all(_is_number(v) for v in value):
                    raise _fail(name, "must be a number or a non-empty list of numbers", value)
                setattr(self, name, [v.item() if isinstance(v, np.generic) else v for v in value])
            elif not _is_number(value) or value < 0:
                raise _fail(name, "must be a non-negative number or a list of numbers", value)
        zoom = self.zoom_range
        if _is_number(zoom):
            if not 0 <= zoom < 1:
                raise _fail("zoom_range", "as a single number must be in [0, 1) (it gives [1 - z, 1 + z])", zoom)
        elif isinstance(zoom, (list, tuple)) and len(zoom) == 2 and all(_is_number(v) for v in zoom):
            if not 0 < zoom[0] <= zoom[1]:
                raise _fail("zoom_range", "as a pair must satisfy 0 < lo <= hi", zoom)
            self.zoom_range = (float(zoom[0]), float(zoom[1]))
        else:
            raise _fail("zoom_range", "must be a float or a pair of floats (lo, hi)", zoom)
        bright = self.brightness_range
        if bright is not None:
            if not (isinstance(bright, (list, tuple)) and len(bright) == 2 and all(_is_number(v) for v in bright)):
                raise _fail("brightness_range", "must be None or a pair of floats (lo, hi)", bright)
            if not 0 <= bright[0] <= bright[1]:
                raise _fail("brightness_range", "must satisfy 0 <= lo <= hi", bright)
            self.brightness_range = (float(bright[0]), float(bright[1]))
        if self.fill_mode not in FILL_MODES:
            raise _fail("fill_mode", f"must be one of {', '.join(FILL_MODES)}", self.fill_mode)
        if not _is_number(self.cval):
            raise _fail("cval", "must be a finite number", self.cval)
        for name in ("horizontal_flip", "vertical_flip"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise _fail(name, "must be True or False", getattr(self, name))
            setattr(self, name, bool(getattr(self, name)))
        if self.interpolation_order not in (0, 1) or isinstance(self.interpolation_order, bool):
            raise _fail("interpolation_order", "must be 0 (nearest) or 1 (bilinear)", self.interpolation_order)

    # -- configuration ------------------------------------------------------------------------
    @property
    def zoom_bounds(self) -> tuple[float, float]:
        """``(lo, hi)`` of the zoom factors."""
        z = self.zoom_range
        return (1.0 - z, 1.0 + z) if _is_number(z) else tuple(z)

    def to_dict(self) -> dict:
        """A JSON-safe dict of the arguments (stored in feature-store metadata)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, config: dict) -> Augment:
        """Build from :meth:`to_dict`'s output (or any subset of the arguments).

        Raises:
            ValueError: on unknown keys or invalid values.
        """
        if not isinstance(config, dict):
            raise ValueError(f"An augmentation config must be a dict of arguments. Received: config={config!r}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(config) - set(names))
        if unknown:
            raise ValueError(f"Unknown augmentation arguments {unknown}; allowed: {', '.join(names)}. "
                             f"Received: config={config!r}")  # fmt: skip
        return cls(**config)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Augment:
        """Read a JSON file holding :meth:`to_dict`'s output (``--augment config.json``)."""
        with open(path, encoding="utf-8") as f:
            try:
                config = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"Invalid JSON in augmentation config {os.fspath(path)!r}: {e}") from None
        return cls.from_dict(config)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` to a JSON file."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)

    # -- random parameters --------------------------------------------------------------------
    def sample(self, streams, image_size: tuple[int, int], seed: int, copy: int = 0) -> dict[str, np.ndarray]:
        """Random parameters for a batch, one image per entry of ``streams``.

        Args:
            streams: int64 ids, one per image (catalog positions, or per-epoch keys).
            image_size: (height, width) of the images to transform.
            seed: the run's seed.
            copy: the augmented copy index (another independent stream per image).

        Returns:
            Arrays of shape (n,) with ``get_random_transform``'s keys: ``theta, tx, ty, shear, zx,
            zy, flip_horizontal, flip_vertical, channel_shift_intensity, brightness`` (NaN where
            unused). ``tx`` is the horizontal shift in pixels, ``ty`` the vertical one.
        """
        h, w = image_size
        u = uniforms(seed, streams, copy, _DRAWS)
        n = u.shape[0]

        def between(lo, hi, slot):
            return lo + (hi - lo) * u[:, _SLOT[slot]]

        zeros = np.zeros(n)
        p = {"theta": between(-self.rotation_range, self.rotation_range, "theta") if self.rotation_range else zeros}
        p["tx"] = _shift(self.width_shift_range, w, u[:, _SLOT["tx"]], u[:, _SLOT["tx_sign"]])
        p["ty"] = _shift(self.height_shift_range, h, u[:, _SLOT["ty"]], u[:, _SLOT["ty_sign"]])
        p["shear"] = between(-self.shear_range, self.shear_range, "shear") if self.shear_range else zeros
        lo, hi = self.zoom_bounds
        p["zx"] = np.ones(n) if lo == hi == 1 else between(lo, hi, "zx")
        p["zy"] = np.ones(n) if lo == hi == 1 else between(lo, hi, "zy")
        p["flip_horizontal"] = (u[:, _SLOT["flip_h"]] < 0.5) & self.horizontal_flip
        p["flip_vertical"] = (u[:, _SLOT["flip_v"]] < 0.5) & self.vertical_flip
        c = self.channel_shift_range
        p["channel_shift_intensity"] = between(-c, c, "channel") if c else np.full(n, np.nan)
        b = self.brightness_range
        p["brightness"] = between(b[0], b[1], "brightness") if b is not None else np.full(n, np.nan)
        return p

    def get_random_transform(self, image_size: tuple[int, int], seed: int, stream: int = 0, copy: int = 0) -> dict:
        """One image's parameters as the dict ``ImageDataGenerator.get_random_transform`` returns."""
        p = self.sample(np.array([stream], np.int64), image_size, seed, copy)
        out = {}
        for key, value in p.items():
            v = value[0].item()
            out[key] = None if isinstance(v, float) and math.isnan(v) else v
        return out

    # -- applying -------------------------------------------------------------------------------
    def batch_transform(
        self, normalization: str | Normalization = "none", seed: int = 0, copy: int = 1
    ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """A batch function for :attr:`fastfeat.loader.Loader.transform`.

        Args:
            normalization: the model's input normalization, applied after augmentation.
            seed: the run's seed.
            copy: augmented copy index; each copy is an independent draw per image.

        Returns:
            ``transform(images uint8 (n, h, w, 3), positions int64 (n,), out=None) -> float32
            (n, h, w, 3)`` whose random parameters depend only on ``(seed, position, copy)``; it
            writes into ``out`` (C-contiguous float32 of that shape) when given, else into a new
            64-byte aligned array.
        """
        if not _is_number(seed) or int(seed) != seed:
            raise _fail("seed", "must be an integer", seed)
        if not _is_number(copy) or int(copy) != copy or copy < 0:
            raise _fail("copy", "must be a non-negative integer", copy)
        norm = get_normalization(normalization)
        args = normalization_args(norm)
        seed, copy = int(seed), int(copy)

        def transform(images: np.ndarray, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
            images = np.ascontiguousarray(images)
            if out is None:
                out = empty_aligned(images.shape, np.float32)
            elif out.shape != images.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
                raise ValueError(f"`out` must be a C-contiguous float32 array of shape {images.shape}. "
                                 f"Received: out.shape={out.shape}, out.dtype={out.dtype}")  # fmt: skip
            if len(images):
                params = self.sample(np.asarray(positions, np.int64), images.shape[1:3], seed, copy)
                self._run(images, out, params, norm, args)
            return out

        return transform

    def _run(self, images: np.ndarray, out: np.ndarray, params: dict, norm: Normalization | None, args) -> None:
        """Fill ``out`` from ``images`` with the kernel; ``norm=None`` leaves raw values."""
        h, w = images.shape[1:3]
        mats = transform_matrices(params, h, w)
        flips = np.stack([params["flip_horizontal"], params["flip_vertical"]], axis=1).astype(np.uint8)
        shifts = np.asarray(params["channel_shift_intensity"], np.float64)
        brights = np.asarray(params["brightness"], np.float64)
        common = (mats, flips, shifts, brights, FILL_MODES[self.fill_mode], float(self.cval), self.interpolation_order)
        if norm is None:
            augment_batch_raw(images, out, *common)
            return
        augment_batch(images, out, *common, *args)
        raw = ~(np.isnan(shifts) & np.isnan(brights))
        if raw.any():  # images with a channel shift or brightness are left raw by the kernel
            out[raw] = norm.apply(out[raw])


def normalization_args(norm: Normalization) -> tuple[np.ndarray, np.float32, np.float32, np.ndarray, np.ndarray]:
    """``(perm, scale, divisor, mean, std)`` for :func:`fastfeat.warp.augment_batch`.

    The kernel interpolates raw values, then takes :meth:`Normalization.apply`'s float32 steps
    on them: ``perm`` is the source channel of each output channel, ``scale`` and ``divisor`` the
    first two steps, ``mean`` and ``std`` (ones when the normalization has none) the last two,
    per output channel. Un-warped pixels are therefore bit-identical to ``Normalization.apply``.
    """
    perm = np.array([2, 1, 0] if norm.bgr else [0, 1, 2], dtype=np.int64)
    mean = np.asarray(norm.mean, dtype=np.float32)
    std = np.ones(3, np.float32) if norm.std is None else np.asarray(norm.std, dtype=np.float32)
    return perm, np.float32(norm.scale), np.float32(norm.divisor), mean, std


def _shift(rng, size: int, u: np.ndarray, u_sign: np.ndarray) -> np.ndarray:
    """Keras' shift rule: choice-with-sign for ints and lists, uniform for floats; fractions scale by size."""
    if isinstance(rng, list):
        choices = np.asarray(rng, np.float64)
        value = choices[np.minimum((u * len(choices)).astype(np.int64), len(choices) - 1)]
        value = value * np.where(u_sign < 0.5, -1.0, 1.0)
    elif not rng:
        return np.zeros(len(u))
    elif isinstance(rng, numbers.Integral):  # np.random.choice(k): 0 .. k-1, with a random sign
        value = np.minimum(np.floor(u * rng), rng - 1) * np.where(u_sign < 0.5, -1.0, 1.0)
    else:
        value = -rng + 2.0 * rng * u
    if np.max(rng) < 1:
        value = value * size
    return value


def transform_matrices(params: dict, h: int, w: int) -> np.ndarray:
    """(n, 6) pull mappings for :func:`fastfeat.warp.augment_batch` from parameter arrays.

    Keras' ``apply_affine_transform`` matrix, vectorized over the batch: ``M = R . T . Sh . Z``
    in (x, y) = (column, row) coordinates, about the image centre, then rewritten for (row,
    column) indexing as Keras does before calling scipy. A factor Keras skips (zero angle, no
    shift, unit zoom) is the identity here, which changes no bit of the result.
    """
    theta, tx, ty, shear, zx, zy = (np.atleast_1d(np.asarray(params[k], np.float64))
                                    for k in ("theta", "tx", "ty", "shear", "zx", "zy"))  # fmt: skip
    theta, shear = np.deg2rad(theta), np.deg2rad(shear)
    cos, sin = np.cos(theta), np.sin(theta)
    sh_sin, sh_cos = np.sin(shear), np.cos(shear)
    # R . T: linear part R, translation R @ (tx, ty); then . Sh . Z (Sh = [[1, -sin s], [0, cos s]]).
    t0 = cos * tx - sin * ty
    t1 = sin * tx + cos * ty
    l00 = cos * zx
    l01 = (cos * -sh_sin + -sin * sh_cos) * zy
    l10 = sin * zx
    l11 = (sin * -sh_sin + cos * sh_cos) * zy
    o_x = float(w) / 2 - 0.5  # centre: x is the column, y the row
    o_y = float(h) / 2 - 0.5
    t0 = t0 + o_x - (l00 * o_x + l01 * o_y)
    t1 = t1 + o_y - (l10 * o_x + l11 * o_y)
    # (x, y) -> (row, col): input row = l11 * r + l10 * c + t1, input col = l01 * r + l00 * c + t0.
    return np.ascontiguousarray(np.stack([l11, l10, t1, l01, l00, t0], axis=1))


def apply_transform(
    x: np.ndarray, params: dict, fill_mode: str = "nearest", cval: float = 0.0, order: int = 1
) -> np.ndarray:
    """Apply one image's parameter dict, as ``ImageDataGenerator().apply_transform`` does.

    Args:
        x: one image (h, w, c), uint8 or float.
        params: keys of ``get_random_transform`` (``theta, tx, ty, shear, zx, zy, flip_horizontal,
            flip_vertical``, optional ``channel_shift_intensity`` and ``brightness``); missing keys
            mean "no change". ``tx`` shifts columns and ``ty`` rows, as in Keras' ``apply_transform``.
        fill_mode: ``constant``, ``nearest``, ``reflect`` or ``wrap``.
        cval: fill value for ``constant``.
        order: 1 bilinear, 0 nearest.

    Returns:
        The transformed image, float32 (h, w, c), values in Keras' 0..255 scale (no normalization).
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"`x` must be one image (height, width, channels). Received: x.shape={x.shape}")
    if order not in (0, 1) or isinstance(order, bool):
        raise _fail("order", "must be 0 (nearest) or 1 (bilinear)", order)
    aug = Augment(fill_mode=fill_mode, cval=cval, interpolation_order=order)
    defaults = {"theta": 0.0, "tx": 0.0, "ty": 0.0, "shear": 0.0, "zx": 1.0, "zy": 1.0,
                "flip_horizontal": False, "flip_vertical": False}  # fmt: skip
    p = {k: np.array([params.get(k, d) if params.get(k, d) is not None else d]) for k, d in defaults.items()}
    for key in ("channel_shift_intensity", "brightness"):
        value = params.get(key)
        p[key] = np.array([np.nan if value is None else float(value)])
    if not 1 <= x.shape[2] <= 4:
        raise ValueError(f"`x` must have 1 to 4 channels. Received: x.shape={x.shape}")
    src = np.ascontiguousarray(x[None] if x.dtype == np.uint8 else x[None].astype(np.float32))
    out = np.empty(src.shape, np.float32)
    aug._run(src, out, p, None, None)
    return out[0]


# -- counter-based random numbers ------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms(seed: int, streams: Sequence[int] | np.ndarray, copy: int, k: int) -> np.ndarray:
    """(n, k) uniform floats in [0, 1), a pure function of ``(seed, streams[i], copy, j)``."""
    streams = np.ascontiguousarray(np.atleast_1d(np.asarray(streams, np.int64))).view(np.uint64)
    seed_word = np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], np.uint64)
    copy_word = np.array([int(copy) & 0xFFFFFFFFFFFFFFFF], np.uint64)
    key = _mix(_mix(seed_word + _GOLDEN) ^ copy_word)
    h = _mix(_mix(key ^ streams) + _GOLDEN)  # (n,)
    counters = (np.arange(1, k + 1, dtype=np.uint64) * _GOLDEN)[None, :]
    bits = _mix(h[:, None] + counters)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
