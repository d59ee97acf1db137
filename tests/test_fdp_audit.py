"""The f-DP one-run audit (Mahloujifar, Melis, Chaudhuri 2024) beside Steinke et al. (2023), and a broken DP
run (noise off, ε claimed) that the report marks dp_consistent: false."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import dp_accounting
import numpy as np
import pytest
from scipy import stats

from privacy_audit.components.dp_trainer import accounting
from privacy_audit.components.dp_trainer import one_run_audit as ora
from privacy_audit.components.membership_inference import metrics as M
from privacy_audit.components.privacy_report import load
from privacy_audit.components.privacy_report.html_report import write_report


@pytest.mark.parametrize("epsilon, delta", [(1.0, 1e-5), (4.0, 1e-6), (0.3, 1e-3)])
def test_gdp_epsilon_inverts_the_analytic_gaussian_mechanism(epsilon, delta):
    # dp-accounting's σ for (ε, δ) with sensitivity 1 is 1/μ of μ-GDP (Dong, Roth, Su 2019, Cor. 2.13).
    mu = 1.0 / dp_accounting.get_sigma_gaussian(epsilon, delta)
    assert ora.gdp_epsilon(mu, delta) == pytest.approx(epsilon, rel=1e-6)


def test_recursion_follows_the_papers_numerical_audit_by_hand():
    # m = 10 canaries, r = 2 guesses, v = 2 correct, τ = 0.05, μ = 1: the paper's recursion step by step.
    mu, tau, m, r = 1.0, 0.05, 10, 2
    g = lambda x: stats.norm.cdf(stats.norm.ppf(x) - mu)  # inverse of the f-DP blow-up
    corr, wrong = tau * 2 / m, 0.0
    h1 = max(wrong, g(corr)); corr, wrong = min(corr + 1 / (r - 1) * (h1 - wrong), 1), h1      # i = 1
    h0 = max(wrong, g(corr)); corr, wrong = min(corr + 0 / (r - 0) * (h0 - wrong), 1), h0      # i = 0
    assert ora.fdp_rejects(m, r, 2, mu, 0.95) == (corr + wrong > r / m)
    # A perfect guesser with very few guesses refutes nothing, with many it refutes a lot.
    assert ora.fdp_epsilon_lower_bound(10, 2, 2, 1e-5)["epsilon_lower_bound"] == 0.0
    assert ora.fdp_epsilon_lower_bound(1000, 300, 300, 1e-5)["epsilon_lower_bound"] > 4.0


@pytest.mark.parametrize("m, r, v", [(1000, 100, 100), (1000, 300, 290), (1000, 1000, 700), (200, 50, 45),
                                     (600, 60, 60), (1000, 500, 300)])
def test_fdp_bound_is_at_least_steinkes_on_the_same_guesses(m, r, v):
    fdp = ora.fdp_epsilon_lower_bound(m, r, v, 1e-5)["epsilon_lower_bound"]
    steinke = ora.epsilon_lower_bound(m, r, v, 1e-5)
    assert fdp >= steinke
    if steinke > 0:
        assert fdp > 1.3 * steinke  # the tighter analysis the paper reports


@pytest.mark.medium
def test_fdp_bound_is_sound_for_a_gaussian_mechanism():
    # The paper's idealised setting: each canary's output is N(μ·included, 1), exactly μ-GDP per canary.
    # At 95% confidence the bound may exceed the true ε(δ) in at most ~5% of runs.
    mu, delta, m, runs = 1.0, 1e-5, 1000, 60
    true_eps = ora.gdp_epsilon(mu, delta)
    over, bounds = 0, []
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        included = rng.random(m) < 0.5
        scores = rng.normal(mu * included, 1.0)
        a = ora.audit_from_scores(scores, included, k_plus=100, k_minus=100, delta=delta)
        bounds.append(a.fdp_epsilon_lower_bound)
        over += a.fdp_epsilon_lower_bound > true_eps
        assert a.fdp_epsilon_lower_bound >= a.epsilon_lower_bound
    assert over <= 6, (over, true_eps, max(bounds))
    assert np.median(bounds) > 0.3 * true_eps  # and it is not vacuous


# --------------------------------------------------------------------------- a broken run in the report


def _broken_run_report(tmp_path):
    """Noise off, the ε of σ = 1 claimed (test_one_run_audit's broken run), reported like a pipeline would."""
    try:
        from test_one_run_audit import _run
    except ImportError:
        from tests.test_one_run_audit import _run
    result = _run(0.0, 0, claimed=1.0)
    n = result.n_training_examples
    # The claim's DP events: Poisson rate 20/N, 4 epochs of round(N / 20) steps (the sampler's), σ = 1.
    steps = 4 * max(1, round(n / 20))
    events = [{"type": "poisson_sampled_gaussian", "sampling_probability": 20 / n, "noise_multiplier": 1.0,
               "steps": steps}]
    claimed = accounting.epsilon_for_events([accounting.dp_sgd_event(20 / n, 1.0, steps)], 1e-5)
    assert claimed == pytest.approx(result.accountant_epsilon, rel=1e-9)
    ledger = {"schema_version": 1, "model_variant": "dp_broken", "private": True, "epsilon": claimed,
              "delta": 1e-5, "noise_multiplier": 1.0, "accountant": "rdp", "events": events, "epochs": []}
    audit = dict(result.to_json(), confidence=0.95)
    entry = {"slice": {"feature": "entire_dataset"}, "attack": "threshold",
             **M.attack_metrics(result.scores, result.included, fpr_targets=(0.01,))}
    doc = {"schema_version": 1, "results": [entry],
           "metadata": {"model_variant": "dp_broken", "epoch": 4, "is_final": True, "epsilon": claimed,
                        "accuracy_train": None, "accuracy_test": None}}
    ledger_obj = dataclasses.replace(load.read_ledger(ledger), one_run_audit=audit)
    return result, write_report(tmp_path / "out", [doc], [ledger_obj])


@pytest.mark.slow
def test_broken_run_is_not_dp_consistent_and_fdp_bound_is_reported(tmp_path):
    result, out = _broken_run_report(tmp_path)
    row = json.loads(pathlib.Path(out.summary_path).read_text())["variants"][0]
    assert row["dp_consistent"] is False
    reasons = row["dp_consistency"]["reasons"]
    assert any("above the" in r for r in reasons)                      # a point outside the DP region
    assert any("the DP training is broken" in r for r in reasons)      # and the one-run audit
    audit = row["one_run_audit"]
    assert audit["fdp_epsilon_lower_bound"] >= audit["epsilon_lower_bound"] > audit["accountant_epsilon"]
    assert audit["fdp_epsilon_lower_bound"] == result.audit.fdp_epsilon_lower_bound
    page = pathlib.Path(out.html_path).read_text(encoding="utf-8")
    assert "NOT DP-consistent" in page and "outside: DP broken" in page
    assert "f-DP (Mahloujifar et al.)" in page
    region = out.plots["roc_curves"].meta["dp_region"]["dp_broken"]
    assert len(region["fpr"]) == len(region["tpr_max"]) > 100
