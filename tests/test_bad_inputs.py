"""Bad and odd inputs (issue 6): every call decodes or raises DecodeError; a run accounts for every file.

* a fuzz test feeds several hundred mutated JPEG/PNG files through ``decode_image`` (in a child
  process, so that a crash in a native decoder would fail the test instead of killing the run);
* truncated, empty, random and text files are refused with a reason, cheaply;
* end to end, ``fastfeat.extract`` on a folder mixing good and bad files writes every valid image,
  records every bad one in ``FeatureStore.failures`` with its reason, keeps labels, paths and
  features aligned, and ``on_error="raise"`` stops naming the file.
"""

from __future__ import annotations

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
    pil_rgb,
    png_bomb,
    sixteen_bit,
    smooth_rgb,
    tiff_with_size,
    write,
)
from PIL import Image

import fastfeat
from fastfeat.catalog import build_catalog
from fastfeat.decode import DecodeError, decode_image, load_image
from fastfeat.store import open_store

IMAGE = smooth_rgb(48, 64, 7)
JPEG = encode(IMAGE, "JPEG", quality=90)
PNG = encode(IMAGE, "PNG")


# -- single files ------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.9, 0.99])
@pytest.mark.parametrize("kind,data", [("JPEG", JPEG), ("PNG", PNG)], ids=["jpeg", "png"])
def test_truncated_files_are_refused(kind, data, fraction):
    with pytest.raises(DecodeError, match=f"truncated {kind}"):
        decode_image(data[: int(len(data) * fraction)], (16, 16))


def test_truncation_check_is_not_fooled_by_a_thumbnail_end_marker():
    """An EXIF thumbnail carries its own FFD9 before the scan; a file cut short is still caught."""
    thumbnail = encode(flat_rgb(4, 4, 3), "JPEG")
    app1 = b"Exif\x00\x00" + thumbnail
    data = JPEG[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + JPEG[2:]
    assert decode_image(data, None).shape == (48, 64, 3)
    with pytest.raises(DecodeError, match="truncated JPEG"):
        decode_image(data[: len(data) - 200], None)


def test_jpeg_quirks_that_pil_accepts_are_accepted():
    """Stray bytes before a marker (libjpeg warns, decodes) and large APP segments before the frame."""
    sos = JPEG.index(b"\xff\xda")
    stray = JPEG[:sos] + b"\x00\x00\x00" + JPEG[sos:]
    big_app = encode(IMAGE, "JPEG", quality=90, icc_profile=b"\x00" * 150_000)  # three APP2 segments
    for data in (stray, big_app):
        np.testing.assert_array_equal(decode_image(data, None), pil_rgb(data))


def test_trailing_bytes_after_the_end_marker_are_accepted():
    """Cameras and phones append data after EOI/IEND (motion photos, padding): the image is whole."""
    for data in (JPEG + b"\x00" * 300 + b"ftypmp42" + os.urandom(2000), PNG + b"\x00garbage" * 50):
        np.testing.assert_array_equal(decode_image(data, None), decode_image(data.split(b"\x00garbage")[0], None))


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty file"),
        (b"\x00", "not an image"),
        (np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "not an image"),
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", "not an image"),
        (b"just some text pretending to be an image\n" * 20, "not an image"),
        (b"\xff\xd8\xff" + bytes(200), "JPEG"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "PNG"),
        (b"GIF89a" + b"\x10\x00\x10\x00" + bytes(20), "GIF"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(30), "WebP"),
        (b"II*\x00" + (10**6).to_bytes(4, "little"), "TIFF"),
        (b"P6\n# only a comment\n", "PNM"),
        (JPEG[:2] + b"\xff\xd9" + JPEG[2:], "end-of-image marker before the image data"),
    ],
    ids=["empty", "one-byte", "random", "html", "text", "jpeg-stub", "png-stub", "gif-stub", "webp-stub",
         "tiff-stub", "pnm-stub", "jpeg-early-eoi"],  # fmt: skip
)
def test_garbage_is_refused_with_a_reason(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_image(data, (16, 16))


def test_corrupt_data_inside_a_complete_file_never_escapes_as_another_error():
    broken = bytearray(PNG)
    broken[60:90] = b"\x00" * 30  # inside IDAT: CRC and zlib stream broken
    with pytest.raises(DecodeError, match="cannot decode"):
        decode_image(bytes(broken), (16, 16))


_FUZZ_SCRIPT = textwrap.dedent(
    """
    import io, json, sys
    import numpy as np
    from PIL import Image
    from fastfeat.decode import DecodeError, decode_image

    rng = np.random.default_rng(int(sys.argv[1]))
    count = int(sys.argv[2])
    formats = sys.argv[3]
    y, x = np.mgrid[0:40, 0:56]
    pixels = np.dstack([x * 4, y * 6, (x + y) * 2]).astype(np.uint8)

    def enc(fmt, image=pixels, **kw):
        f = io.BytesIO()
        (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(f, fmt, **kw)
        return f.getvalue()

    if formats == "jpeg-png":
        seeds = [enc("JPEG", quality=85), enc("JPEG", progressive=True, subsampling=0), enc("PNG"),
                 enc("PNG", optimize=True), enc("PNG", Image.fromarray(pixels).quantize(16), transparency=1)]
    else:
        seeds = [enc("GIF"), enc("BMP"), enc("TIFF"), enc("TIFF", compression="tiff_lzw"), enc("WEBP"),
                 enc("WEBP", lossless=True), enc("PPM")]

    def hwm_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

    import time

    def mutate(data):
        b = bytearray(data)
        kind = rng.integers(0, 7)
        if kind == 0:  # flip bits
            for _ in range(rng.integers(1, 12)):
                i = rng.integers(0, len(b)); b[i] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # overwrite a run of bytes
            i = rng.integers(0, len(b)); n = rng.integers(1, 40)
            b[i:i + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        elif kind == 2:  # truncate
            b = b[: rng.integers(0, len(b))]
        elif kind == 3:  # insert random bytes
            i = rng.integers(0, len(b)); b[i:i] = rng.integers(0, 256, rng.integers(1, 64), dtype=np.uint8).tobytes()
        elif kind == 4:  # duplicate a slice
            i = rng.integers(0, len(b)); j = min(len(b), i + rng.integers(1, 400)); b[j:j] = b[i:j]
        elif kind == 5:  # zero a range
            i = rng.integers(0, len(b)); b[i:i + rng.integers(1, 200)] = bytes(len(b[i:i + 200]))[: len(b[i:i + 200])]
        else:  # hit the header: the first 40 bytes, where sizes and markers live
            for _ in range(rng.integers(1, 4)):
                i = rng.integers(0, min(40, len(b))); b[i] = int(rng.integers(0, 256))
        return bytes(b)

    stats = {"ok": 0, "decode_error": 0, "bad": [], "slowest_s": 0.0, "start_mb": hwm_mb()}
    sizes = [None, (16, 16), (7, 33)]
    for k in range(count):
        data = mutate(seeds[k % len(seeds)])
        size = sizes[k % 3]
        interpolation = ["nearest", "bilinear", "area"][k % 3]
        start = time.perf_counter()
        try:
            out = decode_image(data, size, interpolation=interpolation)
        except DecodeError:
            stats["decode_error"] += 1
            continue
        except Exception as e:  # any other exception is a bug
            stats["bad"].append(f"{k}: {type(e).__name__}: {e}")
            continue
        finally:
            stats["slowest_s"] = max(stats["slowest_s"], time.perf_counter() - start)
        good = (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
                and out.flags.c_contiguous and min(out.shape[:2]) >= 1
                and (size is None or out.shape[:2] == size))
        if good:
            stats["ok"] += 1
        else:
            stats["bad"].append(f"{k}: returned {type(out).__name__} {getattr(out, 'shape', None)}")
    stats["peak_mb"] = hwm_mb()
    print(json.dumps(stats))
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc (Linux)")
@pytest.mark.parametrize("formats,seed", [("jpeg-png", 0), ("jpeg-png", 1), ("others", 2)])
def test_fuzz_mutated_files(formats, seed):
    """400 mutations each: no crash, each call returns a valid image or raises DecodeError, quickly.

    ``others`` mutates GIF, BMP, TIFF, WebP and PPM files. Time and memory are bounded too: a
    mutated header may declare up to ``max_pixels`` (179 MP), so one call may allocate that much,
    but nothing more, and none may hang.
    """
    result = subprocess.run(
        [sys.executable, "-c", _FUZZ_SCRIPT, str(seed), "400", formats], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["bad"] == []
    assert stats["ok"] + stats["decode_error"] == 400
    assert stats["ok"] > 40 and stats["decode_error"] > 40  # both outcomes are exercised
    assert stats["slowest_s"] < 3.0, stats
    assert stats["peak_mb"] - stats["start_mb"] < 1200, stats  # 179 MP x 3 bytes, twice at most


# -- end to end --------------------------------------------------------------------------------


def _mixed_folder(root) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Write good and bad files into two classes; returns ({good path: pixels}, {bad path: reason})."""
    good = {
        "cats/a.jpg": JPEG,
        "cats/c_gray.png": encode(IMAGE[..., 0], "PNG"),
        "cats/e_cmyk.jpg": encode(Image.fromarray(IMAGE).convert("CMYK"), "JPEG"),
        "cats/g_16.png": sixteen_bit(IMAGE.astype(np.uint16) * 257, "PNG"),
        "cats/h_16.tif": sixteen_bit(IMAGE[..., 1].astype(np.uint16) * 250, "TIFF"),
        "cats/i_anim.gif": animated([flat_rgb(20, 30, k) for k in (1, 2)], "GIF"),
        "cats/k_palette.png": encode(Image.fromarray(IMAGE).quantize(8), "PNG", transparency=0),
        "dogs/o_rgba.png": encode(np.dstack([IMAGE, IMAGE[..., 2]]), "PNG"),
        "dogs/q_anim.webp": animated([flat_rgb(20, 30, k) for k in (3, 4)], "WEBP"),
        "dogs/r_exif.jpg": exif_jpeg(IMAGE, 6),
        "dogs/s_gray_alpha.png": encode(Image.fromarray(IMAGE[..., :2], "LA"), "PNG"),
        "dogs/x.bmp": encode(IMAGE, "BMP"),
        "dogs/y.pgm": encode(IMAGE[..., 2], "PPM"),
    }
    bad = {
        "cats/b_truncated.jpg": (JPEG[: len(JPEG) // 2], "truncated JPEG"),
        "cats/d_empty.png": (b"", "empty file"),
        "cats/f_text.jpg": (b"not a jpeg at all\n", "not an image"),
        "cats/j_bomb.png": (png_bomb(100_000, 100_000), "image too large"),
        "dogs/n_random.png": (bytes(range(7, 250)) * 5, "not an image"),
        "dogs/p_truncated.png": (PNG[: len(PNG) * 2 // 3], "truncated PNG"),
        "dogs/t_bomb.tif": (tiff_with_size(300_000, 300_000), "image too large"),
        "dogs/v_html.gif": (b"<html>moved</html>", "not an image"),
    }
    for rel, data in good.items():
        write(os.path.join(root, rel), data)
    for rel, (data, _) in bad.items():
        write(os.path.join(root, rel), data)
    reasons = {rel: reason for rel, (_, reason) in bad.items()}
    os.symlink(os.path.join(root, "cats", "gone.png"), os.path.join(root, "cats", "l_broken.png"))
    reasons["cats/l_broken.png"] = "No such file"
    os.symlink("m_loop.jpg", os.path.join(root, "cats", "m_loop.jpg"))
    reasons["cats/m_loop.jpg"] = "symbolic links"
    os.mkfifo(os.path.join(root, "dogs", "u_fifo.jpg"))
    reasons["dogs/u_fifo.jpg"] = "not a regular file"
    if os.geteuid() != 0:  # root reads everything: there the file is simply good
        path = write(os.path.join(root, "dogs", "w_unreadable.jpg"), JPEG)
        os.chmod(path, 0)
        reasons["dogs/w_unreadable.jpg"] = "Permission denied"
    name = os.path.join(os.fsencode(root), b"cats", b"z_caf\xe9.png")  # not UTF-8
    write(name, encode(IMAGE[::-1], "PNG"))
    good[os.fsdecode(os.path.relpath(name, os.fsencode(root)))] = None
    return good, reasons


@pytest.fixture
def mixed(tmp_path):
    root = tmp_path / "mixed"
    good, reasons = _mixed_folder(str(root))
    return str(root), good, reasons


def _reference(model_file, root, paths):
    """The tiny model's conv2 features, mean-pooled, for each path decoded on its own."""
    import keras

    model = keras.saving.load_model(model_file, compile=False)
    cut = keras.Model(model.input, model.get_layer("conv2").output)
    images = np.stack([load_image(os.path.join(root, p), (32, 32), interpolation="nearest") for p in paths])
    return np.asarray(cut(images.astype(np.float32), training=False)).mean(axis=(1, 2))


def test_extract_accounts_for_every_file(mixed, tiny_model_file, tmp_path):
    root, good, reasons = mixed
    catalog = build_catalog(root)
    assert set(catalog.paths) == set(good) | set(reasons)
    out = tmp_path / "out.h5"
    report = fastfeat.extract(
        root, out, model=tiny_model_file, layers=["conv2:avg"], batch_size=4,
        interpolation="nearest", precision="float32", progress=False,
    )  # fmt: skip  (compared with a float32 reference below)
    assert report.images == len(good) and report.failures == len(reasons)

    expected_paths = [p for p in catalog.paths if p in good]  # catalog order, bad files removed
    with open_store(out) as store:
        failures = dict(store.failures)
        assert set(failures) == set(reasons)
        for path, reason in reasons.items():
            assert reason in failures[path], (path, failures[path])
        assert store.paths == expected_paths
        assert store.class_names == ["cats", "dogs"]
        np.testing.assert_array_equal(store.labels, [0 if p.startswith("cats/") else 1 for p in expected_paths])
        features = np.asarray(store.features("conv2:avg"))
    assert features.shape == (len(good), 16)
    # every row is its own image's features: nothing shifted, no placeholder row
    np.testing.assert_allclose(features, _reference(tiny_model_file, root, expected_paths), rtol=1e-5, atol=1e-6)


def test_on_error_raise_names_the_file(mixed, tiny_model_file, tmp_path):
    root, _, reasons = mixed
    first_bad = next(p for p in build_catalog(root).paths if p in reasons)
    with pytest.raises(DecodeError) as info:
        fastfeat.extract(
            root, tmp_path / "out.h5", model=tiny_model_file, layers=["conv2:avg"], batch_size=4,
            interpolation="nearest", on_error="raise", progress=False,
        )  # fmt: skip
    assert info.value.path == os.path.join(root, first_bad)
    assert first_bad in str(info.value) and reasons[first_bad] in str(info.value)


def test_extract_with_a_non_utf8_class_folder(tmp_path, tiny_model_file):
    root = os.path.join(os.fsencode(tmp_path), b"data")
    write(os.path.join(root, b"caf\xe9", b"a.png"), PNG)
    write(os.path.join(root, b"plain", b"b\xff.jpg"), JPEG)
    out = tmp_path / "out.h5"
    report = fastfeat.extract(
        os.fsdecode(root), out, model=tiny_model_file, layers=["conv2:avg"], interpolation="nearest", progress=False
    )
    assert report.images == 2 and report.failures == 0
    with open_store(out) as store:
        assert [os.fsencode(p) for p in store.paths] == [b"caf\xe9/a.png", b"plain/b\xff.jpg"]
        assert [os.fsencode(c) for c in store.class_names] == [b"caf\xe9", b"plain"]
