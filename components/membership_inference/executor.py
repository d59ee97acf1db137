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
PER_EXAMPLE_REFERENCE_DIR = "per_example_reference"
INDEX_FILE = "index.json"
BLESSING_FILE = "blessing.json"
ONE_RUN_AUDIT_FILE = "one_run_audit.json"  # privacy_audit.components.dp_trainer.trainer.ONE_RUN_AUDIT_FILE
GATE_METRICS = ("auc", "attacker_advantage", "epsilon_lower_bound")
#: TPR is reported at these FPRs; 0.01% is only meaningful with >= 10,000 non-members (the result lists
#: unresolved targets in tpr_at_fpr_unresolved).
FPR_TARGETS = (0.01, 0.001, 0.0001)
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
    from privacy_audit.components.membership_inference.slicing import SlicingSpec

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


def split_attacks(attacks_json: str) -> Tuple[List[str], List[str]]:
    """``(attacks of the Beam path, attacks with reference models)``, names validated, order kept."""
    from privacy_audit.components.membership_inference import attacks as attacks_mod

    attacks = parse_json_list(attacks_json, "attacks")
    if not attacks:
        raise ValueError("attacks must name at least one attack")
    names = attacks_mod.check_attack_names(attacks)
    with_references = attacks_mod.reference_attack_names(names)
    return [a for a in names if a not in with_references], with_references


def parse_settings(attacks_json: str, slicing_json: str, seed: int, min_slice_size: int, sample_size: int):
    """AuditSettings of the Beam path from the component's parameters (validated); the reference attacks
    (lira, rmia, ...) are left to :func:`reference_attack_results`."""
    from privacy_audit.components.membership_inference.beam_pipeline import AuditSettings

    standard, with_references = split_attacks(attacks_json)
    if not standard:
        raise ValueError(f"attacks {with_references} all need reference models; name at least one attack without "
                         "them as well (e.g. threshold), which also evaluates the checkpoints")
    return AuditSettings(attacks=tuple(standard), slicing=slicing_from_json(slicing_json), seed=int(seed),
                         min_slice_size=int(min_slice_size), sample_size=int(sample_size),
                         fpr_targets=FPR_TARGETS)


def parse_reference_options(text: Optional[str]) -> Dict[str, Dict[str, Any]]:
    """The reference attacks' options from the component's JSON (validated)."""
    from privacy_audit.components.membership_inference.reference_models import check_reference_options

    if not text:
        return {}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"reference_options must be a JSON object, got {text!r} ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"reference_options must be a JSON object like {{\"lira\": {{...}}}}, got {text!r}")
    return check_reference_options(obj)


def check_reference_attacks(attacks_json: str, reference_options_json: Optional[str], has_references: bool) -> None:
    """Reference attacks need the reference_models input; their options must be valid."""
    _, with_references = split_attacks(attacks_json)
    parse_reference_options(reference_options_json)
    if with_references and not has_references:
        raise ValueError(f"attacks {with_references} need reference models: give the reference_models input "
                         "(a ReferenceModelTrainer's output)")


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


def privacy_gate(results_obj: Mapping[str, Any], thresholds: Mapping[str, float],
                 one_run_audit: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The blessing of one results object: blessed unless some slice and attack exceeds a threshold, or the
    one-run audit (when given, ``one_run_audit.json`` of the ModelRun) proves more leakage than the
    accountant's ε, which means the DP training is broken.

    Returns ``{"blessed": bool, "thresholds": {...}, "failures": [{"slice", "slice_name", "attack",
    "metric", "value", "threshold"(, "reason")}], "failing_slices": [names], "reasons": [str],
    "max": {metric: value}}`` (and ``one_run_audit``: its bound and claim, when given).
    """
    from privacy_audit.components.membership_inference.slicing import slice_name

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
    reasons = [f"{len(failures)} slice/attack result(s) above the thresholds (slices: {', '.join(failing)})"] \
        if failures else []
    out: Dict[str, Any] = {"thresholds": dict(thresholds), "failures": failures, "failing_slices": failing}
    if one_run_audit is not None:
        bound = _finite_or_none(one_run_audit.get("epsilon_lower_bound"))
        claim = _finite_or_none(one_run_audit.get("accountant_epsilon"))
        out["one_run_audit"] = {"epsilon_lower_bound": bound, "accountant_epsilon": claim,
                                "confidence": one_run_audit.get("confidence"),
                                "violated": bool(one_run_audit.get("violated"))}
        if one_run_audit.get("violated"):
            message = one_run_audit.get("message") or (
                f"the one-run audit proves ε >= {bound} but the accountant claims ε = {claim}")
            failures.append({"slice": None, "slice_name": "one_run_audit", "attack": "one_run_audit",
                             "metric": "one_run_audit_epsilon_lower_bound", "value": bound, "threshold": claim,
                             "reason": message})
            reasons.append(message)
    out.update({"blessed": not failures, "reasons": reasons, "max": maxima})
    return out


def safe_name(text: str) -> str:
    """A file-name-safe version of a model variant name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "model"


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    from privacy_audit.components.common import io

    return io.read_json(path) if io.exists(path) else None


def _write_json(path: str, obj: Any) -> None:
    from privacy_audit.components.membership_inference.beam_pipeline import _write_text

    _write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def _finite_or_none(value) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _blessing_properties(artifact: types.Artifact) -> Dict[str, Any]:
    """A ModelBlessing's verdict and model: ``blessed`` (custom property, else the BLESSED / NOT_BLESSED
    file, else None), ``current_model``, ``current_model_id``, ``uri``."""
    import tensorflow as tf

    blessed = _custom(artifact, "blessed")
    if blessed is None:
        if tf.io.gfile.exists(os.path.join(artifact.uri, "BLESSED")):
            blessed = 1
        elif tf.io.gfile.exists(os.path.join(artifact.uri, "NOT_BLESSED")):
            blessed = 0
    return {"blessed": None if blessed is None else bool(int(blessed)), "uri": artifact.uri,
            "current_model": _custom(artifact, "current_model"),
            "current_model_id": _custom(artifact, "current_model_id")}


def _custom(artifact: types.Artifact, name: str):
    """A custom property's value, None when absent."""
    if not artifact.has_custom_property(name):
        return None
    return artifact.get_custom_property(name)


KERAS_FINAL = "keras/model.keras"


def model_format(model_uri: str) -> str:
    """"keras" (DPTrainer: ``keras/model.keras``, fed the feature vector) or "serving" (TFX's standard
    Trainer: ``Format-Serving/``, a SavedModel with a signature over serialized tf.Examples)."""
    import tensorflow as tf

    from privacy_audit.components.membership_inference.serving_model import SERVING_DIR, is_saved_model_dir

    if tf.io.gfile.exists(os.path.join(model_uri, KERAS_FINAL)):
        return "keras"
    if is_saved_model_dir(os.path.join(model_uri, SERVING_DIR)):
        return "serving"
    raise ValueError(f"the model artifact at {model_uri} has neither {KERAS_FINAL} (DPTrainer) nor "
                     f"{SERVING_DIR}/saved_model.pb (a TFX Trainer whose run_fn saves to fn_args.serving_model_dir)")


def models_to_evaluate(model_uri: str, variant: str, model_info: Mapping[str, Any],
                       ledger: Optional[Mapping[str, Any]], final_epsilon: Optional[float],
                       serving: Any = None) -> List[Tuple[Any, Dict[str, Any]]]:
    """``[(ModelToEvaluate, metadata)]``: every checkpoint of ``checkpoints/index.json``, then the final
    model (``keras/model.keras``, or with ``serving`` (resolved ServingOptions) the ``Format-Serving/``
    SavedModel); ε per epoch from the ledger when given, else from the index. Checkpoints that are
    directories (SavedModels, AuditCheckpoints with ``signatures``) are read through the same signature
    options as the final model; ``.keras`` files are fed the feature vector."""
    from privacy_audit.components.membership_inference.beam_pipeline import ModelToEvaluate
    from privacy_audit.components.membership_inference.serving_model import SERVING_DIR

    final_rel = KERAS_FINAL if serving is None else SERVING_DIR
    final_path = os.path.join(model_uri, final_rel)
    if serving is None:
        model_format(model_uri)  # the error names both layouts
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
        ck_path = os.path.join(model_uri, "checkpoints", ck["path"])
        out.append((ModelToEvaluate(key, ck_path, None if ck["path"].endswith(".keras") else serving),
                    {"model_variant": variant, "epoch": epoch, "is_final": False, "epsilon": eps,
                     "steps": ck.get("steps"), "checkpoint": f"checkpoints/{ck['path']}"}))
        last_epoch = epoch if last_epoch is None else max(last_epoch, epoch)
    final_epoch = model_info.get("epochs")
    if final_epoch is None and ledger and ledger.get("epochs"):
        final_epoch = ledger["epochs"][-1]["epoch"]
    if final_epoch is None:
        final_epoch = last_epoch
    out.append((ModelToEvaluate(f"{stem}_final", final_path, serving),
                {"model_variant": variant, "epoch": None if final_epoch is None else int(final_epoch),
                 "is_final": True, "epsilon": final_epsilon, "checkpoint": final_rel}))
    return out


# ---------------------------------------------------------------------------------------------------------
# Reference attacks (no TFX)
# ---------------------------------------------------------------------------------------------------------

#: Fields of the references' recipe compared with the target's ledger: (recipe key, ledger key).
_RECIPE_VS_LEDGER = (("epochs", "epochs_planned"), ("batch_size", "expected_batch_size"),
                     ("learning_rate", "learning_rate"), ("optimizer", "optimizer"), ("private", "private"),
                     ("sampling", "sampling"), ("l2_norm_clip", "l2_norm_clip"),
                     ("noise_multiplier", "noise_multiplier"))


def recipe_mismatches(recipe: Mapping[str, Any], ledger: Optional[Mapping[str, Any]]) -> List[str]:
    """The recipe fields where the reference models differ from the target's ledger (empty: same recipe)."""
    out = []
    for rkey, lkey in _RECIPE_VS_LEDGER:
        if not ledger or lkey not in ledger or rkey not in recipe:
            continue
        a, b = recipe[rkey], ledger[lkey]
        if not ledger.get("private") and rkey in ("l2_norm_clip", "noise_multiplier"):
            continue
        same = (math.isclose(float(a), float(b), rel_tol=1e-9) if isinstance(a, (int, float)) and
                isinstance(b, (int, float)) and not isinstance(a, bool) else a == b)
        if not same:
            out.append(f"{rkey}: references {a!r}, target {b!r}")
    return out


def _logits(model, x):
    # The same fixed-shape batches as the Beam inference, so the driver's logits equal the workers'.
    from privacy_audit.components.membership_inference.beam_pipeline import predict_fixed_batches

    return predict_fixed_batches(model, x)


def reference_attack_results(final: Dict[str, Any], *, model_path: str, members_pattern: str,
                             nonmembers_pattern: str, label_key: str, input_features: List[str],
                             references_path: str, attacks: List[str], settings: Any,
                             reference_options: Mapping[str, Any], ledger: Optional[Mapping[str, Any]] = None,
                             per_example_path: Optional[str] = None, serving: Any = None) -> Dict[str, Any]:
    """Adds the reference attacks (lira, rmia, ...) on the final model to its results object ``final`` (the
    Beam path's, with the other attacks): same slices (``settings.slicing``, ``min_slice_size``), same
    metrics (``settings`` delta, confidence, FPR targets, ROC points), one entry per slice and attack.

    The members and non-members are read in memory, the final model's logits computed, and the reference
    signals (``references_path``, a ReferenceModels ``reference_signals.npz``) aligned to them by the sha1 of
    each serialized example. Metadata gains ``attacks`` (all of them) and ``reference_models`` (K, the
    design, the recipe, the attacks' resolved options, recipe fields that differ from ``ledger``).
    Returns the merged results object (validated); writes per-example scores to ``per_example_path``.
    With ``serving`` (resolved ServingOptions) ``model_path`` is a SavedModel read through its signature
    (probabilities enter the attacks as log-probabilities, whose softmax they are).
    """
    import numpy as np

    from privacy_audit.components.common import examples as examples_lib
    from privacy_audit.components.membership_inference import api, beam_pipeline, results as results_lib
    from privacy_audit.components.membership_inference.data import AttackInputs
    from privacy_audit.components.membership_inference.reference_models import load_reference_file, sha1_to_id

    if serving is None:
        members = examples_lib.load_examples(members_pattern, label_key, input_features)
        nonmembers = examples_lib.load_examples(nonmembers_pattern, label_key, input_features)
        model = beam_pipeline.load_keras_model(model_path)
        logits_m, logits_n = _logits(model, members.x), _logits(model, nonmembers.x)
    else:
        (members, logits_m), (nonmembers, logits_n) = (
            _serving_outputs(model_path, serving, pattern, label_key, settings.slicing.feature_keys)
            for pattern in (members_pattern, nonmembers_pattern))
    sha1 = list(members.example_hashes) + list(nonmembers.example_hashes)
    refs = load_reference_file(references_path).align(sha1, "sha1")
    feature_keys = list(settings.slicing.feature_keys)
    features = None
    if feature_keys:
        features = [{k: np.asarray(side.features[k]) for k in feature_keys} for side in (members, nonmembers)]
    inputs = AttackInputs(logits_members=logits_m, logits_nonmembers=logits_n, labels_members=members.y,
                          labels_nonmembers=nonmembers.y, example_ids_members=np.asarray(members.example_hashes),
                          example_ids_nonmembers=np.asarray(nonmembers.example_hashes),
                          features_members=features[0] if features else None,
                          features_nonmembers=features[1] if features else None)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", api.DuplicateExamplesWarning)  # the Beam path already reported them
        obj = api.run_attacks(inputs, attacks, settings.slicing, seed=settings.seed,
                              min_slice_size=settings.min_slice_size, delta=settings.delta,
                              confidence=settings.confidence, fpr_targets=settings.fpr_targets,
                              roc_points=settings.roc_points, references=refs,
                              reference_options=dict(reference_options))
    by_slice: Dict[str, List[Dict[str, Any]]] = {}
    for entry in obj["results"]:
        by_slice.setdefault(json.dumps(entry["slice"], sort_keys=True), []).append(entry)
    merged: List[Dict[str, Any]] = []
    for i, entry in enumerate(final["results"]):
        merged.append(entry)
        key = json.dumps(entry["slice"], sort_keys=True)
        nxt = final["results"][i + 1] if i + 1 < len(final["results"]) else None
        if nxt is None or json.dumps(nxt["slice"], sort_keys=True) != key:
            merged.extend(by_slice.pop(key, []))
    for rest in by_slice.values():
        merged.extend(rest)
    md = dict(final["metadata"])
    md["attacks"] = list(md.get("attacks") or []) + list(attacks)
    info = dict(obj["metadata"]["reference_models"])
    info["evaluated"] = "final model only (the references reproduce the complete training run)"
    mismatches = recipe_mismatches(refs.metadata.get("recipe") or {}, ledger)
    info["recipe_mismatches"] = mismatches
    if mismatches:
        _LOG.warning("the reference models' recipe differs from the target's: %s", "; ".join(mismatches))
    md["reference_models"] = info
    out = results_lib.build_results(merged, md, final.get("skipped_slices", []))
    if per_example_path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        n_m = len(members.y)
        cols = {"example_id": sha1_to_id(sha1), "is_member": np.arange(len(sha1)) < n_m,
                "label": np.concatenate([members.y, nonmembers.y])}
        for name, scores in _reference_scores(inputs, refs, attacks, reference_options).items():
            cols[f"score_{name}"] = scores
        _write_bytes(per_example_path, _parquet_bytes(pa, pq, cols))
    return out


def _serving_outputs(model_path: str, serving: Any, pattern: str, label_key: str, feature_keys):
    """``(ExampleColumns, logits [n, C])`` of a split through a SavedModel signature."""
    import numpy as np

    from privacy_audit.components.common import examples as examples_lib
    from privacy_audit.components.membership_inference import serving_model as sm

    model = sm.load_serving_model(model_path, serving)
    serialized = examples_lib.read_serialized(pattern)
    batch = 256
    scores = [model(serialized[i:i + batch]) for i in range(0, len(serialized), batch)]
    return (sm.example_columns(serialized, label_key, feature_keys),
            sm.as_logits(np.concatenate(scores), model.kind))


def _reference_scores(inputs, refs, attacks, reference_options) -> Dict[str, Any]:
    from privacy_audit.components.membership_inference import attacks as attacks_mod

    prepared = attacks_mod.PreparedInputs(inputs, references=refs, reference_options=dict(reference_options))
    return {name: prepared.reference_scores(name)[0] for name in attacks}


def _parquet_bytes(pa, pq, cols) -> bytes:
    import io

    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return buf.getvalue()


def _write_bytes(path: str, data: bytes) -> None:
    from privacy_audit.components.common import io

    io.write_bytes(path, data)


# ---------------------------------------------------------------------------------------------------------
# Standard TFX models and blessings (no TFX)
# ---------------------------------------------------------------------------------------------------------

def serving_options(exec_properties: Mapping[str, Any], transform_graph: Optional[str] = None):
    """ServingOptions from the component's parameters (signature_name, output_key, outputs)."""
    from privacy_audit.components.membership_inference.serving_model import ServingOptions

    return ServingOptions(signature_name=exec_properties.get("signature_name") or "serving_default",
                          output_key=exec_properties.get("output_key") or None,
                          outputs=exec_properties.get("outputs") or "auto", transform_graph=transform_graph)


def resolve_serving(model_dir: str, options: Any, probe_pattern: str) -> Any:
    """The options with output key, kind (logits / probabilities) and transform mode settled on the first
    examples of ``probe_pattern``; ValueError naming what does not fit."""
    from privacy_audit.components.membership_inference import serving_model as sm

    resolved = sm.ServingModel(model_dir, options).resolve(sm.read_probe(probe_pattern))
    _LOG.info("model %s: output %r read as %s (transform: %s)", model_dir, resolved.output_key, resolved.outputs,
              resolved.transform_mode)
    return resolved


def check_baseline_model(baseline: Mapping[str, Any], model_uri: str, model_id: Optional[int]) -> None:
    """ValueError when a baseline blessing (e.g. TFMA's) names another model than the audited one (its
    ``current_model`` / ``current_model_id`` custom properties)."""
    other_id, other_uri = baseline.get("current_model_id"), baseline.get("current_model")
    if other_id is not None and model_id is not None and int(other_id) != int(model_id):
        raise ValueError(f"baseline_blessing ({baseline.get('uri')}) blesses model id {other_id} at {other_uri}, "
                         f"not the audited model id {model_id} at {model_uri}: wire the same Trainer's model")
    if other_uri and os.path.normpath(str(other_uri)) != os.path.normpath(model_uri):
        raise ValueError(f"baseline_blessing ({baseline.get('uri')}) blesses the model at {other_uri}, not the "
                         f"audited model at {model_uri}: wire the same Trainer's model")


def and_baseline(blessing: Dict[str, Any], baseline: Mapping[str, Any]) -> Dict[str, Any]:
    """The privacy blessing ANDed with a baseline blessing (``{"blessed": bool | None, "uri": ...}``): not
    blessed when the baseline is not (a baseline without a ``blessed`` value counts as not blessed, as for
    TFX's Pusher). Records the baseline under ``baseline`` and ``privacy_blessed``."""
    ok = bool(baseline.get("blessed"))
    out = dict(blessing, privacy_blessed=bool(blessing["blessed"]),
               baseline={k: baseline.get(k) for k in ("blessed", "uri", "current_model", "current_model_id")})
    if not ok:
        why = ("has no blessed property (an Evaluator without thresholds writes none)"
               if baseline.get("blessed") is None else "is NOT_BLESSED")
        out["reasons"] = list(blessing.get("reasons", [])) + [f"the baseline blessing {why} ({baseline.get('uri')})"]
        out["blessed"] = False
    return out


# ---------------------------------------------------------------------------------------------------------
# Executor
# ---------------------------------------------------------------------------------------------------------

class Executor(base_beam_executor.BaseBeamExecutor):
    """Evaluates the final model and its checkpoints, writes results, index and blessing."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        from privacy_audit.components.common import examples as examples_lib
        from privacy_audit.components.membership_inference import beam_pipeline

        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        model = artifact_utils.get_single_instance(input_dict["model"])
        model_run = (artifact_utils.get_single_instance(input_dict["model_run"])
                     if input_dict.get("model_run") else None)
        references = (artifact_utils.get_single_instance(input_dict["reference_models"])
                      if input_dict.get("reference_models") else None)
        transform_graph = (artifact_utils.get_single_uri(input_dict["transform_graph"])
                           if input_dict.get("transform_graph") else None)
        baseline = None
        if input_dict.get("baseline_blessing"):
            baseline = _blessing_properties(artifact_utils.get_single_instance(input_dict["baseline_blessing"]))
            check_baseline_model(baseline, model.uri, model.id or None)
        _, reference_attacks = split_attacks(exec_properties["attacks"])
        reference_options = parse_reference_options(exec_properties.get("reference_options"))
        if reference_attacks and references is None:
            raise ValueError(f"attacks {reference_attacks} need the reference_models input")
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
        serving = None
        if model_format(model.uri) == "serving":
            from privacy_audit.components.membership_inference.serving_model import SERVING_DIR

            serving = resolve_serving(os.path.join(model.uri, SERVING_DIR),
                                      serving_options(exec_properties, transform_graph), members_pattern)
        final_eps = _finite_or_none(ledger.get("epsilon")) if ledger else _finite_or_none(_custom(model, "epsilon"))
        evaluated = models_to_evaluate(model.uri, variant, model_info, ledger, final_eps, serving)
        # The feature vector only for models that take one (signature models parse the examples themselves).
        input_features: List[str] = []
        if any(m.serving is None for m, _ in evaluated):
            input_features = list(model_info.get("input_features") or [])
            if not input_features:
                _, names = beam_pipeline.inspect_split(members_pattern, f"the members split {members_split!r}")
                input_features = examples_lib.feature_vector_keys(names, label_key, feature_keys)

        private = model_info.get("private")
        if private is None and _custom(model, "private") is not None:
            private = bool(_custom(model, "private"))
        delta = (ledger or {}).get("delta", _custom(model, "delta"))
        targets: Dict[str, beam_pipeline.OutputTarget] = {}
        for m, md in evaluated:
            md = dict(md, private=private, delta=_finite_or_none(delta), members_split=members_split,
                      nonmembers_split=nonmembers_split, label_key=label_key,
                      model_format="keras" if m.serving is None else "saved_model_signature",
                      checkpoints_audited=len(evaluated) - 1)
            if m.serving is not None:
                md["serving"] = m.serving.to_json()
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
        if reference_attacks:
            from privacy_audit.components.membership_inference.reference_models import SIGNALS_FILE

            final = reference_attack_results(
                final, model_path=evaluated[-1][0].path, members_pattern=members_pattern,
                nonmembers_pattern=nonmembers_pattern, label_key=label_key, input_features=input_features,
                references_path=os.path.join(references.uri, SIGNALS_FILE), attacks=reference_attacks,
                settings=settings, reference_options=reference_options, ledger=ledger,
                per_example_path=(os.path.join(results_art.uri, PER_EXAMPLE_REFERENCE_DIR, f"{final_key}.parquet")
                                  if per_example else None), serving=evaluated[-1][0].serving)
            final["metadata"]["reference_models"]["artifact"] = references.uri
            from privacy_audit.components.membership_inference import results as results_lib

            beam_pipeline._write_text(targets[final_key].results_path, results_lib.dumps_results(final) + "\n")
        audit = (_read_json(os.path.join(model_run.uri, ONE_RUN_AUDIT_FILE)) if model_run is not None else None)
        blessing = privacy_gate(final, thresholds, audit)
        if baseline is not None:
            blessing = and_baseline(blessing, baseline)
        blessing.update({"model_variant": variant, "evaluated": f"{RESULTS_DIR}/{final_key}.json",
                         "epoch": final["metadata"].get("epoch"), "epsilon": final["metadata"].get("epsilon"),
                         "model": model.uri})
        _write_json(os.path.join(blessing_art.uri, BLESSING_FILE), blessing)
        # A standard ModelBlessing, as TFMA's Evaluator writes it: what TFX's Pusher checks.
        marker = "BLESSED" if blessing["blessed"] else "NOT_BLESSED"
        beam_pipeline._write_text(os.path.join(blessing_art.uri, marker), "")
        blessing_art.set_int_custom_property("blessed", int(blessing["blessed"]))
        blessing_art.set_string_custom_property("current_model", model.uri)
        if model.id:
            blessing_art.set_int_custom_property("current_model_id", int(model.id))
        blessing_art.set_string_custom_property("model_variant", variant)
        results_art.set_string_custom_property("model_variant", variant)
        results_art.set_int_custom_property("n_results_files", len(entries))
        for metric, value in blessing["max"].items():
            if value is not None:
                results_art.set_float_custom_property(f"max_{metric}", float(value))
        if blessing["blessed"]:
            _LOG.info("%s: blessed (%s)", variant, thresholds or "no thresholds")
        else:
            _LOG.warning("%s: NOT blessed: %s", variant, "; ".join(blessing["reasons"]))
