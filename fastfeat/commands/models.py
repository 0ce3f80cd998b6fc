"""``fastfeat models``: the keras.applications models fastfeat knows by name."""

from __future__ import annotations


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the models known by short name",
        description="List the keras.applications models fastfeat builds by short name (--model NAME), with "
        "their default input size, the input normalization of their preprocess_input, and the Keras "
        "constructor. Any saved .keras/.h5 model file works too. `fastfeat layers NAME` lists a model's layers.",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..models import get_spec, models

    print(f"{'model':<20} {'input':>9}  {'preprocess':<10} keras.applications")
    for name in models():
        spec = get_spec(name)
        h, w = spec.default_size
        print(f"{name:<20} {f'{h}x{w}':>9}  {spec.preprocess:<10} {spec.constructor}")
    return 0
