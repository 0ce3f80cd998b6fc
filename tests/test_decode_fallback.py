"""The Pillow fallback, quiet decoders and the header quirks that route a file to a captured decode.

Odd files are generated here (a few hundred bytes each): what OpenCV refuses (2- and 4-bit gray
TIFF, a GIF whose background index lies outside its palette, an APNG claiming zero frames) must
come out as Pillow's ``convert("RGB")`` through the same conversion and resize as OpenCV's output;
what neither decoder reads fails with both messages; nothing is printed to fd 1 or fd 2.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import warnings
import zlib

import cv2
import numpy as np
import pytest
from _images import encode, flat_rgb, pil_rgb, png_chunk, smooth_rgb, tiff_with_size
from PIL import Image

from fastfeat import decode as decode_module
from fastfeat import decode_pillow, quiet
from fastfeat.decode import INTERPOLATIONS, DecodeError, decode_image
from fastfeat.headers import check_complete, parse_header

RGB = smooth_rgb(9, 13, 0)


def gray_tiff(bits: int, width: int = 13, height: int = 9) -> bytes:
    """An uncompressed min-is-black gray TIFF with ``bits`` (1, 2, 4) per sample, rows packed."""
    values = np.random.default_rng(bits).integers(0, 1 << bits, (height, width))
    per_byte = 8 // bits
    padded = np.zeros((height, -(-width // per_byte) * per_byte), np.int64)
    padded[:, :width] = values
    shifts = bits * np.arange(per_byte - 1, -1, -1)
    pixels = (padded.reshape(height, -1, per_byte) << shifts).sum(axis=2).astype(np.uint8).tobytes()
    entries = [(256, width), (257, height), (258, bits), (259, 1), (262, 1), (273, 0), (277, 1), (278, height),
               (279, len(pixels))]  # fmt: skip
    data_at = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, value in entries:
        ifd += struct.pack("<HHII", tag, 4, 1, data_at if tag == 273 else value)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + pixels


def gif_background_outside_palette() -> bytes:
    gif = bytearray(encode(Image.fromarray(RGB).quantize(4), "GIF"))
    gif[11] = 200  # background colour index; the global palette has 4 entries
    return bytes(gif)


def apng_zero_frames() -> bytes:
    frames = [Image.fromarray(flat_rgb(9, 13, k)) for k in (5, 80)]
    apng = bytearray(encode(frames[0], "PNG", save_all=True, append_images=frames[1:]))
    at = apng.index(b"acTL")
    apng[at + 4 : at + 8] = bytes(4)  # num_frames = 0
    apng[at + 12 : at + 16] = zlib.crc32(bytes(apng[at : at + 12])).to_bytes(4, "big")
    return bytes(apng)


OPENCV_REFUSES = {
    "gray-2bit-tiff": lambda: gray_tiff(2),
    "gray-4bit-tiff": lambda: gray_tiff(4),
    "gif-background-outside-palette": gif_background_outside_palette,
    "apng-zero-frames": apng_zero_frames,
}


def _opencv_alone(data: bytes):
    with quiet.opencv_quiet(), quiet.captured_stderr():
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)


def _pillow_rgb(data: bytes) -> np.ndarray:
    """The reference; Pillow warns about some odd files (an invalid APNG), which is not checked here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pil_rgb(data)


# -- the fallback ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(OPENCV_REFUSES))
def test_fallback_decodes_what_opencv_cannot(kind):
    data = OPENCV_REFUSES[kind]()
    assert _opencv_alone(data) is None  # so this exercises the fallback
    expected = _pillow_rgb(data)
    image = decode_image(data, None)
    assert image.dtype == np.uint8 and image.flags.c_contiguous
    np.testing.assert_array_equal(image, expected)
    # nearest goes through the same OpenCV resize: exactly PIL's NEAREST (Keras parity)
    size = (7, 20)
    nearest = decode_image(data, size, interpolation="nearest")
    np.testing.assert_array_equal(nearest, np.asarray(Image.fromarray(expected).resize(size[::-1], Image.NEAREST)))
    out = np.empty(size + (3,), np.uint8)
    assert decode_image(data, size, interpolation="area", out=out) is out


def test_fallback_is_never_used_for_ordinary_files(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the Pillow fallback ran for an ordinary file")

    monkeypatch.setattr(decode_module, "decode_with_pillow", refuse)
    for fmt in ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"):
        decode_image(encode(RGB, fmt), (5, 6))


def test_importing_decode_loads_neither_opencv_nor_pillow_and_jpegs_never_load_pillow(tmp_path):
    code = (
        "import sys\n"
        "import fastfeat.decode as d\n"
        "assert 'cv2' not in sys.modules and 'PIL' not in sys.modules, 'imported at module level'\n"
        "import numpy as np\n"
        "jpeg = open(sys.argv[1], 'rb').read()\n"
        "assert d.decode_image(jpeg, (4, 4)).shape == (4, 4, 3)\n"
        "assert 'cv2' in sys.modules and 'PIL' not in sys.modules, 'Pillow on the hot path'\n"
    )
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(RGB, "JPEG"))
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=120)


def test_interpolation_values_are_opencvs():
    flags = {"nearest": cv2.INTER_NEAREST_EXACT, "bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA,
             "bicubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}  # fmt: skip
    assert INTERPOLATIONS == flags
    assert (decode_module._RGB, decode_module._IGNORE_ORIENTATION) == (
        cv2.IMREAD_COLOR_RGB, cv2.IMREAD_IGNORE_ORIENTATION,
    )  # fmt: skip
    assert decode_module._ANY == cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    assert [decode_module._REDUCED[k] | cv2.IMREAD_COLOR for k in (2, 4, 8)] == [
        cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_COLOR_4, cv2.IMREAD_REDUCED_COLOR_8,
    ]  # fmt: skip


# Pillow images of every mode -> what decode.py's conversion gets, and the end result
GRAY16 = ((np.arange(9 * 13).reshape(9, 13) * 509) % 65536).astype(np.uint16)
MODES = {
    "1": (Image.fromarray(RGB[..., 0]).convert("1"), None),
    "L": (Image.fromarray(RGB[..., 0]), RGB[..., 0]),
    "LA": (Image.fromarray(RGB[..., :2], "LA"), RGB[..., 0]),
    "P+transparency": (Image.fromarray(RGB).quantize(8), None),
    "RGBA": (Image.fromarray(np.dstack([RGB, RGB[..., :1]])), RGB),
    "CMYK": (Image.fromarray(RGB).convert("CMYK"), None),
    "I;16": (Image.fromarray(GRAY16), (GRAY16 >> 8).astype(np.uint8)),
    "I;16B": (Image.frombytes("I;16B", (13, 9), GRAY16.astype(">u2").tobytes()), (GRAY16 >> 8).astype(np.uint8)),
    "I": (Image.fromarray(RGB[..., 0].astype(np.int32) * 2 - 100), np.clip(RGB[..., 0].astype(int) * 2 - 100, 0, 255)),
    "F": (Image.fromarray(RGB[..., 0].astype(np.float32) * 1.5 - 20.2), None),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_pillow_modes_follow_the_opencv_rules(mode):
    """Palette -> its colours, alpha dropped, 16-bit v >> 8 (not PIL's clip), int/float clipped."""
    im, gray = MODES[mode]
    if mode == "P+transparency":
        im.info["transparency"] = 2
    image = decode_module._to_rgb8(decode_pillow._to_array(im))
    assert image.dtype == np.uint8 and image.shape == (9, 13, 3)
    if gray is not None:
        np.testing.assert_array_equal(image, np.repeat(np.asarray(gray, np.uint8)[..., None], 3, axis=2)
                                      if np.ndim(gray) == 2 else gray)  # fmt: skip
    elif mode == "F":
        expected = np.clip(RGB[..., 0].astype(np.float32) * 1.5 - 20.2, 0, 255).round().astype(np.uint8)
        np.testing.assert_array_equal(image[..., 1], expected)
    else:  # 1, palette, CMYK: as PIL's convert("RGB")
        np.testing.assert_array_equal(image, np.asarray(im.convert("RGB")))


def test_fallback_applies_exif_only_on_request(monkeypatch):
    """EXIF orientation through Pillow, as through OpenCV: ignored unless exif=True."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    data = encode(RGB, "JPEG", quality=100, subsampling=0, exif=exif.tobytes())
    monkeypatch.setattr(decode_module, "_opencv", lambda *args: (None, "refused for this test"))
    assert decode_image(data, None).shape == (9, 13, 3)
    assert decode_image(data, None, exif=True).shape == (13, 9, 3)


# -- failures and the bomb guard ----------------------------------------------------------------

BOTH_FAIL = {
    "tiff-without-pixel-data": lambda: tiff_with_size(8, 8),
    "png-corrupt-idat": lambda: bytes(_corrupt(encode(smooth_rgb(37, 53, 0), "PNG"), 60, 90)),
    "gif-corrupt-data": lambda: bytes(_corrupt(encode(RGB, "GIF"), -10, -2, b"\xff")),
}
DAMAGED_DATA = {"png-corrupt-idat"}  # found only while decoding: libpng talks (see filtered_stderr)


def _corrupt(data: bytes, start: int, stop: int, fill: bytes = b"\x00") -> bytearray:
    broken = bytearray(data)
    broken[start:stop] = fill * len(broken[start:stop])
    return broken


@pytest.mark.parametrize("kind", list(BOTH_FAIL))
def test_a_file_neither_decodes_fails_with_both_messages(kind, capfd):
    with quiet.filtered_stderr():
        with pytest.raises(DecodeError, match=r"^cannot decode [A-Z]+: OpenCV: .+; Pillow: .+") as info:
            decode_image(BOTH_FAIL[kind](), (8, 8))
    opencv = info.value.reason.split("; Pillow")[0].split("OpenCV: ")[1]
    if kind == "tiff-without-pixel-data":
        assert "TIFF" in opencv  # libtiff's own words
    if kind == "png-corrupt-idat":
        assert opencv.startswith("libpng error: IDAT")
    assert capfd.readouterr() == ("", "")


def test_pillow_sees_the_size_first_and_keeps_its_own_limit(monkeypatch):
    data = OPENCV_REFUSES["gray-4bit-tiff"]()  # 13 x 9 = 117 pixels
    with pytest.raises(DecodeError, match="exceeds max_pixels=116"):
        decode_image(data, None, max_pixels=116)  # refused from fastfeat's header parse
    header = parse_header(data)
    with pytest.raises(DecodeError, match="exceeds max_pixels=100"):
        decode_pillow.decode_with_pillow(data, header, False, 100)  # and from Pillow's, before decoding
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # above 2x Pillow's limit: Pillow refuses
    with pytest.raises(DecodeError, match=r"Pillow: .*MAX_IMAGE_PIXELS"):
        decode_image(data, None, max_pixels=None)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # between 1x and 2x: Pillow warns, not shown
    assert decode_image(data, (4, 4)).shape == (4, 4, 3)
    assert Image.MAX_IMAGE_PIXELS == 100  # the user's setting is left alone


def test_only_the_recognised_formats_plugin_opens_the_file():
    """A PNG header on TIFF bytes: Pillow is not allowed to sniff another format."""
    tiff = gray_tiff(4)
    header = parse_header(encode(RGB, "PNG"))
    with pytest.raises(DecodeError, match="^Pillow: cannot identify image file"):
        decode_pillow.decode_with_pillow(tiff, header, False, None)


# -- quiet decoders ----------------------------------------------------------------------------


def _jpeg_with_stray_bytes() -> bytes:
    jpeg = encode(RGB, "JPEG")
    at = jpeg.index(b"\xff\xdb")  # before the quantization table
    return jpeg[:at] + b"\x00\x01\x02\x03\x04" + jpeg[at:]


def _png_with(kind: bytes, payload: bytes, bad_crc: bool = False, image=None) -> bytes:
    png = encode(RGB if image is None else image, "PNG")
    chunk = png_chunk(kind, payload)
    if bad_crc:
        chunk = chunk[:-4] + bytes(4)
    return png[:33] + chunk + png[33:]  # right after IHDR


ODD_BUT_DECODABLE = {
    "jpeg-stray-bytes": _jpeg_with_stray_bytes,
    "png-bad-iccp": lambda: _png_with(b"iCCP", b"icc\x00\x00" + b"\x78\x9c" + bytes(20)),
    "png-bad-crc": lambda: _png_with(b"tEXt", b"Comment\x00hello", bad_crc=True),
    "png-trns-out-of-range": lambda: _png_with(b"tRNS", (300).to_bytes(2, "big"), image=RGB[..., 0] // 128),
}


@pytest.mark.parametrize("kind", list(ODD_BUT_DECODABLE))
def test_header_quirks_are_noticed(kind):
    data = ODD_BUT_DECODABLE[kind]()
    assert check_complete(parse_header(data), data) is not None
    clean = encode(RGB, "JPEG" if kind.startswith("jpeg") else "PNG")
    assert check_complete(parse_header(clean), clean) is None


def _decode_all(files):
    for data in files:
        for kwargs in ({"size": None}, {"size": (8, 8), "interpolation": "nearest"}):
            try:
                decode_image(data, **kwargs)
            except DecodeError:
                pass


def _odd_files(with_damaged_data: bool) -> list[bytes]:
    both = [f() for k, f in BOTH_FAIL.items() if with_damaged_data or k not in DAMAGED_DATA]
    files = [f() for f in (*OPENCV_REFUSES.values(), *ODD_BUT_DECODABLE.values())] + both
    return files + [tiff_with_size(8, 8, big_endian=True), gray_tiff(1)]


def test_odd_and_broken_files_print_nothing(capfd):
    """Decoding the odd set (fallbacks, quirks, failures) writes nothing to fd 1 or fd 2, even
    outside a loader pass, except for damage found only inside the compressed data."""
    before = cv2.utils.logging.getLogLevel()
    capfd.readouterr()
    _decode_all(_odd_files(with_damaged_data=False))
    assert capfd.readouterr() == ("", "")
    assert cv2.utils.logging.getLogLevel() == before  # OpenCV's logger is the caller's again


def test_filtered_stderr_keeps_decoders_off_fd2_and_forwards_the_rest(capfd):
    """Inside filtered_stderr (what a loader pass runs in) nothing of the decoders gets through,
    while Python's own output and other programs' lines still do."""
    capfd.readouterr()
    with quiet.filtered_stderr():
        _decode_all(_odd_files(with_damaged_data=True))
        os.write(2, b"libpng warning: IDAT: Extra compressed data\nCorrupt JPEG data: 214 extraneous bytes\n")
        print("progress", file=sys.stderr, flush=True)
        os.write(2, b"2026-12-01 I tensorflow/core: some line\n")
    out, err = capfd.readouterr()
    assert out == "" and err == "progress\n2026-12-01 I tensorflow/core: some line\n"
    os.write(2, b"back\n")
    assert capfd.readouterr().err == "back\n"  # fd 2 is itself again


def test_odd_decodable_files_decode_as_pillow_does():
    for kind, make in ODD_BUT_DECODABLE.items():
        data = make()
        expected = RGB if kind == "png-bad-crc" else _pillow_rgb(data)  # Pillow refuses a bad CRC
        np.testing.assert_array_equal(decode_image(data, None), expected, err_msg=kind)


def test_captured_stderr_gives_back_python_output_and_keeps_c_output(capfd):
    with quiet.captured_stderr() as lines:
        os.write(2, b"libpng warning: iCCP: known incorrect sRGB profile\n\n")
        os.write(2, b"Traceback (most recent call last):\n  File \"x.py\", line 1\n")
        os.write(2, b"\r 50%|#####     | 5/10\n")
    assert lines == ["libpng warning: iCCP: known incorrect sRGB profile"]
    err = capfd.readouterr().err
    assert "Traceback" in err and 'File "x.py"' in err and "50%" in err and "libpng" not in err


def test_opencv_quiet_is_counted_across_threads():
    previous = cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_INFO)
    try:
        inside = []
        barrier = threading.Barrier(4)

        def work():
            with quiet.opencv_quiet():
                barrier.wait(timeout=10)
                inside.append(cv2.utils.logging.getLogLevel())
                barrier.wait(timeout=10)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert inside == [cv2.utils.logging.LOG_LEVEL_SILENT] * 4
        assert cv2.utils.logging.getLogLevel() == cv2.utils.logging.LOG_LEVEL_INFO
    finally:
        cv2.utils.logging.setLogLevel(previous)


def test_decoding_in_threads_stays_correct_and_quiet(capfd):
    """Fallbacks (serialized captures) next to hot-path decodes on 4 threads: right pixels, no output."""
    files = [gray_tiff(4), encode(RGB, "JPEG"), gif_background_outside_palette(), encode(RGB, "PNG"),
             _jpeg_with_stray_bytes(), tiff_with_size(8, 8)] * 4  # fmt: skip
    expected = []
    for data in files:
        try:
            expected.append(decode_image(data, (5, 7), interpolation="nearest"))
        except DecodeError as e:
            expected.append(e.reason)
    capfd.readouterr()
    results = [None] * len(files)

    def work(k):
        for i in range(k, len(files), 4):
            try:
                results[i] = decode_image(files[i], (5, 7), interpolation="nearest")
            except DecodeError as e:
                results[i] = e.reason

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for got, want in zip(results, expected):
        if isinstance(want, str):
            assert got == want
        else:
            np.testing.assert_array_equal(got, want)
    assert capfd.readouterr() == ("", "")


def test_header_quirk_checks_survive_random_damage():
    """Mutated headers and chunks: parse_header/check_complete give a Header, None, a quirk or a
    DecodeError, nothing else (plain Python over untrusted bytes; no decoder involved)."""
    rng = np.random.default_rng(11)
    seeds = [encode(RGB, "JPEG"), encode(RGB, "PNG"), _png_with(b"iCCP", b"icc\x00\x00x\x9c" + bytes(20)),
             _png_with(b"tRNS", b"\x00\x05", image=RGB[..., 0]), encode(RGB, "GIF"), encode(RGB, "TIFF")]  # fmt: skip
    for k in range(400):
        data = bytearray(seeds[k % len(seeds)])
        for at in rng.integers(0, min(len(data), 120), rng.integers(1, 6)):
            data[at] = rng.integers(0, 256)
        data = bytes(data[: rng.integers(8, len(data) + 1)])
        try:
            header = parse_header(data)
            if header is not None:
                assert check_complete(header, data) is None or isinstance(check_complete(header, data), str)
        except DecodeError:
            pass


def test_image_dataset_pass_over_damaged_data_prints_nothing(tmp_path, capfd):
    """Only files without fallbacks or quirks besides the damaged PNG: no capture window of another
    thread can swallow libpng's line by chance, so this fails (or passes) every time."""
    from fastfeat import image_dataset

    files = {"idat.png": BOTH_FAIL["png-corrupt-idat"](), "ok.jpg": encode(RGB, "JPEG"), "ok.png": encode(RGB, "PNG")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    ds = image_dataset(tmp_path, image_size=(8, 8), batch_size=2, preprocess=None, shuffle=False, label_mode=None)
    capfd.readouterr()
    with pytest.warns(UserWarning, match="skipping unreadable image .*idat.png .cannot decode PNG: OpenCV: libpng"):
        rows = sum(int(batch.shape[0]) for batch in ds)
    assert rows == 2  # the corrupt PNG is dropped
    assert capfd.readouterr() == ("", "")


def test_decode_gate_keeps_logging_windows_alone():
    """A logging window waits for decodes in progress and holds new ones back; its own thread's decodes
    pass (the window decodes the file once more to hear OpenCV)."""
    from fastfeat.quiet import _DecodeGate

    gate, events = _DecodeGate(), []
    inside, release = threading.Event(), threading.Event()

    def decode():
        with gate.shared():
            inside.set()
            release.wait(5)
            events.append("decode done")

    def window():
        with gate.exclusive():
            events.append("window")
            with gate.shared():  # the window's own decode: no deadlock
                events.append("own decode")

    first = threading.Thread(target=decode)
    first.start()
    inside.wait(5)
    second = threading.Thread(target=window)
    second.start()
    second.join(0.2)
    assert second.is_alive() and events == []  # the window waits for the decode in progress
    release.set()
    first.join(5)
    second.join(5)
    assert events == ["decode done", "window", "own decode"]
