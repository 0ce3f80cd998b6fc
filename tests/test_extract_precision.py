"""extract() with precision auto/explicit, automatic batch size and --device (issue 5 integration)."""

from __future__ import annotations

import fastfeat
from fastfeat.store import open_store
from fastfeat import precision as P


def test_auto_default(class_tree, tiny_model_file, tmp_path):
    root, expected = class_tree
    out = tmp_path / "a.h5"
    report = fastfeat.extract(root, out, model=tiny_model_file, layers=["conv2"], batch_size=4, device="cpu",
                              progress=False)  # fmt: skip  (on a GPU machine too)
    assert report.precision in P.native_precisions("cpu")
    auto = report.precision_auto
    assert auto["choice"] == report.precision and auto["source"] in ("native", "measured", "cached", "skipped")
    with open_store(out) as s:
        m = s.meta
        assert m["precision"] == report.precision and m["precision_requested"] == "auto"
        assert m["precision_auto"]["choice"] == report.precision and m["device"] == "cpu"
        assert m["runtime"]["threads"]["cores"] >= 1
    assert "precision" in report.summary()


def test_explicit_bf16_and_auto_batch(class_tree, tiny_model_file, tmp_path):
    root, expected = class_tree
    out = tmp_path / "c.h5"
    report = fastfeat.extract(root, out, model=tiny_model_file, layers=["conv2"], precision="mixed_bfloat16", progress=False)
    assert report.precision == "mixed_bfloat16" and report.precision_auto is None
    assert report.batch_size == len(expected)  # automatic: capped by the number of images
    with open_store(out) as s:
        assert s.meta["batch_size_auto"] is True and s.meta["precision"] == "mixed_bfloat16"


def test_cli(class_tree, tiny_model_file, tmp_path):
    from fastfeat.cli import main
    root, expected = class_tree
    assert main([ "extract", str(root), "-o", str(tmp_path / "d.h5"), "--model", tiny_model_file, "--layer", "conv1",
                  "--device", "cpu", "--quiet"]) == 0
    assert main([ "extract", str(root), "-o", str(tmp_path / "r.h5"), "--model", tiny_model_file, "--layer", "conv1",
                  "--remeasure-precision", "--quiet"]) == 0
    with open_store(tmp_path / "r.h5") as s:
        assert s.meta["precision_auto"]["source"] in ("native", "measured")
    assert main([ "extract", str(root), "-o", str(tmp_path / "e.h5"), "--model", tiny_model_file, "--layer", "conv1",
                  "--device", "tpu", "--quiet"]) == 2
