"""Tiny fixtures for the executor tests (TFX's executor_test style): artifacts built by hand around files
written here, so that ``Executor().Do(input_dict, output_dict, exec_properties)`` runs without a pipeline.

- Examples: GZIP TFRecords of tf.Example under ``<uri>/Split-<name>/``, ``split_names`` set, from arrays
  (:func:`write_examples`), e.g. a seeded subset of scikit-learn's digits (:func:`digits_examples`).
- Output artifacts with their own directory (:func:`output_artifact`), as TFX's launcher creates them.
- A DPTrainer-layout Model (``keras/model.keras``, ``checkpoints/`` with ``index.json``, ``model_info.json``)
  from Keras models (:func:`write_keras_model_artifact`), and logits and cross-entropy recomputed in numpy
  from a Dense-only model's weights (:func:`numpy_logits`, :func:`cross_entropy`), so that tests compare the
  executors' numbers with an independent computation; ε recomputed with dp-accounting
  (:func:`dp_accounting_epsilon`).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

LABEL_KEY = "label"
DIGITS_FEATURES = [f"pixel_{i:02d}" for i in range(64)]

Split = Tuple[np.ndarray, np.ndarray]


def digits(n: int, seed: int = 0) -> Split:
    """A seeded subset of scikit-learn's digits: x float32 [n, 64] (pixels / 16), y int64 [n]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))[:n]
    return (data.data[order] / 16.0).astype(np.float32), data.target[order].astype(np.int64)


def serialize(x: np.ndarray, y: np.ndarray, feature_names: Sequence[str] = DIGITS_FEATURES,
              label_key: str = LABEL_KEY) -> List[bytes]:
    """Serialized tf.Examples: one float feature per column of x, the int64 label."""
    import tensorflow as tf

    out = []
    for row, label in zip(x, y):
        feats = {k: tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))
                 for k, v in zip(feature_names, row)}
        feats[label_key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    return out


def example_sha1(record: bytes) -> str:
    """The hex sha1 of a tf.Example's deterministic serialization (the examples' id in the artifacts)."""
    import tensorflow as tf

    return hashlib.sha1(tf.train.Example.FromString(record).SerializeToString(deterministic=True)).hexdigest()


def write_examples(uri: str, splits: Mapping[str, Split], feature_names: Sequence[str] = DIGITS_FEATURES,
                   label_key: str = LABEL_KEY):
    """An Examples artifact at ``uri`` with one GZIP TFRecord file per split (``Split-<name>/``)."""
    import tensorflow as tf
    from tfx.types import artifact_utils, standard_artifacts

    for name, (x, y) in splits.items():
        d = os.path.join(uri, f"Split-{name}")
        os.makedirs(d, exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(d, "data_tfrecord-00000-of-00001.gz"), options="GZIP") as w:
            for record in serialize(x, y, feature_names, label_key):
                w.write(record)
    examples = standard_artifacts.Examples()
    examples.uri = uri
    examples.split_names = artifact_utils.encode_split_names(list(splits))
    return examples


def digits_examples(uri: str, n_train: int = 100, n_eval: int = 100, seed: int = 0):
    """``(Examples artifact, {"train": (x, y), "eval": (x, y)})``: members (train) and non-members (eval)
    drawn without overlap from one seeded subset of the digits."""
    x, y = digits(n_train + n_eval, seed)
    splits = {"train": (x[:n_train], y[:n_train]), "eval": (x[n_train:], y[n_train:])}
    return write_examples(uri, splits), splits


def output_artifact(artifact_type, uri: str):
    """An output artifact of ``artifact_type`` whose directory exists (TFX's launcher makes it)."""
    os.makedirs(uri, exist_ok=True)
    artifact = artifact_type()
    artifact.uri = uri
    return artifact


def input_artifact(artifact_type, uri: str, **string_properties: str):
    """An input artifact of ``artifact_type`` at an existing ``uri`` with string custom properties."""
    artifact = artifact_type()
    artifact.uri = uri
    for key, value in string_properties.items():
        artifact.set_string_custom_property(key, value)
    return artifact


def channel(artifact_type):
    """A channel to build a component with (its exec_properties are what the executor receives)."""
    from tfx import types

    return types.Channel(type=artifact_type)


def write_keras_model_artifact(uri: str, final, checkpoints: Mapping[int, object], *, model_variant: str,
                               input_features: Sequence[str], num_classes: int, private: bool = False,
                               epsilon: Optional[Mapping[int, float]] = None) -> None:
    """The DPTrainer's Model layout: keras/model.keras (``final``), checkpoints/epoch_NNNN.keras for every
    ``{epoch: model}`` with checkpoints/index.json, model_info.json."""
    os.makedirs(os.path.join(uri, "checkpoints"), exist_ok=True)
    os.makedirs(os.path.join(uri, "keras"), exist_ok=True)
    index = []
    for epoch, model in sorted(checkpoints.items()):
        name = f"epoch_{epoch:04d}.keras"
        model.save(os.path.join(uri, "checkpoints", name))
        index.append({"epoch": epoch, "path": name, "steps": epoch * 10,
                      "epsilon": (epsilon or {}).get(epoch)})
    with open(os.path.join(uri, "checkpoints", "index.json"), "w") as f:
        json.dump({"checkpoints": index}, f)
    final.save(os.path.join(uri, "keras", "model.keras"))
    with open(os.path.join(uri, "model_info.json"), "w") as f:
        json.dump({"model_variant": model_variant, "label_key": LABEL_KEY, "feature_keys": None,
                   "input_features": list(input_features), "private": private,
                   "epochs": max(checkpoints) if checkpoints else None, "num_classes": num_classes}, f)


def dense_weights(model) -> List[Tuple[np.ndarray, np.ndarray, str]]:
    """``[(kernel, bias, activation name)]`` of a Keras model made of Dense layers only, as float64."""
    out = []
    for layer in model.layers:
        kernel, bias = (np.asarray(w, dtype=np.float64) for w in layer.get_weights())
        out.append((kernel, bias, layer.get_config()["activation"]))
    return out


def numpy_logits(weights: Sequence[Tuple[np.ndarray, np.ndarray, str]], x: np.ndarray) -> np.ndarray:
    """Logits [N, C] of a Dense-only model (relu or linear activations) in float64 numpy."""
    h = np.asarray(x, dtype=np.float64)
    for kernel, bias, activation in weights:
        h = h @ kernel + bias
        if activation == "relu":
            h = np.maximum(h, 0.0)
        elif activation != "linear":
            raise ValueError(f"activation {activation!r} not supported here")
    return h


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example ``-log softmax(logits)[y]`` [N] (nats), computed stably in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return log_norm - logits[np.arange(len(y)), np.asarray(y)]


def dp_accounting_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """ε of ``steps`` Poisson-sampled Gaussian steps (rate q, noise multiplier σ) at δ, with dp-accounting's RDP
    accountant on the orders of TF Privacy's compute_dp_sgd_privacy: an independent recomputation."""
    import dp_accounting

    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512]
    accountant = dp_accounting.rdp.RdpAccountant(orders)
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return accountant.get_epsilon(delta)


def read_json(path: str) -> Dict:
    with open(path) as f:
        return json.load(f)
