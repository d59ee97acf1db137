"""DPTrainer executor: unpacks artifacts and hands plain paths and values to trainer.train."""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List

from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

from privacy_audit.components.common.examples import load_examples, split_file_pattern
from privacy_audit.components.dp_trainer.trainer import DPTrainingConfig, train


def _read_audit(run_dir: str):
    from privacy_audit.components.common import io
    from privacy_audit.components.dp_trainer.trainer import ONE_RUN_AUDIT_FILE

    path = io.join(run_dir, ONE_RUN_AUDIT_FILE)
    if not io.exists(path):
        return None
    return io.read_json(path)


def training_config(p: Dict[str, Any], seed_key: str = "seed") -> DPTrainingConfig:
    """The DPTrainingConfig of a DPTrainer's exec properties (also the ReferenceModelTrainer's recipe, whose
    copy of the trainer's seed is ``target_seed``)."""
    return DPTrainingConfig(
        model_variant=p["model_variant"], label_key=p["label_key"],
        feature_keys=json.loads(p["feature_keys"]) if p.get("feature_keys") else None,
        epochs=int(p["epochs"]), batch_size=int(p["batch_size"]), learning_rate=float(p["learning_rate"]),
        optimizer=p["optimizer"], private=bool(p["private"]), l2_norm_clip=float(p["l2_norm_clip"]),
        noise_multiplier=p.get("noise_multiplier"), target_epsilon=p.get("target_epsilon"),
        delta=p.get("delta"), sampling=p["sampling"], accountant=p["accountant"],
        checkpoint_every=int(p.get("checkpoint_every") or 0), seed=int(p[seed_key]),
        module_file=p.get("module_file") or None, model_fn=p.get("model_fn") or "build_keras_model",
        builtin_model=p.get("builtin_model") or "auto", hparams=json.loads(p.get("hparams") or "{}"),
        audit_canaries=int(p.get("audit_canaries") or 0))


class Executor(base_executor.BaseExecutor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        model = artifact_utils.get_single_instance(output_dict["model"])
        model_run = artifact_utils.get_single_instance(output_dict["model_run"])
        p = exec_properties
        feature_keys = json.loads(p["feature_keys"]) if p.get("feature_keys") else None
        split = p.get("train_split") or "train"
        data = load_examples(split_file_pattern(examples.uri, split), p["label_key"], feature_keys)
        config = training_config(p)
        ledger = train(config, data.x, data.y, model_dir=model.uri, run_dir=model_run.uri,
                       input_features=data.input_features)
        # ML Metadata shows these on the Model artifact; ε stays derived from the ledger's events.
        model.set_string_custom_property("model_variant", config.model_variant)
        model.set_int_custom_property("private", int(config.private))
        model.set_int_custom_property("steps", int(ledger["steps"]))
        model.set_int_custom_property("n_examples", int(ledger["n_examples"]))
        if config.private:
            model.set_float_custom_property("noise_multiplier", float(ledger["noise_multiplier"]))
            model.set_float_custom_property("l2_norm_clip", float(ledger["l2_norm_clip"]))
            model.set_float_custom_property("delta", float(ledger["delta"]))
            eps = ledger["epsilon"]
            if eps is not None and math.isfinite(eps):
                model.set_float_custom_property("epsilon", float(eps))
                # MLMD's SQLite backend keeps ~6 significant digits of a double; the exact value as text.
                model.set_string_custom_property("epsilon_exact", repr(float(eps)))
        model_run.set_string_custom_property("model_variant", config.model_variant)
        audit = _read_audit(model_run.uri)
        if audit is not None:
            model_run.set_float_custom_property("one_run_audit_epsilon_lower_bound",
                                                float(audit["epsilon_lower_bound"]))
            model_run.set_int_custom_property("one_run_audit_violated", int(bool(audit["violated"])))
