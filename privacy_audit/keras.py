"""DP-SGD with Keras's own ``compile``/``fit``, and the audit callback (TensorFlow backend).

    import keras, privacy_audit.keras as pak
    model = pak.make_private(model, l2_norm_clip=1.0, noise_multiplier=1.1, delta=1e-5, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(pak.poisson_batches(x, y, expected_batch_size=256, seed=0), epochs=3,
                        callbacks=[pak.PrivacyMetrics(x_members, y_members, x_nonmembers, y_nonmembers,
                                                      every_n_epochs=2, output_dir="results/")])
    history.history["epsilon"]        # ε after each epoch, from the ledger of the steps that ran

``make_private`` returns the same model object (same class), with its training step replaced by the
project's :class:`~privacy_audit.components.dp_trainer.dp_step.DPStep` (the clipping registry, the noise
and the seeds of the pipeline's DPTrainer). Keeping the class means ``model.save``, checkpoints,
``evaluate``/``predict`` and ``keras.models.load_model`` need nothing from this package. The privacy
ledger is kept by a callback that ``fit`` adds first; it counts the optimizer steps that really ran.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from typing import Any, Optional, Sequence

import keras
import numpy as np

from privacy_audit.components.dp_trainer import accounting
from privacy_audit.components.dp_trainer import dp_step as dp_step_lib
from privacy_audit.components.dp_trainer import sampling as sampling_lib
from privacy_audit.components.dp_trainer import training as training_lib

logger = logging.getLogger(__name__)

_STATE_ATTR = "_privacy_audit_dp"
# fit arguments that would change what a step samples or how examples are weighted.
_REFUSED_FIT_ARGS = {
    "sample_weight": "per-example weights change each example's sensitivity",
    "class_weight": "per-example weights change each example's sensitivity",
    "validation_split": "hold out non-members before building poisson_batches(...) instead",
    "steps_per_epoch": "the adapter sets it: ceil(N / expected_batch_size)",
}


# --------------------------------------------------------------------------- data adapter

class DPBatches(keras.utils.PyDataset):
    """Padded batches ``(x, y, mask)`` for ``fit`` on a private model (build with :func:`poisson_batches`).

    Batch ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``, so Keras's look-ahead and
    prefetching never change what trains. The ledger callback sets the epoch before each epoch.
    """

    def __init__(self, x, y, *, expected_batch_size: int, seed: int, sampling: str,
                 padded_batch_size: Optional[int] = None):
        # One worker, no multiprocessing: batches are cheap gathers, and a copy in another process
        # would not see the epoch the callback sets.
        super().__init__(workers=1, use_multiprocessing=False)
        self.x, self.y, self.n_examples = training_lib.check_training_data(x, y)
        self.sampler = sampling_lib.make_sampler(sampling, self.n_examples, expected_batch_size,
                                                 seed, padded_batch_size)
        self.expected_batch_size = int(expected_batch_size)
        self.seed = int(seed)
        self.mode = self.sampler.mode
        self.padded_batch_size = self.sampler.padded_batch_size
        self.steps_per_epoch = -(-self.n_examples // self.expected_batch_size)
        self._batcher = training_lib.PaddedBatcher(self.x, self.y, self.padded_batch_size)
        self.epoch = 0

    @property
    def sampling_probability(self) -> float:
        """q = expected_batch_size / N."""
        return self.sampler.sampling_probability

    @property
    def num_batches(self) -> int:
        return self.steps_per_epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def indices(self, epoch: int, step: int) -> np.ndarray:
        """Example indices of batch ``step`` of epoch ``epoch`` (sorted, int64)."""
        return self.sampler.batch_at(epoch, step)

    def batch(self, epoch: int, step: int):
        """``(x [P, ...], y [P, ...], mask [P])`` of batch ``step`` of epoch ``epoch``.

        P is the padded size, or the batch size rounded up to 8 for the rare Poisson batch above it
        (one retrace; no sampled example is dropped).
        """
        idx = self.indices(epoch, step)
        size = max(self.padded_batch_size, -(-len(idx) // 8) * 8)
        return self._batcher(idx, size)

    def __getitem__(self, index: int):
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch {index} out of range [0, {self.steps_per_epoch})")
        return self.batch(self.epoch, index)


def poisson_batches(x, y, expected_batch_size: int, seed: int = 0,
                    padded_batch_size: Optional[int] = None) -> DPBatches:
    """Poisson-sampled padded batches for ``fit``: what the privacy accountant assumes.

    Args:
      x: float array ``[N, ...]`` (or a dict of them); y: labels ``[N, ...]``.
      expected_batch_size: B; each example joins each step with probability q = B / N.
      seed: int >= 0; keys every batch (not the model's initialisation or the noise).
      padded_batch_size: the fixed batch shape; default B + 4 binomial sd, rounded up to 8.
    Returns a ``keras.utils.PyDataset`` of ``ceil(N / B)`` batches per epoch, each ``(x, y, mask)``
    with mask 1.0 on the sampled rows and 0.0 on padding.
    """
    return DPBatches(x, y, expected_batch_size=expected_batch_size, seed=seed, sampling="poisson",
                     padded_batch_size=padded_batch_size)


def shuffled_batches(x, y, batch_size: int, seed: int = 0) -> DPBatches:
    """Fixed-size batches from a seeded permutation per epoch (every example once per epoch).

    Only when asked: the accountant's ε assumes Poisson sampling, so the ledger of a model trained
    on these says ``poisson_guarantee_holds: false`` and that the ε does not strictly hold.
    """
    return DPBatches(x, y, expected_batch_size=batch_size, seed=seed, sampling="shuffle")


# --------------------------------------------------------------------------- make_private

@dataclasses.dataclass
class _DPConfig:
    l2_norm_clip: float
    noise_multiplier: Optional[float]
    target_epsilon: Optional[float]
    epochs: Optional[int]
    delta: Optional[float]
    seed: int
    accountant: str
    model_variant: str
    jit_compile: Any
    adaptive_clipping: bool = False
    target_unclipped_quantile: float = accounting.DEFAULT_TARGET_UNCLIPPED_QUANTILE
    clip_learning_rate: float = accounting.DEFAULT_CLIP_LEARNING_RATE
    clipped_count_stddev: Optional[float] = None

    def adaptive_settings(self, expected_batch_size: int) -> Optional[dict]:
        """The ledger's adaptive-clipping settings (σ_b resolved for the batch size), or None."""
        if not self.adaptive_clipping:
            return None
        sb = self.clipped_count_stddev
        return {"target_unclipped_quantile": self.target_unclipped_quantile,
                "clip_learning_rate": self.clip_learning_rate,
                "clipped_count_stddev": float(sb) if sb is not None
                else accounting.default_clipped_count_stddev(expected_batch_size)}


class _PrivateTraining:
    """What ``make_private`` attaches to a model: its DP settings, DPStep and ledger."""

    def __init__(self, config: _DPConfig):
        self.config = config
        self.ledger: Optional[accounting.PrivacyLedger] = None
        self.step: Optional[dp_step_lib.DPStep] = None
        self.step_key = None
        self.data_key = None

    def prepare(self, model, data: DPBatches, epochs: int) -> None:
        """Creates the ledger on the first fit and a DPStep for the compiled optimizer and loss."""
        key = (data.n_examples, data.expected_batch_size, data.mode)
        if self.data_key is not None and key != self.data_key:
            raise ValueError(
                f"this private model was trained on N={self.data_key[0]} examples with batch "
                f"{self.data_key[1]} ({self.data_key[2]}); its ledger cannot account a fit on N={key[0]}, "
                f"batch {key[1]} ({key[2]}). Keep the same data set and batch size, or start from a "
                "fresh make_private model.")
        if self.ledger is None:
            self.ledger = self._new_ledger(data, epochs)
            self.data_key = key
        step_key = (id(model.optimizer), id(model.loss), data.expected_batch_size)
        if self.step is None or self.step_key != step_key:
            previous = self.step
            adaptive = self.config.adaptive_settings(data.expected_batch_size) or {}
            self.step = dp_step_lib.DPStep(
                model, model.optimizer, l2_norm_clip=self.config.l2_norm_clip,
                noise_multiplier=self.ledger.noise_multiplier,
                expected_batch_size=data.expected_batch_size, padded_batch_size=data.padded_batch_size,
                seed=self.config.seed, loss=per_example_loss(model.loss),
                jit_compile=self.config.jit_compile, adaptive_clipping=bool(adaptive), **adaptive)
            if previous is not None:
                # A new step object (recompiled optimizer) continues the noise stream: reusing the
                # noise of steps already taken would let their differences cancel it. Adaptive
                # clipping continues from the C it reached.
                self.step._step.assign(previous.steps)
                if self.step.adaptive_clipping:
                    self.step.set_l2_norm_clip(previous.current_l2_norm_clip)
            self.step_key = step_key

    def _new_ledger(self, data: DPBatches, epochs: int) -> accounting.PrivacyLedger:
        cfg = self.config
        delta = cfg.delta if cfg.delta is not None else accounting.default_delta(data.n_examples)
        sigma = cfg.noise_multiplier
        if sigma is None:
            planned = cfg.epochs * data.steps_per_epoch
            sigma = accounting.noise_multiplier_for_epsilon(
                target_epsilon=cfg.target_epsilon, n_examples=data.n_examples,
                batch_size=data.expected_batch_size, delta=delta, steps=planned,
                accountant=cfg.accountant)
        accounting.validate_dp_params(n_examples=data.n_examples, batch_size=data.expected_batch_size,
                                      noise_multiplier=sigma, delta=delta)
        adaptive = cfg.adaptive_settings(data.expected_batch_size)
        if adaptive is not None:
            accounting.adaptive_noise_split(sigma, adaptive["clipped_count_stddev"])  # σ_b > σ / 2, before training
        return accounting.PrivacyLedger(
            model_variant=cfg.model_variant, private=True, n_examples=data.n_examples,
            expected_batch_size=data.expected_batch_size, noise_multiplier=float(sigma),
            l2_norm_clip=cfg.l2_norm_clip, delta=float(delta), sampling=data.mode,
            accountant=cfg.accountant, target_epsilon=cfg.target_epsilon,
            extra={"seed": cfg.seed, "steps_per_epoch": data.steps_per_epoch,
                   "padded_batch_size": data.padded_batch_size, "api": "keras-fit"},
            adaptive_clipping=adaptive)


def _check_exclusive(noise_multiplier, target_epsilon, epochs) -> None:
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ValueError("give exactly one of noise_multiplier (σ) and target_epsilon (with epochs); got "
                         + ("both" if noise_multiplier is not None else "neither"))
    if target_epsilon is not None:
        if epochs is None:
            raise ValueError("target_epsilon needs epochs=: the number of epochs you will fit, so that "
                             "the noise multiplier can be calibrated for the planned steps")
        sampling_lib.check_int("epochs", epochs)
        accounting.validate_dp_params(target_epsilon=target_epsilon)


def make_private(model, *, l2_norm_clip: float, noise_multiplier: Optional[float] = None,
                 target_epsilon: Optional[float] = None, epochs: Optional[int] = None,
                 delta: Optional[float] = None, seed: int = 0, accountant: str = "rdp",
                 model_variant: Optional[str] = None, jit_compile: Any = "auto",
                 adaptive_clipping: bool = False,
                 target_unclipped_quantile: float = accounting.DEFAULT_TARGET_UNCLIPPED_QUANTILE,
                 clip_learning_rate: float = accounting.DEFAULT_CLIP_LEARNING_RATE,
                 clipped_count_stddev: Optional[float] = None):
    """Makes ``model.fit`` train with DP-SGD; returns the same model object.

    Args:
      model: a built Keras 3 model (TensorFlow backend) returning logits, or outputs that the
        compiled loss reads. No BatchNormalization (it mixes examples).
      l2_norm_clip: C, the per-example gradient L2 bound.
      noise_multiplier: σ; the noise std on the gradient sum is σ·C. Or give ``target_epsilon``.
      target_epsilon: ε to reach after ``epochs`` epochs; σ is calibrated at the first ``fit`` from
        the data adapter's N and batch size.
      epochs: planned epochs (with ``target_epsilon``).
      delta: δ of the ledger's ε; default the accountant's default for N (``default_delta``).
      seed: int >= 0; keys the noise (the adapter has its own seed for the batches).
      accountant: "rdp" (default) or "pld".
      model_variant: name in the ledger and in PrivacyMetrics results (default: the model's name).
      jit_compile: XLA for the per-example gradient computation ("auto": off for conv models).
      adaptive_clipping: True: C starts at ``l2_norm_clip`` and follows a private estimate of the
        ``target_unclipped_quantile`` (in (0, 1)) of the per-example gradient norms, by the geometric
        step ``clip_learning_rate`` (>= 0), with noise std ``clipped_count_stddev`` (> σ/2; default
        expected_batch_size / 20) on the unclipped count (Andrew et al. 2021). Same ε as fixed clipping
        at σ (the noise split is in :mod:`privacy_audit.accounting`); ``history.history["l2_norm_clip"]``
        and the ledger's epochs hold the C each epoch ended with.

    After ``compile``, train with ``model.fit(poisson_batches(x, y, expected_batch_size, seed), ...)``:
    ``history.history["epsilon"]`` holds ε after each epoch; :func:`privacy_ledger` gives the ledger.
    Raises TypeError (not a Keras 3 model: tf_keras) or ValueError (not built, BatchNormalization,
    σ and target_epsilon both or neither, bad C/σ/ε/δ), naming the problem.
    """
    dp_step_lib.check_model_supports_dp(model)
    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"make_private needs the TensorFlow backend of Keras; KERAS_BACKEND is "
                         f"{keras.backend.backend()!r}")
    if getattr(model, _STATE_ATTR, None) is not None:
        raise ValueError(f"model '{model.name}' is already private (make_private was called on it)")
    _check_exclusive(noise_multiplier, target_epsilon, epochs)
    dp_step_lib.validate_dp_params(l2_norm_clip, 0.0 if noise_multiplier is None else noise_multiplier)
    accounting.validate_dp_params(delta=delta)
    if not isinstance(adaptive_clipping, bool):
        raise ValueError(f"adaptive_clipping must be True or False; got {adaptive_clipping!r}")
    accounting.validate_adaptive_clipping(target_unclipped_quantile=target_unclipped_quantile,
                                          clip_learning_rate=clip_learning_rate,
                                          clipped_count_stddev=clipped_count_stddev)
    sampling_lib.check_int("seed", seed, minimum=0)
    if accountant not in accounting.ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {accounting.ACCOUNTANTS}; got {accountant!r}")
    config = _DPConfig(float(l2_norm_clip), None if noise_multiplier is None else float(noise_multiplier),
                       target_epsilon, epochs, delta, int(seed), accountant,
                       model_variant or model.name, jit_compile, adaptive_clipping,
                       float(target_unclipped_quantile), float(clip_learning_rate),
                       None if clipped_count_stddev is None else float(clipped_count_stddev))
    state = _PrivateTraining(config)
    # object.__setattr__: plain attributes that Keras neither tracks nor saves.
    object.__setattr__(model, _STATE_ATTR, state)
    object.__setattr__(model, "train_step", lambda data: _dp_train_step(model, state, data))
    object.__setattr__(model, "fit", _private_fit(model, state))
    return model


def privacy_ledger(model) -> accounting.PrivacyLedger:
    """The privacy ledger of a ``make_private`` model (after its first ``fit``)."""
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        raise ValueError(f"model '{getattr(model, 'name', model)}' is not private: call make_private first")
    if state.ledger is None:
        raise ValueError("the model has not been fit yet: its ledger starts at the first fit")
    return state.ledger


def _dp_train_step(model, state: _PrivateTraining, data):
    import tensorflow as tf

    x, y, mask = keras.utils.unpack_x_y_sample_weight(data)
    padded = state.step.padded_batch_size

    def pinned():
        # Keras traces the step for any batch size; pinning the padded size gives the gradient
        # kernels the same static shapes as DPStep's own calls, hence bit-identical weights.
        def fix(t):
            return tf.ensure_shape(t, [padded] + list(t.shape[1:]))
        return state.step.step_in_graph(tf.nest.map_structure(fix, x), fix(y), fix(mask))

    def any_size():  # the rare Poisson batch above the padded size
        return state.step.step_in_graph(x, y, mask)

    stats, outputs = tf.cond(tf.equal(tf.shape(mask)[0], padded), pinned, any_size)
    count = stats["count"]
    model._loss_tracker.update_state(stats["loss_sum"] / keras.ops.maximum(count, 1.0),
                                     sample_weight=count)
    return model.compute_metrics(x, y, outputs, sample_weight=mask)


def _private_fit(model, state: _PrivateTraining):
    base_fit = type(model).fit

    def fit(x=None, y=None, batch_size=None, epochs=1, callbacks=None, shuffle=True, **kwargs):
        _check_fit_args(x, y, batch_size, kwargs)
        if not model.compiled:
            raise ValueError("compile the model before fit (optimizer and loss)")
        state.prepare(model, x, epochs)
        if x.mode != "poisson":
            logger.warning("shuffled fixed batches: the ledger's ε assumes Poisson sampling and does not "
                           "strictly hold for this training")
        if state.config.target_epsilon is not None and epochs > state.config.epochs:
            logger.warning("fit(epochs=%d) runs past the %d epochs calibrated for target_epsilon=%g: "
                           "ε will exceed it (the ledger reports the true ε)", epochs, state.config.epochs,
                           state.config.target_epsilon)
        if isinstance(callbacks, keras.callbacks.CallbackList):
            raise ValueError("pass callbacks as a list: the privacy ledger callback is added first")
        # The DP step picks XLA for its gradient part itself; noise and update stay outside XLA.
        model.jit_compile = False
        ledger_cb = PrivacyLedgerCallback(state, x)
        # shuffle=False: batch order is already random (each batch is a seeded draw); Keras's own
        # shuffle of batch order is unseeded.
        return base_fit(model, x, None, epochs=epochs, callbacks=[ledger_cb] + list(callbacks or []),
                        shuffle=False, **kwargs)

    fit.__doc__ = base_fit.__doc__
    return fit


def _check_fit_args(x, y, batch_size, kwargs) -> None:
    if not isinstance(x, DPBatches):
        raise ValueError("a private model trains on Poisson-sampled batches: call "
                         "model.fit(privacy_audit.keras.poisson_batches(x, y, expected_batch_size=..., seed=...)) "
                         f"(got x of type {type(x).__name__})")
    if y is not None:
        raise ValueError("y must be None: the labels are in poisson_batches(x, y, ...)")
    if batch_size is not None:
        raise ValueError(f"fit(batch_size={batch_size}) conflicts with the Poisson data adapter, which "
                         f"samples batches of expected size {x.expected_batch_size}: drop batch_size "
                         "(set expected_batch_size in poisson_batches)")
    for name, why in _REFUSED_FIT_ARGS.items():
        value = kwargs.get(name)
        if value is not None and not (name == "validation_split" and value == 0.0):
            raise ValueError(f"fit({name}=...) is not supported on a private model: {why}")


class PrivacyLedgerCallback(keras.callbacks.Callback):
    """Keeps the ledger of a private ``fit``: steps that ran, ε after each epoch in ``logs["epsilon"]``.

    ``fit`` on a ``make_private`` model adds it first in the callback list, so later callbacks (and
    ``history.history``) see ``epsilon``.
    """

    def __init__(self, state: _PrivateTraining, data: DPBatches):
        super().__init__()
        self._state, self._data = state, data
        self._recorded = state.step.steps

    def on_epoch_begin(self, epoch, logs=None):
        self._data.epoch = int(epoch)

    def _record(self) -> None:
        done = self._state.step.steps  # optimizer steps applied: the ground truth
        self._state.ledger.record_steps(done - self._recorded)
        self._recorded = done

    def on_epoch_end(self, epoch, logs=None):
        self._record()
        logs = logs if logs is not None else {}
        step = self._state.step
        clip = step.current_l2_norm_clip if step.adaptive_clipping else None
        rec = self._state.ledger.end_epoch(
            int(epoch) + 1, train_loss=_finite(logs.get("loss")), train_accuracy=_finite(logs.get("accuracy")),
            l2_norm_clip=clip)
        logs["epsilon"] = rec.epsilon
        if clip is not None:
            logs["l2_norm_clip"] = clip

    def on_train_end(self, logs=None):
        self._record()  # a fit stopped mid-epoch still spent its steps


def _finite(value) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- losses

def per_example_loss(loss) -> dp_step_lib.PerExampleLoss:
    """The compiled Keras loss as a per-example loss ``(y, outputs) -> [B]`` for the DP step.

    The common cross-entropies from logits map to DPStep's stable built-ins; any other Keras loss
    (a name, a function, or a ``keras.losses.Loss``) is called unreduced and averaged over
    non-batch axes. Raises ValueError for several outputs' losses (a list or dict).
    """
    if loss is None:
        raise ValueError("compile the model with a loss before fit")
    if isinstance(loss, (list, tuple, dict)):
        raise ValueError("make_private supports one loss for one output; got a "
                         f"{type(loss).__name__} of losses")
    builtin = _builtin_loss_name(loss)
    if builtin is not None:
        return dp_step_lib.per_example_loss_fn(builtin)
    fn = loss.call if isinstance(loss, keras.losses.Loss) else keras.losses.get(loss)

    def per_example(y, outputs):
        values = fn(y, outputs)
        if len(values.shape) > 1:
            values = keras.ops.mean(keras.ops.reshape(values, (keras.ops.shape(values)[0], -1)), axis=1)
        return values

    return per_example


def _builtin_loss_name(loss) -> Optional[str]:
    cfg = loss.get_config() if isinstance(loss, keras.losses.Loss) else None
    if cfg is None or not cfg.get("from_logits", False):
        return "mean_squared_error" if isinstance(loss, keras.losses.MeanSquaredError) else None
    plain = cfg.get("label_smoothing", 0) in (0, 0.0, None) and cfg.get("ignore_class") is None \
        and cfg.get("axis", -1) == -1
    if not plain:
        return None
    for cls, name in ((keras.losses.SparseCategoricalCrossentropy, "sparse_categorical_crossentropy"),
                      (keras.losses.CategoricalCrossentropy, "categorical_crossentropy"),
                      (keras.losses.BinaryCrossentropy, "binary_crossentropy")):
        if type(loss) is cls:
            return name
    return None


# --------------------------------------------------------------------------- audit callback

def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "model"


class PrivacyMetrics(keras.callbacks.Callback):
    """Runs membership-inference attacks every ``every_n_epochs`` epochs (the codelab's callback).

    Args:
      x_members, y_members: the training examples (members) to attack, ``[N_m, ...]`` and ``[N_m]``
        (labels may be None: then only label-free attacks, e.g. logistic_regression, threshold_entropy).
      x_nonmembers, y_nonmembers: held-out examples (non-members).
      every_n_epochs: k; attacks run after epochs k, 2k, ...
      output_dir: where each epoch's results JSON goes (``{variant}_epoch_{NNNN}.json``, the
        evaluator's schema); None keeps them in memory only (``self.results``).
      model_variant: results' ``metadata.model_variant`` (default: the ledger's, else the model name).
      attacks: attack names (default threshold and logistic_regression, as in the codelab).
      slicing: slicing names (``by_class``, ...; the entire data set is always attacked) or a SlicingSpec.
      outputs: "logits" (the model returns logits) or "probs".
      seed: seeds the attacks; batch_size: for predict.
      run_attacks_kwargs: passed to :func:`privacy_audit.attacks.run_attacks` (min_slice_size, config...).
    """

    def __init__(self, x_members, y_members, x_nonmembers, y_nonmembers, *, every_n_epochs: int = 2,
                 output_dir: Optional[str] = None, model_variant: Optional[str] = None,
                 attacks: Sequence[str] = ("threshold", "logistic_regression"),
                 slicing: Any = ("by_class",), outputs: str = "logits", seed: int = 0,
                 batch_size: int = 256, **run_attacks_kwargs):
        super().__init__()
        from privacy_audit.components.membership_inference import attacks as attacks_lib
        from privacy_audit.components.membership_inference.slicing import SlicingSpec

        self.every_n_epochs = sampling_lib.check_int("every_n_epochs", every_n_epochs)
        if outputs not in ("logits", "probs"):
            raise ValueError(f"outputs must be 'logits' or 'probs'; got {outputs!r}")
        self.attacks = attacks_lib.check_attack_names(list(attacks))
        self.slicing = slicing if isinstance(slicing, SlicingSpec) else SlicingSpec.from_names(slicing)
        if (y_members is None) != (y_nonmembers is None):
            raise ValueError("give labels for both members and non-members, or for neither")
        self._data = (x_members, y_members, x_nonmembers, y_nonmembers)
        self.output_dir, self.model_variant, self.outputs = output_dir, model_variant, outputs
        self.seed, self.batch_size = sampling_lib.check_int("seed", seed, minimum=0), int(batch_size)
        self.run_attacks_kwargs = run_attacks_kwargs
        self.results: list = []
        self.paths: list = []

    def _variant(self) -> str:
        if self.model_variant:
            return self.model_variant
        state = getattr(self.model, _STATE_ATTR, None)
        return state.config.model_variant if state is not None else self.model.name

    def on_epoch_end(self, epoch, logs=None):
        epoch = int(epoch) + 1
        if epoch % self.every_n_epochs:
            return
        self.audit(epoch, epsilon=(logs or {}).get("epsilon"))

    def audit(self, epoch: Optional[int], epsilon: Optional[float] = None) -> dict:
        """Attacks the model now; returns (and writes, with an output_dir) the results object."""
        from privacy_audit.components.membership_inference import api, results
        from privacy_audit.components.membership_inference.data import AttackInputs

        xm, ym, xn, yn = self._data
        out_m = np.asarray(self.model.predict(xm, batch_size=self.batch_size, verbose=0))
        out_n = np.asarray(self.model.predict(xn, batch_size=self.batch_size, verbose=0))
        inputs = AttackInputs(**{f"{self.outputs}_members": out_m, f"{self.outputs}_nonmembers": out_n,
                                 "labels_members": ym, "labels_nonmembers": yn})
        state = getattr(self.model, _STATE_ATTR, None)
        metadata = {"model_variant": self._variant(), "epoch": epoch,
                    "epsilon": None if epsilon is None or not math.isfinite(epsilon) else float(epsilon),
                    "private": state is not None}
        if state is not None and state.ledger is not None:
            metadata.update(delta_dp=state.ledger.delta,
                            poisson_guarantee_holds=state.ledger.sampling == "poisson")
        obj = api.run_attacks(inputs, self.attacks, self.slicing, seed=self.seed, metadata=metadata,
                              **self.run_attacks_kwargs)
        self.results.append(obj)
        if self.output_dir is not None:
            name = f"{_safe_name(metadata['model_variant'])}_epoch_{epoch or 0:04d}.json"
            path = os.path.join(self.output_dir, name)
            os.makedirs(self.output_dir, exist_ok=True)
            results.write_results(path, obj)
            self.paths.append(path)
        return obj


# Re-exports from other issues' modules go below (AuditCheckpoints: issue 9).
from privacy_audit.components.common.audit_checkpoints import AuditCheckpoints  # noqa: E402,F401


__all__ = ["make_private", "poisson_batches", "shuffled_batches", "DPBatches", "PrivacyMetrics",
           "PrivacyLedgerCallback", "privacy_ledger", "per_example_loss", "AuditCheckpoints"]
