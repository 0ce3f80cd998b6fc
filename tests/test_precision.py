"""Precision: hardware detection, error measure, ``auto`` selection; and the runtime it depends on
(device parsing and selection, thread plan, automatic batch size)."""

from __future__ import annotations

import json
import time

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


def test_available_precisions_on_the_cpu():
    assert P.available_precisions("cpu", flags=frozenset({"avx2"})) == ["float32"]
    assert P.available_precisions("cpu", flags=frozenset({"avx512_bf16"})) == ["float32", "mixed_bfloat16"]
    here = P.available_precisions("cpu")
    assert here[0] == "float32" and ("mixed_bfloat16" in here) == P.cpu_supports_bf16()


# -- the error measure --------------------------------------------------------------------------
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


# -- auto selection with fake extractors (exact, fast) ----------------------------------------------
def _fake_builder(behaviour, built):
    """precision -> fn(batch): sleeps ``delay`` per call and returns batch * scale (+ inf if asked)."""

    def build(precision):
        built.append(precision)
        delay, scale, overflow = behaviour[precision]

        def fn(batch):
            time.sleep(delay)
            out = batch * scale
            if overflow:
                out = out.copy()
                out[0, 0] = np.inf
            return {"feat": out}

        return fn

    return build


BATCH = np.ones((4, 3), np.float32)


def test_auto_keeps_the_fastest_accurate_candidate():
    built = []
    behaviour = {
        "float32": (0.03, 1.0, False),
        "mixed_bfloat16": (0.01, 1.01, False),  # 3x faster, error 1e-2: kept
        "mixed_float16": (0.005, 1.5, False),  # fastest but error 0.5: rejected
    }
    choice = P.choose_precision(_fake_builder(behaviour, built), BATCH, ["mixed_float16", "mixed_bfloat16"])
    assert choice.choice == "mixed_bfloat16"
    assert choice.candidates == ["float32", "mixed_float16", "mixed_bfloat16"]
    assert choice.errors["mixed_bfloat16"] == pytest.approx(0.01, rel=1e-4)
    assert "tolerance" in choice.rejected["mixed_float16"]
    assert choice.images_per_second["mixed_float16"] > choice.images_per_second["float32"]
    assert np.asarray(choice.extractor(BATCH)["feat"]).max() == pytest.approx(1.01)
    np.testing.assert_allclose(choice.outputs["feat"], BATCH * 1.01)  # the chosen one's features of the batch
    meta = choice.to_meta()
    assert meta["choice"] == "mixed_bfloat16" and meta["batch_size"] == 4 and "extractor" not in meta
    json.dumps(meta)


def test_auto_rejects_overflow_and_needs_a_real_speedup():
    built = []
    behaviour = {
        "float32": (0.02, 1.0, False),
        "mixed_float16": (0.002, 1.0, True),  # inf: loss of range
        "mixed_bfloat16": (0.0195, 1.0, False),  # not 5% faster: float32 stays
    }
    choice = P.choose_precision(_fake_builder(behaviour, built), BATCH, ["mixed_float16", "mixed_bfloat16"])
    assert choice.choice == "float32"
    assert "non-finite" in choice.rejected["mixed_float16"]
    assert choice.errors["mixed_float16"] == float("inf")
    assert json.loads(json.dumps(choice.to_meta()))["errors"]["mixed_float16"] is None
    assert "mixed_bfloat16" not in choice.rejected
    assert "float32" in choice.summary()


def test_auto_with_one_candidate_measures_nothing():
    built = []
    choice = P.choose_precision(_fake_builder({"float32": (1.0, 1.0, False)}, built), BATCH, ["float32"])
    assert choice.choice == "float32" and built == ["float32"] and choice.seconds < 0.5
    assert choice.outputs is None
    assert choice.images_per_second == {} and choice.errors == {"float32": 0.0}


def test_auto_records_a_failed_build():
    def build(precision):
        if precision != "float32":
            raise ValueError("cannot rebuild")
        return lambda b: b

    choice = P.choose_precision(build, BATCH, ["mixed_bfloat16"], repeats=1)
    assert choice.choice == "float32" and "cannot rebuild" in choice.rejected["mixed_bfloat16"]


def test_choose_precision_validates():
    build = _fake_builder({"float32": (0, 1.0, False)}, [])
    with pytest.raises(ValueError, match=r"Received: precision='fp8'"):
        P.choose_precision(build, BATCH, ["fp8"])
    with pytest.raises(ValueError, match=r"Received: repeats=0"):
        P.choose_precision(build, BATCH, repeats=0)
    with pytest.raises(ValueError, match=r"Received: batch shape=\(0, 3\)"):
        P.choose_precision(build, BATCH[:0])


# -- auto selection on a real model on this CPU ---------------------------------------------------
def test_auto_on_cpu_with_a_real_model(tiny_model_file):
    from fastfeat.models import build_base, extractor_builder

    base = build_base(tiny_model_file)
    build = extractor_builder(base, [("conv2", "none"), ("conv3", "avg")])
    batch = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    default = P.choose_precision(build, batch, device="cpu")
    assert default.choice in P.available_precisions("cpu")
    both = P.choose_precision(build, batch, candidates=["mixed_bfloat16"], device="cpu")
    assert both.choice in ("float32", "mixed_bfloat16")
    assert set(both.errors) == {"float32", "mixed_bfloat16"} and set(both.images_per_second) == set(both.errors)
    assert 0 < both.errors["mixed_bfloat16"] <= 2e-2  # bf16 features within 2e-2 of float32
    assert both.rejected == {}
    features = both.extractor(batch)
    assert {k: v.dtype.name for k, v in features.items()} == {"conv2": "float32", "conv3:avg": "float32"}


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
