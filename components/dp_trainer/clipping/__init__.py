"""Per-layer clipping rules for DP-SGD (see :mod:`.registry`).

Importing this package registers the built-in rules: Dense, EinsumDense (and so
MultiHeadAttention, through its projections), Conv1D, Conv2D, DepthwiseConv2D,
SeparableConv2D, Embedding, LayerNormalization, GroupNormalization. Other layers
with trainable weights fall back to :class:`.vectorised.VectorisedRule`.
"""

# Imported for their @register side effect.
from privacy_audit.components.dp_trainer.clipping import (  # noqa: F401
    conv1d, conv2d, dense, depthwise_conv2d, einsum_dense, embedding, group_norm, layer_norm,
    separable_conv2d)
from privacy_audit.components.dp_trainer.clipping.registry import (
    NORM_METHODS, ClipOptions, ClippingRule, LayerGrads, register, registered_types, rule_for)
from privacy_audit.components.dp_trainer.clipping.vectorised import VectorisedRule, per_example_model_grads

__all__ = ["NORM_METHODS", "ClipOptions", "ClippingRule", "LayerGrads", "register",
           "registered_types", "rule_for", "VectorisedRule", "per_example_model_grads"]
