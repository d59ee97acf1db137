"""DP-SGD training loop: sampler + padded batches + :class:`DPStep`.

``fit`` trains a built Keras 3 model on in-memory arrays and reports, per epoch,
what actually ran (steps, examples sampled, batch sizes) so the caller can
account privacy for exactly those steps.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np

from privacy_audit.components.dp_trainer import dp_step as dp_step_lib
from privacy_audit.components.dp_trainer import sampling as sampling_lib


@dataclasses.dataclass(frozen=True)
class EpochStats:
    """What one epoch ran.

    Attributes:
      epoch: 1-based epoch number.
      steps_in_epoch: optimizer steps this epoch (one per sampled batch).
      total_steps: optimizer steps since the start of training.
      examples_sampled: sum of this epoch's batch sizes (real rows only).
      mean_train_loss: mean per-example loss over the sampled rows, at the
        weights before each step (NaN if nothing was sampled).
      train_accuracy: accuracy over the same rows (NaN if not a classifier
        output or nothing was sampled).
      batch_sizes: the realised batch size of each step.
      seconds: wall time of the epoch.
      overflow_steps: steps whose batch exceeded the padded size (run in chunks).
      l2_norm_clip: with adaptive clipping, the clip norm C after the epoch's
        last step (None with a fixed C).
    """

    epoch: int
    steps_in_epoch: int
    total_steps: int
    examples_sampled: int
    mean_train_loss: float
    train_accuracy: float
    batch_sizes: tuple
    seconds: float
    overflow_steps: int = 0
    l2_norm_clip: float | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["batch_sizes"] = list(self.batch_sizes)
        return d


@dataclasses.dataclass
class TrainingResult:
    """Outcome of :func:`fit` (plain data except ``model``).

    ``sampling`` is the mode that ran ("poisson" or "shuffle");
    ``poisson_guarantee_holds`` is True only for Poisson sampling, the mode the
    accountant's analysis covers. ``clipping_path`` says how per-example
    gradients were clipped ("registry", "vectorised" or "none").
    ``l2_norm_clip`` is the fixed (or, with adaptive clipping, the initial) C;
    ``adaptive_clipping`` holds the adaptive settings and the final C (None
    with a fixed C); each epoch's C is in ``history``.
    """

    model: object
    history: list
    sampling: str
    poisson_guarantee_holds: bool
    private: bool
    steps: int
    epochs: int
    n_examples: int
    expected_batch_size: int
    padded_batch_size: int
    sampling_probability: float
    noise_multiplier: float | None
    l2_norm_clip: float | None
    seed: int
    clipping_path: str
    overflow_steps: int
    seconds: float
    adaptive_clipping: dict | None = None

    def to_dict(self) -> dict:
        """JSON-ready summary (without the model)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("model", "history")}
        d["history"] = [e.to_dict() for e in self.history]
        return d


def check_training_data(x, y):
    """Validated training arrays ``(x, y, n)``: same length, numeric, finite; float64 cast to float32.

    ``x`` is an array ``[N, ...]`` or a dict of them; raises ValueError naming the problem.
    """
    if isinstance(x, dict):
        xs = {k: np.asarray(v) for k, v in x.items()}
        flat = list(xs.values())
    else:
        xs = np.asarray(x)
        flat = [xs]
    y = np.asarray(y)
    if not flat or any(a.ndim == 0 for a in flat):
        raise ValueError("x must be an array of examples with a leading example axis")
    n = len(flat[0])
    if n == 0:
        raise ValueError("the training data is empty: x has 0 examples")
    if any(len(a) != n for a in flat) or y.ndim == 0 or len(y) != n:
        raise ValueError(f"x and y must have the same number of examples; got x: "
                         f"{[len(a) for a in flat]}, y: {y.shape}")
    for name, a in [("x", a) for a in flat] + [("y", y)]:
        if a.dtype == object:
            raise ValueError(f"{name} must be a numeric array; got dtype object")
        if np.issubdtype(a.dtype, np.floating):
            bad = ~np.isfinite(a.reshape(n, -1)).all(axis=1)
            if bad.any():
                rows = np.flatnonzero(bad)
                kind = "NaN" if np.isnan(a).any() else "infinite values"
                raise ValueError(f"{name} contains {kind} in {len(rows)} example(s) "
                                 f"(first at row {rows[0]}); clean or impute the data first")

    def cast(a):
        return a.astype(np.float32) if a.dtype == np.float64 else a

    xs = {k: cast(v) for k, v in xs.items()} if isinstance(xs, dict) else cast(xs)
    return xs, y, n


class PaddedBatcher:
    """Gathers index arrays into fixed-shape padded batches ``(x, y, mask)``.

    Padding rows copy example 0 (real, finite data) and get mask 0. ``padded`` is the default
    batch shape; a call may ask for a larger one (a Poisson batch above the pad).
    """

    def __init__(self, x, y, padded: int):
        self.x, self.y, self.padded = x, y, padded

    @staticmethod
    def _pad(a, idx, size):
        out = np.empty((size,) + a.shape[1:], a.dtype)
        out[:len(idx)] = a[idx]
        out[len(idx):] = a[0]
        return out

    def __call__(self, idx, size: int | None = None):
        size = self.padded if size is None else size
        if isinstance(self.x, dict):
            xb = {k: self._pad(v, idx, size) for k, v in self.x.items()}
        else:
            xb = self._pad(self.x, idx, size)
        mask = np.zeros(size, np.float32)
        mask[:len(idx)] = 1.0
        return xb, self._pad(self.y, idx, size), mask


def fit(model, x, y, *, epochs: int, expected_batch_size: int, optimizer,
        l2_norm_clip: float | None = None, noise_multiplier: float = 0.0, private: bool = True,
        sampling: str = "poisson", seed: int = 0, padded_batch_size: int | None = None,
        loss="sparse_categorical_crossentropy", jit_compile: bool | str = "auto",
        fast_clipping: bool = True, on_epoch_end: Callable[[EpochStats], None] | None = None,
        verbose: bool = True, adaptive_clipping: bool = False,
        target_unclipped_quantile: float = 0.5, clip_learning_rate: float = 0.2,
        clipped_count_stddev: float | None = None) -> TrainingResult:
    """Trains ``model`` with DP-SGD (or without privacy, for baselines).

    Args:
      model: a built Keras 3 model returning logits.
      x: float array ``[N, ...]`` (or dict of arrays for multi-input models);
        float64 is cast to float32.
      y: labels ``[N]`` (ints for the default loss) or ``[N, ...]``.
      epochs: number of epochs (>= 1); each is ``steps_per_epoch`` steps.
      expected_batch_size: q * N for Poisson sampling, the batch size for
        shuffle; ``1 <= expected_batch_size <= N``.
      optimizer: a Keras 3 optimizer (SGD, Adam, ...).
      l2_norm_clip: per-example gradient L2 bound C (required if private).
      noise_multiplier: sigma (noise std = sigma * C on the gradient sum);
        ignored when ``private`` is False. With adaptive clipping, the step's
        total z (see :class:`DPStep`).
      private: False trains the non-private baseline through the same step.
      sampling: "poisson" (default; what the accountant assumes) or "shuffle".
      seed: keys the sampler and the noise RNG (not the model's initialisation).
      padded_batch_size: fixed batch shape; default mean + 4 sd (Poisson) or
        the batch size (shuffle).
      loss, jit_compile, fast_clipping: passed to :class:`DPStep`.
      on_epoch_end: called with :class:`EpochStats` after each epoch.
      verbose: print one progress line per epoch.
      adaptive_clipping, target_unclipped_quantile, clip_learning_rate,
        clipped_count_stddev: adaptive clipping (Andrew et al. 2021) with
        ``l2_norm_clip`` as the initial C; see :class:`DPStep`.

    Returns:
      :class:`TrainingResult`; the model is trained in place.

    Raises:
      ValueError: empty data, NaN/inf in x, mismatched lengths, batch size out
        of range, noise_multiplier < 0, l2_norm_clip <= 0, unsupported layers.
    """
    sampling_lib.check_int("epochs", epochs)
    dp_step_lib.validate_dp_params(l2_norm_clip, noise_multiplier, private)
    x, y, n = check_training_data(x, y)
    sampler = sampling_lib.make_sampler(sampling, n, expected_batch_size, seed, padded_batch_size)
    padded = sampler.padded_batch_size
    # One inference call: builds a subclassed model and gives the output shape.
    first = {k: v[:1] for k, v in x.items()} if isinstance(x, dict) else x[:1]
    logits_shape = tuple(model(first, training=False).shape)
    has_acc = dp_step_lib.has_accuracy(y.shape, y.dtype, logits_shape)
    if loss == "sparse_categorical_crossentropy" and len(logits_shape) == 2:
        n_classes = logits_shape[-1]
        bad = (y < 0) | (y >= n_classes) | (y != np.round(y))
        if bad.any():
            raise ValueError(f"y must hold integer class ids in [0, {n_classes}) for the model's "
                             f"{n_classes} logits; {int(bad.sum())} label(s) are not "
                             f"(first: {y.reshape(-1)[np.flatnonzero(bad.reshape(-1))[0]]!r})")

    step = dp_step_lib.DPStep(
        model, optimizer, l2_norm_clip=l2_norm_clip,
        noise_multiplier=noise_multiplier if private else 0.0,
        expected_batch_size=expected_batch_size, padded_batch_size=padded, seed=seed,
        private=private, loss=loss, jit_compile=jit_compile, fast_clipping=fast_clipping,
        adaptive_clipping=adaptive_clipping, target_unclipped_quantile=target_unclipped_quantile,
        clip_learning_rate=clip_learning_rate, clipped_count_stddev=clipped_count_stddev)
    batcher = PaddedBatcher(x, y, padded)
    history, total_steps, total_overflow = [], 0, 0
    started = time.perf_counter()
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        sizes, loss_sum, correct, overflow = [], 0.0, 0.0, 0
        for idx in sampler.epoch(epoch):
            chunks = sampling_lib.split_batch(idx, padded)
            if len(chunks) == 1:
                stats = step(*batcher(idx))
            else:
                overflow += 1
                stats = step.accumulate_step(batcher(c) for c in chunks)
            sizes.append(len(idx))
            loss_sum += stats["loss_sum"]
            correct += stats["correct"]
        total_steps += len(sizes)
        total_overflow += overflow
        sampled = int(sum(sizes))
        stats = EpochStats(
            epoch=epoch + 1, steps_in_epoch=len(sizes), total_steps=total_steps,
            examples_sampled=sampled,
            mean_train_loss=loss_sum / sampled if sampled else math.nan,
            train_accuracy=correct / sampled if sampled and has_acc else math.nan,
            batch_sizes=tuple(sizes), seconds=time.perf_counter() - epoch_start,
            overflow_steps=overflow,
            l2_norm_clip=step.current_l2_norm_clip if step.adaptive_clipping else None)
        history.append(stats)
        if verbose:
            clip = f" C={stats.l2_norm_clip:.4g}" if stats.l2_norm_clip is not None else ""
            print(f"epoch {stats.epoch}/{epochs}: loss={stats.mean_train_loss:.4f} "
                  f"accuracy={stats.train_accuracy:.4f} steps={stats.steps_in_epoch}{clip} "
                  f"({sampler.mode}) {stats.seconds:.1f}s", flush=True)
        if on_epoch_end is not None:
            on_epoch_end(stats)

    return TrainingResult(
        model=model, history=history, sampling=sampler.mode,
        poisson_guarantee_holds=sampler.mode == "poisson", private=bool(private),
        steps=total_steps, epochs=epochs, n_examples=n,
        expected_batch_size=int(expected_batch_size), padded_batch_size=padded,
        sampling_probability=sampler.sampling_probability,
        noise_multiplier=float(noise_multiplier) if private else None,
        l2_norm_clip=float(l2_norm_clip) if private else None, seed=int(seed),
        clipping_path=step.clipping_path, overflow_steps=total_overflow,
        seconds=time.perf_counter() - started,
        adaptive_clipping={
            "target_unclipped_quantile": step.target_unclipped_quantile,
            "clip_learning_rate": step.clip_learning_rate,
            "clipped_count_stddev": step.clipped_count_stddev,
            "gradient_noise_multiplier": step.gradient_noise_multiplier,
            "final_l2_norm_clip": step.current_l2_norm_clip} if step.adaptive_clipping else None)

