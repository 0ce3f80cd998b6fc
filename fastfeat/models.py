"""Building models, truncation at named layers, and precision policies.

The registry of keras.applications families (:class:`ModelSpec`: constructor, default input
size, input normalization) lives in :mod:`fastfeat.registry` and is re-exported here.
:func:`build_base` builds the base (or loads a model file)
under a dtype policy, :func:`truncate` cuts it at one or more layers (all of them come out of one
forward pass, optionally pooled to vectors), and :func:`make_infer_fn` compiles the forward pass.
:func:`extractor_builder` gives ``precision -> infer fn`` from one set of weights, for
:func:`fastfeat.precision.choose_precision`. Keras is imported lazily: ``models()`` and the specs
cost nothing to import.
"""

from __future__ import annotations

import contextlib
import difflib
import os

from . import checks
from .precision import PRECISIONS, check_precision, rebuild_with_policy  # noqa: F401 -- PRECISIONS re-exported
from .registry import POOLS, ModelSpec, feature_key, get_spec, is_model_file, models, parse_layer  # noqa: F401


def normalize_size(image_size) -> tuple[int, int] | None:
    """``None``, an int, ``"HxW"`` or a (height, width) pair to ``None`` or (height, width)
    (:func:`fastfeat.checks.image_size`)."""
    return checks.image_size(image_size)


@contextlib.contextmanager
def caller_rng_kept():
    """Give the caller back its random generators after building or loading models: Python's
    ``random`` and NumPy's global state, Keras' global seed and seed generator, TensorFlow's
    global seed, as they were.

    Keras draws a default seed from Python's ``random`` for every initializer built without one
    (also when a saved model is loaded), and ``keras.utils.set_random_seed`` reseeds them all
    process-wide: without this, every ``extract`` moved or reset the caller's ``random.random()``
    and ``np.random.random()`` sequences.
    """
    import random

    import numpy as np

    saved_random, saved_numpy = random.getstate(), np.random.get_state()
    saved_keras = _keras_seed_state()
    saved_tf = _tf_global_seed()
    try:
        yield
    finally:
        random.setstate(saved_random)
        np.random.set_state(saved_numpy)
        _restore_keras_seed_state(saved_keras)
        _restore_tf_global_seed(saved_tf)


@contextlib.contextmanager
def seeded_init(seed: int):
    """Build under ``keras.utils.set_random_seed(seed)`` (a random initialization that reruns and
    resumes reproduce), inside :func:`caller_rng_kept`."""
    import keras

    with caller_rng_kept():
        keras.utils.set_random_seed(int(seed))
        yield


_KERAS_SEED_KEYS = ("GLOBAL_RANDOM_SEED", "GLOBAL_SEED_GENERATOR")


def _keras_seed_state() -> dict | None:
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # another Keras layout: nothing to restore
        return None
    return {k: global_state.get_global_attribute(_keras_seed_key(k)) for k in _KERAS_SEED_KEYS}


def _keras_seed_key(name: str) -> str:
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    return getattr(rng_utils, name, None) or getattr(seed_generator, name, name.lower())


def _restore_keras_seed_state(saved: dict | None) -> None:
    if saved is None:
        return
    from keras.src.backend.common import global_state

    for name, value in saved.items():
        global_state.set_global_attribute(_keras_seed_key(name), value)


def _tf_global_seed():
    try:
        from tensorflow.python.eager import context
    except ImportError:
        return None
    return context.global_seed()


def _restore_tf_global_seed(seed) -> None:
    import sys

    if "tensorflow" in sys.modules:
        import tensorflow as tf

        tf.random.set_seed(seed)


class WeightsDownloadError(RuntimeError):
    """Keras could not fetch ImageNet weights."""


def _with_policy(precision: str):
    """Context manager: a Keras global dtype policy for the duration of a build."""
    import contextlib

    import keras

    @contextlib.contextmanager
    def scope():
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(precision)
        try:
            yield
        finally:
            keras.config.set_dtype_policy(previous)

    return scope()


@contextlib.contextmanager
def fresh_layer_names():
    """Build with Keras' automatic layer names counted from zero, as in a fresh process.

    Some bases name layers automatically (MobileNetV3's and NASNet's last ``activation_N``) from
    a process-wide counter: without this, a second build in one process (an API caller's own
    models, a test run) would name the default cut differently. The counter is put back after.
    """
    import collections

    from keras.src.backend.common import global_state

    key = "object_name_uids"
    saved = global_state.get_global_attribute(key)
    global_state.set_global_attribute(key, collections.defaultdict(int))
    try:
        yield
    finally:
        global_state.set_global_attribute(key, saved)


def build_base(
    model: str,
    image_size: tuple[int, int] | None = None,
    weights: str | None = "imagenet",
    precision: str = "float32",
    safe_mode: bool = True,
):
    """Build a headless keras.applications base, or load a saved model file.

    Args:
        model: registry name (``vgg19``) or path to a ``.keras``/``.h5`` model.
        image_size: (height, width); default: the model's own size.
        weights: ``"imagenet"``, ``None``/``"none"`` (random init), or a path to a weights file for
            the ``include_top=False`` base.
        precision: Keras dtype policy to build under (one of :data:`PRECISIONS`). A model file is
            rebuilt under it when its layers were saved with another policy.
        safe_mode: load model files with Keras safe mode (no arbitrary code from lambdas).

    Returns:
        The Keras model.
    """
    import keras

    check_precision(precision, allow_auto=False)
    if is_model_file(model):
        if not os.path.exists(model):
            raise FileNotFoundError(f"No such model file: {model!r}")
        try:
            loaded = keras.saving.load_model(model, compile=False, safe_mode=safe_mode)
        except ValueError as e:
            if "safe_mode" not in str(e):
                raise
            raise ValueError(
                f"{model!r} holds Python code (a Lambda layer) that Keras' safe_mode does not run. If you trust "
                "the file, pass unsafe_model=True (--unsafe-model). Received: unsafe_model=False"
            ) from None
        # the file stores a policy per layer: the global policy does not reach them
        return rebuild_with_policy(loaded, precision, safe_mode=safe_mode)

    spec = get_spec(model)
    size = image_size or spec.default_size
    if min(size) < spec.min_size:
        raise ValueError(
            f"{spec.name} needs inputs of at least {spec.min_size}x{spec.min_size}. Received: image_size={size}"
        )
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    weights_file = None
    if weights not in (None, "imagenet"):
        weights_file = os.fspath(weights)
        if not os.path.exists(weights_file):
            raise FileNotFoundError(f"No such weights file: {weights_file!r}. Received: weights={weights!r}")
        weights = None
    constructor = getattr(keras.applications, spec.constructor)
    kwargs = dict(include_top=False, weights=weights, input_shape=(size[0], size[1], 3))
    with _with_policy(precision), fresh_layer_names():
        try:
            base = constructor(**kwargs)
        except Exception as e:  # noqa: BLE001 -- any download failure becomes one clear message
            if weights == "imagenet" and _looks_like_download_error(e):
                raise WeightsDownloadError(
                    f"Could not download the ImageNet weights for {spec.name} ({type(e).__name__}: {e}). "
                    "Check the network connection, or pass `--weights PATH` to a saved weights file, "
                    "or `--weights none` for random initialization."
                ) from e
            raise
    if weights_file is not None:
        load_weights(base, weights_file, f"{spec.name} (include_top=False, input {size[0]}x{size[1]})")
    return base


def load_weights(model, path: str, what: str) -> None:
    """``model.load_weights(path)`` with one clear line when the file does not fit: a refusal
    becomes one ``ValueError`` (Keras' lists every object and tensor, ~10 KB), and Keras' warning
    per layer it skipped becomes one warning with the count."""
    import re
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
        except Exception as e:  # noqa: BLE001 -- any refusal becomes one message
            text = str(e)
            found = re.search(r"Layer '[^']+' expected [^.\n]*", text)
            reason = found.group(0) if found else text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__
            raise ValueError(
                f"The weights file {path!r} does not fit {what}: {reason}. Pass a file saved from this model "
                f"at this input size (--weights PATH), or --weights imagenet / none. Received: weights={path!r}"
            ) from None
    skipped = [w for w in caught if issubclass(w.category, UserWarning)]
    if skipped:
        warnings.warn(
            f"Loading {path!r} into {what} skipped {len(skipped)} part(s) of the model, which keep their "
            f"random initialization (first: {str(skipped[0].message)[:160]})",
            UserWarning,
            stacklevel=3,
        )


def _looks_like_download_error(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(k in text for k in ("url", "http", "fetch", "download", "connection", "resolve", "network"))


def list_layers(model) -> list[tuple[str, tuple]]:
    """(name, output shape without the batch axis) for every layer with a single output."""
    rows = []
    for layer in model.layers:
        try:
            shape = tuple(layer.output.shape[1:])
        except (AttributeError, ValueError):
            continue
        rows.append((layer.name, shape))
    return rows


def resolve_layer(model, name: str):
    """``model.get_layer(name)``, with a ``ValueError`` listing the closest names when unknown."""
    names = [layer.name for layer in model.layers]
    if name in names:
        return model.get_layer(name)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise ValueError(
        f"Model {model.name!r} has no layer {name!r}.{hint} "
        f"Run `fastfeat layers MODEL` for all {len(names)} names. Received: layer={name!r}"
    )


def truncate(base, cuts: list[tuple[str, str]]):
    """A model from ``base``'s input to every cut ``(layer, pool)``, as a dict keyed by feature key.

    All outputs come out of one forward pass. Pooled cuts are reduced over their spatial axes.
    """
    import keras

    outputs = {}
    for layer_name, pool in cuts:
        out = resolve_layer(base, layer_name).output
        if pool != "none":
            if len(out.shape) != 4:
                raise ValueError(
                    f"Pooling needs a 4-D (batch, height, width, channels) output; layer {layer_name!r} "
                    f"gives {tuple(out.shape)}. Use pool 'none' for it."
                )
            pooling = keras.layers.GlobalAveragePooling2D if pool == "avg" else keras.layers.GlobalMaxPooling2D
            out = pooling(name=f"fastfeat_{pool}_{layer_name}")(out)
        outputs[feature_key(layer_name, pool)] = out
    inputs = base.inputs[0] if len(base.inputs) == 1 else base.inputs  # a list input warns on tensor calls
    return keras.Model(inputs=inputs, outputs=outputs, name=f"{base.name}_fastfeat")


def input_size_of(model) -> tuple[int, int] | None:
    """(height, width) of a model's image input, or ``None`` if not fixed."""
    shape = model.inputs[0].shape
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        return None
    return int(shape[1]), int(shape[2])


def make_infer_fn(extractor):
    """A compiled function: float32 batch -> dict of float32 feature arrays (one forward pass).

    Traced once for any batch size (the batch axis of its signature is ``None``): the probe of
    ``precision="auto"``, full batches and the short last batch share one graph.
    """
    import tensorflow as tf

    shape = [None, *(int(d) if d is not None else None for d in extractor.inputs[0].shape[1:])]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def infer(x):
        outputs = extractor(x, training=False)
        return {k: tf.cast(v, tf.float32) for k, v in outputs.items()}

    return infer


def extractor_builder(base, cuts: list[tuple[str, str]], safe_mode: bool = True):
    """``precision -> infer fn`` over ``base`` cut at ``cuts``, every precision with ``base``'s weights.

    For :func:`fastfeat.precision.choose_precision`: each candidate must carry the same weights (two
    random initializations, or two loads, would make the comparison meaningless). ``base`` is used as
    it is for its own policy and rebuilt (:func:`fastfeat.precision.rebuild_with_policy`) for others.

    Args:
        base: the built model (:func:`build_base`).
        cuts: ``(layer, pool)`` pairs as for :func:`truncate`.
        safe_mode: Keras safe mode for the rebuild.

    Returns:
        A function ``build(precision)`` returning ``make_infer_fn(truncate(...))`` for that precision.
    """

    def build(precision: str):
        return make_infer_fn(truncate(rebuild_with_policy(base, precision, safe_mode=safe_mode), cuts))

    return build
