"""Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021): C follows a private estimate of a quantile of
the per-example gradient norms; the step's noise is split so that ε is fixed clipping's at the same σ."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dp_accounting  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from dp_accounting import pld, rdp  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import privacy_audit.keras as pak  # noqa: E402
from privacy_audit.components.common.recipe import TrainingRecipe  # noqa: E402
from privacy_audit.components.dp_trainer import accounting, training  # noqa: E402
from privacy_audit.components.dp_trainer.dp_step import DPStep  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    return x[:1200], data.target[:1200], x[1200:], data.target[1200:]


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10)])


def _accuracy(model, x, y):
    return float((np.argmax(model.predict(x, verbose=0), axis=1) == y).mean())


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("changes, message", [
    (dict(target_unclipped_quantile=0.0), r"target_unclipped_quantile must be a number in \(0, 1\)"),
    (dict(target_unclipped_quantile=1.0), r"target_unclipped_quantile must be a number in \(0, 1\)"),
    (dict(target_unclipped_quantile=1.5), r"target_unclipped_quantile must be a number in \(0, 1\)"),
    (dict(target_unclipped_quantile=math.nan), r"target_unclipped_quantile must be a number in \(0, 1\)"),
    (dict(clip_learning_rate=-0.1), r"clip_learning_rate must be a finite number >= 0"),
    (dict(clip_learning_rate=math.inf), r"clip_learning_rate must be a finite number >= 0"),
    (dict(clipped_count_stddev=0.0), r"clipped_count_stddev must be a finite number > 0"),
    (dict(clipped_count_stddev=-2.0), r"clipped_count_stddev must be a finite number > 0"),
    (dict(l2_norm_clip=0.0), r"l2_norm_clip must be a finite number > 0"),
    (dict(l2_norm_clip=-1.0), r"l2_norm_clip must be a finite number > 0"),
    # σ_b <= σ/2: the gradient's share σ_Δ = (σ^-2 - (2σ_b)^-2)^(-1/2) does not exist.
    (dict(noise_multiplier=4.0, clipped_count_stddev=2.0), r"clipped_count_stddev must be above noise_multiplier / 2"),
    (dict(noise_multiplier=4.0, batch_size=20), r"clipped_count_stddev must be above noise_multiplier / 2 = 2"),
])
def test_bad_adaptive_settings_are_refused_by_name_before_training(changes, message, digits, tmp_path):
    from privacy_audit.components.dp_trainer import trainer

    recipe = TrainingRecipe(adaptive_clipping=True, noise_multiplier=1.0, epochs=1).replace(**changes)
    with pytest.raises(ValueError, match=message):
        recipe.validate(n_examples=1200)
    x, y, _, _ = digits
    with pytest.raises(ValueError, match=message):
        trainer.train(recipe, x, y, model_dir=str(tmp_path / "model"), run_dir=str(tmp_path / "run"), verbose=False)
    assert not (tmp_path / "model").exists() and not (tmp_path / "run").exists()  # refused before anything ran
    kwargs = {k: v for k, v in changes.items() if k not in ("batch_size",)}
    kwargs = {"l2_norm_clip": 1.0, "noise_multiplier": 1.0, **kwargs}
    expected_batch = changes.get("batch_size", 64)
    with pytest.raises(ValueError, match=message):
        DPStep(_mlp(), keras.optimizers.SGD(0.1), expected_batch_size=expected_batch, adaptive_clipping=True,
               **kwargs)
    if "noise_multiplier" not in changes:  # make_private refuses at once; σ_b against σ needs the batch (fit)
        with pytest.raises(ValueError, match=message):
            pak.make_private(_mlp(), adaptive_clipping=True, **kwargs)


def test_make_private_refuses_a_count_noise_too_small_for_sigma_at_the_first_fit(digits):
    x, y, _, _ = digits
    model = pak.make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=4.0, adaptive_clipping=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match=r"clipped_count_stddev must be above noise_multiplier / 2 = 2"):
        model.fit(pak.poisson_batches(x, y, expected_batch_size=20), epochs=1, verbose=0)


def test_settings_are_checked_even_when_adaptive_clipping_is_off():
    with pytest.raises(ValueError, match=r"target_unclipped_quantile must be a number in \(0, 1\)"):
        TrainingRecipe(noise_multiplier=1.0, target_unclipped_quantile=2.0).validate()
    with pytest.raises(ValueError, match="adaptive_clipping must be true or false"):
        TrainingRecipe(noise_multiplier=1.0, adaptive_clipping="yes").validate()
    assert TrainingRecipe(noise_multiplier=1.0).adaptive_clipping is False  # off by default


# --------------------------------------------------------------------------- accounting


def test_noise_split_composes_to_one_gaussian_of_the_steps_multiplier():
    z, sigma_b = 1.1, 3.2  # σ_b = 64 / 20, the paper's default for a batch of 64
    sigma_grad, sigma_count = accounting.adaptive_noise_split(z, sigma_b)
    assert sigma_count == 2 * sigma_b  # the centred count has sensitivity 1/2
    assert sigma_grad == pytest.approx((z ** -2 - (2 * sigma_b) ** -2) ** -0.5, rel=1e-15)
    assert (sigma_grad ** -2 + sigma_count ** -2) ** -0.5 == pytest.approx(z, rel=1e-12)
    assert sigma_grad == pytest.approx(1.1167, abs=1e-4)  # 1.5% more gradient noise than fixed clipping
    assert accounting.adaptive_noise_split(0.0, 1.0) == (0.0, 2.0)


def _adaptive_ledger(accountant="rdp", z=1.1, sigma_b=3.2, steps=(19, 19, 19)):
    ledger = accounting.PrivacyLedger(
        model_variant="dp", private=True, n_examples=1200, expected_batch_size=64, noise_multiplier=z,
        l2_norm_clip=2.0, delta=1e-5, accountant=accountant,
        adaptive_clipping={"target_unclipped_quantile": 0.5, "clip_learning_rate": 0.2,
                           "clipped_count_stddev": sigma_b})
    for epoch, n in enumerate(steps, start=1):
        ledger.record_steps(n)
        ledger.end_epoch(epoch, l2_norm_clip=2.0 / epoch)
    return ledger


def test_ledger_epsilon_equals_dp_accounting_for_the_composed_events():
    ledger = _adaptive_ledger()
    js = json.loads(json.dumps(ledger.to_json()))
    q, steps = 64 / 1200, 57
    sigma_grad, sigma_count = accounting.adaptive_noise_split(1.1, 3.2)
    assert js["events"] == [{"type": "poisson_sampled_gaussian", "sampling_probability": q, "noise_multiplier": 1.1,
                             "steps": steps,
                             "gaussians": [{"sum": "clipped_gradients", "noise_multiplier": sigma_grad},
                                           {"sum": "unclipped_count_centred", "noise_multiplier": sigma_count}]}]
    # dp-accounting on its own, from the two Gaussian releases of one Poisson sample per step.
    acc = rdp.RdpAccountant(accounting.RDP_ORDERS)
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
        q, dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(sigma_grad),
                                          dp_accounting.GaussianDpEvent(sigma_count)])), steps))
    expected = acc.get_epsilon(1e-5)
    assert accounting.epsilon_of_ledger(js) == pytest.approx(expected, rel=1e-6)
    assert js["epsilon"] == pytest.approx(expected, rel=1e-6)
    # ... per epoch too (events cut at each epoch's steps).
    acc1 = rdp.RdpAccountant(accounting.RDP_ORDERS)
    acc1.compose(dp_accounting.SelfComposedDpEvent(accounting.adaptive_step_event(q, sigma_grad, sigma_count), 19))
    assert accounting.epsilon_of_ledger(js, upto_epoch=1) == pytest.approx(acc1.get_epsilon(1e-5), rel=1e-6)
    # The split's point: the same ε as fixed clipping at the step's σ.
    fixed = accounting.compute_epsilon(n_examples=1200, batch_size=64, noise_multiplier=1.1, steps=steps, delta=1e-5)
    assert accounting.epsilon_of_ledger(js) == pytest.approx(fixed, rel=1e-9)
    # The trajectory of C and the settings are in the ledger.
    assert [r["l2_norm_clip"] for r in js["epochs"]] == pytest.approx([2.0, 1.0, 2.0 / 3])
    assert js["adaptive_clipping"] == {
        "target_unclipped_quantile": 0.5, "clip_learning_rate": 0.2, "clipped_count_stddev": 3.2,
        "gradient_noise_multiplier": sigma_grad, "count_noise_multiplier": sigma_count,
        "initial_l2_norm_clip": 2.0, "final_l2_norm_clip": pytest.approx(2.0 / 3)}


def test_pld_ledger_epsilon_equals_dp_accounting_pld():
    js = _adaptive_ledger("pld", z=2.0, sigma_b=3.2, steps=(40,)).to_json()
    assert "accountant_note" not in js  # PLD itself, within its work bound
    acc = pld.PLDAccountant(value_discretization_interval=accounting.PLD_DISCRETIZATION)
    acc.compose(dp_accounting.PoissonSampledDpEvent(64 / 1200, dp_accounting.GaussianDpEvent(2.0)), 40)
    assert accounting.epsilon_of_ledger(js) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)


def test_fixed_clipping_ledger_is_unchanged():
    ledger = accounting.PrivacyLedger(model_variant="dp", private=True, n_examples=1200, expected_batch_size=64,
                                      noise_multiplier=1.1, l2_norm_clip=2.0, delta=1e-5)
    ledger.record_steps(19)
    ledger.end_epoch(1)
    js = ledger.to_json()
    assert "adaptive_clipping" not in js and "gaussians" not in js["events"][0]
    assert "l2_norm_clip" not in js["epochs"][0]


# --------------------------------------------------------------------------- the step


@pytest.mark.medium
@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.8])
def test_clip_norm_moves_to_the_target_quantile_of_the_norms(quantile, digits):
    x, y, _, _ = digits
    xb, yb = x[:128], y[:128]
    # Learning rate 0: the weights, hence the per-example norms, stay fixed while C adapts.
    step = DPStep(_mlp(), keras.optimizers.SGD(0.0), l2_norm_clip=0.01, noise_multiplier=0.0,
                  expected_batch_size=128, adaptive_clipping=True, target_unclipped_quantile=quantile,
                  clip_learning_rate=0.1, clipped_count_stddev=0.5)
    norms = step.per_example_grad_norms(xb, yb)
    for _ in range(300):
        step(xb, yb)
    c = step.current_l2_norm_clip
    lo, hi = np.quantile(norms, [quantile - 0.05, quantile + 0.05])
    assert lo <= c <= hi, (c, np.quantile(norms, quantile))
    assert abs(float(np.mean(norms <= c)) - quantile) <= 0.05


def test_same_seed_same_trajectory_and_weights(digits):
    x, y, _, _ = digits

    def run(seed):
        model = _mlp()
        result = training.fit(model, x[:400], y[:400], epochs=2, expected_batch_size=40,
                              optimizer=keras.optimizers.SGD(0.2), l2_norm_clip=5.0, noise_multiplier=1.0,
                              seed=seed, verbose=False, adaptive_clipping=True)
        return [e.l2_norm_clip for e in result.history], model.get_weights(), result

    c1, w1, result = run(3)
    c2, w2, _ = run(3)
    c3, _, _ = run(4)
    assert c1 == c2 and all(np.array_equal(a, b) for a, b in zip(w1, w2))
    assert c1 != c3
    assert result.adaptive_clipping["final_l2_norm_clip"] == c1[-1] and result.l2_norm_clip == 5.0
    assert c1[-1] < 5.0


def test_fixed_clipping_builds_no_adaptive_state():
    step = DPStep(_mlp(), keras.optimizers.SGD(0.1), l2_norm_clip=1.0, noise_multiplier=1.0, expected_batch_size=8)
    assert step._clip is None and not step.adaptive_clipping and step.current_l2_norm_clip == 1.0
    stats = step(np.zeros((8, 64), np.float32), np.zeros(8, np.int64))
    assert set(stats) == {"loss_sum", "correct", "count"}


# --------------------------------------------------------------------------- what it buys


@pytest.mark.medium
@pytest.mark.parametrize("badness", [100.0, 0.001])
def test_adaptive_clipping_beats_a_badly_chosen_fixed_clip_at_the_same_epsilon(badness, digits):
    x, y, x_test, y_test = digits
    probe = DPStep(_mlp(), keras.optimizers.SGD(0.0), l2_norm_clip=1.0, expected_batch_size=64)
    clip = badness * float(np.median(probe.per_example_grad_norms(x[:256], y[:256])))
    accuracy, epsilon = {}, {}
    for adaptive in (False, True):
        model = _mlp()
        result = training.fit(model, x, y, epochs=15, expected_batch_size=64, optimizer=keras.optimizers.SGD(0.2),
                              l2_norm_clip=clip, noise_multiplier=1.0, seed=0, verbose=False,
                              adaptive_clipping=adaptive)
        accuracy[adaptive] = _accuracy(model, x_test, y_test)
        ledger = accounting.PrivacyLedger(
            model_variant="dp", private=True, n_examples=len(y), expected_batch_size=64, noise_multiplier=1.0,
            l2_norm_clip=clip, delta=1e-5, adaptive_clipping=None if not adaptive else {
                k: result.adaptive_clipping[k]
                for k in ("target_unclipped_quantile", "clip_learning_rate", "clipped_count_stddev")})
        ledger.record_steps(result.steps)
        epsilon[adaptive] = ledger.epsilon()
    assert epsilon[True] == pytest.approx(epsilon[False], rel=1e-9)
    # Measured (seed 0): 100x: 0.18 fixed, 0.64 adaptive; 0.001x: 0.05 fixed, 0.86 adaptive (a good fixed C: 0.87).
    assert accuracy[True] >= 0.5 and accuracy[True] >= accuracy[False] + 0.3, accuracy


# --------------------------------------------------------------------------- the DPTrainer and make_private


@pytest.mark.medium
def test_dp_trainer_records_the_clip_norm_trajectory_and_composed_events(digits, tmp_path):
    from privacy_audit.components.dp_trainer import trainer

    x, y, _, _ = digits
    recipe = TrainingRecipe(builtin_model="softmax_regression", epochs=2, batch_size=100, learning_rate=0.05,
                            optimizer="sgd", noise_multiplier=1.0, l2_norm_clip=20.0, checkpoint_every=0,
                            adaptive_clipping=True, target_unclipped_quantile=0.6)
    ledger = trainer.train(recipe, x[:600], y[:600], model_dir=str(tmp_path / "m"), run_dir=str(tmp_path / "r"),
                           verbose=False)
    clips = [r["l2_norm_clip"] for r in ledger["epochs"]]
    assert len(clips) == 2 and clips[-1] < clips[0] < 20.0  # starts far above the norms and comes down
    ac = ledger["adaptive_clipping"]
    assert ac["clipped_count_stddev"] == 5.0 and ac["target_unclipped_quantile"] == 0.6  # σ_b = batch / 20
    assert ac["initial_l2_norm_clip"] == 20.0 and ac["final_l2_norm_clip"] == clips[-1]
    log = [json.loads(line) for line in (tmp_path / "r" / "training_log.jsonl").read_text().splitlines()]
    assert [r["l2_norm_clip"] for r in log] == clips
    event = accounting.adaptive_step_event(100 / 600, ac["gradient_noise_multiplier"], ac["count_noise_multiplier"])
    acc = rdp.RdpAccountant(accounting.RDP_ORDERS)
    acc.compose(event, ledger["steps"])
    assert accounting.epsilon_of_ledger(ledger) == pytest.approx(acc.get_epsilon(ledger["delta"]), rel=1e-6)


@pytest.mark.medium
def test_make_private_adapts_c_and_keeps_fixed_clippings_epsilon(digits):
    x, y, _, _ = digits
    histories, ledgers = {}, {}
    for adaptive in (False, True):
        model = pak.make_private(_mlp(), l2_norm_clip=50.0, noise_multiplier=1.0, seed=0, adaptive_clipping=adaptive)
        model.compile(optimizer=keras.optimizers.SGD(0.2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        histories[adaptive] = model.fit(pak.poisson_batches(x[:640], y[:640], expected_batch_size=64, seed=0),
                                        epochs=2, verbose=0).history
        ledgers[adaptive] = pak.privacy_ledger(model).to_json()
    clips = histories[True]["l2_norm_clip"]
    assert "l2_norm_clip" not in histories[False]
    assert len(clips) == 2 and clips[1] < clips[0] < 50.0
    assert [r["l2_norm_clip"] for r in ledgers[True]["epochs"]] == pytest.approx(clips)
    assert histories[True]["epsilon"] == pytest.approx(histories[False]["epsilon"], rel=1e-9)
    assert ledgers[True]["adaptive_clipping"]["clipped_count_stddev"] == pytest.approx(64 / 20)


def test_a_batch_in_chunks_updates_c_as_the_whole_batch(digits):
    x, y, _, _ = digits

    def step():
        return DPStep(_mlp(), keras.optimizers.SGD(0.1), l2_norm_clip=0.5, noise_multiplier=1.0,
                      expected_batch_size=16, seed=5, adaptive_clipping=True)

    whole, chunked = step(), step()
    whole(x[:16], y[:16])
    chunked.accumulate_step([(x[:8], y[:8], None), (x[8:16], y[8:16], None)])
    assert chunked.steps == whole.steps == 1
    assert chunked.current_l2_norm_clip == pytest.approx(whole.current_l2_norm_clip, rel=1e-6)
    assert chunked.current_l2_norm_clip != 0.5
