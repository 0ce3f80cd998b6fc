"""No process-wide state outlives a call: the caller's random generators, OpenCV's thread count
and the Keras dtype policy are as before; a stop request belongs to one run."""

from __future__ import annotations

import random

import cv2
import numpy as np

import fastfeat
from fastfeat.loader import opencv_single_threaded
from fastfeat.runloop import StopToken, request_stop
from fastfeat.store import open_store


def _comes_back(threads: int, timeout: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while cv2.getNumThreads() != threads:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_opencv_threads_restored_after_image_dataset_passes(class_tree):
    from fastfeat import image_dataset

    root, _ = class_tree
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        ds = image_dataset(root, image_size=(16, 16), batch_size=2, preprocess="caffe", seed=0)
        assert cv2.getNumThreads() == 3  # building a dataset changes nothing
        seen = []

        def probe(x, y):
            return x, y

        for i, _ in enumerate(ds.map(probe)):
            seen.append(i)
        # a whole pass; then the next epoch's first batches decode (one OpenCV thread each) and
        # the setting comes back when they are done
        assert seen and _comes_back(3)
        for _ in ds:  # a pass abandoned after one batch
            break
        import gc

        gc.collect()
        assert _comes_back(3)
    finally:
        cv2.setNumThreads(before)


def test_opencv_single_threaded_counts_overlapping_passes():
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        a, b = opencv_single_threaded(), opencv_single_threaded()
        a.__enter__()
        assert cv2.getNumThreads() == 1
        b.__enter__()
        a.__exit__(None, None, None)
        assert cv2.getNumThreads() == 1  # b still runs
        b.__exit__(None, None, None)
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)


def _caller_draws(seed: int = 1234):
    random.seed(seed)
    np.random.seed(seed)


def test_two_extract_calls_leave_the_callers_state_alone(class_tree, tiny_model_file, tmp_path):
    import keras

    root, expected = class_tree
    _caller_draws()
    reference = [random.random(), np.random.random()]
    policy_before = keras.config.dtype_policy().name
    cv2.setNumThreads(3)
    try:
        _caller_draws()
        first = fastfeat.extract(root, tmp_path / "a.h5", model="mobilenetv2", layers=["out_relu:avg"], image_size=32,
                                 weights=None, precision="float32", batch_size=4, progress=False)  # fmt: skip
        second = fastfeat.extract(root, tmp_path / "b.h5", model=tiny_model_file, layers=["conv2:max", "conv1"],
                                  precision="float32", dtype="float16", batch_size=3, interpolation="nearest",
                                  progress=False)  # fmt: skip
        assert [random.random(), np.random.random()] == reference  # not reseeded by the random init
        assert keras.config.dtype_policy().name == policy_before
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(1)
    assert first.images == second.images == len(expected)
    with open_store(tmp_path / "a.h5") as a, open_store(tmp_path / "b.h5") as b:
        assert a.meta["init_seed"] == 0 and a.layers == ["out_relu:avg"] and sorted(b.layers) == ["conv1", "conv2:max"]
    again = fastfeat.extract(root, tmp_path / "c.h5", model="mobilenetv2", layers=["out_relu:avg"], image_size=32,
                             weights=None, precision="float32", batch_size=4, progress=False)  # fmt: skip
    with open_store(tmp_path / "a.h5") as a, open_store(tmp_path / "c.h5") as c:
        assert again.images == len(expected)
        np.testing.assert_array_equal(a.features()[:], c.features()[:])  # the seeded init still reproduces


def test_a_stop_request_belongs_to_one_run(class_tree, tiny_model_file, tmp_path):
    root, expected = class_tree
    common = dict(model=tiny_model_file, layers=["conv3:avg"], precision="float32", batch_size=2, progress=False)
    token = StopToken()
    token.set()  # this run's own stop: it ends after its first batch, resumable
    stopped = fastfeat.extract(root, tmp_path / "a.h5", stop=token, **common)
    assert stopped.interrupted and stopped.images == 2
    request_stop()  # no run is going on: not remembered by the next one
    other = fastfeat.extract(root, tmp_path / "b.h5", **common)
    assert not other.interrupted and other.images == len(expected)
    resumed = fastfeat.extract(root, tmp_path / "a.h5", resume=True, **common)
    assert not resumed.interrupted and resumed.images == len(expected) - 2


def test_a_reduced_precision_run_leaves_the_global_dtype_policy(class_tree, tiny_model_file, tmp_path):
    import keras

    root, expected = class_tree
    before = keras.config.dtype_policy().name
    report = fastfeat.extract(root, tmp_path / "bf16.h5", model=tiny_model_file, layers=["conv3:avg"],
                              precision="mixed_bfloat16", batch_size=4, progress=False)  # fmt: skip
    assert report.images == len(expected) and report.precision == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == before
