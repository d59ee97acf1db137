"""DPTrainer: the TFX component (spec + channel wiring only; the work is in trainer.py)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from privacy_audit.components.common.runtime_values import as_property, compile_time_value
from privacy_audit.components.dp_trainer import executor


class DPTrainerSpec(types.ComponentSpec):
    PARAMETERS = {
        "label_key": ExecutionParameter(type=str),
        "feature_keys": ExecutionParameter(type=str, optional=True),  # JSON list
        "model_variant": ExecutionParameter(type=str),
        "train_split": ExecutionParameter(type=str),
        "epochs": ExecutionParameter(type=int),
        "batch_size": ExecutionParameter(type=int),
        "learning_rate": ExecutionParameter(type=float),
        "optimizer": ExecutionParameter(type=str),
        "private": ExecutionParameter(type=int),
        "l2_norm_clip": ExecutionParameter(type=float),
        "noise_multiplier": ExecutionParameter(type=float, optional=True),
        "target_epsilon": ExecutionParameter(type=float, optional=True),
        "delta": ExecutionParameter(type=float, optional=True),
        "sampling": ExecutionParameter(type=str),
        "accountant": ExecutionParameter(type=str),
        "checkpoint_every": ExecutionParameter(type=int),
        "seed": ExecutionParameter(type=int),
        "module_file": ExecutionParameter(type=str, optional=True),
        # The module's content hash, so that TFX's cache notices an edited module file.
        "module_file_sha256": ExecutionParameter(type=str, optional=True),
        "model_fn": ExecutionParameter(type=str),
        "builtin_model": ExecutionParameter(type=str),
        "hparams": ExecutionParameter(type=str),  # JSON object
        # One-run privacy audit: number of canaries (absent = no audit). Private variants only.
        "audit_canaries": ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples)}
    OUTPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "model_run": ChannelParameter(type=standard_artifacts.ModelRun),
    }


class DPTrainer(base_component.BaseComponent):
    """Trains a Keras model with DP-SGD / DP-Adam (or without privacy, as a baseline) on the members split.

    Outputs ``model`` (Format-Serving SavedModel, keras/model.keras, checkpoints/epoch_NNNN.keras with
    checkpoints/index.json) and ``model_run`` (ledger.json with ε per epoch, training_log.jsonl,
    TensorBoard logs/). ε, δ, noise multiplier and steps are custom properties of the Model artifact.

    ``audit_canaries`` = m > 0 runs, for a private variant, the one-run privacy audit after the main
    training: one more training run of the same recipe with m canaries (training examples with a wrong
    label, each included with probability 1/2), written to ``model_run/one_run_audit.json`` (the ε lower
    bound at 95% confidence beside the accountant's ε; see trainer.one_run_privacy_audit). The evaluator
    refuses to bless a model whose audit bound exceeds the accountant's ε.
    """

    SPEC_CLASS = DPTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, examples: types.BaseChannel, *, label_key: str, model_variant: str = "model",
                 private: bool = True, epochs: int = 20, batch_size: int = 64, learning_rate: float = 1e-3,
                 optimizer: str = "adam", l2_norm_clip: float = 1.0, noise_multiplier: Optional[float] = None,
                 target_epsilon: Optional[float] = None, delta: Optional[float] = None,
                 sampling: str = "poisson", accountant: str = "rdp", checkpoint_every: int = 2, seed: int = 0,
                 train_split: str = "train", feature_keys: Optional[List[str]] = None,
                 module_file: Optional[str] = None, model_fn: str = "build_keras_model",
                 builtin_model: str = "auto", hparams: Optional[Dict[str, Any]] = None,
                 audit_canaries: int = 0):
        from privacy_audit.components.dp_trainer.trainer import DPTrainingConfig

        # Checked here so that a pipeline with bad settings fails when it is built, not hours later. epochs and
        # target_epsilon may be Kubeflow run-time parameters (RuntimeParameter): their defaults are checked.
        DPTrainingConfig(label_key=label_key, model_variant=model_variant, private=private,
                         epochs=compile_time_value(epochs), batch_size=batch_size, learning_rate=learning_rate,
                         optimizer=optimizer, l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier,
                         target_epsilon=compile_time_value(target_epsilon), delta=delta, sampling=sampling,
                         accountant=accountant, checkpoint_every=checkpoint_every, seed=seed,
                         audit_canaries=audit_canaries).validate()
        module_sha = None
        if module_file:
            if not os.path.isfile(module_file):
                raise FileNotFoundError(f"model module file not found: {module_file}")
            with open(module_file, "rb") as f:
                module_sha = hashlib.sha256(f.read()).hexdigest()
        spec = DPTrainerSpec(
            examples=examples, label_key=label_key, model_variant=model_variant, train_split=train_split,
            feature_keys=json.dumps(list(feature_keys)) if feature_keys else None,
            epochs=epochs, batch_size=batch_size, learning_rate=float(learning_rate), optimizer=optimizer,
            private=int(bool(private)), l2_norm_clip=float(l2_norm_clip),
            noise_multiplier=None if noise_multiplier is None else float(noise_multiplier),
            target_epsilon=as_property(target_epsilon, float),
            delta=None if delta is None else float(delta), sampling=sampling, accountant=accountant,
            checkpoint_every=checkpoint_every, seed=seed,
            module_file=os.path.abspath(module_file) if module_file else None, module_file_sha256=module_sha,
            model_fn=model_fn, builtin_model=builtin_model, hparams=json.dumps(hparams or {}, sort_keys=True),
            # None when off, so that pipelines without the audit keep their cache keys.
            audit_canaries=int(audit_canaries) if audit_canaries else None,
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun))
        super().__init__(spec=spec)
