"""Input normalization: the modes of ``keras.applications.imagenet_utils.preprocess_input``.

A :class:`Normalization` is the per-channel affine map ``(x[perm] * scale - mean) / std`` that
the Numba kernel applies while it converts uint8 RGB to float32. It never imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("caffe", "tf", "torch", "rescale", "none")


@dataclass(frozen=True)
class Normalization:
    """Per-channel normalization applied to RGB uint8 pixels.

    Attributes:
        mode: the name of the mode (one of ``MODES``).
        bgr: reorder RGB to BGR first (caffe mode).
        scale: multiplier applied to the raw 0..255 value, per output channel.
        mean: subtracted after scaling, per output channel.
        std: divisor applied last, per output channel.
    """

    mode: str
    bgr: bool
    scale: tuple[float, float, float]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def kernel_args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Arrays for :func:`fastfeat.kernels.normalize_batch`: perm, scale, mean, 1/std."""
        perm = np.array([2, 1, 0] if self.bgr else [0, 1, 2], dtype=np.int64)
        scale = np.asarray(self.scale, dtype=np.float32)
        mean = np.asarray(self.mean, dtype=np.float32)
        inv_std = (1.0 / np.asarray(self.std, dtype=np.float64)).astype(np.float32)
        return perm, scale, mean, inv_std

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Reference NumPy implementation (used by tests and small inputs)."""
        x = images.astype(np.float32)
        if self.bgr:
            x = x[..., ::-1]
        perm, scale, mean, inv_std = self.kernel_args()
        return (x * scale - mean) * inv_std


_TABLE = {
    # keras.applications.imagenet_utils: caffe = RGB->BGR, subtract the ImageNet mean (BGR order).
    "caffe": Normalization("caffe", True, (1.0, 1.0, 1.0), (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
    # tf = scale to [-1, 1].
    "tf": Normalization("tf", False, (1 / 127.5,) * 3, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
    # torch = scale to [0, 1], then ImageNet mean/std in RGB order.
    "torch": Normalization(
        "torch", False, (1 / 255.0,) * 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ),
    "rescale": Normalization("rescale", False, (1 / 255.0,) * 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    # Models that normalize inside the graph (EfficientNet, ConvNeXt, MobileNetV3) take raw 0..255.
    "none": Normalization("none", False, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def get_normalization(mode: str | Normalization) -> Normalization:
    """Return the :class:`Normalization` for a mode name.

    Raises:
        ValueError: if ``mode`` is not one of ``MODES``.
    """
    if isinstance(mode, Normalization):
        return mode
    key = str(mode).lower()
    if key not in _TABLE:
        raise ValueError(f"`preprocess` must be one of {', '.join(MODES)}. Received: preprocess={mode!r}")
    return _TABLE[key]
