"""Decoding: formats, colour conversions, resizing, EXIF, headers and the decompression-bomb guard."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _images import (
    animated,
    encode,
    exif_jpeg,
    flat_rgb,
    jpeg_with_size,
    pil_rgb,
    png_bomb,
    sixteen_bit,
    smooth_rgb,
    tiff_with_size,
    write,
)
from PIL import Image, ImageOps

from fastfeat.decode import (
    DEFAULT_MAX_PIXELS,
    INTERPOLATIONS,
    DecodeError,
    check_interpolation,
    decode_image,
    load_image,
    read_file,
    read_header,
    reduction_factor,
)


def _assert_rgb8(image, shape):
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8
    assert image.shape == shape and image.flags.c_contiguous


# -- formats and conversions -------------------------------------------------------------------

RGB = smooth_rgb(37, 53, 0)
FORMATS = {
    "jpeg": lambda: encode(RGB, "JPEG", quality=90),
    "jpeg-progressive": lambda: encode(RGB, "JPEG", progressive=True),
    "png": lambda: encode(RGB, "PNG"),
    "bmp": lambda: encode(RGB, "BMP"),
    "ppm": lambda: encode(RGB, "PPM"),
    "pgm": lambda: encode(RGB[..., 0], "PPM"),
    "tiff": lambda: encode(RGB, "TIFF"),
    "tiff-lzw": lambda: encode(RGB, "TIFF", compression="tiff_lzw"),
    "webp-lossless": lambda: encode(RGB, "WEBP", lossless=True),
    "webp-lossy": lambda: encode(RGB, "WEBP", quality=80),
    "gif": lambda: encode(Image.fromarray(RGB).quantize(64), "GIF"),
    "gray-jpeg": lambda: encode(RGB[..., 1], "JPEG"),
    "gray-png": lambda: encode(RGB[..., 2], "PNG"),
    "rgba-png": lambda: encode(np.dstack([RGB, RGB[..., 0]]), "PNG"),
    "gray-alpha-png": lambda: encode(Image.fromarray(RGB[..., :2], "LA"), "PNG"),
    "palette-png": lambda: encode(Image.fromarray(RGB).quantize(16), "PNG"),
    "palette-transparency-png": lambda: encode(Image.fromarray(RGB).quantize(16), "PNG", transparency=2),
    "rgba-webp": lambda: encode(np.dstack([RGB, RGB[..., 0]]), "WEBP", lossless=True),
    "rgb16-png": lambda: sixteen_bit(RGB.astype(np.uint16) * 257, "PNG"),
    "bilevel-png": lambda: encode(Image.fromarray(RGB[..., 0]).convert("1"), "PNG"),
    "bilevel-bmp": lambda: encode(Image.fromarray(RGB[..., 0]).convert("1"), "BMP"),
    "bilevel-tiff": lambda: encode(Image.fromarray(RGB[..., 0]).convert("1"), "TIFF"),
    "palette-bmp": lambda: encode(Image.fromarray(RGB).quantize(16), "BMP"),
    "gray-tiff": lambda: encode(RGB[..., 0], "TIFF"),
    "cmyk-tiff": lambda: encode(Image.fromarray(RGB).convert("CMYK"), "TIFF"),
    "jpeg-in-tiff": lambda: encode(RGB, "TIFF", compression="jpeg"),
    "deflate-tiff": lambda: encode(RGB, "TIFF", compression="tiff_adobe_deflate"),
    "packbits-tiff": lambda: encode(RGB, "TIFF", compression="packbits"),
    "gray-webp": lambda: encode(RGB[..., 0], "WEBP", lossless=True),
    "ascii-pgm": lambda: b"P2\n3 2\n255\n0 10 20\n30 40 255\n",
    "ascii-pbm": lambda: b"P1\n3 2\n0 1 0\n1 0 1\n",
}


@pytest.mark.filterwarnings("ignore:Palette images with Transparency:UserWarning")
@pytest.mark.parametrize("kind", list(FORMATS))
def test_decode_equals_pil_convert_rgb(kind):
    """Every format and mode comes out as PIL's convert("RGB") (what Keras' load_img does)."""
    data = FORMATS[kind]()
    image = decode_image(data, None)
    expected = pil_rgb(data)
    _assert_rgb8(image, expected.shape)
    np.testing.assert_array_equal(image, expected)


def test_cmyk_jpeg_within_one_of_pil():
    data = encode(Image.fromarray(RGB).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    image = decode_image(data, None)
    _assert_rgb8(image, (37, 53, 3))
    assert np.abs(image.astype(int) - pil_rgb(data)).max() <= 1


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_is_scaled_not_clipped(fmt, channels):
    """16-bit -> 8-bit keeps the high byte (v >> 8). PIL clips 16-bit grayscale to 255 instead."""
    rng = np.random.default_rng(3)
    shape = (9, 11) if channels == 1 else (9, 11, 3)
    image16 = rng.integers(0, 65536, shape, dtype=np.uint16)
    image16.flat[:2] = [0, 65535]
    image = decode_image(sixteen_bit(image16, fmt), None)
    _assert_rgb8(image, (9, 11, 3))
    expected = (image16 >> 8).astype(np.uint8)
    expected = np.repeat(expected[..., None], 3, axis=2) if channels == 1 else expected
    assert np.abs(image.astype(int) - expected).max() <= 1  # libtiff rounds, libpng truncates
    assert image.min() == 0 and image.max() >= 254 and len(np.unique(image)) > 50


def test_known_differences_from_pil_are_as_documented():
    """Where fastfeat (OpenCV) and Keras (PIL) knowingly differ; see the decode module's docstring."""
    # 16-bit grayscale PNM/PNG: scaled to 8 bits here, clipped to 255 by PIL
    pgm16 = b"P5\n53 37\n65535\n" + (RGB[..., 0].astype(">u2") * 257).tobytes()
    np.testing.assert_array_equal(decode_image(pgm16, None)[..., 0], RGB[..., 0])
    assert (pil_rgb(pgm16) == 255).mean() > 0.9
    # RGBA TIFF: libtiff (inside OpenCV) premultiplies the colour by alpha; PIL drops alpha
    alpha = RGB[..., 0]
    image = decode_image(encode(np.dstack([RGB, alpha]), "TIFF"), None)
    premultiplied = (RGB.astype(np.int64) * alpha[..., None] + 127) // 255
    assert np.abs(image.astype(np.int64) - premultiplied).max() <= 1
    # transparent GIF pixels: a colour of OpenCV's choosing (PIL: the transparent palette entry)
    gif = encode(Image.fromarray(RGB).quantize(16), "GIF", transparency=3)
    opaque = np.asarray(Image.open(io.BytesIO(gif))) != 3
    np.testing.assert_array_equal(decode_image(gif, None)[opaque], pil_rgb(gif)[opaque])


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_images_give_their_first_frame(fmt):
    frames = [flat_rgb(12, 10, k) for k in (5, 80, 160)]
    data = animated(frames, fmt)
    with Image.open(io.BytesIO(data)) as im:
        assert getattr(im, "n_frames", 1) == 3
    image = decode_image(data, None)
    _assert_rgb8(image, (12, 10, 3))
    np.testing.assert_array_equal(image, frames[0])


def test_float_tiff_is_clipped_like_pil():
    import cv2

    values = np.array([[-5.0, 0.4, 100.6, 300.0]], np.float32)
    ok, buf = cv2.imencode(".tiff", values)
    assert ok
    image = decode_image(buf.tobytes(), None)
    _assert_rgb8(image, (1, 4, 3))
    np.testing.assert_array_equal(image[0, :, 0], [0, 0, 101, 255])


# -- resizing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(37, 53), (10, 12), (64, 30), (1, 1), (100, 200)])
def test_nearest_resize_reproduces_pil_nearest(size):
    data = encode(RGB, "PNG")
    image = decode_image(data, size, interpolation="nearest")
    _assert_rgb8(image, size + (3,))
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize(size[::-1], Image.NEAREST))
    np.testing.assert_array_equal(image, expected)


@pytest.mark.parametrize("interpolation", list(INTERPOLATIONS))
def test_every_interpolation_keeps_a_flat_image_flat(interpolation):
    data = encode(flat_rgb(30, 40, 17), "PNG")
    image = decode_image(data, (13, 21), interpolation=interpolation)
    _assert_rgb8(image, (13, 21, 3))
    assert (image == flat_rgb(1, 1, 17)[0, 0]).all()


def test_reduced_decode_for_large_jpegs_but_never_for_nearest():
    big = smooth_rgb(480, 640, 4)
    data = encode(big, "JPEG", quality=95)
    assert reduction_factor(640, 480, (60, 80)) == 8 and reduction_factor(640, 480, (61, 80)) == 4
    assert reduction_factor(640, 480, (300, 300)) == 1
    full = decode_image(data, None)
    reduced = decode_image(data, (60, 80), interpolation="area")
    plain = decode_image(data, (60, 80), interpolation="area", reduced=False)
    _assert_rgb8(reduced, (60, 80, 3))
    assert np.abs(reduced.astype(int) - plain).mean() < 2.0  # same picture, DCT-domain averaging
    import cv2

    nearest = decode_image(data, (60, 80), interpolation="nearest")
    np.testing.assert_array_equal(nearest, cv2.resize(full, (80, 60), interpolation=cv2.INTER_NEAREST_EXACT))


# -- EXIF --------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_ignored_by_default_applied_on_request(orientation):
    image = smooth_rgb(16, 24, 9)
    data = exif_jpeg(image, orientation)
    with Image.open(io.BytesIO(data)) as im:
        assert im.getexif()[0x0112] == orientation
        raw = np.asarray(im.convert("RGB"))
        transposed = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(decode_image(data, None), raw)  # Keras' view
    np.testing.assert_array_equal(decode_image(data, None, exif=True), transposed)
    rotated = decode_image(data, (8, 8), exif=True, interpolation="area")  # reduced decode + EXIF
    _assert_rgb8(rotated, (8, 8, 3))


def test_exif_with_reduced_decode_keeps_both_sides_large_enough():
    data = exif_jpeg(smooth_rgb(128, 512, 2), 6)  # stored 512 wide, shown 512 tall
    image = decode_image(data, (100, 30), interpolation="bilinear", exif=True)
    _assert_rgb8(image, (100, 30, 3))
    reference = decode_image(data, (100, 30), interpolation="bilinear", exif=True, reduced=False)
    assert np.abs(image.astype(int) - reference).mean() < 3.0


# -- headers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,data,expected",
    [
        ("jpeg", encode(RGB, "JPEG"), ("jpeg", 53, 37)),
        ("png", encode(RGB, "PNG"), ("png", 53, 37)),
        ("gif", encode(RGB, "GIF"), ("gif", 53, 37)),
        ("bmp", encode(RGB, "BMP"), ("bmp", 53, 37)),
        ("ppm", encode(RGB, "PPM"), ("pnm", 53, 37)),
        ("pgm-comment", b"P5\n# a comment 999 999\n 53\t37 255\n" + bytes(53 * 37), ("pnm", 53, 37)),
        ("webp-lossy", encode(RGB, "WEBP"), ("webp", 53, 37)),
        ("webp-lossless", encode(RGB, "WEBP", lossless=True), ("webp", 53, 37)),
        ("webp-extended", encode(np.dstack([RGB, RGB[..., 0]]), "WEBP", exif=b"Exif\x00\x00"), ("webp", 53, 37)),
        ("tiff", encode(RGB, "TIFF"), ("tiff", 53, 37)),
        ("tiff-big-endian", tiff_with_size(53, 37, big_endian=True), ("tiff", 53, 37)),
        ("bigtiff", encode(RGB, "TIFF", big_tiff=True), ("tiff", 53, 37)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_read_header(kind, data, expected):
    assert read_header(data) == expected
    assert read_header(np.frombuffer(data, np.uint8)) == expected


def test_read_header_opencv_tiff_and_os2_bmp():
    import cv2

    ok, buf = cv2.imencode(".tiff", RGB)
    assert read_header(buf.tobytes()) == ("tiff", 53, 37)
    core = b"BM" + bytes(12) + (12).to_bytes(4, "little") + (300).to_bytes(2, "little") + (200).to_bytes(2, "little")
    assert read_header(core) == ("bmp", 300, 200)


@pytest.mark.parametrize(
    "data", [b"", b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"hello", b"II*\x00\xff\xff\xff\xff"]
)
def test_read_header_returns_none_for_garbage_and_stubs(data):
    assert read_header(data) is None


def test_gif_header_counts_the_first_frame_extent():
    data = bytearray(encode(flat_rgb(4, 4, 1), "GIF"))
    at = data.index(b"\x2c")  # image descriptor: left, top, width, height
    data[at + 1 : at + 9] = (0).to_bytes(2, "little") * 2 + (60000).to_bytes(2, "little") * 2
    assert read_header(bytes(data)) == ("gif", 60000, 60000)


# -- decompression bombs -----------------------------------------------------------------------

BOMBS = {
    "png": lambda: png_bomb(100_000, 100_000),
    "jpeg": lambda: jpeg_with_size(encode(RGB, "JPEG"), 60_000, 60_000),
    "tiff": lambda: tiff_with_size(200_000, 100_000),
    "tiff-big-endian": lambda: tiff_with_size(100_000, 100_000, big_endian=True),
    "gif": lambda: b"GIF89a" + (60_000).to_bytes(2, "little") * 2 + bytes(3) + b"\x2c" + bytes(18),
    "bmp": lambda: b"BM" + bytes(12) + (40).to_bytes(4, "little") + (50_000).to_bytes(4, "little") * 2 + bytes(40),
    "pnm": lambda: b"P6\n40000 40000\n255\n" + bytes(100),
    "webp": lambda: b"RIFF" + bytes(4) + b"WEBPVP8X" + bytes(8) + (16383).to_bytes(3, "little") * 2 + bytes(20),
}


@pytest.mark.parametrize("kind", list(BOMBS))
def test_bomb_refused_from_the_header(kind):
    data = BOMBS[kind]()
    fmt, w, h = read_header(data)
    assert w * h > DEFAULT_MAX_PIXELS
    with pytest.raises(DecodeError, match=r"image too large: \d+x\d+ = \d+ pixels exceeds max_pixels=178956970"):
        decode_image(data, (32, 32))


def test_max_pixels_is_configurable():
    data = encode(RGB, "PNG")  # 53 x 37 = 1961 pixels
    with pytest.raises(DecodeError, match="exceeds max_pixels=1960"):
        decode_image(data, None, max_pixels=1960)
    _assert_rgb8(decode_image(data, None, max_pixels=1961), (37, 53, 3))
    # no limit of ours: OpenCV's own limit (2**30 pixels) still refuses, as a DecodeError
    with pytest.raises(DecodeError):
        decode_image(BOMBS["png"](), (8, 8), max_pixels=None)
    with pytest.raises(ValueError, match="Received: max_pixels=0"):
        decode_image(data, None, max_pixels=0)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import cv2  # imported by the first decode: load it before measuring
    import numpy as np
    from fastfeat.decode import decode_image, DecodeError

    def peak_mb():  # this process's own high-water mark (ru_maxrss would carry the parent's over exec)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

    data = open(sys.argv[1], "rb").read()
    kwargs = json.loads(sys.argv[2])
    np.zeros(1)  # numpy and OpenCV are loaded: measure from here
    before = peak_mb()
    try:
        image = decode_image(data, tuple(kwargs.pop("size")), **kwargs)
        result = list(image.shape)
    except DecodeError as e:
        result = e.reason
    print(json.dumps({"before": before, "after": peak_mb(), "result": result}))
    """
)


def _peak_growth_mb(path, **kwargs):
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(path), json.dumps(kwargs)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    info = json.loads(out.stdout.strip().splitlines()[-1])
    return info["after"] - info["before"], info["result"]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc (Linux)")
def test_peak_memory_stays_bounded_on_bombs_and_large_images(tmp_path):
    """A 10-gigapixel bomb costs nothing; a 24 MP photo decoded to 224 stays far below its full size."""
    bomb = write(tmp_path / "bomb.png", png_bomb(100_000, 100_000))
    growth, result = _peak_growth_mb(bomb, size=[224, 224])
    assert "too large" in result and growth < 10, (growth, result)

    big = write(tmp_path / "big.jpg", encode(smooth_rgb(4000, 6000, 1), "JPEG", quality=85))
    full_mb = 4000 * 6000 * 3 / 2**20  # 68.7 MB of decoded RGB
    growth, result = _peak_growth_mb(big, size=[224, 224], interpolation="area")
    assert result == [224, 224, 3] and growth < full_mb / 4, growth  # reduced decode: 1/64 of the pixels
    growth, result = _peak_growth_mb(big, size=[224, 224], interpolation="nearest")
    assert result == [224, 224, 3] and growth < full_mb * 2.5, growth  # OpenCV holds the frame twice at peak


# -- arguments and files -----------------------------------------------------------------------


def test_bad_arguments_name_the_argument():
    data = encode(RGB, "PNG")
    with pytest.raises(ValueError, match=r"`interpolation` must be one of nearest, bilinear, area, bicubic, lanczos"):
        decode_image(data, (8, 8), interpolation="cubic")
    with pytest.raises(ValueError, match=r"Received: interpolation='cubic'"):
        check_interpolation("cubic")
    for size in [(0, 8), (8,), "big", (8, -1)]:
        with pytest.raises(ValueError, match="Received: size="):
            decode_image(data, size)


def test_decode_accepts_bytes_like_inputs():
    data = encode(RGB, "PNG")
    for value in (data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        _assert_rgb8(decode_image(value, (5, 6)), (5, 6, 3))


def test_read_file_and_load_image_errors_name_the_file(tmp_path):
    good = write(tmp_path / "ok.png", encode(RGB, "PNG"))
    assert read_file(good) == encode(RGB, "PNG")
    with pytest.raises(DecodeError, match="No such file") as info:
        load_image(str(tmp_path / "missing.png"), (4, 4))
    assert info.value.path == str(tmp_path / "missing.png") and str(info.value).startswith(str(tmp_path))
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DecodeError, match="not a regular file|Is a directory"):
        load_image(str(tmp_path / "dir.png"), (4, 4))


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(DecodeError, match="not a regular file"):
        load_image(str(fifo), (4, 4))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path):
    path = write(tmp_path / "locked.png", encode(RGB, "PNG"))
    os.chmod(path, 0)
    try:
        with pytest.raises(DecodeError, match="Permission denied"):
            load_image(path, (4, 4))
    finally:
        os.chmod(path, 0o644)


def test_permission_error_is_reported_as_a_reason(tmp_path, monkeypatch):
    """The same path as ``test_unreadable_file``, simulated, so that it runs as root too."""
    import errno

    path = write(tmp_path / "locked.png", encode(RGB, "PNG"))
    real_open = os.open

    def deny(p, *args, **kwargs):
        if os.fspath(p) == path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), p)
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(DecodeError, match="cannot read file: Permission denied") as info:
        load_image(path, (4, 4))
    assert info.value.path == path


def test_read_file_reads_whole_files(tmp_path):
    from fastfeat.decode import read_file

    big = tmp_path / "big.bin"
    payload = np.random.default_rng(0).integers(0, 256, (3 << 20) + 17, dtype=np.uint8).tobytes()
    big.write_bytes(payload)
    assert read_file(big) == payload
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert read_file(empty) == b""
