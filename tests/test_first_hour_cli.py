"""Issue 16, findings 2-4, 6-8: misuse answered before TensorFlow is imported, in flag names;
no image read -> exit 1; Ctrl-C in the first seconds -> 130, one line; --resume takes the store's
settings and returns at once on a complete store. Everything through the real parser."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from fastfeat.cli import main
from fastfeat.store import open_store

#: Runs fastfeat.cli.main on each argv of a JSON list; prints the exit statuses, stderr and
#: whether TensorFlow was imported (a check that answers before the import never loads it).
_PROBE = r"""
import contextlib, io, json, sys
from fastfeat.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    results.append([rc, err.getvalue()])
print(json.dumps({"results": results, "tensorflow": "tensorflow" in sys.modules}))
"""


def _probe(*argvs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(list(argvs))], capture_output=True, text=True,
                          env=env, timeout=120, check=True)  # fmt: skip
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return answer["results"], answer["tensorflow"]


def _extract(root, out, *extra):
    return ["extract", str(root), "-o", str(out), *extra]


def test_misuse_is_answered_before_tensorflow_in_flag_names(class_tree, tmp_path):
    root, _ = class_tree
    existing = tmp_path / "exists.h5"
    existing.write_bytes(b"")
    out = str(tmp_path / "new.h5")
    cases = [  # (argv, exit status, text the message must contain)
        (_extract(root, existing, "--model", "resnet50"), 2, "--overwrite"),
        (_extract(root, out, "--image-size", "0"), 2, "`--image-size` must be a positive int"),
        (_extract(root, out, "--batch-size", "-1"), 2, "`--batch-size` must be >= 1"),
        (_extract(tmp_path / "missing", out), 2, "Received: SOURCE="),
        (_extract(root, tmp_path), 2, "`-o` must be a .h5 file path, not a folder"),
        (_extract(root, tmp_path, "--overwrite"), 2, "`-o` must be a .h5 file path, not a folder"),
        (_extract(root, str(tmp_path / "sub") + "/"), 2, "`-o` must be a .h5 file path, not a folder"),
        (_extract(root, out, "--max-pixels", "abc"), 2, "argument --max-pixels: must be a positive int or 'none'"),
        (_extract(root, out, "--zoom-range", "big"), 2, "argument --zoom-range: must be a number"),
        (_extract(root, out, "--dtype", "float64"), 2, "argument --dtype: invalid choice"),
        (_extract(root, out, "--augment-copies", "2"), 2, "--augment-copies K needs an augmentation"),
        (_extract(root, out, "--horizontal-flip"), 2, "add --augment-copies K"),
        (_extract(root, out, "--model", "resnet50", "--image-size", "16"), 2, "Received: --image-size="),
    ]
    results, tensorflow = _probe(*(argv for argv, _, _ in cases))
    for (argv, rc, text), (got_rc, err) in zip(cases, results):
        assert got_rc == rc and text in err, (argv, got_rc, err)
        assert "_max_pixels" not in err and "_floats" not in err and "Traceback" not in err
    assert not tensorflow


def test_a_locked_output_is_refused_before_tensorflow(class_tree, tmp_path):
    from fastfeat.store.lock import StoreLock

    root, _ = class_tree
    out = tmp_path / "locked.h5"
    out.write_bytes(b"")
    lock = StoreLock(str(out))
    lock.acquire()
    try:
        (result,), tensorflow = _probe(_extract(root, out, "--overwrite"))
    finally:
        lock.release()
    assert result[0] == 2 and "being written by another process" in result[1]
    assert not tensorflow


def _interrupted_store(root, out, model_file):
    """A store whose run stopped after its first batch of 2 (conv2:avg, float16, batch size 2)."""
    from fastfeat import extract
    from fastfeat.runloop import StopToken

    token = StopToken()
    token.set()  # set before the start: the run stops after one batch
    report = extract(root, out, model=model_file, layers=["conv2:avg"], batch_size=2, dtype="float16",
                     precision="float32", progress=False, stop=token)  # fmt: skip
    assert report.interrupted and report.rows == 2


def test_resume_takes_every_setting_from_the_store(class_tree, tiny_model_file, tmp_path, capsys):
    root, _ = class_tree
    out = tmp_path / "r.h5"
    _interrupted_store(root, out, tiny_model_file)
    assert main(_extract(root, out, "--resume", "--quiet")) == 0  # no --model, --layer, --dtype, ...
    with open_store(out) as store:
        assert store.complete and len(store) == 9
        assert store.layers == ["conv2:avg"] and store.features("conv2:avg").dtype == np.float16
        assert store.meta["batch_size"] == 2 and store.meta["model"] == os.path.abspath(tiny_model_file)
    capsys.readouterr()


def test_resume_refuses_flags_that_disagree_and_a_complete_store_returns_at_once(
    class_tree, tiny_model_file, tmp_path
):
    root, _ = class_tree
    out = tmp_path / "r.h5"
    _interrupted_store(root, out, tiny_model_file)
    (mismatch,), tensorflow = _probe(_extract(root, out, "--resume", "--dtype", "float32", "--exif"))
    assert mismatch[0] == 2 and "--dtype: store has 'float16'" in mismatch[1] and "--exif:" in mismatch[1]
    assert "Leave these flags out" in mismatch[1] and not tensorflow
    assert main(_extract(root, out, "--resume", "--quiet")) == 0
    (done,), tensorflow = _probe(_extract(root, out, "--resume", "--quiet"))
    assert done[0] == 0 and not tensorflow  # no model built, no download tried
    with open_store(out) as store:
        assert store.complete and len(store) == 9


def test_complete_store_resume_says_so(class_tree, tiny_model_file, tmp_path, capsys):
    root, _ = class_tree
    out = tmp_path / "c.h5"
    argv = _extract(root, out, "--model", tiny_model_file, "--layer", "conv3", "--precision", "float32", "--quiet")
    assert main(argv) == 0
    assert main(_extract(root, out, "--resume")) == 0
    assert "is complete already (9 rows): nothing to resume" in capsys.readouterr().out


def test_no_readable_image_exits_1_with_a_message_quiet_does_not_hide(tmp_path, tiny_model_file, capsys):
    root = tmp_path / "broken"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really an image")
    argv = _extract(root, tmp_path / "b.h5", "--model", tiny_model_file, "--layer", "conv3",
                    "--precision", "float32", "--quiet")  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "fastfeat: error: no image could be read: all 3 files failed" in err
    assert err.count("no image could be read") == 1


def test_no_readable_image_warns_in_the_python_api(tmp_path, tiny_model_file):
    from fastfeat import extract
    from fastfeat.report import NoImagesWarning

    root = tmp_path / "broken"
    root.mkdir()
    (root / "0.png").write_bytes(b"not an image")
    with pytest.warns(NoImagesWarning, match="no image could be read"):
        report = extract(root, tmp_path / "b.h5", model=tiny_model_file, layers="conv3", precision="float32",
                         progress=False)  # fmt: skip
    assert report.images == 0 and report.failures == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_tensorflow_import_exits_130_with_one_line(class_tree, tmp_path, monkeypatch, capsys,
                                                                       signum):  # fmt: skip
    import fastfeat.cli as cli

    def import_interrupted():
        os.kill(os.getpid(), signum)  # the handler main installed first raises here
        raise AssertionError("the signal did not interrupt")

    monkeypatch.setattr(cli, "_import_tensorflow_quietly", import_interrupted)
    root, _ = class_tree
    assert main(_extract(root, tmp_path / "s.h5", "--model", "resnet50", "--weights", "none")) == 130
    err = capsys.readouterr().err
    assert err.strip() == "fastfeat: interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_ctrl_c_during_the_model_build_exits_130_and_leaves_no_store(class_tree, tmp_path, monkeypatch, capsys):
    import fastfeat.extraction as extraction

    def build_interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the signal did not interrupt")

    monkeypatch.setattr(extraction, "build_model", build_interrupted)
    root, _ = class_tree
    out = tmp_path / "m.h5"
    assert main(_extract(root, out, "--model", "resnet50", "--weights", "none")) == 130
    assert capsys.readouterr().err.strip() == "fastfeat: interrupted"
    assert not out.exists()


def test_ctrl_c_before_an_overwrite_replaces_a_store_keeps_it_and_names_no_resume(
    class_tree, tiny_model_file, tmp_path, monkeypatch, capsys
):
    import fastfeat.extraction as extraction

    root, _ = class_tree
    out = tmp_path / "o.h5"
    argv = _extract(root, out, "--model", tiny_model_file, "--layer", "conv3", "--precision", "float32", "--quiet")
    assert main(argv) == 0

    def build_interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the signal did not interrupt")

    monkeypatch.setattr(extraction, "build_model", build_interrupted)
    assert main(argv + ["--overwrite"]) == 130
    assert capsys.readouterr().err.strip() == "fastfeat: interrupted"
    with open_store(out) as store:
        assert store.complete and len(store) == 9
