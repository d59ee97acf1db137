"""The reference signals file: what the ReferenceModelTrainer writes and membership inference reads
(:class:`ReferenceSignals`; scoring is in ``membership_inference.attacks.reference``).

The output is plain arrays: ``signals = {"logits": [K, M, C] float32}`` (every model's logits on the
whole population, in population order) and ``in_mask`` [K, M] bool. They can be written to one ``.npz``
(:func:`save_reference_signals`, read back with ``allow_pickle=False``) together with a JSON metadata
record: the recipe, the seed and a fingerprint of the population. With ``cache_path``,
:func:`train_reference_models` reuses a stored matrix whose fingerprint matches (same population,
recipe, seed, K and model architecture) instead of training again: scheduled re-audits of a model
retrained on the same data pay for the references once.

Beside the ``.npz``, the trainer writes the per-example signals the attacks use as Parquet keyed by example id
(:data:`SIGNALS_PARQUET_FILE`, :class:`SignalsParquetWriter`: one float per model and example for LiRA and for
RMIA, and the inclusion mask): the evaluator's Beam pipeline joins them with the target's records, so no process
holds the K x M x C logits. Files without it (older artifacts) are scored in the evaluator's driver from the
``.npz``; :func:`signals_parquet_from_file` derives the Parquet file from such an ``.npz``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from privacy_audit.components.common import io
from privacy_audit.components.common.layout import SIGNALS_FILE, SIGNALS_PARQUET_FILE  # noqa: F401


FORMAT_VERSION = 1


def sha1_to_id(sha1_hex: Sequence[str]) -> np.ndarray:
    """uint64 example ids from hex sha1 digests: the first 64 bits (the ``id``/``example_id`` of the
    evaluator's per-example records; ``examples.ids_from_hashes``)."""
    from privacy_audit.components.common.examples import ids_from_hashes

    return ids_from_hashes(sha1_hex)


def save_reference_signals(path: str, signals: Mapping[str, np.ndarray], in_mask: np.ndarray,
                           metadata: Optional[Mapping[str, Any]] = None,
                           examples: Optional[Mapping[str, np.ndarray]] = None) -> None:
    """Writes ``signals`` (e.g. {"logits": [K, M, C]}), ``in_mask`` [K, M] and JSON ``metadata`` to one
    uncompressed ``.npz`` (numeric and fixed-width string arrays only; readable with ``allow_pickle=False``).
    ``examples``: optional per-example columns [M] (e.g. ``{"sha1": [M] str, "label": [M] int}``), stored
    as ``example_<name>``. Written to a temporary name beside ``path`` and moved into place."""
    in_mask = np.asarray(in_mask, dtype=bool)
    arrays: Dict[str, np.ndarray] = {}
    for name, arr in (examples or {}).items():
        arr = np.asarray(arr)
        if arr.dtype == object:
            arr = arr.astype(str)
        if arr.shape != in_mask.shape[1:]:
            raise ValueError(f"example column {name!r} has shape {arr.shape}; expected [{in_mask.shape[1]}]")
        arrays[f"example_{name}"] = arr
    for name, arr in signals.items():
        arr = np.asarray(arr)
        if arr.dtype == object:
            raise ValueError(f"signal {name!r} must be numeric")
        if arr.shape[:2] != in_mask.shape:
            raise ValueError(f"signal {name!r} has shape {arr.shape}; its first axes must be in_mask's {in_mask.shape}")
        arrays[f"signal_{name}"] = arr
    arrays["in_mask"] = in_mask
    arrays["metadata_json"] = np.array(json.dumps(dict(metadata or {}), sort_keys=True, allow_nan=False))
    io.save_npz(path, arrays)


def load_reference_signals(path: str) -> Tuple[Dict[str, np.ndarray], np.ndarray, Dict[str, Any]]:
    """Reads a file written by :func:`save_reference_signals`: ``(signals, in_mask, metadata)``."""
    refs = load_reference_file(path)
    return {"logits": refs.logits, **refs.extra_signals}, refs.in_mask, refs.metadata


def load_reference_file(path: str) -> "ReferenceSignals":
    """Reads a file written by :func:`save_reference_signals` (with its per-example columns, if any)."""
    data = io.load_npz(path)
    if "in_mask" not in data or "metadata_json" not in data:
        raise ValueError(f"{path}: not a reference-signals file (needs in_mask and metadata_json)")
    signals = {n[len("signal_"):]: data[n] for n in data if n.startswith("signal_")}
    in_mask = data["in_mask"].astype(bool)
    metadata = json.loads(str(data["metadata_json"]))
    examples = {n[len("example_"):]: data[n] for n in data if n.startswith("example_")}
    if metadata.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {metadata.get('format_version')!r}")
    if "logits" not in signals:
        raise ValueError(f"{path}: no signal_logits array (the reference models' logits)")
    return ReferenceSignals(signals["logits"], in_mask, examples=examples, metadata=metadata,
                            extra_signals={k: v for k, v in signals.items() if k != "logits"})


@dataclasses.dataclass
class ReferenceSignals:
    """The reference models' outputs on a population of M examples.

    Attributes:
      logits: [K, M, C] float logits of the K reference models (or [K, M] for single-logit binary models).
      in_mask: [K, M] bool, True where example i was in reference model k's training set.
      examples: per-example columns [M] (e.g. ``sha1``: the hex sha1 of each serialized tf.Example).
      metadata: the training record (recipe, seed, K, ...).
      extra_signals: other [K, M, ...] arrays stored beside the logits.
    """
    logits: np.ndarray
    in_mask: np.ndarray
    examples: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)
    extra_signals: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.logits = np.asarray(self.logits)
        mask = np.asarray(self.in_mask)
        if self.logits.dtype == object or not np.issubdtype(self.logits.dtype, np.number):
            raise ValueError(f"ref_logits must be numeric, got dtype {self.logits.dtype}")
        if self.logits.ndim not in (2, 3) or self.logits.shape[0] < 1:
            raise ValueError(f"ref_logits must have shape [K, M, C] (K >= 1 reference models), got "
                             f"{list(self.logits.shape)}")
        if mask.shape != self.logits.shape[:2]:
            raise ValueError(f"ref_in_mask must have shape [K, M] = {list(self.logits.shape[:2])} like ref_logits, "
                             f"got {list(mask.shape)}")
        if mask.dtype != np.bool_:
            if not np.all(np.isin(mask, (0, 1))):
                raise ValueError("ref_in_mask must be boolean (or 0/1)")
            mask = mask.astype(bool)
        self.in_mask = mask
        if not np.all(np.isfinite(self.logits)):
            raise ValueError(f"ref_logits contain {int((~np.isfinite(self.logits)).sum())} non-finite values")
        for name, col in self.examples.items():
            if np.shape(col) != (self.m,):
                raise ValueError(f"reference example column {name!r} must have shape [{self.m}], got {np.shape(col)}")

    @property
    def k(self) -> int:
        return int(self.logits.shape[0])

    @property
    def m(self) -> int:
        return int(self.logits.shape[1])

    def take(self, idx: np.ndarray) -> "ReferenceSignals":
        """The columns ``idx`` (population order of the audit), every per-example column with them."""
        idx = np.asarray(idx)
        return ReferenceSignals(self.logits[:, idx], self.in_mask[:, idx],
                                {k: v[idx] for k, v in self.examples.items()}, dict(self.metadata),
                                {k: v[:, idx] for k, v in self.extra_signals.items()})

    def align(self, example_ids: Sequence[str], column: str = "sha1") -> "ReferenceSignals":
        """The columns for ``example_ids`` in their order (matched on the per-example column ``column``,
        e.g. the sha1 of each serialized example). ValueError naming how many are missing."""
        if column not in self.examples:
            raise ValueError(f"the reference signals have no per-example {column!r} column to align on")
        position = {str(v): i for i, v in enumerate(self.examples[column].tolist())}
        idx = np.fromiter((position.get(str(e), -1) for e in example_ids), dtype=np.int64, count=len(example_ids))
        missing = int((idx < 0).sum())
        if missing:
            raise ValueError(f"{missing} of {len(idx)} audited examples are not in the reference models' population "
                             "(the references were trained on other examples: retrain them on these Examples)")
        return self.take(idx)

    def summary(self) -> Dict[str, Any]:
        """JSON-ready description for results metadata."""
        return {"k": self.k, "m": self.m, "in_per_example_min": int(self.in_mask.sum(axis=0).min()),
                "in_per_example_max": int(self.in_mask.sum(axis=0).max()),
                **{key: self.metadata[key] for key in ("seed", "fraction", "recipe", "init")
                   if key in self.metadata}}


# ---------------------------------------------------------------------------------------------------------
# Per-example signals as Parquet: what the Beam reference attacks read (membership_inference.beam.reference)
# ---------------------------------------------------------------------------------------------------------

#: The Parquet file's key-value metadata entry holding ``{"format_version", "k", "metadata"}`` as JSON.
PARQUET_METADATA_KEY = b"privacy_audit.reference_signals"
#: Rows per Parquet row group (the Beam reader's unit of work).
PARQUET_ROW_GROUP_ROWS = 65536


def parquet_beside(npz_path: str) -> str:
    """The Parquet signals' path in the directory of a signals ``.npz`` (:data:`SIGNALS_PARQUET_FILE`)."""
    return io.join(io.dirname(npz_path), SIGNALS_PARQUET_FILE)


def example_signals(logits: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(lira, rmia)``, each [K, n] float64: the logit-scaled true-class confidence (LiRA's signal,
    computed stably from logits) and the true-class probability (RMIA's) of each model and example, from
    ``logits`` [K, n, C] (or [K, n] single logits of a binary model) and ``labels`` [n]; the same functions
    and arithmetic as the in-driver scoring (``attacks.reference.score_with_references``)."""
    from privacy_audit.components.membership_inference.attacks.signals import (
        logit_scaled_confidence, true_class_probability)

    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 2:  # single-logit binary models, as the in-driver path widens them
        z = np.stack([np.zeros_like(z), z], axis=-1)
    return logit_scaled_confidence(z, labels), true_class_probability(z, labels)


def _fixed_list(pa, matrix: np.ndarray):
    """[n, K] array → a FixedSizeList<K> column."""
    matrix = np.ascontiguousarray(matrix)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


class SignalsParquetWriter:
    """Writes the per-example reference signals as Parquet, one chunk of examples at a time (a chunk's signals
    are computed, written as one row group and dropped before the next: memory is one chunk's).

    Columns: ``id`` uint64 (the evaluator's example id), ``label`` int64, ``lira`` and ``rmia``
    FixedSizeList<float64>[K] (:func:`example_signals`), ``in_mask`` FixedSizeList<bool>[K] (reference model k
    trained on the example). The file's key-value metadata holds K and ``metadata`` (JSON). The file appears at
    ``path`` (atomically) when the ``with`` block ends without error.

        with SignalsParquetWriter(path, k, metadata) as w:
            w.write(logits_chunk [K, n, C], in_mask_chunk [K, n], ids [n], labels [n])
    """

    def __init__(self, path: str, k: int, metadata: Optional[Mapping[str, Any]] = None):
        import pyarrow as pa

        self.path = path
        self.k = int(k)
        self.rows = 0
        info = {"format_version": FORMAT_VERSION, "k": self.k, "metadata": dict(metadata or {})}
        self.schema = pa.schema(
            [("id", pa.uint64()), ("label", pa.int64()), ("lira", pa.list_(pa.float64(), self.k)),
             ("rmia", pa.list_(pa.float64(), self.k)), ("in_mask", pa.list_(pa.bool_(), self.k))],
            metadata={PARQUET_METADATA_KEY: json.dumps(info, sort_keys=True, allow_nan=False)})

    def __enter__(self) -> "SignalsParquetWriter":
        import pyarrow.parquet as pq

        self._local = io.local_file(self.path, ".parquet")
        tmp = self._local.__enter__()
        self._writer = pq.ParquetWriter(tmp, self.schema)
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()
        self._local.__exit__(*exc)

    def write(self, logits: np.ndarray, in_mask: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> None:
        """One row group: ``logits`` [K, n, C] (or [K, n]), ``in_mask`` [K, n], ``ids`` [n], ``labels`` [n]."""
        import pyarrow as pa

        logits, in_mask = np.asarray(logits), np.asarray(in_mask, dtype=bool)
        ids, labels = np.asarray(ids).astype(np.uint64), np.asarray(labels).astype(np.int64)
        n = ids.shape[0]
        if in_mask.shape != (self.k, n) or logits.shape[:2] != (self.k, n) or labels.shape != (n,):
            raise ValueError(f"reference signals: logits {logits.shape}, in_mask {in_mask.shape}, ids {ids.shape} and "
                             f"labels {labels.shape} must agree on K = {self.k} models and n = {n} examples")
        lira, rmia = example_signals(logits, labels)
        self._writer.write_table(pa.table(
            [pa.array(ids), pa.array(labels), _fixed_list(pa, lira.T), _fixed_list(pa, rmia.T),
             _fixed_list(pa, in_mask.T)], schema=self.schema), row_group_size=max(n, 1))
        self.rows += n


def write_signals_parquet(path: str, logits: np.ndarray, in_mask: np.ndarray, ids: np.ndarray,
                          labels: np.ndarray, metadata: Optional[Mapping[str, Any]] = None,
                          row_group_rows: int = PARQUET_ROW_GROUP_ROWS) -> int:
    """Writes the per-example reference signals of M examples as Parquet (:class:`SignalsParquetWriter`),
    ``row_group_rows`` examples per row group; returns the number of rows written.

    Args:
      path: the Parquet file (written atomically).
      logits: [K, M, C] (or [K, M]) reference logits; in_mask: [K, M] bool; ids: [M] uint64; labels: [M] int.
    """
    in_mask = np.asarray(in_mask, dtype=bool)
    k, m = in_mask.shape
    ids, labels = np.asarray(ids), np.asarray(labels)
    if np.shape(logits)[:2] != (k, m) or ids.shape != (m,) or labels.shape != (m,):
        raise ValueError(f"reference signals: logits {np.shape(logits)}, in_mask {in_mask.shape}, ids {ids.shape} and "
                         f"labels {labels.shape} must agree on K = {k} models and M = {m} examples")
    with SignalsParquetWriter(path, k, metadata) as writer:
        for start in range(0, m, row_group_rows):
            sl = slice(start, min(start + row_group_rows, m))
            writer.write(logits[:, sl], in_mask[:, sl], ids[sl], labels[sl])
    return m


def signals_parquet_from_file(npz_path: str, parquet_path: str) -> int:
    """Derives the Parquet signals of a reference-signals ``.npz`` (:func:`save_reference_signals`) that has
    per-example ``id`` (or ``sha1``) and ``label`` columns; returns the rows written. For artifacts written
    before the trainer wrote the Parquet file beside the ``.npz``."""
    refs = load_reference_file(npz_path)
    if "id" not in refs.examples and "sha1" in refs.examples:
        refs.examples["id"] = sha1_to_id(refs.examples["sha1"])
    missing = [c for c in ("id", "label") if c not in refs.examples]
    if missing:
        raise ValueError(f"{npz_path}: no per-example {missing} column(s): the Parquet signals need ids and labels")
    return write_signals_parquet(parquet_path, refs.logits, refs.in_mask, refs.examples["id"], refs.examples["label"],
                                 refs.metadata)


@dataclasses.dataclass(frozen=True)
class SignalsParquetInfo:
    """What a Parquet signals file holds: K, the training record, and its row groups (the Beam read units)."""

    path: str
    k: int
    metadata: Dict[str, Any]
    n_rows: int
    row_groups: int


def read_signals_parquet_info(path: str) -> SignalsParquetInfo:
    """Reads the footer of a file written by :func:`write_signals_parquet` (ValueError if it is not one)."""
    import pyarrow.parquet as pq

    with io.open(path, "rb") as f:
        meta = pq.ParquetFile(f).metadata
        kv = meta.metadata or {}
        if PARQUET_METADATA_KEY not in kv:
            raise ValueError(f"{path}: not a reference-signals Parquet file (no {PARQUET_METADATA_KEY.decode()} "
                             "metadata)")
        info = json.loads(kv[PARQUET_METADATA_KEY])
        if info.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported format_version {info.get('format_version')!r}")
        return SignalsParquetInfo(path, int(info["k"]), dict(info.get("metadata") or {}), int(meta.num_rows),
                                  int(meta.num_row_groups))


def read_signals_row_group(path: str, index: int) -> Dict[str, np.ndarray]:
    """One row group of a Parquet signals file as columns: ``id`` [n] uint64, ``label`` [n] int64, ``lira`` and
    ``rmia`` [K, n] float64 (C-contiguous, the in-driver layout), ``in_mask`` [K, n] bool."""
    import pyarrow.parquet as pq

    with io.open(path, "rb") as f:
        table = pq.ParquetFile(f).read_row_group(index)
    out: Dict[str, np.ndarray] = {"id": table.column("id").to_numpy().astype(np.uint64),
                                  "label": table.column("label").to_numpy().astype(np.int64)}
    for name in ("lira", "rmia", "in_mask"):
        col = table.column(name).combine_chunks()
        flat = col.flatten().to_numpy(zero_copy_only=False)
        out[name] = np.ascontiguousarray(flat.reshape(len(col), col.type.list_size).T)
    return out
