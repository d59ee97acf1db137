"""Membership-inference attacks: each turns a slice's members and non-members into membership scores
(higher = more likely a member); :mod:`metrics` then measures how well the scores separate them.

Attacks (registered by name with :func:`register_attack`; adding one is one decorated function):
- ``threshold``: score = minus the cross-entropy loss (Yeom et al. 2018; TF Privacy's threshold attack).
- ``threshold_entropy``: score = minus the modified prediction entropy (Song & Mittal 2021); without labels,
  minus the Shannon entropy of the prediction (TF Privacy's label-free variant).
- ``logistic_regression``, ``mlp``, ``random_forest``, ``knn``: a scikit-learn classifier trained to tell
  members from non-members from features of the model outputs (:func:`attack_features`).
- ``lira``, ``lira_offline``, ``rmia``, ``rmia_offline``: attacks with reference models
  (:mod:`strong_attacks`); they need the references' outputs on the same examples
  (``PreparedInputs(references=...)``, see :mod:`reference_models`).

Trained attacks are cross-validated: stratified k-fold (default 5) over the slice, so that every example is
scored exactly once, by a model that did not see it. Each fold's attacker is trained on a balanced, seeded
subsample of the other folds (equal numbers of members and non-members, at most ``max_train_per_fold``
examples), so that the majority side cannot be learnt as a prior and large slices stay fast; every
example is still scored. Hyperparameters come from a small fixed grid per attack (:data:`GRIDS`): each
candidate is trained on 75% of (at most 6000 examples of) the first fold's training subsample and scored
by ROC AUC on the other 25%; the best is used for all folds (``AttackConfig(hyperparameter_search=False)``:
the first grid entry). Everything is seeded.

Reading the numbers: a trained attack's AUC on a slice without signal fluctuates around 0.5 and can fall
clearly below it on small or narrow slices (e.g. a loss decile): a fold and its complement partition one
finite pool, so what the attacker learns on the complement is anti-correlated with the held-out fold.
AUC below 0.5 therefore means "no detectable leakage", not a reversed attack; note that
``attacker_advantage`` = max |TPR - FPR| counts such reversed separations too (TF Privacy's definition).

scikit-learn is imported lazily (only trained attacks need it).
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from privacy_audit.components.membership_inference.data import MIN_PROB, AttackInputs, as_2d_logits
from privacy_audit.components.membership_inference.metrics import roc_auc


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
    """

    n_folds: int = 5
    max_train_per_fold: Optional[int] = None
    hyperparameter_search: bool = True
    validation_fraction: float = 0.25
    search_max_examples: int = 6000
    top_k: int = 10
    include_label_one_hot: bool = False
    n_jobs: int = 1

    def __post_init__(self) -> None:
        if self.n_folds < 2:
            raise ValueError(f"n_folds must be >= 2, got {self.n_folds}")
        if self.max_train_per_fold is not None and self.max_train_per_fold < 4:
            raise ValueError(f"max_train_per_fold must be >= 4, got {self.max_train_per_fold}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")


# ---------------------------------------------------------------------------------------------------------
# Shared per-example quantities
# ---------------------------------------------------------------------------------------------------------

def attack_features(inputs: AttackInputs, side: str, config: AttackConfig = AttackConfig()) -> np.ndarray:
    """[N, F] float64 features of the trained attacks for one side ('members' or 'nonmembers').

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
        sorted_lp = -np.sort(-log_p, axis=1)
        k = min(config.top_k, sorted_lp.shape[1] - 1)  # all C of them sum to 1: collinear
        cols.append(np.exp(sorted_lp[:, :k]))
        cols.append(np.maximum(sorted_lp[:, : min(3, sorted_lp.shape[1])], np.log(MIN_PROB)))
    raw = getattr(inputs, f"logits_{side}")
    if raw is not None:
        # Softmax discards the logits' level (logsumexp), and a member's logits are often larger in absolute
        # terms. It is the only thing raw logits add: each logit is its log-probability plus the level, so
        # adding sorted or true-class logits as well would only make the features collinear.
        z = as_2d_logits(raw)
        zmax = z.max(axis=1)
        cols.append((zmax + np.log(np.exp(z - zmax[:, None]).sum(axis=1)))[:, None])
    have_loss = inputs.loss_members is not None or (log_p is not None and inputs.has_labels)
    if have_loss:
        loss = inputs.loss(side)
        cols.append(loss[:, None])
        cols.append(np.log(np.maximum(loss, 1e-12))[:, None])
    if inputs.entropy_members is not None or (log_p is not None and inputs.has_labels):
        cols.append(inputs.entropy(side)[:, None])
    if config.include_label_one_hot and inputs.has_labels:
        c = inputs.num_classes
        cols.append(np.eye(c)[inputs.labels(side)])
    if not cols:
        raise ValueError("no attack features: give logits/probs, or a loss")
    return np.concatenate(cols, axis=1)


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
        if references is not None and references.m != inputs.n_members + inputs.n_nonmembers:
            raise ValueError(f"the reference signals cover {references.m} examples but the inputs have "
                             f"{inputs.n_members} members + {inputs.n_nonmembers} non-members; they must cover "
                             "the members then the non-members, in order")

    def features(self, side: str) -> np.ndarray:
        if side not in self._features:
            self._features[side] = attack_features(self.inputs, side, self.config)
        return self._features[side]

    def reference_scores(self, name: str) -> Tuple[np.ndarray, Dict[str, Any]]:
        """``(scores [n_members + n_nonmembers], resolved options)`` of a reference attack on every example
        (members first), computed once: the per-example fits do not depend on the slice."""
        if name not in self._reference_scores:
            from privacy_audit.components.membership_inference.reference_models import reference_attack_scores

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
            from privacy_audit.components.membership_inference.reference_models import ReferenceSignals

            refs = ReferenceSignals(ref_logits, self.references.in_mask)
            self._reference_scores[name] = reference_attack_scores(name, target, labels, refs,
                                                                   self.reference_options)
        return self._reference_scores[name]


# ---------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------

ScoreFn = Callable[[PreparedInputs, np.ndarray, np.ndarray, int], Tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class AttackDefinition:
    name: str
    score: ScoreFn
    trained: bool
    description: str
    needs_references: bool = False


ATTACKS: Dict[str, AttackDefinition] = {}


def register_attack(name: str, *, trained: bool, description: str = "", needs_references: bool = False):
    """Decorator registering ``fn(prepared, member_idx, nonmember_idx, seed) -> (scores_m, scores_n)``."""

    def wrap(fn: ScoreFn) -> ScoreFn:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} registered twice")
        ATTACKS[name] = AttackDefinition(name, fn, trained, description or (fn.__doc__ or "").strip(),
                                         needs_references)
        return fn
    return wrap


def reference_attack_names(names: Sequence[str]) -> List[str]:
    """The names among ``names`` that need reference models (lira, rmia, ...)."""
    return [n for n in names if n in ATTACKS and ATTACKS[n].needs_references]


def check_attack_names(names: Sequence[str]) -> List[str]:
    """Validated, de-duplicated attack names (order kept); ValueError lists the known ones."""
    out: List[str] = []
    for raw in names:
        name = raw.strip().replace("-", "_")
        if not name:
            continue
        if name in ("lr", "logistic"):
            name = "logistic_regression"
        if name in ("rf",):
            name = "random_forest"
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {raw!r}; choose from {', '.join(ATTACKS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"no attack given; choose from {', '.join(ATTACKS)}")
    return out


def attack_scores(name: str, prepared: PreparedInputs, member_idx: np.ndarray, nonmember_idx: np.ndarray,
                  seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Membership scores ``(scores_members [n_m], scores_nonmembers [n_n])`` of attack ``name`` on the
    slice given by row indices into the members and non-members."""
    return ATTACKS[check_attack_names([name])[0]].score(prepared, np.asarray(member_idx),
                                                         np.asarray(nonmember_idx), int(seed))


@register_attack("threshold", trained=False, description="score = -cross-entropy loss")
def _threshold(prepared: PreparedInputs, im: np.ndarray, inn: np.ndarray, seed: int):
    inputs = prepared.inputs
    return -inputs.loss("members")[im], -inputs.loss("nonmembers")[inn]


@register_attack("threshold_entropy", trained=False,
                 description="score = -modified prediction entropy (-Shannon entropy without labels)")
def _threshold_entropy(prepared: PreparedInputs, im: np.ndarray, inn: np.ndarray, seed: int):
    inputs = prepared.inputs
    return -inputs.entropy("members")[im], -inputs.entropy("nonmembers")[inn]


def _reference_attack(name: str) -> ScoreFn:
    def score(prepared: PreparedInputs, im: np.ndarray, inn: np.ndarray, seed: int):
        scores, _ = prepared.reference_scores(name)
        return scores[im], scores[prepared.inputs.n_members + inn]
    return score


for _name, _description in (
        ("lira", "LiRA online: Gaussian likelihood ratio of the target's logit-scaled confidence, IN vs OUT "
                 "references (Carlini et al. 2022)"),
        ("lira_offline", "LiRA offline: one-sided test against the OUT references only"),
        ("rmia", "RMIA online: Pr(x|target) / mean over all references, ranked against population samples "
                 "(Zarifzadeh et al. 2024)"),
        ("rmia_offline", "RMIA offline: as rmia with OUT references and the linear approximation a")):
    register_attack(_name, trained=False, needs_references=True, description=_description)(_reference_attack(_name))


# ---------------------------------------------------------------------------------------------------------
# Trained attacks
# ---------------------------------------------------------------------------------------------------------

def _balanced_subsample(idx: np.ndarray, y: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    pos, neg = idx[y[idx] == 1], idx[y[idx] == 0]
    k = min(pos.size, neg.size, cap // 2)
    return np.sort(np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, k, replace=False)]))


def _fit(model, x: np.ndarray, y: np.ndarray, w: Optional[np.ndarray]):
    from sklearn.exceptions import ConvergenceWarning

    kwargs = {}
    if w is not None:
        last = model.steps[-1][0] if hasattr(model, "steps") else None
        est = model.steps[-1][1] if last else model
        if "sample_weight" in inspect.signature(est.fit).parameters:
            kwargs = {f"{last}__sample_weight": w} if last else {"sample_weight": w}
    with warnings.catch_warnings():
        # A few lbfgs / adam iterations short of convergence do not matter for a ranking.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y, **kwargs)
    return model


def _member_proba(model, x: np.ndarray) -> np.ndarray:
    proba = model.predict_proba(x)
    return proba[:, list(model.classes_).index(1)]


def cross_validated_scores(x: np.ndarray, y: np.ndarray, make_model: Callable[..., Any],
                           grid: Sequence[Dict[str, Any]], *, config: AttackConfig, cap: int, seed: int,
                           sample_weight: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Scores every row of ``x`` with a model that did not train on it (see module doc).

    Args:
      x: [N, F] features; y: [N] 1 = member, 0 = non-member.
      make_model: ``make_model(seed, **params)`` returning an unfitted scikit-learn classifier.
      grid: candidate ``params`` dicts (the first is used when the search is off or impossible).
      cap: maximum balanced training subsample per fold.
      sample_weight: optional [N] training weights (used when the estimator accepts them).
    Returns ``(scores [N], chosen params)``.
    """
    from threadpoolctl import threadpool_limits

    # Attack models are small (<= 20000 x ~20): multi-threaded BLAS / OpenMP only adds synchronisation,
    # and on a shared 2-core machine it makes timings erratic.
    with threadpool_limits(limits=1):
        return _cross_validated_scores(x, y, make_model, grid, config=config, cap=cap, seed=seed,
                                       sample_weight=sample_weight)


def _cross_validated_scores(x, y, make_model, grid, *, config, cap, seed, sample_weight):
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y).astype(np.int64)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    n_folds = min(config.n_folds, n_pos, n_neg)
    if n_folds < 2:
        raise ValueError(f"a trained attack needs at least 2 members and 2 non-members, got {n_pos} and {n_neg}")
    rng = np.random.default_rng(seed)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=int(rng.integers(2**31 - 1)))
    scores = np.full(y.size, np.nan)
    chosen: Optional[Dict[str, Any]] = None
    for train, test in folds.split(np.zeros(y.size), y):
        sub = _balanced_subsample(train, y, cap, rng)
        if chosen is None:
            chosen = dict(grid[0])
            if config.hyperparameter_search and len(grid) > 1:
                chosen = _select(x, y, sub, make_model, grid, config, rng, sample_weight)
        model = make_model(int(rng.integers(2**31 - 1)), **chosen)
        _fit(model, x[sub], y[sub], None if sample_weight is None else sample_weight[sub])
        scores[test] = _member_proba(model, x[test])
    assert not np.isnan(scores).any()
    return scores, chosen or {}


def _select(x, y, sub, make_model, grid, config, rng, sample_weight) -> Dict[str, Any]:
    perm = rng.permutation(sub)
    if perm.size > config.search_max_examples:
        perm = rng.permutation(_balanced_subsample(perm, y, config.search_max_examples, rng))
    n_val = max(2, int(round(config.validation_fraction * perm.size)))
    val, fit = perm[:n_val], perm[n_val:]
    if len(set(y[val].tolist())) < 2 or len(set(y[fit].tolist())) < 2:
        return dict(grid[0])
    best, best_auc = dict(grid[0]), -1.0
    for params in grid:
        model = make_model(int(rng.integers(2**31 - 1)), **params)
        _fit(model, x[fit], y[fit], None if sample_weight is None else sample_weight[fit])
        auc = roc_auc(_member_proba(model, x[val]), y[val] == 1)
        if auc > best_auc + 1e-12:
            best, best_auc = dict(params), auc
    return best


def _trained(prepared: PreparedInputs, im: np.ndarray, inn: np.ndarray, seed: int, make_model,
             grid, default_cap: int) -> Tuple[np.ndarray, np.ndarray]:
    inputs = prepared.inputs
    fm, fn = prepared.features("members"), prepared.features("nonmembers")
    x = np.concatenate([fm[im], fn[inn]])
    y = np.concatenate([np.ones(im.size, dtype=np.int64), np.zeros(inn.size, dtype=np.int64)])
    w = None
    if inputs.sample_weight_members is not None:
        w = np.concatenate([inputs.sample_weight("members")[im], inputs.sample_weight("nonmembers")[inn]])
    cfg = prepared.config
    cap = cfg.max_train_per_fold if cfg.max_train_per_fold is not None else default_cap
    scores, _ = cross_validated_scores(x, y, make_model, grid, config=cfg, cap=cap, seed=seed, sample_weight=w)
    return scores[: im.size], scores[im.size:]


def _scaled(estimator):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), estimator)


def _make_logistic_regression(seed: int, C: float = 1.0):
    from sklearn.linear_model import LogisticRegression

    return _scaled(LogisticRegression(C=C, solver="lbfgs", max_iter=200, random_state=seed))


def _make_mlp(seed: int, alpha: float = 1e-4, hidden: Tuple[int, ...] = (64,)):
    from sklearn.neural_network import MLPClassifier

    return _scaled(MLPClassifier(hidden_layer_sizes=hidden, alpha=alpha, early_stopping=True, max_iter=200,
                                 n_iter_no_change=5, random_state=seed))


def _make_random_forest(seed: int, max_depth: Optional[int] = 8, n_jobs: int = 1):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=50, max_depth=max_depth, min_samples_leaf=5,
                                  max_features="sqrt", random_state=seed, n_jobs=n_jobs)


def _make_knn(seed: int, n_neighbors: int = 25, n_jobs: int = 1):
    from sklearn.neighbors import KNeighborsClassifier

    del seed  # deterministic
    return _scaled(KNeighborsClassifier(n_neighbors=n_neighbors, n_jobs=n_jobs))


#: Hyperparameter grids (small on purpose: the outer cross-validation dominates the cost).
GRIDS: Dict[str, List[Dict[str, Any]]] = {
    "logistic_regression": [{"C": 1.0}, {"C": 0.01}, {"C": 100.0}],
    "mlp": [{"alpha": 1e-4}, {"alpha": 1e-2}],
    "random_forest": [{"max_depth": 8}, {"max_depth": 16}],
    "knn": [{"n_neighbors": 25}, {"n_neighbors": 75}],
}


@register_attack("logistic_regression", trained=True,
                 description="logistic regression on sorted output probabilities, loss and entropy")
def _logistic_regression(prepared: PreparedInputs, im, inn, seed):
    return _trained(prepared, im, inn, seed, _make_logistic_regression, GRIDS["logistic_regression"], 10000)


@register_attack("mlp", trained=True, description="one-hidden-layer perceptron (64 units) on output features")
def _mlp(prepared: PreparedInputs, im, inn, seed):
    return _trained(prepared, im, inn, seed, _make_mlp, GRIDS["mlp"], 6000)


@register_attack("random_forest", trained=True, description="random forest (50 trees) on output features")
def _random_forest(prepared: PreparedInputs, im, inn, seed):
    jobs = prepared.config.n_jobs
    return _trained(prepared, im, inn, seed, lambda s, **p: _make_random_forest(s, n_jobs=jobs, **p),
                    GRIDS["random_forest"], 10000)


@register_attack("knn", trained=True, description="k-nearest neighbours on standardised output features")
def _knn(prepared: PreparedInputs, im, inn, seed):
    jobs = prepared.config.n_jobs
    return _trained(prepared, im, inn, seed, lambda s, **p: _make_knn(s, n_jobs=jobs, **p), GRIDS["knn"], 6000)
