"""Membership-inference audits as Apache Beam pipelines: for data sets too large for one process, and for
the TFX evaluator (any Beam runner through ``beam_pipeline_args``).

Elements are column batches (``dict`` of numpy arrays, one row per example), never single examples: every
step is vectorised with numpy per batch. A batch of per-example records has the columns

    id          uint64  example id: the first 64 bits of examples.example_digest(serialized tf.Example), the given
                        ``example_id`` (integers as is, strings hashed), or the row number in the input
    is_member   bool
    label       int64   (optional when a loss is given)
    logits | probs      [n, C] (or [n] for single-logit binary models)   (optional when a loss is given)
    loss, entropy       float64, given by the input (optional)
    f:<key>             value of the slicing feature <key>

and, after :class:`PrepareFn`: ``xent`` (the cross-entropy loss used by ``threshold``), ``mentr`` (modified
entropy, when ``threshold_entropy`` is asked for), ``prediction`` and ``correct``.

Pipeline (see :class:`AnalyzeOutputs`), keyed by model (one key per evaluated checkpoint):

    batches ─► Prepare (validate, losses) ─► FanOut to slices ─┬► (model, slice, attack): ScoreCountsCombineFn
                                                             │     ─► metrics_from_counts      (threshold attacks)
                                                             └► (model, slice): PrioritySampleCombineFn
                                                                   ─► (model, slice, attack) ─► attack on sample
                                                                                                 (trained attacks)
    ─► GroupByKey(model) ─► results JSON per model, written by the pipeline;
       per-example Parquet (per_example/<model>/part-*.parquet), optional.

The in-memory path (:func:`api.run_attacks`) gives the same results: threshold attacks from the same
per-distinct-score counts (exact while a slice has at most ``max_distinct_scores`` distinct scores, see
:class:`combiners.ScoreHistogram` beyond), trained attacks from the same code on a seeded sample of at
most ``sample_size`` members and non-members per slice (all of them when the slice is smaller).

Sources: :class:`ReadSavedOutputs` (the ``privacy-audit attack`` inputs: ``.npz``, wide or long Parquet;
long Parquet is read in parallel, by row group, in record batches) and :class:`ExamplesToOutputs` (TFX
Examples and Keras models: batched inference, each model loaded once per worker process).
Drivers: :func:`audit_saved_outputs` and :func:`audit_examples`.

Runner notes. Nothing is emitted from ``finish_bundle`` and no I/O transform is needed beyond
Create/ParDo/GroupByKey/Flatten, so the pipeline also runs on Beam's Dask runner (which drops
``finish_bundle`` outputs and only translates those primitives); on that runner the Examples source
batches inside its file reader instead of with ``beam.BatchElements``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
import uuid
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np

from privacy_audit.components.membership_inference import combiners
from privacy_audit.components.membership_inference.api import DEFAULT_ATTACKS, DuplicateExamplesWarning
from privacy_audit.components.membership_inference import data as data_lib
from privacy_audit.components.membership_inference import metrics as metrics_lib
from privacy_audit.components.membership_inference import results as results_lib
from privacy_audit.components.membership_inference import slicing as slicing_lib
from privacy_audit.components.membership_inference.slicing import SlicingSpec

_LOG = logging.getLogger(__name__)

THRESHOLD_ATTACKS = {"threshold": "xent", "threshold_entropy": "mentr"}
#: Seeded sample per side (members, non-members) and slice for the trained attacks.
DEFAULT_SAMPLE_SIZE = 20000
DEFAULT_BATCH_ROWS = 65536
DEFAULT_INFERENCE_BATCH = 256
FEATURE_PREFIX = "f:"
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
#: Shards of the example-id overlap count (members vs non-members).
_ID_SHARDS = 8
_SIDE_NAMES = {True: "members", False: "nonmembers"}


# ---------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AuditSettings:
    """What to compute; the arguments of :func:`api.run_attacks` plus the Beam-only limits.

    Attributes:
      attacks: attack names (:data:`attacks.ATTACKS`).
      slicing: which slices (``custom`` slices are positional and not supported here).
      seed: seeds the samples and the trained attacks (per slice and attack as in the in-memory path).
      min_slice_size: slices with fewer members or non-members are skipped.
      max_feature_values: slicing by a feature with more distinct values is skipped.
      max_distinct_scores: threshold attacks are exact up to this many distinct scores per slice.
      sample_size: members and non-members sampled per slice for trained attacks.
      attack_config: trained-attack settings (``attacks.AttackConfig``; None: its defaults).
      delta, confidence, fpr_targets, roc_points: as :func:`api.run_attacks`.
    """

    attacks: Tuple[str, ...] = DEFAULT_ATTACKS
    slicing: SlicingSpec = SlicingSpec()
    seed: int = 0
    min_slice_size: int = slicing_lib.DEFAULT_MIN_SLICE_SIZE
    max_feature_values: int = slicing_lib.DEFAULT_MAX_FEATURE_VALUES
    max_distinct_scores: int = combiners.DEFAULT_MAX_DISTINCT_SCORES
    sample_size: int = DEFAULT_SAMPLE_SIZE
    attack_config: Any = None
    delta: float = metrics_lib.DEFAULT_DELTA
    confidence: float = metrics_lib.DEFAULT_CONFIDENCE
    fpr_targets: Tuple[float, ...] = metrics_lib.DEFAULT_FPR_TARGETS
    roc_points: int = metrics_lib.DEFAULT_ROC_POINTS

    def __post_init__(self) -> None:
        from privacy_audit.components.membership_inference import attacks as attacks_mod

        object.__setattr__(self, "attacks", tuple(attacks_mod.check_attack_names(list(self.attacks))))
        with_references = attacks_mod.reference_attack_names(self.attacks)
        if with_references:
            # Their per-example fits need the whole reference matrix: the evaluator scores them in memory on
            # the final model (executor.reference_attack_results), beside the references it was trained with.
            raise ValueError(f"{', '.join(with_references)} are not run by the Beam path: they need reference "
                             "models (the evaluator's reference_models input, or privacy-audit attack with "
                             "ref_logits/ref_in_mask in the .npz)")
        if self.slicing.custom:
            raise ValueError("custom slices (row indices) are not supported by the Beam path; slice by a "
                             "feature (feature_keys) instead")
        if self.min_slice_size < 1:
            raise ValueError(f"min_slice_size must be >= 1, got {self.min_slice_size}")
        if self.sample_size < 2:
            raise ValueError(f"sample_size must be >= 2, got {self.sample_size}")
        if self.max_distinct_scores < combiners.MIN_MAX_DISTINCT_SCORES:
            raise ValueError(f"max_distinct_scores must be >= {combiners.MIN_MAX_DISTINCT_SCORES}")

    @property
    def threshold_attacks(self) -> List[str]:
        return [a for a in self.attacks if a in THRESHOLD_ATTACKS]

    @property
    def trained_attacks(self) -> List[str]:
        return [a for a in self.attacks if a not in THRESHOLD_ATTACKS]

    @property
    def needs_plan(self) -> bool:
        """Slices whose values are only known after a first pass (loss deciles, feature values)."""
        return bool(self.slicing.by_percentiles or self.slicing.feature_keys)

    def metric_kwargs(self) -> Dict[str, Any]:
        return {"delta": self.delta, "confidence": self.confidence, "fpr_targets": tuple(self.fpr_targets),
                "roc_points": self.roc_points}


@dataclasses.dataclass(frozen=True)
class OutputTarget:
    """Where the results of one model (key) go, and the metadata to put in them."""

    results_path: str
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def slice_key(spec: Mapping[str, Any]) -> str:
    """The canonical JSON text of a slice description (a hashable, deterministic Beam key)."""
    return json.dumps(dict(spec), sort_keys=True)


# ---------------------------------------------------------------------------------------------------------
# Per-batch numpy work
# ---------------------------------------------------------------------------------------------------------

def _n_rows(batch: Mapping[str, np.ndarray]) -> int:
    return int(np.asarray(batch["id"]).shape[0])


def take_rows(batch: Mapping[str, np.ndarray], idx) -> Dict[str, np.ndarray]:
    """The rows ``idx`` (mask or indices) of every column."""
    return {k: v[idx] for k, v in batch.items()}


def ids_from_values(values: np.ndarray) -> np.ndarray:
    """uint64 ids from given example ids: integers as they are (two's complement), anything else by the
    first 8 bytes of the sha1 of its text."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64).view(np.uint64) if values.dtype.kind == "i" else values.astype(np.uint64)
    out = np.empty(values.shape[0], dtype=np.uint64)
    for i, v in enumerate(values.tolist()):
        b = v if isinstance(v, bytes) else str(v).encode("utf-8")
        out[i] = int.from_bytes(hashlib.sha1(b).digest()[:8], "big")
    return out


def _outputs(batch: Mapping[str, np.ndarray]) -> Tuple[Optional[str], Optional[np.ndarray]]:
    for kind in ("logits", "probs"):
        if kind in batch:
            return kind, batch[kind]
    return None, None


def _n_classes(outputs: np.ndarray) -> int:
    return 2 if outputs.ndim == 1 or outputs.shape[1] == 1 else int(outputs.shape[1])


def _predictions(kind: str, outputs: np.ndarray) -> np.ndarray:
    """Argmax class, as ``AttackInputs.predictions`` (single output: class 1 iff logit > 0 / p > 0.5)."""
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        return np.argmax(outputs, axis=1)
    z = outputs.reshape(-1).astype(np.float64)
    return (z > 0).astype(np.int64) if kind == "logits" else (z > 1.0 - z).astype(np.int64)


def prepare_batch(batch: Mapping[str, np.ndarray], need_entropy: bool
                  ) -> Tuple[Dict[str, np.ndarray], Dict[str, int], Dict[str, float]]:
    """Validates one batch and adds the derived columns.

    Returns ``(clean_batch, problems, stats)``: the batch without its invalid rows, plus ``xent``
    (cross-entropy: the given ``loss``, else from logits with a stable log-softmax or from probs),
    ``mentr`` (when ``need_entropy``: the given ``entropy``, else the modified entropy), ``prediction``
    and ``correct`` (with outputs and labels); ``problems`` counts invalid values per kind and side
    (``"<column>|<side>|<what>"``); ``stats`` sums per side for the metadata.
    """
    batch = {k: np.asarray(v) for k, v in batch.items()}
    n = _n_rows(batch)
    member = batch["is_member"].astype(bool)
    batch["is_member"] = member
    bad = np.zeros(n, dtype=bool)
    problems: Dict[str, int] = {}

    def count(column: str, what: str, per_row: np.ndarray, rows: np.ndarray) -> None:
        """Adds the number of bad values (``per_row`` per example) and bad rows, per side."""
        for flag, side in _SIDE_NAMES.items():
            sel = member == flag
            k = int(per_row[sel].sum())
            if k:
                problems[f"{column}|{side}|{what}"] = problems.get(f"{column}|{side}|{what}", 0) + k
            r = int(np.count_nonzero(rows[sel]))
            if r:
                problems[f"{column}|{side}|rows"] = problems.get(f"{column}|{side}|rows", 0) + r

    def per_row(mask: np.ndarray) -> np.ndarray:
        return mask.astype(np.int64) if mask.ndim == 1 else mask.reshape(n, -1).sum(axis=1)

    kind, outputs = _outputs(batch)
    for column in ("logits", "probs", "loss", "entropy"):
        if column not in batch:
            continue
        arr = batch[column]
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise data_lib.InputValidationError(f"{column} must be numeric, got dtype {arr.dtype}")
        finite = np.isfinite(arr)
        if not finite.all():
            nan = per_row(np.isnan(arr))
            inf = per_row(~finite) - nan
            rows = (nan + inf) > 0
            count(column, "nan", nan, rows)
            count(column, "inf", inf, np.zeros(n, dtype=bool))
            bad |= rows
        if column == "probs":
            with np.errstate(invalid="ignore"):
                outside = per_row((arr < 0) | (arr > 1))
            if outside.any():
                count(column, "outside [0, 1]", outside, outside > 0)
                bad |= outside > 0
    if "label" in batch:
        labels = batch["label"]
        if not np.issubdtype(labels.dtype, np.integer):
            labels = data_lib._integer_labels(labels, "labels")
        labels = labels.astype(np.int64, copy=False)
        batch["label"] = labels
        hi = _n_classes(outputs) if outputs is not None else None
        out_of_range = (labels < 0) if hi is None else ((labels < 0) | (labels >= hi))
        if out_of_range.any():
            count("label", f"outside [0, {hi})" if hi else "negative", out_of_range.astype(np.int64),
                  out_of_range)
            bad |= out_of_range
    if bad.any():
        batch = take_rows(batch, ~bad)
        member = batch["is_member"]
        kind, outputs = _outputs(batch)

    has_labels = "label" in batch
    if "loss" in batch:
        batch["xent"] = batch["loss"].astype(np.float64)
    elif outputs is not None and has_labels:
        fn = data_lib.cross_entropy_from_logits if kind == "logits" else data_lib.cross_entropy_from_probs
        batch["xent"] = fn(outputs, batch["label"]) if len(member) else np.zeros(0)
    if need_entropy:
        if "entropy" in batch:
            batch["mentr"] = batch["entropy"].astype(np.float64)
        elif outputs is not None and has_labels:
            fn = data_lib.modified_entropy_from_logits if kind == "logits" else data_lib.modified_entropy
            batch["mentr"] = fn(outputs, batch["label"]) if len(member) else np.zeros(0)
    if outputs is not None and has_labels:
        batch["prediction"] = _predictions(kind, outputs)
        batch["correct"] = batch["prediction"] == batch["label"]

    stats: Dict[str, float] = {}
    for flag, side in _SIDE_NAMES.items():
        sel = member == flag
        stats[f"n_{side}"] = int(np.count_nonzero(sel))
        if "correct" in batch:
            stats[f"correct_{side}"] = int(np.count_nonzero(batch["correct"][sel]))
        if "xent" in batch:
            stats[f"loss_sum_{side}"] = float(np.sum(batch["xent"][sel]))
    if outputs is not None:
        stats["max:n_classes"] = _n_classes(outputs)
    if has_labels and len(member):
        stats["max:label"] = int(batch["label"].max())
    return batch, problems, stats


def problem_messages(problems: Mapping[str, int]) -> List[str]:
    """Readable messages from summed problem counts (see :func:`prepare_batch`)."""
    groups: Dict[Tuple[str, str], Dict[str, int]] = {}
    for key, k in problems.items():
        column, side, what = key.split("|")
        groups.setdefault((column, side), {})[what] = k
    out = []
    for (column, side), c in sorted(groups.items()):
        name = f"{column} of {side} ({'labels' if column == 'label' else column}_"\
               f"{'train' if side == 'members' else 'test'})"
        rows = c.pop("rows", 0)
        nan, inf = c.pop("nan", 0), c.pop("inf", 0)
        if nan or inf:
            out.append(f"{name} contains {nan + inf} non-finite values ({nan} NaN, {inf} inf) in {rows} examples")
        for what, k in sorted(c.items()):
            out.append(f"{name}: {k} values {what}")
    return out


def decile_edges(hist: combiners.ScoreHistogram) -> np.ndarray:
    """The 11 loss decile edges ``np.percentile(pooled_losses, [0, 10, ..., 100])`` from a histogram of the
    pooled losses (``scores_desc`` = distinct losses). Exact (bit for bit) when the histogram is exact and
    holds at most 5e7 examples; otherwise from the order statistics (bin representatives when binned)."""
    values = hist.scores_desc[::-1]
    counts = (hist.member_counts + hist.nonmember_counts)[::-1]
    total = int(counts.sum())
    q = np.arange(0, 101, 10)
    if total <= 50_000_000:
        return np.percentile(np.repeat(values, counts), q)
    cum = np.cumsum(counts)
    h = (total - 1) * (q / 100.0)
    lo = np.floor(h).astype(np.int64)
    hi = np.minimum(lo + 1, total - 1)
    a = values[np.searchsorted(cum, lo, side="right")]
    b = values[np.searchsorted(cum, hi, side="right")]
    return a + (h - lo) * (b - a)


def batch_slices(batch: Mapping[str, np.ndarray], spec: SlicingSpec, plan: Optional[Mapping[str, Any]]
                 ) -> Iterator[Tuple[Dict[str, Any], Optional[np.ndarray]]]:
    """The slices present in a batch: ``(slice description, row mask or None for all rows)``, as
    :func:`slicing.make_slices` defines them."""
    n = _n_rows(batch)
    if n == 0:
        return
    if spec.entire_dataset:
        yield {"feature": "entire_dataset"}, None
    if spec.by_class is not False and spec.by_class is not None:
        if "label" not in batch:
            raise ValueError("slicing by class needs labels (labels_train / labels_test)")
        labels = batch["label"]
        present = np.unique(labels)
        if not isinstance(spec.by_class, bool):
            present = [c for c in present if int(c) in {int(x) for x in spec.by_class}]
        for c in present:
            yield {"feature": "class", "value": int(c)}, labels == c
    if spec.by_percentiles and "xent" in batch:
        edges = np.asarray(plan["loss_edges"])
        bins = np.searchsorted(edges[1:-1], batch["xent"], side="right")
        for k in np.unique(bins):
            yield {"feature": "loss_percentile", "value": f"{10 * k}-{10 * k + 10}"}, bins == k
    if spec.by_classification_correctness:
        if "correct" not in batch:
            raise ValueError("slicing by classification correctness needs logits or probs and labels")
        for value in (True, False):
            mask = batch["correct"] == value
            if mask.any():
                yield {"feature": "correctly_classified", "value": value}, mask
    for key in spec.feature_keys:
        if plan is None or plan["feature_values"].get(key) is None:
            continue  # too many distinct values: reported as skipped
        values = batch[FEATURE_PREFIX + key]
        for v in np.unique(values):
            yield {"feature": key, "value": slicing_lib._to_json_value(v)}, values == v


# ---------------------------------------------------------------------------------------------------------
# DoFns and CombineFns of the analysis
# ---------------------------------------------------------------------------------------------------------

class SumStatsCombineFn(beam.CombineFn):
    """Sums dicts of numbers (keys starting with ``max:`` take the maximum)."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, element):
        for k, v in element.items():
            if k.startswith("max:"):
                acc[k] = max(acc.get(k, v), v)
            else:
                acc[k] = acc.get(k, 0) + v
        return acc

    def merge_accumulators(self, accumulators):
        out: Dict[str, float] = {}
        for a in accumulators:
            self.add_input(out, a)
        return out

    def extract_output(self, acc):
        return acc


def select(tag: str):
    """A FlatMap keeping the elements of one kind of a single-output, multi-kind PCollection ``(tag, value)``.

    Used instead of tagged outputs (``with_outputs``) because some runners (Beam's Dask runner) pass every
    tagged output to every consumer."""
    return beam.FlatMap(lambda e: [e[1]] if e[0] == tag else [])


class PrepareFn(beam.DoFn):
    """``(model, batch)`` → ``("batch", (model, clean batch))`` and ``("stats", (model, stats))`` (problem
    counts and sums for the metadata)."""

    def __init__(self, need_entropy: bool):
        self.need_entropy = need_entropy

    def process(self, element):
        model_key, batch = element
        clean, problems, stats = prepare_batch(batch, self.need_entropy)
        stats = dict(stats)
        for k, v in problems.items():
            stats["problem:" + k] = v
        yield "stats", (model_key, stats)
        if _n_rows(clean):
            yield "batch", (model_key, clean)


class PlanInputsFn(beam.DoFn):
    """Per batch: distinct values of the slicing features and the losses (for the decile edges)."""

    def __init__(self, settings: AuditSettings):
        self.settings = settings

    def process(self, element):
        model_key, batch = element
        out: Dict[str, Any] = {"values": {}}
        for key in self.settings.slicing.feature_keys:
            out["values"][key] = np.unique(batch[FEATURE_PREFIX + key])
        if self.settings.slicing.by_percentiles and "xent" in batch:
            out["loss"] = (batch["xent"], batch["is_member"])
        yield model_key, out


class PlanCombineFn(beam.CombineFn):
    """Distinct slicing-feature values (up to ``max_feature_values``, then "too many") and a histogram of
    the pooled losses; output ``{"feature_values": {key: sorted values | None}, "loss_edges": [11] | None,
    "loss_edges_exact": bool}``."""

    def __init__(self, settings: AuditSettings):
        self.max_values = settings.max_feature_values
        self.losses = combiners.ScoreCountsCombineFn(settings.max_distinct_scores)

    def create_accumulator(self):
        return {"values": {}, "loss": self.losses.create_accumulator()}

    def _add_values(self, acc, key, values) -> None:
        cur = acc["values"].get(key, np.zeros(0, dtype=values.dtype))
        if cur is None:
            return
        merged = np.unique(np.concatenate([cur, values]))
        acc["values"][key] = None if merged.size > self.max_values else merged

    def add_input(self, acc, element):
        for key, values in element["values"].items():
            self._add_values(acc, key, values)
        if "loss" in element:
            self.losses.add_input(acc["loss"], element["loss"])
        return acc

    def merge_accumulators(self, accumulators):
        accs = list(accumulators)
        out = self.create_accumulator()
        for a in accs:
            for key, values in a["values"].items():
                if values is None:
                    out["values"][key] = None
                else:
                    self._add_values(out, key, values)
        out["loss"] = self.losses.merge_accumulators([a["loss"] for a in accs])
        return out

    def compact(self, acc):
        self.losses.compact(acc["loss"])
        return acc

    def extract_output(self, acc):
        hist = self.losses.extract_output(acc["loss"])
        edges = decile_edges(hist) if hist.scores_desc.size else None
        return {"feature_values": {k: (None if v is None else v.tolist()) for k, v in acc["values"].items()},
                "loss_edges": None if edges is None else edges.tolist(), "loss_edges_exact": hist.exact}


class FanOutFn(beam.DoFn):
    """``(model, batch)`` → per slice: ``("scores", ((model, slice, attack), (scores, is_member)))`` for each
    threshold attack and ``("sample", ((model, slice), sample columns))`` for the trained attacks."""

    SAMPLE_COLUMNS = ("id", "is_member", "label", "logits", "probs", "loss", "entropy")

    def __init__(self, settings: AuditSettings):
        self.settings = settings

    def process(self, element, plans=None):
        model_key, batch = element
        plan = None if plans is None else plans.get(model_key)
        if self.settings.needs_plan and plan is None:
            return
        thresholds = [(a, THRESHOLD_ATTACKS[a]) for a in self.settings.threshold_attacks]
        sample_cols = [c for c in self.SAMPLE_COLUMNS if c in batch] if self.settings.trained_attacks else []
        for spec, mask in batch_slices(batch, self.settings.slicing, plan):
            key = slice_key(spec)
            member = batch["is_member"] if mask is None else batch["is_member"][mask]
            for attack, column in thresholds:
                if column not in batch:
                    raise ValueError(f"{attack} needs a loss: give a loss, or logits/probs with labels")
                scores = -(batch[column] if mask is None else batch[column][mask])
                yield "scores", ((model_key, key, attack), (scores, member))
            if sample_cols:
                cols = {c: (batch[c] if mask is None else batch[c][mask]) for c in sample_cols}
                yield "sample", ((model_key, key), cols)


def _counts_item(model_key: str, key: str, n_m: int, n_n: int):
    return model_key, ("counts", key, int(n_m), int(n_n))


class ThresholdResultFn(beam.DoFn):
    """``((model, slice, attack), ScoreHistogram)`` → counts and, when large enough, the result row."""

    def __init__(self, settings: AuditSettings):
        self.settings = settings

    def process(self, element):
        (model_key, key, attack), hist = element
        n_m, n_n = hist.n_members, hist.n_nonmembers
        yield _counts_item(model_key, key, n_m, n_n)
        if n_m < self.settings.min_slice_size or n_n < self.settings.min_slice_size:
            return
        entry: Dict[str, Any] = {"slice": json.loads(key), "attack": attack}
        entry.update(hist.metrics(**self.settings.metric_kwargs()))
        approx = hist.approximation()
        if approx is not None:
            entry["approximation"] = approx
        yield model_key, ("result", key, attack, entry)


def sample_to_inputs(sample: combiners.SliceSample) -> data_lib.AttackInputs:
    """AttackInputs of a slice sample (rows ordered by id, as the combiner returns them)."""
    kwargs: Dict[str, Any] = {}
    names = {"logits": "logits", "probs": "probs", "label": "labels", "loss": "loss", "entropy": "entropy"}
    for side_name, side in (("members", sample.members), ("nonmembers", sample.nonmembers)):
        for col, base in names.items():
            if col in side.columns:
                kwargs[f"{base}_{side_name}"] = side.columns[col]
    return data_lib.AttackInputs(**kwargs)


def trained_attack_entry(sample: combiners.SliceSample, spec: Mapping[str, Any], attack: str,
                         settings: AuditSettings) -> Dict[str, Any]:
    """The result row of a trained attack on a slice's sample: the in-memory code (feature extraction,
    cross-validated attack, metrics) run on the sampled rows, with the in-memory path's per-(slice,
    attack) seed."""
    from privacy_audit.components.membership_inference import api
    from privacy_audit.components.membership_inference import attacks as attacks_mod

    inputs = sample_to_inputs(sample)
    prepared = attacks_mod.PreparedInputs(inputs, settings.attack_config or attacks_mod.AttackConfig())
    im, inn = np.arange(inputs.n_members), np.arange(inputs.n_nonmembers)
    sm, sn = attacks_mod.attack_scores(attack, prepared, im, inn, api._derived_seed(settings.seed, spec, attack))
    label = np.concatenate([np.ones(im.size, dtype=bool), np.zeros(inn.size, dtype=bool)])
    entry: Dict[str, Any] = {"slice": dict(spec), "attack": attack}
    entry.update(metrics_lib.attack_metrics(np.concatenate([sm, sn]), label, None, **settings.metric_kwargs()))
    if sample.members.n_seen > inputs.n_members or sample.nonmembers.n_seen > inputs.n_nonmembers:
        entry["sample"] = {"method": "seeded_priority_sample", "seed": int(settings.seed),
                           "slice_n_members": int(sample.members.n_seen),
                           "slice_n_nonmembers": int(sample.nonmembers.n_seen)}
    return entry


class TrainedAttackFn(beam.DoFn):
    """``((model, slice, attack), SliceSample)`` → counts and, when large enough, the result row."""

    def __init__(self, settings: AuditSettings):
        self.settings = settings

    def process(self, element):
        (model_key, key, attack), sample = element
        n_m, n_n = sample.members.n_seen, sample.nonmembers.n_seen
        yield _counts_item(model_key, key, n_m, n_n)
        if n_m < self.settings.min_slice_size or n_n < self.settings.min_slice_size:
            return
        entry = trained_attack_entry(sample, json.loads(key), attack, self.settings)
        yield model_key, ("result", key, attack, entry)


class IdShardsFn(beam.DoFn):
    """``(model, batch)`` → ``(shard, (member ids, non-member ids))`` for the duplicate count."""

    def process(self, element):
        _, batch = element
        ids, member = batch["id"].astype(np.uint64), batch["is_member"]
        shard = (ids % np.uint64(_ID_SHARDS)).astype(np.int64)
        for s in np.unique(shard):
            sel = shard == s
            yield int(s), (np.unique(ids[sel & member]), np.unique(ids[sel & ~member]))


class IdOverlapCombineFn(beam.CombineFn):
    """Number of distinct ids present among both members and non-members (one shard).

    Accumulator: per side, a sorted array of distinct ids plus arrays not merged yet (merged once they
    outgrow it, so that adding many small batches stays O(n log n))."""

    def create_accumulator(self):
        return [[np.zeros(0, np.uint64)], [np.zeros(0, np.uint64)]]

    @staticmethod
    def _compact(parts, force=False):
        if len(parts) > 1 and (force or sum(p.size for p in parts[1:]) >= max(parts[0].size, 65536)):
            return [np.unique(np.concatenate(parts))]
        return parts

    def add_input(self, acc, element):
        return [self._compact(acc[i] + [np.asarray(element[i], np.uint64)]) for i in (0, 1)]

    def merge_accumulators(self, accumulators):
        accs = list(accumulators)
        return [self._compact([p for a in accs for p in a[i]], force=True) for i in (0, 1)]

    def compact(self, acc):
        return [self._compact(acc[i], force=True) for i in (0, 1)]

    def extract_output(self, acc):
        members, nonmembers = (self._compact(acc[i], force=True)[0] for i in (0, 1))
        return int(np.intersect1d(members, nonmembers, assume_unique=True).size)


class WritePerExampleFn(beam.DoFn):
    """Writes each batch's per-example records as ``<dir>/<model>/part-<content hash>.parquet``: example_id,
    is_member, label, prediction, correct, loss, score_<attack> of the threshold attacks, slicing features.
    Files are written to a temporary name and renamed; the name depends only on the batch's content."""

    def __init__(self, directory: str, settings: AuditSettings):
        self.directory = directory
        self.settings = settings

    def process(self, element):
        import pyarrow as pa
        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems

        model_key, batch = element
        cols: Dict[str, Any] = {"example_id": batch["id"].astype(np.uint64), "is_member": batch["is_member"]}
        for name in ("label", "prediction", "correct"):
            if name in batch:
                cols[name] = batch[name]
        if "xent" in batch:
            cols["loss"] = batch["xent"]
        for attack in self.settings.threshold_attacks:
            column = THRESHOLD_ATTACKS[attack]
            if column in batch:
                cols[f"score_{attack}"] = -batch[column]
        for key in self.settings.slicing.feature_keys:
            values = batch[FEATURE_PREFIX + key]
            cols[key] = values.astype(str) if values.dtype == object else values
        table = pa.table(cols)
        digest = hashlib.sha1(np.ascontiguousarray(batch["id"]).tobytes()
                              + np.ascontiguousarray(batch["is_member"]).tobytes()).hexdigest()[:20]
        path = FileSystems.join(self.directory, model_key, f"part-{digest}.parquet")
        tmp = FileSystems.join(self.directory, model_key, f".tmp-{digest}-{uuid.uuid4().hex[:8]}.parquet")
        with FileSystems.create(tmp) as f:
            pq.write_table(table, f)
        FileSystems.rename([tmp], [path])
        yield model_key, ("per_example", path, int(table.num_rows))


# ---------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------

def _write_text(path: str, text: str) -> None:
    """Atomic on every scheme (common.io: temporary name, then rename)."""
    from privacy_audit.components.common import io

    io.write_text(path, text)


def _read_text(path: str) -> str:
    from privacy_audit.components.common import io

    return io.read_text(path)


def assemble_results(items: Iterable[Tuple], settings: AuditSettings, metadata: Mapping[str, Any]
                     ) -> Tuple[Optional[Dict[str, Any]], List[str], Dict[str, Any]]:
    """Builds one model's results object from the pipeline's items.

    Items: ``("stats", dict)``, ``("plan", dict)``, ``("counts", slice_key, n_m, n_n)``,
    ``("result", slice_key, attack, entry)``, ``("duplicates", n)``, ``("per_example", path, rows)``.
    Returns ``(results object or None, errors, info)``; results and skipped slices are in the in-memory
    path's order (slices as :func:`slicing.make_slices` lists them, then attacks as given).
    """
    stats: Dict[str, float] = {}
    plan: Optional[Dict[str, Any]] = None
    counts: Dict[str, Tuple[int, int]] = {}
    found: Dict[Tuple[str, str], Dict[str, Any]] = {}
    n_dup: Optional[int] = None
    per_example: List[str] = []
    for item in items:
        kind = item[0]
        if kind == "stats":
            stats = item[1]
        elif kind == "plan":
            plan = item[1]
        elif kind == "counts":
            counts[item[1]] = (item[2], item[3])
        elif kind == "result":
            found[(item[1], item[2])] = item[3]
        elif kind == "duplicates":
            n_dup = (n_dup or 0) + int(item[1])
        elif kind == "per_example":
            per_example.append(item[1])
    problems = {k[len("problem:"):]: int(v) for k, v in stats.items() if k.startswith("problem:")}
    errors = problem_messages(problems)
    nm, nn = int(stats.get("n_members", 0)), int(stats.get("n_nonmembers", 0))
    if nm == 0 and not problems:
        errors.append("no members: the members' split (train) has no examples")
    if nn == 0 and not problems:
        errors.append("no non-members: the non-members' split (test) has no examples")
    info = {"n_duplicate_examples": n_dup, "per_example_files": sorted(per_example)}
    if errors:
        return None, errors, info

    spec = settings.slicing
    candidates: List[Dict[str, Any]] = []
    skipped: List[Dict[str, Any]] = []
    if spec.entire_dataset:
        candidates.append({"feature": "entire_dataset"})
    if spec.by_class is not False and spec.by_class is not None:
        if isinstance(spec.by_class, bool):
            n_classes = int(stats.get("max:n_classes", stats.get("max:label", -1) + 1))
            classes: Iterable[int] = range(n_classes)
        else:
            classes = [int(c) for c in spec.by_class]
        candidates.extend({"feature": "class", "value": int(c)} for c in classes)
    if spec.by_percentiles:
        candidates.extend({"feature": "loss_percentile", "value": f"{10 * k}-{10 * k + 10}"} for k in range(10))
    if spec.by_classification_correctness:
        candidates.extend({"feature": "correctly_classified", "value": v} for v in (True, False))
    for key in spec.feature_keys:
        values = None if plan is None else plan["feature_values"].get(key)
        if values is None:
            skipped.append({"slice": {"feature": key}, "n_members": nm, "n_nonmembers": nn,
                            "reason": f"feature has more than {settings.max_feature_values} distinct values"})
            continue
        candidates.extend({"feature": key, "value": slicing_lib._to_json_value(v)} for v in values)

    rows: List[Dict[str, Any]] = []
    size = settings.min_slice_size
    for cand in candidates:
        key = slice_key(cand)
        cm, cn = counts.get(key, (0, 0))
        if cm < size or cn < size:
            short = []
            if cm < size:
                short.append(f"{cm} members")
            if cn < size:
                short.append(f"{cn} non-members")
            skipped.append({"slice": cand, "n_members": cm, "n_nonmembers": cn,
                            "reason": f"only {' and '.join(short)} (min_slice_size={size})"})
            continue
        for attack in settings.attacks:
            entry = found.get((key, attack))
            if entry is None:
                errors.append(f"internal: no result for slice {key} and attack {attack}")
                continue
            rows.append(entry)
    if errors:
        return None, errors, info

    def ratio(a: str, b: str) -> Optional[float]:
        return float(stats[a] / stats[b]) if a in stats and stats.get(b) else None

    md: Dict[str, Any] = {
        "accuracy_train": ratio("correct_members", "n_members"),
        "accuracy_test": ratio("correct_nonmembers", "n_nonmembers"),
        "loss_train": ratio("loss_sum_members", "n_members"),
        "loss_test": ratio("loss_sum_nonmembers", "n_nonmembers"),
        "n_members": nm,
        "n_nonmembers": nn,
        "n_duplicate_examples": n_dup,
        "attacks": list(settings.attacks),
        "slicing": spec.to_json(),
        "seed": int(settings.seed),
        "min_slice_size": int(settings.min_slice_size),
        "delta": float(settings.delta),
        "confidence": float(settings.confidence),
        "engine": "beam",
        "sample_size": int(settings.sample_size),
    }
    if spec.by_percentiles and plan is not None:
        md["loss_decile_edges_exact"] = bool(plan.get("loss_edges_exact"))
    for key, value in (metadata or {}).items():
        if value is not None or key not in md:
            md[key] = value
    return results_lib.build_results(rows, md, skipped), [], info


class WriteResultsFn(beam.DoFn):
    """``(model, items)`` → writes the model's results JSON (when valid) and an outcome record
    ``<staging>/<model>.json`` (``{"ok", "errors", "results_path", ...}``) that the driver reads."""

    def __init__(self, settings: AuditSettings, targets: Mapping[str, OutputTarget], staging_dir: str):
        self.settings = settings
        self.targets = dict(targets)
        self.staging_dir = staging_dir

    def process(self, element):
        model_key, items = element
        target = self.targets[model_key]
        obj, errors, info = assemble_results(items, self.settings, target.metadata)
        outcome = {"model_key": model_key, "ok": obj is not None, "errors": errors, **info,
                   "results_path": target.results_path if obj is not None else None}
        if obj is not None:
            _write_text(target.results_path, results_lib.dumps_results(obj) + "\n")
        _write_text(os.path.join(self.staging_dir, f"{model_key}.json"), json.dumps(outcome))
        yield outcome


class AnalyzeOutputs(beam.PTransform):
    """``PCollection[(model_key, batch)]`` → results JSON per model key (written), per-example Parquet
    (optional), and a PCollection of outcome dicts (see :class:`WriteResultsFn`).

    Args:
      settings: what to compute.
      targets: ``{model_key: OutputTarget}`` for every model key in the input.
      staging_dir: where outcomes are written for the driver.
      per_example_dir: per-example Parquet root (None: not written).
      count_duplicates: count ids present on both sides (ids must identify examples' content).
    """

    def __init__(self, settings: AuditSettings, targets: Mapping[str, OutputTarget], staging_dir: str,
                 per_example_dir: Optional[str] = None, count_duplicates: bool = False):
        super().__init__()
        self.settings = settings
        self.targets = dict(targets)
        self.staging_dir = staging_dir
        self.per_example_dir = per_example_dir
        self.count_duplicates = count_duplicates

    def expand(self, batches):
        s = self.settings
        prepared = batches | "Prepare" >> beam.ParDo(PrepareFn("threshold_entropy" in s.attacks))
        clean = prepared | "Batches" >> select("batch")
        items = [prepared | "Stats" >> select("stats")
                 | "SumStats" >> beam.CombinePerKey(SumStatsCombineFn())
                 | "StatsItems" >> beam.Map(lambda kv: (kv[0], ("stats", kv[1])))]
        plans = None
        if s.needs_plan:
            plan = (clean | "PlanInputs" >> beam.ParDo(PlanInputsFn(s))
                    | "Plan" >> beam.CombinePerKey(PlanCombineFn(s)))
            plans = beam.pvalue.AsDict(plan)
            items.append(plan | "PlanItems" >> beam.Map(lambda kv: (kv[0], ("plan", kv[1]))))
        fan = clean | "FanOut" >> beam.ParDo(FanOutFn(s), plans=plans)
        if s.threshold_attacks:
            items.append(fan | "Scores" >> select("scores")
                         | "ScoreCounts" >> beam.CombinePerKey(combiners.ScoreCountsCombineFn(s.max_distinct_scores))
                         | "ThresholdMetrics" >> beam.ParDo(ThresholdResultFn(s)))
        if s.trained_attacks:
            trained = s.trained_attacks
            items.append(fan | "Samples" >> select("sample")
                         | "Sample" >> beam.CombinePerKey(combiners.PrioritySampleCombineFn(s.sample_size, s.seed))
                         | "PerAttack" >> beam.FlatMap(lambda kv: [((kv[0][0], kv[0][1], a), kv[1]) for a in trained])
                         | "Spread" >> beam.Reshuffle()
                         | "TrainedAttacks" >> beam.ParDo(TrainedAttackFn(s)))
        if self.per_example_dir:
            items.append(clean | "WritePerExample" >> beam.ParDo(WritePerExampleFn(self.per_example_dir, s)))
        if self.count_duplicates and self.targets:
            first = sorted(self.targets)[0]
            keys = sorted(self.targets)
            items.append(clean
                         | "OneModel" >> beam.Filter(lambda kv: kv[0] == first)
                         | "IdShards" >> beam.ParDo(IdShardsFn())
                         | "IdOverlap" >> beam.CombinePerKey(IdOverlapCombineFn())
                         | "DupItems" >> beam.FlatMap(lambda kv: [(k, ("duplicates", kv[1])) for k in keys]))
        return (items | "AllItems" >> beam.Flatten()
                | "ByModel" >> beam.GroupByKey()
                | "WriteResults" >> beam.ParDo(WriteResultsFn(s, self.targets, self.staging_dir)))


# ---------------------------------------------------------------------------------------------------------
# Source: saved model outputs
# ---------------------------------------------------------------------------------------------------------

_LONG_ALIASES = {"logits": "logits", "probs": "probs", "label": "label", "labels": "label", "loss": "loss",
                 "entropy": "entropy", "example_id": "id", "example_ids": "id"}


def batches_from_attack_inputs(inputs: data_lib.AttackInputs, batch_rows: int = DEFAULT_BATCH_ROWS,
                               feature_keys: Sequence[str] = ()) -> List[Dict[str, np.ndarray]]:
    """Column batches of in-memory attack inputs. Ids: the given example ids, else the row number
    (members first, then non-members), so that samples keep the inputs' order."""
    if inputs.sample_weight_members is not None:
        raise data_lib.InputValidationError("sample_weight is not supported by the Beam path; "
                                            "use privacy-audit attack (in memory)")
    out: List[Dict[str, np.ndarray]] = []
    offset = 0
    for flag, side in _SIDE_NAMES.items():
        n = inputs.n_members if flag else inputs.n_nonmembers
        if inputs.example_ids_members is not None:
            ids = ids_from_values(getattr(inputs, f"example_ids_{side}"))
        else:
            ids = np.arange(offset, offset + n, dtype=np.uint64)
        offset += n
        cols: Dict[str, np.ndarray] = {"id": ids, "is_member": np.full(n, flag)}
        for kind, col in (("logits", "logits"), ("probs", "probs"), ("labels", "label"), ("loss", "loss"),
                          ("entropy", "entropy")):
            arr = getattr(inputs, f"{kind}_{side}")
            if arr is not None:
                cols[col] = arr
        feats = inputs.features(side)
        for key in feature_keys:
            if key not in feats:
                raise ValueError(f"slicing by feature {key!r}: no such per-example feature "
                                 f"(available: {sorted(feats) or 'none'})")
            cols[FEATURE_PREFIX + key] = feats[key]
        for start in range(0, n, batch_rows):
            out.append({k: v[start:start + batch_rows] for k, v in cols.items()})
    return out


@dataclasses.dataclass(frozen=True)
class ParquetLayout:
    """Column roles of a long-layout Parquet file (one row per example)."""

    membership: str
    columns: Tuple[Tuple[str, str], ...]  # (role, column name)
    feature_keys: Tuple[str, ...]

    def read_columns(self) -> List[str]:
        return [self.membership] + [c for _, c in self.columns] + list(self.feature_keys)


def parquet_layout(schema_names: Sequence[str], feature_keys: Sequence[str], source: str) -> ParquetLayout:
    """The roles of a long-layout file's columns (see ``AttackInputs.from_parquet``); errors name the file."""
    names = list(schema_names)
    if "is_member" in names:
        membership = "is_member"
    elif "split" in names:
        membership = "split"
    else:
        raise data_lib.InputValidationError(f"{source}: not a long-layout file (no is_member or split column)")
    if "sample_weight" in names:
        raise data_lib.InputValidationError(f"{source}: sample_weight is not supported by the Beam path")
    roles: Dict[str, str] = {}
    for name in names:
        role = _LONG_ALIASES.get(name)
        if role is not None:
            if role in roles:
                raise data_lib.InputValidationError(f"{source}: columns {roles[role]!r} and {name!r} both give {role}")
            roles[role] = name
    if "logits" in roles and "probs" in roles:
        raise data_lib.InputValidationError(f"{source}: give logits or probs, not both")
    if "loss" not in roles and not (("logits" in roles or "probs" in roles) and "label" in roles) \
            and "entropy" not in roles:
        raise data_lib.InputValidationError(
            f"{source}: attack inputs need a loss column, or logits/probs together with label")
    missing = [k for k in feature_keys if k not in names]
    if missing:
        others = sorted(set(names) - set(roles.values()) - {membership})
        raise ValueError(f"slicing by feature {missing[0]!r}: no such per-example feature in {source} "
                         f"(available: {others or 'none'})")
    return ParquetLayout(membership, tuple(sorted(roles.items())), tuple(feature_keys))


def columns_from_record_batch(rb, layout: ParquetLayout, row_offset: int, source: str) -> Dict[str, np.ndarray]:
    """A column batch from a pyarrow RecordBatch of a long-layout file; ids default to row numbers."""
    arrays = {name: rb.column(i) for i, name in enumerate(rb.schema.names)}
    member = data_lib._arrow_to_numpy(arrays[layout.membership], layout.membership, source)
    if layout.membership == "split":
        member = member.astype(str)
        bad = ~np.isin(member, ["train", "test"])
        if bad.any():
            raise data_lib.InputValidationError(
                f"{source}: column split must hold 'train' or 'test'; found {sorted(set(member[bad]))[:5]}")
        member = member == "train"
    elif member.dtype.kind in "OUS":
        raise data_lib.InputValidationError(f"{source}: is_member must be bool or 0/1")
    cols: Dict[str, np.ndarray] = {"is_member": member.astype(bool)}
    for role, name in layout.columns:
        values = data_lib._arrow_to_numpy(arrays[name], name, source)
        cols[role] = ids_from_values(values) if role == "id" else values
    if "id" not in cols:
        cols["id"] = np.arange(row_offset, row_offset + rb.num_rows, dtype=np.uint64)
    for key in layout.feature_keys:
        cols[FEATURE_PREFIX + key] = data_lib._arrow_to_numpy(arrays[key], key, source)
    return cols


class ReadParquetTaskFn(beam.DoFn):
    """``(path, row_group, row_offset)`` → ``(model_key, batch)`` record batches of that row group."""

    def __init__(self, layout: ParquetLayout, model_key: str, batch_rows: int):
        self.layout = layout
        self.model_key = model_key
        self.batch_rows = batch_rows

    def process(self, task):
        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems

        path, row_group, offset = task
        with FileSystems.open(path) as f:
            pf = pq.ParquetFile(f)
            for rb in pf.iter_batches(batch_size=self.batch_rows, row_groups=[row_group],
                                      columns=self.layout.read_columns(), use_threads=False):
                yield self.model_key, columns_from_record_batch(rb, self.layout, offset, path)
                offset += rb.num_rows


def _match_files(path: str) -> List[str]:
    from apache_beam.io.filesystems import FileSystems

    from privacy_audit.components.common import io

    if io.isdir(path):
        files = sorted(io.glob(io.join(path, "*.parquet")) + io.glob(io.join(path, "*.pq")))
    else:
        files = sorted(m.path for r in FileSystems.match([path]) for m in r.metadata_list)
    if not files:
        raise FileNotFoundError(f"input file not found: {path}")
    return files


class ReadSavedOutputs(beam.PTransform):
    """Saved model outputs (the ``privacy-audit attack`` inputs) → ``PCollection[(model_key, batch)]``.

    ``path``: a ``.npz`` file, a Parquet file, a directory of Parquet files or a glob. Long-layout Parquet
    (``is_member``/``split`` column) is read in parallel, one task per row group, in record batches of
    ``batch_rows`` rows, reading only the needed columns; ``.npz`` and wide-layout Parquet are loaded by the
    driver (``AttackInputs``) and split into batches.
    """

    def __init__(self, path: str, model_key: str = "model", feature_keys: Sequence[str] = (),
                 batch_rows: int = DEFAULT_BATCH_ROWS):
        super().__init__()
        self.path = path
        self.model_key = model_key
        self.feature_keys = tuple(feature_keys)
        self.batch_rows = int(batch_rows)
        self.content_ids = False
        self._plan()

    def _plan(self) -> None:
        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems

        ext = os.path.splitext(self.path)[1].lower()
        self.batches: Optional[List[Dict[str, np.ndarray]]] = None
        self.tasks: List[Tuple[str, int, int]] = []
        if ext == ".npz":
            inputs = data_lib.AttackInputs.from_npz(self.path)
            self.content_ids = inputs.example_ids_members is not None
            self.batches = batches_from_attack_inputs(inputs, self.batch_rows, self.feature_keys)
            return
        files = _match_files(self.path)
        layout = None
        offset = 0
        for f in files:
            with FileSystems.open(f) as fh:
                try:
                    pf = pq.ParquetFile(fh)
                except Exception as e:  # pyarrow raises several types
                    raise data_lib.InputValidationError(f"{f}: not a readable Parquet file ({e})") from None
                names = pf.schema_arrow.names
                if "is_member" not in names and "split" not in names:
                    if len(files) > 1:
                        raise data_lib.InputValidationError(f"{f}: wide-layout files cannot be read as a set")
                    inputs = data_lib.AttackInputs.from_parquet(f)
                    self.content_ids = inputs.example_ids_members is not None
                    self.batches = batches_from_attack_inputs(inputs, self.batch_rows, self.feature_keys)
                    return
                this = parquet_layout(names, self.feature_keys, f)
                if layout is not None and this != layout:
                    raise data_lib.InputValidationError(f"{f}: columns differ from {files[0]}")
                layout = this
                for rg in range(pf.metadata.num_row_groups):
                    n = pf.metadata.row_group(rg).num_rows
                    if n:
                        self.tasks.append((f, rg, offset))
                    offset += n
        self.layout = layout
        self.content_ids = any(role == "id" for role, _ in layout.columns)
        if not self.tasks:
            raise data_lib.InputValidationError(f"{self.path}: no examples (the input has no rows)")

    @property
    def available_columns(self) -> List[str]:
        if self.batches is not None:
            return sorted(self.batches[0]) if self.batches else []
        return [role for role, _ in self.layout.columns] + ["id", "is_member"]

    def expand(self, pbegin):
        if self.batches is not None:
            key = self.model_key
            return (pbegin | "Batches" >> beam.Create([(key, b) for b in self.batches], reshuffle=False))
        return (pbegin | "RowGroups" >> beam.Create(self.tasks, reshuffle=False)
                | "Spread" >> beam.Reshuffle()
                | "ReadRecordBatches" >> beam.ParDo(ReadParquetTaskFn(self.layout, self.model_key, self.batch_rows)))


# ---------------------------------------------------------------------------------------------------------
# Source: TFX Examples + Keras models
# ---------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelToEvaluate:
    """One model to evaluate, under a model key (e.g. ``epoch_0002``, ``final``): a Keras model file
    (``.keras``, fed the feature vector), or with ``serving`` (resolved
    :class:`serving_model.ServingOptions`) a SavedModel whose signature takes the serialized examples."""

    key: str
    path: str
    serving: Optional[Any] = None


_MODEL_CACHE: Dict[str, Any] = {}
_MODEL_LOCK = threading.Lock()


def load_keras_model(path: str):
    """``keras.saving.load_model(path, compile=False)``, cached per process: a worker loads each model once
    whatever the number of DoFn instances or bundles (some runners call ``setup`` per bundle)."""
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get(path)
        if model is None:
            import keras

            model = keras.saving.load_model(path, compile=False)
            _MODEL_CACHE[path] = model
        return model


def read_tfrecord_batches(path: str, batch_size: int) -> Iterator[List[bytes]]:
    """Serialized records of a GZIP TFRecord file, in lists of at most ``batch_size``."""
    import tensorflow as tf

    ds = tf.data.TFRecordDataset([path], compression_type="GZIP").batch(batch_size)
    for chunk in ds.as_numpy_iterator():
        yield list(chunk)


class ReadTFRecordFileFn(beam.DoFn):
    """``(path, is_member)`` → ``(is_member, serialized)`` records, or lists of up to ``batch_size``
    records when ``batch_in_reader`` (for runners where BatchElements cannot be used)."""

    def __init__(self, batch_size: int, batch_in_reader: bool):
        self.batch_size = batch_size
        self.batch_in_reader = batch_in_reader

    def process(self, element):
        path, is_member = element
        for chunk in read_tfrecord_batches(path, self.batch_size):
            if self.batch_in_reader:
                yield [(is_member, s) for s in chunk]
            else:
                for s in chunk:
                    yield is_member, s


def predict_fixed_batches(model, x: np.ndarray, rows: int = DEFAULT_INFERENCE_BATCH) -> np.ndarray:
    """Logits [N, C] of a Keras model on features ``x`` [N, D], computed in batches of exactly ``rows`` rows.

    The last batch is zero-padded to ``rows``. Float32 kernels choose their blocking by batch size, so an
    example's logits would otherwise depend on how the runner happened to group records (BatchElements adapts
    batch sizes to timing): with one batch shape, the same model gives the same logits on every runner and load.
    """
    out = []
    for start in range(0, len(x), rows):
        chunk = np.asarray(x[start:start + rows])
        n = len(chunk)
        if n < rows:
            chunk = np.concatenate([chunk, np.zeros((rows - n,) + chunk.shape[1:], dtype=chunk.dtype)])
        out.append(np.asarray(model.predict_on_batch(chunk))[:n])
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


class InferenceFn(beam.DoFn):
    """A list of ``(is_member, serialized tf.Example)`` → ``(model_key, batch)`` for each model.

    ``setup`` loads every model (once per worker process, :func:`load_keras_model`, or
    :func:`serving_model.load_serving_model` for a SavedModel signature); each batch is parsed once
    (``examples.parse_examples``; only labels, ids and slicing features when every model is a signature over
    serialized examples) and run through each model: ``predict_on_batch`` on the feature vector, or the
    signature on the serialized examples (its probabilities go in the ``probs`` column).
    """

    def __init__(self, models: Sequence[ModelToEvaluate], label_key: str, input_features: Sequence[str],
                 slice_feature_keys: Sequence[str]):
        self.models = list(models)
        self.label_key = label_key
        self.input_features = list(input_features)
        self.slice_feature_keys = list(slice_feature_keys)
        self._loaded: List[Tuple[str, Any]] = []

    def setup(self):
        from privacy_audit.components.membership_inference.serving_model import load_serving_model

        self._loaded = [(m.key, load_keras_model(m.path) if m.serving is None
                         else load_serving_model(m.path, m.serving)) for m in self.models]

    def process(self, records):
        from privacy_audit.components.common import examples as examples_lib
        from privacy_audit.components.membership_inference.serving_model import example_columns

        if not records:
            return
        flags = np.fromiter((bool(r[0]) for r in records), dtype=bool, count=len(records))
        serialized = [r[1] for r in records]
        # Models fed a feature vector need it parsed; signature models read the serialized examples.
        if self.input_features:
            parsed = examples_lib.parse_examples(serialized, self.label_key, self.input_features)
            missing = [k for k in self.slice_feature_keys if k not in parsed.features]
        else:
            parsed = example_columns(serialized, self.label_key, self.slice_feature_keys)
            missing = [k for k in self.slice_feature_keys if all(v is None for v in parsed.features[k])]
        if missing:
            raise ValueError(f"slicing feature(s) {missing} are not features of the examples")
        base: Dict[str, np.ndarray] = {"id": examples_lib.ids_from_hashes(parsed.example_hashes),
                                       "is_member": flags, "label": parsed.y}
        for key in self.slice_feature_keys:
            base[FEATURE_PREFIX + key] = parsed.features[key]
        for (key, model), m in zip(self._loaded, self.models):
            batch = dict(base)
            if m.serving is None:
                batch["logits"] = predict_fixed_batches(model, parsed.x)
            else:
                batch["probs" if model.kind == "probabilities" else "logits"] = model(serialized)
            yield key, batch


class ExamplesToOutputs(beam.PTransform):
    """TFX Examples (members' and non-members' GZIP TFRecord files) and Keras models →
    ``PCollection[(model_key, batch)]`` of logits, labels, ids (sha1 of the serialized example) and
    slicing features.

    ``batching``: ``"beam"`` groups records with ``beam.BatchElements``; ``"reader"`` makes batches inside
    the file reader (needed on runners that drop ``finish_bundle`` outputs, like the Dask runner).
    """

    def __init__(self, members_files: Sequence[str], nonmembers_files: Sequence[str],
                 models: Sequence[ModelToEvaluate], label_key: str, input_features: Sequence[str],
                 slice_feature_keys: Sequence[str] = (), batch_size: int = DEFAULT_INFERENCE_BATCH,
                 batching: str = "beam"):
        super().__init__()
        if batching not in ("beam", "reader"):
            raise ValueError(f"batching must be 'beam' or 'reader', got {batching!r}")
        self.files = [(f, True) for f in members_files] + [(f, False) for f in nonmembers_files]
        self.models = list(models)
        self.label_key = label_key
        self.input_features = list(input_features)
        self.slice_feature_keys = list(slice_feature_keys)
        self.batch_size = int(batch_size)
        self.batching = batching

    def expand(self, pbegin):
        in_reader = self.batching == "reader"
        records = (pbegin | "Files" >> beam.Create(self.files, reshuffle=False)
                   | "SpreadFiles" >> beam.Reshuffle()
                   | "ReadRecords" >> beam.ParDo(ReadTFRecordFileFn(self.batch_size, in_reader)))
        if not in_reader:
            records = records | "Batch" >> beam.BatchElements(min_batch_size=min(32, self.batch_size),
                                                              max_batch_size=self.batch_size)
        return records | "Inference" >> beam.ParDo(
            InferenceFn(self.models, self.label_key, self.input_features, self.slice_feature_keys))


def inspect_split(file_pattern: str, what: str) -> Tuple[List[str], List[str]]:
    """Files of a split and the feature names of its first example; ValueError when it has none."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise ValueError(f"{what}: no files match {file_pattern}")
    for f in files:
        for raw in tf.data.TFRecordDataset([f], compression_type="GZIP").take(1).as_numpy_iterator():
            ex = tf.train.Example.FromString(raw)
            return files, sorted(ex.features.feature.keys())
    raise ValueError(f"{what} has no examples ({file_pattern})")


# ---------------------------------------------------------------------------------------------------------
# Drivers
# ---------------------------------------------------------------------------------------------------------

def pipeline_options(beam_pipeline_args: Optional[Sequence[str]] = None):
    """PipelineOptions from command-line style args; ``--runner=DaskRunner`` is accepted as a short name."""
    from apache_beam.options.pipeline_options import PipelineOptions

    args = []
    for a in beam_pipeline_args or []:
        if a in ("--runner=DaskRunner", "--runner=dask"):
            a = f"--runner={DASK_RUNNER}"
        args.append(a)
    return PipelineOptions(args)


def is_dask_runner(options, runner=None) -> bool:
    from apache_beam.options.pipeline_options import StandardOptions

    if runner is not None:
        return type(runner).__name__ == "DaskRunner"
    name = options.view_as(StandardOptions).runner
    return bool(name) and "DaskRunner" in str(name)


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
            outcome = json.loads(_read_text(path))
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
                        batch_rows: int = DEFAULT_BATCH_ROWS, **settings_kwargs: Any) -> Dict[str, Any]:
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
    options = pipeline_options(beam_pipeline_args)
    p = beam.Pipeline(runner=runner, options=options)
    (p | "Read" >> source
     | "Analyze" >> AnalyzeOutputs(settings, targets, staging, per_example_dir, source.content_ids))
    try:
        run_pipeline(p)
        _collect_outcomes(staging, ["model"])
    finally:
        _cleanup(staging)
    obj = json.loads(_read_text(output_path))
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
                   split_names: Tuple[str, str] = ("train", "eval")) -> Dict[str, Dict[str, Any]]:
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
    if make_pipeline is not None:
        p = make_pipeline()
        batching = "reader" if is_dask_runner(p.options, p.runner) else "beam"
    else:
        options = pipeline_options(beam_pipeline_args)
        batching = "reader" if is_dask_runner(options, runner) else "beam"
        p = beam.Pipeline(runner=runner, options=options)
    (p | "Examples" >> ExamplesToOutputs(members_files, nonmembers_files, models, label_key, input_features,
                                         settings.slicing.feature_keys, batch_size, batching)
     | "Analyze" >> AnalyzeOutputs(settings, targets, staging_dir, per_example_dir, count_duplicates=True))
    try:
        run_pipeline(p)
        outcomes = _collect_outcomes(staging_dir, [m.key for m in models])
    finally:
        _cleanup(staging_dir)
    return {key: json.loads(_read_text(o["results_path"])) for key, o in outcomes.items()}
