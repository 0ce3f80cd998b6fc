"""CLI subcommands: one module each, with ``register_subparser(subparsers)``."""
