"""Training a Keras model with DP-SGD / DP-Adam end to end: validation, accounting, checkpoints, export.

This is the library behind the DPTrainer TFX component (and usable on its own): it takes arrays and
output directories, and writes the Model and ModelRun layouts described in the project's contracts:

    model_dir/keras/model.keras, model_dir/Format-Serving/ (SavedModel), model_dir/checkpoints/epoch_NNNN.keras,
    model_dir/checkpoints/index.json, model_dir/model_info.json
    run_dir/ledger.json, run_dir/training_log.jsonl, run_dir/logs/ (TensorBoard scalars)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from typing import Any, Dict, List, Optional

import numpy as np

from components.dp_trainer import accounting

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
CHECKPOINT_DIR = "checkpoints"


@dataclasses.dataclass
class DPTrainingConfig:
    """Everything that defines a training run.

    private=False trains the same model without clipping or noise (a baseline). With private=True give
    either ``noise_multiplier`` or ``target_epsilon`` (then σ is calibrated for ``epochs``).
    ``delta`` defaults to 1/N rounded down to a power of ten. ``checkpoint_every``: save the full model
    every k epochs (and after the last one); 0 disables per-epoch checkpoints.
    """
    model_variant: str = "model"
    label_key: str = "label"
    feature_keys: Optional[List[str]] = None
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    private: bool = True
    l2_norm_clip: float = 1.0
    noise_multiplier: Optional[float] = None
    target_epsilon: Optional[float] = None
    delta: Optional[float] = None
    sampling: str = "poisson"
    accountant: str = "rdp"
    checkpoint_every: int = 2
    seed: int = 0
    module_file: Optional[str] = None
    model_fn: str = "build_keras_model"
    builtin_model: str = "auto"
    hparams: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self, n_examples: Optional[int] = None) -> None:
        """Raises ValueError naming the first invalid setting."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.sampling not in ("poisson", "shuffle"):
            raise ValueError(f"sampling must be 'poisson' or 'shuffle', got {self.sampling!r}")
        if not isinstance(self.epochs, int) or self.epochs <= 0:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.accountant not in accounting.ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {accounting.ACCOUNTANTS}, got {self.accountant!r}")
        accounting.validate_dp_params(n_examples=n_examples, batch_size=self.batch_size)
        if self.private:
            if (self.noise_multiplier is None) == (self.target_epsilon is None):
                raise ValueError("a private run needs exactly one of noise_multiplier or target_epsilon")
            accounting.validate_dp_params(n_examples=n_examples, noise_multiplier=self.noise_multiplier,
                                          l2_norm_clip=self.l2_norm_clip, delta=self.delta,
                                          target_epsilon=self.target_epsilon)


def _make_optimizer(name: str, learning_rate: float):
    import keras

    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    return keras.optimizers.SGD(learning_rate)


def resolve_noise(config: DPTrainingConfig, n_examples: int, steps_per_epoch: int):
    """(noise_multiplier, delta) for the run: σ calibrated from target_epsilon over the planned steps."""
    if not config.private:
        return None, None
    delta = config.delta if config.delta is not None else accounting.default_delta(n_examples)
    accounting.validate_dp_params(n_examples=n_examples, delta=delta)
    if config.noise_multiplier is not None:
        return float(config.noise_multiplier), delta
    sigma = accounting.noise_multiplier_for_epsilon(
        target_epsilon=config.target_epsilon, n_examples=n_examples, batch_size=config.batch_size,
        delta=delta, steps=steps_per_epoch * config.epochs, accountant=config.accountant)
    return sigma, delta


class _TensorBoard:
    """Scalars for TensorBoard; silently absent when the summary writer cannot be made."""

    def __init__(self, logdir: str):
        import tensorflow as tf

        self._tf = tf
        self._writer = tf.summary.create_file_writer(logdir)

    def scalars(self, step: int, values: Dict[str, Optional[float]]) -> None:
        with self._writer.as_default():
            for k, v in values.items():
                if v is not None and math.isfinite(v):
                    self._tf.summary.scalar(k, v, step=step)
        self._writer.flush()


def _save_keras_atomic(model, path: str) -> None:
    tmp = path[:-len(".keras")] + f".tmp-{os.getpid()}.keras"
    model.save(tmp)
    os.replace(tmp, path)


def train(config: DPTrainingConfig, x: np.ndarray, y: np.ndarray, *, model_dir: str, run_dir: str,
          input_features: Optional[List[str]] = None, num_classes: Optional[int] = None,
          verbose: bool = True) -> Dict[str, Any]:
    """Trains per ``config`` on members (x [N, D] float32, y [N] int labels) and writes the Model and
    ModelRun layouts. Returns the ledger JSON (ε per epoch).

    Nothing but these two directories is written; each file goes to a temporary name first.
    """
    from components.dp_trainer import dp_step, sampling, training
    from components.dp_trainer.models import build_model

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(np.int64)
    if x.ndim < 2 or len(x) != len(y):
        raise ValueError(f"x must be [N, ...] and y [N]; got x {x.shape}, y {y.shape}")
    n = len(y)
    config.validate(n_examples=n)
    if not np.isfinite(x).all():
        raise ValueError(f"{int((~np.isfinite(x)).any(axis=tuple(range(1, x.ndim))).sum())} training "
                         "example(s) have NaN or infinite features")
    if (y < 0).any():
        raise ValueError("labels must be non-negative class indices")
    num_classes = int(num_classes or (int(y.max()) + 1))
    if y.max() >= num_classes:
        raise ValueError(f"label {int(y.max())} is outside the {num_classes} classes")

    sampler_cls = sampling.PoissonSampler if config.sampling == "poisson" else sampling.ShuffleSampler
    steps_per_epoch = sampler_cls(n, config.batch_size, seed=config.seed).steps_per_epoch
    noise_multiplier, delta = resolve_noise(config, n, steps_per_epoch)

    hparams = {"input_dim": int(np.prod(x.shape[1:])), "num_classes": num_classes,
               "input_features": list(input_features or []), "seed": config.seed, **config.hparams}
    model = build_model(hparams, module_file=config.module_file, model_fn=config.model_fn,
                        builtin=config.builtin_model)
    dp_step.check_model_supports_dp(model)

    os.makedirs(model_dir, exist_ok=True)
    os.makedirs(run_dir, exist_ok=True)
    ckpt_dir = os.path.join(model_dir, CHECKPOINT_DIR)
    os.makedirs(ckpt_dir, exist_ok=True)

    ledger = accounting.PrivacyLedger(
        model_variant=config.model_variant, private=config.private, n_examples=n,
        expected_batch_size=config.batch_size, noise_multiplier=noise_multiplier,
        l2_norm_clip=config.l2_norm_clip, delta=delta, sampling=config.sampling,
        accountant=config.accountant, target_epsilon=config.target_epsilon,
        extra={"optimizer": config.optimizer, "learning_rate": config.learning_rate,
               "epochs_planned": config.epochs, "seed": config.seed, "model_name": model.name})
    tb = _TensorBoard(os.path.join(run_dir, "logs"))
    log_path = os.path.join(run_dir, "training_log.jsonl")
    checkpoints: List[Dict[str, Any]] = []
    if verbose:
        mode = (f"DP-{config.optimizer.upper()}: σ={noise_multiplier:.4g}, C={config.l2_norm_clip}, δ={delta:.0e}, "
                f"q={config.batch_size / n:.4g}, {config.sampling} sampling" if config.private else "non-private")
        print(f"[{config.model_variant}] training {model.name} on {n} examples, {config.epochs} epochs x "
              f"{steps_per_epoch} steps, {mode}", flush=True)
    t_epoch = [time.time()]

    def on_epoch_end(stats) -> None:
        ledger.record_steps(stats.steps_in_epoch)
        if ledger.steps != stats.total_steps:
            raise RuntimeError(f"ledger steps {ledger.steps} != steps run {stats.total_steps}")
        now = time.time()
        rec = ledger.end_epoch(stats.epoch, train_loss=float(stats.mean_train_loss),
                               train_accuracy=float(stats.train_accuracy),
                               examples_sampled=int(stats.examples_sampled), seconds=round(now - t_epoch[0], 3))
        t_epoch[0] = now
        tb.scalars(stats.epoch, {"train_loss": rec.train_loss, "train_accuracy": rec.train_accuracy,
                                 "epsilon": rec.epsilon})
        with open(log_path, "a") as f:
            f.write(json.dumps(dataclasses.asdict(rec), allow_nan=False) + "\n"
                    if rec.epsilon is None or math.isfinite(rec.epsilon)
                    else json.dumps({**dataclasses.asdict(rec), "epsilon": None}) + "\n")
        last = stats.epoch == config.epochs
        if config.checkpoint_every and (stats.epoch % config.checkpoint_every == 0 or last):
            name = f"epoch_{stats.epoch:04d}.keras"
            _save_keras_atomic(model, os.path.join(ckpt_dir, name))
            checkpoints.append({"epoch": stats.epoch, "path": name, "steps": ledger.steps,
                                "epsilon": rec.epsilon if rec.epsilon is None or math.isfinite(rec.epsilon)
                                else None})
            accounting.write_json_atomic(os.path.join(ckpt_dir, "index.json"), {"checkpoints": checkpoints})
        if verbose:
            eps = "" if rec.epsilon is None else f", ε={rec.epsilon:.3f}"
            print(f"[{config.model_variant}] epoch {stats.epoch}/{config.epochs}: loss={rec.train_loss:.4f}, "
                  f"accuracy={rec.train_accuracy:.4f}{eps} ({rec.seconds:.1f}s)", flush=True)

    with open(log_path, "w"):
        pass
    training.fit(model, x, y, epochs=config.epochs, expected_batch_size=config.batch_size,
                 optimizer=_make_optimizer(config.optimizer, config.learning_rate),
                 l2_norm_clip=config.l2_norm_clip if config.private else None,
                 noise_multiplier=noise_multiplier or 0.0, private=config.private, sampling=config.sampling,
                 seed=config.seed, on_epoch_end=on_epoch_end, verbose=False)

    keras_dir = os.path.join(model_dir, "keras")
    os.makedirs(keras_dir, exist_ok=True)
    _save_keras_atomic(model, os.path.join(keras_dir, "model.keras"))
    serving = os.path.join(model_dir, "Format-Serving")
    tmp_serving = serving + f".tmp-{os.getpid()}"
    shutil.rmtree(tmp_serving, ignore_errors=True)
    model.export(tmp_serving, verbose=False)
    if os.path.exists(serving):
        shutil.rmtree(serving)
    os.replace(tmp_serving, serving)
    accounting.write_json_atomic(os.path.join(model_dir, "model_info.json"), {
        "model_variant": config.model_variant, "label_key": config.label_key,
        "feature_keys": config.feature_keys, "input_features": list(input_features or []),
        "private": config.private, "epochs": config.epochs, "num_classes": num_classes,
        "model_name": model.name})
    ledger.write(os.path.join(run_dir, "ledger.json"))
    return ledger.to_json()
