"""The registry of keras.applications models fastfeat knows by name, and the names of cuts.

Each family is a :class:`ModelSpec`: its constructor, default input size and input
normalization; a cut is ``layer`` or ``layer:pool`` (:func:`parse_layer`, :func:`feature_key`). Pure data: this module imports nothing from fastfeat and never imports Keras, so
lower layers (input normalization, the dataset) can resolve a model name without the model code.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """A keras.applications model: how to build it and what input it expects.

    Attributes:
        name: short name used on the command line (``vgg19``).
        constructor: attribute of ``keras.applications`` (``VGG19``).
        default_size: (height, width) the ImageNet weights were trained at.
        preprocess: normalization mode of its ``preprocess_input`` (see ``fastfeat.preprocess``).
        min_size: smallest input side the architecture accepts.
        default_layer: the cut taken when none is given: the last layer of the headless
            (``include_top=False``) base, its last feature map, as Keras' ``pooling=None`` and
            timm's ``forward_features`` give it (``--pool avg`` makes it the pooled vector of
            ``pooling="avg"``). VGG keeps fastfeat's long-standing ``block4_conv2``.
    """

    name: str
    constructor: str
    default_size: tuple[int, int]
    preprocess: str
    min_size: int = 32
    default_layer: str = ""


_REGISTRY: dict[str, ModelSpec] = {}

#: The default cut of each family, by name prefix (first match): the last layer of its headless
#: base (the tests check each against the built model), VGG's block4_conv2 apart.
_DEFAULT_LAYERS = (
    ("vgg", "block4_conv2"), ("resnet*v2", "post_relu"), ("resnet", "conv5_block3_out"),
    ("inceptionv3", "mixed10"), ("inceptionresnetv2", "conv_7b_ac"), ("xception", "block14_sepconv2_act"),
    ("mobilenetv3small", "activation_17"), ("mobilenetv3large", "activation_19"), ("mobilenetv2", "out_relu"),
    ("mobilenet", "conv_pw_13_relu"), ("densenet", "relu"), ("efficientnet", "top_activation"),
    ("convnext", "layer_normalization"), ("nasnetmobile", "activation_187"), ("nasnetlarge", "activation_259"),
)  # fmt: skip


def _register(name, constructor, size, preprocess, min_size=32):
    _REGISTRY[name] = ModelSpec(name, constructor, (size, size), preprocess, min_size, _default_layer(name))


def _default_layer(name: str) -> str:
    for prefix, layer in _DEFAULT_LAYERS:
        head, _, tail = prefix.partition("*")
        if name.startswith(head) and name.endswith(tail):
            return layer
    raise KeyError(f"no default layer for {name!r}")


_register("vgg16", "VGG16", 224, "caffe")
_register("vgg19", "VGG19", 224, "caffe")
for _depth in (50, 101, 152):
    _register(f"resnet{_depth}", f"ResNet{_depth}", 224, "caffe")
    _register(f"resnet{_depth}v2", f"ResNet{_depth}V2", 224, "tf")
_register("inceptionv3", "InceptionV3", 299, "tf", 75)
_register("inceptionresnetv2", "InceptionResNetV2", 299, "tf", 75)
_register("xception", "Xception", 299, "tf", 71)
_register("mobilenet", "MobileNet", 224, "tf")
_register("mobilenetv2", "MobileNetV2", 224, "tf")
# MobileNetV3, EfficientNet(V2) and ConvNeXt normalize inside the graph: they take raw 0..255.
_register("mobilenetv3small", "MobileNetV3Small", 224, "none")
_register("mobilenetv3large", "MobileNetV3Large", 224, "none")
for _depth in (121, 169, 201):
    _register(f"densenet{_depth}", f"DenseNet{_depth}", 224, "torch")
for _b, _size in enumerate((224, 240, 260, 300, 380, 456, 528, 600)):
    _register(f"efficientnetb{_b}", f"EfficientNetB{_b}", _size, "none")
for _b, _size in enumerate((224, 240, 260, 300)):
    _register(f"efficientnetv2b{_b}", f"EfficientNetV2B{_b}", _size, "none")
for _v, _size in (("s", 384), ("m", 480), ("l", 480)):
    _register(f"efficientnetv2{_v}", f"EfficientNetV2{_v.upper()}", _size, "none")
for _v, _cls in (("tiny", "Tiny"), ("small", "Small"), ("base", "Base"), ("large", "Large"), ("xlarge", "XLarge")):
    _register(f"convnext{_v}", f"ConvNeXt{_cls}", 224, "none")
_register("nasnetmobile", "NASNetMobile", 224, "tf")
_register("nasnetlarge", "NASNetLarge", 331, "tf")


def models() -> list[str]:
    """Short names of every registered keras.applications model."""
    return list(_REGISTRY)


def is_model_file(model: str) -> bool:
    """True if ``model`` names a saved Keras model file rather than a registry name."""
    return str(model).lower().endswith((".keras", ".h5", ".hdf5"))


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` for a short name (case and ``_``/``-`` insensitive)."""
    key = str(name).lower().replace("_", "").replace("-", "")
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown model {name!r}.{hint} Run `fastfeat models` for the list, or pass a .keras/.h5 file. "
            f"Received: model={name!r}"
        )
    return _REGISTRY[key]


#: Pooling of a cut: none (the feature map), or global average / max over its spatial axes.
POOLS = ("none", "avg", "max")


def parse_layer(spec: str, default_pool: str = "none") -> tuple[str, str]:
    """Split ``"name"`` or ``"name:avg"`` into (layer name, pool)."""
    name, sep, pool = str(spec).rpartition(":")
    if not sep:
        name, pool = spec, default_pool
    pool = pool.lower()
    if pool not in POOLS:
        raise ValueError(f"Pooling must be one of {', '.join(POOLS)}. Received: {spec!r}")
    return name, pool


def feature_key(layer: str, pool: str) -> str:
    """The store's name for a cut: the layer name, with ``:avg``/``:max`` when pooled."""
    return layer if pool == "none" else f"{layer}:{pool}"
