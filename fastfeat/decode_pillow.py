"""The Pillow fallback: decode what OpenCV cannot, to an array that :mod:`fastfeat.decode` finishes.

OpenCV decodes ordinary JPEG/PNG/WebP faster and releases the GIL, so it stays the first decoder;
this module runs only for files it refuses (2- and 4-bit gray, LZMA, old-style-JPEG and float
TIFFs, GIFs without a global palette, some APNG and RLE BMP variants, ...). It returns the decoded
pixels *before* any conversion to 8-bit RGB or resizing, in RGB channel order, so that one
function (``decode._to_rgb8``) and one OpenCV resize give both decoders' output the same rules:
palette -> palette colours, alpha dropped, 16-bit scaled by ``v >> 8``, float clipped to 0..255.

Safety: only the plugin of the format recognised from the header may open the file (no other
Pillow parser ever sees it), and the size Pillow reads is checked against ``max_pixels`` before
any pixel is decoded (the caller checked the declared size already). Pillow's own bomb check
(``PIL.Image.MAX_IMAGE_PIXELS``) is left as the user set it: an image above it is refused with
Pillow's message, and its warning between 1x and 2x the limit is silenced for our call only.

Python warnings raised by Pillow meanwhile (corrupt EXIF, TIFF metadata, palette transparency)
are recorded, not shown; :func:`decode_with_pillow` runs inside ``quiet.captured_stderr``, which
serializes callers, so the (process-wide) ``warnings`` filters change for one call at a time.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np

from .headers import DecodeError, Header

#: Pillow's plugin for each format :mod:`fastfeat.headers` recognises.
PILLOW_FORMATS = {
    "jpeg": ("JPEG",),
    "png": ("PNG",),
    "gif": ("GIF",),
    "bmp": ("BMP",),
    "webp": ("WEBP",),
    "pnm": ("PPM",),
    "tiff": ("TIFF",),
}

_AS_ARRAY = {"L", "RGB", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"}  # already what _to_rgb8 takes
_DROP_ALPHA = {"LA": 1, "La": 1, "RGBA": 3, "RGBa": 3, "RGBX": 3}  # channels kept


def decode_with_pillow(data: bytes, header: Header, exif: bool, max_pixels: int | None) -> np.ndarray:
    """Decode ``data`` (first frame) with Pillow: gray (h, w) or RGB (h, w, 3) in 8/16 bits, int32 or float32.

    Args:
        data: the whole file.
        header: its parsed header (the format picks the only Pillow plugin allowed to open it).
        exif: apply the EXIF orientation (``ImageOps.exif_transpose``).
        max_pixels: refuse an image Pillow sees as larger than this (``None``: no limit of ours).

    Raises:
        DecodeError: ``Pillow: <its message>`` when Pillow cannot decode the file either.
    """
    from PIL import Image, ImageOps

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")  # recorded (and dropped), never shown nor raised
        try:
            with Image.open(io.BytesIO(data), formats=PILLOW_FORMATS[header.format]) as im:
                width, height = im.size
                if max_pixels is not None and width * height > max_pixels:
                    raise DecodeError(
                        f"image too large: {width}x{height} = {width * height} pixels exceeds "
                        f"max_pixels={max_pixels} (decompression-bomb guard)"
                    )
                im.load()
                if exif:
                    im = ImageOps.exif_transpose(im)
                return _to_array(im)
        except DecodeError:
            raise
        except Image.DecompressionBombError as e:
            raise DecodeError(f"Pillow: {e} (PIL.Image.MAX_IMAGE_PIXELS)") from None
        except Exception as e:  # noqa: BLE001 -- whatever a plugin raises on a hostile file fails that file only
            raise DecodeError(f"Pillow: {_message(e)}") from None


def _to_array(im) -> np.ndarray:
    """A loaded image as the arrays the OpenCV path produces (RGB order, native byte order)."""
    mode = im.mode
    if mode == "1":
        im, mode = im.convert("L"), "L"
    elif mode not in _AS_ARRAY and mode not in _DROP_ALPHA:
        # palette (colours of the entries, transparency ignored), CMYK, YCbCr, LAB, HSV, PA, ...
        im.info.pop("transparency", None)  # else Pillow warns and convert("RGB") is unchanged
        im, mode = im.convert("RGB"), "RGB"
    array = np.asarray(im)
    if mode in _DROP_ALPHA:
        array = array[..., : _DROP_ALPHA[mode]]
        array = array[..., 0] if array.shape[-1] == 1 else array
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array)


def _message(error: BaseException) -> str:
    """The first line of an exception's text, without object addresses; its type if not an OSError."""
    text = _OBJECT.sub("", str(error)).strip()
    text = text.splitlines()[0] if text else ""
    if isinstance(error, OSError) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


_OBJECT = re.compile(r" ?<[\w.]+ object at 0x[0-9a-f]+>")
