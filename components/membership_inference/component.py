"""MembershipInferenceEvaluator: the TFX component (spec and channel wiring only; the work is in
executor.py and, below it, the TFX-free library: evaluation.py, gate.py, beam/)."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from privacy_audit.components.common.runtime_values import compile_time_value
from privacy_audit.components.membership_inference import evaluation, executor, gate
from privacy_audit.components.membership_inference.api import DEFAULT_ATTACKS
from privacy_audit.components.reference_models.component import ReferenceModels

DEFAULT_SLICING: Dict[str, Any] = {"entire_dataset": True, "by_class": True}



class MembershipInferenceResults(types.Artifact):
    """Attack results of one model variant: <uri>/index.json, <uri>/results/*.json (one results JSON per
    evaluated checkpoint, schema in DESIGN.md), <uri>/per_example/ (Parquet).

    Custom type names carry a namespace because KubeflowV2DagRunner only accepts "namespace.TypeName".
    """

    TYPE_NAME = "privacy_audit.MembershipInferenceResults"


class MembershipInferenceEvaluatorSpec(types.ComponentSpec):
    """Lists and dicts cross the component boundary as JSON strings."""

    PARAMETERS = {
        "label_key": ExecutionParameter(type=str),
        "feature_keys": ExecutionParameter(type=str, optional=True),  # JSON list: model input features
        "members_split": ExecutionParameter(type=str),
        "nonmembers_split": ExecutionParameter(type=str),
        "attacks": ExecutionParameter(type=str),  # JSON list
        "slicing": ExecutionParameter(type=str),  # JSON object
        "seed": ExecutionParameter(type=int),
        "min_slice_size": ExecutionParameter(type=int),
        "sample_size": ExecutionParameter(type=int),
        "max_auc": ExecutionParameter(type=float, optional=True),
        "max_attacker_advantage": ExecutionParameter(type=float, optional=True),
        "max_epsilon_lower_bound": ExecutionParameter(type=float, optional=True),
        "model_variant": ExecutionParameter(type=str, optional=True),
        "write_per_example": ExecutionParameter(type=int),
        "reference_options": ExecutionParameter(type=str, optional=True),  # JSON object
        # Models of TFX's standard Trainer (Format-Serving/ SavedModel): how to read their signature.
        "signature_name": ExecutionParameter(type=str, optional=True),
        "output_key": ExecutionParameter(type=str, optional=True),
        "outputs": ExecutionParameter(type=str, optional=True),  # auto | logits | probabilities
    }
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "model": ChannelParameter(type=standard_artifacts.Model),
        "model_run": ChannelParameter(type=standard_artifacts.ModelRun, optional=True),
        "reference_models": ChannelParameter(type=ReferenceModels, optional=True),
        "transform_graph": ChannelParameter(type=standard_artifacts.TransformGraph, optional=True),
        "baseline_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
    }
    OUTPUTS = {
        "attack_results": ChannelParameter(type=MembershipInferenceResults),
        # A standard ModelBlessing: what TFX's Pusher checks.
        "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
    }


class MembershipInferenceEvaluator(base_beam_component.BaseBeamComponent):
    """Runs membership-inference attacks on a model's members (training split) and non-members.

    Evaluates the final model and every checkpoint in ``<model>/checkpoints/index.json`` (so the report
    can draw attack AUC by epoch), in one Beam pipeline: any runner through ``beam_pipeline_args``.

    With a ``reference_models`` input (a ReferenceModelTrainer's K models trained with the target's recipe
    on halves of these members and non-members), the attacks may also name ``lira``, ``lira_offline``,
    ``rmia``, ``rmia_offline``. They are scored on the final model only, with the same slices, metrics and
    results file as the others: the references reproduce the complete training run, so they are not a
    reference distribution for an epoch-2 checkpoint (per-epoch LiRA would need references saved at every
    checkpoint). Their scores are computed in the executor's process from the whole reference matrix
    (K x M x C logits, which the ReferenceModelTrainer also holds in memory).

    With a ``model_run`` holding ``one_run_audit.json`` (DPTrainer ``audit_canaries``), the blessing also
    fails when the audit's ε lower bound exceeds the accountant's ε: the DP training is then broken.

    Models of TFX's standard Trainer (``Format-Serving/``) are read through a signature over serialized
    tf.Examples (``signature_name``, ``output_key``, ``outputs``), inside the Beam graph like Keras models.

    Outputs ``attack_results`` (MembershipInferenceResults: ``results/<variant>_epoch_NNNN.json``,
    ``results/<variant>_final.json``, ``index.json``, ``per_example/``) and ``blessing``: a standard
    ``ModelBlessing`` (``BLESSED``/``NOT_BLESSED``, custom properties ``blessed``, ``current_model``,
    ``current_model_id``, as TFMA's Evaluator writes it, so TFX's Pusher can take it; plus ``blessing.json``
    naming the failing slices), the privacy gate on the final model ANDed with ``baseline_blessing``.
    """

    SPEC_CLASS = MembershipInferenceEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, examples: types.BaseChannel, model: types.BaseChannel,
                 model_run: Optional[types.BaseChannel] = None, reference_models: Optional[types.BaseChannel] = None,
                 *, label_key: str,
                 feature_keys: Optional[Union[Sequence[str], str]] = None, members_split: str = "train",
                 nonmembers_split: str = "eval", attacks: Union[Sequence[str], str] = DEFAULT_ATTACKS,
                 slicing: Optional[Union[Mapping[str, Any], str]] = None, seed: int = 0,
                 min_slice_size: int = 20, sample_size: int = 20000, max_auc: Optional[float] = None,
                 max_attacker_advantage: Optional[float] = None,
                 max_epsilon_lower_bound: Optional[float] = None, model_variant: Optional[str] = None,
                 write_per_example: bool = True, reference_options: Optional[Union[Mapping[str, Any], str]] = None,
                 transform_graph: Optional[types.BaseChannel] = None,
                 baseline_blessing: Optional[types.BaseChannel] = None, signature_name: str = "serving_default",
                 output_key: Optional[str] = None, outputs: str = "auto"):
        """Args:
          examples: Examples with the members' and non-members' splits (raw examples, as the Trainer's
            serving signature takes them).
          model: a DPTrainer's Model (keras/model.keras, checkpoints/, model_info.json) or a standard TFX
            Trainer's (Format-Serving/ SavedModel; checkpoints/ when its run_fn used AuditCheckpoints).
          model_run: optional ModelRun whose ledger.json gives ε per epoch (and one_run_audit.json, if any,
            the one-run audit the gate checks).
          reference_models: optional ReferenceModels (ReferenceModelTrainer) for lira / rmia.
          label_key: the label feature.
          feature_keys: model input features in order (default: model_info.json's input_features).
          members_split, nonmembers_split: split names (members = the model's training split).
          attacks: names, e.g. ["threshold", "logistic_regression"].
          slicing: {"entire_dataset": bool, "by_class": bool | [ints], "by_percentiles": bool,
            "by_classification_correctness": bool, "feature_keys": [names]} (default entire + by class).
          seed: seeds samples and trained attacks.
          min_slice_size: slices with fewer members or non-members are skipped.
          sample_size: members and non-members sampled per slice for trained attacks.
          max_auc, max_attacker_advantage, max_epsilon_lower_bound: the gate on the final model (none:
            always blessed).
          model_variant: results' model_variant (default: the Model's custom property model_variant).
          write_per_example: write per-example Parquet under attack_results/per_example/ (and the reference
            attacks' scores under per_example_reference/).
          reference_options: options of the reference attacks, e.g. {"lira": {"fixed_variance": "auto"},
            "rmia": {"gamma": 1.0, "offline_a": 0.3}} (see reference_models.resolve_attack_options).
          transform_graph: optional TransformGraph; the examples are checked against its raw schema and, when
            the signature does not apply it itself, transformed before the signature.
          baseline_blessing: optional ModelBlessing of the same model (e.g. TFMA Evaluator's), ANDed into the
            output blessing: one blessing for utility and privacy.
          signature_name: the SavedModel signature over serialized tf.Examples (standard Trainer models).
          output_key: the signature output with the class scores [batch, classes] (None: the only one).
          outputs: "logits", "probabilities" or "auto" (detected on the first examples when unambiguous).
        """
        from privacy_audit.components.membership_inference.serving_model import ServingOptions

        ServingOptions(signature_name=signature_name, output_key=output_key, outputs=outputs)
        attacks_json = attacks if isinstance(attacks, str) else json.dumps(list(attacks))
        slicing_json = slicing if isinstance(slicing, str) else json.dumps(
            dict(DEFAULT_SLICING if slicing is None else slicing))
        feature_keys_json = None
        if feature_keys is not None:
            feature_keys_json = feature_keys if isinstance(feature_keys, str) else json.dumps(list(feature_keys))
        # Checked here so that a pipeline with bad settings fails when it is built.
        evaluation.parse_settings(attacks_json, slicing_json, seed, min_slice_size, sample_size)
        reference_json = None
        if reference_options is not None:
            reference_json = reference_options if isinstance(reference_options, str) else json.dumps(
                dict(reference_options), sort_keys=True)
        evaluation.check_reference_attacks(attacks_json, reference_json, has_references=reference_models is not None)
        # The gate's thresholds may be Kubeflow run-time parameters (RuntimeParameter): their defaults are checked.
        gate.parse_thresholds(*map(compile_time_value, (max_auc, max_attacker_advantage, max_epsilon_lower_bound)))
        if feature_keys_json is not None:
            evaluation.parse_json_list(feature_keys_json, "feature_keys")
        if members_split == nonmembers_split:
            raise ValueError(f"members_split and nonmembers_split must differ, both are {members_split!r}")
        spec = MembershipInferenceEvaluatorSpec(
            examples=examples, model=model, model_run=model_run, label_key=label_key,
            feature_keys=feature_keys_json, members_split=members_split, nonmembers_split=nonmembers_split,
            attacks=attacks_json, slicing=slicing_json, seed=int(seed), min_slice_size=int(min_slice_size),
            sample_size=int(sample_size), max_auc=max_auc, max_attacker_advantage=max_attacker_advantage,
            max_epsilon_lower_bound=max_epsilon_lower_bound, model_variant=model_variant,
            write_per_example=int(bool(write_per_example)), reference_models=reference_models,
            reference_options=reference_json, transform_graph=transform_graph,
            baseline_blessing=baseline_blessing, signature_name=signature_name, output_key=output_key,
            outputs=outputs, attack_results=types.Channel(type=MembershipInferenceResults),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing))
        super().__init__(spec=spec)


__all__: List[str] = ["MembershipInferenceEvaluator", "MembershipInferenceEvaluatorSpec"]
