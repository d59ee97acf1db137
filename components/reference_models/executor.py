"""ReferenceModelTrainer executor: unpacks artifacts and hands arrays and the target's recipe to
``reference_models.train_for_trainer_recipe``."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

from privacy_audit.components.common import io, layout

INFO_FILE = layout.REFERENCE_INFO_FILE


class Executor(base_executor.BaseExecutor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        from privacy_audit.components.common.examples import load_examples, split_file_pattern
        from privacy_audit.components.dp_trainer import accounting
        from privacy_audit.components.common.recipe import recipe_from_exec_properties
        from privacy_audit.components.reference_models import training

        examples = artifact_utils.get_single_instance(input_dict["examples"])
        out = artifact_utils.get_single_instance(output_dict["reference_models"])
        p = exec_properties
        if p.get("trainer_module_file"):
            return self._with_user_trainer(input_dict, out, examples, p)
        feature_keys = json.loads(p["feature_keys"]) if p.get("feature_keys") else None
        members = load_examples(split_file_pattern(examples.uri, p["members_split"]), p["label_key"], feature_keys)
        # The non-members' inputs in the members' feature order (the model's input).
        nonmembers = load_examples(split_file_pattern(examples.uri, p["nonmembers_split"]), p["label_key"],
                                   members.input_features)
        recipe = recipe_from_exec_properties(p)  # the target's recipe with the run's overrides
        io.makedirs(out.uri)
        refs = training.train_for_trainer_recipe(
            os.path.join(out.uri, layout.SIGNALS_FILE), recipe, model_variant=p["model_variant"], x_members=members.x, y_members=members.y,
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

    def _with_user_trainer(self, input_dict: Dict[str, List[types.Artifact]], out: types.Artifact,
                           examples: types.Artifact, p: Dict[str, Any]) -> None:
        """References of a standard TFX Trainer: the user's run_fn trained on seeded subsets (written as
        Examples), each reference read through its serving signature (reference_models.train_with_user_trainer)."""
        from privacy_audit.components.common.examples import read_serialized, split_file_pattern
        from privacy_audit.components.dp_trainer import accounting
        from privacy_audit.components.reference_models import training
        from privacy_audit.components.membership_inference.serving_model import ServingOptions, TransformGraph

        run_fn = user_run_fn(p["trainer_module_file"], p.get("trainer_run_fn") or "run_fn")
        transform_uri = (artifact_utils.get_single_uri(input_dict["transform_graph"])
                         if input_dict.get("transform_graph") else None)
        members = read_serialized(split_file_pattern(examples.uri, p["members_split"]))
        nonmembers = read_serialized(split_file_pattern(examples.uri, p["nonmembers_split"]))
        transform = None
        if transform_uri:
            graph = TransformGraph(transform_uri)
            graph.check_examples(members[:64])
            transform = graph.serialize_transformed
        options = ServingOptions(signature_name=p.get("signature_name") or "serving_default",
                                 output_key=p.get("output_key") or None, outputs=p.get("outputs") or "auto")

        def train_reference(index: int, examples_dir: str, model_seed: int) -> str:
            fn_args = reference_fn_args(input_dict, p, examples_dir)
            import keras

            from privacy_audit.components.common.audit_checkpoints import DISABLE_ENV

            keras.utils.set_random_seed(model_seed)  # the user's run_fn may not seed itself
            os.environ[DISABLE_ENV] = "1"
            try:
                run_fn(fn_args)
            finally:
                os.environ.pop(DISABLE_ENV, None)
            if not os.path.isdir(fn_args.serving_model_dir):
                raise RuntimeError(f"run_fn did not save a model to fn_args.serving_model_dir "
                                   f"({fn_args.serving_model_dir}) for reference model {index}")
            return fn_args.serving_model_dir

        io.makedirs(out.uri)
        refs = training.train_with_user_trainer(
            os.path.join(out.uri, layout.SIGNALS_FILE), train_reference, members=members,
            nonmembers=nonmembers, label_key=p["label_key"], work_dir=os.path.join(out.uri, ".work"),
            serving_options=options, k=int(p["k"]), seed=int(p["seed"]), fraction=p.get("fraction"),
            transform=transform, split_names=(p["members_split"], p["nonmembers_split"]),
            metadata={"target_model_variant": p["model_variant"], "module_file": p["trainer_module_file"],
                      "run_fn": p.get("trainer_run_fn") or "run_fn", "transform_graph": transform_uri,
                      "recipe": {"trainer": "tfx run_fn", "train_args": p.get("trainer_train_args"),
                                 "custom_config": p.get("trainer_custom_config")}})
        accounting.write_json_atomic(os.path.join(out.uri, INFO_FILE), refs.metadata)
        out.set_int_custom_property("k", refs.k)
        out.set_int_custom_property("n_examples", refs.m)
        out.set_int_custom_property("seed", int(p["seed"]))
        out.set_string_custom_property("model_variant", p["model_variant"])
        out.set_string_custom_property("init", "user run_fn")


def user_run_fn(module_file: str, name: str):
    """The user module's run_fn; ValueError when the module has none."""
    from tfx.utils import import_utils

    try:
        return import_utils.import_func_from_source(module_file, name)
    except AttributeError:
        raise ValueError(f"the user module {module_file} has no function {name!r}: reference models are trained "
                         "by calling the Trainer's run_fn(fn_args)") from None


def _with_splits(args_json: Optional[str], split: str) -> str:
    """The Trainer's TrainArgs / EvalArgs JSON on the reference's split names."""
    obj = json.loads(args_json) if args_json else {}
    obj["splits"] = [split]
    return json.dumps(obj)


def reference_fn_args(input_dict: Dict[str, List[types.Artifact]], p: Dict[str, Any], examples_dir: str):
    """FnArgs as TFX's Trainer builds them, over the reference's Examples (``Split-train``: its subset,
    ``Split-eval``: the rest), with the target Trainer's train_args, eval_args and custom_config."""
    from tfx.components.trainer import fn_args_utils
    from tfx.types import standard_artifacts

    subset = standard_artifacts.Examples()
    subset.uri = examples_dir
    subset.split_names = artifact_utils.encode_split_names(["train", "eval"])
    inputs = {"examples": [subset]}
    for key in ("transform_graph", "schema"):
        if input_dict.get(key):
            inputs[key] = input_dict[key]
    props = {"train_args": _with_splits(p.get("trainer_train_args"), "train"),
             "eval_args": _with_splits(p.get("trainer_eval_args"), "eval"),
             "custom_config": p.get("trainer_custom_config") or "null"}
    fn_args = fn_args_utils.get_common_fn_args(inputs, props, working_dir=os.path.join(examples_dir, "work"))
    model_dir = os.path.join(examples_dir, "model")
    fn_args.transform_output = fn_args.transform_graph_path
    fn_args.serving_model_dir = os.path.join(model_dir, "Format-Serving")
    fn_args.eval_model_dir = os.path.join(model_dir, "Format-TFMA")
    fn_args.model_run_dir = os.path.join(examples_dir, "model_run")
    fn_args.schema_file = fn_args.schema_path
    return fn_args
