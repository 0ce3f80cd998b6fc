"""End-to-end benchmark: ``fastfeat.extract`` vs the course recipe vs the model alone on ready tensors.

    python -m benchmarks.bench_extract [--images 320] [--models vgg19,mobilenetv2,efficientnetb0]
                                       [--precisions float32,mixed_bfloat16,auto] [--batch-size 16]

Any model ``fastfeat models`` lists, as ``NAME`` or ``NAME=LAYER[:POOL]`` (default cuts: VGG at
block4_conv2, MobileNetV2 at out_relu:avg, EfficientNetB0 at top_activation:avg, others at their last
layer, average-pooled), at the model's default input size unless ``--size``. For each model and precision:

* model alone: the truncated model called batch by batch on tensors decoded and normalized
  beforehand (the ceiling for any pipeline);
* fastfeat: ``fastfeat.extract`` to an HDF5 store, start-up included. ``auto`` runs twice: *cold*
  (an empty decision cache: it measures if that pays, see fastfeat.precision_auto) and *cached* (the
  same command again, reusing the decision);
* course recipe (float32, as taught): ``ImageDataGenerator(preprocessing_function=preprocess_input)
  .flow_from_directory`` + ``keras.Model(base.input, layer.output).predict`` per batch + ``np.save``.

VGG19 is model-bound on a CPU (the pipeline should reach the model alone's rate); MobileNetV2 and
EfficientNetB0 are loader-bound (decoding and the model share the cores). Wall clock counts everything
from the model build on; steady state is the rate after the first batch. Weights are random
(``weights=None``; speed does not depend on them). One process, same JPEGs; prints a table with ratios
and writes ``benchmarks/results/bench_extract.json``.
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

DEFAULT_CUTS = {"vgg16": "block4_conv2", "vgg19": "block4_conv2", "mobilenetv2": "out_relu:avg",
                "efficientnetb0": "top_activation:avg"}  # fmt: skip


def parse_models(text: str, size=None) -> list[tuple[str, str, tuple[int, int]]]:
    """``"vgg19,mobilenetv2=block_13_expand_relu"`` -> [(name, "layer[:pool]", (h, w)), ...]."""
    from fastfeat.registry import get_spec

    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, cut = item.partition("=")
        spec = get_spec(name)  # a clear error listing the models for an unknown name
        out.append((spec.name, cut or DEFAULT_CUTS.get(spec.name, ""), tuple(size or spec.default_size)))
    return out


def resolve_cut(model: str, cut: str, size) -> tuple[str, str]:
    """(layer, pool) for ``cut``; an empty cut is the base's last layer, average-pooled."""
    from fastfeat.models import build_base, parse_layer

    if cut:
        return parse_layer(cut)
    return build_base(model, size, weights=None).layers[-1].name, "avg"


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


def model_alone(model, cut, size, precision, ready, batch_size):
    from fastfeat.models import build_base, make_infer_fn, truncate

    c0, t0 = time.process_time(), time.perf_counter()
    base = build_base(model, size, weights=None, precision=precision)
    infer = make_infer_fn(truncate(base, [cut]))
    build_s = time.perf_counter() - t0

    def step(batch):
        outputs = infer(batch)
        for v in outputs.values():
            v.numpy()
        return len(batch)

    batches = (ready[i : i + batch_size] for i in range(0, len(ready), batch_size))
    first_s, loop_s, rest = _timed_loop(batches, step)
    return _row("model alone", model, precision, len(ready), build_s, first_s, loop_s, rest, time.process_time() - c0)


def fastfeat_extract(model, cut, size, precision, source, batch_size, workdir, label=None):
    import fastfeat
    from fastfeat.models import feature_key

    out = os.path.join(workdir, f"{model}-{precision}.h5")
    c0 = time.process_time()
    report = fastfeat.extract(
        source, out, model=model, layers=[feature_key(*cut)], image_size=size, batch_size=batch_size,
        weights=None, precision=precision, overwrite=True, progress=False,
    )  # fmt: skip
    cpu_s = time.process_time() - c0
    os.remove(out)
    auto = report.precision_auto or {}
    return {
        "model": model, "precision": label or precision, "pipeline": "fastfeat extract", "images": report.images,
        "steady img/s": report.images_per_second, "wall s": report.seconds,
        "wall img/s": report.images / report.seconds, "startup s": report.startup_seconds,
        "cpu s/img": cpu_s / report.images, "stages": dict(report.stages), "startup": dict(report.startup),
        "chosen": report.precision, "auto source": auto.get("source"), "precision_auto": auto or None,
    }  # fmt: skip


def _preprocess_input(constructor: str):
    """The ``preprocess_input`` of the keras.applications module that defines ``constructor``."""
    import importlib

    import keras

    return importlib.import_module(getattr(keras.applications, constructor).__module__).preprocess_input


def course_recipe(model, cut, size, precision, source, batch_size, workdir):
    import keras
    import tensorflow as tf

    from fastfeat.registry import get_spec

    spec = get_spec(model)
    layer, pool = cut
    c0, t0 = time.process_time(), time.perf_counter()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        base = getattr(keras.applications, spec.constructor)(include_top=False, weights=None, input_shape=(*size, 3))
        out = base.get_layer(layer).output
        if pool != "none":  # the course's GlobalAveragePooling2D after the cut
            out = (keras.layers.GlobalAveragePooling2D if pool == "avg" else keras.layers.GlobalMaxPooling2D)()(out)
        cut_model = keras.Model(base.input, out)
    finally:
        keras.config.set_dtype_policy(previous)
    generator = tf.keras.preprocessing.image.ImageDataGenerator(preprocessing_function=_preprocess_input(spec.constructor))
    flow = generator.flow_from_directory(source, target_size=size, batch_size=batch_size, class_mode="sparse", shuffle=False)
    build_s = time.perf_counter() - t0
    features = []

    def step(i):
        x, _ = flow[i]
        features.append(cut_model.predict(x, verbose=0))
        return len(x)

    first_s, loop_s, rest = _timed_loop(range(len(flow)), step)
    t1 = time.perf_counter()
    np.save(os.path.join(workdir, "recipe.npy"), np.concatenate(features).astype(np.float32))
    loop_s += time.perf_counter() - t1
    os.remove(os.path.join(workdir, "recipe.npy"))
    cpu_s = time.process_time() - c0
    return _row("course recipe", model, precision, flow.samples, build_s, first_s, loop_s, rest, cpu_s)


def ready_tensors(source, model, size):
    """Every image decoded, resized and normalized for ``model``, as one float32 array (outside any timing)."""
    from fastfeat.catalog import build_catalog
    from fastfeat.decode import load_image
    from fastfeat.kernels import normalize_batch
    from fastfeat.preprocess import get_normalization
    from fastfeat.registry import get_spec

    catalog = build_catalog(source)
    images = np.stack([load_image(catalog.abspath(i), size) for i in range(len(catalog))])  # bilinear, as extract
    out = np.empty(images.shape, np.float32)
    normalize_batch(images, out, *get_normalization(get_spec(model).preprocess).kernel_args())
    return out


def _warm_up() -> None:
    """Pay TensorFlow's one-time start-up (runtime, oneDNN) before anything is timed."""
    from fastfeat.models import build_base, make_infer_fn, truncate

    base = build_base("mobilenetv2", (64, 64), weights=None)
    make_infer_fn(truncate(base, [("out_relu", "none")]))(np.zeros((2, 64, 64, 3), np.float32))


def goals(rows) -> list[dict]:
    """The issue's goals, per model: fastfeat (defaults: auto) vs the model alone at its best precision and
    vs the recipe; auto vs the faster forced precision."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        alone = [r for r in mine if r["pipeline"] == "model alone"]
        ours = {r["precision"]: r for r in mine if r["pipeline"] == "fastfeat extract"}
        recipe = next((r for r in mine if r["pipeline"] == "course recipe" and r["precision"] == "float32"), None)
        if not alone or not ours:
            continue
        best_alone = max(alone, key=lambda r: r["steady img/s"])
        forced = [r for p, r in ours.items() if not p.startswith("auto")]
        fastest_forced = min(forced, key=lambda r: r["wall s"]) if forced else None
        default = ours.get("auto (cached)") or ours.get("auto (cold)") or max(ours.values(), key=lambda r: r["steady img/s"])
        row = {
            "model": model, "best alone": best_alone["precision"], "default": default["chosen"],
            "steady/alone": default["steady img/s"] / best_alone["steady img/s"],
            "wall/alone": default["wall img/s"] / best_alone["wall img/s"],
            "steady x recipe": default["steady img/s"] / recipe["steady img/s"] if recipe else None,
            "wall x recipe": default["wall img/s"] / recipe["wall img/s"] if recipe else None,
        }  # fmt: skip
        for label in ("auto (cold)", "auto (cached)"):
            if label in ours and fastest_forced is not None:
                row[f"{label.split()[1][1:-1]} auto/forced wall"] = ours[label]["wall s"] / fastest_forced["wall s"]
        out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=320)
    p.add_argument("--dir", default=None, help="use this folder of class subfolders instead of a generated dataset")
    p.add_argument("--models", default="vgg19,mobilenetv2,efficientnetb0",
                   help="comma-separated NAME or NAME=LAYER[:POOL] (any name `fastfeat models` lists)")  # fmt: skip
    p.add_argument("--size", type=int, default=None, help="input size (default: each model's own)")
    p.add_argument("--precisions", default="float32,mixed_bfloat16,auto",
                   help="precisions for the model alone and fastfeat; auto (cold, then cached) only for fastfeat")
    p.add_argument("--recipe-precisions", default="float32", help="precisions for the course recipe ('' for none)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    models = parse_models(args.models, (args.size, args.size) if args.size else None)

    source = args.dir or make_jpeg_dataset(
        os.path.join(tempfile.gettempdir(), f"fastfeat-bench-{args.images}"), args.images
    )
    info = machine()
    print(f"machine: {info.get('cpu', info['processor'])}, {info['cpus']} cpus, avx512_bf16={info.get('avx512_bf16')}, "
          f"amx={info.get('amx')}")  # fmt: skip
    _warm_up()
    workdir = tempfile.mkdtemp(prefix="fastfeat-bench-extract-")
    previous_cache = os.environ.get("FASTFEAT_CACHE_DIR")
    os.environ["FASTFEAT_CACHE_DIR"] = os.path.join(workdir, "decisions")  # auto starts cold, never the user's cache
    rows = []
    try:
        for model, cut_text, size in models:
            cut = resolve_cut(model, cut_text, size)
            ready = ready_tensors(source, model, size)
            for precision in filter(None, args.precisions.split(",")):
                if precision == "auto":
                    for label in ("auto (cold)", "auto (cached)"):
                        rows.append(fastfeat_extract(model, cut, size, "auto", source, args.batch_size, workdir, label))
                        print(_line(rows[-1]), flush=True)
                    continue
                rows.append(model_alone(model, cut, size, precision, ready, args.batch_size))
                print(_line(rows[-1]), flush=True)
                rows.append(fastfeat_extract(model, cut, size, precision, source, args.batch_size, workdir))
                print(_line(rows[-1]), flush=True)
            for precision in filter(None, args.recipe_precisions.split(",")):
                rows.append(course_recipe(model, cut, size, precision, source, args.batch_size, workdir))
                print(_line(rows[-1]), flush=True)
            del ready
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if previous_cache is None:
            os.environ.pop("FASTFEAT_CACHE_DIR", None)
        else:
            os.environ["FASTFEAT_CACHE_DIR"] = previous_cache
    columns = ["model", "precision", "pipeline", "chosen", "steady img/s", "wall s", "startup s", "cpu s/img"]
    title = f"Extraction, batch {args.batch_size}, random weights, {args.images} photos"
    print_table(rows, columns, title=title)
    summary = goals(rows)
    title = "Goals: fastfeat defaults vs model alone (best precision) and recipe; auto vs the faster forced precision"
    print_table(summary, list(dict.fromkeys(k for r in summary for k in r)) if summary else ["model"], title=title)
    for r in rows:
        if r.get("startup"):
            print(f"  start-up {r['model']} {r['precision']}: " + ", ".join(f"{k} {v:.2f} s" for k, v in r["startup"].items()))
    settings = vars(args) | {"source": os.path.abspath(source)}
    path = write_json("bench_extract", {"settings": settings, "rows": rows, "goals": summary}, args.json)
    print(f"\nwrote {path}")
    return 0


def _line(r) -> str:
    return (f"{r['model']:12s} {r['precision']:15s} {r['pipeline']:17s} steady {r['steady img/s']:7.1f} img/s  "
            f"wall {r['wall s']:6.1f} s  startup {r['startup s']:5.1f} s  {r.get('chosen') or ''}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
