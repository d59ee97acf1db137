"""Sources of per-example record batches: :class:`ReadSavedOutputs` (the ``privacy-audit attack`` inputs:
``.npz``, wide or long Parquet; long Parquet is read in parallel, by row group, in record batches) and
:class:`ExamplesToOutputs` (TFX Examples and Keras models or SavedModel signatures: batched inference, each
model loaded once per worker process; records batched inside the file reader).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np

from privacy_audit.components.common.inference import DEFAULT_INFERENCE_BATCH, load_keras_model, predict_fixed_batches
from privacy_audit.components.membership_inference import data as data_lib
from privacy_audit.components.membership_inference.records import (
    DEFAULT_BATCH_ROWS, FEATURE_PREFIX, batches_from_attack_inputs, ids_from_values
)


_LONG_ALIASES = {"logits": "logits", "probs": "probs", "label": "label", "labels": "label", "loss": "loss",
                 "entropy": "entropy", "example_id": "id", "example_ids": "id"}


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
    member = data_lib.arrow_to_numpy(arrays[layout.membership], layout.membership, source)
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
        values = data_lib.arrow_to_numpy(arrays[name], name, source)
        cols[role] = ids_from_values(values) if role == "id" else values
    if "id" not in cols:
        cols["id"] = np.arange(row_offset, row_offset + rb.num_rows, dtype=np.uint64)
    for key in layout.feature_keys:
        cols[FEATURE_PREFIX + key] = data_lib.arrow_to_numpy(arrays[key], key, source)
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


def read_tfrecord_batches(path: str, batch_size: int) -> Iterator[List[bytes]]:
    """Serialized records of a GZIP TFRecord file, in lists of at most ``batch_size``."""
    import tensorflow as tf

    ds = tf.data.TFRecordDataset([path], compression_type="GZIP").batch(batch_size)
    for chunk in ds.as_numpy_iterator():
        yield list(chunk)


#: Records per batch read from a file and decoded at once: the columnar decoding and the bulk ids have a
#: fixed cost per call (~20 ms), so batches of a few hundred records (what BatchElements made) spent more
#: time there than in the model (measured: 200k examples x 2 models 75 s -> 46 s -> see the README).
READ_ROWS = 8192


class ReadTFRecordFileFn(beam.DoFn):
    """``(path, is_member)`` → lists of up to ``batch_size`` ``(is_member, serialized)`` records: batches are
    made in the reader (no Beam element per example), the files spread over the workers."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def process(self, element):
        path, is_member = element
        for chunk in read_tfrecord_batches(path, self.batch_size):
            yield [(is_member, s) for s in chunk]


class InferenceFn(beam.DoFn):
    """A list of ``(is_member, serialized tf.Example)`` → ``(model_key, batch)`` for each model.

    ``setup`` loads every model (once per worker process, :func:`load_keras_model`, or
    :func:`serving_model.load_serving_model` for a SavedModel signature); each batch is parsed once
    (``examples.parse_examples``; only labels, ids and slicing features when every model is a signature over
    serialized examples) and run through each model: ``predict_on_batch`` on the feature vector, or the
    signature on the serialized examples (its probabilities go in the ``probs`` column).
    """

    def __init__(self, models: Sequence[ModelToEvaluate], label_key: str, input_features: Sequence[str],
                 slice_feature_keys: Sequence[str], rows: int = DEFAULT_INFERENCE_BATCH):
        self.models = list(models)
        self.rows = int(rows)
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
                batch["logits"] = predict_fixed_batches(model, parsed.x, self.rows)
            else:
                batch["probs" if model.kind == "probabilities" else "logits"] = model(serialized)
            yield key, batch


class ExamplesToOutputs(beam.PTransform):
    """TFX Examples (members' and non-members' GZIP TFRecord files) and Keras models →
    ``PCollection[(model_key, batch)]`` of logits, labels, ids (sha1 of the serialized example) and
    slicing features.

    Batches of ``read_rows`` records are made inside the file reader (no Beam element per example, and no
    BatchElements, whose ``finish_bundle`` outputs some runners drop, like the Dask runner's); each is decoded
    once and run through the models in fixed batches of ``batch_size`` rows.
    """

    def __init__(self, members_files: Sequence[str], nonmembers_files: Sequence[str],
                 models: Sequence[ModelToEvaluate], label_key: str, input_features: Sequence[str],
                 slice_feature_keys: Sequence[str] = (), batch_size: int = DEFAULT_INFERENCE_BATCH,
                 read_rows: int = READ_ROWS):
        super().__init__()
        self.files = [(f, True) for f in members_files] + [(f, False) for f in nonmembers_files]
        self.models = list(models)
        self.label_key = label_key
        self.input_features = list(input_features)
        self.slice_feature_keys = list(slice_feature_keys)
        self.batch_size = int(batch_size)
        self.read_rows = max(int(read_rows), self.batch_size)

    def expand(self, pbegin):
        records = (pbegin | "Files" >> beam.Create(self.files, reshuffle=False)
                   | "SpreadFiles" >> beam.Reshuffle()
                   | "ReadRecords" >> beam.ParDo(ReadTFRecordFileFn(self.read_rows)))
        return records | "Inference" >> beam.ParDo(
            InferenceFn(self.models, self.label_key, self.input_features, self.slice_feature_keys,
                        self.batch_size))


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
