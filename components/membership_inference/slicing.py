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
import json
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from privacy_audit.components.membership_inference.data import AttackInputs
from privacy_audit.components.membership_inference.records import FEATURE_PREFIX, n_rows

if TYPE_CHECKING:  # pragma: no cover
    from privacy_audit.components.membership_inference.combiners import ScoreHistogram

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


def json_value(v: Any) -> Any:
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


def slice_candidates(spec: SlicingSpec, *, n_classes: int, feature_values: Mapping[str, Any],
                     max_feature_values: int, n_members: int, n_nonmembers: int
                     ) -> Tuple[List[Tuple[Dict[str, Any], str, Any]], List[Dict[str, Any]]]:
    """Which slices ``spec`` asks for, in the order results list them: the one place that decides it, for the
    in-memory path (:func:`make_slices`) and the Beam path (``assemble.assemble_results``).

    Args:
      n_classes: classes of ``by_class=True`` (0..n_classes-1); a list in ``spec.by_class`` is used as given.
      feature_values: per slicing feature key, its distinct raw values (sorted), or the number of distinct
        values (an int) / None (unknown number) when there are more than ``max_feature_values``.
      n_members, n_nonmembers: for the skipped-feature entries.
    Returns ``(candidates, skipped)``: ``candidates`` are ``(slice description, kind, raw value)`` with kind
    ``all`` | ``class`` | ``decile`` | ``correct`` | ``feature:<key>``; ``skipped`` the feature keys with too
    many values.
    """
    out: List[Tuple[Dict[str, Any], str, Any]] = []
    skipped: List[Dict[str, Any]] = []
    if spec.entire_dataset:
        out.append(({"feature": "entire_dataset"}, "all", None))
    if spec.by_class is not False and spec.by_class is not None:
        classes = range(n_classes) if isinstance(spec.by_class, bool) else [int(c) for c in spec.by_class]
        out.extend(({"feature": "class", "value": int(c)}, "class", int(c)) for c in classes)
    if spec.by_percentiles:
        out.extend(({"feature": "loss_percentile", "value": f"{10 * k}-{10 * k + 10}"}, "decile", k)
                   for k in range(10))
    if spec.by_classification_correctness:
        out.extend(({"feature": "correctly_classified", "value": v}, "correct", v) for v in (True, False))
    for key in spec.feature_keys:
        values = feature_values.get(key)
        if values is None or isinstance(values, (int, np.integer)):
            reason = (f"feature has more than {max_feature_values} distinct values" if values is None else
                      f"feature has {int(values)} distinct values (more than {max_feature_values})")
            skipped.append({"slice": {"feature": key}, "n_members": int(n_members), "n_nonmembers": int(n_nonmembers),
                            "reason": reason})
            continue
        out.extend(({"feature": key, "value": json_value(v)}, f"feature:{key}", v) for v in values)
    return out, skipped


def too_small(desc: Mapping[str, Any], n_members: int, n_nonmembers: int, min_slice_size: int
              ) -> Optional[Dict[str, Any]]:
    """The skipped-slice entry of a slice with fewer than ``min_slice_size`` members or non-members, else None."""
    if n_members >= min_slice_size and n_nonmembers >= min_slice_size:
        return None
    short = []
    if n_members < min_slice_size:
        short.append(f"{n_members} members")
    if n_nonmembers < min_slice_size:
        short.append(f"{n_nonmembers} non-members")
    return {"slice": dict(desc), "n_members": int(n_members), "n_nonmembers": int(n_nonmembers),
            "reason": f"only {' and '.join(short)} (min_slice_size={min_slice_size})"}


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
    if spec.by_class is not False and spec.by_class is not None and not inputs.has_labels:
        raise ValueError("slicing by class needs labels (labels_train / labels_test)")
    sides: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}  # kind -> per-side values the slice selects on
    if spec.by_class is not False and spec.by_class is not None:
        sides["class"] = (inputs.labels("members"), inputs.labels("nonmembers"))
    if spec.by_percentiles:
        sides["decile"] = _percentile_bins(inputs.loss("members"), inputs.loss("nonmembers"))
    if spec.by_classification_correctness:
        pm, pn = inputs.predictions("members"), inputs.predictions("nonmembers")
        if pm is None or not inputs.has_labels:
            raise ValueError("slicing by classification correctness needs logits or probs and labels")
        sides["correct"] = (pm == inputs.labels("members"), pn == inputs.labels("nonmembers"))
    feature_values: Dict[str, Any] = {}
    for key in spec.feature_keys:
        fm, fn = inputs.features("members"), inputs.features("nonmembers")
        if key not in fm:
            raise ValueError(f"slicing by feature {key!r}: no such per-example feature "
                             f"(available: {sorted(fm) or 'none'})")
        values = np.unique(np.concatenate([fm[key], fn[key]]))
        feature_values[key] = values if values.size <= max_feature_values else int(values.size)
        sides[f"feature:{key}"] = (fm[key], fn[key])
    candidates, skipped = slice_candidates(spec, n_classes=inputs.num_classes or 0, feature_values=feature_values,
                                           max_feature_values=max_feature_values, n_members=nm, n_nonmembers=nn)
    selected: List[Tuple[Dict[str, Any], np.ndarray, np.ndarray]] = []
    for desc, kind, raw in candidates:
        if kind == "all":
            selected.append((desc, np.arange(nm), np.arange(nn)))
        else:
            vm, vn = sides[kind]
            selected.append((desc, np.flatnonzero(vm == raw), np.flatnonzero(vn == raw)))
    for name, (sel_m, sel_n) in (spec.custom or {}).items():
        selected.append(({"feature": "custom", "value": str(name)},
                         _indices(sel_m, nm, f"custom slice {name!r} members"),
                         _indices(sel_n, nn, f"custom slice {name!r} non-members")))

    slices: List[Slice] = []
    for desc, im, inn in selected:
        small = too_small(desc, int(im.size), int(inn.size), min_slice_size)
        if small is not None:
            skipped.append(small)
            continue
        slices.append(Slice(desc, im.astype(np.int64, copy=False), inn.astype(np.int64, copy=False)))
    return slices, skipped


# Slices of record batches (the Beam path; the same slices as make_slices)

def slice_key(spec: Mapping[str, Any]) -> str:
    """The canonical JSON text of a slice description (a hashable, deterministic Beam key)."""
    return json.dumps(dict(spec), sort_keys=True)


def decile_edges(hist: "ScoreHistogram") -> np.ndarray:
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
    n = n_rows(batch)
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
            yield {"feature": key, "value": json_value(v)}, values == v


