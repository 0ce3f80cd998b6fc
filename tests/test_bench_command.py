"""`fastfeat bench` through the real parser: a table that fits 100 columns, Keras' "Found N images"
chatter not repeated per candidate, and a loud warning when the sample is too small to measure anything."""

from __future__ import annotations

import json

from fastfeat.bench import MIN_MEANINGFUL_IMAGES, sample_warning
from fastfeat.cli import main


def test_bench_on_a_tiny_folder_warns_and_fits_100_columns(class_tree, tmp_path, capsys):
    root, expected = class_tree
    out = tmp_path / "bench.json"
    argv = ["bench", str(root), "--image-size", "32", "--batch-size", "4", "--repeats", "1", "--json", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    table = [line for line in captured.out.splitlines() if line.strip()]
    assert max(len(line) for line in table) <= 100, max(table, key=len)
    assert captured.out.count("Found ") == 0  # flow_from_directory's line, once per candidate before
    assert f"only {len(expected)} images" in captured.err and "start-up" in captured.err
    saved = json.loads(out.read_text())
    assert {"note", "% of limit (cpu)", "min", "max"} <= set(saved["rows"][0])  # the JSON keeps every column


def test_sample_warning_threshold():
    assert sample_warning(MIN_MEANINGFUL_IMAGES, 32) is None
    text = sample_warning(6, 32)
    assert "only 6 images" in text and "1 batch" in text


def test_benchmark_tables_print_with_no_rows(capsys):
    """bench_extract with only --precisions auto has no summary rows (it raised TypeError)."""
    from benchmarks.common import print_table

    print_table([], ["model"], title="Goals")
    assert capsys.readouterr().out.split("\n")[1:4] == ["Goals", "model", "-----"]
