"""``fastfeat layers MODEL``: every layer name of a model with its output shape; the cut
``fastfeat extract`` takes without ``--layer`` is marked ``<- default``."""

from __future__ import annotations


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "layers",
        help="list a model's layers and their output shapes",
        description="List the layers of MODEL (a short name or a .keras/.h5 file) with output shapes. "
        "The line marked '<- default' is the cut `fastfeat extract` takes without --layer.",
    )
    p.add_argument("model", help="a short name from `fastfeat models` (vgg19, resnet50, ...) or a .keras/.h5 file")
    p.add_argument("--image-size", default=None, help="N or HxW (default: the model's own)")
    p.add_argument("--pool", default="none", choices=("none", "avg", "max"), help="show shapes after pooling")
    p.add_argument("--unsafe-model", action="store_true", help="load a model file without Keras safe mode")
    p.set_defaults(func=run, needs_tensorflow=True)


def default_layer(model: str, base) -> str:
    """The layer ``fastfeat extract`` cuts at without ``--layer``: the registry's default, a model
    file's last layer."""
    from ..registry import get_spec, is_model_file

    return base.layers[-1].name if is_model_file(model) else get_spec(model).default_layer


def run(args) -> int:
    from ..models import build_base, list_layers, normalize_size

    base = build_base(args.model, normalize_size(args.image_size), weights=None, safe_mode=not args.unsafe_model)
    rows = list_layers(base)
    default = default_layer(args.model, base)
    width = max(len(name) for name, _ in rows)
    lines = []
    for name, shape in rows:
        if args.pool != "none" and len(shape) == 3:
            shape = shape[-1:]
        lines.append(f"{name:<{width}}  {str(tuple(shape)):<18}" + ("  <- default" if name == default else ""))
    print("\n".join(line.rstrip() for line in lines))
    return 0
