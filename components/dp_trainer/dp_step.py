"""One DP-SGD step for a Keras 3 model: per-example clipping, Gaussian noise, update.

For a padded batch ``(x, y, mask)`` the private step computes

    g = (sum_{i: mask_i = 1} clip_C(grad loss_i) + N(0, (noise_multiplier * C)^2 I))
        / expected_batch_size

with ``clip_C(g) = g * min(1, C / ||g||)`` and ``C = l2_norm_clip``, then lets any
Keras optimizer apply ``g``. Dividing by the *expected* batch size (not the
realised one) keeps the sensitivity of the sum at C, as Poisson-sampled
accounting assumes.

Per-example norms and the clipped sum come from one forward and one backward
pass (see :mod:`privacy_audit.components.dp_trainer.clipping`): each layer's call is replaced
during the forward pass by its rule, which keeps the layer input and exposes the
pre-activation output ``z``; one backward pass gives ``dL/dz`` for all layers,
from which each rule computes per-example norms (ghost norms, or explicit
per-example gradients where cheaper) and then the clipped sum directly
("book-keeping"). Layers without a rule use per-example vector-Jacobian
products (``tf.vectorized_map``); models that cannot be split into layers (a
layer called twice) use whole-model vectorised per-example gradients.

The non-private mode (``private=False``) shares the signature: it applies the
plain mean gradient over the real (unmasked) examples, for baselines.

Noise is drawn from a stateless RNG keyed on ``(seed, step)``: the same seed and
the same step count give the same noise.

Adaptive clipping (``adaptive_clipping=True``; Andrew, Thakkar, McMahan,
Ramaswamy 2021) makes C a ``tf.Variable`` that follows a private estimate of the
``target_unclipped_quantile`` γ of the per-example gradient norms. The same
compiled gradient pass that clips also counts, over the sampled rows, the
centred unclipped indicators ``sum_i (1[||g_i|| <= C] - 1/2)`` (sensitivity 1/2);
the update step then adds ``N(0, sigma_b^2)`` to it (its own stateless key),
forms ``b = count / expected_batch_size + 1/2`` (the noisy unclipped fraction)
and sets ``C <- C * exp(-clip_learning_rate * (b - gamma))`` after the gradient
has been noised with the C it was clipped to. ``noise_multiplier`` is then the
step's total z: the gradient gets ``sigma_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``
so that both releases together are one Gaussian of multiplier z (see
:func:`accounting.adaptive_noise_split`). With a fixed C none of these ops exist.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from privacy_audit.components.dp_trainer import accounting, clipping
from privacy_audit.components.dp_trainer.clipping import layer_norm as _layer_norm
from privacy_audit.components.dp_trainer.clipping import vectorised as _vectorised
from privacy_audit.components.dp_trainer.sampling import check_int

logger = logging.getLogger(__name__)

PerExampleLoss = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

_ZERO = tf.UnconnectedGradients.ZERO
_VECTORISED = _vectorised.VectorisedRule()
# Layers whose output for one example depends on other examples of the batch.
_BATCH_MIXING = {
    "BatchNormalization": "keras.layers.GroupNormalization or keras.layers.LayerNormalization",
    "SyncBatchNormalization": "keras.layers.GroupNormalization or keras.layers.LayerNormalization",
}


# --------------------------------------------------------------------------- losses

def _mean_over_rows(t: tf.Tensor) -> tf.Tensor:
    if t.shape.rank == 1:
        return t
    return tf.reduce_mean(tf.reshape(t, [tf.shape(t)[0], -1]), axis=1)


def _sparse_categorical_crossentropy(y, logits):
    labels = tf.cast(y, tf.int32)
    if labels.shape.rank == logits.shape.rank:  # [B, 1] labels for [B, K] logits
        labels = tf.squeeze(labels, axis=-1)
    return _mean_over_rows(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def _categorical_crossentropy(y, logits):
    return _mean_over_rows(tf.nn.softmax_cross_entropy_with_logits(
        labels=tf.cast(y, logits.dtype), logits=logits))


def _binary_crossentropy(y, logits):
    labels = tf.reshape(tf.cast(y, logits.dtype), tf.shape(logits))
    return _mean_over_rows(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))


def _mean_squared_error(y, outputs):
    return _mean_over_rows(tf.square(outputs - tf.reshape(tf.cast(y, outputs.dtype),
                                                          tf.shape(outputs))))


LOSSES: dict[str, PerExampleLoss] = {
    "sparse_categorical_crossentropy": _sparse_categorical_crossentropy,
    "categorical_crossentropy": _categorical_crossentropy,
    "binary_crossentropy": _binary_crossentropy,
    "mean_squared_error": _mean_squared_error,
}


def per_example_loss_fn(loss: str | PerExampleLoss) -> PerExampleLoss:
    """Resolves a loss name (all from logits) or a callable to a per-example loss.

    Args:
      loss: one of ``LOSSES`` ("sparse_categorical_crossentropy",
        "categorical_crossentropy", "binary_crossentropy",
        "mean_squared_error"), or a callable ``(y [B, ...], logits [B, ...]) ->
        [B]`` that returns one loss per example (a Keras loss object needs
        ``reduction=None``).
    """
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable returning one "
                         f"loss per example; got {loss!r}")
    return LOSSES[loss]


def _checked_losses(loss_fn: PerExampleLoss, y, logits) -> tf.Tensor:
    losses = loss_fn(y, logits)
    if losses.shape.rank != 1:
        raise ValueError("the loss must return one value per example (shape [batch]); got shape "
                         f"{losses.shape}. A Keras loss object needs reduction=None.")
    return tf.cast(losses, tf.float32)


def _correct(y, logits) -> tf.Tensor:
    """1.0 where the prediction is right, for classification outputs; zeros otherwise."""
    batch = tf.shape(logits)[0]
    if logits.shape.rank == 2 and (logits.shape[-1] or 0) > 1:
        pred = tf.argmax(logits, axis=-1, output_type=tf.int64)
        if y.dtype.is_integer and (y.shape.rank == 1 or (y.shape.rank == 2 and y.shape[-1] == 1)):
            labels = tf.reshape(tf.cast(y, tf.int64), [batch])
        elif y.shape.rank == 2 and y.shape[-1] == logits.shape[-1]:
            labels = tf.argmax(y, axis=-1, output_type=tf.int64)
        else:
            return tf.zeros([batch])
        return tf.cast(tf.equal(pred, labels), tf.float32)
    if logits.shape.rank in (1, 2) and (logits.shape.rank == 1 or logits.shape[-1] == 1):
        pred = tf.reshape(logits, [batch]) > 0
        labels = tf.reshape(tf.cast(y, tf.float32), [batch]) > 0.5
        return tf.cast(tf.equal(pred, labels), tf.float32)
    return tf.zeros([batch])


def has_accuracy(y_shape: Sequence, y_dtype, logits_shape: Sequence) -> bool:
    """Whether ``_correct`` is meaningful for these label/logit shapes."""
    y_dtype = tf.as_dtype(y_dtype)
    if len(logits_shape) == 2 and (logits_shape[-1] or 0) > 1:
        sparse = y_dtype.is_integer and (len(y_shape) == 1
                                         or (len(y_shape) == 2 and y_shape[-1] == 1))
        return sparse or (len(y_shape) == 2 and y_shape[-1] == logits_shape[-1])
    return len(logits_shape) == 1 or (len(logits_shape) == 2 and logits_shape[-1] == 1)


# ----------------------------------------------------------------------- validation

def _has_convolutions(model) -> bool:
    return any("Conv" in type(layer).__name__ for layer in _all_layers(model))


def validate_dp_params(l2_norm_clip, noise_multiplier, private: bool = True) -> None:
    """Raises ValueError for impossible DP parameters (names the argument)."""
    if noise_multiplier is None or not np.isfinite(noise_multiplier) or noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be a finite number >= 0; got {noise_multiplier!r}")
    if private and l2_norm_clip is None:
        raise ValueError("l2_norm_clip is required when private=True (the per-example gradient "
                         "L2 bound C, e.g. 1.0)")
    if l2_norm_clip is not None and (not np.isfinite(l2_norm_clip) or l2_norm_clip <= 0):
        raise ValueError(f"l2_norm_clip must be a finite number > 0; got {l2_norm_clip!r}")


def _own_and_sub_layers(layer) -> list:
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _all_layers(model) -> list:
    return list(model._flatten_layers(include_self=True, recursive=True))


def check_model_supports_dp(model) -> None:
    """Refuses models whose per-example gradients are not per-example.

    Raises:
      TypeError: ``model`` is not a Keras 3 model/layer (e.g. a tf_keras model).
      ValueError: the model is not built, or a layer mixes the examples of a
        batch (BatchNormalization, LayerNormalization over the batch axis) or
        adds a data-dependent loss (activity_regularizer). The message names
        the layer and what to use instead.
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError("model must be a Keras 3 model (import keras); got "
                        f"{type(model).__name__}. tf_keras (Keras 2) models are not supported.")
    if not model.built:
        raise ValueError("the model is not built: give it a keras.Input or call it once on a batch "
                         "before creating the DP step")
    for layer in _all_layers(model):
        kind = type(layer).__name__
        if isinstance(layer, keras.layers.BatchNormalization) or kind in _BATCH_MIXING:
            use = _BATCH_MIXING.get(kind, _BATCH_MIXING["BatchNormalization"])
            raise ValueError(
                f"layer '{layer.name}' ({kind}) normalises with statistics computed across the "
                "examples of a batch, so one example's output and gradient depend on the others "
                "and per-example clipping no longer bounds its influence (no DP guarantee). "
                f"Use {use} instead.")
        if isinstance(layer, keras.layers.LayerNormalization):
            axes = _layer_norm.normalized_axes(layer)
            if axes is not None and 0 in axes:
                raise ValueError(
                    f"layer '{layer.name}' (LayerNormalization) normalises over the batch axis 0, "
                    "which mixes examples; normalise over feature axes only (axis=-1).")
        if getattr(layer, "activity_regularizer", None) is not None:
            raise ValueError(
                f"layer '{layer.name}' ({kind}) has an activity_regularizer: a data-dependent "
                "batch loss outside the per-example losses that DP-SGD clips. Remove it, or add "
                "the penalty to a per-example loss callable.")


# -------------------------------------------------------------- layer interception

class _NeedsWholeModel(Exception):
    """Raised while tracing when layer-wise clipping cannot be used."""


class _Unit:
    """One layer handled by one rule, covering its trainable variables."""

    def __init__(self, layer, rule):
        self.layer = layer
        self.rule = rule
        self.variables = rule.variables(layer)


def plan_units(model, registry_enabled: bool = True) -> list | None:
    """Splits a model's trainable variables into layers handled by one rule each.

    Registered layers get their rule; other layers with trainable variables get
    the vectorised per-layer fallback, unless all their variables belong to
    sublayers (then the sublayers are planned). Returns None when the split is
    not exact (a variable shared by two layers). With the registry enabled, the
    layers sent to the fallback are named in one warning per plan (the plan is
    made once per DPStep, not per step).
    """
    units, seen = [], set()

    def visit(layer):
        own = layer.trainable_variables
        if not own or id(layer) in seen:
            return
        seen.add(id(layer))
        rule = clipping.rule_for(layer) if registry_enabled else None
        if rule is not None and layer is not model:
            units.append(_Unit(layer, rule))
            return
        subs = _own_and_sub_layers(layer)
        sub_ids = {id(v) for s in subs for v in s.trainable_variables}
        if subs and {id(v) for v in own} <= sub_ids:
            for sub in subs:
                visit(sub)
            return
        units.append(_Unit(layer, _VECTORISED))

    visit(model)
    covered = [id(v) for u in units for v in u.variables]
    expected = {id(v) for v in model.trainable_variables}
    if len(covered) != len(set(covered)) or set(covered) != expected:
        return None
    fallback = [u.layer for u in units if u.rule is _VECTORISED]
    if registry_enabled and fallback:
        logger.warning("no clipping rule for %s: vectorised per-example gradients for %s only "
                       "(the other layers keep their rules)",
                       ", ".join(f"layer '{layer.name}' ({type(layer).__name__})"
                                 for layer in fallback),
                       "this layer" if len(fallback) == 1 else "these layers")
    return units


def _from_batch(tensor, sources: set) -> bool:
    """Whether a traced ``tensor`` is computed from a graph op in ``sources`` (the batch's).

    True when it cannot tell (an eager tensor carries no graph).
    """
    if tf.executing_eagerly() or not isinstance(tensor, tf.Tensor):
        return True
    seen, stack = set(), [tensor.op]
    while stack:
        op = stack.pop()
        if op.name in sources:
            return True
        if op.name not in seen:
            seen.add(op.name)
            stack.extend(t.op for t in op.inputs)
    return False


@contextlib.contextmanager
def _intercepted(units: Sequence[_Unit], tape: tf.GradientTape, batch=()):
    """Replaces each unit's ``layer.call`` by its rule while the block runs.

    Yields a list (one per unit) of the ``(targets, context)`` recorded at each
    call. The instance attribute shadows the class method; Keras' ``__call__``
    still does input conversion, masking and naming around it. A call on a
    tensor not computed from ``batch`` (e.g. a position embedding of
    ``tf.range``) has no per-example rows: it runs the layer's own call and
    records None.
    """
    records: list[list] = [[] for _ in units]
    patched = []
    sources = ({t.op.name for t in tf.nest.flatten(batch) if isinstance(t, tf.Tensor)}
               if not tf.executing_eagerly() else set())

    def make_wrapper(index, unit, original):
        def wrapper(*args, **kwargs):
            first = args[0] if args else kwargs.get("inputs")
            if sources and not all(_from_batch(t, sources) for t in tf.nest.flatten(first)):
                records[index].append(None)
                return original(*args, **kwargs)
            outputs, targets, context = unit.rule.forward(unit.layer, original, *args, **kwargs)
            for t in targets:
                tape.watch(t)
            records[index].append((targets, context))
            return outputs
        return wrapper

    try:
        for index, unit in enumerate(units):
            layer = unit.layer
            previous = layer.__dict__.get("call")
            object.__setattr__(layer, "call", make_wrapper(index, unit, layer.call))
            patched.append((layer, previous))
        yield records
    finally:
        for layer, previous in patched:
            if previous is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", previous)


# ---------------------------------------------------------------------------- step

def gaussian_noise(shape, key: tf.Tensor, dtype=tf.float32) -> tf.Tensor:
    """Standard normal noise of ``shape`` from a stateless key (Box-Muller).

    Box-Muller on two independent stateless uniform streams, written with plain
    element-wise ops: on CPU this runs ~3x faster than
    ``tf.random.stateless_normal`` (which uses the same transform) because the
    ops are multi-threaded, and noise is most of DP-SGD's overhead for wide
    dense models. Like TF's own sampler it works in float32: ``1 - u`` is at
    least 2^-23, so values are bounded by about 5.65 (the usual floating-point
    caveat of Gaussian-mechanism implementations).
    """
    size = tf.reduce_prod(shape)
    half = (size + 1) // 2
    u = tf.random.stateless_uniform(tf.reshape(2 * half, [1]), seed=key, dtype=tf.float32)
    return tf.cast(tf.reshape(box_muller(u, size), shape), dtype)


def box_muller(uniforms: tf.Tensor, size) -> tf.Tensor:
    """``size`` standard normal values [size] from ``2 * ceil(size / 2)`` float32 uniforms in [0, 1): the first
    half give the radii, the second the angles."""
    half = (size + 1) // 2
    radius = tf.sqrt(-2.0 * tf.math.log(1.0 - uniforms[:half]))
    angle = (2.0 * np.pi) * uniforms[half:]
    return tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], axis=0)[:size]


def step_noise(key: tf.Tensor, step, shapes: Sequence, dtypes: Optional[Sequence] = None) -> list:
    """The standard normal noise of optimizer step ``step``: one tensor per variable shape (in the variables'
    order), each from its own key folded from ``key`` and the step, so the same seed and step give the same
    noise whichever way the step is run."""
    step_key = tf.random.experimental.stateless_fold_in(key, step)
    dtypes = dtypes or [tf.float32] * len(shapes)
    return [gaussian_noise(shape, tf.random.experimental.stateless_fold_in(step_key, k), dtype)
            for k, (shape, dtype) in enumerate(zip(shapes, dtypes))]


def _to_tensors(x, y, mask):
    x = tf.nest.map_structure(tf.convert_to_tensor, x)
    y = tf.convert_to_tensor(y)
    batch = tf.nest.flatten(x)[0].shape[0]
    if mask is None:
        mask = tf.ones([batch], tf.float32)
    mask = tf.cast(tf.reshape(tf.convert_to_tensor(mask), [-1]), tf.float32)
    return x, y, mask


def noise_key(seed: int) -> np.ndarray:
    """The stateless-RNG key of the DP noise for ``seed`` (independent of the sampler's)."""
    state = np.random.SeedSequence([int(seed), 0x6E6F697365]).generate_state(2, np.uint32)
    return state.astype(np.int64)


def count_noise_key(seed: int) -> np.ndarray:
    """The stateless-RNG key of adaptive clipping's count noise (independent of the gradient noise's)."""
    state = np.random.SeedSequence([int(seed), 0x636F756E74]).generate_state(2, np.uint32)
    return state.astype(np.int64)


class DPStep:
    """A compiled DP-SGD (or plain SGD) training step for one Keras model.

    Args:
      model: a built Keras 3 model returning logits (or outputs for the loss).
      optimizer: any Keras 3 optimizer (SGD, Adam, ...); it applies the noisy
        mean gradient.
      l2_norm_clip: C, the per-example gradient L2 bound (required if private).
      noise_multiplier: sigma; the noise std on the gradient sum is sigma * C.
      expected_batch_size: the divisor of the noisy sum (q * N under Poisson
        sampling).
      padded_batch_size: the fixed batch shape the step is called with
        (informational; the graph is traced for the shape it first sees).
      seed: keys the noise RNG together with the step count.
      private: False gives the non-private baseline (mean gradient over the
        unmasked rows, no clipping, no noise) through the same signature.
      loss: a name from ``LOSSES`` (from logits) or a per-example callable
        ``(y, logits) -> [B]``.
      jit_compile: True/False, or "auto" (default): XLA-compile the gradient
        computation unless the model has convolution layers, whose XLA CPU
        kernels are several times slower than TensorFlow's (oneDNN) ones.
        Small per-example kernels (conv patches, vectorised maps) are compiled
        with XLA in every case, and noise + optimizer update never are (XLA's
        CPU random numbers are slower); the step falls back to no XLA with a
        warning if XLA cannot compile the model.
      fast_clipping: use per-layer rules (ghost norms / book-keeping); False
        uses whole-model vectorised per-example gradients.
      norm_method: "auto", "ghost" or "explicit": how rules get per-example
        norms (auto picks the cheaper; forcing one is for tests/benchmarks).
      layer_rules: False sends every layer to the per-layer vectorised
        fallback instead of its registered rule (for tests/benchmarks).
      adaptive_clipping: True makes ``l2_norm_clip`` the initial C of
        adaptive clipping (see the module doc; ignored when not private);
        ``noise_multiplier`` is then the step's total z.
      target_unclipped_quantile: γ in (0, 1), the share of per-example
        gradients C aims to leave unclipped.
      clip_learning_rate: η_C >= 0 of the geometric update of C.
      clipped_count_stddev: σ_b > 0, noise std on the unclipped count
        (default expected_batch_size / 20); must exceed z / 2.

    Calling the step with ``(x [P, ...], y [P, ...], mask [P])`` runs one
    optimizer step and returns ``{"loss_sum", "correct", "count"}`` over the
    rows with mask 1 (loss and accuracy at the weights before the update).
    """

    def __init__(self, model, optimizer, *, l2_norm_clip: float | None = None,
                 noise_multiplier: float = 0.0, expected_batch_size: int,
                 padded_batch_size: int | None = None, seed: int = 0, private: bool = True,
                 loss: str | PerExampleLoss = "sparse_categorical_crossentropy",
                 jit_compile: bool | str = "auto", fast_clipping: bool = True,
                 norm_method: str = "auto", layer_rules: bool = True, adaptive_clipping: bool = False,
                 target_unclipped_quantile: float = accounting.DEFAULT_TARGET_UNCLIPPED_QUANTILE,
                 clip_learning_rate: float = accounting.DEFAULT_CLIP_LEARNING_RATE,
                 clipped_count_stddev: float | None = None):
        validate_dp_params(l2_norm_clip, noise_multiplier, private)
        check_int("expected_batch_size", expected_batch_size)
        if padded_batch_size is not None:
            check_int("padded_batch_size", padded_batch_size)
        check_int("seed", seed, minimum=0)
        if norm_method not in clipping.NORM_METHODS:
            raise ValueError(f"norm_method must be one of {clipping.NORM_METHODS}; "
                             f"got {norm_method!r}")
        if private:
            check_model_supports_dp(model)
        elif not model.built:
            raise ValueError("the model is not built: give it a keras.Input or call it once")
        self.model = model
        self.optimizer = optimizer
        self.private = bool(private)
        self.l2_norm_clip = float(l2_norm_clip) if l2_norm_clip is not None else None
        self.noise_multiplier = float(noise_multiplier)
        self.expected_batch_size = int(expected_batch_size)
        self.padded_batch_size = padded_batch_size
        self.seed = int(seed)
        if jit_compile not in (True, False, "auto"):
            raise ValueError(f"jit_compile must be True, False or 'auto'; got {jit_compile!r}")
        self.jit_compile = (not _has_convolutions(model)) if jit_compile == "auto" else jit_compile
        self.norm_method = norm_method
        self._options = clipping.ClipOptions(norm_method=norm_method, xla=True)
        self._loss_fn = per_example_loss_fn(loss)
        self._variables = list(model.trainable_variables)
        if not self._variables:
            raise ValueError("the model has no trainable variables")
        self._regularized = [(v, v.regularizer) for v in self._variables
                             if getattr(v, "regularizer", None) is not None]
        if not optimizer.built:
            optimizer.build(self._variables)
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False, name="dp_step")
        self._noise_key = tf.constant(noise_key(self.seed))
        self.adaptive_clipping = bool(adaptive_clipping) and self.private
        self.gradient_noise_multiplier = self.noise_multiplier
        self._clip = None
        if self.adaptive_clipping:
            accounting.validate_adaptive_clipping(
                target_unclipped_quantile=target_unclipped_quantile, clip_learning_rate=clip_learning_rate,
                clipped_count_stddev=clipped_count_stddev)
            self.target_unclipped_quantile = float(target_unclipped_quantile)
            self.clip_learning_rate = float(clip_learning_rate)
            self.clipped_count_stddev = float(
                clipped_count_stddev if clipped_count_stddev is not None
                else accounting.default_clipped_count_stddev(self.expected_batch_size))
            self.gradient_noise_multiplier, _ = accounting.adaptive_noise_split(
                self.noise_multiplier, self.clipped_count_stddev)
            self._clip = tf.Variable(self.l2_norm_clip, dtype=tf.float32, trainable=False,
                                     name="dp_l2_norm_clip")
            self._count_key = tf.constant(count_noise_key(self.seed))
        self._units = plan_units(model, registry_enabled=layer_rules) if fast_clipping else None
        self._build_functions()

    # ---- public API

    @property
    def clipping_path(self) -> str:
        """"registry" (per-layer rules), "vectorised" (whole model), or "none" (non-private)."""
        if not self.private:
            return "none"
        return "registry" if self._units is not None else "vectorised"

    @property
    def current_l2_norm_clip(self) -> float | None:
        """The clip norm C the next step uses (moves with adaptive clipping; None when not private)."""
        if self._clip is not None:
            return float(self._clip.numpy())
        return self.l2_norm_clip

    def set_l2_norm_clip(self, value: float) -> None:
        """Sets adaptive clipping's current C (to continue a run in a new step object)."""
        if self._clip is None:
            raise ValueError("the clip norm is fixed: set_l2_norm_clip needs adaptive_clipping=True")
        validate_dp_params(value, self.noise_multiplier)
        self._clip.assign(float(value))

    @property
    def steps(self) -> int:
        """Optimizer steps applied so far (the noise RNG's step counter)."""
        return int(self._step.numpy())

    def __call__(self, x, y, mask=None) -> dict:
        """One optimizer step on one padded batch; returns float loss_sum, correct, count."""
        x, y, mask = _to_tensors(x, y, mask)
        stats = self._traced("_train_fn", x, y, mask)
        return {k: float(v) for k, v in stats.items()}

    def accumulate_step(self, batches: Iterable) -> dict:
        """One optimizer step over several padded chunks of one logical batch.

        Used when a Poisson batch exceeds the padded size: the clipped sums of
        all chunks are added, and noise is added once. ``batches`` yields
        ``(x, y, mask)``.
        """
        total, stats = None, {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
        if self._clip is not None:
            stats["unclipped"] = 0.0
        for x, y, mask in batches:
            x, y, mask = _to_tensors(x, y, mask)
            grads, chunk_stats = self._traced("_sum_fn", x, y, mask)
            total = list(grads) if total is None else [a + b for a, b in zip(total, grads)]
            for k in stats:
                stats[k] += float(chunk_stats[k])
        if total is None:
            raise ValueError("accumulate_step needs at least one batch")
        if self._clip is not None:
            self._apply_fn(total, tf.constant(stats["count"], tf.float32),
                           tf.constant(stats.pop("unclipped"), tf.float32))
        else:
            self._apply_fn(total, tf.constant(stats["count"], tf.float32))
        return stats

    def clipped_grad_sum(self, x, y, mask=None) -> list:
        """Sum over unmasked rows of per-example gradients clipped to C (private), or of
        plain gradients (non-private): one ``tf.Tensor`` per trainable variable, in
        ``model.trainable_variables`` order; no noise, not divided, nothing applied."""
        x, y, mask = _to_tensors(x, y, mask)
        if not self.private:
            return list(self._traced("_sum_fn", x, y, mask)[0])
        return list(self._traced("_clipping_fn", x, y, mask)[1])

    def per_example_grad_norms(self, x, y, mask=None) -> np.ndarray:
        """Unclipped per-example gradient L2 norms ``[B]`` (0 for masked rows)."""
        x, y, mask = _to_tensors(x, y, mask)
        return self._traced("_clipping_fn", x, y, mask)[0].numpy()

    # ---- internals

    def _build_functions(self):
        # XLA compiles the gradient computation; noise and the optimizer update run
        # as regular TF ops, whose multi-threaded CPU kernels beat XLA's for
        # random numbers and element-wise updates.
        jit = self.jit_compile
        self._sum_fn = tf.function(self._grad_sum, jit_compile=jit)
        self._apply_fn = tf.function(self._apply, jit_compile=False)
        self._train_fn = tf.function(self._train_step, jit_compile=False)
        self._clipping_fn = tf.function(self._norms_and_clipped_sum, jit_compile=jit)

    def _traced(self, name, *args):
        for _ in range(3):
            try:
                return getattr(self, name)(*args)
            except _NeedsWholeModel as err:
                logger.warning("layer-wise clipping unavailable (%s); using whole-model "
                               "vectorised per-example gradients", err)
                self._units = None
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as err:
                if "XLA" not in str(err):
                    raise
                if self._options.xla:
                    self._options = clipping.ClipOptions(self.norm_method, xla=False)
                elif self.jit_compile:
                    self.jit_compile = False
                else:
                    raise
                logger.warning("XLA cannot compile this model (%s); running without it",
                               str(err).splitlines()[0])
            self._build_functions()
        return getattr(self, name)(*args)

    def _stats(self, y, logits, losses, mask):
        # "outputs" (the forward pass's logits) lets a Keras train_step update compiled metrics
        # without a second forward pass; the eager API drops it.
        return {"loss_sum": tf.reduce_sum(losses),
                "correct": tf.reduce_sum(_correct(y, logits) * mask),
                "count": tf.reduce_sum(mask), "outputs": logits}

    def _masked_losses(self, y, logits, mask):
        losses = _checked_losses(self._loss_fn, y, logits)
        return tf.where(mask > 0, losses, tf.zeros_like(losses))

    def _layer_grads(self, x, y, mask):
        """Forward with rules, one backward to the rules' targets, per-layer grads."""
        # The tape also watches variables: a rule computes its activation before the
        # wrapper can watch z, and z depends on the layer's variables.
        with tf.GradientTape() as tape:
            with _intercepted(self._units, tape, x) as records:
                logits = self.model(x, training=True)
            losses = self._masked_losses(y, logits, mask)
            loss_sum = tf.reduce_sum(losses)
        for unit, calls in zip(self._units, records):
            if None in calls:
                raise _NeedsWholeModel(f"layer '{unit.layer.name}' is called on a tensor that "
                                       "does not come from the batch (no per-example rows)")
            if len(calls) > 1:
                raise _NeedsWholeModel(f"layer '{unit.layer.name}' is called {len(calls)} times")
        used = [(unit, calls[0]) for unit, calls in zip(self._units, records) if calls]
        targets = [t for _, (ts, _) in used for t in ts]
        target_grads = tape.gradient(loss_sum, targets, unconnected_gradients=_ZERO)
        layer_grads, start = [], 0
        for unit, (ts, context) in used:
            grads = target_grads[start:start + len(ts)]
            start += len(ts)
            layer_grads.append(unit.rule.grads(unit.layer, context, grads, self._options))
        return layer_grads, self._stats(y, logits, losses, mask)

    def _norms_and_weighted(self, x, y, mask):
        """Per-example squared norms [B] and ``c -> sum_i c_i g_i`` (variable order)."""
        if self._units is None:
            logits = self.model(x, training=True)
            losses = self._masked_losses(y, logits, mask)
            per_example = clipping.per_example_model_grads(
                self.model, self._variables, self._loss_fn, x, y, mask, self._options)
            return (_vectorised.sq_norms_of(per_example),
                    lambda c: _vectorised.weighted_sums(c, per_example),
                    self._stats(y, logits, losses, mask))
        layer_grads, stats = self._layer_grads(x, y, mask)
        batch = tf.shape(mask)[0]
        sq = [lg.sq_norms for lg in layer_grads]
        sq_norms = tf.add_n(sq) if sq else tf.zeros([batch])
        position = {id(v): k for k, v in enumerate(self._variables)}

        def weighted(c):
            out = [tf.zeros_like(v) for v in self._variables]
            for lg in layer_grads:
                for v, g in zip(lg.variables, lg.weighted_sum(c)):
                    out[position[id(v)]] = tf.cast(g, v.dtype)
            return out

        return sq_norms, weighted, stats

    def _clip_factors(self, sq_norms):
        """Norms and ``min(1, C / norm)`` (ones when not private)."""
        norms = tf.sqrt(tf.maximum(tf.cast(sq_norms, tf.float32), 0.0))
        if not self.private:
            return norms, tf.ones_like(norms)
        clip = self._clip.read_value() if self._clip is not None else tf.constant(self.l2_norm_clip, tf.float32)
        return norms, clip / tf.maximum(norms, clip)

    def _norms_and_clipped_sum(self, x, y, mask):
        sq_norms, weighted, _ = self._norms_and_weighted(x, y, mask)
        norms, factors = self._clip_factors(sq_norms)
        return norms, weighted(factors)

    def _grad_sum(self, x, y, mask):
        if not self.private:
            with tf.GradientTape() as tape:
                logits = self.model(x, training=True)
                losses = self._masked_losses(y, logits, mask)
                loss_sum = tf.reduce_sum(losses)
            grads = tape.gradient(loss_sum, self._variables, unconnected_gradients=_ZERO)
            return grads, self._stats(y, logits, losses, mask)
        sq_norms, weighted, stats = self._norms_and_weighted(x, y, mask)
        _, factors = self._clip_factors(sq_norms)
        if self._clip is not None:
            # Adaptive clipping's centred count sum_i (1[||g_i|| <= C] - 1/2) over the sampled rows: a
            # factor is exactly 1 (C / C) when the norm is at most C.
            unclipped = tf.cast(factors >= 1.0, tf.float32) - 0.5
            stats = {**stats, "unclipped": tf.reduce_sum(unclipped * mask)}
        return weighted(factors), stats

    def _apply(self, grad_sum, count, unclipped=None):
        if self.private:
            if self._clip is not None:
                clip = self._clip.read_value()  # the C this step clipped to, before its update
                std = self.gradient_noise_multiplier * clip
                noisy = self.gradient_noise_multiplier > 0
            else:
                std = self.noise_multiplier * self.l2_norm_clip
                noisy = std > 0
            if noisy:
                # Shapes from the variables, not the gradients: the noise does not
                # wait for the backward pass, so TF can generate it concurrently.
                noise = step_noise(self._noise_key, self._step.read_value(),
                                   [v.shape for v in self._variables], [g.dtype for g in grad_sum])
                grad_sum = [g + std * n for g, n in zip(grad_sum, noise)]
            if self._clip is not None:
                self._update_clip(clip, unclipped)
            scale = 1.0 / self.expected_batch_size
            grads = [g * scale for g in grad_sum]
        else:
            denom = tf.maximum(count, 1.0)
            grads = [g / tf.cast(denom, g.dtype) for g in grad_sum]
        if self._regularized:
            # Weight penalties do not touch the data: no clipping or noise needed.
            variables = [v for v, _ in self._regularized]
            with tf.GradientTape() as tape:
                penalty = tf.add_n([r(v) for v, r in self._regularized])
            extra = dict(zip(map(id, variables), tape.gradient(penalty, variables)))
            grads = [g + extra[id(v)] if id(v) in extra else g
                     for g, v in zip(grads, self._variables)]
        self.optimizer.apply(grads, self._variables)
        self._step.assign_add(1)

    def _update_clip(self, clip, unclipped):
        """C <- C * exp(-eta (b - gamma)), b the noisy unclipped fraction of this step (Andrew et al. 2021)."""
        if unclipped is None:
            raise ValueError("adaptive clipping needs the step's unclipped count")
        key = tf.random.experimental.stateless_fold_in(self._count_key, self._step.read_value())
        noise = self.clipped_count_stddev * gaussian_noise([1], key)[0]
        unclipped_fraction = (tf.cast(unclipped, tf.float32) + noise) / self.expected_batch_size + 0.5
        self._clip.assign(clip * tf.exp(-self.clip_learning_rate
                                        * (unclipped_fraction - self.target_unclipped_quantile)))

    def _train_step(self, x, y, mask):
        stats, _ = self.step_in_graph(x, y, mask)
        return stats

    def step_in_graph(self, x, y, mask):
        """One optimizer step for use inside a caller's ``tf.function`` (a Keras ``train_step``).

        The same compiled gradient function, noise and update as :meth:`__call__`, so both paths give
        identical weights. Returns ``(stats, outputs)``: the ``loss_sum``/``correct``/``count`` tensors
        and the model outputs ``[P, ...]`` of the forward pass (weights before the update).
        """
        grads, stats = self._traced("_sum_fn", x, y, mask)
        stats = dict(stats)
        outputs = stats.pop("outputs")
        self._apply(grads, stats["count"], stats.pop("unclipped", None))
        return stats, outputs


def expected_noise_std(l2_norm_clip: float, noise_multiplier: float,
                       expected_batch_size: int) -> float:
    """Std of the noise on each coordinate of the applied (averaged) gradient."""
    return noise_multiplier * l2_norm_clip / expected_batch_size


__all__ = ["DPStep", "check_model_supports_dp", "per_example_loss_fn", "validate_dp_params",
           "expected_noise_std", "plan_units", "LOSSES", "has_accuracy", "noise_key", "count_noise_key"]
