"""Byte-level image headers: format, declared size, truncation, for untrusted bytes.

Everything here reads a file's first bytes (or walks its segments and chunks) in plain Python,
before any decoder sees the data, so that :mod:`fastfeat.decode` can refuse a file cheaply:

* an unrecognised format (whatever the extension), a malformed header (:class:`DecodeError`);
* a decompression bomb: the declared width x height is known before any pixel is decoded;
* a JPEG without an end-of-image marker after its scan data, a PNG whose chunks do not reach
  ``IEND`` within the file (truncated), or a PNG chunk length past the end of the file (OpenCV 5
  allocates whatever a corrupt length claims: 3 GB for a 122-byte file).

It also notes *quirks*: damage that decoders survive but complain about on stderr (bytes
between JPEG segments, a PNG ancillary chunk with a bad CRC, a bad ``iCCP`` profile, an
out-of-range ``tRNS``), so that the decoder runs with its stderr captured for that file only.

No decoder, no OpenCV, no TensorFlow: importing this module costs NumPy only.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np


class DecodeError(Exception):
    """An image could not be read; ``reason`` says why in a few words, ``path`` which file."""

    def __init__(self, reason: str, path: str | None = None):
        self.reason = reason
        self.path = path
        super().__init__(reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


@dataclass(frozen=True)
class Header:
    """What the first bytes of an image declare.

    Attributes:
        format: ``jpeg``, ``png``, ``gif``, ``bmp``, ``webp``, ``pnm`` or ``tiff``.
        width, height: the declared size in pixels (for GIF, grown to the first frame's extent).
        scan: JPEG only: the byte offset of the first start-of-scan marker (-1 otherwise).
        quirk: damage a decoder survives but reports on stderr (``None`` for a clean header).
    """

    format: str
    width: int
    height: int
    scan: int = -1
    quirk: str | None = None


def read_header(data: bytes | np.ndarray) -> tuple[str, int, int] | None:
    """``(format, width, height)`` from an image's header, or ``None`` if not recognised.

    Understands JPEG, PNG, GIF, BMP, WebP, PNM (P1-P6) and TIFF (classic and BigTIFF); cheap (no
    pixel is decoded). For GIF the extent of the first frame counts too, for TIFF the first image.
    Returns ``None`` as well for a recognised format whose header is cut short or malformed.
    """
    try:
        header = parse_header(as_bytes(data))
    except DecodeError:
        return None
    return None if header is None else (header.format, header.width, header.height)


def as_bytes(data: bytes | bytearray | memoryview | np.ndarray) -> bytes:
    """The bytes of a bytes-like object or a uint8 array (no copy for ``bytes``)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, np.ndarray):
        return data.tobytes()
    return bytes(data)


def parse_header(buf: bytes) -> Header | None:
    """The :class:`Header` of a recognised format; ``None`` if unrecognised.

    Raises:
        DecodeError: a recognised format whose header is cut short or malformed.
    """
    if buf[:8] == b"\x89PNG\r\n\x1a\n":
        if len(buf) < 24:
            raise DecodeError("truncated PNG: the header is cut short")
        if buf[12:16] != b"IHDR":
            raise DecodeError("corrupt PNG: no IHDR chunk first")
        w, h = struct.unpack(">II", buf[16:24])
        return Header("png", w, h)
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


def _jpeg_header(buf: bytes) -> Header:
    """Walk JPEG markers to the frame header (size) and the first scan (where the data starts)."""
    i, n = 2, len(buf)
    size = None
    stray = 0
    while i + 4 <= n:
        if buf[i] != 0xFF:  # stray bytes between segments: libjpeg skips them too (and says so)
            j = buf.find(b"\xff", i)
            if j < 0:
                break
            stray, i = stray + j - i, j
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
            quirk = f"{stray} stray bytes between JPEG segments" if stray else None
            return Header("jpeg", size[0], size[1], scan=i, quirk=quirk)
        i += 2 + length
    raise DecodeError("truncated JPEG: the header ends before the image data")


def _gif_header(buf: bytes) -> Header:
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
            return Header("gif", max(w, left + fw), max(h, top + fh))
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


def _bmp_header(buf: bytes) -> Header:
    (info_size,) = struct.unpack("<I", buf[14:18])
    if info_size == 12 and len(buf) >= 22:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        w, h = struct.unpack("<HH", buf[18:22])
        return Header("bmp", w, h)
    if info_size >= 40 and len(buf) >= 26:
        w, h = struct.unpack("<ii", buf[18:26])
        return Header("bmp", abs(w), abs(h))
    raise DecodeError("truncated or corrupt BMP: bad header")


def _webp_header(buf: bytes) -> Header:
    chunk = buf[12:16]
    if chunk == b"VP8 " and len(buf) >= 30:
        if buf[23:26] != b"\x9d\x01\x2a":
            raise DecodeError("corrupt WebP: bad VP8 start code")
        w, h = struct.unpack("<HH", buf[26:30])
        return Header("webp", w & 0x3FFF, h & 0x3FFF)
    if chunk == b"VP8L" and len(buf) >= 25:
        b = buf[21:25]
        w = 1 + (((b[1] & 0x3F) << 8) | b[0])
        h = 1 + (((b[3] & 0xF) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
        return Header("webp", w, h)
    if chunk == b"VP8X" and len(buf) >= 30:
        w = 1 + int.from_bytes(buf[24:27], "little")
        h = 1 + int.from_bytes(buf[27:30], "little")
        return Header("webp", w, h)
    raise DecodeError("truncated or corrupt WebP: bad header")


def _pnm_header(buf: bytes) -> Header:
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
    return Header("pnm", tokens[0], tokens[1])


_TIFF_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8


def _tiff_header(buf: bytes) -> Header:
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
            return Header("tiff", found[256], found[257])
    raise DecodeError("corrupt TIFF: no image width and height")


def check_complete(header: Header, buf: bytes) -> str | None:
    """Refuse JPEG and PNG files cut short; cheap (the JPEG tail, the PNG chunk lengths).

    Returns:
        The file's quirk (see :class:`Header`), ``None`` for a clean file.

    Raises:
        DecodeError: a truncated JPEG or PNG, or a PNG chunk that does not fit in the file.
    """
    if header.format == "jpeg":
        # Inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so an
        # FFD9 after the first scan is the end-of-image marker (thumbnails sit before the scan).
        if buf.rfind(b"\xff\xd9", header.scan) < 0:
            raise DecodeError("truncated JPEG: no end-of-image marker")
    elif header.format == "png":
        return _check_png_chunks(buf)
    return header.quirk


_PNG_DATA = (b"IDAT", b"fdAT")  # image data: not CRC-checked here (the decoder reads it anyway)


def _check_png_chunks(buf: bytes) -> str | None:
    """Walk the PNG chunks to ``IEND``: each must fit in the file; returns the first quirk.

    Besides truncation, this catches a corrupt chunk length (a 100-byte file claiming a 3 GB
    chunk makes OpenCV's reader allocate that much before it fails). Ancillary chunks are small:
    their CRCs, the ``iCCP`` profile and the ``tRNS`` samples are checked for quirks.
    """
    i, n = 8, len(buf)
    depth, colour = buf[24:26] if n >= 26 else (8, 0)  # IHDR's bit depth and colour type
    quirk = None
    while i + 8 <= n:
        length = int.from_bytes(buf[i : i + 4], "big")
        kind = buf[i + 4 : i + 8]
        if length > 0x7FFFFFFF or not kind.isalpha():
            raise DecodeError(f"corrupt PNG: bad chunk {kind!r} of length {length} at byte {i}")
        end = i + 12 + length
        if end > n:
            raise DecodeError(f"truncated PNG: chunk {kind.decode('ascii')} ends past the end of the file")
        if kind == b"IEND":
            return quirk
        if quirk is None and kind not in _PNG_DATA:
            payload = buf[i + 8 : end - 4]
            if zlib.crc32(kind + payload) != int.from_bytes(buf[end - 4 : end], "big"):
                quirk = f"PNG chunk {kind.decode('ascii')}: CRC error"
            elif kind == b"iCCP":
                quirk = _iccp_quirk(payload)
            elif kind == b"tRNS":
                quirk = _trns_quirk(payload, depth, colour)
            elif kind == b"acTL":  # libpng's APNG reader errors out loud on odd frame sequences
                quirk = "animated PNG"
        i = end
    raise DecodeError("truncated PNG: no IEND chunk")


def _iccp_quirk(payload: bytes) -> str | None:
    name_end = payload.find(b"\x00", 0, 80)
    data = payload[name_end + 2 :] if name_end > 0 else b""
    if name_end <= 0 or payload[name_end + 1 : name_end + 2] != b"\x00" or len(data) < 2:
        return "PNG iCCP: bad name or compression method"
    if data[0] & 0x0F != 8 or data[0] >> 4 > 7:
        return "PNG iCCP: bad zlib header"
    inflate = zlib.decompressobj()
    try:
        profile = inflate.decompress(data, 1 << 22)  # bounded: a profile is a few KB
    except zlib.error:
        return "PNG iCCP: corrupt compressed profile"
    if not inflate.eof or len(profile) < 132 or int.from_bytes(profile[:4], "big") != len(profile):
        return "PNG iCCP: bad profile"
    return None


def _trns_quirk(payload: bytes, depth: int, colour: int) -> str | None:
    if colour in (4, 6):
        return "PNG tRNS: not allowed with an alpha channel"
    if colour in (0, 2):
        samples = struct.unpack(f">{len(payload) // 2}H", payload[: len(payload) // 2 * 2])
        if len(payload) != (2 if colour == 0 else 6) or any(s >> depth for s in samples):
            return "PNG tRNS: out-of-range samples"
    elif colour == 3 and len(payload) > 256:
        return "PNG tRNS: too long"
    return None
