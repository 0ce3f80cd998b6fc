"""``fastfeat classify DIR IMAGES -o predictions.csv``: apply a probe's classifier to new images."""

from __future__ import annotations


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "classify",
        help="classify new images with a classifier written by `fastfeat probe`",
        description="Extract the features of IMAGES with exactly the settings of the store the classifier was "
        "trained on (model, weights, layer, size, interpolation, preprocessing, precision), apply the classifier "
        "and write one CSV row per file: path, predicted, probability (top-k), label, error (unreadable files).",
    )
    p.add_argument("classifier", metavar="DIR", help="directory written by `fastfeat probe -o DIR`")
    p.add_argument("images", help="folder (of class subfolders or flat) or .txt/.csv file list")
    p.add_argument("-o", "--output", required=True, help="the CSV to write")
    p.add_argument("--top-k", type=int, default=1, help="ranked classes per image (default 1)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: the store's)")
    p.add_argument("--device", default="auto", help="auto, cpu, gpu or gpu:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run, needs_tensorflow=True)


def run(args) -> int:
    from ..probes._deps import missing_as_runtime_error
    from ..probes.classify import classify

    with missing_as_runtime_error():
        result = classify(args.classifier, args.images, args.output, top_k=args.top_k, batch_size=args.batch_size,
                          device=args.device, progress=not args.quiet)  # fmt: skip
    if not args.quiet:
        print(result.summary())
    return 0
