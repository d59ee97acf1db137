"""ReferenceModelTrainer executor: unpacks artifacts and hands arrays and the target's recipe to
``reference_models.train_for_trainer_recipe``."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

INFO_FILE = "reference_info.json"


class Executor(base_executor.BaseExecutor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        from privacy_audit.components.common.examples import load_examples, split_file_pattern
        from privacy_audit.components.dp_trainer import accounting
        from privacy_audit.components.dp_trainer.executor import training_config
        from privacy_audit.components.membership_inference import reference_models

        examples = artifact_utils.get_single_instance(input_dict["examples"])
        out = artifact_utils.get_single_instance(output_dict["reference_models"])
        p = exec_properties
        feature_keys = json.loads(p["feature_keys"]) if p.get("feature_keys") else None
        members = load_examples(split_file_pattern(examples.uri, p["members_split"]), p["label_key"], feature_keys)
        # The non-members' inputs in the members' feature order (the model's input).
        nonmembers = load_examples(split_file_pattern(examples.uri, p["nonmembers_split"]), p["label_key"],
                                   members.input_features)
        config = training_config(p, seed_key="target_seed")
        os.makedirs(out.uri, exist_ok=True)
        refs = reference_models.train_for_trainer_recipe(
            os.path.join(out.uri, reference_models.SIGNALS_FILE), config, x_members=members.x, y_members=members.y,
            x_nonmembers=nonmembers.x, y_nonmembers=nonmembers.y, sha1_members=members.example_hashes,
            sha1_nonmembers=nonmembers.example_hashes, input_features=members.input_features, k=int(p["k"]),
            seed=int(p["seed"]), init=p.get("init") or "target", fraction=p.get("fraction"),
            n_jobs=int(p["n_jobs"]) if p.get("n_jobs") is not None else 1,
            split_names=(p["members_split"], p["nonmembers_split"]))
        accounting.write_json_atomic(os.path.join(out.uri, INFO_FILE), refs.metadata)
        out.set_int_custom_property("k", refs.k)
        out.set_int_custom_property("n_examples", refs.m)
        out.set_int_custom_property("seed", int(p["seed"]))
        out.set_string_custom_property("model_variant", p["model_variant"])
        out.set_string_custom_property("init", p.get("init") or "target")
