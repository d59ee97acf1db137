"""Batched inference of Keras models, one way everywhere: the evaluator's Beam workers, its driver and the
reference models (no TFX).

Keras models are loaded once per process (:func:`load_keras_model`) and run on fixed-shape batches
(:func:`predict_fixed_batches`), so that an example's outputs do not depend on how a runner grouped the
records.
"""

from __future__ import annotations

import threading
from typing import Any, Dict

import numpy as np

#: Rows per inference batch of the evaluator.
DEFAULT_INFERENCE_BATCH = 256

_MODEL_CACHE: Dict[str, Any] = {}
_MODEL_LOCK = threading.Lock()


def load_keras_model(path: str):
    """``keras.saving.load_model(path, compile=False)``, cached per process: a worker loads each model once
    whatever the number of DoFn instances or bundles (some runners call ``setup`` per bundle)."""
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get(path)
        if model is None:
            import keras

            model = keras.saving.load_model(path, compile=False)
            _MODEL_CACHE[path] = model
        return model


def predict_fixed_batches(model, x: np.ndarray, rows: int = DEFAULT_INFERENCE_BATCH, *, pad: bool = True,
                          dtype: Any = None) -> np.ndarray:
    """Outputs [N, C] of a Keras model on features ``x`` [N, D], computed in batches of ``rows`` rows.

    ``pad`` (the evaluator's mode): every batch has exactly ``rows`` rows, the last one zero-padded, through
    ``predict_on_batch``. Float32 kernels choose their blocking by batch size, so an example's logits would
    otherwise depend on how the runner happened to group records (BatchElements adapts batch sizes to timing):
    with one batch shape, the same model gives the same logits on every runner and load.
    ``pad=False``: direct calls ``model(chunk, training=False)`` on chunks of at most ``rows`` rows (no
    ``predict`` function is traced per model: what reference-model training uses for K fresh models).
    ``dtype``: the outputs' dtype (default: the model's).
    """
    out = []
    for start in range(0, len(x), rows):
        chunk = np.asarray(x[start:start + rows])
        if not pad:
            out.append(np.asarray(model(chunk, training=False), dtype=dtype))
            continue
        n = len(chunk)
        if n < rows:
            chunk = np.concatenate([chunk, np.zeros((rows - n,) + chunk.shape[1:], dtype=chunk.dtype)])
        out.append(np.asarray(model.predict_on_batch(chunk), dtype=dtype)[:n])
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=dtype or np.float32)
