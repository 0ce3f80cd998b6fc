"""The command line, through the real parser, then the file it wrote."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from fastfeat.cli import build_parser, main
from fastfeat.models import models
from fastfeat.store import open_store


def test_extract_command_writes_store(class_tree, tiny_model_file, tmp_path, capsys):
    root, expected = class_tree
    out = tmp_path / "cli.h5"
    argv = f"extract {root} -o {out} --model {tiny_model_file} --layer conv1 --layer conv2:avg --batch-size 4"
    assert main(argv.split()) == 0
    summary = capsys.readouterr().out
    assert "9 images" in summary and "0 failed" in summary and "images/s" in summary
    with open_store(out) as store:
        assert store.layers == ["conv1", "conv2:avg"]
        assert store.paths == expected
        assert store.features("conv2:avg").shape == (9, 16)


def test_extract_command_pool_flag_and_dtype(class_tree, tiny_model_file, tmp_path):
    root, _ = class_tree
    out = tmp_path / "p.h5"
    argv = ["extract", str(root), "-o", str(out), "--model", tiny_model_file, "--layer", "conv2",
            "--pool", "max", "--dtype", "float16", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    with open_store(out) as store:
        assert store.layers == ["conv2:max"]
        assert store.features("conv2:max").dtype == np.float16


def test_existing_output_is_an_error_with_exit_status_2(class_tree, tiny_model_file, tmp_path, capsys):
    root, _ = class_tree
    out = tmp_path / "e.h5"
    argv = ["extract", str(root), "-o", str(out), "--model", tiny_model_file, "--layer", "conv3", "--quiet"]
    assert main(argv) == 0
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


def test_unknown_model_error(tmp_path, class_tree, capsys):
    root, _ = class_tree
    assert main(["extract", str(root), "-o", str(tmp_path / "x.h5"), "--model", "resnet51", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Unknown model 'resnet51'" in err and "resnet50" in err


def test_overwrite_and_resume_are_exclusive(class_tree, tmp_path):
    root, _ = class_tree
    with pytest.raises(SystemExit):
        build_parser().parse_args(["extract", str(root), "-o", "x.h5", "--overwrite", "--resume"])


def test_models_command_lists_every_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in models():
        assert f"\n{name} " in out
    assert "vgg19" in out and "224x224" in out and "caffe" in out


def test_layers_command_on_model_file(tiny_model_file, capsys):
    assert main(["layers", tiny_model_file]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "(32, 32, 8)" in out and "(16, 16, 16)" in out


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "fastfeat", "--version"], capture_output=True, text=True, check=True)
    from fastfeat import __version__

    assert proc.stdout.strip() == f"fastfeat {__version__}"


def test_import_is_cheap():
    """`import fastfeat` and opening a store must not import TensorFlow."""
    code = "import sys, fastfeat; fastfeat.open_store; fastfeat.build_catalog; print('tensorflow' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    assert proc.stdout.strip() == "False"


def test_on_error_raise_exits_with_a_message(tmp_path, tiny_model_file, capsys):
    from conftest import write_image

    write_image(tmp_path / "imgs" / "a.png", 1)
    (tmp_path / "imgs" / "b.png").write_bytes(b"not an image at all")
    argv = ["extract", str(tmp_path / "imgs"), "-o", str(tmp_path / "x.h5"), "--model", tiny_model_file,
            "--layer", "conv3", "--on-error", "raise", "--quiet"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "b.png" in err and "--resume" in err


def test_max_pixels_flag():
    parse = build_parser().parse_args
    assert parse(["extract", "d", "-o", "x.h5", "--max-pixels", "none"]).max_pixels is None
    assert parse(["extract", "d", "-o", "x.h5", "--max-pixels", "1000"]).max_pixels == 1000
    with pytest.raises(SystemExit):
        parse(["extract", "d", "-o", "x.h5", "--max-pixels", "0"])


def test_bench_command_prints_the_loader_table(class_tree, tmp_path, capsys):
    root, _ = class_tree
    out = tmp_path / "bench.json"
    argv = ["bench", str(root), "--image-size", "32", "--batch-size", "4", "--repeats", "1", "--no-augment",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    for name in ("fastfeat", "flow_from_directory", "image_dataset_from_directory", "opencv limit"):
        assert name in table
    import json

    payload = json.loads(out.read_text())
    assert {row["loader"] for row in payload["rows"]} >= {"fastfeat", "opencv limit"} and payload["rates"]
