"""fastfeat: folders of images to CNN features, fast.

``import fastfeat`` is cheap: TensorFlow is imported only by the functions that need it.
"""

from __future__ import annotations

from ._version import __version__

__all__ = [
    "Augment",
    "Catalog",
    "ExtractConfig",
    "ExtractReport",
    "FeatureStore",
    "__version__",
    "build_cache",
    "build_catalog",
    "extract",
    "extract_sharded",
    "image_dataset",
    "open_store",
    "probe",
    "StopToken",
]

_LAZY = {
    "Augment": ("fastfeat.augment", "Augment"),
    "image_dataset": ("fastfeat.dataset", "image_dataset"),
    "extract": ("fastfeat.extraction", "extract"),
    "extract_sharded": ("fastfeat.sharding", "extract_sharded"),
    "ExtractReport": ("fastfeat.extraction", "ExtractReport"),
    "ExtractConfig": ("fastfeat.config", "ExtractConfig"),
    "StopToken": ("fastfeat.runloop", "StopToken"),
    "open_store": ("fastfeat.store", "open_store"),
    "probe": ("fastfeat.probes", "probe"),
    "FeatureStore": ("fastfeat.store", "FeatureStore"),
    "build_catalog": ("fastfeat.catalog", "build_catalog"),
    "build_cache": ("fastfeat.cache", "build_cache"),
    "Catalog": ("fastfeat.catalog", "Catalog"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastfeat' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
