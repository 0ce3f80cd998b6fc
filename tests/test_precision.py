"""Precision: hardware detection, error measure, rebuilding under a policy; and the runtime (device parsing
and selection, thread plan, automatic batch size). ``auto`` is tested in test_precision_auto.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastfeat import precision as P
from fastfeat import runtime as R


# -- validation and hardware detection ----------------------------------------------------------
def test_check_precision():
    assert P.check_precision("auto") == "auto"
    assert P.check_precision("mixed_bfloat16", allow_auto=False) == "mixed_bfloat16"
    with pytest.raises(ValueError, match=r"float32, mixed_float16, mixed_bfloat16\. Received: precision='auto'"):
        P.check_precision("auto", allow_auto=False)
    with pytest.raises(ValueError, match=r"Received: precision='bf16'"):
        P.check_precision("bf16")


def test_cpu_flags_from_a_cpuinfo_file(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert P.cpu_supports_bf16(P.cpu_flags(str(x86)))
    assert P.cpu_supports_bf16(P.cpu_flags(str(arm)))
    assert not P.cpu_supports_bf16(P.cpu_flags(str(tmp_path / "missing")))
    assert P.cpu_supports_bf16({"amx_bf16", "amx_tile"})
    assert not P.cpu_supports_bf16({"avx2", "avx512f", "avx512_fp16"})


@pytest.mark.parametrize(
    "capability, expected",
    [(None, []), ((6, 1), []), ((7, 0), ["mixed_float16"]), ((7, 5), ["mixed_float16"]),
     ((8, 0), ["mixed_float16", "mixed_bfloat16"]), ((9, 0), ["mixed_float16", "mixed_bfloat16"])],
)  # fmt: skip
def test_gpu_precisions(capability, expected):
    assert P.gpu_precisions(capability) == expected


def test_native_precisions():
    assert P.native_precisions("cpu", flags=frozenset({"avx2"})) == ["float32"]
    assert P.native_precisions("cpu", flags=frozenset({"avx512_bf16"})) == ["float32", "mixed_bfloat16"]
    assert P.native_precisions("cpu", flags=frozenset({"amx_bf16", "amx_tile"})) == ["float32", "mixed_bfloat16"]
    here = P.native_precisions("cpu")
    assert here[0] == "float32" and ("mixed_bfloat16" in here) == P.cpu_supports_bf16()
    assert P.native_precisions("gpu", (9, 0)) == ["float32", "mixed_float16", "mixed_bfloat16"]
    assert P.native_precisions("gpu", (7, 5)) == ["float32", "mixed_float16"]
    assert P.native_precisions("gpu", None) == ["float32"]
    with pytest.raises(ValueError, match=r"Received: kind='tpu'"):
        P.native_precisions("tpu")


def test_cpu_model_from_a_cpuinfo_file(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2\n")
    assert P.cpu_model(str(info)) == "AMD EPYC 7B13"
    assert isinstance(P.cpu_model(str(tmp_path / "missing")), str)


def test_relative_error_is_max_norm_relative():
    ref = np.array([[1.0, -4.0], [2.0, 0.0]], np.float32)
    assert P.relative_error(ref, ref) == 0.0
    assert P.relative_error(ref, ref + np.array([[0, 0], [0, 0.2]], np.float32)) == pytest.approx(0.05)
    assert P.relative_error({"a": ref, "b": ref}, {"a": ref, "b": ref * 1.01}) == pytest.approx(0.01, rel=1e-5)
    assert P.relative_error(ref, np.where(ref > 1, np.inf, ref)) == float("inf")
    assert P.relative_error(np.zeros(3), np.full(3, 1e-3)) == pytest.approx(1e-3)  # zero reference: absolute
    with pytest.raises(ValueError, match="Output shapes differ"):
        P.relative_error(ref, ref[:1])
    with pytest.raises(ValueError, match="different keys"):
        P.relative_error({"a": ref}, {"b": ref})
    assert P.count_nonfinite({"a": np.array([1.0, np.inf, np.nan]), "b": np.ones(2)}) == 2


# -- reduced precision on a real application ------------------------------------------------------
def test_bf16_features_of_an_application_within_tolerance():
    from fastfeat.models import build_base, extractor_builder

    base = build_base("vgg19", (64, 64), weights=None)
    build = extractor_builder(base, [("block4_conv2", "none"), ("block3_conv1", "avg")])
    batch = (np.random.default_rng(3).uniform(0, 255, (2, 64, 64, 3)) - 120).astype(np.float32)
    ref = {k: v.numpy() for k, v in build("float32")(batch).items()}
    bf16 = {k: v.numpy() for k, v in build("mixed_bfloat16")(batch).items()}
    assert 0 < P.relative_error(ref, bf16) <= 2e-2


# -- runtime: devices, threads, batch size ---------------------------------------------------------
@pytest.mark.parametrize(
    "spec, expected",
    [(None, ("auto", None)), ("auto", ("auto", None)), ("CPU", ("cpu", None)), ("gpu", ("gpu", None)),
     ("gpu:1", ("gpu", 1)), ("/GPU:0", ("gpu", 0)), ("cuda:2", ("gpu", 2))],
)  # fmt: skip
def test_parse_device(spec, expected):
    assert R.parse_device(spec) == expected


def test_parse_device_rejects_nonsense():
    with pytest.raises(ValueError, match=r"auto, cpu, gpu or gpu:N\. Received: device='tpu'"):
        R.parse_device("tpu")


def test_select_device_on_this_machine():
    import tensorflow as tf

    info = R.select_device("cpu")
    assert info.kind == "cpu" and info.tf_name == "/CPU:0" and info.spec == "cpu"
    with info.scope():
        assert tf.constant(1.0).device.endswith("CPU:0")
    gpus = len(tf.config.list_physical_devices("GPU"))
    with pytest.raises(ValueError, match=rf"TensorFlow sees {gpus} GPU.*Received: device='gpu:{gpus}'"):
        R.select_device(f"gpu:{gpus}")
    assert R.select_device("auto").kind == ("gpu" if gpus else "cpu")


def test_thread_plan_gives_the_model_the_cores_on_cpu():
    cpu = R.plan_threads("cpu", cores=16)
    assert (cpu.intra_op, cpu.inter_op, cpu.loader, cpu.opencv) == (16, 2, 4, 1)
    assert R.plan_threads("cpu", cores=2).loader == 1
    gpu = R.plan_threads("gpu", cores=16)
    assert gpu.loader == 16
    assert R.plan_threads("cpu", cores=8, loader_threads=3).loader == 3
    with pytest.raises(ValueError, match=r"Received: loader_threads=0"):
        R.plan_threads("cpu", loader_threads=0)
    with pytest.raises(ValueError, match=r"Received: device_kind='tpu'"):
        R.plan_threads("tpu")


def test_configure_records_what_took_effect():
    import cv2

    before = cv2.getNumThreads()
    runtime = R.configure("cpu")
    try:
        assert runtime.device.kind == "cpu"
        assert cv2.getNumThreads() == 1
        meta = runtime.to_meta()
        json.dumps(meta)
        # TensorFlow's pools are fixed once it has run an op (other tests did): recorded, not raised
        assert set(meta["threads"]["applied"]) >= {"intra_op", "inter_op", "opencv"}
    finally:
        R.restore_threads(runtime.threads)
    assert cv2.getNumThreads() == before


def test_choose_batch_size_fits_memory(tiny_model_file):
    from fastfeat.models import build_base, truncate

    model = truncate(build_base(tiny_model_file), [("conv1", "none"), ("conv3", "avg")])
    per_image = R.activation_bytes_per_image(model)
    assert per_image >= 32 * 32 * 8 * 4  # at least conv1's output
    assert R.choose_batch_size(model, "cpu", memory_bytes=2**40) == R.MAX_AUTO_BATCH["cpu"]
    assert R.choose_batch_size(model, "gpu", memory_bytes=2**40) == R.MAX_AUTO_BATCH["gpu"]
    assert R.choose_batch_size(model, "cpu", memory_bytes=2**40, images=5) == 5
    # a quarter of 40 images' activations is 10 images' worth, and each image needs more than its activations
    assert R.choose_batch_size(model, "cpu", memory_bytes=per_image * 40) in (2, 4, 8)
    assert R.choose_batch_size(model, "cpu", memory_bytes=1) == 1
    assert R.choose_batch_size(model, "cpu") >= 1  # this machine's real free memory
    # more input batches alive (loader workers and run-ahead, augmented copies) -> never a larger batch
    budget = per_image * 200
    sizes = [R.choose_batch_size(model, "cpu", memory_bytes=budget, input_batches=k) for k in (2, 8, 64)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]
