"""One-run privacy audit (Steinke, Nasr, Jagielski 2023): the bound against the paper's formula, its
properties, guessing from scores, and canary audits of real DP-SGD runs (correct and broken)."""

import logging
import math

import numpy as np
import pytest
from scipy import stats

from privacy_audit.components.dp_trainer import one_run_audit as ora


# ---------------------------------------------------------------------------------------------------------
# The paper's formula, computed independently (loops, explicit tails, plain bisection)
# ---------------------------------------------------------------------------------------------------------

def paper_p_value(m, r, v, eps, delta):
    """P[W >= v] <= f(v) + 2 m delta max_{1<=i<=v} (f(v-i) - f(v)) / i, f(t) = P[Binomial(r, q) >= t]."""
    q = math.exp(eps) / (1.0 + math.exp(eps))
    fv = stats.binom.sf(v - 1, r, q)  # f(v) = P[W >= v]
    if v == 0:
        return 1.0
    i = np.arange(1, v + 1)
    gap = np.max((stats.binom.sf(v - i - 1, r, q) - fv) / i)  # (f(v - i) - f(v)) / i as tail differences
    return min(fv + 2 * m * delta * gap, 1.0)


def paper_epsilon(m, r, v, delta, confidence):
    beta = 1.0 - confidence
    if paper_p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while paper_p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, hi + 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if paper_p_value(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


@pytest.mark.parametrize("m,r,v,delta,confidence", [
    (1000, 100, 90, 1e-5, 0.95),
    (1000, 100, 100, 1e-5, 0.95),
    (200, 60, 50, 1e-4, 0.95),
    (5000, 150, 120, 1e-6, 0.99),
    (100, 20, 20, 1e-3, 0.9),
    (300, 80, 55, 0.0, 0.95),
])
def test_epsilon_lower_bound_matches_the_papers_formula(m, r, v, delta, confidence):
    want = paper_epsilon(m, r, v, delta, confidence)
    assert want > 0
    assert ora.epsilon_lower_bound(m, r, v, delta, confidence) == pytest.approx(want, abs=1e-8)
    assert ora.p_value(m, r, v, want, delta) == pytest.approx(paper_p_value(m, r, v, want, delta), rel=1e-9)


@pytest.mark.parametrize("r,v", [(50, 45), (100, 80), (400, 300), (1000, 1000)])
def test_pure_dp_bound_is_the_binomial_quantile(r, v):
    # delta = 0: the bound solves P[Binomial(r, q) >= v] = 1 - confidence, i.e. q = Beta(v, r - v + 1).ppf(beta).
    beta = 0.05
    q = stats.beta.ppf(beta, v, r - v + 1)
    want = math.log(q / (1 - q))
    got = ora.epsilon_lower_bound(10 * r, r, v, 0.0, 0.95)
    assert got == pytest.approx(want, abs=1e-7)
    assert stats.binom.sf(v - 1, r, 1 / (1 + math.exp(-got))) == pytest.approx(beta, rel=1e-5)


@pytest.mark.medium
def test_bound_properties():
    m = 1000
    # Guessing at chance level proves nothing.
    for r in (10, 100, 500):
        assert ora.epsilon_lower_bound(m, r, r // 2, 1e-5) == 0.0
    assert ora.epsilon_lower_bound(m, 100, 0, 1e-5) == 0.0
    assert ora.epsilon_lower_bound(m, 100, 56, 1e-5) < 0.05
    # More correct guesses: larger bound.
    bounds = [ora.epsilon_lower_bound(m, 200, v, 1e-5) for v in range(100, 201, 10)]
    assert all(b2 >= b1 for b1, b2 in zip(bounds, bounds[1:])) and bounds[-1] > bounds[0]
    # Same accuracy, more guesses: larger bound.
    assert ora.epsilon_lower_bound(m, 100, 90, 1e-5) < ora.epsilon_lower_bound(m, 400, 360, 1e-5)
    # Larger delta or higher confidence: smaller bound.
    assert ora.epsilon_lower_bound(m, 200, 180, 1e-3) < ora.epsilon_lower_bound(m, 200, 180, 1e-6) \
        < ora.epsilon_lower_bound(m, 200, 180, 0.0)
    assert ora.epsilon_lower_bound(m, 200, 180, 1e-5, 0.99) < ora.epsilon_lower_bound(m, 200, 180, 1e-5, 0.9)
    # The p-value at the bound is the significance level.
    eps = ora.epsilon_lower_bound(m, 200, 180, 1e-5)
    assert ora.p_value(m, 200, 180, eps, 1e-5) == pytest.approx(0.05, abs=1e-6)


def test_bound_validates_counts():
    with pytest.raises(ValueError, match="v"):
        ora.epsilon_lower_bound(10, 5, 6, 0.0)
    with pytest.raises(ValueError, match="m"):
        ora.epsilon_lower_bound(4, 5, 3, 0.0)
    with pytest.raises(ValueError, match="delta"):
        ora.epsilon_lower_bound(10, 5, 3, -1.0)
    with pytest.raises(ValueError, match="confidence"):
        ora.epsilon_lower_bound(10, 5, 3, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------
# Guessing from scores
# ---------------------------------------------------------------------------------------------------------

def test_audit_from_scores_counts_guesses():
    scores = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    included = np.array([1, 1, 0, 1, 0, 1, 0, 0, 1, 0], dtype=bool)
    audit = ora.audit_from_scores(scores, included, k_plus=3, k_minus=2, delta=0.0)
    # Top 3 guessed "in": two right; bottom 2 guessed "out": one right.
    assert (audit.guesses, audit.correct) == (5, 3)
    assert audit.per_candidate_confidence == 0.95 and len(audit.candidates) == 1
    assert audit.epsilon_lower_bound == ora.epsilon_lower_bound(10, 5, 3, 0.0, 0.95)


@pytest.mark.medium
def test_audit_from_scores_search_is_bonferroni_corrected():
    rng = np.random.default_rng(0)
    m = 1000
    included = rng.random(m) < 0.5
    scores = np.where(included, 1.0, 0.0) + rng.normal(0, 0.3, m)
    audit = ora.audit_from_scores(scores, included, delta=1e-5)
    n = len(ora.default_guess_counts(m))
    assert len(audit.candidates) == n > 1
    assert audit.per_candidate_confidence == pytest.approx(1 - 0.05 / n)
    best = max(audit.candidates, key=lambda c: c["epsilon_lower_bound"])
    assert audit.epsilon_lower_bound == best["epsilon_lower_bound"] > 1.0
    assert best["epsilon_lower_bound"] == ora.epsilon_lower_bound(m, best["guesses"], best["correct"], 1e-5,
                                                                  1 - 0.05 / n)
    # Scores unrelated to inclusion: (almost) nothing is proved.
    assert ora.audit_from_scores(rng.normal(size=m), included, delta=1e-5).epsilon_lower_bound < 0.3


def test_ties_are_not_broken_by_input_order():
    m = 400
    included = np.arange(m) < m // 2  # included canaries first: input order would reveal them
    audit = ora.audit_from_scores(np.zeros(m), included, k_plus=100, k_minus=100, delta=0.0)
    assert audit.epsilon_lower_bound < 0.5


@pytest.mark.medium
def test_canary_audit_plumbing_with_oracle_models():
    rng = np.random.default_rng(0)
    x_train, y_train = rng.normal(size=(50, 3)), rng.integers(0, 2, 50)
    x_can = np.arange(300, dtype=float)[:, None] * np.ones((1, 3)) + 1000.0
    y_can = rng.integers(0, 2, 300)

    def memorizer(x, y):  # outputs the trained label with high confidence: maximal leakage
        seen = {float(row[0]): int(lab) for row, lab in zip(x, y)}

        def logits(xc):
            out = np.zeros((len(xc), 2))
            for i, row in enumerate(xc):
                if float(row[0]) in seen:
                    out[i, seen[float(row[0])]] = 10.0
            return out
        return logits, 1.0

    leaky = ora.canary_audit(memorizer, x_train, y_train, x_can, y_can, delta=1e-5, seed=1)
    assert leaky.violated and leaky.epsilon_lower_bound > 2.0 and leaky.accountant_epsilon == 1.0
    assert "broken" in leaky.message
    assert leaky.n_training_examples == 50 + leaky.n_included and 100 < leaky.n_included < 200
    assert leaky.to_json()["violated"] is True

    def constant(x, y):  # ignores its data: leaks nothing
        return lambda xc: np.zeros((len(xc), 2))
    quiet = ora.canary_audit(constant, x_train, y_train, x_can, y_can, epsilon=lambda n: 0.5, delta=1e-5)
    assert not quiet.violated and quiet.epsilon_lower_bound < 0.5
    with pytest.raises(ValueError, match="epsilon"):
        ora.canary_audit(constant, x_train, y_train, x_can, y_can, delta=1e-5)


def test_mislabeled_canaries():
    x = np.arange(40, dtype=float).reshape(20, 2)
    y = np.arange(20) % 4
    xc, yc = ora.mislabeled_canaries(x, y, 10, 4, seed=0)
    rows = [int(r[0]) // 2 for r in xc]
    assert len(set(rows)) == 10
    assert np.all(yc != y[rows]) and np.all((0 <= yc) & (yc < 4))


# ---------------------------------------------------------------------------------------------------------
# Real DP-SGD runs (components.dp_trainer.training.fit): a correct run never fails the audit, a broken one
# is caught. Softmax regression on synthetic data; canary i is the indicator of its own input dimension
# (scaled), with a random label, so only that canary moves its own weights: the strongest black-box canary.
# ---------------------------------------------------------------------------------------------------------

D_DATA, N_CLASSES, N_CANARIES, N_DATA = 10, 4, 600, 700
DELTA = 1e-5


def _canary_problem():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(N_CLASSES, D_DATA)) * 2
    y = rng.integers(0, N_CLASSES, N_DATA)
    x = np.zeros((N_DATA, D_DATA + N_CANARIES), np.float32)
    x[:, :D_DATA] = centers[y] + rng.normal(size=(N_DATA, D_DATA))
    xc = np.zeros((N_CANARIES, D_DATA + N_CANARIES), np.float32)
    xc[np.arange(N_CANARIES), D_DATA + np.arange(N_CANARIES)] = 10.0
    yc = rng.integers(0, N_CLASSES, N_CANARIES)
    return x, y, xc, yc


def _softmax_regression():
    import keras

    return keras.Sequential([keras.Input((D_DATA + N_CANARIES,)),
                             keras.layers.Dense(N_CLASSES, use_bias=False, kernel_initializer="zeros")])


def _run(noise_multiplier, seed, claimed=None):
    logging.getLogger("absl").setLevel(logging.ERROR)
    x, y, xc, yc = _canary_problem()
    # q = 20 / ~1000, 200 steps: each included canary is sampled ~4 times; ε(σ = 1) ≈ 2.2 at δ = 1e-5.
    train = ora.dp_training_fn(_softmax_regression, epochs=4, batch_size=20, learning_rate=1.0, l2_norm_clip=1.0,
                               noise_multiplier=noise_multiplier, delta=DELTA, seed=seed,
                               claimed_noise_multiplier=claimed)
    return ora.canary_audit(train, x, y, xc, yc, delta=DELTA, seed=seed)


@pytest.mark.parametrize("noise_multiplier,seed", [(1.0, 0), (1.0, 1), (0.5, 0), (0.5, 1)])
@pytest.mark.medium
def test_correct_dp_run_never_exceeds_the_accountants_epsilon(noise_multiplier, seed):
    result = _run(noise_multiplier, seed)
    assert math.isfinite(result.accountant_epsilon)
    assert result.epsilon_lower_bound <= result.accountant_epsilon, result.message
    assert not result.violated
    if noise_multiplier == 0.5:
        assert result.epsilon_lower_bound > 0  # the audit has power: little noise is visible


@pytest.mark.medium
def test_broken_dp_run_is_caught():
    # No noise at all, while claiming the ε that σ = 1 would give for the same steps.
    result = _run(0.0, 0, claimed=1.0)
    assert 1.5 < result.accountant_epsilon < 3.0
    assert result.violated, result.message
    assert result.epsilon_lower_bound > result.accountant_epsilon
    assert "the DP training is broken" in result.message
