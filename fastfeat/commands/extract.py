"""``fastfeat extract SOURCE -o OUT.h5``: features of every image into an HDF5 store.

Every flag sets one field of :class:`fastfeat.config.ExtractConfig`, in one table (:data:`FLAGS`),
and takes its default from it; the augmentation flags build the config's ``augment``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
import warnings

from ..config import DTYPES, ON_ERROR, POOLS, ExtractConfig, config_defaults
from ..decode import INTERPOLATIONS
from ..precision import PRECISION_CHOICES
from ..preprocess import MODES
from .shards import add_shard_flags, run_sharded, uses_shards


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing."""

    def _get_help_string(self, action):
        no_default = any(action.default is v for v in (None, False, True, argparse.SUPPRESS))  # 0 is a default
        if no_default or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _max_pixels(text: str) -> int | None:
    """``"none"`` -> no limit, else a positive int."""
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int or 'none'. Received: {text!r}")
    return value


def _floats(text: str):
    """``"0.2"`` -> 0.2, ``"0.8,1.2"`` -> [0.8, 1.2]."""
    try:
        parts = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parts = []
    if not parts:
        raise argparse.ArgumentTypeError(f"must be a number or LO,HI numbers. Received: {text!r}")
    return parts[0] if len(parts) == 1 else parts


AUGMENT_FLAGS = (
    ("--rotation-range", float, "rotation range in degrees"),
    ("--width-shift-range", _floats, "horizontal shift: fraction of width (<1) or pixels"),
    ("--height-shift-range", _floats, "vertical shift: fraction of height (<1) or pixels"),
    ("--shear-range", float, "shear angle in degrees"),
    ("--zoom-range", _floats, "zoom: z for [1-z, 1+z], or LO,HI"),
    ("--brightness-range", _floats, "brightness factor range LO,HI"),
    ("--channel-shift-range", float, "random channel shifts"),
    ("--cval", float, "fill value for --fill-mode constant"),
)


def augment_from_args(args):
    """The augmentation asked for on the command line: a JSON file, flags, or both (flags win)."""
    names = [flag[2:].replace("-", "_") for flag, _, _ in AUGMENT_FLAGS]
    names += ["horizontal_flip", "vertical_flip", "fill_mode"]
    flags = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if args.augment is None and not flags:
        return None
    from ..augment import Augment

    base = Augment.from_json(args.augment).to_dict() if args.augment else {}
    return Augment.from_dict({**base, **flags})


#: (flags, ExtractConfig field, argparse options, argument group): every option of ``fastfeat
#: extract`` but the augmentation parameters. Defaults are the config's (``store_false`` flags turn
#: a default-True field off); the values go to ``ExtractConfig`` as parsed, which checks them.
FLAGS = (
    (("-o", "--output"), "output", dict(required=True, help="the .h5 store to write"), None),
    (("--model",), "model", dict(help="keras.applications short name (see `fastfeat models`) or a .keras/.h5 file"), None),
    (("--layer",), "layers", dict(action="append", metavar="NAME[:POOL]", default=None,
     help="layer to cut at (repeat for several; all from one forward pass). Default: the model's last "
     "feature map (block4_conv2 for VGG, a model file's last layer; marked in `fastfeat layers MODEL`)"), None),
    (("--pool",), "pool", dict(choices=POOLS, help="pooling for layers given without :POOL"), None),
    (("--image-size",), "image_size", dict(help="N or HxW (default: the model's own)"), None),
    (("--batch-size",), "batch_size", dict(type=int, help="images per forward pass (default: automatic, within memory)"), None),
    (("--weights",), "weights", dict(help="imagenet, none (random init), or a weights file for the headless base"), None),
    (("--preprocess",), "preprocess", dict(choices=MODES, help="normalization override (default: the model's own)"), None),
    (("--interpolation",), "interpolation", dict(choices=list(INTERPOLATIONS), help="resize filter; nearest = Keras parity"), None),
    (("--dtype",), "dtype", dict(choices=DTYPES, help="stored feature dtype"), None),
    (("--precision",), "precision", dict(choices=PRECISION_CHOICES, help=(
        "inference precision; auto: the fastest native precision within 2e-2 of float32, measured once on "
        "a few images when that costs <= 5%% of the job, and cached per machine/model/layer/size (default: auto)")), None),
    (("--remeasure-precision",), "remeasure_precision", dict(action="store_true",
     help="with --precision auto: ignore the cached decision, measure decisively and cache the new one"), None),
    (("--device",), "device", dict(help="auto, cpu, gpu or gpu:N"), None),
    (("--classes",), "classes", dict(help="comma-separated class names, fixing their order"), None),
    (("--exif",), "exif", dict(action="store_true", help="apply EXIF orientation (Keras does not)"), None),
    (("--no-reduced-decode",), "reduced_decode", dict(action="store_false", help="never use JPEG DCT-domain downscaling"), None),
    (("--max-pixels",), "max_pixels", dict(type=_max_pixels, help=(
        "refuse images declaring more pixels than this (decompression-bomb guard); 'none' for no limit")), None),
    (("--follow-links",), "follow_links", dict(action="store_true", help="follow symbolic links out of SOURCE"), None),
    (("--compression",), "compression", dict(help="none, lzf, gzip or gzip:LEVEL"), None),
    (("--on-error",), "on_error", dict(choices=ON_ERROR, help="what to do with unreadable files"), None),
    (("--cache",), "cache", dict(metavar="CACHE", help=(
        "read decoded images from this cache (`fastfeat cache`; built first if missing) instead of decoding")), None),
    (("--no-space-check",), "space_check", dict(action="store_false",
     help="write even when the store's features (estimated up front) exceed the free disk space"), None),
    (("--overwrite",), "overwrite", dict(action="store_true", help="replace an existing output"), "mode"),
    (("--resume",), "resume", dict(action="store_true", help=(
        "complete an interrupted output; every setting not given comes from the store, those given must agree")), "mode"),
    (("--unsafe-model",), "unsafe_model", dict(action="store_true",
     help="load a model file without Keras safe mode (runs its code)"), None),
    (("--quiet",), "progress", dict(action="store_false", help="no progress bar or summary"), None),
    (("--augment-copies",), "augment_copies", dict(type=int, metavar="K", help="augmented copies per image"), "augment"),
    (("--augment",), "augment", dict(metavar="CONFIG.json", help="augmentation settings (Augment.to_dict() JSON)"), "augment"),
    (("--seed",), "seed", dict(type=int, default=None, help="seed of the augmentation draws (default 0)"), "augment"),
)  # fmt: skip


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "extract",
        help="extract features of a folder of images into an HDF5 store",
        description="Extract CNN features of every image under SOURCE into one HDF5 store.",
        formatter_class=_HelpFormatter,
    )
    _add_arguments(p, config_defaults())
    add_shard_flags(p)
    p.set_defaults(func=run, prepare=prepare, needs_tensorflow=True, graceful_stop=True)


def _add_arguments(p: argparse.ArgumentParser, defaults: dict | None) -> None:
    """Every flag but the shard flags; ``defaults=None``: none at all (to see which were given)."""
    p.add_argument("source", help="folder of class subfolders, flat folder of images, or .txt/.csv file list")
    groups = {
        "mode": p.add_mutually_exclusive_group(),
        "augment": p.add_argument_group(
            "augmented copies",
            "Store K augmented copies of every image after its plain features (ImageDataGenerator semantics).",
        ),
    }
    unset = {} if defaults is not None else {"default": argparse.SUPPRESS}
    for flags, name, options, group in FLAGS:
        options = {"dest": name, **options, **unset}
        if defaults is not None and options.get("action") not in ("store_true", "store_false", "append"):
            options.setdefault("default", defaults.get(name))
        (groups[group] if group else p).add_argument(*flags, **options)
    aug = groups["augment"]
    for flag, kind, text in AUGMENT_FLAGS:
        aug.add_argument(flag, type=kind, help=text, **(unset or {"default": None}))
    aug.add_argument("--horizontal-flip", action="store_true", help="random left-right flips", **(unset or {"default": None}))
    aug.add_argument("--vertical-flip", action="store_true", help="random up-down flips", **(unset or {"default": None}))
    aug.add_argument("--fill-mode", choices=("constant", "nearest", "reflect", "wrap"), help="points outside the image",
                     **(unset or {"default": None}))  # fmt: skip


def config_from_args(args, stored: dict | None = None) -> ExtractConfig:
    """The :class:`ExtractConfig` of parsed ``fastfeat extract`` arguments (checked; messages in
    flag names). ``stored``: settings a resumed store fixes, for every flag not given."""
    values = {name: getattr(args, name) for _, name, _, _ in FLAGS}
    if values["layers"] is None:
        del values["layers"]  # the config's default cut
    values["augment"] = augment_from_args(args)
    values.update(stored or {})
    if values.get("augment_copies") and values["augment"] is None:
        raise ValueError("--augment-copies K needs an augmentation: --augment CONFIG.json or flags such as "
                         f"--rotation-range, --horizontal-flip. Received: --augment-copies {values['augment_copies']}")  # fmt: skip
    if values["augment"] is not None and not values.get("augment_copies"):
        raise ValueError("The augmentation flags are used for augmented copies only: add --augment-copies K. "
                         f"Received: --augment-copies {values.get('augment_copies')}")  # fmt: skip
    known = {f.name for f in dataclasses.fields(ExtractConfig)}
    with flag_names():
        return ExtractConfig(args.source, **{k: v for k, v in values.items() if k in known})


@contextlib.contextmanager
def flag_names():
    """Re-raise a check's error (``ValueError`` and the file errors, not their subclasses such as
    a ``DecodeError``) with its message in flag names."""
    try:
        yield
    except (ValueError, OSError) as e:
        if type(e) not in _TRANSLATED:
            raise
        raise type(e)(in_flag_names(str(e))) from None


_TRANSLATED = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def _flag_names() -> dict[str, str]:
    """ExtractConfig field (and run description key) -> the flag that sets it."""
    names = {name: flags[-1] for flags, name, _, _ in FLAGS}
    names.update(source="SOURCE", output="-o", progress="--quiet", unsafe_model="--unsafe-model")
    return names


def in_flag_names(message: str) -> str:
    """A message of the config's checks in flag names: `image_size` -> `--image-size`,
    ``Received: image_size=0`` -> ``Received: --image-size=0``, a resume mismatch's ``  dtype:``
    line -> ``  --dtype:``."""
    for name, flag in sorted(_flag_names().items(), key=lambda item: -len(item[0])):
        message = re.sub(rf"`{name}`", f"`{flag}`", message)
        message = re.sub(rf"(?<![\w-]){name}=", f"{flag}=", message)
        message = re.sub(rf"(?m)^(\s+){name}:", rf"\g<1>{flag}:", message)
    return message


def given_dests(argv: list[str]) -> set[str]:
    """The ``dest`` of every ``fastfeat extract`` flag present in ``argv`` (its arguments after
    ``extract``), told apart from the defaults."""
    probe = argparse.ArgumentParser(add_help=False)
    _add_arguments(probe, None)
    known, _ = probe.parse_known_args(argv)
    return set(vars(known))


def _stored_settings(args) -> dict:
    """For ``--resume`` of an existing store: its settings for every flag not given."""
    from ..config import settings_from_meta
    from ..plan import stored_meta

    meta = stored_meta(args.output)
    if meta is None:
        return {}  # damaged or foreign: the writer says why it cannot be resumed
    argv = list(getattr(args, "argv", None) or [])
    given = given_dests(argv[argv.index("extract") + 1 :] if "extract" in argv else argv)
    settings = settings_from_meta(meta)
    augment_names = {flag[2:].replace("-", "_") for flag, _, _ in AUGMENT_FLAGS}
    augment_names |= {"augment", "horizontal_flip", "vertical_flip", "fill_mode"}
    if given & augment_names:
        settings.pop("augment", None)
    if meta.get("class_names") and os.path.isdir(args.source):
        settings["classes"] = tuple(meta["class_names"])
    return {k: v for k, v in settings.items() if k not in given}


def prepare(args) -> None:
    """Before TensorFlow is imported: the config (from the store's settings for a ``--resume``)
    and every check that needs no model; a resume of a complete store needs no TensorFlow at all."""
    stored = _stored_settings(args) if args.resume and os.path.isfile(args.output) and not uses_shards(args) else None
    args.config = config_from_args(args, stored)
    if uses_shards(args):  # -o is a folder of shard stores: the sharded job checks it
        return
    from ..extraction import prepare as prepare_run

    with flag_names():
        try:
            args.plan = prepare_run(args.config)
        except ValueError as e:
            if not str(e).startswith("Cannot resume"):
                raise
            raise ValueError(f"{e}\nLeave these flags out: --resume takes every setting from the store.") from None
    if args.plan.complete:
        args.needs_tensorflow = False


def run(args) -> int:
    from ..extraction import run as run_extraction
    from ..report import NoImagesWarning

    config = getattr(args, "config", None) or config_from_args(args)
    if uses_shards(args):  # -o is a folder of shard stores
        return run_sharded(args, config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoImagesWarning)  # said below as an error, --quiet or not
        with flag_names():
            report = run_extraction(config, plan=getattr(args, "plan", None))
    if args.progress or report.interrupted or report.complete_already:
        print(report.summary())
    if report.no_images:
        print(f"fastfeat: error: {report.no_images_message()}", file=sys.stderr)
        return 1
    return 130 if report.interrupted else 0
