"""Input normalization: the modes of ``keras.applications.imagenet_utils.preprocess_input``.

A :class:`Normalization` reproduces Keras' arithmetic step by step and in the same order, in
float32, so its results are bit-identical to ``<family>.preprocess_input``:

* ``caffe``: RGB -> BGR, then subtract the ImageNet mean (BGR order);
* ``tf``: ``x / 127.5 - 1``;
* ``torch``: ``(x / 255 - mean) / std`` with the ImageNet mean and std (RGB order);
* ``rescale``: ``x * (1 / 255)`` (``ImageDataGenerator(rescale=1/255)``);
* ``none``: the raw 0..255 values (models that normalize inside their graph).

The Numba kernel does not redo this arithmetic per pixel: since its input is uint8, it looks each
value up in a (3, 256) float32 table computed here with the very same NumPy operations.
:func:`resolve_preprocess` is the one place a ``preprocess=`` argument (mode, model name or
``None``) becomes a :class:`Normalization`. This module never imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("caffe", "tf", "torch", "rescale", "none")


@dataclass(frozen=True)
class Normalization:
    """Per-channel normalization of RGB pixels, in Keras' order of operations.

    ``out[..., c] = ((x[..., src(c)] * scale) / divisor - mean[c]) / std[c]`` where ``src(c)`` is
    ``2 - c`` when ``bgr`` (else ``c``); every step is a float32 operation, steps equal to the
    identity (a scale or divisor of 1, a zero mean, no std) are skipped as Keras skips them.

    Attributes:
        mode: the name of the mode (one of ``MODES``).
        bgr: reorder RGB to BGR first (caffe mode).
        scale: multiplier applied first (``rescale`` mode), 1.0 otherwise.
        divisor: divisor applied next (127.5 for ``tf``, 255 for ``torch``), 1.0 otherwise.
        mean: subtracted per output channel.
        std: divisor per output channel, or ``None``.
    """

    mode: str
    bgr: bool = False
    scale: float = 1.0
    divisor: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] | None = None

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Normalize an array of RGB images (..., 3), any dtype; returns a new float32 array.

        This is the NumPy reference of the kernel, and also the path for float inputs (for
        example augmented images).
        """
        x = np.array(images, dtype=np.float32, copy=True)
        if x.shape[-1:] != (3,):
            raise ValueError(f"`images` must have 3 channels in the last axis. Received: images.shape={x.shape}")
        if self.bgr:
            x = np.ascontiguousarray(x[..., ::-1])
        if self.scale != 1.0:
            x *= np.float32(self.scale)
        if self.divisor != 1.0:
            x /= np.float32(self.divisor)
        if any(self.mean):
            x -= np.asarray(self.mean, dtype=np.float32)
        if self.std is not None:
            x /= np.asarray(self.std, dtype=np.float32)
        return x

    @property
    def is_identity(self) -> bool:
        """True when the normalization leaves the values as they are (``none``: models that
        normalize inside their graph); a plain uint8 -> float32 conversion then does the job."""
        return not self.bgr and self.scale == 1.0 and self.divisor == 1.0 and not any(self.mean) and self.std is None

    def lookup_table(self) -> np.ndarray:
        """The (3, 256) float32 table ``lut[c, v]``: output channel ``c`` for a source value ``v``.

        ``v`` is read from the source channel given by :meth:`kernel_args`' ``perm``.
        """
        values = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1)  # (256, 3), RGB
        out = self.apply(values)  # (256, 3), output channel order
        return np.ascontiguousarray(out.T)

    def kernel_args(self) -> tuple[np.ndarray, np.ndarray]:
        """Arguments for :func:`fastfeat.kernels.normalize_batch` after ``(src, dst)``: ``(perm, lut)``.

        ``perm[c]`` is the source channel of output channel ``c`` (``[2, 1, 0]`` for BGR) and
        ``lut`` the table of :meth:`lookup_table`.
        """
        perm = np.array([2, 1, 0] if self.bgr else [0, 1, 2], dtype=np.int64)
        return perm, self.lookup_table()


_IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

_TABLE = {
    "caffe": Normalization("caffe", bgr=True, mean=_IMAGENET_MEAN_BGR),
    "tf": Normalization("tf", divisor=127.5, mean=(1.0, 1.0, 1.0)),
    "torch": Normalization("torch", divisor=255.0, mean=_IMAGENET_MEAN_RGB, std=_IMAGENET_STD_RGB),
    "rescale": Normalization("rescale", scale=1.0 / 255.0),
    "none": Normalization("none"),
}


def get_normalization(mode: str | Normalization) -> Normalization:
    """Return the :class:`Normalization` for a mode name (case-insensitive).

    Raises:
        ValueError: if ``mode`` is not one of ``MODES``.
    """
    if isinstance(mode, Normalization):
        return mode
    key = mode.lower() if isinstance(mode, str) else None
    if key not in _TABLE:
        raise ValueError(f"`preprocess` must be one of {', '.join(MODES)}. Received: preprocess={mode!r}")
    return _TABLE[key]


def resolve_preprocess(preprocess: str | Normalization | None, default: str = "none") -> Normalization:
    """The normalization for a mode (``caffe``), a model short name (``vgg19``: its
    ``preprocess_input``), a :class:`Normalization`, or ``None`` (the mode ``default``).

    ``fastfeat.extract`` passes the model's own mode as ``default``; ``image_dataset`` keeps
    ``"none"`` (raw 0..255 values, as Keras gives them).

    Raises:
        ValueError: if ``preprocess`` is neither a mode nor a registered model.
    """
    if preprocess is None:
        return get_normalization(default)
    if isinstance(preprocess, Normalization):
        return preprocess
    if str(preprocess).lower() in MODES:
        return get_normalization(str(preprocess).lower())
    from .registry import get_spec

    try:
        spec = get_spec(preprocess)
    except ValueError:
        raise ValueError(
            f"`preprocess` must be one of {', '.join(MODES)}, a model name (see `fastfeat models`; its "
            f"normalization) or None. Received: preprocess={preprocess!r}"
        ) from None
    return get_normalization(spec.preprocess)
