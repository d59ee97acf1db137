"""Attack metrics: ROC AUC / advantage against sklearn, PPV, TPR at low FPR, Clopper-Pearson, ε bound."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from privacy_audit.components.membership_inference import metrics as M


def _sk(scores, is_member, w=None):
    fpr, tpr, _ = roc_curve(is_member, scores, sample_weight=w)
    return roc_auc_score(is_member, scores, sample_weight=w), float(np.max(np.abs(tpr - fpr)))


def _labels(n_m, n_n):
    return np.concatenate([np.ones(n_m, dtype=bool), np.zeros(n_n, dtype=bool)])


@pytest.mark.parametrize("case", ["continuous", "rounded", "few_values", "all_tied", "imbalanced"])
def test_auc_and_advantage_match_sklearn(case):
    rng = np.random.default_rng(1)
    n_m, n_n = (3000, 500) if case == "imbalanced" else (2000, 2500)
    s = np.concatenate([rng.normal(0.4, 1, n_m), rng.normal(0, 1, n_n)])
    if case == "rounded":
        s = np.round(s, 1)
    elif case == "few_values":
        s = np.floor(s).clip(-2, 2)  # 5 distinct values: heavy ties
    elif case == "all_tied":
        s = np.zeros_like(s)
    y = _labels(n_m, n_n)
    r = M.attack_metrics(s, y)
    auc, adv = _sk(s, y)
    assert abs(r["auc"] - auc) < 1e-9
    assert abs(r["attacker_advantage"] - adv) < 1e-9
    assert r["n_members"] == n_m and r["n_nonmembers"] == n_n


def test_weighted_metrics_match_sklearn():
    rng = np.random.default_rng(2)
    s = np.round(np.concatenate([rng.normal(0.5, 1, 800), rng.normal(0, 1, 900)]), 1)
    y = _labels(800, 900)
    w = rng.uniform(0.1, 3.0, s.size)
    r = M.attack_metrics(s, y, w)
    auc, adv = _sk(s, y, w)
    assert abs(r["auc"] - auc) < 1e-9
    assert abs(r["attacker_advantage"] - adv) < 1e-9
    assert r["n_members"] == 800  # counts of examples, not weight sums


def test_separable_and_reversed():
    y = _labels(100, 120)
    s = np.concatenate([np.linspace(5, 6, 100), np.linspace(0, 1, 120)])
    r = M.attack_metrics(s, y)
    assert r["auc"] == 1.0 and r["attacker_advantage"] == 1.0 and r["ppv"] == 1.0
    # 120 non-members resolve 1% FPR (1.2 false positives allowed) but not 0.1%: null, listed, no interval.
    assert r["tpr_at_fpr"]["0.01"] == 1.0 and r["tpr_at_fpr"]["0.001"] is None
    assert r["tpr_at_fpr_unresolved"] == ["0.001"] and r["tpr_at_fpr_interval"]["0.001"] is None
    r = M.attack_metrics(-s, y)
    assert r["auc"] == 0.0 and r["attacker_advantage"] == 1.0


def test_identical_distributions_auc_near_half():
    rng = np.random.default_rng(3)
    n = 5000
    s = rng.normal(size=2 * n)
    r = M.attack_metrics(s, _labels(n, n))
    sigma = math.sqrt((2 * n + 1) / (12 * n * n))  # Mann-Whitney null standard deviation
    assert abs(r["auc"] - 0.5) < 4 * sigma
    assert r["epsilon_lower_bound"] < 0.05


def test_counts_path_equals_per_example_path_and_merge():
    rng = np.random.default_rng(4)
    s = np.round(rng.normal(size=4000), 2)
    y = rng.random(4000) < 0.4
    direct = M.attack_metrics(s, y)
    # Beam-like: histograms of 7 shards, merged, then metrics_from_counts.
    parts = [M.histogram_from_scores(s[i::7], y[i::7]) for i in range(7)]
    merged = M.merge_histograms(parts)
    via_counts = M.metrics_from_counts(*merged)
    assert via_counts == direct
    hs, hm, hn = M.histogram_from_scores(s, y)
    assert np.all(np.diff(hs) < 0) and hm.sum() == y.sum() and hn.sum() == (~y).sum()


def test_ppv_exact_definition():
    # members [2, 1], non-members [3, 0]: thresholds >=3: 0/1, >=2: 1/2, >=1: 2/3, >=0: 2/4.
    r = M.attack_metrics(np.array([2.0, 1.0, 3.0, 0.0]), _labels(2, 2))
    assert r["ppv"] == pytest.approx(2 / 3)
    # Same as TF Privacy's TPR / (TPR + gamma * FPR) away from the (0, 0) shortcut, gamma = n_n / n_m.
    rng = np.random.default_rng(5)
    s = np.round(np.concatenate([rng.normal(0.3, 1, 300), rng.normal(0, 1, 900)]), 1)
    y = _labels(300, 900)
    fpr, tpr, _ = roc_curve(y, s)
    gamma = 900 / 300
    ok = (tpr + fpr) > 0
    tfp = np.max(tpr[ok] / (tpr[ok] + gamma * fpr[ok]))
    assert M.attack_metrics(s, y)["ppv"] == pytest.approx(tfp, abs=1e-12)


def test_tpr_at_fpr_and_unresolved_flag():
    # 1000 non-members: 0.001 means at most 1 false positive.
    rng = np.random.default_rng(6)
    s_n = rng.normal(size=1000)
    s_m = np.concatenate([np.full(30, 10.0), rng.normal(size=970)])
    s = np.concatenate([s_m, s_n])
    y = _labels(1000, 1000)
    r = M.attack_metrics(s, y)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    for target in (0.01, 0.001):
        expected = tpr[fpr <= target + 1e-15].max()
        assert r["tpr_at_fpr"][repr(target)] == pytest.approx(expected)
    assert r["tpr_at_fpr"]["0.001"] >= 0.03
    assert r["tpr_at_fpr_unresolved"] == []
    small = M.attack_metrics(np.concatenate([s_m[:200], s_n[:200]]), _labels(200, 200))
    assert small["tpr_at_fpr_unresolved"] == ["0.001"]  # 200 < 1 / 0.001
    assert "0.01" not in small["tpr_at_fpr_unresolved"]


def test_roc_downsampled_keeps_endpoints_and_low_fpr():
    rng = np.random.default_rng(7)
    n = 50000
    s = np.concatenate([rng.normal(0.5, 1, n), rng.normal(0, 1, n)])
    y = _labels(n, n)
    r = M.attack_metrics(s, y)
    fpr, tpr = np.array(r["roc"]["fpr"]), np.array(r["roc"]["tpr"])
    assert len(fpr) <= 200 and len(fpr) == len(tpr)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.sum(fpr < 0.01) >= 40  # log-spaced low-FPR region
    full_f, full_t, _ = roc_curve(y, s, drop_intermediate=False)
    # Every stored point lies on the exact curve.
    pos = np.searchsorted(full_f, fpr, side="right") - 1
    assert np.all(np.isclose(full_t[pos], tpr) | np.isin(tpr, full_t))
    assert max(abs(t - f) for f, t in zip(fpr, tpr)) == pytest.approx(r["attacker_advantage"])


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (3, 10), (1, 1000), (999, 1000), (500, 1000), (0, 1)])
def test_clopper_pearson_matches_scipy_beta(k, n):
    alpha = 0.025
    lo = M.clopper_pearson_lower(k, n, alpha)
    hi = M.clopper_pearson_upper(k, n, alpha)
    exp_lo = 0.0 if k == 0 else stats.beta.ppf(alpha, k, n - k + 1)
    exp_hi = 1.0 if k == n else stats.beta.ppf(1 - alpha, k + 1, n - k)
    assert lo == pytest.approx(exp_lo, abs=1e-12)
    assert hi == pytest.approx(exp_hi, abs=1e-12)
    lo2, hi2 = M.clopper_pearson_interval(k, n, 0.95)
    assert (lo2, hi2) == (pytest.approx(exp_lo, abs=1e-12), pytest.approx(exp_hi, abs=1e-12))


def test_clopper_pearson_coverage():
    rng = np.random.default_rng(8)
    p, n = 0.07, 200
    k = rng.binomial(n, p, 4000)
    lo = M.clopper_pearson_lower(k, np.full(k.size, n), 0.05)
    assert np.mean(lo > p) <= 0.05


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0])
def test_epsilon_lower_bound_randomized_response(eps):
    """Members output 1 w.p. e^eps / (1 + e^eps), non-members w.p. 1 / (1 + e^eps): exactly eps-DP
    (randomized response). The bound must be positive and not exceed the true eps."""
    rng = np.random.default_rng(9)
    n = 20000
    p = math.exp(eps) / (1 + math.exp(eps))
    s = np.concatenate([rng.random(n) < p, rng.random(n) < 1 - p]).astype(float)
    r = M.attack_metrics(s, _labels(n, n), delta=0.0)
    lb = r["epsilon_lower_bound"]
    assert 0.5 * eps < lb < eps
    d = r["epsilon_lower_bound_details"]
    assert d["method"] == "clopper_pearson_bonferroni" and d["n_thresholds_examined"] >= 1


def test_epsilon_lower_bound_below_truth_over_many_draws():
    eps, n = 1.0, 2000
    p = math.exp(eps) / (1 + math.exp(eps))
    rng = np.random.default_rng(10)
    over = 0
    for _ in range(40):
        s = np.concatenate([rng.random(n) < p, rng.random(n) < 1 - p]).astype(float)
        over += M.attack_metrics(s, _labels(n, n), delta=0.0)["epsilon_lower_bound"] > eps
    assert over <= 2  # nominal 5% failure


def test_epsilon_lower_bound_delta_and_confidence_are_conservative():
    rng = np.random.default_rng(11)
    s = np.concatenate([rng.normal(1.0, 1, 5000), rng.normal(0, 1, 5000)])
    y = _labels(5000, 5000)
    base = M.attack_metrics(s, y, delta=1e-5)["epsilon_lower_bound"]
    assert base > 0
    assert M.attack_metrics(s, y, delta=0.05)["epsilon_lower_bound"] < base
    assert M.attack_metrics(s, y, confidence=0.999)["epsilon_lower_bound"] < base
    # Tiny samples cannot certify much.
    assert M.attack_metrics(s[[0, 1, 2, 5000, 5001, 5002]], _labels(3, 3))["epsilon_lower_bound"] == 0.0


def test_bad_metric_inputs():
    with pytest.raises(ValueError, match="non-finite"):
        M.attack_metrics(np.array([1.0, np.nan, 0.0]), np.array([1, 0, 0]))
    with pytest.raises(ValueError, match="no members"):
        M.attack_metrics(np.array([1.0, 2.0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="no non-members"):
        M.attack_metrics(np.array([1.0, 2.0]), np.array([1, 1]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        M.metrics_from_counts(np.array([1.0, 2.0]), np.array([1.0, 1.0]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        M.attack_metrics(np.array([1.0, 2.0]), np.array([1, 0, 0]))
