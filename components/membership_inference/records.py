"""The per-example record: the one data model of membership inference, in column batches.

A record batch is a ``dict`` of numpy arrays, one row per example (never one Python object per example):

    id          uint64  example id: the first 64 bits of examples.example_digest(serialized tf.Example), the given
                        ``example_id`` (integers as is, strings hashed), or the row number in the input
    is_member   bool
    label       int64   (optional when a loss is given)
    logits | probs      [n, C] (or [n] for single-logit binary models)   (optional when a loss is given)
    loss, entropy       float64, given by the input (optional)
    f:<key>             value of the slicing feature <key>

and, after :func:`prepare_batch`: ``xent`` (the cross-entropy loss used by ``threshold``), ``mentr`` (modified
entropy, when ``threshold_entropy`` is asked for), ``prediction`` and ``correct``.
:func:`batches_from_attack_inputs` turns in-memory :class:`data.AttackInputs` into such batches. No Beam here.
"""
from __future__ import annotations

import hashlib
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from privacy_audit.components.membership_inference import data as data_lib


FEATURE_PREFIX = "f:"
DEFAULT_BATCH_ROWS = 65536
_SIDE_NAMES = {True: "members", False: "nonmembers"}


def n_rows(batch: Mapping[str, np.ndarray]) -> int:
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


def output_column(batch: Mapping[str, np.ndarray]) -> Tuple[Optional[str], Optional[np.ndarray]]:
    for kind in ("logits", "probs"):
        if kind in batch:
            return kind, batch[kind]
    return None, None


def n_classes(outputs: np.ndarray) -> int:
    return 2 if outputs.ndim == 1 or outputs.shape[1] == 1 else int(outputs.shape[1])


def predictions(kind: str, outputs: np.ndarray) -> np.ndarray:
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
    n = n_rows(batch)
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

    kind, outputs = output_column(batch)
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
            labels = data_lib.integer_labels(labels, "labels")
        labels = labels.astype(np.int64, copy=False)
        batch["label"] = labels
        hi = n_classes(outputs) if outputs is not None else None
        out_of_range = (labels < 0) if hi is None else ((labels < 0) | (labels >= hi))
        if out_of_range.any():
            count("label", f"outside [0, {hi})" if hi else "negative", out_of_range.astype(np.int64),
                  out_of_range)
            bad |= out_of_range
    if bad.any():
        batch = take_rows(batch, ~bad)
        member = batch["is_member"]
        kind, outputs = output_column(batch)

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
        batch["prediction"] = predictions(kind, outputs)
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
        stats["max:n_classes"] = n_classes(outputs)
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

