"""Trained attacks: a classifier learns members from non-members on features of the model outputs,
cross-validated so that every example is scored once by a model that did not see it (see the package doc).

``logistic_regression`` is scikit-learn's StandardScaler + LogisticRegression (lbfgs) by default, or with
``AttackConfig(lr_solver="newton")`` :class:`NewtonLogisticRegression` (numpy): the same objective solved to
its optimum by Newton's method (~6x faster than lbfgs on these ~16-feature problems, and closer to the
optimum: lbfgs stops at tolerance 1e-4, so AUCs differ by up to ~4e-4), without importing scikit-learn. ``mlp``,
``random_forest`` and ``knn`` are scikit-learn estimators, imported lazily when they run. The folds are
scikit-learn's ``StratifiedKFold(shuffle=True)`` folds, computed here (:func:`stratified_folds`)."""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import special

from privacy_audit.components.membership_inference.attacks.inputs import AttackConfig, PreparedInputs
from privacy_audit.components.membership_inference.attacks.registry import register_attack
from privacy_audit.components.membership_inference.metrics import roc_auc


def _balanced_subsample(idx: np.ndarray, y: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    return _balanced_from(idx[y[idx] == 1], idx[y[idx] == 0], cap, rng)


def _balanced_from(pos: np.ndarray, neg: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    k = min(pos.size, neg.size, cap // 2)
    return np.sort(np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, k, replace=False)]))


class NewtonLogisticRegression:
    """Binary L2-regularised logistic regression on standardised features: the model of scikit-learn's
    ``make_pipeline(StandardScaler(), LogisticRegression(C=C))``, fitted to the optimum of the same objective.

    Features are standardised by their unweighted mean and standard deviation (ddof 0; near-constant
    features, as scikit-learn detects them, keep scale 1), then ``(w, b)`` minimises
    ``0.5 * ||w||^2 + C * sum_i s_i * logloss(y_i, x_i . w + b)`` (intercept not penalised; ``s_i`` the
    sample weights, default 1) -- scikit-learn's objective. It is smooth and strictly convex in ``w``, and
    with ~16 features its Hessian is a ~17x17 matrix: Newton's method with a backtracking line search reaches
    gradient 1e-10 in ~4 steps, where scikit-learn's lbfgs takes ~30 to stop at its default 1e-4.

    Args:
      C: inverse regularisation strength, > 0.
      tol: stop when the largest gradient component of the objective divided by ``sum(s)`` (scikit-learn's
        scale for ``tol``) is <= tol.
      max_iter: Newton steps at most.
      init: optional starting ``[w..., b]`` [F + 1] (on standardised features), e.g. the solution of a
        neighbouring fold: the optimum does not depend on it, only the number of steps.

    ``fit(x [N, F], y [N] in {0, 1}, sample_weight [N] | None)``; ``predict_proba(x) -> [N, 2]`` (columns:
    classes 0, 1), ``decision_function(x) -> [N]``; after fitting ``coef_`` [1, F] and ``intercept_`` [1]
    (on the standardised features), ``mean_``/``scale_`` [F] of the scaling, ``n_iter_``.
    """

    classes_ = np.array([0, 1])

    def __init__(self, C: float = 1.0, tol: float = 1e-10, max_iter: int = 100,
                 init: Optional[np.ndarray] = None):
        if not C > 0:
            raise ValueError(f"C must be > 0, got {C}")
        self.C, self.tol, self.max_iter, self.init = float(C), float(tol), int(max_iter), init

    def fit(self, x: np.ndarray, y: np.ndarray, sample_weight: Optional[np.ndarray] = None):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y).astype(np.float64).ravel()
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise ValueError(f"x must be [N, F] and y [N], got {x.shape} and {y.shape}")
        if not np.all((y == 0) | (y == 1)) or y.min() == y.max():
            raise ValueError("y must hold both classes, 0 and 1")
        n, f = x.shape
        s = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
        if s.shape != (n,) or not np.all(np.isfinite(s)) or (s < 0).any():
            raise ValueError(f"sample_weight must be [N] finite and >= 0, got shape {s.shape}")
        self.mean_ = x.mean(axis=0)
        var = x.var(axis=0)
        # scikit-learn's near-constant test (StandardScaler: Chan, Golub & LeVeque's bound on the error).
        eps = np.finfo(np.float64).eps
        constant = var <= n * eps * var + (n * self.mean_ * eps) ** 2
        self.scale_ = np.where(constant, 1.0, np.sqrt(var))
        # Features x examples, contiguous per feature: the products below run ~1.5x faster this way.
        zt = np.empty((f + 1, n))
        zt[:-1] = ((x - self.mean_) / self.scale_).T
        zt[-1] = 1.0
        init = None if self.init is None or np.shape(self.init) != (f + 1,) else np.asarray(self.init, float)
        theta, self.n_iter_ = _newton_logistic(zt, y, s, self.C, self.tol, self.max_iter, init)
        self.coef_, self.intercept_ = theta[None, :-1], theta[-1:]
        return self

    @property
    def solution_(self) -> np.ndarray:
        """``[w..., b]`` [F + 1]: a starting point (``init``) for a related fit."""
        return np.concatenate([self.coef_[0], self.intercept_])

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean_) / self.scale_) @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        # expit, as scikit-learn's binary predict_proba: same values, so the same ties among scores.
        p = special.expit(self.decision_function(x))
        return np.column_stack([1.0 - p, p])


def _newton_logistic(zt: np.ndarray, y: np.ndarray, s: np.ndarray, C: float, tol: float, max_iter: int,
                     init: Optional[np.ndarray] = None) -> Tuple[np.ndarray, int]:
    """Minimiser ``theta`` [F + 1] (last: the unpenalised intercept; ``zt[-1] == 1``) of
    ``sum_i s_i * logloss(y_i, theta . zt[:, i]) + ||theta[:-1]||^2 / (2 C)``, and the number of Newton steps.

    ``zt``: [F + 1, N] standardised features, transposed, with a row of ones. The objective is divided by
    ``sum(s)`` (scikit-learn's lbfgs minimises it so), so that ``tol`` bounds the gradient's largest
    component on scikit-learn's scale, independently of N. Stops when that is <= ``tol``, or when a step no longer
    changes ``theta`` (the optimum to rounding)."""
    s_sum = float(s.sum())
    if not s_sum > 0:
        raise ValueError("sample weights must have a positive sum")
    lam = np.full(zt.shape[0], 1.0 / (C * s_sum))
    lam[-1] = 0.0
    sn = s / s_sum

    def objective(u: np.ndarray, t: np.ndarray) -> float:  # u = t @ zt, the margins
        # log(1 + e^u) - y u, without overflow.
        return float(sn @ (np.log1p(np.exp(-np.abs(u))) + np.maximum(u, 0.0) - y * u) + 0.5 * lam @ (t * t))

    theta = np.zeros(zt.shape[0]) if init is None else init.copy()
    u = theta @ zt
    f = objective(u, theta)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        p = special.expit(u)
        grad = zt @ (sn * (p - y)) + lam * theta
        if np.max(np.abs(grad)) <= tol:
            n_iter -= 1
            break
        hess = (zt * (sn * p * (1.0 - p))) @ zt.T
        hess.flat[:: hess.shape[0] + 1] += lam
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:  # only when every prediction saturated and the intercept is flat
            step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        decrease = float(grad @ step)
        du = step @ zt
        t = 1.0
        while True:  # backtracking (Armijo); the full step is taken near the optimum
            new, u_new = theta - t * step, u - t * du
            f_new = objective(u_new, new)
            # Once the predicted decrease is below the objective's rounding, comparing values says nothing:
            # there Newton's full step converges quadratically.
            if f_new <= f - 1e-4 * t * decrease or decrease <= 1e-13 * abs(f) or t < 1e-10:
                break
            t *= 0.5
        if np.array_equal(new, theta):
            break
        theta, u, f = new, u_new, f_new
    return theta, n_iter


def stratified_folds(y: np.ndarray, n_splits: int, random_state: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``[(train_idx, test_idx)] * n_splits``: exactly the folds of scikit-learn's
    ``StratifiedKFold(n_splits, shuffle=True, random_state=random_state).split(x, y)`` (its round-robin
    allocation of each class to folds, each class's fold labels shuffled by ``RandomState(random_state)``,
    classes in order of first appearance), without importing scikit-learn."""
    test_folds = _stratified_test_folds(y, n_splits, random_state)
    indices = np.arange(test_folds.size)
    return [(indices[test_folds != i], indices[test_folds == i]) for i in range(n_splits)]


def _stratified_test_folds(y: np.ndarray, n_splits: int, random_state: int) -> np.ndarray:
    """[N] test fold of each row (see :func:`stratified_folds`)."""
    y = np.asarray(y).ravel()
    rs = np.random.RandomState(random_state)
    if y.dtype.kind in "iu" and y.size and 0 <= y.min() and y.max() < 64:
        # Member / non-member labels: classes and first appearances in O(N), without sorting y.
        present = np.bincount(y) > 0
        classes, inverse = np.flatnonzero(present), (np.cumsum(present) - 1)[y]
        first = np.array([np.argmax(y == c) for c in classes])
    else:
        classes, first, inverse = np.unique(y, return_index=True, return_inverse=True)
    class_perm = np.argsort(np.argsort(first))
    encoded = class_perm[inverse.ravel()]
    n_classes = first.size
    counts = np.bincount(encoded, minlength=n_classes)
    if n_splits > counts.min():
        raise ValueError(f"n_splits={n_splits} is larger than the smallest class ({counts.min()})")
    # Round robin over the labels sorted by class: class k holds sorted positions [start_k, end_k), and fold
    # i gets the positions p with p % n_splits == i (counted without sorting).
    end = np.cumsum(counts)
    start = end - counts
    below = lambda m, i: np.maximum(0, (m - i + n_splits - 1) // n_splits)  # noqa: E731  #{p < m: p % n == i}
    allocation = np.array([below(end, i) - below(start, i) for i in range(n_splits)])
    test_folds = np.empty(y.size, dtype="i")
    for k in range(n_classes):
        folds_for_class = np.arange(n_splits).repeat(allocation[:, k])
        rs.shuffle(folds_for_class)
        test_folds[encoded == k] = folds_for_class
    return test_folds


def _fit(model, x: np.ndarray, y: np.ndarray, w: Optional[np.ndarray]):
    if isinstance(model, NewtonLogisticRegression):
        return model.fit(x, y, sample_weight=w)
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
      make_model: ``make_model(seed, **params)`` returning an unfitted classifier with scikit-learn's
        interface (``fit``, ``predict_proba``, ``classes_``), e.g. :class:`NewtonLogisticRegression`.
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
    y = np.asarray(y).astype(np.int64)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    n_folds = min(config.n_folds, n_pos, n_neg)
    if n_folds < 2:
        raise ValueError(f"a trained attack needs at least 2 members and 2 non-members, got {n_pos} and {n_neg}")
    rng = np.random.default_rng(seed)
    test_folds = _stratified_test_folds(y, n_folds, int(rng.integers(2**31 - 1)))
    # A fold's training members are the members outside it (ascending, as stratified_folds' train rows).
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    pos_fold, neg_fold = test_folds[pos], test_folds[neg]
    chosen: Optional[Dict[str, Any]] = None
    fitted = []
    for i in range(n_folds):
        sub = _balanced_from(pos[pos_fold != i], neg[neg_fold != i], cap, rng)
        if chosen is None:
            chosen = dict(grid[0])
            if config.hyperparameter_search and len(grid) > 1:
                chosen = _select(x, y, sub, make_model, grid, config, rng, sample_weight)
        model = make_model(int(rng.integers(2**31 - 1)), **chosen)
        fitted.append(_fit(model, x[sub], y[sub], None if sample_weight is None else sample_weight[sub]))
    scores = _out_of_fold_scores(x, test_folds, fitted)
    assert not np.isnan(scores).any()
    return scores, chosen or {}


def _out_of_fold_scores(x: np.ndarray, test_folds: np.ndarray, models: Sequence[Any]) -> np.ndarray:
    """[N] member probability of each row by the model of its test fold."""
    if all(isinstance(m, NewtonLogisticRegression) for m in models):
        # Linear: the standardisation folds into the weights, and one product scores every row under every
        # fold's model, without copying each fold's rows (x is up to ~2M x 16).
        w = np.column_stack([m.coef_[0] / m.scale_ for m in models])
        b = np.array([m.intercept_[0] - m.mean_ @ (m.coef_[0] / m.scale_) for m in models])
        rows = np.arange(test_folds.size)
        return special.expit((x @ w)[rows, test_folds] + b[test_folds])
    scores = np.full(test_folds.size, np.nan)
    for i, model in enumerate(models):
        test = np.flatnonzero(test_folds == i)
        scores[test] = _member_proba(model, x[test])
    return scores


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
    x = prepared.all_features()
    n_m = inputs.n_members
    if not (im.size == n_m and inn.size == x.shape[0] - n_m and np.array_equal(im, np.arange(n_m))
            and np.array_equal(inn, np.arange(inn.size))):
        x = x[np.concatenate([im, n_m + inn])]  # the slice's members then non-members
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


def _make_logistic_regression(seed: int, C: float = 1.0, init: Optional[np.ndarray] = None):
    del seed  # deterministic
    return NewtonLogisticRegression(C=C, init=init)


def _make_lbfgs_logistic_regression(seed: int, C: float = 1.0):
    from sklearn.linear_model import LogisticRegression

    return _scaled(LogisticRegression(C=C, solver="lbfgs", max_iter=200, random_state=seed))


def _warm_started(make_model):
    """``make_model`` whose every model starts from the solution of the last one fitted with the same
    params (folds of one slice are close problems: ~3 Newton steps instead of ~4; the optimum is the same)."""
    last: Dict[Tuple, Any] = {}

    def make(seed: int, **params):
        key = tuple(sorted(params.items()))
        prev = last.get(key)
        init = prev.solution_ if prev is not None and hasattr(prev, "coef_") else None
        model = make_model(seed, init=init, **params)
        last[key] = model
        return model
    return make


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
    make = (_warm_started(_make_logistic_regression) if prepared.config.lr_solver == "newton"
            else _make_lbfgs_logistic_regression)
    return _trained(prepared, im, inn, seed, make, GRIDS["logistic_regression"], 10000)


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
