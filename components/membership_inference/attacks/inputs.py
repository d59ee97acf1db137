"""What the attacks read: the inputs prepared once per audit (:class:`PreparedInputs`: features of the
trained attacks, reference scores) and the trained attacks' settings (:class:`AttackConfig`)."""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from privacy_audit.components.common.losses import ROW_BLOCK, row_max
from privacy_audit.components.common.threads import ordered_map
from privacy_audit.components.membership_inference.data import MIN_PROB, AttackInputs, as_2d_logits


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Settings of the trained attacks.

    Attributes:
      n_folds: outer stratified folds (each example scored once). Reduced to the smaller side's size
        for tiny slices; at least 2.
      max_train_per_fold: cap on each fold's balanced training subsample (members + non-members). None:
        the attack's own default (logistic_regression 10000, random_forest 10000, mlp 6000, knn 6000): a
        linear model with ~20 features is estimated well from 10000 examples, and every example is
        still scored.
      hyperparameter_search: pick from the attack's grid with an inner hold-out (see module doc).
      validation_fraction: inner hold-out share used by the search.
      search_max_examples: the search uses a balanced seeded subsample of at most this many examples of
        the first fold's training subsample (candidates are compared, not final, so fewer suffice).
      top_k: number of sorted class probabilities used as features.
      include_label_one_hot: add the one-hot true class to the features.
      n_jobs: parallel jobs for random forest / kNN (scikit-learn n_jobs).
      lr_solver: the logistic-regression attack's solver: "lbfgs" (scikit-learn's LogisticRegression, the
        default: results as published with this project so far) or "newton" (:class:`trained.NewtonLogisticRegression`:
        the same objective solved to its optimum, ~4x faster at 2 x 100k; lbfgs stops at tolerance 1e-4, so AUCs
        differ by up to ~4e-4).
    """

    n_folds: int = 5
    max_train_per_fold: Optional[int] = None
    hyperparameter_search: bool = True
    validation_fraction: float = 0.25
    search_max_examples: int = 6000
    top_k: int = 10
    include_label_one_hot: bool = False
    n_jobs: int = 1
    lr_solver: str = "lbfgs"

    def __post_init__(self) -> None:
        if self.n_folds < 2:
            raise ValueError(f"n_folds must be >= 2, got {self.n_folds}")
        if self.max_train_per_fold is not None and self.max_train_per_fold < 4:
            raise ValueError(f"max_train_per_fold must be >= 4, got {self.max_train_per_fold}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.lr_solver not in ("lbfgs", "newton"):
            raise ValueError(f"lr_solver must be 'lbfgs' or 'newton', got {self.lr_solver!r}")


@functools.lru_cache(maxsize=None)
def _sorting_network(n: int) -> Tuple[Tuple[int, int], ...]:
    """Batcher's odd-even merge sort comparators ``(i, j)``, i < j, for ``n`` keys: the network of the next power of
    two without the comparators that touch a key beyond ``n`` (as if those were +inf, which never move)."""
    size = 1 << max(0, (n - 1).bit_length())
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    lo, hi = i + j, i + j + k
                    if lo // (2 * p) == hi // (2 * p) and hi < n:
                        pairs.append((lo, hi))
            k //= 2
        p *= 2
    return tuple(pairs)


def sort_rows(x: np.ndarray) -> np.ndarray:
    """``np.sort(x, axis=1)`` of a block of finite rows (the same values), through a sorting network on the columns
    when there are few of them: element-wise minima and maxima of whole columns instead of a sort call per row,
    ~2x faster on cache-sized blocks of 10 classes. The result is a transposed view."""
    n = x.shape[1]
    if n > 32:
        return np.sort(x, axis=1)
    cols = np.array(x.T, dtype=np.float64, order="C")
    scratch = np.empty(x.shape[0])
    for i, j in _sorting_network(n):
        np.minimum(cols[i], cols[j], out=scratch)
        np.maximum(cols[i], cols[j], out=cols[j])
        cols[i] = scratch
    return cols.T


def attack_features(inputs: AttackInputs, side: str, config: AttackConfig = AttackConfig(),
                    rows: slice = slice(None), out: Optional[np.ndarray] = None) -> np.ndarray:
    """[N, F] float64 features of the trained attacks for one side ('members' or 'nonmembers'); ``rows``: only
    those of a block of the side's rows (the same values: every feature is a function of its own row),
    written into ``out`` ([rows, F]) when given.

    With outputs: the ``top_k`` (at most C - 1) largest class probabilities (sorted, descending), the 3 largest
    log-probabilities (clipped at log 1e-30; they resolve confident predictions whose probabilities all
    round to 1); with logits also the log-sum-exp of the logits (their level, which softmax discards);
    then, when the loss is known,
    the loss and log(max(loss, 1e-12)), and the modified entropy when labels are known; optionally the
    one-hot true class. Without outputs: loss, log loss, and the given entropy. Sorting makes the
    features independent of which class was predicted, as in the sorted-vector attacks of Salem et al.
    (NDSS 2019).
    """
    cols: List[np.ndarray] = []
    log_p = inputs.log_probs(side)
    if log_p is not None:
        log_p = log_p[rows]
        # Ascending sort read backwards: the same values as -sort(-log_p), without two negated copies.
        desc_lp = sort_rows(log_p)[:, ::-1]
        k = min(config.top_k, desc_lp.shape[1] - 1)  # all C of them sum to 1: collinear
        cols.append(np.exp(desc_lp[:, :k]))
        cols.append(np.maximum(desc_lp[:, : min(3, desc_lp.shape[1])], np.log(MIN_PROB)))
    raw = getattr(inputs, f"logits_{side}")
    if raw is not None:
        # Softmax discards the logits' level (logsumexp), and a member's logits are often larger in absolute
        # terms. It is the only thing raw logits add: each logit is its log-probability plus the level, so
        # adding sorted or true-class logits as well would only make the features collinear.
        z = as_2d_logits(raw[rows])
        zmax = row_max(z)
        if log_p is not None and getattr(inputs, f"probs_{side}") is None:
            # log_p is the log-softmax of these logits: its top entry is -log sum exp(z - zmax), so the
            # level is zmax minus it (the value log-sum-exp gives, without another exp over [N, C]).
            cols.append((zmax - desc_lp[:, 0])[:, None])
        else:
            cols.append((zmax + np.log(np.exp(z - zmax[:, None]).sum(axis=1)))[:, None])
    have_loss = inputs.loss_members is not None or (log_p is not None and inputs.has_labels)
    if have_loss:
        loss = inputs.loss(side)[rows]
        cols.append(loss[:, None])
        cols.append(np.log(np.maximum(loss, 1e-12))[:, None])
    if inputs.entropy_members is not None or (log_p is not None and inputs.has_labels):
        cols.append(inputs.entropy_rows(side, rows)[:, None])
    if config.include_label_one_hot and inputs.has_labels:
        c = inputs.num_classes
        cols.append(np.eye(c)[inputs.labels(side)[rows]])
    if not cols:
        raise ValueError("no attack features: give logits/probs, or a loss")
    return np.concatenate(cols, axis=1, out=out)


class PreparedInputs:
    """Per-example quantities of the whole inputs, computed once and shared by all slices and attacks.

    ``references``: a :class:`reference_models.ReferenceSignals` over the members then the non-members (in
    the inputs' order), needed by the reference attacks; ``reference_options``: their options
    (``{"lira": {"fixed_variance": ...}, "rmia": {"gamma": ..., "offline_a": ...}}``).
    """

    def __init__(self, inputs: AttackInputs, config: AttackConfig = AttackConfig(), references: Any = None,
                 reference_options: Optional[Dict[str, Any]] = None):
        self.inputs = inputs
        self.config = config
        self.references = references
        self.reference_options = reference_options
        self._features: Dict[str, np.ndarray] = {}
        self._reference_scores: Dict[str, Tuple[np.ndarray, Dict[str, Any]]] = {}
        # Attacks on several slices run on threads (api.run_attacks): the first to need a shared quantity
        # computes it, the others wait for it.
        self._lock = threading.RLock()
        if references is not None and references.m != inputs.n_members + inputs.n_nonmembers:
            raise ValueError(f"the reference signals cover {references.m} examples but the inputs have "
                             f"{inputs.n_members} members + {inputs.n_nonmembers} non-members; they must cover "
                             "the members then the non-members, in order")

    def features(self, side: str) -> np.ndarray:
        """[N_side, F] :func:`attack_features` of ``side``: a view of :meth:`all_features`."""
        n_m = self.inputs.n_members
        return self.all_features()[:n_m] if side == "members" else self.all_features()[n_m:]

    def all_features(self) -> np.ndarray:
        """[n_members + n_nonmembers, F] features of the members then the non-members, computed once (one
        array, so that a slice's rows are gathered in one step, and the whole data set without a copy)."""
        with self._lock:
            return self._all_features()

    def _all_features(self) -> np.ndarray:
        if "all" not in self._features:
            inputs, config = self.inputs, self.config
            sizes = {"members": inputs.n_members, "nonmembers": inputs.n_nonmembers}
            # The whole sides' shared quantities (log-probabilities, loss) on two threads (separate cache keys;
            # numpy releases the GIL), and the number of features from one row; then blocks of rows on a
            # thread per core, each written in place: cache-sized pieces, evenly shared between the threads.
            width = list(ordered_map(lambda side: attack_features(inputs, side, config, rows=slice(0, 1)),
                                     [side for side, n in sizes.items() if n]))[0].shape[1]
            out = np.empty((sizes["members"] + sizes["nonmembers"], width))
            offset = {"members": 0, "nonmembers": sizes["members"]}
            blocks = [(side, start, min(start + ROW_BLOCK, n)) for side, n in sizes.items()
                      for start in range(0, n, ROW_BLOCK)]

            def fill(block):
                side, start, stop = block
                at = offset[side]
                attack_features(inputs, side, config, rows=slice(start, stop), out=out[at + start: at + stop])

            list(ordered_map(fill, blocks))
            self._features["all"] = out
        return self._features["all"]

    def reference_scores(self, name: str) -> Tuple[np.ndarray, Dict[str, Any]]:
        """``(scores [n_members + n_nonmembers], resolved options)`` of a reference attack on every example
        (members first), computed once: the per-example fits do not depend on the slice."""
        with self._lock:
            return self._reference_scores_of(name)

    def _reference_scores_of(self, name: str) -> Tuple[np.ndarray, Dict[str, Any]]:
        if name not in self._reference_scores:
            from privacy_audit.components.membership_inference.attacks.reference import reference_attack_scores

            if self.references is None:
                raise ValueError(f"{name} needs reference models: give their logits on the same examples "
                                 "(ref_logits [K, N, C] and ref_in_mask [K, N] over the members then the non-members, "
                                 "or the evaluator's reference_models input)")
            inputs = self.inputs
            if not inputs.has_labels or inputs.log_probs("members") is None:
                raise ValueError(f"{name} needs the target model's logits (or probs) and labels")
            # log-probabilities are logits of the same softmax: exact for both signals.
            target = (np.concatenate([as_2d_logits(inputs.logits_members), as_2d_logits(inputs.logits_nonmembers)])
                      if inputs.logits_members is not None
                      else np.concatenate([inputs.log_probs("members"), inputs.log_probs("nonmembers")]))
            labels = np.concatenate([inputs.labels("members"), inputs.labels("nonmembers")])
            ref_logits = self.references.logits
            if ref_logits.ndim == 2:  # single-logit binary references, like as_2d_logits does for the target
                ref_logits = np.stack([np.zeros_like(ref_logits), ref_logits], axis=-1)
            from privacy_audit.components.reference_models.signals import ReferenceSignals

            refs = ReferenceSignals(ref_logits, self.references.in_mask)
            self._reference_scores[name] = reference_attack_scores(name, target, labels, refs,
                                                                   self.reference_options)
        return self._reference_scores[name]
