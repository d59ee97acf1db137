"""Executor of the MembershipInferenceEvaluator: unpacks artifacts, hands paths and plain values to
:func:`evaluation.evaluate` (no TFX) and records the outcome as ML Metadata properties.

Everything else (parameters, models to evaluate, the Beam audit, reference attacks, the gate) is library
code: :mod:`.evaluation`, :mod:`.gate`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

from tfx import types
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils, standard_artifact_utils

from privacy_audit.components.common import io, layout
from privacy_audit.components.membership_inference.evaluation import evaluate

_MODEL_PROPERTIES = ("model_variant", "private", "delta", "epsilon")


def _custom(artifact: types.Artifact, name: str):
    """A custom property's value, None when absent."""
    if not artifact.has_custom_property(name):
        return None
    return artifact.get_custom_property(name)


def _blessing_properties(artifact: types.Artifact) -> Dict[str, Any]:
    """A ModelBlessing's verdict and model: ``blessed`` (custom property, else the BLESSED / NOT_BLESSED
    file, else None), ``current_model``, ``current_model_id``, ``uri``."""
    blessed = _custom(artifact, "blessed")
    if blessed is None:
        if io.exists(io.join(artifact.uri, layout.BLESSED_MARKER)):
            blessed = 1
        elif io.exists(io.join(artifact.uri, layout.NOT_BLESSED_MARKER)):
            blessed = 0
    return {"blessed": None if blessed is None else bool(int(blessed)), "uri": artifact.uri,
            "current_model": _custom(artifact, "current_model"),
            "current_model_id": _custom(artifact, "current_model_id")}


def _split_pattern(examples: types.Artifact, split: str) -> str:
    splits = standard_artifact_utils.decode_split_names(examples.split_names)
    if split not in splits:
        raise ValueError(f"split {split!r} not found in the examples (splits: {splits})")
    return os.path.join(standard_artifact_utils.get_split_uri([examples], split), "*")


def _optional(input_dict: Dict[str, List[types.Artifact]], key: str):
    return artifact_utils.get_single_instance(input_dict[key]) if input_dict.get(key) else None


class Executor(base_beam_executor.BaseBeamExecutor):
    """Evaluates the final model and its checkpoints, writes results, index and blessing."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        model = artifact_utils.get_single_instance(input_dict["model"])
        model_run, references = _optional(input_dict, "model_run"), _optional(input_dict, "reference_models")
        transform_graph, baseline = _optional(input_dict, "transform_graph"), _optional(input_dict, "baseline_blessing")
        results_art = artifact_utils.get_single_instance(output_dict["attack_results"])
        blessing_art = artifact_utils.get_single_instance(output_dict["blessing"])
        p = exec_properties
        blessing = evaluate(
            p, members_pattern=_split_pattern(examples, p.get("members_split") or "train"),
            nonmembers_pattern=_split_pattern(examples, p.get("nonmembers_split") or "eval"),
            model_uri=model.uri, model_id=model.id or None,
            model_properties={k: _custom(model, k) for k in _MODEL_PROPERTIES},
            model_run_uri=model_run.uri if model_run else None, references_uri=references.uri if references else None,
            transform_graph=transform_graph.uri if transform_graph else None,
            baseline=_blessing_properties(baseline) if baseline else None,
            results_uri=results_art.uri, blessing_uri=blessing_art.uri, make_pipeline=self._make_beam_pipeline)
        variant = blessing["model_variant"]
        blessing_art.set_int_custom_property("blessed", int(blessing["blessed"]))
        blessing_art.set_string_custom_property("current_model", model.uri)
        if model.id:
            blessing_art.set_int_custom_property("current_model_id", int(model.id))
        blessing_art.set_string_custom_property("model_variant", variant)
        results_art.set_string_custom_property("model_variant", variant)
        results_art.set_int_custom_property("n_results_files", blessing["n_results_files"])
        for metric, value in blessing["max"].items():
            if value is not None:
                results_art.set_float_custom_property(f"max_{metric}", float(value))
