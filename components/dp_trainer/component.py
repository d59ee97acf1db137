"""DPTrainer: the TFX component (spec + channel wiring only; the work is in trainer.py)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from privacy_audit.components.common.recipe import RUNTIME_OVERRIDES, TrainingRecipe, as_recipe
from privacy_audit.components.common.runtime_values import compile_time_value, is_runtime_parameter
from privacy_audit.components.dp_trainer import executor


def recipe_and_overrides(recipe: Any, recipe_fields: Dict[str, Any]) -> Tuple[TrainingRecipe, Dict[str, Any]]:
    """(recipe, run-time overrides) of a trainer component's arguments: ``recipe`` (a TrainingRecipe, its JSON or
    None for the defaults) with ``recipe_fields`` on top. ``epochs`` / ``target_epsilon`` given as Kubeflow
    RuntimeParameters go to the overrides, their defaults into the recipe. A non-private recipe carries no σ
    or ε (nor their cache key). Validated here, so that a pipeline with bad settings fails when it is built,
    not hours later (run-time parameters: their defaults are checked)."""
    fields = dict(recipe_fields)
    overrides = {k: fields[k] for k in RUNTIME_OVERRIDES if is_runtime_parameter(fields.get(k))}
    fields.update({k: compile_time_value(v) for k, v in overrides.items()})
    if fields.get("module_file"):
        fields["module_file"] = os.path.abspath(fields["module_file"])
    recipe = (TrainingRecipe() if recipe is None else as_recipe(recipe)).replace(**fields)
    if recipe.private is False and (recipe.noise_multiplier is not None or recipe.target_epsilon is not None):
        recipe = recipe.replace(noise_multiplier=None, target_epsilon=None)
        overrides.pop("target_epsilon", None)
    return recipe.validate(), overrides


class DPTrainerSpec(types.ComponentSpec):
    PARAMETERS = {
        # The training recipe: TrainingRecipe.to_json() (components/common/recipe.py), one JSON object.
        "recipe": ExecutionParameter(type=str),
        # Run-time overrides of the recipe (Kubeflow RuntimeParameters; None: the recipe's own value), applied
        # by TrainingRecipe.with_overrides. A RuntimeParameter cannot sit inside the recipe's JSON string.
        "epochs": ExecutionParameter(type=int, optional=True),
        "target_epsilon": ExecutionParameter(type=float, optional=True),
        # Not recipe: the variant's name, the data it reads.
        "model_variant": ExecutionParameter(type=str),
        "label_key": ExecutionParameter(type=str),
        "feature_keys": ExecutionParameter(type=str, optional=True),  # JSON list
        "train_split": ExecutionParameter(type=str),
        # The source data's row count when the caller knows it (`privacy-audit run` counts the CSV's rows):
        # the trainer refuses Examples whose splits hold another number, before training (rows lost upstream).
        "expected_examples": ExecutionParameter(type=int, optional=True),
        # The module's content hash, so that TFX's cache notices an edited module file.
        "module_file_sha256": ExecutionParameter(type=str, optional=True),
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
                 recipe: Optional[TrainingRecipe] = None, train_split: str = "train",
                 feature_keys: Optional[List[str]] = None, expected_examples: Optional[int] = None,
                 **recipe_fields: Any):
        """Args:
          examples: Examples with the members' split (``train_split``).
          label_key, feature_keys: the label feature and the model's input features (default: every other one,
            ordered by name).
          model_variant: the variant's name (ledger, ML Metadata, the evaluator's results).
          expected_examples: the source data's number of rows, if known: the trainer counts the examples of
            every split and refuses to train on Examples that hold another number (rows lost upstream).
          recipe: the TrainingRecipe (default: the dataclass's defaults).
          **recipe_fields: TrainingRecipe fields set on top of ``recipe`` (``epochs=10, noise_multiplier=1.1``...).
            ``epochs`` and ``target_epsilon`` may be Kubeflow RuntimeParameters: the recipe holds their
            defaults, the run's values come as the ``epochs`` / ``target_epsilon`` overrides.
        """
        recipe, overrides = recipe_and_overrides(recipe, recipe_fields)
        module_sha = None
        if recipe.module_file:
            if not os.path.isfile(recipe.module_file):
                raise FileNotFoundError(f"model module file not found: {recipe.module_file}")
            with open(recipe.module_file, "rb") as f:
                module_sha = hashlib.sha256(f.read()).hexdigest()
        spec = DPTrainerSpec(
            examples=examples, recipe=recipe.to_json(), epochs=overrides.get("epochs"),
            target_epsilon=overrides.get("target_epsilon"), label_key=label_key, model_variant=model_variant,
            train_split=train_split, feature_keys=json.dumps(list(feature_keys)) if feature_keys else None,
            module_file_sha256=module_sha, expected_examples=expected_examples,
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun))
        super().__init__(spec=spec)

    @property
    def recipe(self) -> TrainingRecipe:
        """The recipe as compiled (run-time overrides at their defaults)."""
        return TrainingRecipe.from_json(self.exec_properties["recipe"])
