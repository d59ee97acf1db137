"""Executor of the MembershipInferenceEvaluator: unpacks artifacts and hands paths and plain values to
:func:`beam_pipeline.audit_examples`; writes the results index and the privacy blessing.

The helpers (parse_settings, privacy_gate, ...) use no TFX and are unit-testable without a pipeline.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from tfx import types
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils, standard_artifact_utils

_LOG = logging.getLogger(__name__)

RESULTS_DIR = "results"
PER_EXAMPLE_DIR = "per_example"
INDEX_FILE = "index.json"
BLESSING_FILE = "blessing.json"
GATE_METRICS = ("auc", "attacker_advantage", "epsilon_lower_bound")
_SLICING_KEYS = ("entire_dataset", "by_class", "by_percentiles", "by_classification_correctness", "feature_keys")


# ---------------------------------------------------------------------------------------------------------
# Parameters (no TFX)
# ---------------------------------------------------------------------------------------------------------

def parse_json_list(text: Optional[str], name: str) -> Optional[List[str]]:
    """A JSON list of strings (None stays None); ValueError naming the parameter otherwise."""
    if text is None or text == "":
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} must be a JSON list of strings, got {text!r} ({e})") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a JSON list of strings, got {text!r}")
    return value


def slicing_from_json(text: str):
    """SlicingSpec from the component's JSON: keys entire_dataset, by_class (bool or list of ints),
    by_percentiles, by_classification_correctness, feature_keys (list of names)."""
    from components.membership_inference.slicing import SlicingSpec

    try:
        obj = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"slicing must be a JSON object, got {text!r} ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"slicing must be a JSON object like {{\"by_class\": true}}, got {text!r}")
    unknown = sorted(set(obj) - set(_SLICING_KEYS))
    if unknown:
        raise ValueError(f"slicing: unknown key(s) {unknown}; accepted: {list(_SLICING_KEYS)}")
    by_class = obj.get("by_class", False)
    if not isinstance(by_class, bool):
        if not isinstance(by_class, list) or not all(isinstance(c, int) and not isinstance(c, bool)
                                                     for c in by_class):
            raise ValueError(f"slicing.by_class must be true/false or a list of class ids, got {by_class!r}")
        by_class = tuple(by_class)
    for key in ("entire_dataset", "by_percentiles", "by_classification_correctness"):
        if key in obj and not isinstance(obj[key], bool):
            raise ValueError(f"slicing.{key} must be true or false, got {obj[key]!r}")
    keys = obj.get("feature_keys") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise ValueError(f"slicing.feature_keys must be a list of feature names, got {keys!r}")
    return SlicingSpec(entire_dataset=obj.get("entire_dataset", True), by_class=by_class,
                       by_percentiles=obj.get("by_percentiles", False),
                       by_classification_correctness=obj.get("by_classification_correctness", False),
                       feature_keys=tuple(keys))


def parse_settings(attacks_json: str, slicing_json: str, seed: int, min_slice_size: int, sample_size: int):
    """AuditSettings from the component's parameters (validated)."""
    from components.membership_inference.beam_pipeline import AuditSettings

    attacks = parse_json_list(attacks_json, "attacks")
    if not attacks:
        raise ValueError("attacks must name at least one attack")
    return AuditSettings(attacks=tuple(attacks), slicing=slicing_from_json(slicing_json), seed=int(seed),
                         min_slice_size=int(min_slice_size), sample_size=int(sample_size))


def parse_thresholds(max_auc: Optional[float], max_attacker_advantage: Optional[float],
                     max_epsilon_lower_bound: Optional[float]) -> Dict[str, float]:
    """``{metric: threshold}`` of the gate (metrics without a threshold are left out)."""
    out: Dict[str, float] = {}
    for metric, value in zip(GATE_METRICS, (max_auc, max_attacker_advantage, max_epsilon_lower_bound)):
        if value is None:
            continue
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"max_{metric} must be a finite number >= 0, got {value}")
        out[metric] = value
    return out


def privacy_gate(results_obj: Mapping[str, Any], thresholds: Mapping[str, float]) -> Dict[str, Any]:
    """The blessing of one results object: blessed unless some slice and attack exceeds a threshold.

    Returns ``{"blessed": bool, "thresholds": {...}, "failures": [{"slice", "slice_name", "attack",
    "metric", "value", "threshold"}], "failing_slices": [names], "max": {metric: value}}``.
    """
    from components.membership_inference.slicing import slice_name

    failures: List[Dict[str, Any]] = []
    maxima: Dict[str, Optional[float]] = {m: None for m in GATE_METRICS}
    for r in results_obj.get("results", []):
        for metric in GATE_METRICS:
            value = r.get(metric)
            if value is None:
                continue
            if maxima[metric] is None or value > maxima[metric]:
                maxima[metric] = float(value)
            limit = thresholds.get(metric)
            if limit is not None and value > limit:
                failures.append({"slice": r["slice"], "slice_name": slice_name(r["slice"]), "attack": r["attack"],
                                 "metric": metric, "value": float(value), "threshold": float(limit)})
    failing = sorted({f["slice_name"] for f in failures})
    return {"blessed": not failures, "thresholds": dict(thresholds), "failures": failures,
            "failing_slices": failing, "max": maxima}


def safe_name(text: str) -> str:
    """A file-name-safe version of a model variant name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "model"


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)


def _write_json(path: str, obj: Any) -> None:
    from components.membership_inference.beam_pipeline import _write_text

    _write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def _finite_or_none(value) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _custom(artifact: types.Artifact, name: str):
    """A custom property's value, None when absent."""
    if not artifact.has_custom_property(name):
        return None
    return artifact.get_custom_property(name)


def models_to_evaluate(model_uri: str, variant: str, model_info: Mapping[str, Any],
                       ledger: Optional[Mapping[str, Any]], final_epsilon: Optional[float]
                       ) -> List[Tuple[Any, Dict[str, Any]]]:
    """``[(ModelToEvaluate, metadata)]``: every checkpoint of ``checkpoints/index.json``, then the final
    model (``keras/model.keras``); ε per epoch from the ledger when given, else from the index."""
    from components.membership_inference.beam_pipeline import ModelToEvaluate

    final_path = os.path.join(model_uri, "keras", "model.keras")
    import tensorflow as tf

    if not tf.io.gfile.exists(final_path):
        raise ValueError(f"the model artifact has no keras/model.keras (at {model_uri})")
    ledger_eps: Dict[int, Optional[float]] = {}
    for rec in (ledger or {}).get("epochs", []) or []:
        ledger_eps[int(rec["epoch"])] = _finite_or_none(rec.get("epsilon"))
    index = _read_json(os.path.join(model_uri, "checkpoints", "index.json")) or {"checkpoints": []}
    out: List[Tuple[Any, Dict[str, Any]]] = []
    last_epoch: Optional[int] = None
    stem = safe_name(variant)
    for ck in index.get("checkpoints", []):
        epoch = int(ck["epoch"])
        key = f"{stem}_epoch_{epoch:04d}"
        eps = ledger_eps.get(epoch) if epoch in ledger_eps else _finite_or_none(ck.get("epsilon"))
        out.append((ModelToEvaluate(key, os.path.join(model_uri, "checkpoints", ck["path"])),
                    {"model_variant": variant, "epoch": epoch, "is_final": False, "epsilon": eps,
                     "steps": ck.get("steps"), "checkpoint": f"checkpoints/{ck['path']}"}))
        last_epoch = epoch if last_epoch is None else max(last_epoch, epoch)
    final_epoch = model_info.get("epochs")
    if final_epoch is None and ledger and ledger.get("epochs"):
        final_epoch = ledger["epochs"][-1]["epoch"]
    if final_epoch is None:
        final_epoch = last_epoch
    out.append((ModelToEvaluate(f"{stem}_final", final_path),
                {"model_variant": variant, "epoch": None if final_epoch is None else int(final_epoch),
                 "is_final": True, "epsilon": final_epsilon, "checkpoint": "keras/model.keras"}))
    return out


# ---------------------------------------------------------------------------------------------------------
# Executor
# ---------------------------------------------------------------------------------------------------------

class Executor(base_beam_executor.BaseBeamExecutor):
    """Evaluates the final model and its checkpoints, writes results, index and blessing."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        from components.common import examples as examples_lib
        from components.membership_inference import beam_pipeline

        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        model = artifact_utils.get_single_instance(input_dict["model"])
        model_run = (artifact_utils.get_single_instance(input_dict["model_run"])
                     if input_dict.get("model_run") else None)
        results_art = artifact_utils.get_single_instance(output_dict["attack_results"])
        blessing_art = artifact_utils.get_single_instance(output_dict["blessing"])

        settings = parse_settings(exec_properties["attacks"], exec_properties["slicing"],
                                  exec_properties.get("seed", 0), exec_properties.get("min_slice_size", 20),
                                  exec_properties.get("sample_size", beam_pipeline.DEFAULT_SAMPLE_SIZE))
        thresholds = parse_thresholds(exec_properties.get("max_auc"), exec_properties.get("max_attacker_advantage"),
                                      exec_properties.get("max_epsilon_lower_bound"))
        label_key = exec_properties["label_key"]
        feature_keys = parse_json_list(exec_properties.get("feature_keys"), "feature_keys")
        members_split = exec_properties.get("members_split") or "train"
        nonmembers_split = exec_properties.get("nonmembers_split") or "eval"

        splits = standard_artifact_utils.decode_split_names(examples.split_names)
        for split in (members_split, nonmembers_split):
            if split not in splits:
                raise ValueError(f"split {split!r} not found in the examples (splits: {splits})")
        members_pattern = os.path.join(standard_artifact_utils.get_split_uri([examples], members_split), "*")
        nonmembers_pattern = os.path.join(standard_artifact_utils.get_split_uri([examples], nonmembers_split), "*")

        model_info = _read_json(os.path.join(model.uri, "model_info.json")) or {}
        ledger = _read_json(os.path.join(model_run.uri, "ledger.json")) if model_run is not None else None
        variant = (exec_properties.get("model_variant") or _custom(model, "model_variant")
                   or model_info.get("model_variant") or "model")
        input_features = list(model_info.get("input_features") or [])
        if not input_features:
            _, names = beam_pipeline.inspect_split(members_pattern, f"the members split {members_split!r}")
            input_features = examples_lib.feature_vector_keys(names, label_key, feature_keys)
        final_eps = _finite_or_none(ledger.get("epsilon")) if ledger else _finite_or_none(_custom(model, "epsilon"))
        evaluated = models_to_evaluate(model.uri, variant, model_info, ledger, final_eps)

        private = model_info.get("private")
        if private is None and _custom(model, "private") is not None:
            private = bool(_custom(model, "private"))
        delta = (ledger or {}).get("delta", _custom(model, "delta"))
        targets: Dict[str, beam_pipeline.OutputTarget] = {}
        for m, md in evaluated:
            md = dict(md, private=private, delta=_finite_or_none(delta), members_split=members_split,
                      nonmembers_split=nonmembers_split, label_key=label_key)
            targets[m.key] = beam_pipeline.OutputTarget(
                os.path.join(results_art.uri, RESULTS_DIR, f"{m.key}.json"), md)
        write_per_example = bool(exec_properties.get("write_per_example", 1))
        per_example = os.path.join(results_art.uri, PER_EXAMPLE_DIR) if write_per_example else None

        all_results = beam_pipeline.audit_examples(
            members_pattern, nonmembers_pattern, [m for m, _ in evaluated], targets, label_key=label_key,
            input_features=input_features, settings=settings,
            staging_dir=os.path.join(results_art.uri, ".staging"), per_example_dir=per_example,
            make_pipeline=self._make_beam_pipeline, split_names=(members_split, nonmembers_split))

        entries = []
        for m, md in evaluated:
            entries.append({"path": f"{RESULTS_DIR}/{m.key}.json", "model_key": m.key, "epoch": md["epoch"],
                            "is_final": md["is_final"], "epsilon": md["epsilon"],
                            "per_example": f"{PER_EXAMPLE_DIR}/{m.key}" if per_example else None})
        _write_json(os.path.join(results_art.uri, INDEX_FILE),
                    {"schema_version": 1, "model_variant": variant, "results": [e["path"] for e in entries],
                     "entries": entries})

        final_key = evaluated[-1][0].key
        final = all_results[final_key]
        blessing = privacy_gate(final, thresholds)
        blessing.update({"model_variant": variant, "evaluated": f"{RESULTS_DIR}/{final_key}.json",
                         "epoch": final["metadata"].get("epoch"), "epsilon": final["metadata"].get("epsilon")})
        _write_json(os.path.join(blessing_art.uri, BLESSING_FILE), blessing)
        marker = "BLESSED" if blessing["blessed"] else "NOT_BLESSED"
        beam_pipeline._write_text(os.path.join(blessing_art.uri, marker), "")
        blessing_art.set_int_custom_property("blessed", int(blessing["blessed"]))
        blessing_art.set_string_custom_property("model_variant", variant)
        results_art.set_string_custom_property("model_variant", variant)
        results_art.set_int_custom_property("n_results_files", len(entries))
        for metric, value in blessing["max"].items():
            if value is not None:
                results_art.set_float_custom_property(f"max_{metric}", float(value))
        if blessing["blessed"]:
            _LOG.info("%s: blessed (%s)", variant, thresholds or "no thresholds")
        else:
            _LOG.warning("%s: NOT blessed; failing slices: %s", variant, ", ".join(blessing["failing_slices"]))
