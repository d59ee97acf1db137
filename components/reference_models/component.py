"""ReferenceModelTrainer: the TFX component (spec and channel wiring only; the work is in
components/reference_models/training.py, ``train_for_trainer_recipe``)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from privacy_audit.components.common.recipe import RUNTIME_OVERRIDES
from privacy_audit.components.dp_trainer.component import DPTrainerSpec, recipe_and_overrides
from privacy_audit.components.reference_models import executor


#: The DPTrainer's execution properties a ReferenceModelTrainer copies (for_trainer): the recipe JSON as it is, its
#: run-time overrides (Kubeflow parameters), the data it reads and the module file's hash (a cache key).
TARGET_PARAMETERS = ("recipe", *RUNTIME_OVERRIDES, "label_key", "feature_keys", "module_file_sha256")


class ReferenceModels(types.Artifact):
    """K reference models' outputs on a population (the target's members and non-members):
    ``<uri>/reference_signals.npz`` (``signal_logits`` [K, M, C] float32, ``in_mask`` [K, M] bool, per-example
    ``example_sha1`` / ``example_id`` / ``example_label`` / ``example_split``, ``metadata_json``; no pickle)
    and ``<uri>/reference_info.json`` (the training record). Custom properties k, n_examples, seed."""

    TYPE_NAME = "privacy_audit.ReferenceModels"


class ReferenceModelTrainerSpec(types.ComponentSpec):
    PARAMETERS = {
        "model_variant": ExecutionParameter(type=str),
        "members_split": ExecutionParameter(type=str),
        "nonmembers_split": ExecutionParameter(type=str),
        # The design.
        "k": ExecutionParameter(type=int),
        "seed": ExecutionParameter(type=int),
        "init": ExecutionParameter(type=str),
        "fraction": ExecutionParameter(type=float, optional=True),  # None: the target's share
        "n_jobs": ExecutionParameter(type=int),
        # The target's recipe, the DPTrainer's own execution properties as they are: its recipe JSON, the run-time
        # overrides of it, the data it reads and its module's hash.
        **{name: DPTrainerSpec.PARAMETERS[name] for name in TARGET_PARAMETERS},
        # A standard TFX Trainer's recipe instead (for_tfx_trainer): its user module's run_fn and arguments.
        "trainer_module_file": ExecutionParameter(type=str, optional=True),
        "trainer_run_fn": ExecutionParameter(type=str, optional=True),
        "trainer_train_args": ExecutionParameter(type=str, optional=True),  # TrainArgs JSON
        "trainer_eval_args": ExecutionParameter(type=str, optional=True),  # EvalArgs JSON
        "trainer_custom_config": ExecutionParameter(type=str, optional=True),  # JSON object
        "signature_name": ExecutionParameter(type=str, optional=True),
        "output_key": ExecutionParameter(type=str, optional=True),
        "outputs": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples),
              "transform_graph": ChannelParameter(type=standard_artifacts.TransformGraph, optional=True),
              "schema": ChannelParameter(type=standard_artifacts.Schema, optional=True)}
    OUTPUTS = {"reference_models": ChannelParameter(type=ReferenceModels)}


class ReferenceModelTrainer(base_component.BaseComponent):
    """Trains K reference models with a target's recipe for LiRA / RMIA (the evaluator's
    ``reference_models`` input).

    Each model trains with the target's recipe on a seeded random subset of the population, the members
    (``members_split``) and non-members (``nonmembers_split``) of the Examples together, as large as the
    target's training set (``fraction`` = members / population by default: half with the usual 1:1 split),
    so that each reference repeats the target's training run (same sampling rate, steps and noise). The
    design is balanced: every example is IN for fraction x K models (K/2 for halves). The inclusion mask is
    recorded per example id (the sha1 of the serialized tf.Example, as ``examples.load_examples`` gives it)
    beside one models x examples matrix of logits: the ``ReferenceModels`` artifact.

    The component depends only on the Examples and the recipe's parameters (not on the target's Model), so
    TFX's cache reuses it across runs that retrain the target on the same data with the same recipe: a
    scheduled re-audit pays for the references once. Build it from the DPTrainer it audits with
    :meth:`for_trainer`, which copies the trainer's parameters.

    Parallelism (``n_jobs``): worker processes (spawned; each imports TensorFlow once, ~5 s) or the
    executor's own process. Measured on 2 cores with benchmarks/reference_models_cost.py --pipeline-variant
    (the demo's recipes): K = 4 took 14.5 / 14.8 s in one process and 12.8 / 14.1 s with 2 processes
    (non-private), 17.5 / 11.4 s and 15.0 / 16.6 s (DP): no gain beyond the noise, the start-up eats it; K = 8
    took 29.7 / 33.0 s in one process and 23.5 / 22.5 s with 2 (1.3x). (With Keras ``fit`` on a smaller MLP,
    processes did not pay even at K = 8: see reference_models' module doc.) ``n_jobs=0`` picks one process
    per 4 models, at most one per core (in-process for K < 8). The default is 1 (in-process): spawned
    workers re-import the ``__main__`` module, which breaks a pipeline script without an
    ``if __name__ == "__main__":`` guard; ``privacy-audit run`` (a guarded entry point) passes 0. Large
    audits should rather spread the models over a distributed runner with
    ``reference_models.train_reference_model`` (one element per model index, same design and seeds).

    ``init``: "target" (default) starts every reference from the target's own initialisation (its recipe's
    seed): the auditor knows it, and DP's guarantee holds for any fixed, data-independent initialisation, so
    this is the stronger auditor within the DP threat model. Measured with K = 4: on a CNN demo recipe LiRA
    offline's TPR at 1% FPR was 0.050 with the target's initialisation and 0.027 with independent ones; on
    the wide-MLP demo no consistent difference (0.058 / 0.080 vs 0.069 / 0.071 over two seeds).
    "independent": a fresh initialisation per model (the attacker of Carlini et al. 2022).
    """

    SPEC_CLASS = ReferenceModelTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, examples: types.BaseChannel, *, label_key: str, k: int = 4, seed: int = 0,
                 init: str = "target", fraction: Optional[float] = None, n_jobs: int = 1,
                 model_variant: str = "model", members_split: str = "train", nonmembers_split: str = "eval",
                 recipe: Any = None, feature_keys: Optional[List[str]] = None,
                 module_file_sha256: Optional[str] = None, transform_graph: Optional[types.BaseChannel] = None,
                 schema: Optional[types.BaseChannel] = None, tfx_trainer: Optional[Dict[str, Any]] = None,
                 **recipe_fields: Any):
        """Args:
          examples: Examples with the members' and non-members' splits (the population).
          label_key, feature_keys: as the DPTrainer's.
          k: number of reference models (>= 2; even, so that every example has as many IN as OUT models).
          seed: seeds the inclusion design and each model's batches and noise.
          init: "target" or "independent" (see the class doc).
          fraction: share of the population each reference trains on (None: the target's share).
          n_jobs: worker processes; 1 (default): in the executor's process; 0: one per 4 models, at most
            one per CPU core (see the class doc).
          model_variant: the audited variant's name (recorded).
          members_split, nonmembers_split: split names of the target's members and non-members.
          recipe, **recipe_fields, module_file_sha256: the target's TrainingRecipe (or its JSON) with fields on
            top, as the DPTrainer takes them (``epochs`` / ``target_epsilon`` may be its Kubeflow run-time
            parameters); use :meth:`for_trainer` to copy a DPTrainer's.
          transform_graph, schema, tfx_trainer: a standard TFX Trainer's recipe instead; use
            :meth:`for_tfx_trainer`.
        """
        from privacy_audit.components.reference_models.design import INIT_MODES

        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"k (the number of reference models) must be an integer >= 2, got {k!r}")
        if init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
        if n_jobs < 0:
            raise ValueError(f"n_jobs must be >= 0 (0: automatic), got {n_jobs}")
        if fraction is not None and not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        if members_split == nonmembers_split:
            raise ValueError(f"members_split and nonmembers_split must differ, both are {members_split!r}")
        recipe, overrides = recipe_and_overrides(recipe, recipe_fields)
        if isinstance(feature_keys, str):
            feature_keys = json.loads(feature_keys)
        spec = ReferenceModelTrainerSpec(
            examples=examples, label_key=label_key,
            feature_keys=json.dumps(list(feature_keys)) if feature_keys else None, model_variant=model_variant,
            members_split=members_split, nonmembers_split=nonmembers_split, k=int(k), seed=int(seed), init=init,
            fraction=None if fraction is None else float(fraction), n_jobs=int(n_jobs),
            recipe=recipe.to_json(), epochs=overrides.get("epochs"), target_epsilon=overrides.get("target_epsilon"),
            module_file_sha256=module_file_sha256,
            transform_graph=transform_graph, schema=schema, **(tfx_trainer or {}),
            reference_models=types.Channel(type=ReferenceModels))
        super().__init__(spec=spec)

    @classmethod
    def for_tfx_trainer(cls, trainer: base_component.BaseComponent, examples: types.BaseChannel, *,
                        transform_graph: Optional[types.BaseChannel] = None,
                        schema: Optional[types.BaseChannel] = None, label_key: str = "label", k: int = 4,
                        seed: int = 0, fraction: Optional[float] = None, members_split: str = "train",
                        nonmembers_split: str = "eval", model_variant: str = "model",
                        signature_name: str = "serving_default", output_key: Optional[str] = None,
                        outputs: str = "auto") -> "ReferenceModelTrainer":
        """The references of a standard TFX Trainer (``tfx.v1.components.Trainer`` with a user module): each of
        the K models is trained by calling the user's own ``run_fn(fn_args)``, with the Trainer's train_args,
        eval_args and custom_config, on a seeded subset of the raw ``examples`` (members ∪ non-members)
        written as Examples (``fn_args.train_files``; the rest of the population is ``eval_files``). With
        ``transform_graph`` (the Trainer trains on Transform's output) the subsets are transformed with it
        first, and ``fn_args.transform_output`` points to it. Each reference's ``serving_model_dir`` is read
        through its signature (``signature_name``, ``output_key``, ``outputs``, as the evaluator reads the
        target) on the whole population; the inclusion mask is recorded per example id.
        """
        import ast

        p = trainer.exec_properties
        module_file = p.get("module_file")
        if not module_file:
            raise ValueError("for_tfx_trainer needs a Trainer built with module_file= (the user module with run_fn)")
        run_fn = p.get("run_fn") or "run_fn"
        with open(module_file) as f:
            names = {n.name for n in ast.parse(f.read()).body if isinstance(n, ast.FunctionDef)}
        if run_fn not in names:
            raise ValueError(f"the user module {module_file} has no function {run_fn!r}: the reference models are "
                             "trained by calling the Trainer's run_fn(fn_args)")
        from privacy_audit.components.membership_inference.serving_model import ServingOptions

        ServingOptions(signature_name=signature_name, output_key=output_key, outputs=outputs)
        tfx_trainer = dict(trainer_module_file=os.path.abspath(module_file), trainer_run_fn=run_fn,
                           trainer_train_args=_json_or_none(p.get("train_args")),
                           trainer_eval_args=_json_or_none(p.get("eval_args")),
                           trainer_custom_config=_json_or_none(p.get("custom_config")),
                           signature_name=signature_name, output_key=output_key, outputs=outputs)
        # The TrainingRecipe keeps its defaults (unused: the user's run_fn is the recipe).
        return cls(examples, label_key=label_key, k=k, seed=seed, fraction=fraction, model_variant=model_variant,
                   members_split=members_split, nonmembers_split=nonmembers_split, private=False,
                   transform_graph=transform_graph, schema=schema, tfx_trainer=tfx_trainer)

    @classmethod
    def for_trainer(cls, trainer: base_component.BaseComponent, examples: types.BaseChannel, *, k: int = 4,
                    seed: int = 0, init: str = "target", fraction: Optional[float] = None, n_jobs: int = 1,
                    nonmembers_split: str = "eval") -> "ReferenceModelTrainer":
        """The references of a DPTrainer: its recipe JSON (and run-time overrides, data keys and module hash)
        copied from its exec properties as they are."""
        p = trainer.exec_properties
        overrides = {k: p[k] for k in RUNTIME_OVERRIDES if p.get(k) is not None}
        return cls(examples, k=k, seed=seed, init=init, fraction=fraction, n_jobs=n_jobs,
                   model_variant=p["model_variant"],
                   members_split=p.get("train_split") or "train", nonmembers_split=nonmembers_split,
                   recipe=p["recipe"], label_key=p["label_key"], feature_keys=p.get("feature_keys"),
                   module_file_sha256=p.get("module_file_sha256"), **overrides)


def _json_or_none(value: Any) -> Optional[str]:
    """A Trainer exec property as a JSON string: custom_config (a dict or JSON), train_args / eval_args
    (protos)."""
    if value is None or isinstance(value, str):
        return value
    if hasattr(value, "DESCRIPTOR"):
        from google.protobuf import json_format

        return json_format.MessageToJson(value, sort_keys=True, preserving_proto_field_name=True)
    return json.dumps(value, sort_keys=True)


__all__: List[str] = ["ReferenceModels", "ReferenceModelTrainer", "ReferenceModelTrainerSpec"]
