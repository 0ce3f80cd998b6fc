"""The decoded-image cache: build, read, resume, update, staleness, image_dataset(cache=), the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from fastfeat.augment import Augment
from fastfeat.cache import ImageCache, StaleCacheError, build_cache, ensure_cache, open_cache
from fastfeat.cache import build as cache_build
from fastfeat.catalog import build_catalog
from fastfeat.cli import main
from fastfeat.dataset import image_dataset
from fastfeat.loader import DecodeOptions, Loader

SIZE = (12, 16)


def _write(path, seed: int, shape=(30, 40), ext=".png"):
    image = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90] if ext == ".jpg" else [])
    return str(path)


@pytest.fixture
def source(tmp_path):
    """src/{a,b}/…: PNGs and JPEGs of several sizes (some large enough for reduced decoding), one junk file."""
    root = tmp_path / "src"
    for k in range(9):
        ext = ".jpg" if k % 2 else ".png"
        _write(root / ("a" if k < 5 else "b") / f"img_{k}{ext}", k, shape=(20 + 7 * k, 50 - 2 * k), ext=ext)
    _write(root / "b" / "big.jpg", 99, shape=(64, 80), ext=".jpg")
    (root / "a" / "junk.png").write_bytes(b"not an image")
    return str(root)


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt  # Ctrl-C (or a kill) in the middle of a build


def _decoded(source, options):
    """What the loader decodes now, per catalog position: (images, ok)."""
    catalog = build_catalog(source)
    return Loader(catalog, options).decode_batch(np.arange(len(catalog)))


def test_build_stores_what_the_loader_decodes(source, tmp_path):
    out = str(tmp_path / "c.h5")
    report = build_cache(source, out, "12,16")
    catalog = build_catalog(source)
    assert (report.images, report.failures, report.reused) == (len(catalog) - 1, 1, 0)
    images, ok = _decoded(source, DecodeOptions(SIZE))
    with open_cache(out) as cache:
        assert cache.complete and cache.rows == len(catalog) - 1 and cache.row_shape == (*SIZE, 3)
        assert cache.class_names == ["a", "b"]
        assert [p for p, _ in cache.failures] == [os.path.join("a", "junk.png")]
        assert "unrecognised format" in cache.failures[0][1]
        assert cache.paths == [p for p, good in zip(catalog.paths, ok) if good]
        np.testing.assert_array_equal(cache.labels, catalog.labels[ok])
        np.testing.assert_array_equal(cache.read(np.arange(cache.rows)), images[ok])
        shuffled = np.random.default_rng(0).permutation(cache.rows)
        np.testing.assert_array_equal(cache.read(shuffled), images[ok][shuffled])
        st = os.stat(os.path.join(source, cache.paths[0]))
        assert tuple(cache.fingerprints[0]) == (st.st_size, st.st_mtime_ns, st.st_ino)
        assert cache.settings["image_size"] == list(SIZE) and cache.settings["opencv"] == cv2.__version__
        with pytest.raises(IndexError):
            cache.read([cache.rows])


@pytest.mark.parametrize("interpolation, exif, reduced", [("nearest", False, True), ("area", True, False)])
def test_decode_settings_are_honoured_and_recorded(source, tmp_path, interpolation, exif, reduced):
    out = str(tmp_path / "c.h5")
    build_cache(source, out, 12, interpolation=interpolation, exif=exif, reduced_decode=reduced)
    options = DecodeOptions((12, 12), interpolation, exif, reduced)
    images, ok = _decoded(source, options)
    with open_cache(out) as cache:
        assert cache.settings["interpolation"] == interpolation and cache.settings["exif"] is exif
        assert cache.settings["reduced_decode"] is reduced
        np.testing.assert_array_equal(cache.read(np.arange(cache.rows)), images[ok])


@pytest.mark.parametrize("augment", [None, Augment(rotation_range=30, zoom_range=0.2, horizontal_flip=True)])
def test_image_dataset_batches_equal_decoding(source, tmp_path, augment):
    common = dict(image_size=SIZE, batch_size=4, preprocess="vgg19", augment=augment, seed=3)
    cache = str(tmp_path / "c.h5")
    with pytest.warns(UserWarning, match="unreadable"):
        direct = image_dataset(source, **common)
        cached = image_dataset(source, cache=cache, **common)  # the cache does not exist yet: built first
        batches = [[(x.numpy(), y.numpy()) for x, y in ds] for ds in (direct, direct, cached, cached)]
    assert os.path.exists(cache)
    for epoch in (0, 1):  # a new shuffle (and new augmentation draws) every epoch, the same with the cache
        a, b = batches[epoch], batches[2 + epoch]
        assert len(a) == len(b) == 3
        for (xa, ya), (xb, yb) in zip(a, b):
            np.testing.assert_array_equal(ya, yb)
            assert xa.tobytes() == xb.tobytes()  # bitwise
    assert not all(np.array_equal(x0, x1) for (x0, _), (x1, _) in zip(batches[0], batches[1]))
    assert cached.unreadable == direct.unreadable and len(cached.unreadable) == 1


def test_touched_added_removed_files_and_other_settings_are_refused(source, tmp_path):
    out = str(tmp_path / "c.h5")
    build_cache(source, out, SIZE)
    only_b = build_catalog(source, classes=["b"])  # fewer files than the cache holds: fine
    images, ok = Loader(only_b, DecodeOptions(SIZE), cache=ensure_cache(out, only_b, DecodeOptions(SIZE))).decode_batch(
        np.arange(len(only_b)))  # fmt: skip
    np.testing.assert_array_equal(images, _decoded(os.path.join(source, "b"), DecodeOptions(SIZE))[0])
    touched = os.path.join(source, "a", "img_1.jpg")
    st = os.stat(touched)
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(StaleCacheError, match=r"1 changed \(a/img_1\.jpg\)"):
        image_dataset(source, image_size=SIZE, cache=out)
    os.remove(os.path.join(source, "b", "img_5.jpg"))
    _write(os.path.join(source, "b", "new.png"), 7)
    with pytest.raises(StaleCacheError, match=r"1 changed .*; 1 added \(b/new\.png\); 1 removed \(b/img_5\.jpg\)"):
        ensure_cache(out, build_catalog(source), DecodeOptions(SIZE))
    with pytest.raises(StaleCacheError, match=r"image_size: cache \[12, 16\], asked \[16, 16\]"):
        image_dataset(source, image_size=16, cache=out)
    with pytest.raises(StaleCacheError, match="interpolation: cache 'bilinear', asked 'nearest'"):
        build_cache(source, out, SIZE, interpolation="nearest", update=True)


def test_update_decodes_only_changed_and_added_files(source, tmp_path):
    out = str(tmp_path / "c.h5")
    build_cache(source, out, SIZE)
    _write(os.path.join(source, "a", "img_0.png"), 1234, shape=(30, 30))  # new pixels
    _write(os.path.join(source, "b", "new.png"), 7)
    os.remove(os.path.join(source, "b", "img_5.jpg"))
    with open_cache(out) as old:
        reader = old  # an open reader keeps reading the file it opened
        before = reader.read(np.arange(reader.rows))
        report = build_cache(source, out, SIZE, update=True)
        np.testing.assert_array_equal(reader.read(np.arange(reader.rows)), before)
    catalog = build_catalog(source)
    assert (report.images, report.reused, report.failures) == (2, len(catalog) - 3, 1)
    images, ok = _decoded(source, DecodeOptions(SIZE))
    rows = ensure_cache(out, catalog, DecodeOptions(SIZE))  # up to date now
    with open_cache(out) as cache:
        by_path = dict(zip(cache.paths, cache.read(np.arange(cache.rows))))
    for position in np.flatnonzero(ok):
        np.testing.assert_array_equal(by_path[catalog.paths[position]], images[position])
    assert build_cache(source, out, SIZE, update=True).up_to_date
    assert rows.row_of[catalog.paths.index(os.path.join("a", "junk.png"))] == -1


def test_an_update_that_dies_leaves_the_old_cache(source, tmp_path, monkeypatch):
    out = str(tmp_path / "c.h5")
    build_cache(source, out, SIZE)
    with open_cache(out) as cache:
        before = cache.read(np.arange(cache.rows))
    _write(os.path.join(source, "a", "img_0.png"), 1234)
    monkeypatch.setattr(Loader, "load", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_cache(source, out, SIZE, update=True)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["c.h5", "src"]
    with open_cache(out) as cache:
        np.testing.assert_array_equal(cache.read(np.arange(cache.rows)), before)
    with pytest.raises(StaleCacheError, match=r"1 changed \(a/img_0\.png\)"):
        ensure_cache(out, build_catalog(source), DecodeOptions(SIZE))


def test_a_file_changed_after_the_check_is_decoded_not_served_stale(source, tmp_path):
    out = str(tmp_path / "c.h5")
    build_cache(source, out, SIZE)
    catalog, options = build_catalog(source), DecodeOptions(SIZE)
    rows = ensure_cache(out, catalog, options)
    changed = catalog.paths.index(os.path.join("b", "img_6.png"))
    _write(os.path.join(source, "b", "img_6.png"), 4321, shape=(25, 25))
    cached = Loader(catalog, options, cache=rows)
    images, ok = cached.decode_batch(np.arange(len(catalog)), reuse=True)
    expected, expected_ok = _decoded(source, options)
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(ok, expected_ok)
    assert cached.reasons.keys() == {catalog.paths.index(os.path.join("a", "junk.png"))}
    assert not np.array_equal(images[changed], rows.cache.read([rows.row_of[changed]])[0])


def test_an_interrupted_build_resumes(source, tmp_path, monkeypatch):
    out = str(tmp_path / "c.h5")
    catalog, options = build_catalog(source), DecodeOptions(SIZE)
    calls = {"n": 0}
    original = Loader.decode_batch

    def dies_on_third_batch(self, positions, reuse=False):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, positions, reuse)

    monkeypatch.setattr(Loader, "decode_batch", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        cache_build.write_cache(catalog, options, out, "create", threads=1, batch_size=2)
    monkeypatch.undo()
    with ImageCache(out) as partial:
        assert not partial.complete and partial.rows == 4
    with pytest.raises(StaleCacheError, match="unfinished"):
        ImageCache(out).check(catalog, options)
    with pytest.raises(FileExistsError, match="--resume"):
        build_cache(source, out, SIZE)
    report = build_cache(source, out, SIZE, resume=True)
    assert (report.images, report.failures) == (len(catalog) - 5, 1)
    images, ok = _decoded(source, options)
    with open_cache(out) as cache:
        assert cache.complete and cache.paths == [p for p, good in zip(catalog.paths, ok) if good]
        np.testing.assert_array_equal(cache.read(np.arange(cache.rows)), images[ok])


def test_a_process_waits_for_another_ones_build(source, tmp_path, monkeypatch):
    import threading

    from fastfeat.store.lock import StoreLock

    out = str(tmp_path / "c.h5")
    catalog, options = build_catalog(source), DecodeOptions(SIZE)
    monkeypatch.setattr(Loader, "decode_batch", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        cache_build.write_cache(catalog, options, out, "create", threads=1)
    monkeypatch.undo()
    other = StoreLock(out)
    other.acquire()  # "another process" holds the build
    result = {}
    waiter = threading.Thread(target=lambda: result.update(rows=ensure_cache(out, catalog, options)))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and not result
    other.release()  # it died: the waiter completes the build itself
    waiter.join(30)
    assert result["rows"].cache.complete and result["rows"].cache.rows == len(catalog) - 1


def test_rows_are_read_not_mapped_and_shared_by_processes(source, tmp_path):
    out = str(tmp_path / "c.h5")
    build_cache(source, out, SIZE)
    with open_cache(out) as cache:
        mine = cache.read(np.arange(cache.rows)[::-1])
        with open("/proc/self/maps") as f:
            assert os.path.abspath(out) not in f.read()  # RSS cannot grow with the cache
    code = (
        "import sys, numpy as np; from fastfeat.cache import open_cache\n"
        "c = open_cache(sys.argv[1]); sys.stdout.buffer.write(c.read(np.arange(c.rows)[::-1]).tobytes())\n"
        "assert 'tensorflow' not in sys.modules"
    )
    theirs = subprocess.run([sys.executable, "-c", code, out], capture_output=True, timeout=60, check=True).stdout
    assert theirs == mine.tobytes()


def test_cli_builds_updates_and_refuses(source, tmp_path, capsys):
    out = str(tmp_path / "c.h5")
    assert main(["cache", source, "-o", out, "--image-size", "12,16", "--interpolation", "nearest", "--quiet"]) == 0
    with open_cache(out) as cache:
        assert cache.settings["image_size"] == [12, 16] and cache.settings["interpolation"] == "nearest"
    assert main(["cache", source, "-o", out, "--image-size", "12x16"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["cache", source, "-o", out, "--image-size", "12x16", "--interpolation", "nearest", "--update"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["cache", source, "-o", out, "--image-size", "8", "--update", "--quiet"]) == 2
    assert "image_size: cache [12, 16], asked [8, 8]" in capsys.readouterr().err


def test_argument_errors(source, tmp_path):
    with pytest.raises(ValueError, match="Received: image_size=None"):
        build_cache(source, str(tmp_path / "c.h5"), None)
    with pytest.raises(ValueError, match="exclude each other"):
        build_cache(source, str(tmp_path / "c.h5"), 8, overwrite=True, update=True)
    with pytest.raises(ValueError, match="Received: threads=0"):
        build_cache(source, str(tmp_path / "c.h5"), 8, threads=0)
    with pytest.raises(ValueError, match="Received: interpolation='cubic'"):
        build_cache(source, str(tmp_path / "c.h5"), 8, interpolation="cubic")
    with pytest.raises(ValueError, match="Received: out.shape"):
        build_cache(source, str(tmp_path / "c.h5"), 8)
        open_cache(str(tmp_path / "c.h5")).read([0], out=np.empty((1, 8, 8, 3), np.float32))


def test_extract_with_the_cache_gives_the_same_features(source, tiny_model_file, tmp_path):
    import fastfeat
    from fastfeat.store import open_store

    common = dict(model=tiny_model_file, layers=["conv1", "conv3:avg"], image_size=32, batch_size=4,
                  precision="float32", augment={"rotation_range": 20, "horizontal_flip": True}, augment_copies=1,
                  progress=False)  # fmt: skip
    cache = str(tmp_path / "c.h5")
    fastfeat.extract(source, str(tmp_path / "direct.h5"), **common)
    fastfeat.extract(source, str(tmp_path / "cached.h5"), cache=cache, **common)  # built first
    assert main(["extract", source, "-o", str(tmp_path / "cli.h5"), "--model", tiny_model_file, "--layer", "conv1",
                 "--layer", "conv3:avg", "--image-size", "32", "--batch-size", "4", "--precision", "float32",
                 "--augment-copies", "1", "--rotation-range", "20", "--horizontal-flip", "--cache", cache,
                 "--quiet"]) == 0  # fmt: skip
    with open_cache(cache) as c:
        assert c.settings["image_size"] == [32, 32]
    with open_store(str(tmp_path / "direct.h5")) as a:
        for name in ("cached.h5", "cli.h5"):
            with open_store(str(tmp_path / name)) as b:
                assert a.paths == b.paths and a.failures == b.failures
                np.testing.assert_array_equal(a.copies, b.copies)
                for layer in a.layers:
                    assert np.asarray(a.features(layer)).tobytes() == np.asarray(b.features(layer)).tobytes()
    with pytest.raises(StaleCacheError, match="interpolation: cache 'bilinear', asked 'nearest'"):
        fastfeat.extract(source, str(tmp_path / "other.h5"), interpolation="nearest", cache=cache, **common)


def test_build_work_units_cover_every_position_and_end_in_quarter_batches():
    from fastfeat.cache.build import _work_units

    for n in (0, 1, 7, 64, 65, 480, 481):
        units = _work_units(np.arange(n), 32, 2)
        assert np.array_equal(np.concatenate(units) if units else np.arange(0), np.arange(n))
        sizes = [len(u) for u in units]
        assert all(s == 32 for s in sizes[: max(0, (n - 64) // 32)])
        assert all(s <= 8 for s in sizes[-min(len(sizes), 8):]) if n <= 64 or n % 32 == 0 else True
