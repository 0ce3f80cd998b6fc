"""Bytes to uint8 RGB at the target size: OpenCV first, Pillow for what OpenCV cannot read.

Every call either returns a C-contiguous uint8 array of shape (height, width, 3) or raises
:class:`DecodeError` with a short reason; nothing else escapes. OpenCV releases the GIL while it
decodes and resizes, so many of these run at once on worker threads.

Before any pixel is decoded, :mod:`fastfeat.headers` parses the header (JPEG, PNG, GIF, BMP,
WebP, PNM, TIFF; a file whose format is not recognised from its first bytes is refused, whatever
its extension): images declaring more than ``max_pixels`` pixels are refused (decompression-bomb
guard), and truncated JPEGs and PNGs are refused (Keras/PIL refuse them too; OpenCV 4.x would
fill the missing part with grey).

Decoders, in order:

1. OpenCV, for every file. Ordinary JPEG/PNG never go further.
2. Pillow (:mod:`fastfeat.decode_pillow`), when OpenCV returns nothing or raises: 2- and 4-bit
   gray, LZMA, old-style-JPEG and float TIFFs, GIFs without a global palette, some APNG and RLE
   BMP variants. Its pixels go through the same conversion and the same OpenCV resize below, so
   the only difference is who decoded. A file neither can decode fails with both messages:
   ``cannot decode TIFF: OpenCV: <its message>; Pillow: <its message>``.

Decoders stay quiet (:mod:`fastfeat.quiet`): OpenCV's logger is silent during our calls; files
whose header shows a quirk that libpng/libjpeg complain about, the Pillow fallback and the
collection of OpenCV's message for a failure run with stderr (fd 2) captured, so nothing reaches
the terminal and the first useful line goes into the failure reason.

Conversions, as PIL's ``convert("RGB")`` (what Keras does) where they agree, for both decoders:

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
changes pixels, so it is never used with ``nearest`` (the Keras-parity mode).

Importing this module imports neither OpenCV nor Pillow nor TensorFlow (OpenCV is imported by the
first decode), so ``DecodeError`` and the option tables are cheap to import.
"""

from __future__ import annotations

import os
import re
import stat

import numpy as np

from .decode_pillow import decode_with_pillow
from .headers import DecodeError, Header, as_bytes, check_complete, parse_header, read_header
from .quiet import captured_stderr, decode_gate, opencv_quiet

__all__ = [
    "DEFAULT_MAX_PIXELS", "INTERPOLATIONS", "DecodeError", "check_interpolation", "decode_image", "load_image",
    "read_file", "read_header", "reduction_factor",
]  # fmt: skip

#: Interpolation names and their OpenCV ``cv2.INTER_*`` values (numbers, so that importing this
#: module does not import OpenCV; a test checks them against cv2).
INTERPOLATIONS = {
    "nearest": 6,  # INTER_NEAREST_EXACT: bit-exact with PIL's NEAREST (Keras' default)
    "bilinear": 1,  # INTER_LINEAR
    "area": 3,  # INTER_AREA
    "bicubic": 2,  # INTER_CUBIC
    "lanczos": 4,  # INTER_LANCZOS4
}

#: Images declaring more pixels than this are refused (decompression-bomb guard).
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's limit (2 x MAX_IMAGE_PIXELS)

_RGB = 256  # IMREAD_COLOR_RGB: decode straight to RGB, no BGR round trip
_IGNORE_ORIENTATION = 128  # IMREAD_IGNORE_ORIENTATION
_ANY = 2 | 4  # IMREAD_ANYDEPTH | IMREAD_ANYCOLOR: float / 32-bit TIFFs
_REDUCED = {1: 0, 2: 16, 4: 32, 8: 64}  # the IMREAD_REDUCED_* scale bits, combined with _RGB
_MESSAGE_CHARS = 200  # of each decoder's message kept in a failure reason
_OPENCV_PREFIX = re.compile(r"^\[ ?[A-Z]+:\d+@[\d.]+\] global \S+ \S+ ")  # [ERROR:0@0.01] global x.cpp:1 f
_OPENCV_ERROR = re.compile(r"^-?\d+:[^)]*\) | in function '[^']*'$")  # (-215:Assertion failed) ... in function 'f'


def check_interpolation(interpolation: str) -> int:
    """The OpenCV flag for an interpolation name; ``ValueError`` listing the names otherwise."""
    try:
        return INTERPOLATIONS[interpolation]
    except (KeyError, TypeError):
        raise ValueError(
            f"`interpolation` must be one of {', '.join(INTERPOLATIONS)}. Received: interpolation={interpolation!r}"
        ) from None


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
    raw = as_bytes(data)
    if not raw:
        raise DecodeError("empty file (0 bytes)")
    header = parse_header(raw)
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
    quirk = check_complete(header, raw)

    mode = _RGB | (0 if exif else _IGNORE_ORIENTATION)
    if reduced and size is not None and interpolation != "nearest" and header.format == "jpeg":
        factor = reduction_factor(width, height, size)
        if exif:  # the orientation may swap the sides: reduce only as far as both ways allow
            factor = min(factor, reduction_factor(height, width, size))
        mode |= _REDUCED[factor]
    buf = np.frombuffer(raw, dtype=np.uint8)
    with opencv_quiet():
        if quirk is None:
            image, _ = _opencv(buf, mode, header)
        else:  # libpng / libjpeg will complain on stderr: keep it off the terminal
            with captured_stderr():
                image, _ = _opencv(buf, mode, header)
        if image is None:
            image = _fallback(raw, buf, mode, header, exif, max_pixels)

    import cv2

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


def _opencv(buf: np.ndarray, mode: int, header: Header) -> tuple[np.ndarray | None, str | None]:
    """OpenCV's decode: (image, None), or (None, its exception's message or None)."""
    image, error = _imdecode(buf, mode)
    if image is None and header.format == "tiff":  # float / 32-bit TIFFs need ANYDEPTH
        image, error = _imdecode(buf, _ANY | (mode & _IGNORE_ORIENTATION))
        if image is not None and image.ndim == 3 and image.shape[2] >= 3:
            image = image[..., 2::-1]  # BGR(A) -> RGB
    if image is not None and image.size == 0:
        image = None
    return image, error


def _fallback(raw: bytes, buf: np.ndarray, mode: int, header: Header, exif: bool, max_pixels: int | None):
    """Pillow's decode of a file OpenCV could not read; both decoders' messages if it fails too."""
    with captured_stderr() as pillow_said:
        try:
            return decode_with_pillow(raw, header, exif, max_pixels)
        except DecodeError as e:
            if not e.reason.startswith("Pillow:"):  # refused before decoding (bomb guard)
                raise
            pillow = e.reason
    with captured_stderr(opencv_warnings=True) as opencv_said:  # again, to hear what OpenCV says
        _, error = _opencv(buf, mode, header)
    opencv = _decoder_message(opencv_said) or error or "unsupported or corrupt data"
    if pillow_said:
        pillow = f"{pillow} ({_decoder_message(pillow_said)})"
    raise DecodeError(f"cannot decode {header.format.upper()}: OpenCV: {_clip(opencv)}; {_clip(pillow)}")


def _decoder_message(lines: list[str]) -> str | None:
    """The decoder's own words about a failure: its last error line before OpenCV's summary
    (libtiff and libpng say what broke; OpenCV only that reading failed), else that summary,
    else the first line; without OpenCV's log prefix and source locations."""
    lines = [line for line in lines if not line.startswith("in function")]  # the tail of a wrapped line
    errors = [line for line in lines if line.startswith("[ERROR") or "error" in line.lower()]
    own = [line for line in errors if "imdecode_(" not in line]
    chosen = own[-1] if own else errors[-1] if errors else lines[0] if lines else None
    if chosen is None:
        return None
    text = _OPENCV_PREFIX.sub("", chosen)
    if " error: (" in text:  # OpenCV(5.0.0) /io/.../x.cpp:109: error: (-215:Assertion failed) MSG in function 'f'
        text = _OPENCV_ERROR.sub("", text.split(" error: (", 1)[1])
    return text.strip() or None


def _clip(text: str) -> str:
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 3] + "..."


def _imdecode(buf: np.ndarray, mode: int) -> tuple[np.ndarray | None, str | None]:
    import cv2

    try:
        with decode_gate.shared():  # never inside another thread's logging window (quiet.decode_gate)
            return cv2.imdecode(buf, mode), None
    except cv2.error as e:
        return None, _cv_message(e)


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
        import cv2

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
