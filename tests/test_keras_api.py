"""privacy_audit.keras: make_private + Keras fit trains exactly as DPStep, keeps the ledger, audits."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import privacy_audit.keras as pak
from privacy_audit import accounting
from privacy_audit.components.dp_trainer.dp_step import DPStep
from privacy_audit.components.membership_inference.results import read_results


def _data(n=64, d=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype("float32"), rng.integers(0, classes, n)


def _mlp(d=8, classes=3, seed=1):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((d,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(classes)])


def _compile(model, optimizer):
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _epsilon_cli(*args) -> dict:
    out = subprocess.run([sys.executable, "-m", "privacy_audit.pipelines.cli", "epsilon", *args],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.medium
def test_fit_equals_dpstep_and_ledger_equals_cli():
    x, y = _data()
    private = pak.make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.1, delta=1e-3, seed=3)
    _compile(private, keras.optimizers.Adam(0.01))
    data = pak.poisson_batches(x, y, expected_batch_size=16, seed=5)
    history = private.fit(data, epochs=2, verbose=0)

    direct = _mlp()
    step = DPStep(direct, keras.optimizers.Adam(0.01), l2_norm_clip=1.0, noise_multiplier=1.1,
                  expected_batch_size=16, padded_batch_size=data.padded_batch_size, seed=3)
    for epoch in range(2):
        for i in range(len(data)):
            step(*data.batch(epoch, i))
    assert len(data) == 4 and step.steps == 8  # ceil(64 / 16) steps per epoch
    for got, want in zip(private.get_weights(), direct.get_weights()):
        np.testing.assert_array_equal(got, want)

    ledger = pak.privacy_ledger(private).to_json()
    assert ledger["steps"] == 8 and ledger["poisson_guarantee_holds"] is True
    cli = _epsilon_cli("--n", "64", "--batch-size", "16", "--epochs", "2", "--noise-multiplier", "1.1",
                       "--delta", "1e-3")
    assert cli["steps"] == 8 and history.history["epsilon"][1] == pytest.approx(cli["epsilon"], rel=1e-12)
    assert history.history["epsilon"][0] == pytest.approx(accounting.compute_epsilon(
        n_examples=64, batch_size=16, noise_multiplier=1.1, steps=4, delta=1e-3), rel=1e-12)
    assert len(history.history["loss"]) == 2 and "accuracy" in history.history


@pytest.mark.medium
def test_clipping_happens_inside_fit():
    """One example with a huge gradient moves the weights by at most C·lr/B beyond the others."""
    rng = np.random.default_rng(0)
    n, d, classes, clip, lr = 8, 4, 3, 0.5, 0.1
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.integers(0, classes, n)
    x[3] *= 1e4  # its per-example gradient norm is ~1e4 times the others'
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(classes)])
    w0, b0 = [v.astype(np.float64) for v in model.get_weights()]
    pak.make_private(model, l2_norm_clip=clip, noise_multiplier=0.0, delta=1e-3, seed=0)
    _compile(model, keras.optimizers.SGD(lr))
    # q = 1: every example is in the single step's batch.
    model.fit(pak.poisson_batches(x, y, expected_batch_size=n, seed=0), epochs=1, verbose=0)
    w1, b1 = model.get_weights()

    # Per-example gradients of softmax regression by hand: dW = x ⊗ (p - onehot), db = p - onehot.
    z = x.astype(np.float64) @ w0 + b0
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    err = p - np.eye(classes)[y]
    grads = np.concatenate([(x[:, :, None] * err[:, None, :]).reshape(n, -1), err], axis=1)
    norms = np.linalg.norm(grads, axis=1)
    assert norms[3] > 1e3 * clip
    clipped = grads * np.minimum(1.0, clip / norms)[:, None]
    others = np.delete(np.arange(n), 3)
    step_others = -lr / n * clipped[others].sum(0)
    measured = np.concatenate([(w1 - w0).ravel(), b1 - b0]) - step_others
    assert np.linalg.norm(measured) <= clip * lr / n * (1 + 1e-4)
    assert np.linalg.norm(measured) == pytest.approx(clip * lr / n, rel=1e-3)  # the outlier saturates C


@pytest.mark.medium
def test_privacy_metrics_writes_results_and_model_saves(tmp_path):
    x, y = _data(n=96, seed=1)
    xm, ym, xn, yn = x[:64], y[:64], x[64:], y[64:]
    model = pak.make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.1, delta=1e-3, seed=0,
                             model_variant="dp")
    _compile(model, keras.optimizers.Adam(0.01))
    audit = pak.PrivacyMetrics(xm, ym, xn, yn, every_n_epochs=2, output_dir=str(tmp_path / "results"),
                               attacks=["threshold"], slicing=[], min_slice_size=5)
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "ckpt.keras"))
    history = model.fit(pak.poisson_batches(xm, ym, expected_batch_size=32, seed=1), epochs=4, verbose=0,
                        validation_data=(xn, yn), callbacks=[audit, checkpoint])
    assert [os.path.basename(p) for p in audit.paths] == ["dp_epoch_0002.json", "dp_epoch_0004.json"]
    final = read_results(audit.paths[-1])
    assert final["metadata"]["epsilon"] == pytest.approx(history.history["epsilon"][3])
    assert final["metadata"]["epoch"] == 4 and "val_accuracy" in history.history

    # The threshold attack's AUC, independently: sklearn on minus the numpy cross-entropy.
    def losses(xs, ys):
        z = model.predict(xs, verbose=0).astype(np.float64)
        z -= z.max(1, keepdims=True)
        return np.log(np.exp(z).sum(1)) - z[np.arange(len(ys)), ys]
    scores = -np.concatenate([losses(xm, ym), losses(xn, yn)])
    labels = np.r_[np.ones(64), np.zeros(32)]
    assert final["results"][0]["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)

    # A plain Keras model again: save/load needs nothing from privacy_audit.
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(xn, verbose=0), model.predict(xn, verbose=0), rtol=1e-6)
    assert os.path.exists(tmp_path / "ckpt.keras")


@pytest.mark.medium
def test_target_epsilon_is_reached_at_planned_epochs():
    x, y = _data()
    model = pak.make_private(_mlp(), l2_norm_clip=1.0, target_epsilon=4.0, epochs=2, delta=1e-3, seed=0)
    _compile(model, keras.optimizers.SGD(0.1))
    history = model.fit(pak.poisson_batches(x, y, expected_batch_size=16, seed=0), epochs=2, verbose=0)
    sigma = pak.privacy_ledger(model).noise_multiplier
    assert history.history["epsilon"][-1] <= 4.0
    assert history.history["epsilon"][-1] == pytest.approx(4.0, rel=0.01)
    assert history.history["epsilon"][-1] == pytest.approx(
        accounting.compute_epsilon(n_examples=64, batch_size=16, noise_multiplier=sigma, steps=8, delta=1e-3))


@pytest.mark.medium
def test_shuffled_batches_are_flagged_in_the_ledger():
    x, y = _data()
    model = pak.make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.0, delta=1e-3, seed=0)
    _compile(model, keras.optimizers.SGD(0.1))
    data = pak.shuffled_batches(x, y, batch_size=16, seed=0)
    model.fit(data, epochs=1, verbose=0)
    ledger = pak.privacy_ledger(model).to_json()
    assert ledger["sampling"] == "shuffle" and ledger["poisson_guarantee_holds"] is False
    assert "does not strictly hold" in ledger["note"]
    # Every example once per epoch, in seeded fixed-size batches.
    seen = np.concatenate([data.indices(0, i) for i in range(len(data))])
    assert sorted(seen.tolist()) == list(range(64))


def test_poisson_batches_are_seeded_padded_and_masked():
    x, y = _data(n=200)
    data = pak.poisson_batches(x, y, expected_batch_size=20, seed=7)
    assert len(data) == 10
    xb, yb, mask = data[3]
    again = pak.poisson_batches(x, y, expected_batch_size=20, seed=7)[3]
    np.testing.assert_array_equal(xb, again[0])
    idx = data.indices(0, 3)
    assert xb.shape[0] == data.padded_batch_size and mask.sum() == len(idx)
    np.testing.assert_array_equal(xb[:len(idx)], x[idx])
    np.testing.assert_array_equal(yb[:len(idx)], y[idx])
    # Poisson: the mean batch size over many draws is B = 20 (binomial sd of the mean ~0.19).
    sizes = [len(data.indices(e, i)) for e in range(20) for i in range(10)]
    assert abs(np.mean(sizes) - 20) < 1.0


# --------------------------------------------------------------------------- bad input

def test_make_private_refuses_batch_normalization():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
                              keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="GroupNormalization or keras.layers.LayerNormalization"):
        pak.make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)


def test_make_private_refuses_unbuilt_model():
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not built"):
        pak.make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"noise_multiplier": 1.0, "target_epsilon": 3.0, "epochs": 2}, "exactly one.*both"),
    ({}, "exactly one.*neither"),
    ({"target_epsilon": 3.0}, "needs epochs"),
])
def test_make_private_needs_exactly_one_of_sigma_and_target(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pak.make_private(_mlp(), l2_norm_clip=1.0, **kwargs)


def test_make_private_refuses_tf_keras_models():
    tf_keras = pytest.importorskip("tf_keras")
    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
    with pytest.raises(TypeError, match="tf_keras \\(Keras 2\\) models are not supported"):
        pak.make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)


def test_fit_refuses_batch_size_and_raw_arrays():
    x, y = _data()
    model = _compile(pak.make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.0, delta=1e-3),
                     keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="batch_size=32.*conflicts with the Poisson data adapter"):
        model.fit(pak.poisson_batches(x, y, expected_batch_size=16), batch_size=32, verbose=0)
    with pytest.raises(ValueError, match="poisson_batches"):
        model.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="sample_weight"):
        model.fit(pak.poisson_batches(x, y, expected_batch_size=16), sample_weight=np.ones(64), verbose=0)
    assert model.optimizer.iterations.numpy() == 0  # nothing trained


@pytest.mark.medium
def test_fit_refuses_a_second_data_set_on_the_same_ledger():
    x, y = _data()
    model = _compile(pak.make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.0, delta=1e-3),
                     keras.optimizers.SGD(0.1))
    model.fit(pak.poisson_batches(x, y, expected_batch_size=16), verbose=0)
    with pytest.raises(ValueError, match="ledger cannot account"):
        model.fit(pak.poisson_batches(x[:32], y[:32], expected_batch_size=16), verbose=0)
    # The same data again composes: 8 steps in the ledger.
    history = model.fit(pak.poisson_batches(x, y, expected_batch_size=16, seed=1), verbose=0)
    assert pak.privacy_ledger(model).steps == 8
    assert history.history["epsilon"][0] == pytest.approx(accounting.compute_epsilon(
        n_examples=64, batch_size=16, noise_multiplier=1.0, steps=8, delta=1e-3))
    assert math.isfinite(history.history["epsilon"][0])
