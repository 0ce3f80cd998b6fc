"""The loader's buffers: aligned float32 batches (shared with TensorFlow, not copied), images decoded
into their batch slot, a reused per-thread decode buffer, and tf.data without the autotuner."""

from __future__ import annotations

import numpy as np
import pytest

from fastfeat.augment import Augment
from fastfeat.catalog import build_catalog
from fastfeat.decode import decode_image, load_image
from fastfeat.kernels import empty_aligned
from fastfeat.loader import DecodeOptions, Loader

from conftest import write_image

SIZE = (16, 20)


def make_loader(root, **kwargs) -> Loader:
    return Loader(build_catalog(root), DecodeOptions(SIZE, "bilinear"), normalization="caffe", **kwargs)


@pytest.mark.parametrize("shape", [(0, 4, 4, 3), (1,), (3, 5, 7, 3), (32, 224, 224, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.float64])
def test_empty_aligned(shape, dtype):
    a = empty_aligned(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    assert a.size == 0 or a.ctypes.data % 64 == 0  # an empty array has no data to align
    a[...] = 1  # the whole extent is writable memory
    assert a.size == 0 or a.sum() == a.size


def test_decode_into_out(class_tree):
    root, expected = class_tree
    path = root / expected[4]
    data = path.read_bytes()
    batch = np.full((3, *SIZE, 3), 7, np.uint8)
    result = decode_image(data, SIZE, out=batch[1])
    assert np.shares_memory(result, batch) and result.base is not None
    np.testing.assert_array_equal(batch[1], decode_image(data, SIZE))
    assert (batch[0] == 7).all() and (batch[2] == 7).all()  # neighbours untouched
    unresized = np.empty((*decode_image(data, None).shape[:2], 3), np.uint8)  # no resize: copied in
    np.testing.assert_array_equal(load_image(path, unresized.shape[:2], out=unresized), decode_image(data, None))


@pytest.mark.parametrize(
    "out, size",
    [
        (np.empty((16, 21, 3), np.uint8), SIZE),  # wrong shape
        (np.empty((16, 20, 3), np.float32), SIZE),  # wrong dtype
        (np.empty((16, 40, 3), np.uint8)[:, ::2], SIZE),  # not contiguous
        (np.empty((16, 20, 3), np.uint8), None),  # no size
    ],
)
def test_decode_out_is_checked(class_tree, out, size):
    root, expected = class_tree
    with pytest.raises(ValueError, match="`out`"):
        decode_image((root / expected[0]).read_bytes(), size, out=out)


def test_load_batch_rows_are_aligned_and_right(class_tree):
    root, _ = class_tree
    aug = Augment(rotation_range=20, horizontal_flip=True)
    loader = make_loader(root, copies=[aug.batch_transform("caffe", seed=1, copy=1)])
    positions = np.arange(len(loader.catalog))
    rows, row_positions, ok, copy = loader.load_batch(positions)
    n = len(positions)
    assert rows.ctypes.data % 64 == 0 and rows.shape == (2 * n, *SIZE, 3)
    images = np.stack([load_image(loader.catalog.abspath(i), SIZE) for i in positions])
    from fastfeat.preprocess import get_normalization

    np.testing.assert_array_equal(rows[:n], get_normalization("caffe").apply(images))
    np.testing.assert_array_equal(rows[n:], aug.batch_transform("caffe", seed=1, copy=1)(images, positions))
    np.testing.assert_array_equal(row_positions, np.tile(positions, 2))
    np.testing.assert_array_equal(copy, np.repeat([0, 1], n))
    assert ok.all()


def test_transform_out(class_tree):
    x = np.random.default_rng(0).integers(0, 256, (4, *SIZE, 3), dtype=np.uint8)
    transform = Augment(rotation_range=30, zoom_range=0.2).batch_transform("tf", seed=3)
    fresh = transform(x, np.arange(4))
    assert fresh.ctypes.data % 64 == 0
    out = np.zeros((8, *SIZE, 3), np.float32)
    assert np.shares_memory(transform(x, np.arange(4), out=out[2:6]), out)
    np.testing.assert_array_equal(out[2:6], fresh)
    assert not out[:2].any() and not out[6:].any()
    with pytest.raises(ValueError, match="`out`"):
        transform(x, np.arange(4), out=np.zeros((4, *SIZE, 3), np.float64))


def test_reused_decode_buffer_zeroes_failed_images(tmp_path):
    """A per-thread buffer reused across batches: an unreadable file must not show the image that
    sat in its slot in the previous batch."""
    root = tmp_path / "images"
    for i in range(4):
        write_image(root / "a" / f"img_{i}.png", 100 + i)
    (root / "a" / "img_2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # third file unreadable
    loader = make_loader(root)
    first, ok_first = loader.decode_batch(np.array([0, 1]), reuse=True)
    assert ok_first.all() and first.any()
    second, ok_second = loader.decode_batch(np.array([3, 2]), reuse=True)
    assert np.shares_memory(first, second)  # the same scratch memory, no new pages per batch
    np.testing.assert_array_equal(ok_second, [True, False])
    assert not second[1].any()
    np.testing.assert_array_equal(second[0], load_image(loader.catalog.abspath(3), SIZE))
    assert 2 in loader.reasons
    fresh, _ = loader.decode_batch(np.array([0, 1]))
    assert not np.shares_memory(fresh, second)  # without reuse: a new buffer each call


def test_pipelines_know_their_length_and_restart(class_tree):
    """Known cardinality (progress bars), each iteration a whole pass, no autotuner (nothing to
    tune: ordered_map fixes parallelism and run-ahead; it capped image_dataset at ~760 img/s)."""
    from fastfeat import image_dataset

    root, _ = class_tree
    loader = make_loader(root)
    datasets = [loader.dataset(np.arange(len(loader.catalog)), 4),
                image_dataset(root, image_size=SIZE, batch_size=4, preprocess="caffe", seed=0)]  # fmt: skip
    for ds in datasets:
        assert ds.options().autotune.enabled is False
        assert int(ds.cardinality()) == 3  # 9 images in batches of 4: known, for progress bars
        for _ in range(2):  # each iteration is a whole pass
            assert sum(int(batch[0].shape[0]) for batch in ds) == len(loader.catalog)


def test_ordered_map_keeps_order_and_runs_in_parallel():
    import threading
    import time

    from fastfeat.loader import ordered_map

    lock = threading.Lock()
    running, peak = [0], [0]
    both_running = threading.Barrier(2, timeout=10)  # deadlocks (BrokenBarrierError) unless 2 run at once

    def work(k):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        if k < 2:
            both_running.wait()
        time.sleep(0.002 * ((7 * k) % 5))  # finish out of order
        with lock:
            running[0] -= 1
        return k * k

    assert list(ordered_map(work, range(20), threads=2, ahead=3)) == [k * k for k in range(20)]
    assert peak[0] == 2


def test_ordered_map_is_bounded_and_stops_early():
    import threading
    import time

    from fastfeat.loader import ordered_map

    started = []
    lock = threading.Lock()

    def work(k):
        with lock:
            started.append(k)
        return k

    results = ordered_map(work, range(1000), threads=2, ahead=3)
    assert next(results) == 0
    time.sleep(0.2)  # a slow consumer: the workers must not run the whole input ahead
    assert len(started) <= 2 + 3 + 1
    results.close()  # the consumer stops: waiting items are cancelled, no new ones start
    count = len(started)
    time.sleep(0.1)
    assert len(started) == count <= 6


def test_ordered_map_raises_in_order_and_checks_arguments():
    from fastfeat.loader import ordered_map

    def work(k):
        if k == 3:
            raise RuntimeError("boom at 3")
        return k

    results = ordered_map(work, range(10), threads=2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="boom at 3"):
        next(results)
    with pytest.raises(ValueError, match="threads"):
        next(ordered_map(work, range(3), threads=0))
    assert list(ordered_map(work, [], threads=2)) == []


def _page_faults_of_large_blocks(count: int = 40, size: int = 1 << 20) -> int:
    """Minor page faults while a 1 MB block is allocated, written and freed ``count`` times."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        block = np.empty(size, np.uint8)
        block[:] = 1
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_large_blocks_are_reused_after_a_pipeline_pass(class_tree):
    """TensorFlow's from_generator fixes glibc's mmap threshold at 128 KB on Python 3.11: every
    decoded photo and batch buffer was then a fresh mmap (1.5 ms of kernel time per image here).
    After a pass of our pipeline, freed 1 MB blocks must be reused, not unmapped and faulted in."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    root, _ = class_tree
    loader = make_loader(root)
    assert sum(int(batch[0].shape[0]) for batch in loader.dataset(np.arange(len(loader.catalog)), 4)) == 9
    _page_faults_of_large_blocks(2)  # the first block may fault its pages in once
    assert _page_faults_of_large_blocks() < 40 * 256 // 4  # 256 pages per block if each were a new mmap


def test_malloc_tuning_can_be_turned_off(monkeypatch):
    from fastfeat.loader import keep_large_allocations

    monkeypatch.setenv("FASTFEAT_MALLOC_TUNING", "0")
    assert keep_large_allocations() is False


@pytest.mark.parametrize("mode", ["none", "caffe", "tf", "torch", "rescale"])
def test_normalize_is_exactly_keras(class_tree, mode):
    """Every mode, including the plain cast used for ``none``, equals Normalization.apply bit for bit."""
    from fastfeat.preprocess import get_normalization

    norm = get_normalization(mode)
    assert norm.is_identity == (mode == "none")
    images = np.random.default_rng(1).integers(0, 256, (3, *SIZE, 3), dtype=np.uint8)
    loader = Loader(build_catalog(class_tree[0]), DecodeOptions(SIZE), normalization=mode)
    out = loader.normalize(images, np.arange(3))
    assert out.dtype == np.float32 and out.ctypes.data % 64 == 0
    np.testing.assert_array_equal(out, norm.apply(images))


def test_transforms_returning_new_arrays_still_fill_their_rows(class_tree):
    """The batch-function contract is "write into out when given"; one that returns a new array
    instead must not leave uninitialised rows."""
    root, _ = class_tree

    def returns_new(images, positions, out=None):
        return np.full(images.shape, 7.0, np.float32)

    loader = make_loader(root, copies=[returns_new])
    rows, _, ok, copy = loader.load_batch(np.arange(4))
    assert ok.all() and (rows[copy == 1] == 7.0).all()
