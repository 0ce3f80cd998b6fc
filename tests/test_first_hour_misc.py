"""Issue 16, findings 5, 8 (model file safe mode), 9, 10, 12: one line for a mismatched
--weights file, merge refuses another precision, info shows copies and the augmentation, the
Python API mutes TensorFlow, warnings without our source line, a broken pipe exits quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastfeat.cli import main
from fastfeat.store import StoreWriter, open_store


def test_a_weights_file_of_another_model_is_one_error_line(class_tree, tmp_path, capsys):
    import keras

    path = str(tmp_path / "mnv2.weights.h5")
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    root, _ = class_tree
    argv = ["extract", str(root), "-o", str(tmp_path / "w.h5"), "--model", "resnet50", "--weights", path,
            "--image-size", "32", "--precision", "float32", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastfeat: error: The weights file")
    assert "does not fit resnet50" in lines[0] and "Received: --weights=" in lines[0] and len(lines[0]) < 500
    assert not (tmp_path / "w.h5").exists()


def test_a_model_file_with_code_names_the_flag(class_tree, tmp_path, capsys):
    import keras

    path = tmp_path / "lambda.keras"
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(keras.layers.Conv2D(4, 3, name="conv")(inputs))
    keras.Model(inputs, x).save(path)
    root, _ = class_tree
    argv = ["extract", str(root), "-o", str(tmp_path / "l.h5"), "--model", str(path), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--unsafe-model" in err and "Received: --unsafe-model=False" in err


def _store(path, precision, rows=3):
    meta = {"model": "toy", "layers": ["conv"], "precision": precision, "dtype": "float32"}
    w = StoreWriter(path, {"conv": ((2,), "float32")}, rows, ["a"], meta)
    w.append({"conv": np.ones((rows, 2), np.float32)}, np.zeros(rows, np.int64), [f"a/{i}.png" for i in range(rows)],
             np.arange(rows))  # fmt: skip
    w.commit()
    w.close(complete=True)
    return str(path)


def test_merge_refuses_stores_of_another_precision(tmp_path, capsys):
    a, b = _store(tmp_path / "a.h5", "float32"), _store(tmp_path / "b.h5", "mixed_bfloat16")
    assert main(["merge", a, b, "-o", str(tmp_path / "m.h5")]) == 2
    err = capsys.readouterr().err
    assert "precision:" in err and "'float32'" in err and "'mixed_bfloat16'" in err
    assert not (tmp_path / "m.h5").exists()
    c = _store(tmp_path / "c.h5", "float32")
    assert main(["merge", a, c, "-o", str(tmp_path / "m.h5")]) == 0


def test_info_and_summary_show_images_rows_and_copies(class_tree, tiny_model_file, tmp_path, capsys):
    root, _ = class_tree
    out = tmp_path / "aug.h5"
    argv = ["extract", str(root), "-o", str(out), "--model", tiny_model_file, "--layer", "conv3:avg",
            "--augment-copies", "3", "--horizontal-flip", "--rotation-range", "10", "--precision", "float32"]  # fmt: skip
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert "9 images (36 rows with their augmented copies)" in summary
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "36 (9 images x (1 + 3 augmented copies))" in text
    assert "augmentation: " in text and "horizontal_flip=True" in text and "rotation_range=10" in text
    assert "dogs: 4 images, 16 rows" in text
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["images"] == 9 and info["rows"] == 36 and info["augment_copies"] == 3
    assert info["class_images"] == {"cats": 3, "dogs": 4, "eels": 2} and info["augment"]["horizontal_flip"]


def _clean_env():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "FASTFEAT_TF_VERBOSE")}
    return {**env, "PYTHONWARNINGS": "ignore"}


def test_the_python_api_mutes_tensorflow_start_up(class_tree, tiny_model_file, tmp_path):
    root, _ = class_tree
    code = (
        "import fastfeat; fastfeat.extract(%r, %r, model=%r, layers='conv3', precision='float32', progress=False)"
        % (str(root), str(tmp_path / "api.h5"), tiny_model_file)
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    for chatter in ("oneDNN", "absl", "cuda", "cpu_feature_guard", "Memory patch"):
        assert chatter not in done.stderr, done.stderr


def test_cli_warnings_are_one_line_without_our_source(tmp_path, capsys):
    import warnings

    import fastfeat.cli as cli

    assert cli._format_warning("x happened", RuntimeWarning, "/src/fastfeat/a.py", 3) == "fastfeat: warning: x happened\n"
    assert warnings.formatwarning is not cli._format_warning  # only while main runs


def test_info_into_a_closed_pipe_exits_quietly(tmp_path):
    path = _store(tmp_path / "p.h5", "float32")
    child = subprocess.Popen([sys.executable, "-m", "fastfeat", "info", path, "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=_clean_env())  # fmt: skip
    child.stdout.close()  # the reader is gone before the first line (`| head -0`)
    with child.stderr:
        err = child.stderr.read().decode()
    assert child.wait(timeout=60) == 0
    assert "Broken pipe" not in err and "Traceback" not in err


def test_info_of_a_plain_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastfeat: error:") and "0x" not in err


def test_a_store_clearly_too_big_for_the_disk_is_refused_up_front(class_tree, tiny_model_file, tmp_path, monkeypatch,
                                                                  capsys):  # fmt: skip
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**6, 10**6 - 1000, 1000))
    root, _ = class_tree
    out = tmp_path / "big.h5"
    argv = ["extract", str(root), "-o", str(out), "--model", tiny_model_file, "--layer", "conv1",
            "--precision", "float32"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "fastfeat: 9 rows x 32.0 KB = 288.0 KB of features" in err  # the estimate, up front
    assert "Not enough disk space" in err and "288.0 KB" in err and "--no-space-check" in err
    assert not out.exists()
    assert main(argv + ["--no-space-check", "--quiet"]) == 0
    with open_store(out) as store:
        assert len(store) == 9


def test_disk_full_at_creation_says_no_file_is_left_and_a_rerun_works(class_tree, tiny_model_file, tmp_path,
                                                                      monkeypatch, capsys):  # fmt: skip
    import errno

    import fastfeat.store.create as create

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(create, "reserve", full)
    root, _ = class_tree
    out = tmp_path / "full.h5"
    argv = ["extract", str(root), "-o", str(out), "--model", tiny_model_file, "--layer", "conv3",
            "--precision", "float32", "--quiet"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "nothing was written and no file is left" in err and "--resume" not in err
    assert not out.exists() and not os.path.exists(f"{out}.creating")
    monkeypatch.undo()
    assert main(argv + ["--resume"]) == 0  # what a user tries next: works (there is nothing to resume)
    with open_store(out) as store:
        assert store.complete and len(store) == 9


def test_one_warning_for_dropped_classes_and_one_for_loose_images(class_tree, tiny_model_file, tmp_path, capsys):
    from conftest import write_image

    root, _ = class_tree
    write_image(root / "loose_1.png", 1)
    write_image(root / "loose_2.png", 2)
    argv = ["extract", str(root), "-o", str(tmp_path / "c.h5"), "--model", tiny_model_file, "--layer", "conv3",
            "--classes", "dogs,cats", "--precision", "float32", "--quiet"]  # fmt: skip
    with pytest.warns(UserWarning) as caught:
        assert main(argv) == 0
    texts = [str(w.message) for w in caught]
    assert len(texts) == 2
    assert "keeps 2 class folders" in texts[0] and "'eels'" in texts[0] and "--classes" in texts[0]
    assert texts[1].startswith("2 images lie in") and "'loose_1.png'" in texts[1]
    with open_store(tmp_path / "c.h5") as store:
        assert store.class_names == ["dogs", "cats"] and len(store) == 7


def test_cli_prints_a_warning_as_one_line(class_tree, tiny_model_file, tmp_path):
    from conftest import write_image

    root, _ = class_tree
    write_image(root / "loose.png", 1)
    argv = [sys.executable, "-m", "fastfeat", "extract", str(root), "-o", str(tmp_path / "c.h5"), "--model",
            tiny_model_file, "--layer", "conv3", "--precision", "float32", "--quiet"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, env={**_clean_env(), "PYTHONWARNINGS": "default"},
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("fastfeat: warning: 1 images lie in") and done.stderr.count("\n") == 1, done.stderr
    assert ".py:" not in done.stderr and "warnings.warn" not in done.stderr


def test_float16_counts_values_flushed_to_zero(tmp_path):
    w = StoreWriter(tmp_path / "u.h5", {"v": ((4,), "float16")}, 1, [], {})
    w.append({"v": np.array([[1e-9, 1.0, 0.0, 1e6]], np.float32)}, [0], ["a"], [0])
    assert w.underflow == 1 and w.overflow == 1 and w.float16_values == 4
    w.close(complete=True)


def test_a_float16_store_of_tiny_values_warns_and_the_summary_counts_them(class_tree, tmp_path, capsys):
    import keras

    path = tmp_path / "tiny_out.keras"
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(2, 3, name="conv", kernel_initializer="ones")(inputs)
    keras.Model(inputs, keras.layers.Rescaling(1e-12, name="tiny")(x)).save(path)
    root, _ = class_tree
    argv = ["extract", str(root), "-o", str(tmp_path / "f16.h5"), "--model", str(path), "--dtype", "float16",
            "--precision", "float32"]  # fmt: skip
    with pytest.warns(RuntimeWarning, match=r"too small for float16 .* stored as 0.*--dtype float32"):
        assert main(argv) == 0
    captured = capsys.readouterr()
    assert "nonzero values stored as 0" in captured.out
    assert "is a model file: its inputs are raw 0..255 pixels" in captured.err  # said once, not silent
