"""``fastfeat probe STORE --layer KEY -o DIR``: train and evaluate a classifier on stored features."""

from __future__ import annotations

import argparse
import json

CLASSIFIERS = ("logistic", "svm", "rf", "knn", "dense")


class _ClassifierAction(argparse.Action):
    """Records the classifier; only the dense head needs TensorFlow (imported quietly by the CLI)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.needs_tensorflow = values == "dense"


def _numbers(text: str) -> list:
    try:
        return [int(v) if v.strip().lstrip("-").isdigit() else float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {text!r}") from None


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "probe",
        help="train a classifier on stored features and report how well it does",
        description="Train a classifier (logistic regression, linear SVM, random forest, kNN, or the dense head "
        "Flatten-Dense(256)-Dropout-Dense) on the features of one layer of a store; the regularization is chosen on "
        "tuning rows held out of the training images, and the report is computed on held-out images only. Writes "
        "metrics.json, confusion.png/.csv, reliability.png, predictions.csv and the classifier into DIR.",
    )
    p.add_argument("store", help="the .h5 store to train on")
    p.add_argument("--layer", default=None, help="feature key (optional when the store has one)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--val", default=None, metavar="STORE", help="a store of other images to evaluate on")
    group.add_argument("--val-split", type=float, default=0.2, metavar="FRACTION",
                       help="share of the images held out for evaluation (default 0.2)")  # fmt: skip
    p.add_argument("--classifier", default="logistic", choices=CLASSIFIERS, action=_ClassifierAction,
                   help="default: logistic")  # fmt: skip
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory for the report and the classifier")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and the models (default 0)")
    p.add_argument("--sweep", type=_numbers, default=None, metavar="V1,V2,...",
                   help="regularization values to try (C, min_samples_leaf, k, alpha or weight decay)")  # fmt: skip
    p.add_argument("--tune-split", type=float, default=0.2, help="share of the training images the sweep is scored on")
    p.add_argument("--max-memory", default=None, metavar="BYTES",
                   help="memory the training matrix may take, e.g. 2G (default: half the free memory); above it "
                   "logistic/svm stream minibatches")  # fmt: skip
    p.add_argument("--epochs", type=int, default=None, help="passes of the streamed/dense models (default 10/30)")
    p.add_argument("--batch-size", type=int, default=None, help="minibatch rows of the streamed/dense models")
    p.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples of the 95%% intervals (0: none)")
    p.add_argument("--overwrite", action="store_true", help="replace a classifier already in DIR")
    p.add_argument("--json", action="store_true", help="print metrics.json instead of the table")
    p.set_defaults(func=run, needs_tensorflow=False)


def run(args) -> int:
    from ..probes import probe
    from ..probes._deps import missing_as_runtime_error

    with missing_as_runtime_error():
        report = probe(
            args.store, args.layer, val=args.val, val_split=args.val_split, classifier=args.classifier,
            output=args.output, seed=args.seed, sweep=args.sweep, tune_split=args.tune_split,
            max_memory=args.max_memory, epochs=args.epochs, batch_size=args.batch_size, bootstrap=args.bootstrap,
            overwrite=args.overwrite,
        )  # fmt: skip
    if args.json:
        with open(f"{args.output}/metrics.json", encoding="utf-8") as f:
            print(json.dumps(json.load(f), indent=2))
    else:
        print(report.summary())
    return 0
