"""Issue 12, "honest numbers": intervals that cover, no unresolvable TPR, corrected headline flags, the DP region.

Every expected value comes from an independent computation: a by-hand pairwise DeLong, scipy's
distributions, dp-accounting, or the closed-form bounds of an (ε, δ)-DP test.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from privacy_audit.components.dp_trainer import accounting
from privacy_audit.components.membership_inference import metrics as M
from privacy_audit.components.membership_inference import results as R
from privacy_audit.components.privacy_report import dp_region, load, summary


def _labels(n_members, n_nonmembers):
    return np.r_[np.ones(n_members), np.zeros(n_nonmembers)].astype(bool)


def _cumulative(scores, is_member):
    _, mc, nc = M.histogram_from_scores(scores, is_member)
    return np.r_[0.0, np.cumsum(mc)], np.r_[0.0, np.cumsum(nc)]


# --------------------------------------------------------------------------- AUC interval


def test_delong_interval_matches_a_pairwise_computation_with_ties():
    rng = np.random.default_rng(0)
    sm = rng.integers(0, 12, 70).astype(float) + 1.0  # many ties
    sn = rng.integers(0, 12, 90).astype(float)
    r = M.attack_metrics(np.r_[sm, sn], _labels(70, 90), confidence=0.9)
    # DeLong by hand: placements from all member x non-member pairs (ties count 1/2).
    psi = (sm[:, None] > sn[None, :]) + 0.5 * (sm[:, None] == sn[None, :])
    auc = psi.mean()
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    se = math.sqrt(v10.var(ddof=1) / 70 + v01.var(ddof=1) / 90)
    z = stats.norm.ppf(0.95)
    assert r["auc"] == pytest.approx(auc, abs=1e-12)
    assert r["auc_se"] == pytest.approx(se, rel=1e-9)
    assert r["auc_interval"] == pytest.approx([auc - z * se, auc + z * se], rel=1e-9)
    assert r["interval_details"]["confidence"] == 0.9


def test_tpr_interval_is_clopper_pearson_of_the_chosen_threshold():
    rng = np.random.default_rng(1)
    sm, sn = rng.normal(1, 1, 300), rng.normal(0, 1, 400)
    r = M.attack_metrics(np.r_[sm, sn], _labels(300, 400), fpr_targets=(0.05, 0.01))
    for target in (0.05, 0.01):
        j = int(math.floor(target * 400 + 1e-9))
        threshold = np.sort(sn)[::-1][j]            # the (j+1)-th highest non-member
        k = int((sm > threshold).sum())
        key = M.fpr_key(target)
        assert r["tpr_at_fpr"][key] == k / 300
        assert r["tpr_at_fpr_achieved_fpr"][key] == j / 400
        assert r["tpr_at_fpr_interval"][key] == pytest.approx(
            [stats.beta.ppf(0.025, k, 300 - k + 1), stats.beta.ppf(0.975, k + 1, 300 - k)], rel=1e-9)


COVERAGE_SIMS = 1000


def _auc_covers(mu, n_m, n_n, seed):
    """Share of seeded simulations (members N(mu, 1), non-members N(0, 1), true AUC Φ(mu/√2)) whose 95% DeLong
    interval, from the metrics module's one AUC path, covers the true AUC."""
    rng = np.random.default_rng(seed)
    xm, xn = rng.normal(mu, 1.0, (COVERAGE_SIMS, n_m)), rng.normal(0.0, 1.0, (COVERAGE_SIMS, n_n))
    truth = stats.norm.cdf(mu / math.sqrt(2.0))
    covered = 0
    for i in range(COVERAGE_SIMS):
        _, lo, hi = M.auc_interval_from_counts(*_cumulative(np.r_[xm[i], xn[i]], _labels(n_m, n_n)), 0.95)
        covered += lo <= truth <= hi
    return covered / COVERAGE_SIMS


def test_auc_interval_covers_95_percent_of_null_and_known_auc_simulations():
    null = _auc_covers(0.0, 100, 100, seed=11)
    known = _auc_covers(0.5, 200, 300, seed=12)  # true AUC 0.638
    assert 0.93 <= null <= 0.97, null
    assert 0.93 <= known <= 0.97, known


def test_tpr_interval_covers_95_percent_of_known_roc_simulations():
    # Members N(1, 1), non-members N(0, 1): the TPR of the chosen threshold (placed by the non-members) is
    # 1 - Φ(t - 1); the interval comes from metrics' own per-target code on each simulated ROC.
    rng = np.random.default_rng(13)
    n_m, n_n, target = 200, 300, 0.05
    xm, xn = rng.normal(1.0, 1.0, (COVERAGE_SIMS, n_m)), rng.normal(0.0, 1.0, (COVERAGE_SIMS, n_n))
    thresholds = -np.sort(-xn, axis=1)[:, int(math.floor(target * n_n + 1e-9))]
    truth = stats.norm.sf(thresholds - 1.0)
    covered = 0
    for i in range(COVERAGE_SIMS):
        tp, fp = _cumulative(np.r_[xm[i], xn[i]], _labels(n_m, n_n))
        _, interval, _, _ = M._tpr_at_targets(tp / n_m, fp / n_n, (target,), (n_m, n_n), 0.95)
        lo, hi = interval[M.fpr_key(target)]
        covered += lo <= truth[i] <= hi
    assert 0.93 <= covered / COVERAGE_SIMS <= 0.97, covered / COVERAGE_SIMS


# --------------------------------------------------------------------------- resolvability, bad input


def test_unresolvable_tpr_is_null_listed_and_refused_as_a_number():
    rng = np.random.default_rng(2)
    # 90 non-members: 1% FPR is not resolvable (0.9 false positives), 5% is.
    r = M.attack_metrics(np.r_[rng.normal(2, 1, 90), rng.normal(0, 1, 90)], _labels(90, 90),
                         fpr_targets=(0.05, 0.01, 0.001))
    assert r["tpr_at_fpr_unresolved"] == ["0.01", "0.001"]
    assert r["tpr_at_fpr"]["0.01"] is None and r["tpr_at_fpr_interval"]["0.01"] is None
    assert r["tpr_at_fpr"]["0.05"] is not None
    assert [M.fpr_resolvable(n, 0.001) for n in (999, 1000)] == [False, True]
    entry = {"slice": {"feature": "entire_dataset"}, "attack": "threshold", **r}
    R.build_results([entry])
    entry["tpr_at_fpr"] = dict(r["tpr_at_fpr"], **{"0.01": 0.11})
    with pytest.raises(R.ResultsValidationError, match=r"results\[0\].tpr_at_fpr.0.01: .*unresolved"):
        R.build_results([entry])


@pytest.mark.parametrize("kwargs, message", [
    ({"confidence": 0.0}, "confidence level must be in \\(0, 1\\), got 0.0"),
    ({"confidence": 1.5}, "confidence level must be in \\(0, 1\\), got 1.5"),
    ({"fpr_targets": (0.01, 0.0)}, "FPR target must be in \\(0, 1\\).*got 0.0"),
    ({"fpr_targets": (1.0,)}, "FPR target must be in \\(0, 1\\).*got 1.0"),
    ({"fpr_targets": (-0.01,)}, "FPR target must be in \\(0, 1\\).*got -0.01"),
])
def test_bad_confidence_or_fpr_target_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        M.attack_metrics(np.arange(10.0), _labels(5, 5), **kwargs)
    with pytest.raises(ValueError, match="confidence level must be in"):
        dp_region.check_results([], [], confidence=1.0)


# --------------------------------------------------------------------------- multiple comparisons


def test_holm_matches_its_definition():
    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    # Sorted: 0.005 (<= .05/5), 0.01 (<= .05/4), 0.03 (> .05/3 = .0167): stop.
    assert summary.holm(p) == [True, False, False, True, False]
    assert summary.holm([]) == []


def test_tpr_p_value_is_the_exact_permutation_tail():
    # 4 members, 5 non-members, threshold passing j = 1 non-member, TP = 3: enumerate every ranking.
    n_m, n_n, j, k = 4, 5, 1, 3
    hits = total = 0
    for members_at in itertools.combinations(range(n_m + n_n), n_m):
        ranks = [i in members_at for i in range(n_m + n_n)]
        nonmember_positions = [i for i, m in enumerate(ranks) if not m]
        tp = sum(ranks[:nonmember_positions[j]])      # members above the (j+1)-th non-member
        hits += tp >= k
        total += 1
    assert summary.tpr_p_value(k / n_m, j / n_n, n_m, n_n) == pytest.approx(hits / total, rel=1e-12)


def test_auc_p_value_uses_the_mann_whitney_null():
    sd = math.sqrt((100 + 90 + 1) / (12 * 100 * 90))
    assert summary.auc_p_value(0.5 + 2 * sd, 100, 90) == pytest.approx(stats.norm.sf(2.0))


# --------------------------------------------------------------------------- DP region


def test_region_edge_is_the_tightest_epsilon_delta_bound():
    profile = [(1.0, 1e-5), (0.5, 0.1)]
    fpr = np.array([1e-4, 0.01, 0.3, 0.9])
    expected = [min(math.e * x + 1e-5, 1 - (1 - x - 1e-5) / math.e, math.exp(0.5) * x + 0.1,
                    1 - (1 - x - 0.1) / math.exp(0.5), 1.0) for x in fpr]
    assert dp_region.max_tpr(fpr, profile) == pytest.approx(expected, rel=1e-12)


def test_privacy_profile_is_the_accountants():
    events = [{"sampling_probability": 0.05, "noise_multiplier": 1.2, "steps": 300}]
    profile = dp_region.privacy_profile(events, "rdp", deltas=(1e-6, 1e-4))
    for eps, delta in profile:
        assert eps == pytest.approx(accounting.epsilon_for_events(
            [accounting.dp_sgd_event(0.05, 1.2, 300)], delta, "rdp"), rel=1e-9)


def _result(tpr, fpr_achieved, n_members, n_nonmembers, key="0.01", lb=0.0, delta=1e-5):
    return load.AttackResult(
        slice={"feature": "entire_dataset"}, attack="threshold", auc=0.6, attacker_advantage=0.1,
        n_members=n_members, n_nonmembers=n_nonmembers, tpr_at_fpr={key: tpr},
        tpr_at_fpr_achieved_fpr={key: fpr_achieved}, epsilon_lower_bound=lb,
        epsilon_lower_bound_details={"delta": delta})


def test_point_outside_the_region_beyond_its_interval_breaks_consistency():
    events = [{"sampling_probability": 0.1, "noise_multiplier": 3.0, "steps": 100}]  # ε(1e-5) ≈ 1
    eps = accounting.epsilon_for_events([accounting.dp_sgd_event(0.1, 3.0, 100)], 1e-5, "rdp")
    assert 0.5 < eps < 2.0
    # TPR 0.6 of 1000 members at FPR 0.01 of 1000 non-members: far above e^ε·0.01 + δ.
    broken = dp_region.variant_consistency([_result(0.6, 0.01, 1000, 1000)], events, "rdp")
    assert broken["dp_consistent"] is False and broken["region"]["points_checked"] == 1
    assert "above the" in broken["reasons"][0]
    # TPR 0.03 at FPR 0.01: inside once the interval is taken into account.
    ok = dp_region.variant_consistency([_result(0.03, 0.01, 1000, 1000)], events, "rdp")
    assert ok["dp_consistent"] is True and ok["reasons"] == []
    # An empirical ε lower bound above the accountant's ε at its δ is a violation too.
    lb = dp_region.variant_consistency([_result(0.03, 0.01, 1000, 1000, lb=eps + 0.5)], events, "rdp")
    assert lb["dp_consistent"] is False and lb["epsilon_lower_bound_violations"][0]["accountant_epsilon"] == eps
