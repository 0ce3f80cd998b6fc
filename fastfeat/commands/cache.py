"""``fastfeat cache SOURCE -o CACHE --image-size H[,W]``: decode every image once into a cache file."""

from __future__ import annotations

from ..decode import DEFAULT_MAX_PIXELS, INTERPOLATIONS


def register_subparser(subparsers) -> None:
    from .extract import _HelpFormatter, _max_pixels

    p = subparsers.add_parser(
        "cache",
        help="decode every image once into a cache that image_dataset(cache=) and extract --cache read",
        description="Decode every readable image under SOURCE once, to 8-bit RGB at the target size, into one "
        "file with labels, paths, failures, the decode settings and a fingerprint of every file. "
        "image_dataset(..., cache=CACHE) and `fastfeat extract --cache CACHE` then skip decoding; a cache whose "
        "files or settings changed is refused (--update re-decodes only the changed files).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("source", help="folder of class subfolders, flat folder of images, or .txt/.csv file list")
    p.add_argument("-o", "--output", required=True, help="the cache file to write (.h5)")
    p.add_argument("--image-size", required=True, help="N, H,W or HxW: the size the images are resized to")
    p.add_argument("--interpolation", default="bilinear", choices=list(INTERPOLATIONS),
                   help="resize filter; nearest = Keras parity")
    p.add_argument("--exif", action="store_true", help="apply EXIF orientation (Keras does not)")
    p.add_argument("--no-reduced-decode", action="store_true", help="never use JPEG DCT-domain downscaling")
    p.add_argument(
        "--max-pixels", type=_max_pixels, default=DEFAULT_MAX_PIXELS,
        help="refuse images declaring more pixels than this (decompression-bomb guard); 'none' for no limit",
    )  # fmt: skip
    p.add_argument("--classes", default=None, help="comma-separated class names, fixing their order")
    p.add_argument("--follow-links", action="store_true", help="follow symbolic links out of SOURCE")
    p.add_argument("--threads", type=int, default=None, help="decoding threads (default: one per core)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace an existing cache")
    group.add_argument("--resume", action="store_true", help="complete an interrupted build (same settings)")
    group.add_argument("--update", action="store_true", help="re-decode only files changed, added or removed since")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..cache import build_cache

    report = build_cache(
        args.source,
        args.output,
        args.image_size,
        interpolation=args.interpolation,
        exif=args.exif,
        reduced_decode=not args.no_reduced_decode,
        max_pixels=args.max_pixels,
        classes=args.classes,
        follow_links=args.follow_links,
        overwrite=args.overwrite,
        resume=args.resume,
        update=args.update,
        threads=args.threads,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(report.summary())
    return 0
