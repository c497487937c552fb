"""Load and save models: Keras 3 and tf-keras (Keras 2) inputs in, Keras 3 models out.

fixedq runs on Keras 3, but many models are still made with tf-keras. This module accepts:

- ``.keras`` and ``.h5`` files written by Keras 3 (loaded by Keras itself);
- ``.h5`` files written by tf-keras (a ``hard_sigmoid`` activation in them keeps tf-keras'
  definition, ``clip(0.2 x + 0.5, 0, 1)``, which Keras 3's name no longer means). Keras 3
  refuses those that contain ``DepthwiseConv2D`` or
  ``SeparableConv2D`` (their tf-keras configs carry a ``groups`` key and unused ``kernel_*``
  keys). The ``model_config`` JSON is read with h5py, the rejected keys are removed, and the
  cleaned copy (same weights, same layer names) is loaded by Keras 3's legacy-h5 reader;
- ``.keras`` files written by tf-keras (loaded with tf-keras, then converted);
- live ``tf_keras.Model`` objects, through :func:`from_tf_keras`.

Lambda layers hold Python bytecode: they are only deserialized with ``safe_mode=False``, which
must only be used for files you trust.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import h5py
import keras

from fixedq.io import atomic_path
from fixedq.layers.operators import TFOpLambda
from fixedq.layers.table_functions import tf_keras_hard_sigmoid
from fixedq.models.tf_op_lambda import rewrite_tf_op_lambdas

__all__ = ["from_tf_keras", "load_model", "save_model"]

_SAVE_EXTENSIONS = (".keras", ".h5")

#: Classes a rewritten tf-keras config names (see :mod:`fixedq.models.tf_op_lambda`).
TF_OP_OBJECTS = {"TFOpLambda": TFOpLambda}

# Keys that tf-keras writes in layer configs and Keras 3 rejects, with the values for which
# dropping them is exact (``None`` means any value: the key is unused by that layer).
_REJECTED_KEYS: dict[str, dict[str, tuple | None]] = {
    "DepthwiseConv2D": {
        "groups": (1,),
        "kernel_initializer": None,
        "kernel_regularizer": None,
        "kernel_constraint": None,
    },
    "SeparableConv2D": {
        "groups": (1,),
        "kernel_initializer": None,
        "kernel_regularizer": None,
        "kernel_constraint": None,
    },
    "SeparableConv1D": {
        "groups": (1,),
        "kernel_initializer": None,
        "kernel_regularizer": None,
        "kernel_constraint": None,
    },
    "Conv1DTranspose": {"groups": (1,)},
    "Conv2DTranspose": {"groups": (1,)},
    "Conv3DTranspose": {"groups": (1,)},
}


def _register_fixedq_layers() -> None:
    """Import ``fixedq.layers`` so its layers are registered for deserialization.

    fixedq's layers are registered with ``keras.saving.register_keras_serializable(
    package="fixedq")`` when their module is imported; importing the package before loading
    lets files containing them load without ``custom_objects``. The package may not exist in
    partial installs/checkouts, hence the guard.
    """
    if importlib.util.find_spec("fixedq.layers") is not None:
        importlib.import_module("fixedq.layers")


def _sniff(path: Path) -> str | None:
    """Return ``"zip"`` or ``"h5"`` from the file's content, ``None`` if neither."""
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if h5py.is_hdf5(path):
            return "h5"
    except OSError:
        return None
    return None


def _not_a_model(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{str(path)!r} is not a Keras model file ({why}); expected a .keras archive "
        "(zip with config.json) or an .h5 file with a 'model_config' attribute, "
        "written by Keras 3 or tf-keras"
    )


def _read_zip_config(path: Path) -> tuple[dict, str]:
    """Model config and Keras version of a ``.keras`` archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names:
                raise _not_a_model(path, "zip archive without config.json")
            config = json.loads(archive.read("config.json"))
            metadata = {}
            if "metadata.json" in names:
                metadata = json.loads(archive.read("metadata.json"))
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise _not_a_model(path, f"unreadable zip archive: {exc}") from exc
    if not isinstance(config, dict) or "class_name" not in config:
        raise _not_a_model(path, "config.json is not a Keras object config")
    return config, str(metadata.get("keras_version", ""))


def _read_h5_config(path: Path) -> tuple[dict, str]:
    """Model config and Keras version of an ``.h5`` model file."""
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            version = f.attrs.get("keras_version", "")
    except OSError as exc:
        raise ValueError(f"{str(path)!r} is a corrupt or unreadable HDF5 file: {exc}") from exc
    if raw is None:
        raise _not_a_model(
            path, "HDF5 file without 'model_config': a weights-only file cannot be loaded alone"
        )
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if isinstance(version, bytes):
        version = version.decode("utf-8")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _not_a_model(path, f"'model_config' is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or "config" not in config:
        raise _not_a_model(path, "'model_config' is not a Keras model config")
    return config, str(version)


def _walk_layers(config: Any):
    """Yield every layer config dict (``class_name`` + ``config``) nested in a model config."""
    if isinstance(config, dict):
        if "class_name" in config and isinstance(config.get("config"), dict):
            yield config
        for value in config.values():
            yield from _walk_layers(value)
    elif isinstance(config, list):
        for value in config:
            yield from _walk_layers(value)


def _lambda_layer_names(config: dict) -> list[str]:
    return [
        str(layer["config"].get("name", "?"))
        for layer in _walk_layers(config)
        if layer.get("class_name") == "Lambda"
    ]


def _check_lambdas(config: dict, path: Path | str, safe_mode: bool) -> None:
    if not safe_mode:
        return
    names = _lambda_layer_names(config)
    if names:
        raise ValueError(
            f"{str(path)!r} contains Lambda layer(s) {names}: a Lambda layer stores Python "
            "bytecode, which is not deserialized in safe mode. Pass safe_mode=False to load it, "
            "only if you trust the file."
        )


def _unwrap_single_io(model_config: dict) -> bool:
    """tf-keras writes a single input/output as ``[[name, 0, 0]]``; Keras 3 as ``[name, 0, 0]``.

    Keeping the nested form would make the Keras 3 model expect a list of one input and return a
    list of one output. Return True if changed.
    """
    changed = False
    for key in ("input_layers", "output_layers"):
        value = model_config.get(key)
        if (
            isinstance(value, list)
            and len(value) == 1
            and isinstance(value[0], list)
            and len(value[0]) == 3
            and isinstance(value[0][0], str)
        ):
            model_config[key] = value[0]
            changed = True
    return changed


_MODEL_CLASSES = ("Sequential", "Functional", "Model")


def _history_refs(model_config: dict):
    """Yield the mutable ``[layer_name, node_index, tensor_index, ...]`` lists of a functional
    config in the legacy (tf-keras) format: inbound nodes and output layers."""
    for layer in model_config.get("layers", []):
        for node in layer.get("inbound_nodes", []) or []:
            if isinstance(node, list):
                for ref in node:
                    if isinstance(ref, list) and len(ref) >= 3 and isinstance(ref[0], str):
                        yield ref
    outputs = model_config.get("output_layers")
    if isinstance(outputs, list) and outputs and isinstance(outputs[0], str):
        outputs = [outputs]
    for ref in outputs or []:
        if isinstance(ref, list) and len(ref) >= 3 and isinstance(ref[0], str):
            yield ref


def _renumber_nested_model_nodes(model_config: dict) -> bool:
    """tf-keras gives a nested model an internal node 0, so its first call is node 1; Keras 3
    numbers calls from 0. Shift references to nested models whose first used node is 1."""
    if "input_layers" not in model_config or not isinstance(model_config.get("layers"), list):
        return False
    nested = {
        layer.get("name", layer.get("config", {}).get("name"))
        for layer in model_config["layers"]
        if layer.get("class_name") in _MODEL_CLASSES
    }
    if not nested:
        return False
    refs = [ref for ref in _history_refs(model_config) if ref[0] in nested]
    first_used: dict[str, int] = {}
    for ref in refs:
        first_used[ref[0]] = min(first_used.get(ref[0], ref[1]), ref[1])
    changed = False
    for ref in refs:
        if first_used[ref[0]] == 1:
            ref[1] -= 1
            changed = True
    return changed


#: Layer-config keys that name an activation function.
_ACTIVATION_KEYS = ("activation", "recurrent_activation")


def _keep_tf_keras_activations(layer_config: dict) -> bool:
    """tf-keras' ``hard_sigmoid`` is ``clip(0.2 x + 0.5, 0, 1)``; Keras 3 reads the same name
    as ``relu6(x + 3) / 6``, a different function. Point every ``"hard_sigmoid"`` activation
    of a tf-keras config at :func:`fixedq.layers.table_functions.tf_keras_hard_sigmoid`, so the
    loaded model computes what the tf-keras model computed. Return True if changed."""
    changed = False
    for key in _ACTIVATION_KEYS:
        value = layer_config.get(key)
        if isinstance(value, dict) and value.get("class_name") == "function":
            value = value.get("config")
        if value == "hard_sigmoid":
            layer_config[key] = keras.activations.serialize(tf_keras_hard_sigmoid)
            changed = True
    return changed


def _clean_legacy_config(config: dict) -> bool:
    """Adapt, in place, a tf-keras model config for Keras 3. Return True if changed.

    Removes the layer-config keys that Keras 3 rejects, unwraps single inputs/outputs and
    keeps tf-keras' ``hard_sigmoid`` (:func:`_keep_tf_keras_activations`).

    Raises ValueError when a key carries a value that Keras 3 cannot represent (e.g. a
    transposed convolution with ``groups != 1``).
    """
    changed = False
    for layer in _walk_layers(config):
        changed |= rewrite_tf_op_lambdas(layer["config"])
        changed |= _renumber_nested_model_nodes(layer["config"])
        changed |= _unwrap_single_io(layer["config"])
        changed |= _keep_tf_keras_activations(layer["config"])
        rejected = _REJECTED_KEYS.get(layer["class_name"])
        if not rejected:
            continue
        layer_config = layer["config"]
        for key, allowed in rejected.items():
            if key not in layer_config:
                continue
            value = layer_config[key]
            if allowed is not None and value not in allowed:
                raise ValueError(
                    f"layer {layer_config.get('name')!r} ({layer['class_name']}) has "
                    f"{key}={value!r}, which Keras 3 does not support; allowed: {allowed}"
                )
            del layer_config[key]
            changed = True
    return changed


def _load_legacy_h5(
    path: Path, config: dict, custom_objects: dict | None, safe_mode: bool, compile: bool
) -> keras.Model:
    """Load a tf-keras ``.h5`` file with Keras 3, after cleaning its config if needed."""
    config = copy.deepcopy(config)
    custom_objects = {**TF_OP_OBJECTS, **(custom_objects or {})}
    if not _clean_legacy_config(config):
        return keras.saving.load_model(
            path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
        )
    # Keras 3's legacy-h5 reader rebuilds the model from the config and loads the weights layer
    # by layer (same names, same order), so give it a copy whose only change is the config.
    with tempfile.TemporaryDirectory(prefix="fixedq_load_") as tmp:
        cleaned = Path(tmp) / "model.h5"
        shutil.copyfile(path, cleaned)
        with h5py.File(cleaned, "r+") as f:
            f.attrs["model_config"] = json.dumps(config)
        return keras.saving.load_model(
            cleaned, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
        )


def _load_tf_keras_archive(
    path: Path, custom_objects: dict | None, safe_mode: bool, compile: bool
) -> keras.Model:
    """Load a tf-keras ``.keras`` archive with tf-keras, then convert it to Keras 3."""
    try:
        import tf_keras
    except ImportError as exc:
        raise ValueError(
            f"{str(path)!r} is a .keras file written by tf-keras (Keras 2); loading it needs the "
            "'tf-keras' package (pip install tf-keras), or re-save it as .h5 with tf-keras"
        ) from exc
    tk_model = tf_keras.models.load_model(
        path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
    )
    return from_tf_keras(tk_model, custom_objects=custom_objects)


def load_model(
    path: str | os.PathLike,
    custom_objects: dict | None = None,
    safe_mode: bool = True,
    compile: bool = False,
) -> keras.Model:
    """Load a Keras 3 or tf-keras model file (``.keras`` or ``.h5``) as a Keras 3 model.

    The format is recognized from the file content. tf-keras ``.h5`` files containing
    ``DepthwiseConv2D``/``SeparableConv2D`` (which Keras 3 alone refuses) are handled. fixedq's
    own layers load without ``custom_objects``.

    Args:
        path: the model file.
        custom_objects: extra classes/functions needed to deserialize the model.
        safe_mode: refuse to deserialize Lambda layers (Python bytecode). Pass ``False`` only
            for files you trust.
        compile: restore the training configuration too (default: inference only).

    Returns:
        A Keras 3 model.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a Keras model, is corrupt, or contains a Lambda layer while
            ``safe_mode`` is True.

    Example:
        >>> from fixedq.models.loading import load_model
        >>> model = load_model("mobilenet_tf_keras.h5")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {str(path)!r}")
    if path.is_dir():
        raise _not_a_model(path, "it is a directory (SavedModel directories are not supported)")
    _register_fixedq_layers()
    kind = _sniff(path)
    if kind is None:
        raise _not_a_model(path, "neither a zip archive nor an HDF5 file")
    if kind == "zip":
        config, version = _read_zip_config(path)
        _check_lambdas(config, path, safe_mode)
        if version.startswith("2"):
            return _load_tf_keras_archive(path, custom_objects, safe_mode, compile)
        if path.suffix != ".keras":
            # Keras chooses the reader by extension: present the archive as a .keras file.
            with tempfile.TemporaryDirectory(prefix="fixedq_load_") as tmp:
                renamed = Path(tmp) / "model.keras"
                shutil.copyfile(path, renamed)
                return keras.saving.load_model(
                    renamed, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
                )
        return keras.saving.load_model(
            path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
        )
    config, version = _read_h5_config(path)
    _check_lambdas(config, path, safe_mode)
    if version.startswith("3"):  # written by Keras 3 itself: its own reader, whatever the name
        if path.suffix in (".h5", ".hdf5"):
            return keras.saving.load_model(
                path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
            )
        with tempfile.TemporaryDirectory(prefix="fixedq_load_") as tmp:
            renamed = Path(tmp) / "model.h5"
            shutil.copyfile(path, renamed)
            return keras.saving.load_model(
                renamed, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
            )
    if path.suffix not in (".h5", ".hdf5"):
        with tempfile.TemporaryDirectory(prefix="fixedq_load_") as tmp:
            renamed = Path(tmp) / "model.h5"
            shutil.copyfile(path, renamed)
            return _load_legacy_h5(renamed, config, custom_objects, safe_mode, compile)
    return _load_legacy_h5(path, config, custom_objects, safe_mode, compile)


def from_tf_keras(model: Any, custom_objects: dict | None = None) -> keras.Model:
    """Convert a live ``tf_keras.Model`` (Sequential or functional) to an equivalent Keras 3 model.

    The model goes through tf-keras's own ``.h5`` writer and :func:`load_model` (in a temporary
    directory), so layer names, configs and weights are carried over exactly. Lambda layers are
    converted too: the model is already live in this process, so no untrusted code is involved.

    Args:
        model: a built ``tf_keras.Model``.
        custom_objects: classes needed to rebuild custom layers in Keras 3.

    Returns:
        A new Keras 3 model; ``model`` is not modified.

    Raises:
        TypeError: ``model`` is not a ``tf_keras.Model``.

    Example:
        >>> import tf_keras
        >>> from fixedq.models.loading import from_tf_keras
        >>> tk = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
        >>> from_tf_keras(tk).output_shape
        (None, 2)
    """
    try:
        import tf_keras
    except ImportError:
        tf_keras = None
    if tf_keras is None or not isinstance(model, tf_keras.Model):
        hint = ""
        if isinstance(model, keras.Model):
            hint = " (it is already a Keras 3 model: use it directly)"
        raise TypeError(
            f"from_tf_keras expects a tf_keras.Model (Sequential or functional), "
            f"got {type(model).__module__}.{type(model).__qualname__}{hint}"
        )
    with tempfile.TemporaryDirectory(prefix="fixedq_convert_") as tmp:
        path = Path(tmp) / "model.h5"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model.save(path, include_optimizer=False, save_format="h5")
            except NotImplementedError as exc:
                raise TypeError(
                    f"cannot convert {type(model).__qualname__} {model.name!r}: only Sequential "
                    f"and functional tf_keras models can be converted ({exc})"
                ) from exc
        return load_model(path, custom_objects=custom_objects, safe_mode=False, compile=False)


def save_model(model: keras.Model, path: str | os.PathLike) -> None:
    """Save a Keras 3 model atomically as ``.keras`` or ``.h5`` (chosen by extension).

    The model is written with :func:`fixedq.io.atomic_path`: to a temporary file in the target
    directory, then moved over ``path``. An exception, SIGTERM or Ctrl-C never leaves a
    half-written file or a temporary file behind, and the file gets the permissions ``open()``
    would give (the replaced file's, else ``0o666 & ~umask``).

    Args:
        model: a Keras 3 model.
        path: destination ending in ``.keras`` or ``.h5``; its directory must exist.

    Raises:
        TypeError: ``model`` is not a Keras 3 model.
        ValueError: unsupported extension.
        FileNotFoundError: the destination directory does not exist.

    Example:
        >>> import keras
        >>> from fixedq.models.loading import save_model
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> save_model(model, "model.keras")  # doctest: +SKIP
    """
    if not isinstance(model, keras.Model):
        hint = ""
        if type(model).__module__.startswith("tf_keras"):
            hint = " (a tf_keras model: convert it first with fixedq.models.loading.from_tf_keras)"
        raise TypeError(
            f"save_model expects a Keras 3 keras.Model, got "
            f"{type(model).__module__}.{type(model).__qualname__}{hint}"
        )
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SAVE_EXTENSIONS:
        raise ValueError(
            f"cannot save to {str(path)!r}: extension {path.suffix!r} is not supported; "
            f"allowed: {_SAVE_EXTENSIONS}"
        )
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(
            f"cannot save to {str(path)!r}: directory {str(directory)!r} does not exist "
            "(create it first)"
        )
    with atomic_path(path, suffix=suffix) as tmp_name, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that .h5 is a legacy format.
        keras.saving.save_model(model, tmp_name, overwrite=True)
