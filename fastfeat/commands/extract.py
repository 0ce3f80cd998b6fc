"""``fastfeat extract SOURCE -o OUT.h5``: features of every image into an HDF5 store."""

from __future__ import annotations

import argparse

from ..decode import DEFAULT_MAX_PIXELS, INTERPOLATIONS
from ..models import POOLS
from ..precision import PRECISION_CHOICES
from ..preprocess import MODES


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "extract",
        help="extract features of a folder of images into an HDF5 store",
        description="Extract CNN features of every image under SOURCE into one HDF5 store.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("source", help="folder of class subfolders, flat folder of images, or .txt/.csv file list")
    p.add_argument("-o", "--output", required=True, help="the .h5 store to write")
    p.add_argument("--model", default="vgg19", help="keras.applications short name (see `fastfeat models`) or a .keras/.h5 file")
    p.add_argument(
        "--layer", dest="layers", action="append", metavar="NAME[:POOL]",
        help="layer to cut at (repeat for several; all from one forward pass). Default: block4_conv2",
    )  # fmt: skip
    p.add_argument("--pool", default="none", choices=POOLS, help="pooling for layers given without :POOL")
    p.add_argument("--image-size", default=None, help="N or HxW (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: automatic, within memory)")
    p.add_argument("--weights", default="imagenet", help="imagenet, none (random init), or a weights file for the headless base")
    p.add_argument("--preprocess", default=None, choices=MODES, help="normalization override (default: the model's own)")
    p.add_argument("--interpolation", default="bilinear", choices=list(INTERPOLATIONS), help="resize filter; nearest = Keras parity")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="stored feature dtype")
    p.add_argument(
        "--precision", default="auto", choices=PRECISION_CHOICES,
        help="inference precision; auto: the fastest native precision within 2e-2 of float32, measured once on "
        "a few images when that costs <= 5%% of the job, and cached per machine/model/layer/size (default: auto)",
    )
    p.add_argument(
        "--remeasure-precision", action="store_true",
        help="with --precision auto: ignore the cached decision, measure decisively and cache the new one",
    )  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, gpu or gpu:N")
    p.add_argument("--classes", default=None, help="comma-separated class names, fixing their order")
    p.add_argument("--exif", action="store_true", help="apply EXIF orientation (Keras does not)")
    p.add_argument("--no-reduced-decode", action="store_true", help="never use JPEG DCT-domain downscaling")
    p.add_argument(
        "--max-pixels", type=_max_pixels, default=DEFAULT_MAX_PIXELS,
        help="refuse images declaring more pixels than this (decompression-bomb guard); 'none' for no limit",
    )  # fmt: skip
    p.add_argument("--follow-links", action="store_true", help="follow symbolic links out of SOURCE")
    p.add_argument("--compression", default="none", help="none, lzf, gzip or gzip:LEVEL")
    p.add_argument("--on-error", default="skip", choices=("skip", "raise"), help="what to do with unreadable files")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace an existing output")
    group.add_argument("--resume", action="store_true", help="complete an interrupted output (same settings)")
    p.add_argument("--unsafe-model", action="store_true", help="load a model file without Keras safe mode (runs its code)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    aug = p.add_argument_group(
        "augmented copies",
        "Store K augmented copies of every image after its plain features (ImageDataGenerator semantics).",
    )
    aug.add_argument("--augment-copies", type=int, default=0, metavar="K", help="augmented copies per image")
    aug.add_argument("--augment", default=None, metavar="CONFIG.json", help="augmentation settings (Augment.to_dict() JSON)")
    aug.add_argument("--seed", type=int, default=None, help="seed of the augmentation draws (default 0)")
    for flag, kind, text in AUGMENT_FLAGS:
        aug.add_argument(flag, type=kind, default=None, help=text)
    aug.add_argument("--horizontal-flip", action="store_true", default=None, help="random left-right flips")
    aug.add_argument("--vertical-flip", action="store_true", default=None, help="random up-down flips")
    aug.add_argument("--fill-mode", default=None, choices=("constant", "nearest", "reflect", "wrap"), help="points outside the image")
    p.set_defaults(func=run, needs_tensorflow=True, graceful_stop=True)


def _max_pixels(text: str) -> int | None:
    """``"none"`` -> no limit, else a positive int."""
    if text.strip().lower() == "none":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int or 'none', got {text!r}")
    return value


def _floats(text: str):
    """``"0.2"`` -> 0.2, ``"0.8,1.2"`` -> [0.8, 1.2]."""
    parts = [float(v) for v in text.split(",") if v.strip()]
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


def run(args) -> int:
    from ..extraction import extract

    report = extract(
        args.source,
        args.output,
        model=args.model,
        layers=args.layers or ["block4_conv2"],
        image_size=args.image_size,
        batch_size=args.batch_size,
        weights=None if args.weights.lower() == "none" else args.weights,
        pool=args.pool,
        preprocess=args.preprocess,
        interpolation=args.interpolation,
        dtype=args.dtype,
        precision=args.precision,
        remeasure_precision=args.remeasure_precision,
        device=args.device,
        classes=args.classes,
        exif=args.exif,
        reduced_decode=not args.no_reduced_decode,
        max_pixels=args.max_pixels,
        follow_links=args.follow_links,
        compression=args.compression,
        overwrite=args.overwrite,
        resume=args.resume,
        on_error=args.on_error,
        unsafe_model=args.unsafe_model,
        augment=augment_from_args(args),
        augment_copies=args.augment_copies,
        seed=args.seed,
        progress=not args.quiet,
    )
    if not args.quiet or report.interrupted:
        print(report.summary())
    return 130 if report.interrupted else 0
