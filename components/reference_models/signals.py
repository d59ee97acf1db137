"""The reference signals file: what the ReferenceModelTrainer writes and membership inference reads
(:class:`ReferenceSignals`; scoring is in ``membership_inference.attacks.reference``).

The output is plain arrays: ``signals = {"logits": [K, M, C] float32}`` (every model's logits on the
whole population, in population order) and ``in_mask`` [K, M] bool. They can be written to one ``.npz``
(:func:`save_reference_signals`, read back with ``allow_pickle=False``) together with a JSON metadata
record: the recipe, the seed and a fingerprint of the population. With ``cache_path``,
:func:`train_reference_models` reuses a stored matrix whose fingerprint matches (same population,
recipe, seed, K and model architecture) instead of training again: scheduled re-audits of a model
retrained on the same data pay for the references once.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from privacy_audit.components.common import io
from privacy_audit.components.common.layout import SIGNALS_FILE  # noqa: F401 (its name in a ReferenceModels)


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
