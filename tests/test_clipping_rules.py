"""Per-layer clipping rules (EinsumDense, MultiHeadAttention, Conv1D, DepthwiseConv2D,
SeparableConv2D, GroupNormalization) and the per-layer fallback.

The reference per-example gradients are computed independently of the code under test: one
``tf.GradientTape`` per example, through Keras' own ``layer.call``, in float64. Each rule must give
the same per-example squared norms, the same clipped sums ``sum_i min(1, C/||g_i||) g_i`` and the
same ``weighted_sum(c)`` for random ``c``, in both its ghost-norm and its explicit form.
"""

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from privacy_audit.components.dp_trainer import dp_step  # noqa: E402
from privacy_audit.components.dp_trainer.clipping import (  # noqa: E402
    VectorisedRule, conv1d, depthwise_conv2d, einsum_dense, embedding, group_norm, layer_norm,
    separable_conv2d)
from privacy_audit.components.dp_trainer.dp_step import DPStep, plan_units  # noqa: E402

N_CLASSES = 4
BATCH = 6
MASK = np.array([1, 1, 1, 0, 1, 1], np.float32)
FALLBACK_MESSAGE = "no clipping rule for"
L = keras.layers


@pytest.fixture
def float64():
    previous = keras.config.floatx()
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx(previous)
    # Keras keeps global state built under float64 (the global seed generator, name counters): cleared so that
    # later tests build and seed their models as in a fresh process.
    keras.backend.clear_session()


# ---------------------------------------------------------------- independent reference

def _reference_grads(model, x, y) -> list:
    """Example i's gradient of its own loss, one tape per example: ``[B, *v.shape]`` per variable."""
    per_variable = [[] for _ in model.trainable_variables]
    for i in range(len(y)):
        with tf.GradientTape() as tape:
            logits = model(x[i:i + 1], training=True)
            loss = keras.losses.sparse_categorical_crossentropy(y[i:i + 1], logits,
                                                                from_logits=True)[0]
        for k, g in enumerate(tape.gradient(loss, model.trainable_variables)):
            per_variable[k].append(np.asarray(tf.convert_to_tensor(g), np.float64))
    return [np.stack(g) for g in per_variable]


def _sq_norms(per_example) -> np.ndarray:
    return sum((g.reshape(len(g), -1) ** 2).sum(axis=1) for g in per_example)


def _inputs(model, seed=0):
    rng = np.random.default_rng(seed)
    spec = model.inputs[0]
    shape = (BATCH,) + tuple(spec.shape[1:])
    if "int" in str(spec.dtype):
        x = rng.integers(0, 5, shape).astype(np.int32)  # small vocabulary: repeated tokens
    else:
        x = rng.standard_normal(shape).astype(keras.config.floatx())
    return x, rng.integers(0, N_CLASSES, BATCH)


def _assert_matches_reference(model, norm_method, rtol=1e-5, atol=1e-6, expect_path="registry"):
    """Norms, clipped sums and random weighted sums of the rules against the reference."""
    x, y = _inputs(model)
    want = _reference_grads(model, x, y)
    want_sq = np.where(MASK > 0, _sq_norms(want), 0.0)
    clip = float(np.median(np.sqrt(want_sq[MASK > 0])))
    step = DPStep(model, keras.optimizers.SGD(1.0), l2_norm_clip=clip, expected_batch_size=BATCH,
                  jit_compile=False, norm_method=norm_method)
    np.testing.assert_allclose(step.per_example_grad_norms(x, y, MASK) ** 2, want_sq,
                               rtol=rtol, atol=atol)
    assert step.clipping_path == expect_path
    factors = MASK * np.minimum(1.0, clip / np.maximum(np.sqrt(want_sq), 1e-12))
    assert 0 < np.sum(factors[MASK > 0] < 1) < np.sum(MASK)  # some clipped, some not
    for got, g in zip(step.clipped_grad_sum(x, y, MASK), want):
        np.testing.assert_allclose(got, np.tensordot(factors, g, axes=1), rtol=rtol, atol=atol)

    # The rules' weighted sums for arbitrary coefficients (the book-keeping path itself).
    sq_norms, weighted, _ = step._norms_and_weighted(*dp_step._to_tensors(x, y, MASK))
    np.testing.assert_allclose(sq_norms, want_sq, rtol=rtol, atol=atol)
    c = np.random.default_rng(1).uniform(-1.0, 2.0, BATCH)
    for got, g in zip(weighted(tf.constant(c, tf.float32)), want):
        np.testing.assert_allclose(got, np.tensordot(c.astype(np.float32) * MASK, g, axes=1),
                                   rtol=rtol, atol=atol)


def _assert_planned(model, expected: dict):
    """Every layer of the DP step's plan is on a rule, and layers of each type in ``expected``
    ({layer class: rule class}) are on that rule."""
    units = plan_units(model)
    assert units is not None
    rules = {u.layer.name: type(u.rule) for u in units}
    assert VectorisedRule not in rules.values(), rules
    for layer_type, rule in expected.items():
        kinds = {type(u.rule) for u in units if type(u.layer) is layer_type}
        assert kinds == {rule}, (layer_type, rules)


def _head(inputs, h):
    return keras.Model(inputs, L.Dense(N_CLASSES)(L.Flatten()(h)))


# ------------------------------------------------------------------------------ models

def _einsum(shape, equation, output_shape, bias_axes):
    inputs = keras.Input(shape)
    layer = L.EinsumDense(equation, output_shape, bias_axes=bias_axes, activation="tanh",
                          name="einsum")
    return _head(inputs, layer(inputs))


def _attention(**kwargs):
    inputs = keras.Input((5, 6))
    return _head(inputs, L.MultiHeadAttention(name="mha", **kwargs)(inputs, inputs))


def _conv1d(**kwargs):
    inputs = keras.Input((9, 3))
    return _head(inputs, L.Conv1D(4, activation="relu", name="conv", **kwargs)(inputs))


def _depthwise(**kwargs):
    inputs = keras.Input((7, 6, 3))
    return _head(inputs, L.DepthwiseConv2D(activation="relu", name="conv", **kwargs)(inputs))


def _separable(**kwargs):
    inputs = keras.Input((7, 6, 3))
    return _head(inputs, L.SeparableConv2D(4, activation="relu", name="conv", **kwargs)(inputs))


def _group_norm(shape, **kwargs):
    inputs = keras.Input(shape)
    h = L.Dense(shape[-1])(inputs)
    return _head(inputs, L.GroupNormalization(name="norm", **kwargs)(h))


def bert_block(vocab=11, length=6, dim=8):
    """Embedding -> MultiHeadAttention(4 heads) + LayerNorm + Dense FFN -> pooling -> Dense."""
    inputs = keras.Input((length,), dtype="int32")
    h = L.Embedding(vocab, dim)(inputs)
    h = L.LayerNormalization()(h + L.MultiHeadAttention(num_heads=4, key_dim=2)(h, h))
    ffn = L.Dense(dim)(L.Dense(2 * dim, activation="gelu")(h))
    h = L.LayerNormalization()(h + ffn)
    return keras.Model(inputs, L.Dense(N_CLASSES)(L.GlobalAveragePooling1D()(h)))


def conv1d_text_model(vocab=11, length=8):
    inputs = keras.Input((length,), dtype="int32")
    h = L.Embedding(vocab, 6)(inputs)
    h = L.Conv1D(5, 3, padding="causal", activation="relu")(h)
    h = L.GroupNormalization(groups=1)(h)
    return keras.Model(inputs, L.Dense(N_CLASSES)(L.GlobalMaxPooling1D()(h)))


RULE_MODELS = {
    # name: (model builder, {layer class: the rule class its layers must use})
    "einsum_dense_like": (lambda: _einsum((5,), "ab,bc->ac", 3, "c"),
                          {L.EinsumDense: einsum_dense.EinsumDenseRule}),
    "einsum_sequence": (lambda: _einsum((4, 5), "abc,cd->abd", (4, 3), "d"),
                        {L.EinsumDense: einsum_dense.EinsumDenseRule}),
    "einsum_heads_bias_de": (lambda: _einsum((4, 5), "abc,cde->abde", (4, 2, 3), "de"),
                             {L.EinsumDense: einsum_dense.EinsumDenseRule}),
    "einsum_left_ellipsis": (lambda: _einsum((4, 5), "...b,bc->...c", 3, "c"),
                             {L.EinsumDense: einsum_dense.EinsumDenseRule}),
    "einsum_right_ellipsis": (lambda: _einsum((3, 4, 2), "abc...,cd->abd...", (3, 5), "d"),
                              {L.EinsumDense: einsum_dense.EinsumDenseRule}),
    "einsum_per_position_kernel": (lambda: _einsum((4, 5), "abc,bcd->abd", (4, 3), "bd"),
                                   {L.EinsumDense: einsum_dense.EinsumDenseRule}),
    "einsum_input_only_axis_no_bias": (lambda: _einsum((4, 5), "abc,cd->ad", 3, None),
                                       {L.EinsumDense: einsum_dense.EinsumDenseRule}),
    "attention": (lambda: _attention(num_heads=4, key_dim=2),
                  {L.EinsumDense: einsum_dense.EinsumDenseRule}),
    "attention_value_dim_no_bias": (lambda: _attention(num_heads=2, key_dim=3, value_dim=2,
                                                       use_bias=False),
                                    {L.EinsumDense: einsum_dense.EinsumDenseRule}),
    "conv1d_valid": (lambda: _conv1d(kernel_size=3), {L.Conv1D: conv1d.Conv1DRule}),
    "conv1d_same_stride2": (lambda: _conv1d(kernel_size=3, padding="same", strides=2),
                            {L.Conv1D: conv1d.Conv1DRule}),
    "conv1d_causal_dilated": (lambda: _conv1d(kernel_size=2, padding="causal", dilation_rate=2),
                              {L.Conv1D: conv1d.Conv1DRule}),
    "conv1d_no_bias_stride2_valid": (lambda: _conv1d(kernel_size=4, strides=2, use_bias=False),
                                     {L.Conv1D: conv1d.Conv1DRule}),
    "depthwise_same": (lambda: _depthwise(kernel_size=3, padding="same"),
                       {L.DepthwiseConv2D: depthwise_conv2d.DepthwiseConv2DRule}),
    "depthwise_valid_stride2_mult2": (lambda: _depthwise(kernel_size=(3, 2), strides=2,
                                                         depth_multiplier=2),
                                      {L.DepthwiseConv2D: depthwise_conv2d.DepthwiseConv2DRule}),
    "depthwise_dilated_no_bias": (lambda: _depthwise(kernel_size=2, dilation_rate=2,
                                                     use_bias=False),
                                  {L.DepthwiseConv2D: depthwise_conv2d.DepthwiseConv2DRule}),
    "separable_same": (lambda: _separable(kernel_size=3, padding="same"),
                       {L.SeparableConv2D: separable_conv2d.SeparableConv2DRule}),
    "separable_valid_stride2_mult2": (lambda: _separable(kernel_size=2, strides=2,
                                                         depth_multiplier=2),
                                      {L.SeparableConv2D: separable_conv2d.SeparableConv2DRule}),
    "separable_dilated_no_bias": (lambda: _separable(kernel_size=2, dilation_rate=2,
                                                     use_bias=False),
                                  {L.SeparableConv2D: separable_conv2d.SeparableConv2DRule}),
    "group_norm_rank3": (lambda: _group_norm((5, 6), groups=3),
                         {L.GroupNormalization: group_norm.GroupNormalizationRule}),
    "group_norm_rank4_no_center": (lambda: _group_norm((3, 2, 4), groups=2, center=False),
                                   {L.GroupNormalization: group_norm.GroupNormalizationRule}),
    "group_norm_channel_axis1": (lambda: _group_norm((4, 6), groups=2, axis=1),
                                 {L.GroupNormalization: group_norm.GroupNormalizationRule}),
    "bert_block": (bert_block, {L.Embedding: embedding.EmbeddingRule,
                                L.EinsumDense: einsum_dense.EinsumDenseRule,
                                L.LayerNormalization: layer_norm.LayerNormalizationRule}),
    "conv1d_text": (conv1d_text_model, {L.Conv1D: conv1d.Conv1DRule,
                                        L.GroupNormalization: group_norm.GroupNormalizationRule}),
}


# ------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("norm_method", ["ghost", "explicit"])
@pytest.mark.parametrize("name", sorted(RULE_MODELS))
@pytest.mark.medium
def test_rule_equals_per_example_gradients(name, norm_method, float64):
    keras.utils.set_random_seed(3)
    make, expected_rules = RULE_MODELS[name]
    model = make()
    _assert_planned(model, expected_rules)
    _assert_matches_reference(model, norm_method)


@pytest.mark.medium
def test_bert_block_dp_step_trains_on_rules_without_fallback(caplog):
    keras.utils.set_random_seed(7)
    model = bert_block()
    rng = np.random.default_rng(7)
    x = rng.integers(0, 11, (32, 6)).astype(np.int32)
    y = x[:, 0] % N_CLASSES                                   # learnable from the first token
    step = DPStep(model, keras.optimizers.Adam(1e-2), l2_norm_clip=1.0, noise_multiplier=0.5,
                  expected_batch_size=8, padded_batch_size=8, seed=0)
    assert step.clipping_path == "registry"
    before = [np.array(v) for v in model.trainable_variables]
    with caplog.at_level(logging.WARNING):
        stats = [step(x[k:k + 8], y[k:k + 8], np.ones(8, np.float32)) for k in range(0, 32, 8)]
    assert step.clipping_path == "registry" and step.steps == 4
    assert all(np.isfinite(s["loss_sum"]) and s["count"] == 8 for s in stats)
    assert all(not np.allclose(b, np.array(v)) for b, v in zip(before, model.trainable_variables))
    # No per-layer fallback, no whole-model fallback, no XLA fallback: nothing to warn about.
    assert not [r.getMessage() for r in caplog.records if r.name == dp_step.logger.name]


class _Scale(keras.layers.Layer):
    """A custom layer with one trainable weight and no clipping rule."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, inputs):
        return inputs * self.scale


@pytest.mark.medium
def test_unruled_layer_uses_fallback_for_that_layer_only_and_warns_once(caplog, float64):
    keras.utils.set_random_seed(9)
    inputs = keras.Input((4, 5))
    h = L.Conv1D(6, 2, padding="causal", activation="tanh", name="conv")(inputs)
    h = _Scale(name="my_scale")(h)
    h = L.LayerNormalization(name="norm")(h)
    model = keras.Model(inputs, L.Dense(N_CLASSES, name="logits")(L.Flatten()(h)))
    x, y = _inputs(model)

    with caplog.at_level(logging.WARNING, logger=dp_step.logger.name):
        step = DPStep(model, keras.optimizers.SGD(0.0), l2_norm_clip=0.3,
                      expected_batch_size=BATCH, jit_compile=False)
        for _ in range(3):
            step(x, y, MASK)
        step.clipped_grad_sum(x, y, MASK)
        step.per_example_grad_norms(x, y, MASK)
    warnings = [r.getMessage() for r in caplog.records if FALLBACK_MESSAGE in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "my_scale" in warnings[0] and "_Scale" in warnings[0]
    for other in ("'conv'", "'norm'", "'logits'"):
        assert other not in warnings[0]
    rules = {u.layer.name: type(u.rule) for u in step._units}
    assert rules["my_scale"] is VectorisedRule
    assert [n for n, r in rules.items() if r is VectorisedRule] == ["my_scale"]
    assert rules["conv"] is conv1d.Conv1DRule and rules["norm"] is layer_norm.LayerNormalizationRule

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=dp_step.logger.name):
        _assert_matches_reference(model, "auto")   # the whole model's per-example gradients


class _PositionEmbedding(keras.layers.Layer):
    """Adds an Embedding of the positions 0..T-1: a call on a tensor that is not from the batch."""

    def __init__(self, length, dim, **kwargs):
        super().__init__(**kwargs)
        self.positions = L.Embedding(length, dim)

    def call(self, inputs):
        return inputs + self.positions(keras.ops.arange(keras.ops.shape(inputs)[1]))


@pytest.mark.medium
def test_layer_called_outside_the_batch_uses_whole_model_gradients(float64):
    # T == B: the Embedding rule would take the T positions for B examples without an error.
    keras.utils.set_random_seed(10)
    inputs = keras.Input((BATCH,), dtype="int32")
    h = _PositionEmbedding(BATCH, 3)(L.Embedding(7, 3)(inputs))
    model = keras.Model(inputs, L.Dense(N_CLASSES)(L.Flatten()(h)))
    assert plan_units(model) is not None          # the plan alone cannot see it
    _assert_matches_reference(model, "auto", expect_path="vectorised")
