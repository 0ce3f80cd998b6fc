"""Bytes to uint8 RGB at the target size, with OpenCV.

OpenCV releases the GIL while it decodes and resizes, so tf.data can run many of these at once.
Grayscale, RGBA, palette and 16-bit images come out as 8-bit RGB (alpha dropped, as PIL's
``convert("RGB")`` does). EXIF orientation is ignored unless asked for, as Keras does.

For JPEGs at least twice the target size, the decoder's DCT-domain downscaling
(``IMREAD_REDUCED_COLOR_2/4/8``) is used before the final resize: several times faster for
photos, but it changes pixels, so it is never used with ``nearest`` (the Keras-parity mode).
This module never imports TensorFlow.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST_EXACT,  # bit-exact with PIL's NEAREST (Keras' default)
    "bilinear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}

#: Images declaring more pixels than this are refused (decompression-bomb guard).
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's limit (2 x MAX_IMAGE_PIXELS)

_RGB = cv2.IMREAD_COLOR_RGB  # 256: decode straight to RGB, no BGR round trip
_REDUCED = {1: 0, 2: 16, 4: 32, 8: 64}  # the IMREAD_REDUCED_* scale bits


class DecodeError(Exception):
    """An image could not be read; ``reason`` says why in a few words."""

    def __init__(self, reason: str, path: str | None = None):
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)


def check_interpolation(interpolation: str) -> int:
    """The OpenCV flag for an interpolation name; ``ValueError`` listing the names otherwise."""
    try:
        return INTERPOLATIONS[interpolation]
    except KeyError:
        raise ValueError(
            f"`interpolation` must be one of {', '.join(INTERPOLATIONS)}. Received: interpolation={interpolation!r}"
        ) from None


def read_header(data: bytes | np.ndarray) -> tuple[str, int, int] | None:
    """``(format, width, height)`` from an image's first bytes, or ``None`` if not recognised.

    Understands JPEG, PNG, GIF, BMP, WebP and PPM/PGM; cheap (no pixel is decoded).
    """
    buf = bytes(data[:65536]) if isinstance(data, np.ndarray) else data[:65536]
    if buf[:8] == b"\x89PNG\r\n\x1a\n" and len(buf) >= 24:
        w, h = struct.unpack(">II", buf[16:24])
        return "png", w, h
    if buf[:2] == b"\xff\xd8":
        return _jpeg_size(data if isinstance(data, (bytes, bytearray)) else bytes(data))
    if buf[:6] in (b"GIF87a", b"GIF89a") and len(buf) >= 10:
        w, h = struct.unpack("<HH", buf[6:10])
        return "gif", w, h
    if buf[:2] == b"BM" and len(buf) >= 26:
        w, h = struct.unpack("<ii", buf[18:26])
        return "bmp", abs(w), abs(h)
    if buf[:4] == b"RIFF" and buf[8:12] == b"WEBP" and len(buf) >= 30:
        chunk = buf[12:16]
        if chunk == b"VP8 ":
            w, h = struct.unpack("<HH", buf[26:30])
            return "webp", w & 0x3FFF, h & 0x3FFF
        if chunk == b"VP8L":
            b = buf[21:25]
            w = 1 + (((b[1] & 0x3F) << 8) | b[0])
            h = 1 + (((b[3] & 0xF) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
            return "webp", w, h
        if chunk == b"VP8X":
            w = 1 + int.from_bytes(buf[24:27], "little")
            h = 1 + int.from_bytes(buf[27:30], "little")
            return "webp", w, h
    if buf[:2] in (b"P5", b"P6", b"P2", b"P3"):
        fields = buf[2:256].split()
        nums = [f for f in fields if not f.startswith(b"#")][:2]
        if len(nums) == 2 and all(n.isdigit() for n in nums):
            return "pnm", int(nums[0]), int(nums[1])
    return None


def _jpeg_size(data: bytes) -> tuple[str, int, int] | None:
    """Walk JPEG markers to the first SOF segment."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return "jpeg", w, h
        i += 2 + length
    return None


def reduction_factor(width: int, height: int, target_hw: tuple[int, int]) -> int:
    """Largest JPEG decode reduction (1, 2, 4 or 8) that keeps both sides at or above the target."""
    th, tw = target_hw
    for factor in (8, 4, 2):
        if width // factor >= tw and height // factor >= th:
            return factor
    return 1


def decode_image(
    data: bytes | np.ndarray,
    size: tuple[int, int] | None,
    interpolation: str = "bilinear",
    exif: bool = False,
    reduced: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode an encoded image to uint8 RGB, resized to ``size`` = (height, width).

    Args:
        data: the file's bytes.
        size: (height, width) to resize to, or ``None`` to keep the decoded size.
        interpolation: one of ``INTERPOLATIONS``; ``nearest`` reproduces Keras/PIL exactly.
        exif: apply the EXIF orientation (Keras does not).
        reduced: allow the decoder's DCT downscaling for large JPEGs (never with ``nearest``).
        max_pixels: refuse images declaring more pixels than this (``None``: no limit).

    Raises:
        DecodeError: empty, unrecognised, truncated or oversized data.
    """
    flag = check_interpolation(interpolation)
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buf.size == 0:
        raise DecodeError("empty file")
    header = read_header(buf)
    if header is not None and max_pixels is not None and header[1] * header[2] > max_pixels:
        raise DecodeError(f"image too large: {header[1]}x{header[2]} exceeds max_pixels={max_pixels}")
    mode = _RGB | (0 if exif else cv2.IMREAD_IGNORE_ORIENTATION)
    if reduced and size is not None and interpolation != "nearest" and header and header[0] == "jpeg":
        factor = reduction_factor(header[1], header[2], size)
        if exif:  # the orientation may swap the sides: reduce only as far as both ways allow
            factor = min(factor, reduction_factor(header[2], header[1], size))
        mode |= _REDUCED[factor]
    try:
        image = cv2.imdecode(buf, mode)
    except cv2.error as e:
        raise DecodeError(f"decoder error: {str(e).strip().splitlines()[-1]}") from None
    if image is None or image.size == 0:
        kind = header[0] if header else "unrecognised format"
        raise DecodeError(f"cannot decode ({kind})")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.dtype != np.uint8:  # OpenCV keeps some 16-bit/float TIFF depths despite IMREAD_COLOR
        image = _to_uint8(image)
    if size is not None and image.shape[:2] != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=flag)
    return np.ascontiguousarray(image)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8)


def read_file(path: str) -> bytes:
    """A file's bytes, with the OS error turned into a :class:`DecodeError`."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DecodeError(f"cannot read file: {e.strerror or e}", path) from None


def load_image(path: str, size: tuple[int, int] | None, **kwargs) -> np.ndarray:
    """Read and decode one file; see :func:`decode_image` for the arguments."""
    try:
        return decode_image(read_file(path), size, **kwargs)
    except DecodeError as e:
        e.path = path
        raise
