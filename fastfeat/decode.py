"""Bytes to uint8 RGB at the target size, with OpenCV.

OpenCV releases the GIL while it decodes and resizes, so tf.data can run many of these at once.
Every call either returns a C-contiguous uint8 array of shape (height, width, 3) or raises
:class:`DecodeError` with a short reason; nothing else escapes.

Before any pixel is decoded, the header is parsed (JPEG, PNG, GIF, BMP, WebP, PNM, TIFF; a file
whose format is not recognised from its first bytes is refused, whatever its extension) and:

* images declaring more than ``max_pixels`` pixels are refused (decompression-bomb guard);
* JPEGs without an end-of-image marker after their scan data and PNGs whose chunks do not reach
  an ``IEND`` chunk within the file are refused as truncated (a look at the file's tail and the
  PNG chunk lengths, not a second decode). Keras/PIL refuse truncated files too; OpenCV 4.x
  would fill the missing part with grey, and OpenCV 5 allocates whatever a corrupt PNG chunk
  length claims (3 GB for a 122-byte file) before it fails.

Conversions, as PIL's ``convert("RGB")`` (what Keras does) where they agree:

* grayscale -> the value on the three channels; grayscale+alpha and RGBA -> alpha dropped (not
  composited); palette (with or without transparency) -> the palette colours; CMYK JPEG ->
  RGB (within 1 of PIL); the first frame of animated GIF/WebP/PNG.
* 16-bit images are scaled to 8 bits (high byte, ``v >> 8``). PIL does the same for 16-bit RGB,
  but *clips* 16-bit grayscale (``I;16``, 16-bit PGM) to 255, which turns most such images white:
  fastfeat deliberately differs there. Float TIFFs are clipped to 0..255, as PIL does.
* Known differences left as they are: an RGBA TIFF comes out with its colour premultiplied by
  alpha (libtiff's RGBA interface, inside OpenCV; PIL drops alpha), and transparent GIF pixels
  get a colour of OpenCV's choosing (PIL: the palette entry of the transparent index). Opaque
  pixels are identical.
* EXIF orientation is ignored unless ``exif=True`` (Keras ignores it). TIFF's own orientation tag
  is applied by libtiff in both OpenCV and Pillow, so TIFFs come out the same either way.

For JPEGs at least twice the target size, the decoder's DCT-domain downscaling
(``IMREAD_REDUCED_*``) is used before the final resize: several times faster for photos, but it
changes pixels, so it is never used with ``nearest`` (the Keras-parity mode). This module never
imports TensorFlow.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

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
_REDUCED = {1: 0, 2: 16, 4: 32, 8: 64}  # the IMREAD_REDUCED_* scale bits, combined with _RGB


class DecodeError(Exception):
    """An image could not be read; ``reason`` says why in a few words, ``path`` which file."""

    def __init__(self, reason: str, path: str | None = None):
        self.reason = reason
        self.path = path
        super().__init__(reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


def check_interpolation(interpolation: str) -> int:
    """The OpenCV flag for an interpolation name; ``ValueError`` listing the names otherwise."""
    try:
        return INTERPOLATIONS[interpolation]
    except (KeyError, TypeError):
        raise ValueError(
            f"`interpolation` must be one of {', '.join(INTERPOLATIONS)}. Received: interpolation={interpolation!r}"
        ) from None


# -- headers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    format: str
    width: int
    height: int
    scan: int = -1  # JPEG: offset of the first start-of-scan marker


def read_header(data: bytes | np.ndarray) -> tuple[str, int, int] | None:
    """``(format, width, height)`` from an image's header, or ``None`` if not recognised.

    Understands JPEG, PNG, GIF, BMP, WebP, PNM (P1-P6) and TIFF (classic and BigTIFF); cheap (no
    pixel is decoded). For GIF the extent of the first frame counts too, for TIFF the first image.
    Returns ``None`` as well for a recognised format whose header is cut short or malformed.
    """
    try:
        header = _probe(_as_bytes(data))
    except DecodeError:
        return None
    return None if header is None else (header.format, header.width, header.height)


def _as_bytes(data) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, np.ndarray):
        return data.tobytes()
    return bytes(data)


def _probe(buf: bytes) -> _Header | None:
    """The header of a recognised format; ``None`` if unrecognised; ``DecodeError`` if malformed."""
    if buf[:8] == b"\x89PNG\r\n\x1a\n":
        if len(buf) < 24:
            raise DecodeError("truncated PNG: the header is cut short")
        if buf[12:16] != b"IHDR":
            raise DecodeError("corrupt PNG: no IHDR chunk first")
        w, h = struct.unpack(">II", buf[16:24])
        return _Header("png", w, h)
    if buf[:3] == b"\xff\xd8\xff":
        return _jpeg_header(buf)
    if buf[:6] in (b"GIF87a", b"GIF89a"):
        return _gif_header(buf)
    if buf[:2] == b"BM" and len(buf) >= 18:
        return _bmp_header(buf)
    if buf[:4] == b"RIFF" and buf[8:12] == b"WEBP":
        return _webp_header(buf)
    if buf[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6") and len(buf) > 2 and buf[2:3].isspace():
        return _pnm_header(buf)
    if buf[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff_header(buf)
    return None


def _jpeg_header(buf: bytes) -> _Header:
    """Walk JPEG markers to the frame header (size) and the first scan (where the data starts)."""
    i, n = 2, len(buf)
    size = None
    while i + 4 <= n:
        if buf[i] != 0xFF:  # stray bytes between segments: libjpeg skips them too
            i = buf.find(b"\xff", i)
            if i < 0:
                break
            continue
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xD9:
            raise DecodeError("corrupt JPEG: end-of-image marker before the image data")
        length = (buf[i + 2] << 8) | buf[i + 3]
        if length < 2:
            raise DecodeError(f"corrupt JPEG: segment length {length}")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and size is None:
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", buf[i + 5 : i + 9])
            size = (w, h)
        elif marker == 0xDA:
            if size is None:
                raise DecodeError("corrupt JPEG: image data before the frame header")
            return _Header("jpeg", size[0], size[1], scan=i)
        i += 2 + length
    raise DecodeError("truncated JPEG: the header ends before the image data")


def _gif_header(buf: bytes) -> _Header:
    """The logical screen, grown to the first frame's extent if that frame lies outside it."""
    if len(buf) < 13:
        raise DecodeError("truncated GIF: the header is cut short")
    w, h, flags = struct.unpack("<HHB", buf[6:11])
    i = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    n = len(buf)
    while i < n:
        block = buf[i]
        if block == 0x2C:  # image descriptor
            if i + 9 > n:
                break
            left, top, fw, fh = struct.unpack("<HHHH", buf[i + 1 : i + 9])
            return _Header("gif", max(w, left + fw), max(h, top + fh))
        if block == 0x21:  # extension: label, then sub-blocks until a zero size
            i += 2
            while i < n and buf[i]:
                i += buf[i] + 1
            i += 1
            continue
        if block == 0x3B:
            raise DecodeError("corrupt GIF: no image before the trailer")
        raise DecodeError(f"corrupt GIF: unexpected block 0x{block:02x}")
    raise DecodeError("truncated GIF: the file ends before the first image")


def _bmp_header(buf: bytes) -> _Header:
    (info_size,) = struct.unpack("<I", buf[14:18])
    if info_size == 12 and len(buf) >= 22:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        w, h = struct.unpack("<HH", buf[18:22])
        return _Header("bmp", w, h)
    if info_size >= 40 and len(buf) >= 26:
        w, h = struct.unpack("<ii", buf[18:26])
        return _Header("bmp", abs(w), abs(h))
    raise DecodeError("truncated or corrupt BMP: bad header")


def _webp_header(buf: bytes) -> _Header:
    chunk = buf[12:16]
    if chunk == b"VP8 " and len(buf) >= 30:
        if buf[23:26] != b"\x9d\x01\x2a":
            raise DecodeError("corrupt WebP: bad VP8 start code")
        w, h = struct.unpack("<HH", buf[26:30])
        return _Header("webp", w & 0x3FFF, h & 0x3FFF)
    if chunk == b"VP8L" and len(buf) >= 25:
        b = buf[21:25]
        w = 1 + (((b[1] & 0x3F) << 8) | b[0])
        h = 1 + (((b[3] & 0xF) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
        return _Header("webp", w, h)
    if chunk == b"VP8X" and len(buf) >= 30:
        w = 1 + int.from_bytes(buf[24:27], "little")
        h = 1 + int.from_bytes(buf[27:30], "little")
        return _Header("webp", w, h)
    raise DecodeError("truncated or corrupt WebP: bad header")


def _pnm_header(buf: bytes) -> _Header:
    """Netpbm: magic, then width and height as decimal tokens; ``#`` starts a comment line."""
    tokens, i, n = [], 2, min(len(buf), 4096)
    while len(tokens) < 2 and i < n:
        c = buf[i : i + 1]
        if c.isspace():
            i += 1
        elif c == b"#":
            end = buf.find(b"\n", i)
            i = n if end < 0 else end + 1
        else:
            j = i
            while j < n and buf[j : j + 1].isdigit():
                j += 1
            if j == i:
                raise DecodeError("corrupt PNM: bad header")
            tokens.append(int(buf[i:j]))
            i = j
    if len(tokens) < 2:
        raise DecodeError("truncated PNM: the header is cut short")
    return _Header("pnm", tokens[0], tokens[1])


_TIFF_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8


def _tiff_header(buf: bytes) -> _Header:
    """ImageWidth (256) and ImageLength (257) of the first image file directory."""
    order = "<" if buf[:2] == b"II" else ">"
    big = buf[2:4] in (b"+\x00", b"\x00+")
    try:
        if big:
            (offset,) = struct.unpack(order + "Q", buf[8:16])
            (count,) = struct.unpack(order + "Q", buf[offset : offset + 8])
            entry, start, value_at = 20, offset + 8, 12
        else:
            (offset,) = struct.unpack(order + "I", buf[4:8])
            (count,) = struct.unpack(order + "H", buf[offset : offset + 2])
            entry, start, value_at = 12, offset + 2, 8
    except struct.error:
        raise DecodeError("truncated TIFF: no image file directory") from None
    found = {}
    for k in range(min(count, 4096)):
        at = start + k * entry
        if at + entry > len(buf):
            raise DecodeError("truncated TIFF: the image file directory is cut short")
        tag, kind = struct.unpack(order + "HH", buf[at : at + 4])
        code = _TIFF_TYPES.get(kind)
        if tag in (256, 257) and code is not None and struct.calcsize(code) <= entry - value_at:
            (found[tag],) = struct.unpack(order + code, buf[at + value_at : at + value_at + struct.calcsize(code)])
        if len(found) == 2:
            return _Header("tiff", found[256], found[257])
    raise DecodeError("corrupt TIFF: no image width and height")


def _check_complete(header: _Header, buf: bytes) -> None:
    """Refuse JPEG and PNG files cut short; cheap (the JPEG tail, the PNG chunk lengths)."""
    if header.format == "jpeg":
        # Inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so an
        # FFD9 after the first scan is the end-of-image marker (thumbnails sit before the scan).
        if buf.rfind(b"\xff\xd9", header.scan) < 0:
            raise DecodeError("truncated JPEG: no end-of-image marker")
    elif header.format == "png":
        _check_png_chunks(buf)


def _check_png_chunks(buf: bytes) -> None:
    """Walk the PNG chunks to ``IEND``: each must fit in the file.

    Besides truncation, this catches a corrupt chunk length (a 100-byte file claiming a 3 GB
    chunk makes OpenCV's reader allocate that much before it fails).
    """
    i, n = 8, len(buf)
    while i + 8 <= n:
        length = int.from_bytes(buf[i : i + 4], "big")
        kind = buf[i + 4 : i + 8]
        if length > 0x7FFFFFFF or not kind.isalpha():
            raise DecodeError(f"corrupt PNG: bad chunk {kind!r} of length {length} at byte {i}")
        end = i + 12 + length
        if end > n:
            raise DecodeError(f"truncated PNG: chunk {kind.decode('ascii')} ends past the end of the file")
        if kind == b"IEND":
            return
        i = end
    raise DecodeError("truncated PNG: no IEND chunk")


# -- decoding ---------------------------------------------------------------------------------


def reduction_factor(width: int, height: int, target_hw: tuple[int, int]) -> int:
    """Largest JPEG decode reduction (1, 2, 4 or 8) that keeps both sides at or above the target."""
    th, tw = target_hw
    for factor in (8, 4, 2):
        if width // factor >= tw and height // factor >= th:
            return factor
    return 1


def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        h = w = 0
    if h < 1 or w < 1:
        raise ValueError(f"`size` must be None or (height, width) with positive sides. Received: size={size!r}")
    return h, w


def decode_image(
    data: bytes | np.ndarray,
    size: tuple[int, int] | None,
    interpolation: str = "bilinear",
    exif: bool = False,
    reduced: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Decode an encoded image to uint8 RGB, resized to ``size`` = (height, width).

    Args:
        data: the file's bytes (``bytes``, ``bytearray``, ``memoryview`` or a uint8 array).
        size: (height, width) to resize to, or ``None`` to keep the decoded size.
        interpolation: one of ``INTERPOLATIONS``; ``nearest`` reproduces Keras/PIL exactly.
        exif: apply the EXIF orientation (Keras does not).
        reduced: allow the decoder's DCT downscaling for large JPEGs (never with ``nearest``).
        max_pixels: refuse images declaring more pixels than this (``None``: no limit of ours;
            OpenCV still refuses more than 2**30).
        out: a C-contiguous uint8 (height, width, 3) array to write the result into (for example
            one slot of a batch buffer: no per-image allocation or copy); needs ``size``.

    Returns:
        A C-contiguous uint8 array of shape (height, width, 3), RGB (``out`` when given).

    Raises:
        DecodeError: empty, unrecognised, truncated, corrupt or oversized data.
        ValueError: an invalid argument (``size``, ``interpolation``, ``max_pixels``).
    """
    flag = check_interpolation(interpolation)
    size = _check_size(size)
    if out is not None and (
        size is None or out.shape != (*size, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous
    ):
        raise ValueError(
            f"`out` must be a C-contiguous uint8 array of shape {None if size is None else (*size, 3)} "
            f"(and `size` must be given). Received: out.shape={out.shape}, out.dtype={out.dtype}"
        )
    if max_pixels is not None and (not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1):
        raise ValueError(f"`max_pixels` must be a positive int or None. Received: max_pixels={max_pixels!r}")
    raw = _as_bytes(data)
    if not raw:
        raise DecodeError("empty file (0 bytes)")
    header = _probe(raw)
    if header is None:
        raise DecodeError(f"not an image: unrecognised format (starts with {raw[:8]!r})")
    width, height = header.width, header.height
    if width < 1 or height < 1:
        raise DecodeError(f"corrupt {header.format.upper()} header: size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise DecodeError(
            f"image too large: {width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels} "
            "(decompression-bomb guard)"
        )
    _check_complete(header, raw)

    mode = _RGB | (0 if exif else cv2.IMREAD_IGNORE_ORIENTATION)
    if reduced and size is not None and interpolation != "nearest" and header.format == "jpeg":
        factor = reduction_factor(width, height, size)
        if exif:  # the orientation may swap the sides: reduce only as far as both ways allow
            factor = min(factor, reduction_factor(height, width, size))
        mode |= _REDUCED[factor]
    buf = np.frombuffer(raw, dtype=np.uint8)
    image = _imdecode(buf, mode)
    if image is None and header.format == "tiff":  # float / 32-bit TIFFs need ANYDEPTH
        image = _imdecode(buf, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR | (mode & cv2.IMREAD_IGNORE_ORIENTATION))
        if image is not None and image.ndim == 3 and image.shape[2] >= 3:
            image = image[..., 2::-1]  # BGR(A) -> RGB
    if image is None or image.size == 0:
        raise DecodeError(f"cannot decode: corrupt or unsupported {header.format.upper()} data")
    try:
        image = _to_rgb8(image)
        if size is not None and image.shape[:2] != size:
            if out is not None:
                resized = cv2.resize(image, (size[1], size[0]), dst=out, interpolation=flag)
                if not np.may_share_memory(resized, out):  # OpenCV allocated anyway: copy in
                    out[...] = resized
                return out
            image = cv2.resize(image, (size[1], size[0]), interpolation=flag)
    except cv2.error as e:
        raise DecodeError(f"cannot convert or resize the {header.format.upper()} image: {_cv_message(e)}") from None
    if out is not None:
        out[...] = image
        return out
    return np.ascontiguousarray(image)


def _imdecode(buf: np.ndarray, mode: int) -> np.ndarray | None:
    try:
        return cv2.imdecode(buf, mode)
    except cv2.error as e:
        raise DecodeError(f"decoder error: {_cv_message(e)}") from None


def _cv_message(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


def _to_rgb8(image: np.ndarray) -> np.ndarray:
    """Any decoded array (gray, gray+alpha, RGB, RGBA; 8/16-bit, int, float) to uint8 RGB."""
    if image.dtype != np.uint8:
        image = _to_uint8(image)
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels in (1, 2):  # gray, gray+alpha: alpha dropped
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if channels >= 4:  # alpha (or extra bands) dropped, as PIL's convert("RGB")
        return np.ascontiguousarray(image[:, :, :3])
    return image


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)  # scale, don't clip (see the module docstring)
    if np.issubdtype(image.dtype, np.floating):  # PIL's "F" -> "RGB": values clipped to 0..255
        return np.clip(np.nan_to_num(image, nan=0.0), 0, 255).round().astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8)


# -- files ------------------------------------------------------------------------------------


def read_file(path: str | bytes | os.PathLike) -> bytes:
    """A regular file's bytes; any OS error (or a FIFO, device, directory) as a :class:`DecodeError`."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise DecodeError(f"cannot read file: {e.strerror or e}", os.fsdecode(path)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DecodeError("cannot read file: not a regular file", os.fsdecode(path))
        # one read of the size fstat gives (no buffered file object: measurably cheaper per image);
        # a short read (the file shrank) or an unknown size reads on to the end
        data = os.read(fd, info.st_size) if info.st_size > 0 else b""
        if len(data) < info.st_size or info.st_size == 0:
            parts = [data]
            while more := os.read(fd, 1 << 20):
                parts.append(more)
            data = b"".join(parts)
        return data
    except OSError as e:
        raise DecodeError(f"cannot read file: {e.strerror or e}", os.fsdecode(path)) from None
    finally:
        if fd >= 0:
            os.close(fd)


def load_image(path: str | bytes | os.PathLike, size: tuple[int, int] | None, **kwargs) -> np.ndarray:
    """Read and decode one file; see :func:`decode_image` for the arguments.

    Raises:
        DecodeError: with ``path`` set to the file.
    """
    try:
        return decode_image(read_file(path), size, **kwargs)
    except DecodeError as e:
        e.path = os.fsdecode(path)
        raise
