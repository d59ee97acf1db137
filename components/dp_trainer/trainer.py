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

from privacy_audit.components.common import io, layout
from privacy_audit.components.common.layout import CHECKPOINT_DIR, ONE_RUN_AUDIT_FILE
from privacy_audit.components.common.optimizers import recipe_optimizer
from privacy_audit.components.common.recipe import TrainingRecipe
from privacy_audit.components.dp_trainer import accounting

logger = logging.getLogger(__name__)



def resolve_noise(recipe: TrainingRecipe, n_examples: int, steps_per_epoch: int):
    """(noise_multiplier, delta) for the run: σ calibrated from target_epsilon over the planned steps."""
    if not recipe.private:
        return None, None
    delta = recipe.delta if recipe.delta is not None else accounting.default_delta(n_examples)
    accounting.validate_dp_params(n_examples=n_examples, delta=delta)
    if recipe.noise_multiplier is not None:
        return float(recipe.noise_multiplier), delta
    sigma = accounting.noise_multiplier_for_epsilon(
        target_epsilon=recipe.target_epsilon, n_examples=n_examples, batch_size=recipe.batch_size,
        delta=delta, steps=steps_per_epoch * recipe.epochs, accountant=recipe.accountant)
    return sigma, delta


def fit_adaptive_kwargs(recipe: TrainingRecipe) -> Dict[str, Any]:
    """``training.fit``'s adaptive-clipping arguments for ``recipe`` (none when it clips at a fixed C): the
    DPTrainer, its one-run audit run and the reference models train alike."""
    adaptive = adaptive_clipping_settings(recipe)
    return {} if adaptive is None else {"adaptive_clipping": True, **adaptive}


def adaptive_clipping_settings(recipe: TrainingRecipe) -> Optional[Dict[str, float]]:
    """The adaptive-clipping settings of a private recipe that asks for them (σ_b resolved), else None."""
    if not (recipe.private and recipe.adaptive_clipping):
        return None
    return {"target_unclipped_quantile": float(recipe.target_unclipped_quantile),
            "clip_learning_rate": float(recipe.clip_learning_rate),
            "clipped_count_stddev": recipe.resolved_clipped_count_stddev()}


def model_hparams(recipe: TrainingRecipe, x: np.ndarray, num_classes: int,
                  input_features: Optional[List[str]] = None) -> Dict[str, Any]:
    """The ``hparams`` the model is built from (``input_dim``, ``num_classes``, ``input_features``, ``seed``
    and the recipe's own): the same dict rebuilds the same architecture and initialisation."""
    return {"input_dim": int(np.prod(np.shape(x)[1:])), "num_classes": int(num_classes),
            "input_features": list(input_features or []), "seed": recipe.seed, **recipe.hparams}


class _TensorBoard:
    """Scalars for TensorBoard; absent when TensorBoard is not installed (tf.summary needs it to write: the
    core's Python 3.12 environment has TensorFlow without it)."""

    def __init__(self, logdir: str):
        import importlib.util

        import tensorflow as tf

        self._tf = tf
        self._writer = tf.summary.create_file_writer(logdir) if importlib.util.find_spec("tensorboard") else None

    def scalars(self, step: int, values: Dict[str, Optional[float]]) -> None:
        if self._writer is None:
            return
        with self._writer.as_default():
            for k, v in values.items():
                if v is not None and math.isfinite(v):
                    self._tf.summary.scalar(k, v, step=step)
        self._writer.flush()


def _save_keras_atomic(model, path: str) -> None:
    # Keras wants a file name ending in .keras: saved locally, then moved or uploaded in one piece.
    with io.local_file(path, suffix=".keras") as tmp:
        model.save(tmp)


def train(recipe: TrainingRecipe, x: np.ndarray, y: np.ndarray, *, model_dir: str, run_dir: str,
          model_variant: str = "model", label_key: str = "label", feature_keys: Optional[List[str]] = None,
          input_features: Optional[List[str]] = None, num_classes: Optional[int] = None,
          verbose: bool = True) -> Dict[str, Any]:
    """Trains per ``recipe`` on members (x [N, D] float32, y [N] int labels) and writes the Model
    and ModelRun layouts. Returns the ledger JSON (ε per epoch).

    ``model_variant`` names the run (ledger, logs); ``label_key`` and ``feature_keys`` are recorded in
    model_info.json (the data the model reads). Nothing but these two directories is written; each file goes
    to a temporary name first.
    """
    from privacy_audit.components.dp_trainer import dp_step, sampling, training
    from privacy_audit.components.dp_trainer.models import build_model

    x, y, num_classes = _checked_data(recipe, x, y, num_classes)
    n = len(y)

    sampler_cls = sampling.PoissonSampler if recipe.sampling == "poisson" else sampling.ShuffleSampler
    steps_per_epoch = sampler_cls(n, recipe.batch_size, seed=recipe.seed).steps_per_epoch
    noise_multiplier, delta = resolve_noise(recipe, n, steps_per_epoch)
    adaptive = adaptive_clipping_settings(recipe)
    if adaptive is not None:
        # Refused here, before anything is written, when σ_b is too small for the (calibrated) σ.
        accounting.adaptive_noise_split(noise_multiplier, adaptive["clipped_count_stddev"])

    hparams = model_hparams(recipe, x, num_classes, input_features)
    model = build_model(hparams, module_file=recipe.module_file, model_fn=recipe.model_fn,
                        builtin=recipe.builtin_model)
    if recipe.private:
        # A non-private baseline may keep layers that mix examples (BatchNormalization).
        dp_step.check_model_supports_dp(model)

    io.makedirs(model_dir)
    io.makedirs(run_dir)
    ckpt_dir = io.join(model_dir, CHECKPOINT_DIR)
    io.makedirs(ckpt_dir)

    ledger = accounting.PrivacyLedger(
        model_variant=model_variant, private=recipe.private, n_examples=n,
        expected_batch_size=recipe.batch_size, noise_multiplier=noise_multiplier,
        l2_norm_clip=recipe.l2_norm_clip, delta=delta, sampling=recipe.sampling,
        accountant=recipe.accountant, target_epsilon=recipe.target_epsilon,
        extra={"optimizer": recipe.optimizer, "learning_rate": recipe.learning_rate,
               "lr_schedule": recipe.lr_schedule,
               "epochs_planned": recipe.epochs, "seed": recipe.seed, "model_name": model.name},
        adaptive_clipping=adaptive)
    epoch_end = _EpochWriter(recipe, model, ledger, model_variant, run_dir, ckpt_dir, verbose)
    if verbose:
        clip = (f"C={recipe.l2_norm_clip} adaptive (quantile {recipe.target_unclipped_quantile:g})"
                if adaptive is not None else f"C={recipe.l2_norm_clip}")
        mode = (f"DP-{recipe.optimizer.upper()}: σ={noise_multiplier:.4g}, {clip}, δ={delta:.0e}, "
                f"q={recipe.batch_size / n:.4g}, {recipe.sampling} sampling" if recipe.private else "non-private")
        print(f"[{model_variant}] training {model.name} on {n} examples, {recipe.epochs} epochs x "
              f"{steps_per_epoch} steps, {mode}", flush=True)
    training.fit(model, x, y, epochs=recipe.epochs, expected_batch_size=recipe.batch_size,
                 optimizer=recipe_optimizer(recipe, steps_per_epoch),
                 l2_norm_clip=recipe.l2_norm_clip if recipe.private else None,
                 noise_multiplier=noise_multiplier or 0.0, private=recipe.private, sampling=recipe.sampling,
                 seed=recipe.seed, on_epoch_end=epoch_end, verbose=False,
                 **fit_adaptive_kwargs(recipe))

    _save_keras_atomic(model, io.join(model_dir, layout.KERAS_FINAL))
    with io.local_staging(io.join(model_dir, layout.SERVING_DIR)) as staging:
        model.export(staging, verbose=False)
    accounting.write_json_atomic(io.join(model_dir, layout.MODEL_INFO_FILE), {
        "model_variant": model_variant, "label_key": label_key,
        "feature_keys": list(feature_keys) if feature_keys else None, "input_features": list(input_features or []),
        "private": recipe.private, "epochs": recipe.epochs, "num_classes": num_classes,
        "model_name": model.name})
    ledger.write(io.join(run_dir, layout.LEDGER_FILE))
    if recipe.audit_canaries:
        if recipe.private:
            audit = one_run_privacy_audit(recipe, x, y, model_variant=model_variant, num_classes=num_classes,
                                          hparams=hparams,
                                          noise_multiplier=noise_multiplier, delta=delta,
                                          ledger_epsilon=ledger.to_json()["epsilon"], verbose=verbose)
            accounting.write_json_atomic(io.join(run_dir, ONE_RUN_AUDIT_FILE), audit)
        elif verbose:
            print(f"[{model_variant}] one-run audit skipped: the variant is not private (ε = ∞)", flush=True)
    return ledger.to_json()


def _checked_data(recipe: TrainingRecipe, x: np.ndarray, y: np.ndarray, num_classes: Optional[int]):
    """``(x float32, y int64, num_classes)`` after the checks a training set must pass (ValueError naming the
    problem): shapes, the recipe against N, finite features, non-negative labels of at least two classes."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(np.int64)
    if x.ndim < 2 or len(x) != len(y):
        raise ValueError(f"x must be [N, ...] and y [N]; got x {x.shape}, y {y.shape}")
    recipe.validate(n_examples=len(y))
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
    return x, y, num_classes


class _EpochWriter:
    """What happens after each epoch: the ledger records the steps that ran (ε follows from its events), the
    TensorBoard scalars and the JSON-lines log are written, a checkpoint is saved every ``checkpoint_every``
    epochs (and after the last) with ``checkpoints/index.json``, and a progress line is printed."""

    def __init__(self, recipe: TrainingRecipe, model, ledger, model_variant: str, run_dir: str, ckpt_dir: str,
                 verbose: bool):
        self.recipe, self.model, self.ledger = recipe, model, ledger
        self.model_variant, self.ckpt_dir, self.verbose = model_variant, ckpt_dir, verbose
        self.tb = _TensorBoard(io.join(run_dir, layout.TENSORBOARD_DIR))
        self.log_path = io.join(run_dir, layout.TRAINING_LOG_FILE)
        self.log_lines: List[str] = []
        self.checkpoints: List[Dict[str, Any]] = []
        self.t_epoch = time.time()
        io.write_text(self.log_path, "")

    def __call__(self, stats) -> None:
        ledger, recipe = self.ledger, self.recipe
        ledger.record_steps(stats.steps_in_epoch)
        if ledger.steps != stats.total_steps:
            raise RuntimeError(f"ledger steps {ledger.steps} != steps run {stats.total_steps}")
        now = time.time()
        rec = ledger.end_epoch(stats.epoch, train_loss=float(stats.mean_train_loss),
                               train_accuracy=float(stats.train_accuracy),
                               examples_sampled=int(stats.examples_sampled), seconds=round(now - self.t_epoch, 3),
                               l2_norm_clip=stats.l2_norm_clip)
        self.t_epoch = now
        finite_eps = rec.epsilon if rec.epsilon is None or math.isfinite(rec.epsilon) else None
        self.tb.scalars(stats.epoch, {"train_loss": rec.train_loss, "train_accuracy": rec.train_accuracy,
                                      "epsilon": rec.epsilon, "l2_norm_clip": rec.l2_norm_clip})
        line = {k: v for k, v in dataclasses.asdict(rec).items() if not (k == "l2_norm_clip" and v is None)}
        self.log_lines.append(json.dumps({**line, "epsilon": finite_eps}, allow_nan=False) + "\n")
        # Object stores cannot append: the whole (small) log is rewritten, atomically, every epoch.
        io.write_text(self.log_path, "".join(self.log_lines))
        last = stats.epoch == recipe.epochs
        if recipe.checkpoint_every and (stats.epoch % recipe.checkpoint_every == 0 or last):
            name = f"epoch_{stats.epoch:04d}.keras"
            _save_keras_atomic(self.model, io.join(self.ckpt_dir, name))
            self.checkpoints.append({"epoch": stats.epoch, "path": name, "steps": ledger.steps, "epsilon": finite_eps})
            accounting.write_json_atomic(io.join(self.ckpt_dir, layout.CHECKPOINT_INDEX),
                                         {"checkpoints": self.checkpoints})
        if self.verbose:
            eps = "" if rec.epsilon is None else f", ε={rec.epsilon:.3f}"
            clip = "" if rec.l2_norm_clip is None else f", C={rec.l2_norm_clip:.4g}"
            print(f"[{self.model_variant}] epoch {stats.epoch}/{recipe.epochs}: loss={rec.train_loss:.4f}, "
                  f"accuracy={rec.train_accuracy:.4f}{eps}{clip} ({rec.seconds:.1f}s)", flush=True)


ONE_RUN_AUDIT_CONFIDENCE = 0.95


def audit_delta(ledger_delta: float, m: int) -> float:
    """δ at which the one-run audit tests the run: the ledger's δ, or 1 / (100 m) when smaller.

    The audit's bound carries a term 2 m δ (Steinke et al., Theorem 3.3): with the ledger's δ (up to 1/N^1.1)
    and hundreds of canaries it can exceed the audit's 5% error budget and no ε could ever be refuted.
    DP-SGD with noise multiplier σ is (ε(δ'), δ')-DP for every δ', so the claim is tested at
    δ' = min(δ, 1/(100 m)) (2 m δ' <= 0.02) against the accountant's ε at that same δ'."""
    return float(min(ledger_delta, 1.0 / (100.0 * m)))


def one_run_privacy_audit(recipe: TrainingRecipe, x: np.ndarray, y: np.ndarray, *, num_classes: int,
                          model_variant: str = "model",
                          hparams: Dict[str, Any], noise_multiplier: float, delta: float,
                          ledger_epsilon: Optional[float] = None, verbose: bool = True) -> Dict[str, Any]:
    """The one-run audit of a private recipe (see the module doc): one extra training run with
    ``recipe.audit_canaries`` canaries. Returns the JSON written to ``one_run_audit.json``:
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
    m = int(recipe.audit_canaries)
    rng = np.random.default_rng(np.random.SeedSequence([int(recipe.seed), 0xA0D1]))
    chosen = np.zeros(len(y), dtype=bool)
    chosen[rng.choice(len(y), size=m, replace=False)] = True
    x_canaries, y_canaries = one_run_audit.mislabeled_canaries(x[chosen], y[chosen], m, num_classes,
                                                               seed=recipe.seed)
    delta_audit = audit_delta(delta, m)
    train_fn = one_run_audit.dp_training_fn(
        lambda: build_model(hparams, module_file=recipe.module_file, model_fn=recipe.model_fn,
                            builtin=recipe.builtin_model),
        epochs=recipe.epochs, batch_size=recipe.batch_size, learning_rate=recipe.learning_rate,
        l2_norm_clip=recipe.l2_norm_clip, noise_multiplier=noise_multiplier, delta=delta_audit,
        optimizer=recipe.optimizer, lr_schedule=recipe.lr_schedule, sampling=recipe.sampling, seed=recipe.seed,
        accountant=recipe.accountant, fit_kwargs=fit_adaptive_kwargs(recipe))
    if verbose:
        print(f"[{model_variant}] one-run privacy audit: {m} mislabelled canaries, each included with "
              f"probability 1/2, one more training run of the same recipe", flush=True)
    result = one_run_audit.canary_audit(train_fn, x[~chosen], y[~chosen], x_canaries, y_canaries,
                                        delta=delta_audit, seed=recipe.seed, confidence=ONE_RUN_AUDIT_CONFIDENCE)
    out = result.to_json()
    out.update({
        "schema_version": 1, "method": "one_run_audit (Steinke, Nasr, Jagielski 2023)",
        "model_variant": model_variant, "confidence": ONE_RUN_AUDIT_CONFIDENCE,
        "canaries": "training examples with a random wrong label, each included with probability 1/2",
        "ledger_epsilon": ledger_epsilon if ledger_epsilon is None or math.isfinite(ledger_epsilon) else None,
        "ledger_delta": float(delta),
        "noise_multiplier": float(noise_multiplier), "l2_norm_clip": float(recipe.l2_norm_clip),
        "expected_batch_size": int(recipe.batch_size), "epochs": int(recipe.epochs),
        "accountant": recipe.accountant, "seed": int(recipe.seed), "seconds": round(time.time() - started, 3)})
    if verbose:
        print(f"[{model_variant}] one-run audit: {result.message}", flush=True)
    return out
