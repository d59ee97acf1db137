"""Per-layer clipping rules for DP-SGD (see :mod:`.registry`).

Importing this package registers the built-in rules: Dense, Conv2D, Embedding,
LayerNormalization. Other layers with trainable weights fall back to
:class:`.vectorised.VectorisedRule`.
"""

# Imported for their @register side effect.
from privacy_audit.components.dp_trainer.clipping import conv2d, dense, embedding, layer_norm  # noqa: F401
from privacy_audit.components.dp_trainer.clipping.registry import (
    NORM_METHODS, ClipOptions, ClippingRule, LayerGrads, register, registered_types, rule_for)
from privacy_audit.components.dp_trainer.clipping.vectorised import VectorisedRule, per_example_model_grads

__all__ = ["NORM_METHODS", "ClipOptions", "ClippingRule", "LayerGrads", "register",
           "registered_types", "rule_for", "VectorisedRule", "per_example_model_grads"]
