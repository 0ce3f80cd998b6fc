"""``fastfeat show STORE -o DIR``: PNGs of stored features (activation maps, 2-D embedding)."""

from __future__ import annotations

import argparse


def _channels(text: str) -> list[int]:
    """``"0-7,12"`` -> [0, 1, ..., 7, 12]."""
    out = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like 0-7,12, got {text!r}") from None
    return out


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "show",
        help="draw stored features: channel activation maps and a 2-D embedding coloured by class",
        description="Write PNGs: a grid of the channel activation maps of one image (for a feature-map layer) "
        "and a 2-D embedding (PCA or t-SNE) of spatially averaged features coloured by class.",
    )
    p.add_argument("store", help="the .h5 store")
    p.add_argument("--layer", default=None, help="feature key (optional when the store has one)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory for the PNGs")
    p.add_argument("--image", default="0", help="row number or stored path of the image whose maps are drawn")
    p.add_argument("--channels", type=_channels, default=None, help="channels to draw, e.g. 0-15 (default: first 32)")
    p.add_argument("--embedding", default="pca", choices=("pca", "tsne", "none"), help="default: pca")
    p.add_argument("--no-activations", action="store_true", help="no activation-map grid")
    p.add_argument("--max-points", type=int, default=2000, help="images in the embedding (a seeded sample)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..probes._deps import missing_as_runtime_error
    from ..probes.show import show

    image = int(args.image) if args.image.isdigit() else args.image
    with missing_as_runtime_error():
        written = show(args.store, args.layer, args.output, activation_maps=False if args.no_activations else None,
                       image=image, channels=args.channels, method=None if args.embedding == "none" else args.embedding,
                       max_points=args.max_points, seed=args.seed)  # fmt: skip
    for path in written:
        print(f"fastfeat: wrote {path}")
    return 0
