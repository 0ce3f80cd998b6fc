"""The run description: one frozen :class:`ExtractConfig` for every setting of an extraction.

It is the one source for the Python API's arguments and their checks (``fastfeat.extract``
builds one and every check that needs no model runs here, before TensorFlow is imported), the
CLI (``fastfeat/commands/extract.py`` maps its flags onto these fields in one table and takes its
defaults from here) and the settings' part of the store's metadata (:meth:`ExtractConfig.to_meta`);
what a resume and a merge must match is the table of :mod:`fastfeat.runkeys`.
Never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields

from . import checks
from .decode import DEFAULT_MAX_PIXELS, check_interpolation
from .precision import check_precision
from .preprocess import resolve_preprocess
from .registry import POOLS, feature_key, get_spec, is_model_file, parse_layer
from .runtime import parse_device
from .runkeys import MERGE_KEYS, RESUME_KEYS, RUN_KEYS, check_resumable  # noqa: F401 -- re-exported


DTYPES = ("float32", "float16")
ON_ERROR = ("skip", "raise")


def check_compression(spec: str | None) -> str:
    """``None``/``""``/``"none"``, ``"lzf"``, ``"gzip"`` or ``"gzip:LEVEL"`` (0..9), normalized."""
    from .store.chunks import parse_compression  # lazy: the CLI's --help does not load h5py

    parse_compression(spec)
    return "none" if spec in (None, "", "none") else str(spec)


def _resolve_augment(augment):
    """``None``, an ``Augment``, its dict, or a path to its JSON file -> ``Augment`` or ``None``."""
    if augment is None:
        return None
    from .augment import Augment

    if isinstance(augment, Augment):
        return augment
    if isinstance(augment, dict):
        return Augment.from_dict(augment)
    if isinstance(augment, (str, os.PathLike)):
        return Augment.from_json(os.fspath(augment))
    raise ValueError(f"`augment` must be an Augment, a dict or a JSON file path. Received: augment={augment!r}")


def _weights_label(weights, model_file: bool = False) -> str | None:
    if model_file and weights in (None, "imagenet"):
        return "model file"
    if weights is None:
        return None
    if weights == "imagenet":
        return "imagenet"
    return os.path.abspath(os.fspath(weights))


@dataclass(frozen=True)
class ExtractConfig:
    """Every setting of one extraction run, checked (see :func:`fastfeat.extract` for each one).

    Built from keyword arguments (``ExtractConfig(source, output, model=..., ...)``); values are
    normalized on creation: ``layers`` to a tuple, ``image_size`` to (height, width) or ``None``,
    ``weights="none"`` to ``None``, ``augment`` to an :class:`fastfeat.Augment`, ``seed`` to an
    int, ``compression`` to its spec. :meth:`check_paths` checks the file system.
    """

    source: str
    output: str
    model: str = "vgg19"
    layers: tuple[str, ...] | None = None  # None: the model's default cut (a model file: its last layer)
    image_size: tuple[int, int] | None = None
    batch_size: int | None = None
    weights: str | None = "imagenet"
    pool: str = "none"
    preprocess: str | None = None
    interpolation: str = "bilinear"
    dtype: str = "float32"
    precision: str = "auto"
    remeasure_precision: bool = False
    device: str | None = "auto"
    classes: tuple[str, ...] | None = None
    exif: bool = False
    reduced_decode: bool = True
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    follow_links: bool = False
    compression: str = "none"
    overwrite: bool = False
    resume: bool = False
    on_error: str = "skip"
    unsafe_model: bool = False
    augment: object = None
    augment_copies: int = 0
    seed: int | None = None
    cache: str | None = field(default=None, compare=False)  # where pixels come from, not what they are
    space_check: bool = field(default=True, compare=False)
    progress: bool = field(default=True, compare=False)

    def __post_init__(self):
        put = object.__setattr__.__get__(self)  # frozen: normalized values are set once, here
        put("source", os.fspath(self.source))
        put("output", os.fspath(self.output))
        checks.choice(self.dtype, "dtype", DTYPES)
        checks.choice(self.on_error, "on_error", ON_ERROR)
        checks.choice(self.pool, "pool", POOLS)
        check_precision(self.precision)
        if self.overwrite and self.resume:
            raise ValueError("`overwrite` and `resume` exclude each other. Received: overwrite=True, resume=True")
        if self.layers is None and not self.model_file:
            put("layers", (get_spec(self.model).default_layer,))  # an unknown name fails here
        if self.layers is not None:
            layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
            if not layers:
                raise ValueError(f"`layers` needs at least one layer name. Received: layers={self.layers!r}")
            put("layers", layers)
        keys = self.feature_keys
        if len(set(keys)) != len(keys):
            raise ValueError(f"`layers` repeats a cut. Received: layers={list(self.layers)}")
        put("image_size", checks.image_size(self.image_size))
        if self.batch_size is not None and (not checks.is_int(self.batch_size) or self.batch_size < 1):
            raise ValueError(f"`batch_size` must be >= 1 (or left out: chosen automatically). Received: batch_size={self.batch_size!r}")
        put("batch_size", None if self.batch_size is None else int(self.batch_size))
        if isinstance(self.weights, str) and self.weights.lower() == "none":
            put("weights", None)
        if isinstance(self.classes, str):
            put("classes", tuple(c.strip() for c in self.classes.split(",") if c.strip()) or None)
        elif self.classes is not None:
            put("classes", tuple(self.classes))
        if self.max_pixels is not None:
            put("max_pixels", checks.positive_int(self.max_pixels, "max_pixels", allow_none=True))
        put("compression", check_compression(self.compression))
        check_interpolation(self.interpolation)
        parse_device(self.device)
        copies = self.augment_copies or 0
        if not checks.is_int(copies) or copies < 0:
            raise ValueError(f"`augment_copies` must be an int >= 0. Received: augment_copies={self.augment_copies!r}")
        put("augment_copies", int(copies))
        if self.augment_copies and self.augment is None:
            raise ValueError("`augment_copies` needs `augment` (the augmentation to apply). Received: augment=None")
        if self.augment is not None and not self.augment_copies:
            raise ValueError(
                "`augment` is only used for augmented copies: pass augment_copies >= 1 (--augment-copies K). "
                f"Received: augment_copies={self.augment_copies}"
            )
        put("augment", _resolve_augment(self.augment))
        if self.seed is not None and not checks.is_int(self.seed):
            raise ValueError(f"`seed` must be an int or None. Received: seed={self.seed!r}")
        put("seed", 0 if self.seed is None else int(self.seed))
        if self.cache is not None:
            put("cache", os.fspath(self.cache))
        if not self.model_file:
            spec = get_spec(self.model)  # an unknown name fails here, with the closest names
            if self.image_size is not None and min(self.image_size) < spec.min_size:
                raise ValueError(f"{spec.name} needs inputs of at least {spec.min_size}x{spec.min_size}. "
                                 f"Received: image_size={self.image_size}")  # fmt: skip
        resolve_preprocess(self.preprocess)  # an unknown mode fails here (the default needs the model)

    # -- derived -----------------------------------------------------------------------------
    @property
    def model_file(self) -> bool:
        """Whether ``model`` is a saved Keras model file rather than a registry name."""
        return is_model_file(self.model)

    @property
    def cuts(self) -> list[tuple[str, str]]:
        """(layer, pool) of every cut, ``pool`` applied to layers given without one (none yet for a
        model file run at its default cut: its last layer, known once it is loaded)."""
        return [parse_layer(spec, self.pool) for spec in self.layers or ()]

    @property
    def feature_keys(self) -> list[str]:
        """The store's feature keys, one per cut."""
        return [feature_key(*cut) for cut in self.cuts]

    @property
    def model_name(self) -> str:
        """The model as the store records it: the registry name, or the file's absolute path."""
        return os.path.abspath(self.model) if self.model_file else get_spec(self.model).name

    @property
    def default_size(self) -> tuple[int, int] | None:
        """``image_size``, else the registry model's own size (``None`` for a model file: its input)."""
        return self.image_size or (None if self.model_file else get_spec(self.model).default_size)

    def normalization(self):
        """The input :class:`~fastfeat.preprocess.Normalization`: ``preprocess``, else the model's own."""
        default = "none" if self.model_file else get_spec(self.model).preprocess
        return resolve_preprocess(self.preprocess, default=default)

    @property
    def mode(self) -> str:
        """How the store is opened: ``resume`` (an existing one), ``overwrite`` or ``create``."""
        if self.resume and os.path.exists(self.output):
            return "resume"
        return "overwrite" if self.overwrite else "create"

    def check_paths(self) -> None:
        """The file-system checks (output, its folder, the model file), before anything is built."""
        if os.path.isdir(self.output) or self.output.endswith(("/", os.sep)):
            raise IsADirectoryError(f"`output` must be a .h5 file path, not a folder. Received: output={self.output!r}")
        if os.path.exists(self.output) and not (self.overwrite or self.resume):
            raise FileExistsError(f"{self.output!r} exists. Pass --overwrite to replace it, or --resume to complete it.")
        checks.output_dir(self.output)
        if self.model_file and not os.path.exists(self.model):
            raise FileNotFoundError(f"No such model file: {self.model!r}")
        if self.weights not in (None, "imagenet") and not os.path.exists(os.fspath(self.weights)):
            raise FileNotFoundError(f"No such weights file: {self.weights!r}. Received: weights={self.weights!r}")

    def replace(self, **changes) -> ExtractConfig:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def to_meta(self) -> dict:
        """The entries of the store's run description that come from the settings alone."""
        return {
            "model": self.model_name,
            "layers": self.feature_keys,
            "interpolation": self.interpolation,
            "preprocess": self.normalization().mode,
            "precision_requested": self.precision,
            "dtype": self.dtype,
            "weights": _weights_label(self.weights, self.model_file),
            "exif": bool(self.exif),
            "reduced_decode": bool(self.reduced_decode),
            "max_pixels": self.max_pixels,
            "follow_links": bool(self.follow_links),
            "compression": self.compression,
            "source": os.path.abspath(self.source),
            "augment_copies": self.augment_copies,
            "augment": self.augment.to_dict() if self.augment is not None else None,
            "seed": self.seed if self.augment_copies else None,
        }

    def to_dict(self) -> dict:
        """Every field, JSON-safe (``augment`` as its dict)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["augment"] = self.augment.to_dict() if self.augment is not None else None
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


#: Settings a store's run description records under the config field's own name.
_STORED_AS_IS = ("interpolation", "dtype", "exif", "reduced_decode", "max_pixels", "follow_links", "compression",
                 "augment_copies", "augment", "seed")  # fmt: skip


def settings_from_meta(meta: dict) -> dict:
    """The :class:`ExtractConfig` fields a store's run description fixes: what a resume takes
    from the store (the inverse of :meth:`ExtractConfig.to_meta`, plus the size and precision
    the run chose)."""
    from .precision import PRECISIONS

    out = {key: meta[key] for key in _STORED_AS_IS if key in meta}
    if isinstance(meta.get("model"), str):
        out["model"] = meta["model"]
    if meta.get("layers"):
        out["layers"] = tuple(meta["layers"])
    if meta.get("image_size"):
        out["image_size"] = tuple(meta["image_size"])
    if meta.get("preprocess"):
        out["preprocess"] = meta["preprocess"]
    if "weights" in meta and meta["weights"] != "model file":
        out["weights"] = meta["weights"]
    if meta.get("precision") in PRECISIONS:
        out["precision"] = meta["precision"]
    if isinstance(meta.get("batch_size"), int) and not meta.get("batch_size_auto"):
        out["batch_size"] = meta["batch_size"]
    if not out.get("augment_copies"):
        out["augment"], out["seed"] = None, None
    return out


def config_defaults() -> dict:
    """Field name -> default of :class:`ExtractConfig` (the CLI takes its defaults from here)."""
    return {f.name: f.default for f in fields(ExtractConfig) if f.default is not dataclasses.MISSING}
