"""Slices: subsets of members and non-members on which attacks are run separately.

A slice is described in results by a JSON dict:
``{"feature": "entire_dataset"}``, ``{"feature": "class", "value": 3}``,
``{"feature": "loss_percentile", "value": "0-10"}``, ``{"feature": "correctly_classified", "value": true}``,
``{"feature": <feature key>, "value": v}`` or ``{"feature": "custom", "value": name}``.
Slices with fewer than ``min_slice_size`` members or non-members are skipped and reported with a reason.

Imports numpy only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from privacy_audit.components.membership_inference.data import AttackInputs

DEFAULT_MIN_SLICE_SIZE = 20
#: Slicing by a feature with more distinct values than this is refused (reported as skipped).
DEFAULT_MAX_FEATURE_VALUES = 100

#: Names accepted by :meth:`SlicingSpec.from_names` (and the CLI's ``--slicing``).
SLICING_NAMES = ("entire_dataset", "by_class", "by_percentiles", "by_classification_correctness")
_NAME_ALIASES = {"class": "by_class", "by_loss_percentiles": "by_percentiles", "percentiles": "by_percentiles",
                 "loss_percentile": "by_percentiles", "correctly_classified": "by_classification_correctness",
                 "by_correctness": "by_classification_correctness", "entire": "entire_dataset"}


@dataclasses.dataclass(frozen=True)
class SlicingSpec:
    """Which slices to attack.

    Attributes:
      entire_dataset: one slice with every example.
      by_class: one slice per true class 0..C-1 (True), or only the listed classes.
      by_percentiles: ten slices by deciles of the loss over members and non-members together
        ("0-10", ..., "90-100"). Unlike TF Privacy, whose decile slices include both boundary values and so
        can overlap, an example belongs to exactly one decile: [q_k, q_k+1), the last one closed.
      by_classification_correctness: a slice of correctly (argmax = label) and one of wrongly classified.
      feature_keys: one slice per distinct value of each named per-example feature (``features_*``).
      custom: ``{name: (member_indices, nonmember_indices)}`` (integer indices or boolean masks).
    """

    entire_dataset: bool = True
    by_class: Union[bool, Sequence[int]] = False
    by_percentiles: bool = False
    by_classification_correctness: bool = False
    feature_keys: Tuple[str, ...] = ()
    custom: Optional[Mapping[str, Tuple[Any, Any]]] = None

    @classmethod
    def from_names(cls, names: Iterable[str]) -> "SlicingSpec":
        """From CLI words: ``entire_dataset`` (always included), ``by_class``, ``by_percentiles``,
        ``by_classification_correctness``, ``feature:<key>``. Unknown names raise ValueError listing the
        accepted ones."""
        kwargs: Dict[str, Any] = {"entire_dataset": True}
        keys: List[str] = []
        for raw in names:
            name = raw.strip()
            if not name:
                continue
            if name.startswith("feature:") or name.startswith("feature="):
                key = name[len("feature:"):]
                if not key:
                    raise ValueError(f"slicing {raw!r}: give a feature key, e.g. feature:region")
                keys.append(key)
                continue
            name = _NAME_ALIASES.get(name, name)
            if name not in SLICING_NAMES:
                raise ValueError(f"unknown slicing {raw!r}; choose from {', '.join(SLICING_NAMES)} or "
                                 "feature:<key>")
            kwargs[name] = True
        if keys:
            kwargs["feature_keys"] = tuple(keys)
        return cls(**kwargs)

    def to_json(self) -> Dict[str, Any]:
        """A JSON-able description (custom slices by name only)."""
        by_class = self.by_class if isinstance(self.by_class, bool) else [int(c) for c in self.by_class]
        return {"entire_dataset": bool(self.entire_dataset), "by_class": by_class,
                "by_percentiles": bool(self.by_percentiles),
                "by_classification_correctness": bool(self.by_classification_correctness),
                "feature_keys": list(self.feature_keys), "custom": sorted(self.custom) if self.custom else []}


@dataclasses.dataclass
class Slice:
    """One slice: its JSON description and the member / non-member row indices (sorted int64)."""

    spec: Dict[str, Any]
    member_idx: np.ndarray
    nonmember_idx: np.ndarray

    @property
    def n_members(self) -> int:
        return int(self.member_idx.size)

    @property
    def n_nonmembers(self) -> int:
        return int(self.nonmember_idx.size)


def slice_name(spec: Mapping[str, Any]) -> str:
    """Short human-readable name: ``entire_dataset``, ``class=3``, ``loss_percentile=0-10``."""
    if spec.get("feature") == "entire_dataset":
        return "entire_dataset"
    value = spec.get("value")
    if isinstance(value, bool):
        value = str(value).lower()
    return f"{spec.get('feature')}={value}"


def _to_json_value(v: Any) -> Any:
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8", errors="replace")
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v)
    return str(v)


def _indices(sel: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(sel)
    if arr.dtype == np.bool_:
        if arr.shape != (n,):
            raise ValueError(f"{what}: boolean mask must have shape [{n}], got {arr.shape}")
        return np.flatnonzero(arr)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array of integer indices or a boolean mask")
    if arr.min() < 0 or arr.max() >= n:
        raise ValueError(f"{what}: indices must be in [0, {n}), got range [{arr.min()}, {arr.max()}]")
    return np.unique(arr.astype(np.int64))


def _percentile_bins(loss_m: np.ndarray, loss_n: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    pooled = np.concatenate([loss_m, loss_n])
    edges = np.percentile(pooled, np.arange(0, 101, 10))
    # bin k holds edges[k] <= loss < edges[k+1]; the maximum goes to the last bin.
    inner = edges[1:-1]
    return (np.searchsorted(inner, loss_m, side="right"), np.searchsorted(inner, loss_n, side="right"))


def make_slices(inputs: AttackInputs, spec: Optional[SlicingSpec] = None, *,
                min_slice_size: int = DEFAULT_MIN_SLICE_SIZE,
                max_feature_values: int = DEFAULT_MAX_FEATURE_VALUES
                ) -> Tuple[List[Slice], List[Dict[str, Any]]]:
    """The slices of ``inputs`` that ``spec`` asks for.

    Returns ``(slices, skipped)``: ``skipped`` lists ``{"slice": {...}, "n_members": int,
    "n_nonmembers": int, "reason": str}`` for slices with fewer than ``min_slice_size`` members or
    non-members (and for feature keys with too many distinct values).
    Raises ValueError when the spec needs data the inputs lack (labels for by_class, outputs for
    by_classification_correctness, an unknown feature key).
    """
    spec = spec or SlicingSpec()
    if min_slice_size < 1:
        raise ValueError(f"min_slice_size must be >= 1, got {min_slice_size}")
    nm, nn = inputs.n_members, inputs.n_nonmembers
    candidates: List[Tuple[Dict[str, Any], np.ndarray, np.ndarray]] = []
    skipped: List[Dict[str, Any]] = []

    if spec.entire_dataset:
        candidates.append(({"feature": "entire_dataset"}, np.arange(nm), np.arange(nn)))

    if spec.by_class is not False and spec.by_class is not None:
        if not inputs.has_labels:
            raise ValueError("slicing by class needs labels (labels_train / labels_test)")
        lm, ln = inputs.labels("members"), inputs.labels("nonmembers")
        if isinstance(spec.by_class, bool):
            classes: Iterable[int] = range(inputs.num_classes or 0)
        else:
            classes = [int(c) for c in spec.by_class]
        for c in classes:
            candidates.append(({"feature": "class", "value": int(c)},
                               np.flatnonzero(lm == c), np.flatnonzero(ln == c)))

    if spec.by_percentiles:
        bm, bn = _percentile_bins(inputs.loss("members"), inputs.loss("nonmembers"))
        for k in range(10):
            candidates.append(({"feature": "loss_percentile", "value": f"{10 * k}-{10 * k + 10}"},
                               np.flatnonzero(bm == k), np.flatnonzero(bn == k)))

    if spec.by_classification_correctness:
        pm, pn = inputs.predictions("members"), inputs.predictions("nonmembers")
        if pm is None or not inputs.has_labels:
            raise ValueError("slicing by classification correctness needs logits or probs and labels")
        cm = pm == inputs.labels("members")
        cn = pn == inputs.labels("nonmembers")
        for value in (True, False):
            candidates.append(({"feature": "correctly_classified", "value": value},
                               np.flatnonzero(cm == value), np.flatnonzero(cn == value)))

    for key in spec.feature_keys:
        fm, fn = inputs.features("members"), inputs.features("nonmembers")
        if key not in fm:
            raise ValueError(f"slicing by feature {key!r}: no such per-example feature "
                             f"(available: {sorted(fm) or 'none'})")
        vm, vn = fm[key], fn[key]
        values = np.unique(np.concatenate([vm, vn]))
        if values.size > max_feature_values:
            skipped.append({"slice": {"feature": key}, "n_members": nm, "n_nonmembers": nn,
                            "reason": f"feature has {values.size} distinct values (more than "
                                      f"{max_feature_values})"})
            continue
        for v in values:
            candidates.append(({"feature": key, "value": _to_json_value(v)},
                               np.flatnonzero(vm == v), np.flatnonzero(vn == v)))

    for name, (sel_m, sel_n) in (spec.custom or {}).items():
        candidates.append(({"feature": "custom", "value": str(name)},
                           _indices(sel_m, nm, f"custom slice {name!r} members"),
                           _indices(sel_n, nn, f"custom slice {name!r} non-members")))

    slices: List[Slice] = []
    for desc, im, inn in candidates:
        if im.size < min_slice_size or inn.size < min_slice_size:
            short = []
            if im.size < min_slice_size:
                short.append(f"{im.size} members")
            if inn.size < min_slice_size:
                short.append(f"{inn.size} non-members")
            skipped.append({"slice": desc, "n_members": int(im.size), "n_nonmembers": int(inn.size),
                            "reason": f"only {' and '.join(short)} (min_slice_size={min_slice_size})"})
            continue
        slices.append(Slice(desc, im.astype(np.int64, copy=False), inn.astype(np.int64, copy=False)))
    return slices, skipped
