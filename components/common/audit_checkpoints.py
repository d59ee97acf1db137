"""AuditCheckpoints: a Keras callback for a TFX Trainer's ``run_fn`` that saves checkpoints where the
MembershipInferenceEvaluator reads them, so that models this project did not train get the attack-AUC-by-epoch
and privacy-vs-utility plots too.

    def run_fn(fn_args):
        model = build_model(...)
        model.fit(train_ds, epochs=..., callbacks=[AuditCheckpoints(fn_args, every_n_epochs=2,
                                                                    signatures=make_serving_signatures)])
        tf.saved_model.save(model, fn_args.serving_model_dir, signatures=make_serving_signatures(model))

Layout (the one DPTrainer writes, beside ``Format-Serving/`` in the Model artifact):

    <model uri>/checkpoints/epoch_NNNN/        a SavedModel with ``signatures(model)`` (the serving signature
                                               over serialized tf.Examples, read like the final model), or
    <model uri>/checkpoints/epoch_NNNN.keras   without ``signatures`` (the evaluator feeds it the feature
                                               vector: only for models taking one float vector)
    <model uri>/checkpoints/index.json         {"checkpoints": [{"epoch": int, "path": str, "format": str}]}

Every file is written under a temporary name and moved into place; the index is rewritten after each
checkpoint, so an interrupted training leaves a consistent index of the checkpoints that exist.
No TFX import: ``fn_args`` is only read for ``serving_model_dir``.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional

import keras
import tensorflow as tf

from privacy_audit.components.common.layout import CHECKPOINT_DIR, CHECKPOINT_INDEX as INDEX_FILE  # noqa: E402
#: Set by the ReferenceModelTrainer while it calls the user's run_fn: reference models are only read at their
#: end, so their checkpoints would cost saves for nothing.
DISABLE_ENV = "PRIVACY_AUDIT_NO_CHECKPOINTS"


def _model_dir(fn_args: Any, model_dir: Optional[str]) -> str:
    if model_dir:
        return model_dir
    serving = getattr(fn_args, "serving_model_dir", None)
    if not serving:
        raise ValueError("AuditCheckpoints needs the Trainer's fn_args (with serving_model_dir) or model_dir")
    # fn_args.serving_model_dir is <model artifact uri>/Format-Serving: checkpoints go beside it.
    return os.path.dirname(serving.rstrip("/"))


class AuditCheckpoints(keras.callbacks.Callback):
    """Saves the model every ``every_n_epochs`` epochs (and after the last one) for the privacy audit.

    Args:
      fn_args: the TFX Trainer's FnArgs (``serving_model_dir`` locates the Model artifact).
      every_n_epochs: checkpoint period in epochs (>= 1).
      signatures: ``model -> {name: tf.function}``, the serving signatures your run_fn exports (a signature
        over serialized tf.Examples, e.g. TFX's ``serving_default``); checkpoints are then SavedModels read
        like the final model. None: ``.keras`` files (models that take the feature vector only).
      model_dir: the Model artifact directory, instead of ``fn_args``.
    """

    def __init__(self, fn_args: Any = None, *, every_n_epochs: int = 1,
                 signatures: Optional[Callable[[Any], Mapping[str, Any]]] = None, model_dir: Optional[str] = None):
        super().__init__()
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an integer >= 1, got {every_n_epochs!r}")
        self.directory = os.path.join(_model_dir(fn_args, model_dir), CHECKPOINT_DIR)
        self.every_n_epochs = every_n_epochs
        self.signatures = signatures
        self.saved: List[Dict[str, Any]] = []
        self._last_epoch = 0

    def on_epoch_end(self, epoch: int, logs: Optional[Mapping[str, Any]] = None) -> None:
        self._last_epoch = epoch + 1
        if os.environ.get(DISABLE_ENV):
            return
        if self._last_epoch % self.every_n_epochs == 0:
            self.save(self._last_epoch, logs)

    def on_train_end(self, logs: Optional[Mapping[str, Any]] = None) -> None:
        if os.environ.get(DISABLE_ENV):
            return
        if self._last_epoch and (not self.saved or self.saved[-1]["epoch"] != self._last_epoch):
            self.save(self._last_epoch, logs)

    def save(self, epoch: int, logs: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """Saves the model as checkpoint ``epoch`` and rewrites the index; returns the index entry."""
        tf.io.gfile.makedirs(self.directory)
        name = f"epoch_{epoch:04d}" + ("" if self.signatures else ".keras")
        final = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, f".tmp-{uuid.uuid4().hex[:8]}-{name}")
        if self.signatures:
            tf.saved_model.save(self.model, tmp, signatures=dict(self.signatures(self.model)))
        else:
            self.model.save(tmp)
        if tf.io.gfile.exists(final):
            tf.io.gfile.rmtree(final) if tf.io.gfile.isdir(final) else tf.io.gfile.remove(final)
        tf.io.gfile.rename(tmp, final)
        entry = {"epoch": int(epoch), "path": name, "format": "saved_model" if self.signatures else "keras",
                 "metrics": {k: float(v) for k, v in (logs or {}).items() if _is_number(v)}}
        self.saved = [e for e in self.saved if e["epoch"] != epoch] + [entry]
        _write_json(os.path.join(self.directory, INDEX_FILE), {"checkpoints": self.saved, "writer": "AuditCheckpoints"})
        return entry


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _write_json(path: str, obj: Any) -> None:
    from privacy_audit.components.common import io

    io.write_text(path, json.dumps(obj, indent=1) + "\n")
