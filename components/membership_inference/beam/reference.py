"""LiRA and RMIA inside the Beam audit: the target model's per-example records joined by example id with the
reference models' per-example signals (a Parquet file, ``reference_models.signals.write_signals_parquet``),
scored per example and measured per slice by the same mergeable counts as the threshold attacks:

    target batches (one model) ─► target signals ─┐
                                                   ├► (id shard) GroupByKey ─► join by id ─► joined batches
    reference Parquet row groups ─► per-example ───┘        (ids on one side only are counted, not scored)
        fits (LiRA IN/OUT count, mean, squared deviations; RMIA Pr(x))
    joined batches ─► PopulationCombineFn (one global pass) ─► LiRA's global fit (pooled variances, IN-OUT gap)
                                                              and RMIA's population log-ratios (seeded sample)
    joined batches + that side input ─► scores per attack ─► slices ─► ScoreCountsCombineFn ─► result rows

Memory: a process never holds the K x N x C reference outputs: a Parquet row group holds K floats per example
and signal, a joined shard a few floats per example, and the global pass a few floats per example (the
per-example fits that LiRA's pooled variance sums, in the in-driver path's order so that the numbers are the
same, and RMIA's population of log-ratios).

The scores equal the in-driver path's (:func:`..attacks.reference.score_with_references`): the same
functions on the same per-example columns (:func:`..attacks.lira.lira_example_fit`, ``lira_global_fit``,
``lira_scores_from_fit``; :func:`..attacks.rmia.reference_average`, ``log_ratio``,
``rmia_scores_from_population``). RMIA's population is every scored example, as in the driver, up to
``population_size`` examples; beyond that a seeded sample (the smallest :func:`..combiners.sample_priority` of
the ids), the same on any runner.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np

from privacy_audit.components.common.losses import as_2d_logits
from privacy_audit.components.membership_inference import combiners
from privacy_audit.components.membership_inference.attacks import lira as lira_lib
from privacy_audit.components.membership_inference.attacks import rmia as rmia_lib
from privacy_audit.components.membership_inference.attacks.reference import (
    REFERENCE_ATTACKS, check_reference_options, resolve_attack_options)
from privacy_audit.components.membership_inference.attacks.signals import (
    logit_scaled_confidence, true_class_probability)
from privacy_audit.components.membership_inference.records import FEATURE_PREFIX, n_rows
from privacy_audit.components.membership_inference.slicing import batch_slices, slice_key

_LOG = logging.getLogger(__name__)

#: RMIA's population: every scored example up to this many, else a seeded sample of this many.
DEFAULT_POPULATION_SIZE = 1 << 21
#: Examples per id shard of the join (the shard count follows from the reference file's size).
SHARD_ROWS = 16384
_MAX_SHARDS = 1024
#: Item kinds this transform adds to a model's items (``transforms.WriteResultsFn`` merges them).
REFERENCE_ITEM_KINDS = ("reference_result", "reference_info")
#: The target records' columns kept through the join (slicing needs them).
_TARGET_COLUMNS = ("id", "is_member", "label", "xent", "correct")
_FIT_COLUMNS = ("count", "total", "mean", "sq_dev", "var")


@dataclasses.dataclass(frozen=True)
class ReferenceAttackSpec:
    """The reference attacks of one model of a Beam audit.

    Attributes:
      model_key: the model (key of the audit's batches) whose records are attacked (the final model).
      signals_path: the reference signals Parquet (``signals.SIGNALS_PARQUET_FILE`` of a ReferenceModels).
      attacks: names of :data:`attacks.reference.REFERENCE_ATTACKS` (lira, lira_offline, rmia, rmia_offline).
      options: ``{"lira": {...}, "rmia": {...}}`` (:func:`attacks.reference.check_reference_options`).
      population_size: RMIA's population cap (see module doc).
      seed: seeds RMIA's population sample (the audit's seed).
      per_example_dir: per-example scores as ``<dir>/<model_key>/part-*.parquet`` (None: not written).
    """

    model_key: str
    signals_path: str
    attacks: Tuple[str, ...]
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    population_size: int = DEFAULT_POPULATION_SIZE
    seed: int = 0
    per_example_dir: Optional[str] = None

    def __post_init__(self) -> None:
        bad = [a for a in self.attacks if a not in REFERENCE_ATTACKS]
        if bad or not self.attacks:
            raise ValueError(f"reference attacks must be among {list(REFERENCE_ATTACKS)}, got {list(self.attacks)}")
        object.__setattr__(self, "attacks", tuple(self.attacks))
        object.__setattr__(self, "options", check_reference_options(self.options))
        if self.population_size < 1:
            raise ValueError(f"population_size must be >= 1, got {self.population_size}")

    def resolved(self, k: int) -> Dict[str, Dict[str, Any]]:
        """``{attack: resolved options}`` (:func:`attacks.reference.resolve_attack_options`) for K references."""
        return {name: resolve_attack_options(name, k, self.options) for name in self.attacks}


def _families(resolved: Mapping[str, Mapping[str, Any]]) -> Tuple[Optional[Dict[str, Any]], List[bool]]:
    """LiRA's options (None when no LiRA attack) and the RMIA modes (online flags) asked for."""
    lira = next((dict(o) for o in resolved.values() if o["attack"] == "lira"), None)
    modes = sorted({bool(o["online"]) for o in resolved.values() if o["attack"] == "rmia"})
    return lira, modes


def _rmia_options(resolved: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    return next((dict(o) for o in resolved.values() if o["attack"] == "rmia"), {})


def _shard_of(ids: np.ndarray, shards: int) -> np.ndarray:
    return (ids.astype(np.uint64) % np.uint64(shards)).astype(np.int64)


def _split_by_shard(cols: Mapping[str, np.ndarray], shards: int, side: str):
    """``(shard, (side, columns))`` per shard present (columns of one value per example)."""
    shard = _shard_of(cols["id"], shards)
    for s in np.unique(shard):
        sel = shard == s
        yield int(s), (side, {k: v[sel] for k, v in cols.items()})


class ReferenceRowsFn(beam.DoFn):
    """``(path, row group)`` → ``(shard, ("ref", columns))``: the row group's per-example fits (LiRA's IN and
    OUT count, sum, mean, squared deviations, variance; RMIA's Pr(x) per mode) and IN counts, never the
    K signals themselves past this step."""

    def __init__(self, resolved: Mapping[str, Mapping[str, Any]], shards: int):
        self.resolved = dict(resolved)
        self.shards = shards

    def process(self, element):
        from privacy_audit.components.reference_models.signals import read_signals_row_group

        path, index = element
        rows = read_signals_row_group(path, index)
        mask = rows["in_mask"]
        cols: Dict[str, np.ndarray] = {"id": rows["id"], "ref_label": rows["label"],
                                       "n_in": mask.sum(axis=0).astype(np.int64)}
        lira, modes = _families(self.resolved)
        if lira is not None:
            fits = lira_lib.lira_example_fit(rows["lira"], mask, lira.get("ddof", 0))
            for kind, fit in fits.items():
                for name in _FIT_COLUMNS:
                    cols[f"{kind}:{name}"] = fit[name]
        if modes:
            a = _rmia_options(self.resolved).get("offline_a", 0.3)
            for online in modes:
                cols[f"pr:{int(online)}"] = rmia_lib.reference_average(rows["rmia"], mask, online, a)
        yield from _split_by_shard(cols, self.shards, "ref")


class TargetRowsFn(beam.DoFn):
    """``(model, batch)`` of the attacked model → ``(shard, ("target", columns))``: the target's signals
    (logit-scaled confidence, true-class probability, computed as the in-driver path does from the logits or
    the log-probabilities) and the columns the slices need."""

    def __init__(self, model_key: str, shards: int, feature_keys: Sequence[str]):
        self.model_key = model_key
        self.shards = shards
        self.feature_keys = tuple(feature_keys)

    def process(self, element):
        from privacy_audit.components.membership_inference.serving_model import as_logits

        model_key, batch = element
        if model_key != self.model_key or not n_rows(batch):
            return
        if "label" not in batch or not ("logits" in batch or "probs" in batch):
            raise ValueError("the reference attacks need the target model's logits (or probs) and labels")
        n = n_rows(batch)
        if "logits" in batch:
            target = as_2d_logits(np.asarray(batch["logits"]).reshape(n, -1))
        else:
            target = as_2d_logits(as_logits(np.asarray(batch["probs"]).reshape(n, -1), "probabilities"))
        labels = batch["label"]
        cols = {c: batch[c] for c in _TARGET_COLUMNS if c in batch}
        cols["id"] = np.asarray(batch["id"]).astype(np.uint64)
        cols["is_member"] = np.asarray(batch["is_member"]).astype(bool)
        for key in self.feature_keys:
            cols[FEATURE_PREFIX + key] = batch[FEATURE_PREFIX + key]
        cols["t:lira"] = logit_scaled_confidence(target, labels)
        cols["t:rmia"] = true_class_probability(target, labels)
        yield from _split_by_shard(cols, self.shards, "target")


def _concat(parts: List[Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class JoinFn(beam.DoFn):
    """``(shard, [("target" | "ref", columns)])`` → ``("joined", batch)`` (the target's rows that have reference
    signals, with them) and ``("join", counts)``: targets without references, references without a target,
    label disagreements, duplicate reference ids."""

    def __init__(self, modes: Sequence[bool]):
        self.modes = list(modes)

    def process(self, element):
        _, values = element
        targets = [cols for side, cols in values if side == "target"]
        refs = [cols for side, cols in values if side == "ref"]
        counts = {"n_targets_without_references": 0, "n_references_without_target": 0,
                  "n_label_mismatches": 0, "n_duplicate_reference_ids": 0}
        t = _concat(targets) if targets else None
        r = _concat(refs) if refs else None
        if t is None:
            counts["n_references_without_target"] = 0 if r is None else int(r["id"].size)
            yield "join", counts
            return
        if r is None:
            counts["n_targets_without_references"] = int(t["id"].size)
            yield "join", counts
            return
        uniq, first = np.unique(r["id"], return_index=True)
        counts["n_duplicate_reference_ids"] = int(r["id"].size - uniq.size)
        pos = np.minimum(np.searchsorted(uniq, t["id"]), uniq.size - 1)
        found = uniq[pos] == t["id"]
        counts["n_targets_without_references"] = int((~found).sum())
        counts["n_references_without_target"] = int(uniq.size - np.unique(t["id"][found]).size)
        ridx = first[pos[found]]
        joined = {k: v[found] for k, v in t.items()}
        for k, v in r.items():
            if k != "id":
                joined[k] = v[ridx]
        counts["n_label_mismatches"] = int((joined.pop("ref_label") != joined["label"]).sum())
        for online in self.modes:
            joined[f"logr:{int(online)}"] = rmia_lib.log_ratio(joined["t:rmia"], joined.pop(f"pr:{int(online)}"))
        del joined["t:rmia"]  # only the log-ratios go on
        yield "join", counts
        if joined["id"].size:
            yield "joined", joined


class PopulationCombineFn(beam.CombineFn):
    """One global pass over the joined batches: the per-example columns LiRA's global fit needs and RMIA's
    log-ratios, reduced to ``{"lira": lira_global_fit | None, "rmia:<online>": sorted population log-ratios,
    "n": examples, "n_in_min", "n_in_max", "population": {...}}``.

    LiRA's pooled variance is a sum over examples: it is summed in the in-driver path's order (members then
    non-members, each by id) so that the two paths give the same numbers to the last bit. RMIA's population
    keeps at most ``population_size`` examples per side of the priority order (exact while smaller)."""

    def __init__(self, lira: Optional[Mapping[str, Any]], modes: Sequence[bool], population_size: int, seed: int):
        self.lira = None if lira is None else dict(lira)
        self.modes = list(modes)
        self.population_size = population_size
        self.seed = seed

    def _columns(self) -> List[str]:
        cols = ["id", "is_member", "n_in"]
        if self.lira is not None:
            cols += [f"{kind}:{name}" for kind in ("in", "out") for name in ("count", "total", "mean", "sq_dev")]
        return cols + [f"logr:{int(m)}" for m in self.modes]

    def create_accumulator(self):
        return []

    def add_input(self, acc, element):
        acc.append({c: element[c] for c in self._columns()})
        if len(acc) >= 64:
            acc[:] = [_concat(acc)]
        return acc

    def merge_accumulators(self, accumulators):
        parts = [p for a in accumulators for p in a]
        return [_concat(parts)] if parts else []

    def extract_output(self, acc):
        if not acc:
            return {"n": 0}
        cols = _concat(acc)
        order = np.lexsort((cols["id"], ~cols["is_member"]))  # the in-driver path's order
        cols = {k: v[order] for k, v in cols.items()}
        out: Dict[str, Any] = {"n": int(cols["id"].size), "n_in_min": int(cols["n_in"].min()),
                               "n_in_max": int(cols["n_in"].max())}
        if self.lira is not None:
            fit = {kind: {name: cols[f"{kind}:{name}"] for name in ("count", "total", "mean", "sq_dev")}
                   for kind in ("in", "out")}
            out["lira"] = lira_lib.lira_global_fit(fit["in"], fit["out"], self.lira.get("ddof", 0))
        if self.modes:
            keep = None
            if cols["id"].size > self.population_size:
                keep = combiners.sample_indices(cols["id"], self.seed, self.population_size)
            for online in self.modes:
                values = cols[f"logr:{int(online)}"]
                out[f"rmia:{int(online)}"] = np.sort(values if keep is None else values[keep])
            out["population"] = {"size": int(out[f"rmia:{int(self.modes[0])}"].size),
                                 "n_scored": int(cols["id"].size), "sampled": keep is not None,
                                 "seed": int(self.seed) if keep is not None else None}
        return out


class ScoreFn(beam.DoFn):
    """``("joined", batch)`` + the population side input → per slice and attack ``((model, slice, attack),
    (scores, is_member))`` for :class:`combiners.ScoreCountsCombineFn`, and ``("per_example", columns)``."""

    def __init__(self, spec: ReferenceAttackSpec, resolved: Mapping[str, Mapping[str, Any]], settings: Any):
        self.spec = spec
        self.resolved = dict(resolved)
        self.settings = settings

    def scores(self, batch: Mapping[str, np.ndarray], population: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        out: Dict[str, np.ndarray] = {}
        for name, opts in self.resolved.items():
            if opts["attack"] == "lira":
                fit_in = {c: batch[f"in:{c}"] for c in _FIT_COLUMNS}
                fit_out = {c: batch[f"out:{c}"] for c in _FIT_COLUMNS}
                out[name] = lira_lib.lira_scores_from_fit(
                    batch["t:lira"], fit_in, fit_out, population["lira"], online=opts["online"],
                    fixed_variance=opts["fixed_variance"],
                    min_std=opts.get("min_std", lira_lib.DEFAULT_MIN_STD))
            else:
                out[name] = rmia_lib.rmia_scores_from_population(
                    batch[f"logr:{int(opts['online'])}"], population[f"rmia:{int(opts['online'])}"], opts["gamma"])
        return out

    def process(self, element, population, plans=None):
        kind, batch = element
        if kind != "joined":
            return
        model_key = self.spec.model_key
        plan = None if plans is None else plans.get(model_key)
        scores = self.scores(batch, population)
        member = batch["is_member"]
        for spec, mask in batch_slices(batch, self.settings.slicing, plan):
            key = slice_key(spec)
            m = member if mask is None else member[mask]
            for name in self.spec.attacks:
                yield "scores", ((model_key, key, name), (scores[name] if mask is None else scores[name][mask], m))
        if self.spec.per_example_dir:
            cols = {"example_id": batch["id"], "is_member": member, "label": batch["label"]}
            for name in self.spec.attacks:
                cols[f"score_{name}"] = scores[name]
            yield "per_example", cols


class ReferenceResultFn(beam.DoFn):
    """``((model, slice, attack), ScoreHistogram)`` → ``(model, ("reference_result", slice, attack, entry))``
    when the slice has at least ``min_slice_size`` scored members and non-members."""

    def __init__(self, settings: Any):
        self.settings = settings

    def process(self, element):
        from privacy_audit.components.membership_inference.beam.transforms import histogram_entry

        (model_key, key, attack), hist = element
        if min(hist.n_members, hist.n_nonmembers) < self.settings.min_slice_size:
            return
        yield model_key, ("reference_result", key, attack, histogram_entry(key, attack, hist, self.settings))


class WriteScoresFn(beam.DoFn):
    """Writes per-example scores as ``<dir>/<model>/part-<hash>.parquet`` (``transforms.write_part``)."""

    def __init__(self, directory: str, model_key: str):
        self.directory = directory
        self.model_key = model_key

    def process(self, element):
        from privacy_audit.components.membership_inference.beam.transforms import write_part

        kind, cols = element
        if kind != "per_example":
            return
        write_part(self.directory, self.model_key, {"id": cols["example_id"], "is_member": cols["is_member"]}, cols)


def _sum_counts(items: Iterable[Mapping[str, int]]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for item in items:
        for k, v in item.items():
            out[k] = out.get(k, 0) + int(v)
    return out


def reference_info(population: Mapping[str, Any], join: Mapping[str, int], resolved: Mapping[str, Any], k: int,
                   metadata: Mapping[str, Any]) -> Dict[str, Any]:
    """The results' ``metadata.reference_models`` (the in-driver path's keys: ``ReferenceSignals.summary`` and
    the resolved options) plus ``join`` (ids on one side only) and RMIA's ``population``."""
    info: Dict[str, Any] = {"k": int(k), "m": int(population.get("n", 0))}
    if population.get("n"):
        info.update(in_per_example_min=population["n_in_min"], in_per_example_max=population["n_in_max"])
    info.update({key: metadata[key] for key in ("seed", "fraction", "recipe", "init") if key in metadata})
    info["attacks"] = {name: dict(o) for name, o in resolved.items()}
    info["engine"] = "beam"
    info["join"] = dict(join)
    if "population" in population:
        info["rmia_population"] = dict(population["population"])
    return info


class ReferenceAttacks(beam.PTransform):
    """``PCollection[(model, clean batch)]`` → ``PCollection[(model, item)]`` with the items of
    :data:`REFERENCE_ITEM_KINDS` for ``spec.model_key`` (see module doc).

    Args:
      spec: which model, which signals file, which attacks.
      settings: the audit's :class:`settings.AuditSettings` (slicing, min_slice_size, metrics).
      plans: the audit's plan side input (``AsDict``; None when the slicing needs none).
    """

    def __init__(self, spec: ReferenceAttackSpec, settings: Any, plans=None):
        super().__init__()
        from privacy_audit.components.reference_models.signals import read_signals_parquet_info

        self.spec = spec
        self.settings = settings
        self.plans = plans
        self.info = read_signals_parquet_info(spec.signals_path)
        self.resolved = spec.resolved(self.info.k)
        self.shards = int(min(_MAX_SHARDS, max(1, -(-self.info.n_rows // SHARD_ROWS))))

    def expand(self, batches):
        spec, s = self.spec, self.settings
        lira, modes = _families(self.resolved)
        targets = batches | "TargetSignals" >> beam.ParDo(
            TargetRowsFn(spec.model_key, self.shards, s.slicing.feature_keys))
        refs = (batches.pipeline
                | "RowGroups" >> beam.Create([(spec.signals_path, i) for i in range(self.info.row_groups)])
                | "SpreadRowGroups" >> beam.Reshuffle()
                | "ReferenceFits" >> beam.ParDo(ReferenceRowsFn(self.resolved, self.shards)))
        joined = ((targets, refs) | "BothSides" >> beam.Flatten()
                  | "ByIdShard" >> beam.GroupByKey()
                  | "JoinById" >> beam.ParDo(JoinFn(modes)))
        rows = joined | "Joined" >> beam.Filter(lambda e: e[0] == "joined")
        population = (rows | "JoinedBatches" >> beam.Map(lambda e: e[1])
                      | "Population" >> beam.CombineGlobally(
                          PopulationCombineFn(lira, modes, spec.population_size, spec.seed)))
        join_counts = (joined | "JoinCounts" >> beam.Filter(lambda e: e[0] == "join")
                       | "CountValues" >> beam.Map(lambda e: e[1])
                       | "SumJoin" >> beam.combiners.ToList()
                       | "JoinTotals" >> beam.Map(_sum_counts))
        scored = rows | "Score" >> beam.ParDo(ScoreFn(spec, self.resolved, s),
                                              population=beam.pvalue.AsSingleton(population), plans=self.plans)
        results = (scored | "ScoresOnly" >> beam.Filter(lambda e: e[0] == "scores")
                   | "ScoreValues" >> beam.Map(lambda e: e[1])
                   | "ReferenceCounts" >> beam.CombinePerKey(combiners.ScoreCountsCombineFn(s.max_distinct_scores))
                   | "ReferenceMetrics" >> beam.ParDo(ReferenceResultFn(s)))
        if spec.per_example_dir:
            _ = scored | "WriteScores" >> beam.ParDo(WriteScoresFn(spec.per_example_dir, spec.model_key))
        k, md, resolved, model_key = self.info.k, self.info.metadata, self.resolved, spec.model_key
        info = (join_counts | "ReferenceInfo" >> beam.Map(
            lambda join, pop: (model_key, ("reference_info", reference_info(pop, join, resolved, k, md))),
            pop=beam.pvalue.AsSingleton(population)))
        return (results, info) | "ReferenceItems" >> beam.Flatten()


# ---------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------

def merge_reference_entries(results: Sequence[Mapping[str, Any]], entries: Sequence[Mapping[str, Any]]
                            ) -> List[Dict[str, Any]]:
    """The results' entries with the reference attacks' ``entries`` placed after the last entry of their slice
    (entries of slices absent from ``results`` at the end), each slice's entries in the given order."""
    by_slice: Dict[str, List[Dict[str, Any]]] = {}
    for entry in entries:
        by_slice.setdefault(json.dumps(entry["slice"], sort_keys=True), []).append(dict(entry))
    merged: List[Dict[str, Any]] = []
    for i, entry in enumerate(results):
        merged.append(dict(entry))
        key = json.dumps(entry["slice"], sort_keys=True)
        nxt = results[i + 1] if i + 1 < len(results) else None
        if nxt is None or json.dumps(nxt["slice"], sort_keys=True) != key:
            merged.extend(by_slice.pop(key, []))
    for rest in by_slice.values():
        merged.extend(rest)
    return merged


def add_reference_items(obj: Dict[str, Any], items: Sequence[Tuple], attacks: Sequence[str]) -> Dict[str, Any]:
    """A model's results object with the reference attacks' items of the pipeline (:data:`REFERENCE_ITEM_KINDS`)
    merged in: entries of the slices the results keep (attacks in ``attacks`` order), ``metadata.attacks``
    extended, ``metadata.reference_models`` set. Targets without reference signals are logged."""
    from privacy_audit.components.membership_inference import results as results_lib

    found = {(it[1], it[2]): it[3] for it in items if it[0] == "reference_result"}
    infos = [it[1] for it in items if it[0] == "reference_info"]
    kept = []
    for entry in obj["results"]:
        key = slice_key(entry["slice"])
        if key not in kept:
            kept.append(key)
    entries = [found[(key, a)] for key in kept for a in attacks if (key, a) in found]
    md = dict(obj["metadata"])
    md["attacks"] = list(md.get("attacks") or []) + [a for a in attacks if a not in (md.get("attacks") or [])]
    if infos:
        md["reference_models"] = infos[0]
        join = infos[0].get("join", {})
        if not infos[0].get("m"):
            raise ValueError(f"none of the audited examples has reference signals ({json.dumps(join)}): the references "
                             "were trained on other examples; retrain them on these Examples")
        if join.get("n_targets_without_references") or join.get("n_label_mismatches"):
            _LOG.warning("reference attacks: %d audited examples have no reference signals (not scored), %d labels "
                         "differ from the references' (%s)", join.get("n_targets_without_references", 0),
                         join.get("n_label_mismatches", 0), json.dumps(join))
    return results_lib.build_results(merge_reference_entries(obj["results"], entries), md,
                                     obj.get("skipped_slices", []))


def read_scores(directory: str) -> Dict[str, np.ndarray]:
    """The per-example scores :class:`WriteScoresFn` wrote under ``directory`` (every model), members first then
    non-members, each by example id (the in-driver path's order)."""
    from privacy_audit.components.common import io
    from privacy_audit.components.common.io import read_parquet

    paths = sorted(io.glob(io.join(directory, "*", "part-*.parquet")))
    if not paths:
        return {}
    import pyarrow as pa

    table = pa.concat_tables([read_parquet(p) for p in paths])
    cols = {name: table.column(name).to_numpy() for name in table.column_names}
    order = np.lexsort((cols["example_id"], ~cols["is_member"].astype(bool)))
    return {k: v[order] for k, v in cols.items()}
