"""fit(): DP training on the digits data, reporting, modes, model types."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from privacy_audit.components.dp_trainer import training  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    return x[:1000], data.target[:1000]


def _mlp():
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10)])


@pytest.mark.medium
def test_dp_training_learns_and_reports_each_epoch(digits, capsys):
    x, y = digits
    keras.utils.set_random_seed(0)
    seen = []
    result = training.fit(_mlp(), x, y, epochs=3, expected_batch_size=50,
                          optimizer=keras.optimizers.Adam(0.01), l2_norm_clip=1.0,
                          noise_multiplier=1.0, seed=1, on_epoch_end=seen.append)
    assert result.sampling == "poisson" and result.poisson_guarantee_holds
    assert result.private and result.clipping_path == "registry"
    assert result.steps == 3 * 20 == seen[-1].total_steps
    assert [e.epoch for e in seen] == [1, 2, 3]
    for e in seen:
        assert e.steps_in_epoch == len(e.batch_sizes) == 20
        assert e.examples_sampled == sum(e.batch_sizes)
        assert 0.0 <= e.train_accuracy <= 1.0 and np.isfinite(e.mean_train_loss)
    assert result.history == seen
    assert seen[-1].train_accuracy > 0.6          # chance is 0.1
    assert seen[-1].mean_train_loss < seen[0].mean_train_loss
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3 and "epoch 3/3" in out[-1] and "loss=" in out[-1] \
        and "accuracy=" in out[-1] and out[-1].endswith("s")
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["sampling"] == "poisson" and summary["noise_multiplier"] == 1.0
    assert summary["sampling_probability"] == pytest.approx(0.05)


def test_shuffle_mode_is_reported(digits):
    x, y = digits
    keras.utils.set_random_seed(0)
    seen = []
    result = training.fit(_mlp(), x[:200], y[:200], epochs=1, expected_batch_size=64,
                          optimizer=keras.optimizers.SGD(0.1), l2_norm_clip=1.0,
                          noise_multiplier=0.5, sampling="shuffle", on_epoch_end=seen.append,
                          verbose=False, jit_compile=False)
    assert result.sampling == "shuffle" and not result.poisson_guarantee_holds
    assert seen[0].batch_sizes == (64, 64, 64, 8) and seen[0].examples_sampled == 200


def test_non_private_baseline_uses_same_loop(digits):
    x, y = digits
    keras.utils.set_random_seed(0)
    result = training.fit(_mlp(), x, y, epochs=3, expected_batch_size=50,
                          optimizer=keras.optimizers.Adam(0.01), private=False,
                          noise_multiplier=0.0, verbose=False)
    assert not result.private and result.clipping_path == "none"
    assert result.noise_multiplier is None and result.l2_norm_clip is None
    assert result.history[-1].train_accuracy > 0.85


@pytest.mark.medium
def test_cnn_with_layer_norm_and_embedding_models_train():
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    cnn = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(), keras.layers.Flatten(), keras.layers.LayerNormalization(),
        keras.layers.Dense(3)])
    x = rng.standard_normal((60, 8, 8, 1)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(int)
    result = training.fit(cnn, x, y, epochs=2, expected_batch_size=20,
                          optimizer=keras.optimizers.SGD(0.1), l2_norm_clip=1.0,
                          noise_multiplier=0.3, verbose=False)
    assert result.clipping_path == "registry" and result.steps == 6

    text = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(20, 4),
                             keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2)])
    tokens = rng.integers(0, 20, (40, 6)).astype(np.int32)
    labels = (tokens[:, 0] > 9).astype(int)
    result = training.fit(text, tokens, labels, epochs=1, expected_batch_size=10,
                          optimizer=keras.optimizers.SGD(0.1), l2_norm_clip=1.0,
                          noise_multiplier=0.3, verbose=False)
    assert result.steps == 4


@pytest.mark.medium
def test_multi_input_functional_model():
    rng = np.random.default_rng(1)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = keras.layers.Concatenate()([keras.layers.Dense(4, activation="relu")(a),
                                    keras.layers.Dense(4, activation="relu")(b)])
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(2)(h))
    x = {"a": rng.standard_normal((30, 3)).astype(np.float32),
         "b": rng.standard_normal((30, 2)).astype(np.float32)}
    y = rng.integers(0, 2, 30)
    result = training.fit(model, x, y, epochs=1, expected_batch_size=10,
                          optimizer=keras.optimizers.SGD(0.1), l2_norm_clip=1.0,
                          noise_multiplier=0.5, verbose=False, jit_compile=False)
    assert result.steps == 3 and result.clipping_path == "registry"


class SubclassedMLP(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(3)

    def call(self, inputs):
        return self.out(self.hidden(inputs))


@pytest.mark.medium
def test_unbuilt_subclassed_model_uses_layer_rules():
    from privacy_audit.components.dp_trainer.dp_step import DPStep

    rng = np.random.default_rng(2)
    x = rng.standard_normal((24, 5)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    keras.utils.set_random_seed(0)
    model = SubclassedMLP()
    result = training.fit(model, x, y, epochs=1, expected_batch_size=8,
                          optimizer=keras.optimizers.SGD(0.1), l2_norm_clip=1.0,
                          noise_multiplier=0.5, verbose=False, jit_compile=False)
    assert result.clipping_path == "registry" and result.steps == 3
    fast = DPStep(model, keras.optimizers.SGD(0.1), l2_norm_clip=0.1, expected_batch_size=8,
                  jit_compile=False)
    slow = DPStep(model, keras.optimizers.SGD(0.1), l2_norm_clip=0.1, expected_batch_size=8,
                  jit_compile=False, fast_clipping=False)
    np.testing.assert_allclose(fast.per_example_grad_norms(x, y), slow.per_example_grad_norms(x, y),
                               rtol=1e-5)
