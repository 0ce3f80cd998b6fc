"""End-to-end benchmark: ``fastfeat.extract`` vs the course recipe vs the model alone on ready tensors.

    python -m benchmarks.bench_extract [--images 320] [--models vgg19,mobilenetv2]
                                       [--precisions float32,mixed_bfloat16,auto] [--batch-size 16]

For VGG19 cut at block4_conv2 (224x224) and MobileNetV2 (out_relu), at each precision:

* model alone: the truncated model called batch by batch on tensors decoded and normalized
  beforehand (the ceiling for any pipeline);
* fastfeat: ``fastfeat.extract`` to an HDF5 store, start-up included;
* course recipe (float32, as taught): ``ImageDataGenerator(preprocessing_function=preprocess_input)
  .flow_from_directory`` + ``keras.Model(base.input, layer.output).predict`` per batch + ``np.save``.

Wall clock counts everything from the model build on; steady state is the rate after the first
batch. Weights are random (``weights=None``; speed does not depend on them). One process, same
JPEGs; prints a table with ratios and writes ``benchmarks/results/bench_extract.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks.common import machine, make_jpeg_dataset, print_table, write_json  # noqa: E402

MODELS = {"vgg19": ["block4_conv2"], "mobilenetv2": ["out_relu"]}
SIZE = (224, 224)


def _timed_loop(batches, step):
    """Run ``step`` over ``batches``: (seconds to the end of batch 1, total seconds, images after batch 1)."""
    t0 = time.perf_counter()
    first_end, rest = None, 0
    for i, batch in enumerate(batches):
        n = step(batch)
        if i == 0:
            first_end = time.perf_counter()
        else:
            rest += n
    return first_end - t0, time.perf_counter() - t0, rest


def _row(kind, model, precision, images, build_s, first_s, loop_s, rest, cpu_s, **extra):
    steady = rest / (loop_s - first_s) if rest else images / loop_s
    return {
        "model": model, "precision": precision, "pipeline": kind, "images": images,
        "steady img/s": steady, "wall s": build_s + loop_s, "wall img/s": images / (build_s + loop_s),
        "startup s": build_s + first_s, "cpu s/img": cpu_s / images, **extra,
    }  # fmt: skip


def model_alone(model, layers, precision, ready, batch_size):
    from fastfeat.models import build_base, make_infer_fn, truncate

    c0, t0 = time.process_time(), time.perf_counter()
    base = build_base(model, SIZE, weights=None, precision=precision)
    infer = make_infer_fn(truncate(base, [(layer, "none") for layer in layers]))
    build_s = time.perf_counter() - t0

    def step(batch):
        outputs = infer(batch)
        for v in outputs.values():
            v.numpy()
        return len(batch)

    batches = (ready[i : i + batch_size] for i in range(0, len(ready), batch_size))
    first_s, loop_s, rest = _timed_loop(batches, step)
    return _row("model alone", model, precision, len(ready), build_s, first_s, loop_s, rest, time.process_time() - c0)


def fastfeat_extract(model, layers, precision, source, batch_size, workdir):
    import fastfeat

    out = os.path.join(workdir, f"{model}-{precision}.h5")
    c0 = time.process_time()
    report = fastfeat.extract(
        source, out, model=model, layers=layers, image_size=SIZE, batch_size=batch_size, weights=None,
        precision=precision, overwrite=True, progress=False,
    )  # fmt: skip
    cpu_s = time.process_time() - c0
    os.remove(out)
    stages = dict(report.stages)
    return {
        "model": model, "precision": precision, "pipeline": "fastfeat extract", "images": report.images,
        "steady img/s": report.images_per_second, "wall s": report.seconds,
        "wall img/s": report.images / report.seconds, "startup s": report.startup_seconds,
        "cpu s/img": cpu_s / report.images, "stages": stages, "chosen": getattr(report, "precision", precision),
        "precision_auto": getattr(report, "precision_choice", None),
    }  # fmt: skip


def course_recipe(model, layers, precision, source, batch_size, workdir):
    import keras
    import tensorflow as tf

    from fastfeat.models import get_spec

    spec = get_spec(model)
    module = {"vgg19": keras.applications.vgg19, "mobilenetv2": keras.applications.mobilenet_v2}[model]
    c0, t0 = time.process_time(), time.perf_counter()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        base = getattr(keras.applications, spec.constructor)(include_top=False, weights=None, input_shape=(*SIZE, 3))
    finally:
        keras.config.set_dtype_policy(previous)
    cut = keras.Model(base.input, base.get_layer(layers[0]).output)
    generator = tf.keras.preprocessing.image.ImageDataGenerator(preprocessing_function=module.preprocess_input)
    flow = generator.flow_from_directory(
        source, target_size=SIZE, batch_size=batch_size, class_mode="sparse", shuffle=False
    )
    build_s = time.perf_counter() - t0
    features = []

    def step(i):
        x, _ = flow[i]
        features.append(cut.predict(x, verbose=0))
        return len(x)

    first_s, loop_s, rest = _timed_loop(range(len(flow)), step)
    t1 = time.perf_counter()
    np.save(os.path.join(workdir, "recipe.npy"), np.concatenate(features).astype(np.float32))
    loop_s += time.perf_counter() - t1
    os.remove(os.path.join(workdir, "recipe.npy"))
    cpu_s = time.process_time() - c0
    return _row("course recipe", model, precision, flow.samples, build_s, first_s, loop_s, rest, cpu_s)


def ready_tensors(source, model):
    """Every image decoded, resized and normalized for ``model``, as one float32 array (outside any timing)."""
    from fastfeat.catalog import build_catalog
    from fastfeat.decode import load_image
    from fastfeat.kernels import normalize_batch
    from fastfeat.models import get_spec
    from fastfeat.preprocess import get_normalization

    catalog = build_catalog(source)
    images = np.stack([load_image(catalog.abspath(i), SIZE) for i in range(len(catalog))])  # bilinear, as extract
    out = np.empty(images.shape, np.float32)
    normalize_batch(images, out, *get_normalization(get_spec(model).preprocess).kernel_args())
    return out


def _warm_up() -> None:
    """Pay TensorFlow's one-time start-up (runtime, oneDNN) before anything is timed."""
    from fastfeat.models import build_base, make_infer_fn, truncate

    base = build_base("mobilenetv2", (64, 64), weights=None)
    make_infer_fn(truncate(base, [("out_relu", "none")]))(np.zeros((2, 64, 64, 3), np.float32))


def goals(rows) -> list[dict]:
    """The issue's goals, per model: fastfeat vs the model alone at the best precision, vs the recipe."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        alone = [r for r in mine if r["pipeline"] == "model alone"]
        ours = [r for r in mine if r["pipeline"] == "fastfeat extract"]
        recipe = [r for r in mine if r["pipeline"] == "course recipe" and r["precision"] == "float32"]
        if not alone or not ours:
            continue
        best_alone = max(alone, key=lambda r: r["steady img/s"])
        best_ours = max(ours, key=lambda r: r["steady img/s"])
        same = next((r for r in ours if r["precision"] == best_alone["precision"]), best_ours)
        row = {
            "model": model, "best precision (alone)": best_alone["precision"],
            "steady % of alone": 100 * same["steady img/s"] / best_alone["steady img/s"],
            "wall % of alone": 100 * same["wall img/s"] / best_alone["wall img/s"],
            "best fastfeat x recipe (steady)": (
                best_ours["steady img/s"] / recipe[0]["steady img/s"] if recipe else None
            ),
            "best fastfeat x recipe (wall)": best_ours["wall img/s"] / recipe[0]["wall img/s"] if recipe else None,
        }  # fmt: skip
        out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=320)
    p.add_argument("--dir", default=None, help="use this folder of class subfolders instead of a generated dataset")
    p.add_argument("--models", default="vgg19,mobilenetv2")
    p.add_argument("--precisions", default="float32,mixed_bfloat16,auto",
                   help="precisions for the model alone and fastfeat; auto only for fastfeat")  # fmt: skip
    p.add_argument("--recipe-precisions", default="float32", help="precisions for the course recipe")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    source = args.dir or make_jpeg_dataset(
        os.path.join(tempfile.gettempdir(), f"fastfeat-bench-{args.images}"), args.images
    )
    info = machine()
    print(f"machine: {info.get('cpu', info['processor'])}, {info['cpus']} cpus, avx512_bf16={info.get('avx512_bf16')}, "
          f"amx={info.get('amx')}")  # fmt: skip
    _warm_up()
    workdir = tempfile.mkdtemp(prefix="fastfeat-bench-extract-")
    rows = []
    try:
        for model in args.models.split(","):
            layers = MODELS[model]
            ready = ready_tensors(source, model)
            for precision in args.precisions.split(","):
                if precision != "auto":
                    rows.append(model_alone(model, layers, precision, ready, args.batch_size))
                    print(_line(rows[-1]), flush=True)
                try:
                    rows.append(fastfeat_extract(model, layers, precision, source, args.batch_size, workdir))
                    print(_line(rows[-1]), flush=True)
                except ValueError as e:
                    if precision != "auto":
                        raise
                    print(f"{model} auto: skipped, extract does not take precision='auto' yet ({e})", flush=True)
            for precision in args.recipe_precisions.split(","):
                rows.append(course_recipe(model, layers, precision, source, args.batch_size, workdir))
                print(_line(rows[-1]), flush=True)
            del ready
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    columns = ["model", "precision", "pipeline", "images", "steady img/s", "wall s", "wall img/s", "startup s"]
    title = f"Extraction, {SIZE[0]}x{SIZE[1]}, batch {args.batch_size}, random weights"
    print_table(rows, [*columns, "cpu s/img"], title=title)
    summary = goals(rows)
    title = "Goals (fastfeat vs model alone at its best precision; vs recipe)"
    print_table(summary, list(summary[0]) if summary else ["model"], title=title)
    for r in rows:
        if r.get("stages"):
            print(f"  stages {r['model']} {r['precision']}: {r['stages']}")
    settings = vars(args) | {"source": os.path.abspath(source)}
    path = write_json("bench_extract", {"settings": settings, "rows": rows, "goals": summary}, args.json)
    print(f"\nwrote {path}")
    return 0


def _line(r) -> str:
    return (f"{r['model']:12s} {r['precision']:15s} {r['pipeline']:17s} steady {r['steady img/s']:7.1f} img/s  "
            f"wall {r['wall s']:6.1f} s  startup {r['startup s']:5.1f} s")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
