"""Built-in Keras models and loading of a user's model module.

A user module defines ``build_keras_model(hparams: dict) -> keras.Model`` (the name is configurable).
``hparams`` holds ``input_dim`` (length of the input feature vector), ``num_classes``,
``input_features`` (their names, in order) and ``seed``, plus any user hyperparameters. The model
must output logits (no softmax) of shape [batch, num_classes].
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from typing import Any, Callable, Dict

import keras

BUILTIN_MODELS = ("auto", "cnn", "mlp", "softmax_regression")
DEFAULT_MODEL_FN = "build_keras_model"


def _image_shape(input_dim: int):
    """(side, side, channels) when the flat input is a square image with 1 or 3 channels, else None."""
    for ch in (1, 3):
        side = int(round(math.sqrt(input_dim / ch)))
        if side * side * ch == input_dim and side >= 8:
            return side, side, ch
    return None


def small_cnn(input_dim: int, num_classes: int, *, num_conv: int = 2, filters: int = 32,
              dense_units: int = 64) -> keras.Model:
    """The TF Privacy codelab's small CNN on a flat input reshaped to a square image:
    ``num_conv`` x [Conv2D(filters, 3, relu) + MaxPool2D], Flatten, Dense(dense_units, relu), Dense(classes)."""
    shape = _image_shape(input_dim)
    if shape is None:
        raise ValueError(f"the cnn model needs a square image input (8x8x1, 32x32x3, ...); input_dim={input_dim}")
    layers = [keras.Input((input_dim,)), keras.layers.Reshape(shape)]
    side = shape[0]
    for _ in range(num_conv):
        # 'same' padding keeps small images (digits are 8x8) large enough for the pools.
        layers.append(keras.layers.Conv2D(filters, 3, activation="relu", padding="same"))
        if side >= 4:
            layers.append(keras.layers.MaxPooling2D())
            side //= 2
    layers += [keras.layers.Flatten(), keras.layers.Dense(dense_units, activation="relu"),
               keras.layers.Dense(num_classes)]
    return keras.Sequential(layers, name=f"cnn{num_conv}")


def mlp(input_dim: int, num_classes: int, hidden=(128, 128)) -> keras.Model:
    layers = [keras.Input((input_dim,))]
    layers += [keras.layers.Dense(h, activation="relu") for h in hidden]
    layers.append(keras.layers.Dense(num_classes))
    return keras.Sequential(layers, name="mlp")


def build_builtin_model(name: str, hparams: Dict[str, Any]) -> keras.Model:
    """One of the built-in models: ``cnn`` (codelab CNN, ``num_conv`` from hparams, default 2), ``mlp``,
    ``softmax_regression``; ``auto`` picks ``cnn`` for square image inputs and ``mlp`` otherwise."""
    input_dim, num_classes = int(hparams["input_dim"]), int(hparams["num_classes"])
    keras.utils.set_random_seed(int(hparams.get("seed", 0)))
    if name == "auto":
        name = "cnn" if _image_shape(input_dim) else "mlp"
    if name == "cnn":
        return small_cnn(input_dim, num_classes, num_conv=int(hparams.get("num_conv", 2)))
    if name == "mlp":
        return mlp(input_dim, num_classes, tuple(hparams.get("hidden_units", (128, 128))))
    if name == "softmax_regression":
        return keras.Sequential([keras.Input((input_dim,)), keras.layers.Dense(num_classes)],
                                name="softmax_regression")
    raise ValueError(f"unknown built-in model {name!r}; choose one of {BUILTIN_MODELS} or give a module file")


def load_model_fn(module_file: str, fn_name: str = DEFAULT_MODEL_FN) -> Callable[[Dict[str, Any]], keras.Model]:
    """Imports ``fn_name`` from a Python file; clear errors when the file or the function is missing."""
    if not os.path.isfile(module_file):
        raise FileNotFoundError(f"model module file not found: {module_file}")
    mod_name = "privacy_audit_user_module_" + os.path.splitext(os.path.basename(module_file))[0]
    spec = importlib.util.spec_from_file_location(mod_name, module_file)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import model module {module_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        have = sorted(n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_"))
        raise ValueError(f"model module {module_file} has no function {fn_name!r} "
                         f"(it should define {fn_name}(hparams) -> keras.Model; callables found: {have})")
    return fn


def build_model(hparams: Dict[str, Any], *, module_file: str = None, model_fn: str = DEFAULT_MODEL_FN,
                builtin: str = "auto") -> keras.Model:
    """Builds the model from a user module when given, else a built-in one; checks it outputs
    [batch, num_classes] logits."""
    if module_file:
        keras.utils.set_random_seed(int(hparams.get("seed", 0)))
        model = load_model_fn(module_file, model_fn)(dict(hparams))
        if not isinstance(model, keras.Model):
            raise ValueError(f"{model_fn} in {module_file} returned {type(model).__name__}, not a keras.Model")
    else:
        model = build_builtin_model(builtin, hparams)
    out_shape = tuple(model.output_shape) if hasattr(model, "output_shape") else None
    if out_shape is not None and out_shape[-1] != int(hparams["num_classes"]):
        raise ValueError(f"the model outputs {out_shape[-1]} values per example but the data has "
                         f"{hparams['num_classes']} classes")
    return model
