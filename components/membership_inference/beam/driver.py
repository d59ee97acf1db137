"""Drivers of the Beam audits: :func:`audit_saved_outputs` (the Beam ``privacy-audit attack``) and
:func:`audit_examples` (the evaluator: TFX Examples and models); pipeline options and running."""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam

from privacy_audit.components.common.inference import DEFAULT_INFERENCE_BATCH
from privacy_audit.components.common.io import read_text
from privacy_audit.components.membership_inference import data as data_lib
from privacy_audit.components.membership_inference import slicing as slicing_lib
from privacy_audit.components.membership_inference.api import DEFAULT_ATTACKS, DuplicateExamplesWarning
from privacy_audit.components.membership_inference.beam.sources import (
    ExamplesToOutputs, ModelToEvaluate, ReadSavedOutputs, inspect_split
)
from privacy_audit.components.membership_inference.beam.reference import ReferenceAttackSpec
from privacy_audit.components.membership_inference.beam.transforms import AnalyzeOutputs
from privacy_audit.components.membership_inference.records import DEFAULT_BATCH_ROWS
from privacy_audit.components.membership_inference.settings import AuditSettings, OutputTarget
from privacy_audit.components.membership_inference.slicing import SlicingSpec

_LOG = logging.getLogger(__name__)
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def pipeline_options(beam_pipeline_args: Optional[Sequence[str]] = None):
    """PipelineOptions from command-line style args; ``--runner=DaskRunner`` is accepted as a short name."""
    from apache_beam.options.pipeline_options import PipelineOptions

    args = []
    for a in beam_pipeline_args or []:
        if a in ("--runner=DaskRunner", "--runner=dask"):
            a = f"--runner={DASK_RUNNER}"
        args.append(a)
    return PipelineOptions(args)


def run_pipeline(pipeline) -> None:
    """Runs and waits; closes the Dask client the Dask runner opens (it leaves it open)."""
    result = pipeline.run()
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)
        if client is not None:
            client.close()


def _collect_outcomes(staging_dir: str, model_keys: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    outcomes: Dict[str, Dict[str, Any]] = {}
    errors: List[str] = []
    for key in model_keys:
        path = os.path.join(staging_dir, f"{key}.json")
        try:
            outcome = json.loads(read_text(path))
        except Exception:  # FileNotFoundError or the filesystem's own error
            errors.append(f"{key}: no examples reached the attacks (is the input empty?)")
            continue
        outcomes[key] = outcome
        errors.extend((f"{key}: {e}" if len(model_keys) > 1 else e) for e in outcome["errors"])
    if errors:
        raise data_lib.InputValidationError("; ".join(errors))
    for key, outcome in outcomes.items():
        n_dup = outcome.get("n_duplicate_examples")
        if n_dup:
            msg = (f"{n_dup} examples are among both members and non-members (same serialized example / id); "
                   "their membership is ambiguous and biases the metrics: deduplicate the splits")
            _LOG.warning(msg)
            warnings.warn(msg, DuplicateExamplesWarning, stacklevel=3)
            break
    return outcomes


def _cleanup(staging_dir: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    try:
        FileSystems.delete([staging_dir])
    except Exception:  # best effort: a leftover staging directory is harmless
        pass


def audit_saved_outputs(input_path: str, output_path: str, attacks: Sequence[str] = DEFAULT_ATTACKS,
                        slicing: Optional[SlicingSpec] = None, seed: int = 0,
                        min_slice_size: int = slicing_lib.DEFAULT_MIN_SLICE_SIZE, *,
                        metadata: Optional[Mapping[str, Any]] = None, per_example_dir: Optional[str] = None,
                        beam_pipeline_args: Optional[Sequence[str]] = None, runner=None,
                        batch_rows: int = DEFAULT_BATCH_ROWS, reference_signals: Optional[str] = None,
                        reference_attacks: Sequence[str] = (), reference_options: Optional[Mapping[str, Any]] = None,
                        **settings_kwargs: Any) -> Dict[str, Any]:
    """The Beam version of ``privacy-audit attack``: attacks on saved model outputs, results JSON written
    to ``output_path`` (and returned).

    Args:
      input_path: ``.npz``, Parquet file (long or wide layout), directory of long-layout Parquet files,
        or a glob.
      output_path: results JSON path.
      attacks, slicing, seed, min_slice_size: as :func:`api.run_attacks`.
      metadata: merged into the results' metadata.
      per_example_dir: where to write per-example Parquet (None: not written).
      beam_pipeline_args: e.g. ``["--direct_running_mode=multi_processing", "--direct_num_workers=2"]`` or
        ``["--runner=DaskRunner", "--dask_client_address=tcp://..."]``.
      runner: a runner instance (overrides ``--runner``).
      batch_rows: rows per record batch.
      reference_signals, reference_attacks, reference_options: LiRA / RMIA (``reference_attacks``, e.g. ``["lira",
        "rmia"]``) with the reference models' Parquet signals (``reference_models.signals.write_signals_parquet``),
        joined with the records by example id inside the pipeline (:mod:`.reference`).
      settings_kwargs: other :class:`AuditSettings` fields (sample_size, max_distinct_scores, ...).
    Raises ``data.InputValidationError`` (a ValueError) on invalid inputs, with counts.
    """
    settings = AuditSettings(attacks=tuple(attacks), slicing=slicing or SlicingSpec(), seed=seed,
                             min_slice_size=min_slice_size, **settings_kwargs)
    t0 = time.perf_counter()
    source = ReadSavedOutputs(input_path, "model", settings.slicing.feature_keys, batch_rows)
    _check_columns(settings, source.available_columns, input_path)
    md = {"model_variant": os.path.splitext(os.path.basename(input_path.rstrip("/")))[0],
          "input": input_path if "://" in input_path else os.path.abspath(input_path)}
    md.update(metadata or {})
    staging = os.path.join(os.path.dirname(os.path.abspath(output_path)) if "://" not in output_path
                           else output_path.rsplit("/", 1)[0], f".beam-staging-{uuid.uuid4().hex[:12]}")
    targets = {"model": OutputTarget(output_path, md)}
    references = None
    if reference_attacks:
        if not reference_signals:
            raise ValueError(f"attacks {list(reference_attacks)} need reference_signals (a Parquet signals file)")
        references = ReferenceAttackSpec("model", reference_signals, tuple(reference_attacks),
                                         dict(reference_options or {}), seed=settings.seed,
                                         per_example_dir=per_example_dir and os.path.join(per_example_dir, "reference"))
    options = pipeline_options(beam_pipeline_args)
    p = beam.Pipeline(runner=runner, options=options)
    (p | "Read" >> source
     | "Analyze" >> AnalyzeOutputs(settings, targets, staging, per_example_dir, source.content_ids,
                                   references=references))
    try:
        run_pipeline(p)
        _collect_outcomes(staging, ["model"])
    finally:
        _cleanup(staging)
    obj = json.loads(read_text(output_path))
    _LOG.info("beam audit of %s: %.1fs", input_path, time.perf_counter() - t0)
    return obj


def _check_columns(settings: AuditSettings, columns: Sequence[str], source: str) -> None:
    cols = set(columns)
    has_outputs = bool(cols & {"logits", "probs"}) and "label" in cols
    if "threshold" in settings.attacks and "loss" not in cols and not has_outputs:
        raise data_lib.InputValidationError(f"{source}: threshold needs a loss, or logits/probs with labels")
    if "threshold_entropy" in settings.attacks and "entropy" not in cols and not has_outputs:
        raise data_lib.InputValidationError(
            f"{source}: threshold_entropy needs entropy_* or logits/probs with labels")
    if settings.slicing.by_class and "label" not in cols:
        raise ValueError("slicing by class needs labels (labels_train / labels_test)")
    if settings.slicing.by_classification_correctness and not has_outputs:
        raise ValueError("slicing by classification correctness needs logits or probs and labels")


def audit_examples(members_pattern: str, nonmembers_pattern: str, models: Sequence[ModelToEvaluate],
                   targets: Mapping[str, OutputTarget], *, label_key: str, input_features: Sequence[str],
                   settings: AuditSettings, staging_dir: str, per_example_dir: Optional[str] = None,
                   beam_pipeline_args: Optional[Sequence[str]] = None, runner=None,
                   make_pipeline: Optional[Callable[[], Any]] = None,
                   batch_size: int = DEFAULT_INFERENCE_BATCH,
                   split_names: Tuple[str, str] = ("train", "eval"),
                   keep_outputs: Optional[Tuple[str, str]] = None,
                   references: Optional[ReferenceAttackSpec] = None) -> Dict[str, Dict[str, Any]]:
    """Evaluates Keras models on TFX Examples in one Beam pipeline (the examples are read once).

    Args:
      members_pattern, nonmembers_pattern: file patterns of the members' / non-members' splits.
      models: the models; ``targets`` gives each model key's results path and metadata.
      label_key: the label feature; input_features: the ordered model input feature names.
      settings: attacks, slicing, seed, ...; slicing ``feature_keys`` name features of the examples.
      staging_dir: scratch directory for outcomes (removed afterwards).
      per_example_dir: per-example Parquet root (None: not written).
      beam_pipeline_args, runner: how to run (see :func:`audit_saved_outputs`), unless
      make_pipeline: returns the ``beam.Pipeline`` to use (e.g. the TFX executor's ``_make_beam_pipeline``).
      split_names: split names used in error messages.
      keep_outputs: ``(model_key, directory)``: keep that model's per-example records there
        (``transforms.read_outputs`` reads them back).
      references: LiRA / RMIA of one model with the reference models' Parquet signals, inside the pipeline
        (:class:`.reference.ReferenceAttacks`); their entries join that model's results.
    Returns ``{model_key: results object}``. Raises ValueError for an empty split, a feature key absent from
    the examples, and invalid model outputs (counted).
    """
    members_files, m_names = inspect_split(members_pattern, f"the members split {split_names[0]!r}")
    nonmembers_files, n_names = inspect_split(nonmembers_pattern, f"the non-members split {split_names[1]!r}")
    for what, names in ((split_names[0], m_names), (split_names[1], n_names)):
        wanted = [("label key", label_key)] + [("model input feature", k) for k in input_features] + \
                 [("slicing feature key", k) for k in settings.slicing.feature_keys]
        for role, key in wanted:
            if key not in names:
                raise ValueError(f"{role} {key!r} is not a feature of the examples in split {what!r} "
                                 f"(features: {names[:20]}{'...' if len(names) > 20 else ''})")
    p = make_pipeline() if make_pipeline is not None else \
        beam.Pipeline(runner=runner, options=pipeline_options(beam_pipeline_args))
    (p | "Examples" >> ExamplesToOutputs(members_files, nonmembers_files, models, label_key, input_features,
                                         settings.slicing.feature_keys, batch_size)
     | "Analyze" >> AnalyzeOutputs(settings, targets, staging_dir, per_example_dir, count_duplicates=True,
                                   keep_outputs=keep_outputs, references=references))
    try:
        run_pipeline(p)
        outcomes = _collect_outcomes(staging_dir, [m.key for m in models])
    finally:
        _cleanup(staging_dir)
    return {key: o["results"] if "results" in o else json.loads(read_text(o["results_path"]))
            for key, o in outcomes.items()}
