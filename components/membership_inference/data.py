"""Attack inputs: the model's outputs on members (training set) and non-members (held-out set).

Everything an attack needs is per example: logits or probabilities ``[N, C]`` (or ``[N]`` / ``[N, 1]``
for a single-logit binary model), integer labels ``[N]``, or directly a loss ``[N]``. Optional per-example
extras: a precomputed entropy, a sample weight, an example id/hash (to detect an example present on both
sides), and slicing features (``dict name -> [N]`` array).

File layouts read by :meth:`AttackInputs.from_npz` and :meth:`AttackInputs.from_parquet` use TF Privacy's
names, where ``train`` means members and ``test`` means non-members: ``logits_train``, ``logits_test`` (or
``probs_*``), ``labels_train``, ``labels_test``, or ``loss_train``, ``loss_test``.

This module imports numpy only (pyarrow lazily, for Parquet).
"""

from __future__ import annotations

import dataclasses
import zipfile
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from privacy_audit.components.common.losses import (  # noqa: F401 (part of this module's API)
    MIN_PROB, InputValidationError, as_2d_logits, as_2d_probs, check_labels_for, cross_entropy_from_logits,
    cross_entropy_from_probs, integer_labels, log_softmax, modified_entropy, modified_entropy_from_log_probs,
    modified_entropy_from_logits, prediction_entropy, softmax)

SIDES = ("members", "nonmembers")
_FILE_SUFFIX = {"members": "train", "nonmembers": "test"}


# ---------------------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------------------

def _check_finite(arr: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        n_nan = int(np.isnan(arr).sum())
        raise InputValidationError(
            f"{name} contains {int(bad.sum())} non-finite values ({n_nan} NaN, {int(bad.sum()) - n_nan} inf) "
            f"out of {arr.size}")


def _float_array(value, name: str) -> Optional[np.ndarray]:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputValidationError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    _check_finite(arr, name)
    return arr


def _vector(value, name: str) -> Optional[np.ndarray]:
    arr = _float_array(value, name)
    if arr is None:
        return None
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise InputValidationError(f"{name} must have shape [N], got {arr.shape}")
    return arr


# ---------------------------------------------------------------------------------------------------------
# AttackInputs
# ---------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class AttackInputs:
    """Model outputs on members and non-members (members = the model's training examples).

    Give, for both sides, either ``logits_*`` or ``probs_*`` (shape [N, C], or [N] / [N, 1] for a single-
    logit binary model) together with ``labels_*`` ([N] ints in [0, C)), or ``loss_*`` ([N]); or several.
    A given loss takes precedence over one derived from outputs. Optional per-example arrays:
    ``entropy_*`` (used by ``threshold_entropy`` instead of the modified entropy derived from outputs),
    ``sample_weight_*`` (>= 0), ``example_ids_*`` (ids or content hashes; used to count examples present on
    both sides) and ``features_*`` (``{name: [N] array}`` for slicing by feature value).

    Arrays are validated and converted (float64 / int64) on construction; errors are
    :class:`InputValidationError` (a ``ValueError``) naming the array. Derived quantities are cached.
    """

    logits_members: Optional[np.ndarray] = None
    logits_nonmembers: Optional[np.ndarray] = None
    probs_members: Optional[np.ndarray] = None
    probs_nonmembers: Optional[np.ndarray] = None
    labels_members: Optional[np.ndarray] = None
    labels_nonmembers: Optional[np.ndarray] = None
    loss_members: Optional[np.ndarray] = None
    loss_nonmembers: Optional[np.ndarray] = None
    entropy_members: Optional[np.ndarray] = None
    entropy_nonmembers: Optional[np.ndarray] = None
    sample_weight_members: Optional[np.ndarray] = None
    sample_weight_nonmembers: Optional[np.ndarray] = None
    example_ids_members: Optional[np.ndarray] = None
    example_ids_nonmembers: Optional[np.ndarray] = None
    features_members: Optional[Dict[str, np.ndarray]] = None
    features_nonmembers: Optional[Dict[str, np.ndarray]] = None
    _cache: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict, init=False, repr=False,
                                                      compare=False)

    def __post_init__(self) -> None:
        self._validate()

    # -- validation --------------------------------------------------------------------------------------
    def _pair(self, kind: str) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        return getattr(self, f"{kind}_members"), getattr(self, f"{kind}_nonmembers")

    def _validate(self) -> None:
        """Checks and normalises the arrays; InputValidationError names the first problem."""
        self._check_pairs()
        for side in SIDES:
            self._normalise_side(side)
        self._check_shapes()
        self._check_label_range()

    def _check_pairs(self) -> None:
        """Each kind of array is given for both sides or neither; logits or probs, not both."""
        for kind in ("logits", "probs", "labels", "loss", "entropy", "sample_weight", "example_ids",
                     "features"):
            m, n = self._pair(kind)
            if (m is None) != (n is None):
                given, missing = ("members", "nonmembers") if m is not None else ("nonmembers", "members")
                raise InputValidationError(
                    f"{kind}_{given} is set but {kind}_{missing} is not: give both sides or neither")
        if self.logits_members is not None and self.probs_members is not None:
            raise InputValidationError("give logits or probs, not both")

    def _normalise_side(self, side: str) -> None:
        """One side's arrays as numpy arrays of the expected dtype and rank."""
        for kind in ("logits", "probs"):
            name = f"{kind}_{side}"
            arr = _float_array(getattr(self, name), name)
            if arr is not None:
                if arr.ndim == 2 and arr.shape[1] == 1:
                    arr = arr[:, 0]
                if arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[1] < 2):
                    raise InputValidationError(
                        f"{name} must have shape [N, C] (C >= 2) or [N], got {arr.shape}")
                if kind == "probs" and ((arr < 0).any() or (arr > 1).any()):
                    bad = int(((arr < 0) | (arr > 1)).sum())
                    raise InputValidationError(f"{name}: {bad} values outside [0, 1]")
            setattr(self, name, arr)
        for kind in ("loss", "entropy", "sample_weight"):
            name = f"{kind}_{side}"
            setattr(self, name, _vector(getattr(self, name), name))
        w = getattr(self, f"sample_weight_{side}")
        if w is not None and (w < 0).any():
            raise InputValidationError(f"sample_weight_{side}: {int((w < 0).sum())} negative weights")
        labels = getattr(self, f"labels_{side}")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim != 1:
                raise InputValidationError(f"labels_{side} must have shape [N], got {labels.shape}")
            setattr(self, f"labels_{side}", integer_labels(labels, f"labels_{side}"))
        ids = getattr(self, f"example_ids_{side}")
        if ids is not None:
            ids = np.asarray(ids)
            if ids.ndim != 1:
                raise InputValidationError(f"example_ids_{side} must have shape [N], got {ids.shape}")
            setattr(self, f"example_ids_{side}", ids)
        feats = getattr(self, f"features_{side}")
        if feats is not None:
            if not isinstance(feats, Mapping):
                raise InputValidationError(f"features_{side} must be a dict name -> [N] array")
            setattr(self, f"features_{side}", {str(k): np.asarray(v) for k, v in feats.items()})

    def _check_shapes(self) -> None:
        """Both sides' outputs have the same classes; every per-example array on a side has the same length."""
        outputs_m, outputs_n = self.outputs_members, self.outputs_nonmembers
        if outputs_m is not None:
            cm = 2 if outputs_m.ndim == 1 else outputs_m.shape[1]
            cn = 2 if outputs_n.ndim == 1 else outputs_n.shape[1]
            if outputs_m.ndim != outputs_n.ndim or cm != cn:
                kind = "logits" if self.logits_members is not None else "probs"
                raise InputValidationError(
                    f"{kind}_members and {kind}_nonmembers disagree on the number of classes: "
                    f"shapes {outputs_m.shape} and {outputs_n.shape}")
        # Outputs without labels are valid (as in TF Privacy): the trained attacks and threshold_entropy
        # run on them; attacks that need labels say so when asked for.
        if self.loss_members is None and outputs_m is None and self.entropy_members is None:
            raise InputValidationError(
                "attack inputs need logits_*/probs_* (labels_* optional), or loss_* (or entropy_*)")

        # Lengths: every per-example array on a side must agree.
        for side in SIDES:
            lengths = {}
            for kind in ("logits", "probs", "labels", "loss", "entropy", "sample_weight", "example_ids"):
                arr = getattr(self, f"{kind}_{side}")
                if arr is not None:
                    lengths[f"{kind}_{side}"] = arr.shape[0]
            for key, arr in (getattr(self, f"features_{side}") or {}).items():
                if arr.ndim != 1:
                    raise InputValidationError(f"features_{side}[{key!r}] must have shape [N], got {arr.shape}")
                lengths[f"features_{side}[{key!r}]"] = arr.shape[0]
            if len(set(lengths.values())) > 1:
                desc = ", ".join(f"{k}: {v}" for k, v in lengths.items())
                raise InputValidationError(f"length mismatch among the {side}' arrays ({desc})")
            n = next(iter(lengths.values()))
            if n == 0:
                which = ", ".join(lengths)
                raise InputValidationError(
                    f"no {side}: {which} {'is' if len(lengths) == 1 else 'are'} empty "
                    f"({'train' if side == 'members' else 'test'} side)")

        fm, fn = self.features_members, self.features_nonmembers
        if fm is not None and set(fm) != set(fn):
            raise InputValidationError(
                f"features_members and features_nonmembers have different keys: {sorted(fm)} vs {sorted(fn)}")

    def _check_label_range(self) -> None:
        """Labels within the outputs' classes (or at least non-negative without outputs)."""
        outputs_m = self.outputs_members
        if self.labels_members is not None and outputs_m is not None:
            c = self.num_classes
            for side in SIDES:
                labels = getattr(self, f"labels_{side}")
                bad = (labels < 0) | (labels >= c)
                if bad.any():
                    raise InputValidationError(
                        f"labels_{side}: {int(bad.sum())} values outside [0, {c}) (the outputs have {c} classes); "
                        f"e.g. {labels[bad][:5].tolist()}")
        elif self.labels_members is not None:
            for side in SIDES:
                labels = getattr(self, f"labels_{side}")
                if (labels < 0).any():
                    raise InputValidationError(f"labels_{side}: {int((labels < 0).sum())} negative values")

    # -- basic properties --------------------------------------------------------------------------------
    @property
    def outputs_members(self) -> Optional[np.ndarray]:
        return self.logits_members if self.logits_members is not None else self.probs_members

    @property
    def outputs_nonmembers(self) -> Optional[np.ndarray]:
        return self.logits_nonmembers if self.logits_nonmembers is not None else self.probs_nonmembers

    @property
    def has_outputs(self) -> bool:
        return self.outputs_members is not None

    @property
    def has_labels(self) -> bool:
        return self.labels_members is not None

    @property
    def n_members(self) -> int:
        return int(self._length("members"))

    @property
    def n_nonmembers(self) -> int:
        return int(self._length("nonmembers"))

    def _length(self, side: str) -> int:
        for kind in ("loss", "logits", "probs", "labels", "entropy"):
            arr = getattr(self, f"{kind}_{side}")
            if arr is not None:
                return arr.shape[0]
        raise AssertionError("validated inputs always have a per-example array")

    @property
    def num_classes(self) -> Optional[int]:
        """C from the outputs' shape (2 for single-logit outputs), else max label + 1, else None."""
        out = self.outputs_members
        if out is not None:
            return 2 if out.ndim == 1 else int(out.shape[1])
        if self.labels_members is not None:
            return int(max(self.labels_members.max(), self.labels_nonmembers.max())) + 1
        return None

    @property
    def feature_keys(self) -> Tuple[str, ...]:
        return tuple(sorted(self.features_members)) if self.features_members else ()

    # -- derived per-example quantities (cached) -------------------------------------------------------
    def _cached(self, key: str, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def log_probs(self, side: str) -> Optional[np.ndarray]:
        """[N, C] log-probabilities for ``side`` ('members' or 'nonmembers'), None without outputs."""
        _check_side(side)

        def compute():
            if getattr(self, f"logits_{side}") is not None:
                return log_softmax(getattr(self, f"logits_{side}"))
            if getattr(self, f"probs_{side}") is not None:
                return np.log(np.maximum(as_2d_probs(getattr(self, f"probs_{side}")), MIN_PROB))
            return None
        return self._cached(f"log_probs_{side}", compute)

    def probs(self, side: str) -> Optional[np.ndarray]:
        """[N, C] probabilities (softmax of logits, or the given probs as [N, C]), None without outputs."""
        _check_side(side)

        def compute():
            if getattr(self, f"probs_{side}") is not None:
                return as_2d_probs(getattr(self, f"probs_{side}"))
            lp = self.log_probs(side)
            return None if lp is None else np.exp(lp)
        return self._cached(f"probs_{side}", compute)

    def loss(self, side: str) -> np.ndarray:
        """[N] cross-entropy loss: the given ``loss_*``, else computed from logits (stable log-softmax) or
        probs (clipped). Raises InputValidationError when neither is available."""
        _check_side(side)

        def compute():
            given = getattr(self, f"loss_{side}")
            if given is not None:
                return given
            labels = getattr(self, f"labels_{side}")
            if labels is None or not self.has_outputs:
                raise InputValidationError(
                    "the loss threshold attack (and loss-based slicing) needs labels: give labels_train/"
                    "labels_test with the logits/probs, or loss_*; without labels use the trained attacks "
                    "(logistic_regression, mlp, random_forest, knn) or threshold_entropy")
            if getattr(self, f"logits_{side}") is not None:
                # Same numbers as cross_entropy_from_logits, reusing the cached log-softmax.
                lsm = self.log_probs(side)
                return 0.0 - lsm[np.arange(lsm.shape[0]), labels]
            return cross_entropy_from_probs(getattr(self, f"probs_{side}"), labels)
        return self._cached(f"loss_{side}", compute)

    def entropy(self, side: str) -> np.ndarray:
        """[N] modified entropy (Song & Mittal): the given ``entropy_*``, else computed from the outputs and
        labels; without labels, the Shannon entropy of the prediction (TF Privacy's label-free entropy).
        Raises InputValidationError when there are no outputs and no given entropy."""
        _check_side(side)
        return self._cached(f"entropy_{side}", lambda: self._entropy_of(side, slice(None)))

    def entropy_rows(self, side: str, rows: slice) -> np.ndarray:
        """:meth:`entropy` of a block of the side's rows: the same values, computed for those rows alone (and
        not cached) unless the whole side's are already known."""
        _check_side(side)
        cached = self._cache.get(f"entropy_{side}")
        return cached[rows] if cached is not None else self._entropy_of(side, rows)

    def _entropy_of(self, side: str, rows: slice) -> np.ndarray:
        given = getattr(self, f"entropy_{side}")
        if given is not None:
            return given[rows]
        labels = getattr(self, f"labels_{side}")
        if not self.has_outputs:
            raise InputValidationError("threshold_entropy needs entropy_* or logits/probs")
        if labels is None:
            return prediction_entropy(self.log_probs(side)[rows])
        if getattr(self, f"logits_{side}") is not None:
            return modified_entropy_from_log_probs(self.log_probs(side)[rows], labels[rows])
        return modified_entropy(getattr(self, f"probs_{side}")[rows], labels[rows])

    def predictions(self, side: str) -> Optional[np.ndarray]:
        """[N] argmax class of the outputs (ties → lowest class), None without outputs."""
        _check_side(side)
        out = getattr(self, f"logits_{side}")
        if out is not None:
            return self._cached(f"pred_{side}", lambda: np.argmax(as_2d_logits(out), axis=1))
        out = getattr(self, f"probs_{side}")
        if out is not None:
            return self._cached(f"pred_{side}", lambda: np.argmax(as_2d_probs(out), axis=1))
        return None

    def accuracy(self, side: str) -> Optional[float]:
        """Fraction of ``side`` classified correctly (sample weights ignored); None without outputs/labels."""
        pred = self.predictions(side)
        labels = getattr(self, f"labels_{side}")
        if pred is None or labels is None:
            return None
        return float(np.mean(pred == labels))

    def sample_weight(self, side: str) -> Optional[np.ndarray]:
        _check_side(side)
        return getattr(self, f"sample_weight_{side}")

    def labels(self, side: str) -> Optional[np.ndarray]:
        _check_side(side)
        return getattr(self, f"labels_{side}")

    def features(self, side: str) -> Dict[str, np.ndarray]:
        _check_side(side)
        return getattr(self, f"features_{side}") or {}

    def count_duplicates(self) -> Optional[int]:
        """Number of distinct example ids present among both members and non-members (None without ids).
        Such examples make the attack's task ill-posed: a member cannot also be a non-member."""
        if self.example_ids_members is None:
            return None
        a, b = self.example_ids_members, self.example_ids_nonmembers
        if a.dtype.kind != b.dtype.kind:
            a, b = a.astype(str), b.astype(str)
        return int(np.intersect1d(a, b).size)

    def subset(self, member_idx: np.ndarray, nonmember_idx: np.ndarray) -> "AttackInputs":
        """A new AttackInputs with only the given member and non-member rows (integer indices or masks)."""
        kwargs = {}
        for field in dataclasses.fields(self):
            if not field.init:
                continue
            value = getattr(self, field.name)
            if value is None:
                kwargs[field.name] = None
                continue
            idx = member_idx if field.name.endswith("_members") else nonmember_idx
            if isinstance(value, dict):
                kwargs[field.name] = {k: v[idx] for k, v in value.items()}
            else:
                kwargs[field.name] = value[idx]
        return AttackInputs(**kwargs)

    # -- files ------------------------------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], source: str = "input") -> "AttackInputs":
        """Build from TF Privacy style names (``*_train`` = members, ``*_test`` = non-members).

        Recognised keys: ``logits_*``, ``probs_*``, ``labels_*``, ``loss_*``, ``entropy_*``,
        ``sample_weight_*``, ``example_ids_*`` (alias ``ids_*``), and ``feature_<name>_*`` for slicing
        features. Keys starting with ``ref_`` (reference models' signals, read by
        :func:`api.load_references`) are left out. Unknown keys are an error (they are usually a typo).
        """
        kwargs: Dict[str, object] = {}
        feats: Dict[str, Dict[str, np.ndarray]] = {"members": {}, "nonmembers": {}}
        unknown = []
        for key, value in arrays.items():
            if key.startswith("ref_"):
                continue
            if key.endswith("_train"):
                side, base = "members", key[: -len("_train")]
            elif key.endswith("_test"):
                side, base = "nonmembers", key[: -len("_test")]
            else:
                unknown.append(key)
                continue
            if base == "ids":
                base = "example_ids"
            if base.startswith("feature_") and len(base) > len("feature_"):
                feats[side][base[len("feature_"):]] = np.asarray(value)
            elif base in ("logits", "probs", "labels", "loss", "entropy", "sample_weight", "example_ids"):
                kwargs[f"{base}_{side}"] = np.asarray(value)
            else:
                unknown.append(key)
        if unknown:
            raise InputValidationError(
                f"{source}: unrecognised keys {sorted(unknown)}; expected logits_train/logits_test (or probs_*), "
                "labels_*, loss_*, entropy_*, sample_weight_*, example_ids_*, feature_<name>_*")
        if not kwargs:
            raise InputValidationError(
                f"{source}: no attack inputs found; expected logits_train/logits_test (or probs_*) with "
                "labels_train/labels_test, or loss_train/loss_test")
        if feats["members"] or feats["nonmembers"]:
            kwargs["features_members"] = feats["members"]
            kwargs["features_nonmembers"] = feats["nonmembers"]
        try:
            return cls(**kwargs)
        except InputValidationError as e:
            raise InputValidationError(f"{source}: {_file_names(str(e))}") from None

    @classmethod
    def from_npz(cls, path: str) -> "AttackInputs":
        """Read a ``.npz`` file (``np.savez``) with the keys of :meth:`from_arrays`. No pickle is allowed."""
        from privacy_audit.components.common import io

        if not io.exists(path):
            raise FileNotFoundError(f"input file not found: {path}")
        try:
            arrays = io.load_npz(path)
        except ValueError as e:
            # np.load says "pickled data" both for object arrays and for files that are no .npz at all.
            raise InputValidationError(
                f"{path}: not an .npz archive of numeric arrays; pickled objects are refused ({e})") from None
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise InputValidationError(f"{path}: not a readable .npz file ({e})") from None
        return cls.from_arrays(arrays, source=path)

    @classmethod
    def from_parquet(cls, path: str) -> "AttackInputs":
        """Read a Parquet file in one of two layouts.

        Long layout (one row per example): a membership column ``is_member`` (bool/0-1) or ``split``
        (``"train"``/``"test"``), and columns ``logits`` or ``probs`` (list of floats per row, or a single
        float for single-logit models), ``label`` (or ``labels``), ``loss``, optional ``entropy``,
        ``sample_weight``, ``example_id``; every other scalar column is a slicing feature.

        Wide layout: columns named as in :meth:`from_arrays` (``logits_train``, ``loss_test``, ...); the
        shorter side is padded with trailing nulls, which are dropped.
        """
        from privacy_audit.components.common import io

        if not io.exists(path):
            raise FileNotFoundError(f"input file not found: {path}")
        try:
            table = io.read_parquet(path)
        except Exception as e:  # pyarrow raises several types (ArrowInvalid, OSError)
            raise InputValidationError(f"{path}: not a readable Parquet file ({e})") from None
        names = table.column_names
        if "is_member" in names or "split" in names:
            return cls._from_long_table(table, path)
        arrays = {}
        for name in names:
            col = table.column(name).combine_chunks()
            valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            n_valid = int(valid.sum())
            if n_valid and not valid[:n_valid].all():
                raise InputValidationError(f"{path}: column {name} has nulls before its last value")
            arrays[name] = arrow_to_numpy(col.slice(0, n_valid), name, path)
        return cls.from_arrays(arrays, source=path)

    @classmethod
    def _from_long_table(cls, table, path: str) -> "AttackInputs":
        names = table.column_names
        if "is_member" in names:
            member_col = arrow_to_numpy(table.column("is_member").combine_chunks(), "is_member", path)
            if member_col.dtype.kind in "OUS":
                raise InputValidationError(f"{path}: is_member must be bool or 0/1")
            is_member = member_col.astype(bool)
        else:
            split = arrow_to_numpy(table.column("split").combine_chunks(), "split", path).astype(str)
            bad = ~np.isin(split, ["train", "test"])
            if bad.any():
                raise InputValidationError(
                    f"{path}: column split must hold 'train' or 'test'; found {sorted(set(split[bad]))[:5]}")
            is_member = split == "train"
        aliases = {"logits": "logits", "probs": "probs", "label": "labels", "labels": "labels", "loss": "loss",
                   "entropy": "entropy", "sample_weight": "sample_weight", "example_id": "example_ids",
                   "example_ids": "example_ids"}
        arrays: Dict[str, np.ndarray] = {}
        for name in names:
            if name in ("is_member", "split"):
                continue
            values = arrow_to_numpy(table.column(name).combine_chunks(), name, path)
            base = aliases.get(name, f"feature_{name}")
            arrays[f"{base}_train"] = values[is_member]
            arrays[f"{base}_test"] = values[~is_member]
        return cls.from_arrays(arrays, source=path)


def _check_side(side: str) -> None:
    if side not in SIDES:
        raise ValueError(f"side must be 'members' or 'nonmembers', got {side!r}")


def _file_names(message: str) -> str:
    """Rewrites internal names (logits_members) into the file's names (logits_train) in an error message."""
    for side, suffix in _FILE_SUFFIX.items():
        for kind in ("logits", "probs", "labels", "loss", "entropy", "sample_weight", "example_ids", "features"):
            message = message.replace(f"{kind}_{side}", f"{kind}_{suffix}")
    return message


def arrow_to_numpy(col, name: str, path: str) -> np.ndarray:
    import pyarrow as pa

    if col.null_count:
        raise InputValidationError(f"{path}: column {name} has {col.null_count} null values")
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        n = len(col)
        if pa.types.is_fixed_size_list(col.type):
            width = col.type.list_size
            flat = col.flatten().to_numpy(zero_copy_only=False)
        else:
            offsets = col.offsets.to_numpy()
            lengths = np.diff(offsets)
            if n and not (lengths == lengths[0]).all():
                raise InputValidationError(
                    f"{path}: column {name} has rows of different lengths ({lengths.min()}..{lengths.max()})")
            width = int(lengths[0]) if n else 0
            flat = col.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(flat).reshape(n, width)
    return np.asarray(col.to_numpy(zero_copy_only=False))


def synthetic_inputs(n_members: int, n_nonmembers: Optional[int] = None, n_classes: int = 10, *,
                     gap: float = 1.0, seed: int = 0, noise_scale: float = 2.0, true_class_mean: float = 2.0,
                     true_class_sd: float = 1.5, decimals: Optional[int] = None,
                     dtype=np.float64) -> AttackInputs:
    """Seeded synthetic model outputs with a member/non-member gap, for tests, benchmarks and demos.

    Labels are uniform over ``n_classes``; logits are N(0, noise_scale^2) plus, on the true class,
    N(true_class_mean + gap, true_class_sd^2) for members and N(true_class_mean, true_class_sd^2) for
    non-members, so members have lower losses, like the training set of an over-fitted model (gap = 0:
    no leakage). ``decimals`` rounds the logits (to create tied losses).
    """
    rng = np.random.default_rng(seed)
    n_nonmembers = n_members if n_nonmembers is None else n_nonmembers

    def side(n: int, boost: float):
        labels = rng.integers(0, n_classes, n)
        logits = rng.normal(0.0, noise_scale, (n, n_classes))
        logits[np.arange(n), labels] += rng.normal(true_class_mean + boost, true_class_sd, n)
        if decimals is not None:
            logits = np.round(logits, decimals)
        return logits.astype(dtype), labels

    lm, ym = side(n_members, gap)
    ln, yn = side(n_nonmembers, 0.0)
    return AttackInputs(logits_members=lm, labels_members=ym, logits_nonmembers=ln, labels_nonmembers=yn)
