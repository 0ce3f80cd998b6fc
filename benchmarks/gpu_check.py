"""The prepared GPU check: one command to run as it is on a machine with an NVIDIA GPU.

    python -m benchmarks.gpu_check                 # tests, then extraction and rates on GPU 0
    python -m benchmarks.gpu_check --skip-tests --images 256
    python -m benchmarks.gpu_check --allow-cpu --skip-tests --images 16 --size 64   # a dry run without a GPU

1. the machine: CPU, GPUs (``nvidia-smi`` and what TensorFlow sees, compute capability);
2. the test suite (``python -m pytest -q``; the GPU must not break anything the CPU passes);
3. ``fastfeat.extract`` on the GPU at float32, mixed_float16, mixed_bfloat16 and auto, for a model-bound
   cut (VGG19 block4_conv2) and a loader-bound one (MobileNetV2 out_relu:avg): steady and wall rates,
   memory growth on, the float16 range check (non-finite values), and the features of the first
   ``--ref-images`` images against a float32 run on the CPU (max-norm relative error, run in a
   subprocess so that TensorFlow there never sees the GPU);
4. the loader alone (decode + resize + normalize on every core) against the model alone on the GPU
   (ready tensors), at the best precision: which one bounds the pipeline.

Everything prints as one table at the end and goes to ``benchmarks/results/gpu_check.json``.
Weights are random (``weights=None``): no download needed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks.common import machine, make_jpeg_dataset, print_table, write_json  # noqa: E402

CUTS = {"vgg19": "block4_conv2", "mobilenetv2": "out_relu:avg"}
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")

_CPU_REFERENCE = """
import json, os, sys
os.environ["CUDA_VISIBLE_DEVICES"] = ""
import numpy as np, fastfeat
src, out, model, layer, size = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
fastfeat.extract(src, out, model=model, layers=[layer], image_size=size, weights=None, precision="float32",
                 device="cpu", batch_size=8, overwrite=True, progress=False)
"""


def gpus() -> list[dict]:
    """What ``nvidia-smi`` and TensorFlow report about the GPUs."""
    import tensorflow as tf

    out = []
    for i, gpu in enumerate(tf.config.list_physical_devices("GPU")):
        details = tf.config.experimental.get_device_details(gpu)
        out.append({"index": i, "name": details.get("device_name", gpu.name),
                    "compute_capability": details.get("compute_capability")})  # fmt: skip
    return out


def nvidia_smi() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "nvidia-smi not available"


def run_tests(timeout: int) -> dict:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        return {"step": "tests", "result": tail[0], "ok": proc.returncode == 0, "seconds": time.perf_counter() - t0}
    except subprocess.TimeoutExpired:
        return {"step": "tests", "result": f"timed out after {timeout} s", "ok": False, "seconds": timeout}


def cpu_reference(source, workdir, model, layer, size) -> np.ndarray:
    out = os.path.join(workdir, f"ref-{model}.h5")
    subprocess.run([sys.executable, "-c", _CPU_REFERENCE, source, out, model, layer, str(size)], check=True,
                   capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})  # fmt: skip
    from fastfeat.store import open_store

    with open_store(out) as store:
        return np.asarray(store.features(store.meta["layers"][0])[:], np.float32)


def extract_row(model, layer, size, precision, source, ref_source, ref, device, batch_size, workdir) -> dict:
    import fastfeat
    from fastfeat.precision import relative_error
    from fastfeat.store import open_store

    out = os.path.join(workdir, f"{model}-{precision}.h5")
    report = fastfeat.extract(source, out, model=model, layers=[layer], image_size=size, weights=None,
                              precision=precision, device=device, batch_size=batch_size, overwrite=True,
                              progress=False)  # fmt: skip
    with open_store(out) as store:
        growth = store.meta["runtime"]["device"].get("memory_growth")
    small = os.path.join(workdir, f"{model}-{precision}-ref.h5")
    fastfeat.extract(ref_source, small, model=model, layers=[layer], image_size=size, weights=None,
                     precision=report.precision, device=device, batch_size=8, overwrite=True, progress=False)  # fmt: skip
    with open_store(small) as store:
        error = relative_error(ref, np.asarray(store.features(layer)[:], np.float32))
    for path in (out, small):
        os.remove(path)
    auto = report.precision_auto or {}
    return {
        "model": model, "precision": precision, "chosen": report.precision, "device": report.device,
        "steady img/s": report.images_per_second, "wall s": report.seconds, "startup s": report.startup_seconds,
        "nonfinite": report.nonfinite, "err vs cpu f32": error, "memory growth": growth,
        "auto": auto.get("source"), "input wait s": report.stages.get("input_wait"),
    }  # fmt: skip


def loader_vs_model(model, layer, size, precision, source, device, batch_size) -> dict:
    """Images/s of the loader alone (every core) and of the model alone on ready tensors."""
    from benchmarks.bench_extract import ready_tensors
    from fastfeat.catalog import build_catalog
    from fastfeat.loader import DecodeOptions, Loader
    from fastfeat.models import build_base, make_infer_fn, parse_layer, truncate
    from fastfeat.preprocess import get_normalization
    from fastfeat.registry import get_spec
    from fastfeat.runtime import configure, usable_cores

    catalog = build_catalog(source)
    loader = Loader(catalog, DecodeOptions((size, size)), get_normalization(get_spec(model).preprocess))
    positions = np.arange(len(catalog))
    for _ in loader.dataset(positions[: batch_size * 2], batch_size, threads=usable_cores()):  # warm up
        pass
    t0 = time.perf_counter()
    n = 0
    for images, *_ in loader.dataset(positions, batch_size, threads=usable_cores()):
        n += int(images.shape[0])
    loader_rate = n / (time.perf_counter() - t0)

    runtime = configure(device)
    ready = ready_tensors(source, model, (size, size))
    with runtime.device.scope():
        infer = make_infer_fn(truncate(build_base(model, (size, size), weights=None, precision=precision),
                                       [parse_layer(layer)]))  # fmt: skip
        infer(ready[:batch_size])
        t0 = time.perf_counter()
        for i in range(0, len(ready), batch_size):
            for v in infer(ready[i : i + batch_size]).values():
                v.numpy()
        model_rate = len(ready) / (time.perf_counter() - t0)
    bound = "loader" if loader_rate < model_rate else "model"
    return {"model": model, "precision": precision, "loader img/s": loader_rate, "model img/s": model_rate,
            "bound by": bound}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512, help="photos for the throughput runs")
    p.add_argument("--ref-images", type=int, default=32, help="photos compared with the CPU float32 run")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=None, help="default: automatic (up to 256 on a GPU)")
    p.add_argument("--models", default="vgg19,mobilenetv2")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--tests-timeout", type=int, default=420)
    p.add_argument("--allow-cpu", action="store_true", help="run without a GPU (a dry run of this script)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    info = machine()
    print(f"machine: {info.get('cpu', info['processor'])}, {info['cpus']} cpus; nvidia-smi: {nvidia_smi()}", flush=True)
    steps = [] if args.skip_tests else [run_tests(args.tests_timeout)]
    if steps:
        print(f"tests: {steps[0]['result']} ({steps[0]['seconds']:.0f} s)", flush=True)
    seen = gpus()
    print(f"TensorFlow sees {len(seen)} GPU(s): {seen}", flush=True)
    if not seen and not args.allow_cpu:
        print("no GPU visible to TensorFlow: nothing to check (is tensorflow[and-cuda] installed?)", file=sys.stderr)
        return 2
    device = "gpu:0" if seen else "cpu"
    workdir = tempfile.mkdtemp(prefix="fastfeat-gpu-check-")
    os.environ["FASTFEAT_CACHE_DIR"] = os.path.join(workdir, "decisions")
    rows, rates = [], []
    try:
        source = make_jpeg_dataset(os.path.join(tempfile.gettempdir(), f"fastfeat-bench-{args.images}"), args.images)
        ref_source = make_jpeg_dataset(os.path.join(tempfile.gettempdir(), f"fastfeat-bench-{args.ref_images}"),
                                       args.ref_images)  # fmt: skip
        for model in args.models.split(","):
            layer = CUTS.get(model, "")
            ref = cpu_reference(ref_source, workdir, model, layer, args.size)
            for precision in PRECISIONS:
                try:
                    rows.append(extract_row(model, layer, args.size, precision, source, ref_source, ref, device,
                                            args.batch_size, workdir))  # fmt: skip
                except Exception as e:  # noqa: BLE001 -- a check reports every failure and goes on
                    rows.append({"model": model, "precision": precision, "chosen": f"FAILED: {type(e).__name__}: {e}"})
                print(json.dumps(rows[-1], default=str), flush=True)
            done = [r for r in rows if r["model"] == model and "steady img/s" in r and r["precision"] != "auto"]
            best = max(done, key=lambda r: r["steady img/s"])["precision"] if done else "float32"
            rates.append(loader_vs_model(model, layer, args.size, best, source, device, args.batch_size or 64))
            print(json.dumps(rates[-1]), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if steps:
        print_table(steps, ["step", "result", "ok", "seconds"], title="Test suite")
    columns = ["model", "precision", "chosen", "steady img/s", "wall s", "startup s", "nonfinite", "err vs cpu f32",
               "memory growth", "auto"]  # fmt: skip
    print_table(rows, columns, title=f"Extraction on {device}, {args.size}x{args.size}, {args.images} photos, random weights")
    print_table(rates, ["model", "precision", "loader img/s", "model img/s", "bound by"], title="Loader vs model")
    path = write_json("gpu_check", {"settings": vars(args), "gpus": seen, "tests": steps, "extract": rows,
                                    "rates": rates}, args.json)  # fmt: skip
    print(f"\nwrote {path}")
    failed = any(not s["ok"] for s in steps) or any(str(r.get("chosen", "")).startswith("FAILED") for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
