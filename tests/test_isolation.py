"""No process-wide state outlives a call: the caller's random generators, OpenCV's thread count
and the Keras dtype policy are as before; a stop request belongs to one run."""

from __future__ import annotations

import random
import threading

import cv2
import numpy as np
import pytest

from fastfeat.loader import opencv_single_threaded


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
        assert seen and cv2.getNumThreads() == 3  # a whole pass
        for _ in ds:  # a pass abandoned after one batch
            break
        import gc

        gc.collect()
        assert cv2.getNumThreads() == 3
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
