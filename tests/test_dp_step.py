"""DP-SGD step: clipping, noise, layer rules, validation, determinism.

References are computed independently in float64 numpy (explicit backprop of
softmax regression and a one-hidden-layer MLP), never with the code under test.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from privacy_audit.components.dp_trainer import training  # noqa: E402
from privacy_audit.components.dp_trainer.dp_step import DPStep, check_model_supports_dp  # noqa: E402

N_CLASSES = 4


# ------------------------------------------------------------------ numpy reference

def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _per_example_grads_softmax(weights, x, y):
    w, b = (np.asarray(a, np.float64) for a in weights)
    d = _softmax(x @ w + b)
    d[np.arange(len(y)), y] -= 1.0
    return [np.einsum("bi,bo->bio", x, d), d]


def _per_example_grads_mlp(weights, x, y):
    w1, b1, w2, b2 = (np.asarray(a, np.float64) for a in weights)
    z1 = x @ w1 + b1
    h = np.maximum(z1, 0.0)
    d2 = _softmax(h @ w2 + b2)
    d2[np.arange(len(y)), y] -= 1.0
    d1 = (d2 @ w2.T) * (z1 > 0)
    return [np.einsum("bi,bo->bio", x, d1), d1, np.einsum("bi,bo->bio", h, d2), d2]


def _clipped_mean(per_example, mask, clip, expected_batch_size):
    sq = sum((g.reshape(len(g), -1) ** 2).sum(axis=1) for g in per_example)
    factor = np.minimum(1.0, clip / np.sqrt(sq)) * mask
    return [np.tensordot(factor, g, axes=1) / expected_batch_size for g in per_example]


def _softmax_regression(d_in=6):
    return keras.Sequential([keras.Input((d_in,)), keras.layers.Dense(N_CLASSES)])


def _mlp(d_in=6, hidden=8):
    return keras.Sequential([keras.Input((d_in,)), keras.layers.Dense(hidden, activation="relu"),
                             keras.layers.Dense(N_CLASSES)])


def _data(n, d_in=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in)).astype(np.float32) * 2.0
    y = rng.integers(0, N_CLASSES, n)
    return x, y


def _applied_gradient(model, step, x, y, mask):
    """The gradient an SGD(lr=1) step applied, read from the weight change."""
    before = [np.array(v) for v in model.trainable_variables]
    step(x, y, mask)
    return [b - np.array(v) for b, v in zip(before, model.trainable_variables)]


# ---------------------------------------------------------------- clipping vs numpy

@pytest.mark.parametrize("make_model, reference", [
    (_softmax_regression, _per_example_grads_softmax),
    (_mlp, _per_example_grads_mlp),
])
@pytest.mark.parametrize("fast_clipping, jit", [(True, False), (True, True), (False, False)])
@pytest.mark.medium
def test_noiseless_step_is_mean_of_clipped_per_example_grads(make_model, reference,
                                                             fast_clipping, jit):
    keras.utils.set_random_seed(1)
    model = make_model()
    x, y = _data(12)
    mask = np.ones(12, np.float32)
    mask[[3, 7, 11]] = 0.0            # padding rows ...
    x[[3, 7, 11]] = 50.0               # ... with large values that must not leak in
    expected_batch_size = 10
    per_example = reference([np.array(v) for v in model.trainable_variables],
                            x.astype(np.float64), y)
    norms = np.sqrt(sum((g.reshape(12, -1) ** 2).sum(axis=1) for g in per_example))
    clip = float(np.median(norms[mask > 0]))
    assert (norms[mask > 0] > clip).any() and (norms[mask > 0] < clip).any()  # both regimes
    expected = _clipped_mean(per_example, mask, clip, expected_batch_size)

    step = DPStep(model, keras.optimizers.SGD(1.0), l2_norm_clip=clip, noise_multiplier=0.0,
                  expected_batch_size=expected_batch_size, jit_compile=jit,
                  fast_clipping=fast_clipping)
    np.testing.assert_allclose(step.per_example_grad_norms(x, y, mask),
                               np.where(mask > 0, norms, 0.0), rtol=1e-5, atol=1e-6)
    applied = _applied_gradient(model, step, x, y, mask)
    for got, want in zip(applied, expected):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_non_private_step_is_plain_mean_gradient():
    keras.utils.set_random_seed(2)
    model = _mlp()
    x, y = _data(9)
    mask = np.ones(9, np.float32)
    mask[-2:] = 0.0
    per_example = _per_example_grads_mlp([np.array(v) for v in model.trainable_variables],
                                         x.astype(np.float64), y)
    expected = [np.tensordot(mask, g, axes=1) / mask.sum() for g in per_example]
    step = DPStep(model, keras.optimizers.SGD(1.0), private=False, expected_batch_size=8,
                  jit_compile=False)
    assert step.clipping_path == "none"
    for got, want in zip(_applied_gradient(model, step, x, y, mask), expected):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.medium
def test_noise_std_matches_sigma_c_over_expected_batch_size():
    keras.utils.set_random_seed(3)
    d_in, b_exp, clip, sigma = 20, 8, 0.5, 2.0
    x, y = _data(b_exp, d_in)
    mask = np.ones(b_exp, np.float32)
    clean_model, noisy_model = _softmax_regression(d_in), _softmax_regression(d_in)
    start = [np.array(v) for v in clean_model.trainable_variables]
    clean = DPStep(clean_model, keras.optimizers.SGD(1.0), l2_norm_clip=clip,
                   expected_batch_size=b_exp, jit_compile=False)
    noisy = DPStep(noisy_model, keras.optimizers.SGD(1.0), l2_norm_clip=clip,
                   noise_multiplier=sigma, expected_batch_size=b_exp, seed=11, jit_compile=False)
    samples = []
    for _ in range(20):   # same start each time; the noise RNG step advances
        for model in (clean_model, noisy_model):
            model.set_weights(start)
        g_clean = _applied_gradient(clean_model, clean, x, y, mask)
        g_noisy = _applied_gradient(noisy_model, noisy, x, y, mask)
        samples.append(np.concatenate([(a - b).ravel() for a, b in zip(g_noisy, g_clean)]))
    noise = np.stack(samples)           # [steps, params]
    n = noise.size
    want = sigma * clip / b_exp
    # sd of the sample sd of n normals is ~ want / sqrt(2n); allow 5 of them.
    assert abs(noise.std() - want) < 5 * want / np.sqrt(2 * n)
    assert abs(noise.mean()) < 5 * want / np.sqrt(n)
    assert stats.kstest(noise.ravel() / want, "norm").pvalue > 1e-3
    assert not np.allclose(noise[0], noise[1])  # fresh noise every step


# ---------------------------------------------- layer rules vs vectorised fallback

def _conv_model(strides, padding, dilation, kernel=3):
    return keras.Sequential([
        keras.Input((7, 6, 2)),
        keras.layers.Conv2D(3, kernel, strides=strides, padding=padding, dilation_rate=dilation,
                            activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(N_CLASSES)])


def _embedding_model():
    return keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(6, 3),
                             keras.layers.Flatten(), keras.layers.Dense(N_CLASSES)])


def _sequence_dense_model():
    return keras.Sequential([keras.Input((4, 5)), keras.layers.Dense(6, activation="tanh"),
                             keras.layers.Flatten(), keras.layers.Dense(N_CLASSES)])


def _layer_norm_model(rank3):
    shape = (3, 5) if rank3 else (5,)
    return keras.Sequential([keras.Input(shape), keras.layers.Dense(6),
                             keras.layers.LayerNormalization(), keras.layers.Flatten(),
                             keras.layers.Dense(N_CLASSES)])


def _unregistered_layers_model():
    return keras.Sequential([keras.Input((6, 4)), keras.layers.Conv1D(4, 2, activation="relu"),
                             keras.layers.GroupNormalization(groups=2), keras.layers.Flatten(),
                             keras.layers.Dense(N_CLASSES)])


def _inputs_for(model, n, seed=0):
    rng = np.random.default_rng(seed)
    spec = model.inputs[0]
    shape = (n,) + tuple(spec.shape[1:])
    if "int" in str(spec.dtype):
        x = rng.integers(0, 4, shape).astype(np.int32)  # small range: repeated tokens
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    return x, rng.integers(0, N_CLASSES, n)


class _ScaledDense(keras.layers.Layer):
    """A custom layer with its own weight and a Dense sublayer (no rule: vectorised)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(units)

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, inputs):
        return keras.activations.tanh(self.scale * self.dense(inputs))


def _nested_and_custom_model():
    inner = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="relu"),
                              keras.layers.Dense(5)], name="inner")
    inputs = keras.Input((5,))
    h = _ScaledDense(4)(inner(inputs))
    return keras.Model(inputs, keras.layers.Dense(N_CLASSES)(h))


MODELS = {
    "nested_submodel_and_custom_layer": _nested_and_custom_model,
    "dense_rank2": _mlp,
    "dense_rank3": _sequence_dense_model,
    "conv_s1_same": lambda: _conv_model(1, "same", 1),
    "conv_s2_same": lambda: _conv_model(2, "same", 1),
    "conv_s2_valid": lambda: _conv_model(2, "valid", 1),
    "conv_dilated_same": lambda: _conv_model(1, "same", 2),
    "conv_3x2_s2_valid": lambda: _conv_model((2, 1), "valid", 1, kernel=(3, 2)),
    "embedding": _embedding_model,
    "layer_norm_rank2": lambda: _layer_norm_model(False),
    "layer_norm_rank3": lambda: _layer_norm_model(True),
    "unregistered_conv1d_groupnorm": _unregistered_layers_model,
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.medium
def test_layer_rules_match_vectorised_per_example_grads(name):
    keras.utils.set_random_seed(4)
    model = MODELS[name]()
    x, y = _inputs_for(model, 7)
    mask = np.array([1, 1, 1, 0, 1, 1, 0], np.float32)
    common = dict(l2_norm_clip=0.5, expected_batch_size=5, jit_compile=False)
    reference = DPStep(model, keras.optimizers.SGD(1.0), fast_clipping=False, **common)
    assert reference.clipping_path == "vectorised"
    want_norms = reference.per_example_grad_norms(x, y, mask)
    want_sum = reference.clipped_grad_sum(x, y, mask)
    assert (want_norms[mask > 0] > 0.5).any()
    variants = [dict(norm_method="ghost"), dict(norm_method="explicit"), dict(layer_rules=False)]
    for variant in variants:
        step = DPStep(model, keras.optimizers.SGD(1.0), **common, **variant)
        assert step.clipping_path == "registry"
        np.testing.assert_allclose(step.per_example_grad_norms(x, y, mask), want_norms,
                                   rtol=1e-4, atol=1e-6, err_msg=str(variant))
        for got, want in zip(step.clipped_grad_sum(x, y, mask), want_sum):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=str(variant))


@pytest.mark.medium
def test_conv_per_example_kernels_in_cache_sized_chunks(monkeypatch):
    from privacy_audit.components.dp_trainer.clipping import conv2d

    keras.utils.set_random_seed(8)
    model = _conv_model(1, "same", 1)
    x, y = _inputs_for(model, 6)
    common = dict(l2_norm_clip=0.5, expected_batch_size=6, jit_compile=False)
    want = DPStep(model, keras.optimizers.SGD(1.0), fast_clipping=False, **common)
    want_norms, want_sum = want.per_example_grad_norms(x, y), want.clipped_grad_sum(x, y)
    per_example_bytes = 3 * 3 * 2 * 7 * 6 * 4
    for limit in (1, 2 * per_example_bytes, 4 * per_example_bytes):   # chunks of 1, 2, 3
        monkeypatch.setattr(conv2d, "_CHUNK_BYTES", limit)
        step = DPStep(model, keras.optimizers.SGD(1.0), **common)
        np.testing.assert_allclose(step.per_example_grad_norms(x, y), want_norms, rtol=1e-4)
        for got, ref in zip(step.clipped_grad_sum(x, y), want_sum):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.medium
def test_xla_matches_eager_graph_for_conv_and_embedding():
    for name in ("conv_s2_same", "embedding", "layer_norm_rank3"):
        keras.utils.set_random_seed(5)
        model = MODELS[name]()
        x, y = _inputs_for(model, 6)
        common = dict(l2_norm_clip=0.5, expected_batch_size=6)
        plain = DPStep(model, keras.optimizers.SGD(1.0), jit_compile=False, **common)
        xla = DPStep(model, keras.optimizers.SGD(1.0), jit_compile=True, **common)
        for got, want in zip(xla.clipped_grad_sum(x, y), plain.clipped_grad_sum(x, y)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.medium
def test_shared_layer_falls_back_to_whole_model_vectorised():
    keras.utils.set_random_seed(6)
    inputs = keras.Input((4,))
    shared = keras.layers.Dense(4, activation="tanh")
    logits = keras.layers.Dense(N_CLASSES)(shared(shared(inputs)))
    model = keras.Model(inputs, logits)
    x, y = _inputs_for(model, 5)
    fast = DPStep(model, keras.optimizers.SGD(1.0), l2_norm_clip=0.1, expected_batch_size=5,
                  jit_compile=False)
    got = fast.clipped_grad_sum(x, y)
    assert fast.clipping_path == "vectorised"
    ref = DPStep(model, keras.optimizers.SGD(1.0), l2_norm_clip=0.1, expected_batch_size=5,
                 jit_compile=False, fast_clipping=False)
    for a, b in zip(got, ref.clipped_grad_sum(x, y)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.medium
def test_adam_applies_the_private_gradient():
    keras.utils.set_random_seed(7)
    model = _mlp()
    x, y = _data(16)
    step = DPStep(model, keras.optimizers.Adam(0.05), l2_norm_clip=1.0, noise_multiplier=0.0,
                  expected_batch_size=16, jit_compile=True)
    losses = [step(x, y)["loss_sum"] for _ in range(30)]
    assert losses[-1] < 0.7 * losses[0]
    assert step.steps == 30


# ------------------------------------------------------------------ refusals, errors

def test_batch_normalization_is_refused_with_alternative():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4),
                              keras.layers.BatchNormalization(name="bn1"),
                              keras.layers.Dense(N_CLASSES)])
    with pytest.raises(ValueError, match=r"'bn1' \(BatchNormalization\).*GroupNormalization"):
        check_model_supports_dp(model)
    with pytest.raises(ValueError, match="LayerNormalization"):
        DPStep(model, keras.optimizers.SGD(0.1), l2_norm_clip=1.0, expected_batch_size=4)
    # Non-private baselines may use it.
    DPStep(model, keras.optimizers.SGD(0.1), private=False, expected_batch_size=4)


def test_nested_batch_normalization_is_refused():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(name="inner_bn")])
    model = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(N_CLASSES)])
    with pytest.raises(ValueError, match="inner_bn"):
        check_model_supports_dp(model)


@pytest.mark.parametrize("kwargs, message", [
    (dict(noise_multiplier=-0.1), "noise_multiplier"),
    (dict(l2_norm_clip=0.0), "l2_norm_clip"),
    (dict(l2_norm_clip=-1.0), "l2_norm_clip"),
    (dict(l2_norm_clip=None), "l2_norm_clip"),
    (dict(expected_batch_size=0), "expected_batch_size"),
    (dict(expected_batch_size=41), "expected_batch_size"),
    (dict(sampling="uniform"), "sampling"),
    (dict(epochs=0), "epochs"),
])
def test_fit_validates_arguments(kwargs, message):
    x, y = _data(40)
    args = dict(epochs=1, expected_batch_size=8, optimizer=keras.optimizers.SGD(0.1),
                l2_norm_clip=1.0, noise_multiplier=1.0, verbose=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        training.fit(_softmax_regression(), x, y, **args)


def test_fit_rejects_empty_and_nan_data():
    args = dict(epochs=1, expected_batch_size=2, optimizer=keras.optimizers.SGD(0.1),
                l2_norm_clip=1.0, verbose=False)
    with pytest.raises(ValueError, match="empty"):
        training.fit(_softmax_regression(), np.zeros((0, 6), np.float32), np.zeros(0, int), **args)
    x, y = _data(10)
    x[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"x contains NaN.*row 4"):
        training.fit(_softmax_regression(), x, y, **args)
    x[4, 2] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        training.fit(_softmax_regression(), x, y, **args)


def test_fit_rejects_labels_outside_the_logits():
    x, y = _data(10)
    y[3] = N_CLASSES
    with pytest.raises(ValueError, match=r"class ids in \[0, 4\)"):
        training.fit(_softmax_regression(), x, y, epochs=1, expected_batch_size=2,
                     optimizer=keras.optimizers.SGD(0.1), l2_norm_clip=1.0, verbose=False)


def test_loss_must_be_per_example():
    model = _softmax_regression()
    x, y = _data(4)
    batch_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    step = DPStep(model, keras.optimizers.SGD(0.1), l2_norm_clip=1.0, expected_batch_size=4,
                  jit_compile=False, loss=batch_loss)
    with pytest.raises(ValueError, match="one value per example"):
        step(x, y)


# ------------------------------------------------------------------- determinism

def _train(seed, sigma=1.0):
    keras.utils.set_random_seed(123)   # same initial weights every time
    model = _mlp()
    x, y = _data(64)
    training.fit(model, x, y, epochs=2, expected_batch_size=16,
                 optimizer=keras.optimizers.SGD(0.5), l2_norm_clip=1.0, noise_multiplier=sigma,
                 seed=seed, verbose=False)
    return [np.array(v) for v in model.trainable_variables]


@pytest.mark.medium
def test_same_seed_gives_identical_weights():
    first, again, other = _train(seed=3), _train(seed=3), _train(seed=4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.allclose(a, c) for a, c in zip(first, other))
