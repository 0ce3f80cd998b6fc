"""Small generated images for the input-side tests (catalog, decode, parity, bad inputs).

Every helper returns the encoded bytes (``encode_*``) or writes a file and returns the pixels a
correct RGB decoder must produce (``write_*``), so one assertion checks decode, geometry and order.
Images are a few KB at most.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image


def smooth_rgb(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth, non-trivial uint8 RGB image (gradients plus a seed-dependent pattern)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    fx, fy, phase = rng.uniform(0.05, 0.4, 3)
    out = np.empty((height, width, 3), np.float32)
    out[..., 0] = 127 + 120 * np.sin(fx * x + phase)
    out[..., 1] = 127 + 120 * np.cos(fy * y + 2 * phase)
    out[..., 2] = (x * 255 / max(width - 1, 1) + y * 255 / max(height - 1, 1)) / 2
    return np.clip(out, 0, 255).astype(np.uint8)


def flat_rgb(height: int, width: int, k: int) -> np.ndarray:
    """Self-verifying image ``k``: every pixel is (k % 251, 3k % 251, 7k % 251)."""
    image = np.empty((height, width, 3), np.uint8)
    image[...] = (k % 251, (3 * k) % 251, (7 * k) % 251)
    return image


def encode(image: np.ndarray | Image.Image, fmt: str, **kwargs) -> bytes:
    """Encode with Pillow (``fmt`` a Pillow format name: JPEG, PNG, GIF, BMP, PPM, TIFF, WEBP)."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    f = io.BytesIO()
    pil.save(f, fmt, **kwargs)
    return f.getvalue()


def pil_rgb(data: bytes) -> np.ndarray:
    """What Keras' ``load_img`` sees: Pillow's decode, ``convert("RGB")``."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def write(path: str | os.PathLike, data: bytes) -> str:
    """Write bytes to ``path`` (parents created); returns the path as a string."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG that declares ``width`` x ``height`` RGB pixels (all zero rows).

    Only the first rows are actually present (a real bomb would compress them all); decoders that
    trust the header would try to allocate ``3 * width * height`` bytes.
    """
    rows = zlib.compress(b"\x00" * (1 + 3 * min(width, 4096)) * 4, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """A copy of a JPEG whose frame header declares another size (the data stays as it is)."""
    sof = next(data.find(m) for m in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1") if data.find(m) > 0)
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def tiff_with_size(width: int, height: int, big_endian: bool = False) -> bytes:
    """A TIFF whose first directory declares ``width`` x ``height`` 8-bit RGB pixels (no pixel data)."""
    o = ">" if big_endian else "<"
    entries = [
        (256, 4, 1, width),  # ImageWidth, LONG
        (257, 4, 1, height),  # ImageLength, LONG
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 2),  # Photometric: RGB
        (273, 4, 1, 8),  # StripOffsets (nonsense: the data is not there)
        (277, 3, 1, 3),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 3 * width * height % 2**32),  # StripByteCounts
    ]
    ifd = struct.pack(o + "H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack(o + "HHI", tag, kind, count) + (
            struct.pack(o + "HH", value, 0) if kind == 3 else struct.pack(o + "I", value)
        )
    ifd += struct.pack(o + "I", 0)
    return (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(o + "I", 8) + ifd


def exif_jpeg(image: np.ndarray, orientation: int) -> bytes:
    """A high-quality JPEG carrying an EXIF orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=100, subsampling=0, exif=exif.tobytes())


def animated(frames: list[np.ndarray], fmt: str) -> bytes:
    """An animated GIF or WebP (lossless) of the given frames."""
    images = [Image.fromarray(f) for f in frames]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    return encode(images[0], fmt, save_all=True, append_images=images[1:], duration=50, loop=0, **extra)


def sixteen_bit(image16: np.ndarray, fmt: str) -> bytes:
    """A 16-bit PNG or TIFF (gray (h, w) or RGB (h, w, 3) uint16), written with OpenCV."""
    import cv2

    data = image16 if image16.ndim == 2 else image16[..., ::-1]  # OpenCV writes BGR
    ok, buf = cv2.imencode(".png" if fmt == "PNG" else ".tiff", np.ascontiguousarray(data))
    assert ok
    return buf.tobytes()
