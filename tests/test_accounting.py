"""Accounting against published values and the ledger against what ran."""

import json
import math
import subprocess
import sys
import warnings

import pytest

from privacy_audit.components.dp_trainer import accounting


def test_rdp_matches_published_mnist_value():
    # TF Privacy's compute_dp_sgd_privacy: MNIST 60000 examples, batch 256, σ=1.1, 60 epochs, δ=1e-5.
    eps = accounting.compute_epsilon(n_examples=60000, batch_size=256, noise_multiplier=1.1, delta=1e-5,
                                     epochs=60, accountant="rdp")
    assert eps == pytest.approx(2.597, abs=5e-4)


@pytest.mark.medium
def test_pld_matches_published_mnist_value():
    eps = accounting.compute_epsilon(n_examples=60000, batch_size=256, noise_multiplier=1.1, delta=1e-5,
                                     epochs=60, accountant="pld")
    assert eps == pytest.approx(2.382, abs=5e-4)


def test_noise_for_target_epsilon():
    sigma = accounting.noise_multiplier_for_epsilon(target_epsilon=3.0, n_examples=60000, batch_size=256,
                                                    delta=1e-5, epochs=60)
    assert sigma == pytest.approx(1.014, abs=5e-4)
    # and it is the smallest such σ: ε(σ) ≤ 3 < ε(σ - 0.002)
    eps = accounting.compute_epsilon(n_examples=60000, batch_size=256, noise_multiplier=sigma, delta=1e-5,
                                     epochs=60)
    assert eps <= 3.0 + 1e-6
    assert accounting.compute_epsilon(n_examples=60000, batch_size=256, noise_multiplier=sigma - 2e-3,
                                      delta=1e-5, epochs=60) > 3.0


def test_abadi_et_al_moments_accountant_value():
    # Abadi et al. 2016: q = 0.01, σ = 4, 10^4 steps, δ = 1e-5 → ε ≈ 1.04 (RDP gives 1.035).
    eps = accounting.compute_epsilon(n_examples=10000, batch_size=100, noise_multiplier=4.0, delta=1e-5,
                                     steps=10000)
    assert eps == pytest.approx(1.035, abs=5e-4)


def test_steps_from_epochs_round_up():
    assert accounting.steps_for_epochs(60000, 256, 60) == 14063


def test_default_delta_is_the_largest_power_of_ten_not_above_inverse_n_to_the_1_1():
    # Issue 12: 924 → 1e-4 (924^-1.1 = 5.4e-4), 60,000 → 1e-6 (5.6e-6); exact powers stay (10^10 → 1e-11).
    assert accounting.default_delta(924) == 1e-4
    assert accounting.default_delta(1198) == 1e-4
    assert accounting.default_delta(60000) == 1e-6
    assert accounting.default_delta(9) == 1e-2
    assert accounting.default_delta(10 ** 10) == pytest.approx(1e-11)
    for n in (1, 2, 7, 10, 99, 100, 101, 923, 12345, 10 ** 6, 3 * 10 ** 8):
        d = accounting.default_delta(n)
        assert d < 1 / n and (d <= n ** -1.1 * (1 + 1e-12) or n == 1) and 10 * d > min(n ** -1.1, 0.1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(noise_multiplier=-0.1), "noise_multiplier"),
    (dict(l2_norm_clip=0.0), "l2_norm_clip"),
    (dict(l2_norm_clip=-1.0), "l2_norm_clip"),
    (dict(delta=1.0), "delta"),
    (dict(delta=0.0), "delta"),
    (dict(n_examples=10, batch_size=11), "batch_size"),
    (dict(n_examples=0), "no examples"),
])
def test_bad_parameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        accounting.validate_dp_params(**kwargs)


@pytest.mark.parametrize("n, delta", [(100, 0.05), (100, 0.01), (924, 2e-3), (60000, 1 / 60000)])
def test_delta_at_or_above_inverse_n_is_refused_with_the_reason(n, delta):
    with pytest.raises(ValueError, match=r"not below 1/N.*releasing about one training example"):
        accounting.validate_dp_params(n_examples=n, delta=delta)
    accounting.validate_dp_params(n_examples=n, delta=accounting.default_delta(n))


def test_ledger_accumulates_events_and_epsilon_per_epoch():
    led = accounting.PrivacyLedger(model_variant="dp", private=True, n_examples=60000, expected_batch_size=256,
                                   noise_multiplier=1.1, l2_norm_clip=1.0, delta=1e-5)
    for epoch in range(1, 4):
        led.record_steps(234)
        led.end_epoch(epoch)
    js = led.to_json()
    assert js["steps"] == 702
    assert js["events"] == [{"type": "poisson_sampled_gaussian", "sampling_probability": 256 / 60000,
                             "noise_multiplier": 1.1, "steps": 702}]
    eps = [e["epsilon"] for e in js["epochs"]]
    assert eps == sorted(eps) and eps[0] > 0
    assert js["epsilon"] == pytest.approx(accounting.compute_epsilon(
        n_examples=60000, batch_size=256, noise_multiplier=1.1, delta=1e-5, steps=702))
    json.dumps(js, allow_nan=False)


def test_non_private_ledger_has_no_epsilon():
    led = accounting.PrivacyLedger(model_variant="base", private=False, n_examples=100, expected_batch_size=10,
                                   noise_multiplier=None, l2_norm_clip=None, delta=None)
    led.record_steps(10)
    led.end_epoch(1)
    js = led.to_json()
    assert js["epsilon"] is None and js["events"] == [] and js["steps"] == 10


def test_shuffle_sampling_is_flagged():
    led = accounting.PrivacyLedger(model_variant="dp", private=True, n_examples=1000, expected_batch_size=10,
                                   noise_multiplier=1.0, l2_norm_clip=1.0, delta=1e-4, sampling="shuffle")
    js = led.to_json()
    assert js["poisson_guarantee_holds"] is False and "does not strictly hold" in js["note"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "privacy_audit.pipelines.cli", "epsilon", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.medium
def test_cli_epsilon_contract():
    r = _cli("--n", "60000", "--batch-size", "256", "--epochs", "60", "--noise-multiplier", "1.1",
             "--delta", "1e-5")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["epsilon"] == pytest.approx(2.597, abs=5e-4)
    assert out["steps"] == 14063 and out["noise_multiplier"] == 1.1 and out["accountant"] == "rdp"
    r = _cli("--n", "60000", "--batch-size", "256", "--epochs", "60", "--target-epsilon", "3",
             "--delta", "1e-5", "--accountant", "rdp")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["noise_multiplier"] == pytest.approx(1.014, abs=5e-4)


@pytest.mark.medium
def test_cli_epsilon_bad_input():
    r = _cli("--n", "100", "--batch-size", "10", "--epochs", "1", "--noise-multiplier", "-1")
    assert r.returncode == 2 and "noise_multiplier" in r.stderr
    r = _cli("--n", "100", "--batch-size", "1000", "--epochs", "1", "--noise-multiplier", "1")
    assert r.returncode == 2 and "batch_size" in r.stderr
