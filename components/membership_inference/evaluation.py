"""The MembershipInferenceEvaluator's work on plain paths and values (no TFX): its parameters, which models
to evaluate (every checkpoint and the final model), the Beam audit of all of them in one pipeline, the
reference attacks on the final model, the results index and the blessing (:mod:`.gate`).
:func:`evaluate` is the whole of it; the executor only unpacks artifacts and records properties.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from privacy_audit.components.common import io, layout
from privacy_audit.components.common.recipe import ledger_mismatches
from privacy_audit.components.dp_trainer.accounting import epsilon_of_ledger

_LOG = logging.getLogger(__name__)

#: TPR is reported at these FPRs; 0.01% is only meaningful with >= 10,000 non-members (the result lists
#: unresolved targets in tpr_at_fpr_unresolved).
FPR_TARGETS = (0.01, 0.001, 0.0001)
_SLICING_KEYS = ("entire_dataset", "by_class", "by_percentiles", "by_classification_correctness", "feature_keys")


# ---------------------------------------------------------------------------------------------------------
# Parameters
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
    (lira, rmia, ...) are given to the pipeline separately (:class:`beam.reference.ReferenceAttackSpec`) or, for
    reference artifacts without Parquet signals, scored by :func:`reference_attack_results`."""
    from privacy_audit.components.membership_inference.settings import AuditSettings

    standard, with_references = split_attacks(attacks_json)
    if not standard:
        raise ValueError(f"attacks {with_references} all need reference models; name at least one attack without "
                         "them as well (e.g. threshold), which also evaluates the checkpoints")
    return AuditSettings(attacks=tuple(standard), slicing=slicing_from_json(slicing_json), seed=int(seed),
                         min_slice_size=int(min_slice_size), sample_size=int(sample_size),
                         fpr_targets=FPR_TARGETS)


def parse_reference_options(text: Optional[str]) -> Dict[str, Dict[str, Any]]:
    """The reference attacks' options from the component's JSON (validated)."""
    from privacy_audit.components.membership_inference.attacks.reference import check_reference_options

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


def safe_name(text: str) -> str:
    """A file-name-safe version of a model variant name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "model"


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    return io.read_json(path) if io.exists(path) else None


def _write_json(path: str, obj: Any) -> None:
    io.write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def _finite_or_none(value) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def model_format(model_uri: str) -> str:
    """"keras" (DPTrainer: ``keras/model.keras``, fed the feature vector) or "serving" (TFX's standard
    Trainer: ``Format-Serving/``, a SavedModel with a signature over serialized tf.Examples)."""
    import tensorflow as tf

    from privacy_audit.components.membership_inference.serving_model import SERVING_DIR, is_saved_model_dir

    if tf.io.gfile.exists(os.path.join(model_uri, layout.KERAS_FINAL)):
        return "keras"
    if is_saved_model_dir(os.path.join(model_uri, SERVING_DIR)):
        return "serving"
    raise ValueError(f"the model artifact at {model_uri} has neither {layout.KERAS_FINAL} (DPTrainer) nor "
                     f"{SERVING_DIR}/saved_model.pb (a TFX Trainer whose run_fn saves to fn_args.serving_model_dir)")


def models_to_evaluate(model_uri: str, variant: str, model_info: Mapping[str, Any],
                       ledger: Optional[Mapping[str, Any]], final_epsilon: Optional[float],
                       serving: Any = None) -> List[Tuple[Any, Dict[str, Any]]]:
    """``[(ModelToEvaluate, metadata)]``: every checkpoint of ``checkpoints/index.json``, then the final
    model (``keras/model.keras``, or with ``serving`` (resolved ServingOptions) the ``Format-Serving/``
    SavedModel); ε per epoch derived from the ledger's events when there is a ledger (the DPTrainer's ModelRun),
    else as the index records it (AuditCheckpoints in a user's trainer). Checkpoints that are
    directories (SavedModels, AuditCheckpoints with ``signatures``) are read through the same signature
    options as the final model; ``.keras`` files are fed the feature vector."""
    from privacy_audit.components.membership_inference.beam.sources import ModelToEvaluate
    from privacy_audit.components.membership_inference.serving_model import SERVING_DIR

    final_rel = layout.KERAS_FINAL if serving is None else SERVING_DIR
    final_path = os.path.join(model_uri, final_rel)
    if serving is None:
        model_format(model_uri)  # the error names both layouts
    index = _read_json(os.path.join(model_uri, layout.CHECKPOINT_DIR, layout.CHECKPOINT_INDEX)) or {"checkpoints": []}
    out: List[Tuple[Any, Dict[str, Any]]] = []
    last_epoch: Optional[int] = None
    stem = safe_name(variant)
    for ck in index.get("checkpoints", []):
        epoch = int(ck["epoch"])
        key = f"{stem}_epoch_{epoch:04d}"
        eps = _finite_or_none(epsilon_of_ledger(ledger, upto_epoch=epoch) if ledger else ck.get("epsilon"))
        ck_path = os.path.join(model_uri, layout.CHECKPOINT_DIR, ck["path"])
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


def attack_inputs_from_records(records: Mapping[str, Any], feature_keys: Sequence[str] = ()):
    """:class:`data.AttackInputs` from per-example record columns (members first, as
    ``beam.transforms.read_outputs`` returns them); probabilities enter as log-probabilities (their softmax)."""
    import numpy as np

    from privacy_audit.components.membership_inference.data import AttackInputs
    from privacy_audit.components.membership_inference.records import FEATURE_PREFIX
    from privacy_audit.components.membership_inference.serving_model import as_logits

    member = np.asarray(records["is_member"]).astype(bool)
    logits = (np.asarray(records["logits"]) if "logits" in records
              else as_logits(np.asarray(records["probs"]), "probabilities"))
    sides = (member, ~member)
    features = [{k: np.asarray(records[FEATURE_PREFIX + k])[sel] for k in feature_keys} for sel in sides]
    return AttackInputs(logits_members=logits[member], logits_nonmembers=logits[~member],
                        labels_members=records["label"][member], labels_nonmembers=records["label"][~member],
                        example_ids_members=records["id"][member], example_ids_nonmembers=records["id"][~member],
                        features_members=features[0] if feature_keys else None,
                        features_nonmembers=features[1] if feature_keys else None)


def reference_attack_results(final: Dict[str, Any], *, records: Mapping[str, Any], references_path: str,
                             attacks: List[str], settings: Any, reference_options: Mapping[str, Any],
                             ledger: Optional[Mapping[str, Any]] = None,
                             per_example_path: Optional[str] = None) -> Dict[str, Any]:
    """Adds the reference attacks (lira, rmia, ...) on the final model to its results object ``final`` (the
    Beam path's, with the other attacks): same slices (``settings.slicing``, ``min_slice_size``), same
    metrics (``settings`` delta, confidence, FPR targets, ROC points), one entry per slice and attack.

    ``records``: the final model's per-example records as the Beam pipeline computed them (ids, membership,
    labels, logits or probabilities, slicing features; ``beam.transforms.read_outputs``): the model is not run
    again. The reference signals (``references_path``, a ReferenceModels ``reference_signals.npz``) are aligned
    to them by example id. Metadata gains ``attacks`` (all of them) and ``reference_models`` (K, the design,
    the recipe, the attacks' resolved options, recipe fields that differ from ``ledger``).
    Returns the merged results object (validated); writes per-example scores to ``per_example_path``.
    """
    import warnings

    import numpy as np

    from privacy_audit.components.membership_inference import api, results as results_lib
    from privacy_audit.components.membership_inference.beam.reference import merge_reference_entries
    from privacy_audit.components.reference_models.signals import load_reference_file, sha1_to_id

    inputs = attack_inputs_from_records(records, settings.slicing.feature_keys)
    refs = load_reference_file(references_path)
    if "id" not in refs.examples and "sha1" in refs.examples:
        refs.examples["id"] = sha1_to_id(refs.examples["sha1"])
    refs = refs.align(np.asarray(records["id"]), "id")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", api.DuplicateExamplesWarning)  # the Beam path already reported them
        obj = api.run_attacks(inputs, attacks, settings.slicing, seed=settings.seed,
                              min_slice_size=settings.min_slice_size, delta=settings.delta,
                              confidence=settings.confidence, fpr_targets=settings.fpr_targets,
                              roc_points=settings.roc_points, references=refs,
                              reference_options=dict(reference_options))
    merged = merge_reference_entries(final["results"], obj["results"])
    md = dict(final["metadata"])
    md["attacks"] = list(md.get("attacks") or []) + list(attacks)
    md["reference_models"] = _reference_models_info(obj["metadata"]["reference_models"], refs.metadata, ledger)
    out = results_lib.build_results(merged, md, final.get("skipped_slices", []))
    if per_example_path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {"example_id": np.asarray(records["id"], dtype=np.uint64),
                "is_member": np.asarray(records["is_member"], dtype=bool), "label": records["label"]}
        for name, scores in _reference_scores(inputs, refs, attacks, reference_options).items():
            cols[f"score_{name}"] = scores
        _write_bytes(per_example_path, _parquet_bytes(pa, pq, cols))
    return out


def _reference_models_info(info: Mapping[str, Any], reference_metadata: Mapping[str, Any],
                           ledger: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The results' ``metadata.reference_models``: the attacks' record plus what was evaluated and the recipe
    fields in which the references differ from the target's ledger (logged)."""
    info = dict(info)
    info["evaluated"] = "final model only (the references reproduce the complete training run)"
    mismatches = ledger_mismatches(reference_metadata.get("recipe") or {}, ledger)
    info["recipe_mismatches"] = mismatches
    if mismatches:
        _LOG.warning("the reference models' recipe differs from the target's: %s", "; ".join(mismatches))
    return info


def beam_reference_results(final: Dict[str, Any], *, signals_path: str, ledger: Optional[Mapping[str, Any]] = None,
                           scores_dir: Optional[str] = None, per_example_path: Optional[str] = None
                           ) -> Dict[str, Any]:
    """Completes the final results whose reference-attack entries the Beam pipeline added (:mod:`.beam.reference`,
    signals from the Parquet ``signals_path``): what was evaluated and the recipe mismatches in
    ``metadata.reference_models``; the per-example scores the pipeline wrote under ``scores_dir`` gathered into
    ``per_example_path`` (one file, members then non-members by id, as the in-driver path writes it)."""
    from privacy_audit.components.membership_inference import results as results_lib
    from privacy_audit.components.membership_inference.beam.reference import read_scores
    from privacy_audit.components.reference_models.signals import read_signals_parquet_info

    md = dict(final["metadata"])
    md["reference_models"] = _reference_models_info(md.get("reference_models") or {},
                                                    read_signals_parquet_info(signals_path).metadata, ledger)
    out = results_lib.build_results(final["results"], md, final.get("skipped_slices", []))
    if scores_dir:
        try:
            if per_example_path:
                import pyarrow as pa
                import pyarrow.parquet as pq

                cols = read_scores(scores_dir)
                if cols:
                    cols["example_id"] = cols["example_id"].astype("uint64")
                    _write_bytes(per_example_path, _parquet_bytes(pa, pq, cols))
        finally:
            io.rmtree(scores_dir)
    return out


def _reference_scores(inputs, refs, attacks, reference_options) -> Dict[str, Any]:
    from privacy_audit.components.membership_inference import attacks as attacks_mod

    prepared = attacks_mod.PreparedInputs(inputs, references=refs, reference_options=dict(reference_options))
    return {name: prepared.reference_scores(name)[0] for name in attacks}


def _parquet_bytes(pa, pq, cols) -> bytes:
    import io as std_io

    buf = std_io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return buf.getvalue()


def _write_bytes(path: str, data: bytes) -> None:
    io.write_bytes(path, data)


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


# ---------------------------------------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------------------------------------

def audit_progress_line(variant: str, all_results: Mapping[str, Mapping[str, Any]], seconds: float) -> str:
    """``[variant] audited K model(s) x N examples in T s: t s per model, R examples/s`` (N from the final
    model's results: members + non-members)."""
    k = max(1, len(all_results))
    md = (list(all_results.values())[-1] or {}).get("metadata", {}) if all_results else {}
    n = int(md.get("n_members") or 0) + int(md.get("n_nonmembers") or 0)
    rate = f", {k * n / seconds:,.0f} examples/s" if n and seconds > 0 else ""
    return (f"[{variant}] audited {k} model(s) x {n:,} examples in {seconds:.1f}s: {seconds / k:.1f}s per "
            f"model{rate}")


def evaluate(p: Mapping[str, Any], *, members_pattern: str, nonmembers_pattern: str, model_uri: str,
             results_uri: str, blessing_uri: str, model_id: Optional[int] = None,
             model_properties: Optional[Mapping[str, Any]] = None, model_run_uri: Optional[str] = None,
             references_uri: Optional[str] = None, transform_graph: Optional[str] = None,
             baseline: Optional[Mapping[str, Any]] = None, make_pipeline=None) -> Dict[str, Any]:
    """Audits a model artifact's final model and checkpoints; writes results, their index and the blessing.

    Args:
      p: the component's parameters (``attacks``, ``slicing``, ``label_key``, thresholds, ...).
      members_pattern, nonmembers_pattern: file patterns of the two splits' GZIP TFRecords.
      model_uri: a DPTrainer Model (``keras/model.keras`` + checkpoints) or a TFX Trainer's (``Format-Serving``).
      results_uri, blessing_uri: where the results and the blessing go (see :mod:`common.layout`).
      model_id, model_properties: the model's ML Metadata id and custom properties (model_variant, private,
        delta, epsilon), used when the artifact's files lack them.
      model_run_uri: the ModelRun (ledger, one-run audit); references_uri: ReferenceModels;
      transform_graph: a Transform output for signature models fed raw examples;
      baseline: another blessing to AND in (``{"blessed", "uri", "current_model", "current_model_id"}``).
      make_pipeline: returns the ``beam.Pipeline`` (the executor's, with its beam_pipeline_args).
    Returns the blessing (as written to ``blessing.json``) with ``n_results_files``.
    """
    from privacy_audit.components.membership_inference import gate, results as results_lib
    from privacy_audit.components.membership_inference.beam import driver
    from privacy_audit.components.membership_inference.beam.reference import ReferenceAttackSpec
    from privacy_audit.components.membership_inference.settings import DEFAULT_SAMPLE_SIZE
    from privacy_audit.components.reference_models.signals import SIGNALS_PARQUET_FILE

    props = dict(model_properties or {})
    if baseline is not None:
        gate.check_baseline_model(baseline, model_uri, model_id)
    _, reference_attacks = split_attacks(p["attacks"])
    reference_options = parse_reference_options(p.get("reference_options"))
    if reference_attacks and references_uri is None:
        raise ValueError(f"attacks {reference_attacks} need the reference_models input")
    settings = parse_settings(p["attacks"], p["slicing"], p.get("seed", 0), p.get("min_slice_size", 20),
                              p.get("sample_size", DEFAULT_SAMPLE_SIZE))
    thresholds = gate.parse_thresholds(p.get("max_auc"), p.get("max_attacker_advantage"),
                                       p.get("max_epsilon_lower_bound"))
    label_key = p["label_key"]
    feature_keys = parse_json_list(p.get("feature_keys"), "feature_keys")
    members_split = p.get("members_split") or "train"
    nonmembers_split = p.get("nonmembers_split") or "eval"

    model_info = _read_json(io.join(model_uri, layout.MODEL_INFO_FILE)) or {}
    ledger = _read_json(io.join(model_run_uri, layout.LEDGER_FILE)) if model_run_uri else None
    variant = p.get("model_variant") or props.get("model_variant") or model_info.get("model_variant") or "model"
    serving = None
    if model_format(model_uri) == "serving":
        serving = resolve_serving(io.join(model_uri, layout.SERVING_DIR), serving_options(p, transform_graph),
                                  members_pattern)
    final_eps = _finite_or_none(epsilon_of_ledger(ledger) if ledger else props.get("epsilon"))
    evaluated = models_to_evaluate(model_uri, variant, model_info, ledger, final_eps, serving)
    input_features: List[str] = []
    if any(m.serving is None for m, _ in evaluated):  # signature models parse the examples themselves
        input_features = _input_features(model_info, members_pattern, members_split, label_key, feature_keys)
    common_md = {**_privacy_metadata(model_info, props, ledger), "members_split": members_split,
                 "nonmembers_split": nonmembers_split, "label_key": label_key}
    targets = _output_targets(evaluated, results_uri, common_md)
    final_model = evaluated[-1][0]
    final_path = targets[final_model.key].results_path
    if reference_attacks:  # the final results are written once, with the reference attacks
        targets[final_model.key] = dataclasses.replace(targets[final_model.key], results_path=None)
    per_example = io.join(results_uri, layout.PER_EXAMPLE_DIR) if bool(p.get("write_per_example", 1)) else None

    # With the references' Parquet signals, LiRA / RMIA run inside the pipeline (joined by example id); else
    # (artifacts written before it) they reuse the final model's outputs as the pipeline computed them and
    # score in this process from the whole signal matrix.
    signals_parquet = io.join(references_uri, SIGNALS_PARQUET_FILE) if reference_attacks else None
    in_beam = bool(signals_parquet) and io.exists(signals_parquet)
    kept = io.join(results_uri, ".final-outputs") if reference_attacks and not in_beam else None
    scores_dir = io.join(results_uri, ".reference-scores") if in_beam and per_example else None
    references = None
    if in_beam:
        references = ReferenceAttackSpec(final_model.key, signals_parquet, tuple(reference_attacks),
                                         reference_options, seed=settings.seed, per_example_dir=scores_dir)
    _LOG.info("reference attacks %s: %s", reference_attacks,
              "in the Beam pipeline" if in_beam else "in the driver" if reference_attacks else "none")
    print(f"[{variant}] auditing {len(evaluated)} model(s) (checkpoints and final) on the members and "
          f"non-members: one Beam pipeline, the examples read once", flush=True)
    started = time.time()
    try:
        all_results = driver.audit_examples(
            members_pattern, nonmembers_pattern, [m for m, _ in evaluated], targets, label_key=label_key,
            input_features=input_features, settings=settings, staging_dir=io.join(results_uri, ".staging"),
            per_example_dir=per_example, make_pipeline=make_pipeline, split_names=(members_split, nonmembers_split),
            keep_outputs=(final_model.key, kept) if kept else None, references=references)
    except BaseException:
        for scratch in (kept, scores_dir):
            if scratch:
                io.rmtree(scratch)
        raise
    n_files = _write_index(results_uri, variant, evaluated, bool(per_example))
    print(audit_progress_line(variant, all_results, time.time() - started), flush=True)

    final = all_results[final_model.key]
    if reference_attacks:
        reference_per_example = (io.join(results_uri, layout.PER_EXAMPLE_REFERENCE_DIR,
                                         f"{final_model.key}.parquet") if per_example else None)
        if in_beam:
            final = beam_reference_results(final, signals_path=signals_parquet, ledger=ledger, scores_dir=scores_dir,
                                           per_example_path=reference_per_example)
        else:
            final = _driver_reference_results(final, kept, references_uri, reference_attacks, settings,
                                              reference_options, ledger, reference_per_example)
        final["metadata"]["reference_models"]["artifact"] = references_uri
        io.write_text(final_path, results_lib.dumps_results(final) + "\n")
    audit = _read_json(io.join(model_run_uri, layout.ONE_RUN_AUDIT_FILE)) if model_run_uri else None
    blessing = dict(gate.bless(final, thresholds, audit, baseline), model_variant=variant,
                    evaluated=f"{layout.RESULTS_DIR}/{final_model.key}.json", epoch=final["metadata"].get("epoch"),
                    epsilon=final["metadata"].get("epsilon"), model=model_uri)
    gate.write_blessing(blessing_uri, blessing)
    return dict(blessing, n_results_files=n_files)


def _privacy_metadata(model_info: Mapping[str, Any], props: Mapping[str, Any],
                      ledger: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``private`` (model_info.json, else the artifact's property) and ``delta`` (the ledger's, else the
    property's) for every results file of a model."""
    private = model_info.get("private")
    if private is None and props.get("private") is not None:
        private = bool(props["private"])
    return {"private": private, "delta": _finite_or_none((ledger or {}).get("delta", props.get("delta")))}


def _driver_reference_results(final: Dict[str, Any], kept: str, references_uri: str, attacks: Sequence[str],
                              settings, reference_options, ledger, per_example_path: Optional[str]) -> Dict[str, Any]:
    """LiRA / RMIA scored in this process, from the final model's outputs the pipeline kept in ``kept`` (removed
    afterwards) and the references' ``.npz`` signals: artifacts written before the Parquet signals."""
    from privacy_audit.components.membership_inference.beam.transforms import read_outputs

    try:
        records = read_outputs(kept)
    finally:
        io.rmtree(kept)
    return reference_attack_results(final, records=records,
                                    references_path=io.join(references_uri, layout.SIGNALS_FILE), attacks=attacks, settings=settings, reference_options=reference_options,
                                    ledger=ledger, per_example_path=per_example_path)


def _input_features(model_info: Mapping[str, Any], members_pattern: str, members_split: str, label_key: str,
                    feature_keys: Optional[Sequence[str]]) -> List[str]:
    """The model's ordered input features: as trained (model_info.json), else the examples' numeric features."""
    from privacy_audit.components.common import examples as examples_lib
    from privacy_audit.components.membership_inference.beam import sources

    if model_info.get("input_features"):
        return list(model_info["input_features"])
    _, names = sources.inspect_split(members_pattern, f"the members split {members_split!r}")
    return examples_lib.feature_vector_keys(names, label_key, feature_keys)


def _output_targets(evaluated: Sequence[Tuple[Any, Dict[str, Any]]], results_uri: str,
                    common: Mapping[str, Any]) -> Dict[str, Any]:
    """``{model key: OutputTarget}``: each evaluated model's results file and metadata."""
    from privacy_audit.components.membership_inference.settings import OutputTarget

    targets = {}
    for m, md in evaluated:
        md = dict(md, **common, model_format="keras" if m.serving is None else "saved_model_signature",
                  checkpoints_audited=len(evaluated) - 1)
        if m.serving is not None:
            md["serving"] = m.serving.to_json()
        targets[m.key] = OutputTarget(io.join(results_uri, layout.RESULTS_DIR, f"{m.key}.json"), md)
    return targets


def _write_index(results_uri: str, variant: str, evaluated: Sequence[Tuple[Any, Dict[str, Any]]],
                 per_example: bool) -> int:
    """Writes the results index (one entry per evaluated model, by epoch); returns the number of files."""
    entries = [{"path": f"{layout.RESULTS_DIR}/{m.key}.json", "model_key": m.key, "epoch": md["epoch"],
                "is_final": md["is_final"], "epsilon": md["epsilon"],
                "per_example": f"{layout.PER_EXAMPLE_DIR}/{m.key}" if per_example else None}
               for m, md in evaluated]
    _write_json(io.join(results_uri, layout.RESULTS_INDEX),
                {"schema_version": 1, "model_variant": variant, "results": [e["path"] for e in entries],
                 "entries": entries})
    return len(entries)
