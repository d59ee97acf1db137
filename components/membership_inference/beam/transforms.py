"""The Beam analysis of per-example record batches (:mod:`..records`), keyed by model (one key per evaluated
checkpoint):

    batches ─► Prepare (validate, losses) ─► FanOut to slices ─┬► (model, slice, attack): ScoreCountsCombineFn
                                                             │     ─► metrics_from_counts      (threshold attacks)
                                                             └► (model, slice): PrioritySampleCombineFn
                                                                   ─► (model, slice, attack) ─► attack on sample
                                                                                                 (trained attacks)
    clean batches of one model ⋈ reference signals (by example id) ─► LiRA / RMIA ─► ScoreCountsCombineFn
                                                                     (optional, :mod:`.reference`)
    ─► GroupByKey(model) ─► results JSON per model (:mod:`..assemble`), written by the pipeline;
       per-example Parquet (per_example/<model>/part-*.parquet), optional.

The in-memory path (:func:`api.run_attacks`) gives the same results: threshold attacks from the same
per-distinct-score counts (exact while a slice has at most ``max_distinct_scores`` distinct scores, see
:class:`combiners.ScoreHistogram` beyond), trained attacks from the same code on a seeded sample of at
most ``sample_size`` members and non-members per slice (all of them when the slice is smaller).

Runner notes. Nothing is emitted from ``finish_bundle`` and no I/O transform is needed beyond
Create/ParDo/GroupByKey/Flatten, so the pipeline also runs on Beam's Dask runner (which drops
``finish_bundle`` outputs and only translates those primitives).
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any, Dict, Mapping, Optional, Tuple

import apache_beam as beam
import numpy as np

from privacy_audit.components.common.io import write_text
from privacy_audit.components.membership_inference import combiners
from privacy_audit.components.membership_inference import data as data_lib
from privacy_audit.components.membership_inference import metrics as metrics_lib
from privacy_audit.components.membership_inference import results as results_lib
from privacy_audit.components.membership_inference.assemble import assemble_results
from privacy_audit.components.membership_inference.beam.reference import (
    REFERENCE_ITEM_KINDS, ReferenceAttacks, ReferenceAttackSpec, add_reference_items)
from privacy_audit.components.membership_inference.records import FEATURE_PREFIX, n_rows, prepare_batch
from privacy_audit.components.membership_inference.settings import AuditSettings, OutputTarget, THRESHOLD_ATTACKS
from privacy_audit.components.membership_inference.slicing import batch_slices, decile_edges, slice_key


_ID_SHARDS = 8


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
        if n_rows(clean):
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
        yield model_key, ("result", key, attack, histogram_entry(key, attack, hist, self.settings))


def histogram_entry(key: str, attack: str, hist: combiners.ScoreHistogram, settings: AuditSettings
                    ) -> Dict[str, Any]:
    """The result row of an attack measured by its per-slice score counts (exact, or the histogram's
    approximation described in ``approximation``)."""
    entry: Dict[str, Any] = {"slice": json.loads(key), "attack": attack}
    entry.update(hist.metrics(**settings.metric_kwargs()))
    approx = hist.approximation()
    if approx is not None:
        entry["approximation"] = approx
    return entry


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
        yield model_key, ("per_example", *write_part(self.directory, model_key, batch, cols))


def write_part(directory: str, model_key: str, batch: Mapping[str, np.ndarray], cols: Mapping[str, Any]
               ) -> Tuple[str, int]:
    """Writes ``cols`` as ``<directory>/<model_key>/part-<hash of the batch's ids>.parquet`` (temporary name,
    then rename: the name depends only on the batch's content); returns ``(path, rows)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    table = pa.table(dict(cols))
    digest = hashlib.sha1(np.ascontiguousarray(batch["id"]).tobytes()
                          + np.ascontiguousarray(batch["is_member"]).tobytes()).hexdigest()[:20]
    path = FileSystems.join(directory, model_key, f"part-{digest}.parquet")
    tmp = FileSystems.join(directory, model_key, f".tmp-{digest}-{uuid.uuid4().hex[:8]}.parquet")
    with FileSystems.create(tmp) as f:
        pq.write_table(table, f)
    FileSystems.rename([tmp], [path])
    return path, int(table.num_rows)


class WriteOutputsFn(beam.DoFn):
    """Keeps one model's per-example records (id, is_member, label, logits or probs [n, C], slicing features)
    as Parquet parts under ``<directory>/<model_key>/``: read back by :func:`read_outputs`, so that a later
    step (the reference attacks) reuses the outputs the pipeline computed instead of running the model again."""

    def __init__(self, directory: str, model_key: str):
        self.directory = directory
        self.model_key = model_key

    def process(self, element):
        import pyarrow as pa

        model_key, batch = element
        if model_key != self.model_key:
            return
        cols: Dict[str, Any] = {}
        for name, values in batch.items():
            if name in ("id", "is_member", "label") or name.startswith(FEATURE_PREFIX):
                cols[name] = values
            elif name in ("logits", "probs"):
                values = np.asarray(values)
                values = values.reshape(len(values), -1)
                cols[name] = pa.FixedSizeListArray.from_arrays(values.reshape(-1), values.shape[1])
        write_part(self.directory, model_key, batch, cols)
        return []


def read_outputs(directory: str) -> Dict[str, np.ndarray]:
    """The records :class:`WriteOutputsFn` kept, as columns, members first then non-members, each side in
    the order of example ids (a deterministic order whatever the runner's batching)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from privacy_audit.components.common import io

    paths = sorted(io.glob(io.join(directory, "*", "part-*.parquet")))
    if not paths:
        raise ValueError(f"no per-example outputs were kept under {directory}")
    table = pa.concat_tables([pq.read_table(pa.BufferReader(io.read_bytes(path))) for path in paths])
    cols: Dict[str, np.ndarray] = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if isinstance(column.type, pa.FixedSizeListType):
            cols[name] = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
        else:
            cols[name] = column.to_numpy(zero_copy_only=False)
    order = np.lexsort((cols["id"], ~cols["is_member"].astype(bool)))
    return {k: v[order] for k, v in cols.items()}


# ---------------------------------------------------------------------------------------------------------

class WriteResultsFn(beam.DoFn):
    """``(model, items)`` → writes the model's results JSON (when valid) and an outcome record
    ``<staging>/<model>.json`` (``{"ok", "errors", "results_path", ...}``) that the driver reads. A target
    without ``results_path`` (the driver adds to the results before writing them once) gets its results
    object in the outcome record instead."""

    def __init__(self, settings: AuditSettings, targets: Mapping[str, OutputTarget], staging_dir: str,
                 reference_attacks: Tuple[str, ...] = ()):
        self.settings = settings
        self.targets = dict(targets)
        self.staging_dir = staging_dir
        self.reference_attacks = tuple(reference_attacks)

    def process(self, element):
        model_key, items = element
        target = self.targets[model_key]
        items = list(items)
        reference_items = [it for it in items if it[0] in REFERENCE_ITEM_KINDS]
        obj, errors, info = assemble_results([it for it in items if it[0] not in REFERENCE_ITEM_KINDS],
                                             self.settings, target.metadata)
        if obj is not None and reference_items:
            obj = add_reference_items(obj, reference_items, self.reference_attacks)
        outcome = {"model_key": model_key, "ok": obj is not None, "errors": errors, **info,
                   "results_path": target.results_path if obj is not None else None}
        if obj is not None and target.results_path is None:
            outcome["results"] = obj
        elif obj is not None:
            write_text(target.results_path, results_lib.dumps_results(obj) + "\n")
        write_text(os.path.join(self.staging_dir, f"{model_key}.json"), json.dumps(outcome))
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
      keep_outputs: ``(model_key, directory)``: that model's per-example records are kept (:class:`WriteOutputsFn`).
      references: LiRA / RMIA of one model with the reference models' Parquet signals, joined by id inside
        the pipeline (:class:`.reference.ReferenceAttacks`); their entries join that model's results.
    """

    def __init__(self, settings: AuditSettings, targets: Mapping[str, OutputTarget], staging_dir: str,
                 per_example_dir: Optional[str] = None, count_duplicates: bool = False,
                 keep_outputs: Optional[Tuple[str, str]] = None, references: Optional[ReferenceAttackSpec] = None):
        super().__init__()
        self.references = references
        self.settings = settings
        self.targets = dict(targets)
        self.staging_dir = staging_dir
        self.per_example_dir = per_example_dir
        self.count_duplicates = count_duplicates
        self.keep_outputs = keep_outputs

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
        if self.references is not None:
            items.append(clean | "ReferenceAttacks" >> ReferenceAttacks(self.references, s, plans))
        if self.keep_outputs:
            key, directory = self.keep_outputs
            _ = clean | "KeepOutputs" >> beam.ParDo(WriteOutputsFn(directory, key))
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
                | "WriteResults" >> beam.ParDo(WriteResultsFn(
                    s, self.targets, self.staging_dir,
                    self.references.attacks if self.references is not None else ())))


