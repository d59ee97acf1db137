"""Training a Keras model with DP-SGD / DP-Adam end to end: validation, accounting, checkpoints, export.

This is the library behind the DPTrainer TFX component (and usable on its own): it takes arrays and
output directories, and writes the Model and ModelRun layouts described in the project's contracts:

    model_dir/keras/model.keras, model_dir/Format-Serving/ (SavedModel), model_dir/checkpoints/epoch_NNNN.keras,
    model_dir/checkpoints/index.json, model_dir/model_info.json
    run_dir/ledger.json, run_dir/training_log.jsonl, run_dir/logs/ (TensorBoard scalars),
    run_dir/one_run_audit.json (private runs with ``audit_canaries`` > 0)

The one-run privacy audit (Steinke, Nasr, Jagielski 2023; :mod:`one_run_audit`) checks the DP claim with
one extra training run of the same recipe: ``audit_canaries`` = m training examples are set aside, given a
random wrong label (canaries a model fits only by memorising them) and each put back with probability 1/2
(seeded); after training, the canaries the model fits best are guessed "in", those it fits worst "out",
and the number of correct guesses gives a lower bound on ε at 95% confidence. A bound above the ε the
accountant gives for that run means the DP training (or its accounting) is broken.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from typing import Any, Dict, List, Optional

import numpy as np

from privacy_audit.components.common import io
from privacy_audit.components.dp_trainer import accounting

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
CHECKPOINT_DIR = "checkpoints"


@dataclasses.dataclass
class DPTrainingConfig:
    """Everything that defines a training run.

    private=False trains the same model without clipping or noise (a baseline). With private=True give
    either ``noise_multiplier`` or ``target_epsilon`` (then σ is calibrated for ``epochs``).
    ``delta`` defaults to the largest power of ten not above 1/N^1.1 (δ >= 1/N is refused). ``checkpoint_every``: save the full model
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
    audit_canaries: int = 0

    def validate(self, n_examples: Optional[int] = None) -> None:
        """Raises ValueError naming the first invalid setting."""
        if isinstance(self.audit_canaries, bool) or not isinstance(self.audit_canaries, int) or \
                self.audit_canaries < 0 or self.audit_canaries == 1:
            raise ValueError(f"audit_canaries must be 0 (no one-run audit) or an integer >= 2, got "
                             f"{self.audit_canaries!r}")
        if n_examples is not None and self.audit_canaries > n_examples // 2:
            raise ValueError(f"audit_canaries ({self.audit_canaries}) must be at most half the training examples "
                             f"({n_examples // 2}): the canaries are taken from them")
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


def model_hparams(config: DPTrainingConfig, x: np.ndarray, num_classes: int,
                  input_features: Optional[List[str]] = None) -> Dict[str, Any]:
    """The ``hparams`` the model is built from (``input_dim``, ``num_classes``, ``input_features``, ``seed``
    and the config's own): the same dict rebuilds the same architecture and initialisation."""
    return {"input_dim": int(np.prod(np.shape(x)[1:])), "num_classes": int(num_classes),
            "input_features": list(input_features or []), "seed": config.seed, **config.hparams}


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
    # Keras wants a file name ending in .keras: saved locally, then moved or uploaded in one piece.
    with io.local_file(path, suffix=".keras") as tmp:
        model.save(tmp)


def train(config: DPTrainingConfig, x: np.ndarray, y: np.ndarray, *, model_dir: str, run_dir: str,
          input_features: Optional[List[str]] = None, num_classes: Optional[int] = None,
          verbose: bool = True) -> Dict[str, Any]:
    """Trains per ``config`` on members (x [N, D] float32, y [N] int labels) and writes the Model and
    ModelRun layouts. Returns the ledger JSON (ε per epoch).

    Nothing but these two directories is written; each file goes to a temporary name first.
    """
    from privacy_audit.components.dp_trainer import dp_step, sampling, training
    from privacy_audit.components.dp_trainer.models import build_model

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
    if len(np.unique(y)) < 2:
        # Issue 15: a one-class model is "accurate" and unattackable by construction; its audit would bless it.
        raise ValueError(f"the training examples hold a single class ({int(y[0])}): membership inference and "
                         "accuracy are meaningless with one class; give data with at least two classes")
    num_classes = int(num_classes or (int(y.max()) + 1))
    if y.max() >= num_classes:
        raise ValueError(f"label {int(y.max())} is outside the {num_classes} classes")

    sampler_cls = sampling.PoissonSampler if config.sampling == "poisson" else sampling.ShuffleSampler
    steps_per_epoch = sampler_cls(n, config.batch_size, seed=config.seed).steps_per_epoch
    noise_multiplier, delta = resolve_noise(config, n, steps_per_epoch)

    hparams = model_hparams(config, x, num_classes, input_features)
    model = build_model(hparams, module_file=config.module_file, model_fn=config.model_fn,
                        builtin=config.builtin_model)
    if config.private:
        # A non-private baseline may keep layers that mix examples (BatchNormalization).
        dp_step.check_model_supports_dp(model)

    io.makedirs(model_dir)
    io.makedirs(run_dir)
    ckpt_dir = io.join(model_dir, CHECKPOINT_DIR)
    io.makedirs(ckpt_dir)

    ledger = accounting.PrivacyLedger(
        model_variant=config.model_variant, private=config.private, n_examples=n,
        expected_batch_size=config.batch_size, noise_multiplier=noise_multiplier,
        l2_norm_clip=config.l2_norm_clip, delta=delta, sampling=config.sampling,
        accountant=config.accountant, target_epsilon=config.target_epsilon,
        extra={"optimizer": config.optimizer, "learning_rate": config.learning_rate,
               "epochs_planned": config.epochs, "seed": config.seed, "model_name": model.name})
    tb = _TensorBoard(io.join(run_dir, "logs"))
    log_path = io.join(run_dir, "training_log.jsonl")
    log_lines: List[str] = []
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
        log_lines.append(json.dumps(dataclasses.asdict(rec), allow_nan=False) + "\n"
                         if rec.epsilon is None or math.isfinite(rec.epsilon)
                         else json.dumps({**dataclasses.asdict(rec), "epsilon": None}) + "\n")
        # Object stores cannot append: the whole (small) log is rewritten, atomically, every epoch.
        io.write_text(log_path, "".join(log_lines))
        last = stats.epoch == config.epochs
        if config.checkpoint_every and (stats.epoch % config.checkpoint_every == 0 or last):
            name = f"epoch_{stats.epoch:04d}.keras"
            _save_keras_atomic(model, io.join(ckpt_dir, name))
            checkpoints.append({"epoch": stats.epoch, "path": name, "steps": ledger.steps,
                                "epsilon": rec.epsilon if rec.epsilon is None or math.isfinite(rec.epsilon)
                                else None})
            accounting.write_json_atomic(io.join(ckpt_dir, "index.json"), {"checkpoints": checkpoints})
        if verbose:
            eps = "" if rec.epsilon is None else f", ε={rec.epsilon:.3f}"
            print(f"[{config.model_variant}] epoch {stats.epoch}/{config.epochs}: loss={rec.train_loss:.4f}, "
                  f"accuracy={rec.train_accuracy:.4f}{eps} ({rec.seconds:.1f}s)", flush=True)

    io.write_text(log_path, "")
    training.fit(model, x, y, epochs=config.epochs, expected_batch_size=config.batch_size,
                 optimizer=_make_optimizer(config.optimizer, config.learning_rate),
                 l2_norm_clip=config.l2_norm_clip if config.private else None,
                 noise_multiplier=noise_multiplier or 0.0, private=config.private, sampling=config.sampling,
                 seed=config.seed, on_epoch_end=on_epoch_end, verbose=False)

    _save_keras_atomic(model, io.join(model_dir, "keras", "model.keras"))
    with io.local_staging(io.join(model_dir, "Format-Serving")) as staging:
        model.export(staging, verbose=False)
    accounting.write_json_atomic(io.join(model_dir, "model_info.json"), {
        "model_variant": config.model_variant, "label_key": config.label_key,
        "feature_keys": config.feature_keys, "input_features": list(input_features or []),
        "private": config.private, "epochs": config.epochs, "num_classes": num_classes,
        "model_name": model.name})
    ledger.write(io.join(run_dir, "ledger.json"))
    if config.audit_canaries:
        if config.private:
            audit = one_run_privacy_audit(config, x, y, num_classes=num_classes, hparams=hparams,
                                          noise_multiplier=noise_multiplier, delta=delta,
                                          ledger_epsilon=ledger.to_json()["epsilon"], verbose=verbose)
            accounting.write_json_atomic(io.join(run_dir, ONE_RUN_AUDIT_FILE), audit)
        elif verbose:
            print(f"[{config.model_variant}] one-run audit skipped: the variant is not private (ε = ∞)", flush=True)
    return ledger.to_json()


ONE_RUN_AUDIT_FILE = "one_run_audit.json"
ONE_RUN_AUDIT_CONFIDENCE = 0.95


def audit_delta(ledger_delta: float, m: int) -> float:
    """δ at which the one-run audit tests the run: the ledger's δ, or 1 / (100 m) when smaller.

    The audit's bound carries a term 2 m δ (Steinke et al., Theorem 3.3): with the ledger's δ (up to 1/N^1.1)
    and hundreds of canaries it can exceed the audit's 5% error budget and no ε could ever be refuted.
    DP-SGD with noise multiplier σ is (ε(δ'), δ')-DP for every δ', so the claim is tested at
    δ' = min(δ, 1/(100 m)) (2 m δ' <= 0.02) against the accountant's ε at that same δ'."""
    return float(min(ledger_delta, 1.0 / (100.0 * m)))


def one_run_privacy_audit(config: DPTrainingConfig, x: np.ndarray, y: np.ndarray, *, num_classes: int,
                          hparams: Dict[str, Any], noise_multiplier: float, delta: float,
                          ledger_epsilon: Optional[float] = None, verbose: bool = True) -> Dict[str, Any]:
    """The one-run audit of a private recipe (see the module doc): one extra training run with
    ``config.audit_canaries`` canaries. Returns the JSON written to ``one_run_audit.json``:
    :meth:`one_run_audit.CanaryAudit.to_json` (``epsilon_lower_bound`` at ``confidence`` and ``delta``, the
    ``accountant_epsilon`` of the audit run at that δ, ``violated``, ``message``, the guesses) plus
    ``ledger_epsilon`` / ``ledger_delta`` (the main run's claim), the recipe, and the seconds it took.
    ``delta`` is :func:`audit_delta` (at most the ledger's δ).

    Power: even r correct guesses out of r prove at most ε ≈ ln(r / ln(1/β)), β = 5% shared by the ~14
    guess counts tried (about 3.0 for r = 120, 3.9 for r = 300), and at most m guesses can be made (m <= N/2
    here). So with a few hundred canaries the audit can refute small claims and catch gross breakage (no
    noise at all) but cannot check ε = 8; its bound stays a lower bound.

    The m canaries are m training examples (chosen with the seed) with a uniformly random wrong label; they
    leave the audit run's base training set, and each is put back with probability 1/2. The accountant's ε
    of the audit run is computed for the steps that ran and its own sampling rate (the base set plus the
    included canaries), with the main run's σ and δ.
    """
    from privacy_audit.components.dp_trainer import one_run_audit
    from privacy_audit.components.dp_trainer.models import build_model

    started = time.time()
    m = int(config.audit_canaries)
    rng = np.random.default_rng(np.random.SeedSequence([int(config.seed), 0xA0D1]))
    chosen = np.zeros(len(y), dtype=bool)
    chosen[rng.choice(len(y), size=m, replace=False)] = True
    x_canaries, y_canaries = one_run_audit.mislabeled_canaries(x[chosen], y[chosen], m, num_classes,
                                                               seed=config.seed)
    delta_audit = audit_delta(delta, m)
    train_fn = one_run_audit.dp_training_fn(
        lambda: build_model(hparams, module_file=config.module_file, model_fn=config.model_fn,
                            builtin=config.builtin_model),
        epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
        l2_norm_clip=config.l2_norm_clip, noise_multiplier=noise_multiplier, delta=delta_audit,
        optimizer=config.optimizer, sampling=config.sampling, seed=config.seed, accountant=config.accountant)
    if verbose:
        print(f"[{config.model_variant}] one-run privacy audit: {m} mislabelled canaries, each included with "
              f"probability 1/2, one more training run of the same recipe", flush=True)
    result = one_run_audit.canary_audit(train_fn, x[~chosen], y[~chosen], x_canaries, y_canaries,
                                        delta=delta_audit, seed=config.seed, confidence=ONE_RUN_AUDIT_CONFIDENCE)
    out = result.to_json()
    out.update({
        "schema_version": 1, "method": "one_run_audit (Steinke, Nasr, Jagielski 2023)",
        "model_variant": config.model_variant, "confidence": ONE_RUN_AUDIT_CONFIDENCE,
        "canaries": "training examples with a random wrong label, each included with probability 1/2",
        "ledger_epsilon": ledger_epsilon if ledger_epsilon is None or math.isfinite(ledger_epsilon) else None,
        "ledger_delta": float(delta),
        "noise_multiplier": float(noise_multiplier), "l2_norm_clip": float(config.l2_norm_clip),
        "expected_batch_size": int(config.batch_size), "epochs": int(config.epochs),
        "accountant": config.accountant, "seed": int(config.seed), "seconds": round(time.time() - started, 3)})
    if verbose:
        print(f"[{config.model_variant}] one-run audit: {result.message}", flush=True)
    return out
