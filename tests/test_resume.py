"""Interruption: a `fastfeat extract` killed at any moment is completed by `--resume` to exactly
the store an uninterrupted run gives (same rows, same order, bitwise-equal float32 features)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastfeat.store import open_store

N_IMAGES = 160


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from conftest import write_image

    root = tmp_path_factory.mktemp("resume") / "images"
    for i in range(N_IMAGES):
        write_image(root / f"class_{i % 3}" / f"{i:04d}.png", i, size=(32 + i % 7, 32))
    (root / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


def _argv(folder, out, model_file, *extra):
    return [
        sys.executable, "-m", "fastfeat", "extract", str(folder), "-o", str(out), "--model", model_file,
        "--layer", "conv1", "--layer", "conv3:avg", "--batch-size", "4", "--precision", "float32", "--quiet", *extra,
    ]  # fmt: skip


def _env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def clean_store(folder, tiny_model_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "clean.h5"
    subprocess.run(_argv(folder, out, tiny_model_file), check=True, env=_env(), capture_output=True)
    return out


def _assert_same_store(a, b):
    with open_store(a) as x, open_store(b) as y:
        assert x.complete and y.complete
        assert x.paths == y.paths
        np.testing.assert_array_equal(x.labels, y.labels)
        assert x.failures == y.failures
        for layer in x.layers:
            assert np.array_equal(np.asarray(x.features(layer)), np.asarray(y.features(layer))), layer


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_then_resume_equals_clean_run(folder, tiny_model_file, clean_store, tmp_path, seed):
    out = tmp_path / "killed.h5"
    proc = subprocess.Popen(_argv(folder, out, tiny_model_file), env=_env(), stderr=subprocess.DEVNULL)
    # wait until the store exists (start-up done), then kill at a random moment of the run
    deadline = time.monotonic() + 60
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(_argv(folder, out, tiny_model_file, "--resume"), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_store(out, clean_store)


def test_ctrl_c_leaves_resumable_store(folder, tiny_model_file, clean_store, tmp_path):
    out = tmp_path / "interrupted.h5"
    proc = subprocess.Popen(_argv(folder, out, tiny_model_file), env=_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # interrupt as soon as the store exists: the run stops after its first batch
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130, err
    with pytest.warns(UserWarning, match="incomplete"):
        store = open_store(out)
    with store:
        assert not store.complete
        assert len(store) < N_IMAGES
    subprocess.run(_argv(folder, out, tiny_model_file, "--resume"), check=True, env=_env(), capture_output=True)
    _assert_same_store(out, clean_store)


def test_second_writer_of_the_same_output_is_refused(folder, tiny_model_file, tmp_path):
    """Two runs writing one output: the second one refuses (the writer's lock), the first completes."""
    import fastfeat
    from fastfeat.store.writer import StoreLockedError, StoreWriter

    out = tmp_path / "locked.h5"
    holder = StoreWriter(out, {"x": ((2,), "float32")}, capacity=4, class_names=[], meta={}, mode="create")
    try:
        with pytest.raises(StoreLockedError, match="another process|being written"):
            fastfeat.extract(folder, out, model=tiny_model_file, layers=["conv3:avg"], overwrite=True, progress=False)
    finally:
        holder.close(complete=True)
    report = fastfeat.extract(folder, out, model=tiny_model_file, layers=["conv3:avg"], overwrite=True, progress=False)
    assert report.images == N_IMAGES
