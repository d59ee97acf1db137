"""DPTrainer executor: unpacks artifacts and hands plain paths and values to trainer.train."""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List

from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

from privacy_audit.components.common.examples import (check_example_count, load_examples, per_split,
                                                      split_file_pattern)
from privacy_audit.components.common.memory import release_freed_memory
from privacy_audit.components.common.recipe import recipe_from_exec_properties
from privacy_audit.components.dp_trainer import accounting
from privacy_audit.components.dp_trainer.trainer import train


def _read_audit(run_dir: str):
    from privacy_audit.components.common import io
    from privacy_audit.components.common.layout import ONE_RUN_AUDIT_FILE

    path = io.join(run_dir, ONE_RUN_AUDIT_FILE)
    if not io.exists(path):
        return None
    return io.read_json(path)


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
        if p.get("expected_examples"):
            counts = check_example_count(examples.uri, artifact_utils.decode_split_names(examples.split_names),
                                         int(p["expected_examples"]), known={split: len(data.y)})
            print(f"[{p['model_variant']}] the Examples hold all {sum(counts.values()):,} rows of the data "
                  f"({per_split(counts)})", flush=True)
        recipe = recipe_from_exec_properties(p)
        variant = p["model_variant"]
        ledger = train(recipe, data.x, data.y, model_dir=model.uri, run_dir=model_run.uri, model_variant=variant,
                       label_key=p["label_key"], feature_keys=feature_keys, input_features=data.input_features)
        del data
        release_freed_memory()  # the split's arrays, before the next component runs in this process
        # ML Metadata shows these on the Model artifact; ε is derived from the ledger's events (its one function).
        model.set_string_custom_property("model_variant", variant)
        model.set_int_custom_property("private", int(recipe.private))
        model.set_int_custom_property("steps", int(ledger["steps"]))
        model.set_int_custom_property("n_examples", int(ledger["n_examples"]))
        if recipe.private:
            model.set_float_custom_property("noise_multiplier", float(ledger["noise_multiplier"]))
            model.set_float_custom_property("l2_norm_clip", float(ledger["l2_norm_clip"]))
            model.set_float_custom_property("delta", float(ledger["delta"]))
            eps = accounting.epsilon_of_ledger(ledger)
            if eps is not None and math.isfinite(eps):
                # For display: MLMD's SQLite keeps ~6 significant digits; the exact ε is the ledger's to derive.
                model.set_float_custom_property("epsilon", float(eps))
        model_run.set_string_custom_property("model_variant", variant)
        audit = _read_audit(model_run.uri)
        if audit is not None:
            model_run.set_float_custom_property("one_run_audit_epsilon_lower_bound",
                                                float(audit["epsilon_lower_bound"]))
            model_run.set_int_custom_property("one_run_audit_violated", int(bool(audit["violated"])))
