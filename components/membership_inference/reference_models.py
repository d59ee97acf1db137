"""Reference ("shadow") models for LiRA and RMIA: training, storage, reuse, and scoring.

Design
------
The population is every example the audit is about: the target's members and non-members
(``x_population`` [M, ...], ``y_population`` [M]). K reference models are trained with the target's recipe
(architecture, optimizer, learning rate, epochs, batch size and, for a DP target, clipping and noise),
each on a seeded random subset of the population. Inclusion is *balanced* per example
(:func:`inclusion_matrix`): every example is in exactly ``fraction * K`` of the models when that is an
integer (K/2 for the default half), so even with K = 2 or 4 every example has IN and OUT references
and online LiRA needs no fallback; each model sees about ``fraction * M`` examples.

The output is plain arrays: ``signals = {"logits": [K, M, C] float32}`` (every model's logits on the
whole population, in population order) and ``in_mask`` [K, M] bool. They can be written to one ``.npz``
(:func:`save_reference_signals`, read back with ``allow_pickle=False``) together with a JSON metadata
record: the recipe, the seed and a fingerprint of the population. With ``cache_path``,
:func:`train_reference_models` reuses a stored matrix whose fingerprint matches (same population,
recipe, seed, K and model architecture) instead of training again: scheduled re-audits of a model
retrained on the same data pay for the references once.

Training back ends: plain Keras ``fit`` (``fit_with="keras"``) or the project's DP-SGD loop
:func:`privacy_audit.components.dp_trainer.training.fit` (``fit_with="dp_trainer"``, required when ``private``).
``"auto"`` uses the DP loop for private recipes and Keras otherwise; pass ``"dp_trainer"`` for a
non-private target trained by the DPTrainer component (Poisson batches), to match its recipe exactly.

Parallelism. ``n_jobs > 1`` trains models in separate processes (``spawn``; each worker imports
TensorFlow once and limits itself to cpu_count / n_jobs threads). Measured with
``benchmarks/reference_models_cost.py --compare-n-jobs`` (digits, built-in MLP, 30 epochs, 2 cores): with
K = 4 the references took 14.6 s with n_jobs=1 and 17.8 s with n_jobs=2; with K = 8, 37.5 s and 38.8 s.
Each worker pays several seconds to import TensorFlow, and a one-thread worker trains a model slower than
the main process with two threads, so on 2 cores processes do not pay for Keras models of this size:
the default here is ``n_jobs=1`` (no subprocesses). With the DPTrainer's training loop (more Python work
per step) 2 processes did pay from K = 8 (1.3x): :func:`train_for_trainer_recipe` picks the number with
:func:`auto_n_jobs`. Process-level parallelism is otherwise meant for machines with many
cores (and K large enough to amortise the start-up); large audits should rather spread reference models
over a distributed runner, one element per model with :func:`train_reference_model` (same design and
seeds), and write the stacked matrix with :func:`save_reference_signals`.
With ``n_jobs > 1``, ``build_model_fn`` must be importable (a module-level function): it is sent to the
workers by reference.

In the pipeline. The ReferenceModelTrainer component (components/reference_models/) calls
:func:`train_for_trainer_recipe`: the DPTrainer's recipe resolved as for the target (same model, hparams and
initialisation seed, optimizer, epochs, expected batch size, clip norm and noise multiplier), the DPTrainer's
training loop, and by default subsets as large as the target's training set (``fraction`` = members /
population), so that each reference repeats the target's run: same sampling rate, steps and noise. The
matrix is stored with per-example columns (the sha1 of each serialized example, which the evaluator aligns
on). Measured on the digits demo's non-private target (wide MLP on 463 of 1797 examples, K = 4): LiRA's TPR at
1% FPR was 0.054 with subsets as large as the target's training set and 0.035 with halves (LiRA offline
0.058 vs 0.054); K = 16 raised it to 0.121 (the threshold attack: 0.004).

Scoring: :func:`score_with_references` (defined in :mod:`strong_attacks`, re-exported here),
:func:`reference_attack_scores` (the evaluator's attack names ``lira``, ``lira_offline``, ``rmia``,
``rmia_offline`` with :func:`resolve_attack_options`), used per slice by :func:`api.run_attacks`; and
:func:`reference_attack_results`, a shortcut that turns scores into entries of the attack results JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from privacy_audit.components.common import io
from privacy_audit.components.membership_inference.strong_attacks import ATTACKS, score_with_references

__all__ = ["inclusion_matrix", "TrainingRecipe", "train_reference_models", "train_reference_model",
           "train_for_trainer_recipe", "train_with_user_trainer", "ModelBuilder", "save_reference_signals", "load_reference_signals",
           "load_reference_file", "ReferenceSignals", "REFERENCE_ATTACKS", "resolve_attack_options",
           "reference_attack_scores", "score_with_references", "reference_attack_results"]

FORMAT_VERSION = 1
FIT_BACKENDS = ("auto", "keras", "dp_trainer")


# ---------------------------------------------------------------------------------------------------------
# Inclusion design
# ---------------------------------------------------------------------------------------------------------

def inclusion_matrix(k: int, m: int, seed: int = 0, fraction: float = 0.5) -> np.ndarray:
    """[k, m] bool: which of the m population examples each of the k reference models trains on.

    Balanced design: for each example, the models are put in a uniformly random order and the example is
    included in the first floor(fraction * k) of them, plus the next one with probability equal to the
    fractional part of fraction * k. So every example is IN for exactly fraction * k models when that is
    an integer, and each model trains on fraction * m examples in expectation. Seeded by ``seed``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (the number of reference models) must be a positive integer, got {k!r}")
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m (the population size) must be a positive integer, got {m!r}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1A]))
    ranks = np.argsort(rng.random((k, m)), axis=0).argsort(axis=0)  # a random permutation per column
    whole = int(math.floor(fraction * k))
    part = fraction * k - whole
    mask = ranks < whole
    if part > 0:
        mask |= (ranks == whole) & (rng.random(m) < part)[None, :]
    return mask


# ---------------------------------------------------------------------------------------------------------
# Recipe and training
# ---------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TrainingRecipe:
    """How the target (and so each reference model) is trained.

    ``batch_size`` is the expected batch size of Poisson sampling for the DP loop and the fixed batch
    size for Keras ``fit``. ``noise_multiplier`` is required when ``private``.
    """
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str = "adam"
    private: bool = False
    l2_norm_clip: float = 1.0
    noise_multiplier: Optional[float] = None
    sampling: str = "poisson"
    fit_with: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, np.integer)) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, (int, np.integer)) \
                or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.fit_with not in FIT_BACKENDS:
            raise ValueError(f"fit_with must be one of {FIT_BACKENDS}, got {self.fit_with!r}")
        if self.private:
            if self.fit_with == "keras":
                raise ValueError("a private recipe needs fit_with='dp_trainer' (or 'auto'): Keras fit does not "
                                 "clip per-example gradients or add noise")
            if self.noise_multiplier is None or not (self.noise_multiplier >= 0):
                raise ValueError("a private recipe needs noise_multiplier >= 0")
            if not (self.l2_norm_clip > 0):
                raise ValueError(f"l2_norm_clip must be > 0, got {self.l2_norm_clip}")

    @property
    def backend(self) -> str:
        if self.fit_with != "auto":
            return self.fit_with
        return "dp_trainer" if self.private else "keras"

    def to_json(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["backend"] = self.backend
        if not self.private:
            d["l2_norm_clip"] = d["noise_multiplier"] = None
        return d


def _optimizer(name: str, learning_rate: float):
    import keras

    return keras.optimizers.Adam(learning_rate) if name == "adam" else keras.optimizers.SGD(learning_rate)


def train_one(build_model_fn: Callable[[], Any], x_train: np.ndarray, y_train: np.ndarray,
              x_eval: np.ndarray, recipe: TrainingRecipe, seed: int, predict_batch_size: int = 1024
              ) -> np.ndarray:
    """Builds a model (Keras global seed = ``seed`` before ``build_model_fn()``), trains it per ``recipe``
    on (x_train, y_train) and returns its float32 logits on ``x_eval`` [len(x_eval), C]."""
    import keras

    keras.utils.set_random_seed(int(seed))
    model = build_model_fn()
    if recipe.backend == "keras":
        model.compile(optimizer=_optimizer(recipe.optimizer, recipe.learning_rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x_train, y_train, epochs=int(recipe.epochs), batch_size=int(min(recipe.batch_size, len(y_train))),
                  shuffle=True, verbose=0)
    else:
        from privacy_audit.components.dp_trainer import training

        training.fit(model, x_train, y_train, epochs=int(recipe.epochs),
                     expected_batch_size=int(min(recipe.batch_size, len(y_train))),
                     optimizer=_optimizer(recipe.optimizer, recipe.learning_rate),
                     l2_norm_clip=recipe.l2_norm_clip if recipe.private else None,
                     noise_multiplier=float(recipe.noise_multiplier or 0.0) if recipe.private else 0.0,
                     private=recipe.private, sampling=recipe.sampling, seed=int(seed) % (2 ** 31),
                     verbose=False)
    # Direct calls in chunks: Model.predict re-traces a function for every new model (K warnings).
    chunks = [np.asarray(model(x_eval[i:i + predict_batch_size], training=False), dtype=np.float32)
              for i in range(0, len(x_eval), predict_batch_size)]
    return np.concatenate(chunks, axis=0)


def _model_seeds(seed: int, k: int) -> List[int]:
    return [int(s) for s in np.random.SeedSequence([int(seed), 0x2B]).generate_state(k) % (2 ** 31 - 1)]


def train_reference_model(index: int, build_model_fn: Callable[[], Any], x_population, y_population,
                          recipe: TrainingRecipe, *, k: int, seed: int = 0, fraction: float = 0.5) -> np.ndarray:
    """Reference model ``index`` (0-based) of the K-model design of :func:`train_reference_models` with the
    same ``seed``/``fraction``: same training subset, same model seed, so the same logits [M, C]. For
    fanning the K trainings out over a distributed runner (one element per index), then stacking the
    results in index order with ``inclusion_matrix(k, M, seed, fraction)`` as the mask."""
    x = np.asarray(x_population)
    y = np.asarray(y_population)
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    if not 0 <= index < k:
        raise ValueError(f"index must be in [0, {k}), got {index}")
    row = inclusion_matrix(k, len(y), seed, fraction)[index]
    return train_one(build_model_fn, x[row], y[row], x, recipe, _model_seeds(seed, k)[index])


def _worker_init(threads: int) -> None:
    # Runs in a fresh (spawned) process before any TensorFlow op: one share of the cores per worker.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def _worker_train(args) -> Tuple[int, np.ndarray, float]:
    index, build_model_fn, x_train, y_train, x_eval, recipe, seed = args
    t0 = time.perf_counter()
    logits = train_one(build_model_fn, x_train, y_train, x_eval, recipe, seed)
    return index, logits, time.perf_counter() - t0


def _without_names(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_names(v) for k, v in obj.items() if k != "name"}
    if isinstance(obj, (list, tuple)):
        return [_without_names(v) for v in obj]
    return obj


def _architecture_fingerprint(build_model_fn: Callable[[], Any]) -> str:
    """Hash of the model's layer types, configurations and weight shapes; layer names are left out (Keras
    numbers them with a process-wide counter, so they differ between two builds of one architecture)."""
    import keras

    keras.utils.set_random_seed(0)
    model = build_model_fn()
    layers = [{"class": type(layer).__name__, "config": _without_names(layer.get_config()),
               "weights": [list(w.shape) for w in layer.weights]} for layer in model.layers]
    text = json.dumps(layers, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def population_fingerprint(x_population: np.ndarray, y_population: np.ndarray) -> str:
    """sha256 (first 16 hex digits) of the population's arrays (shape, dtype and bytes)."""
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(x_population), np.ascontiguousarray(y_population)):
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def train_reference_models(build_model_fn: Callable[[], Any], x_population, y_population, *, k: int = 4,
                           epochs: int, batch_size: int, learning_rate: float, seed: int = 0,
                           private: bool = False, l2_norm_clip: float = 1.0,
                           noise_multiplier: Optional[float] = None, optimizer: str = "adam",
                           sampling: str = "poisson", fit_with: str = "auto", fraction: float = 0.5,
                           n_jobs: int = 1, cache_path: Optional[str] = None, verbose: bool = False,
                           return_metadata: bool = False):
    """Trains K reference models on balanced random halves of the population; returns their logits.

    Args:
      build_model_fn: ``() -> keras.Model`` (uncompiled, outputs logits [batch, C]); called once per model
        after ``keras.utils.set_random_seed`` with that model's seed. Module-level when ``n_jobs > 1``.
      x_population: [M, ...] float inputs of every audited example (target members and non-members).
      y_population: [M] integer labels.
      k: number of reference models.
      epochs, batch_size, learning_rate, optimizer ("adam" | "sgd"): the target's recipe.
      private, l2_norm_clip, noise_multiplier, sampling: DP-SGD settings of the recipe (private
        references are trained with :func:`privacy_audit.components.dp_trainer.training.fit`).
      fit_with: "auto" | "keras" | "dp_trainer" (see module doc).
      seed: seeds the inclusion design and every model (initialisation, batches, noise).
      fraction: share of the population each example-model pair includes (default one half).
      n_jobs: worker processes (1: train in this process; -1: one per CPU core).
      cache_path: ``.npz`` file: reused when its fingerprint matches, written after training otherwise.
      verbose: print one line per model.
      return_metadata: also return the training record (recipe, seeds, fingerprint, seconds per model).
    Returns:
      ``(signals, in_mask)``: ``signals["logits"]`` float32 [K, M, C], ``in_mask`` bool [K, M]; with
      ``return_metadata``, ``(signals, in_mask, metadata)``.
    """
    x = np.asarray(x_population)
    y = np.asarray(y_population)
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"x_population must be [M, ...] and y_population [M]; got {x.shape} and {y.shape}")
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    m = len(y)
    recipe = TrainingRecipe(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                            optimizer=optimizer, private=private, l2_norm_clip=l2_norm_clip,
                            noise_multiplier=noise_multiplier, sampling=sampling, fit_with=fit_with)
    in_mask = inclusion_matrix(k, m, seed, fraction)
    if (in_mask.sum(axis=1) == 0).any():
        raise ValueError("a reference model would train on no example: the population is too small")

    metadata = {"format_version": FORMAT_VERSION, "k": int(k), "m": int(m), "seed": int(seed),
                "fraction": float(fraction), "recipe": recipe.to_json(),
                "population_fingerprint": population_fingerprint(x, y),
                "build_model_fn": f"{getattr(build_model_fn, '__module__', '?')}."
                                  f"{getattr(build_model_fn, '__qualname__', repr(build_model_fn))}"}
    if cache_path is not None:
        metadata["architecture_fingerprint"] = _architecture_fingerprint(build_model_fn)
        if io.exists(cache_path):
            signals, cached_mask, cached_md = load_reference_signals(cache_path)
            same = all(cached_md.get(key) == metadata[key] for key in
                       ("format_version", "k", "m", "seed", "fraction", "recipe", "population_fingerprint",
                        "architecture_fingerprint"))
            if same and np.array_equal(cached_mask, in_mask):
                if verbose:
                    print(f"reference models: reusing {cache_path}", flush=True)
                return (signals, cached_mask, cached_md) if return_metadata else (signals, cached_mask)
            if verbose:
                print(f"reference models: {cache_path} is for another population/recipe; retraining", flush=True)

    seeds = _model_seeds(seed, k)
    tasks = [(i, build_model_fn, x[in_mask[i]], y[in_mask[i]], x, recipe, seeds[i]) for i in range(k)]
    logits: List[Optional[np.ndarray]] = [None] * k
    seconds: List[float] = [0.0] * k
    t_start = time.perf_counter()
    n_workers = (os.cpu_count() or 1) if n_jobs == -1 else int(n_jobs)
    if n_workers < 1:
        raise ValueError(f"n_jobs must be >= 1 or -1, got {n_jobs}")
    n_workers = min(n_workers, k)
    if n_workers == 1:
        for task in tasks:
            i, out, sec = _worker_train(task)
            logits[i], seconds[i] = out, sec
            if verbose:
                print(f"reference model {i + 1}/{k}: {int(in_mask[i].sum())} examples, {sec:.1f}s", flush=True)
    else:
        import concurrent.futures
        import multiprocessing

        threads = max(1, (os.cpu_count() or 1) // n_workers)
        ctx = multiprocessing.get_context("spawn")  # fork after TensorFlow has started is unsafe
        with concurrent.futures.ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx,
                                                    initializer=_worker_init, initargs=(threads,)) as pool:
            for i, out, sec in pool.map(_worker_train, tasks):
                logits[i], seconds[i] = out, sec
                if verbose:
                    print(f"reference model {i + 1}/{k}: {int(in_mask[i].sum())} examples, {sec:.1f}s",
                          flush=True)
    signals = {"logits": np.stack(logits).astype(np.float32)}
    metadata["train_seconds"] = [round(s, 3) for s in seconds]
    metadata["wall_seconds"] = round(time.perf_counter() - t_start, 3)
    metadata["n_jobs"] = n_workers
    if cache_path is not None:
        save_reference_signals(cache_path, signals, in_mask, metadata)
    return (signals, in_mask, metadata) if return_metadata else (signals, in_mask)


# ---------------------------------------------------------------------------------------------------------
# References for a DPTrainer recipe (the ReferenceModelTrainer component's library)
# ---------------------------------------------------------------------------------------------------------

#: How each reference model is initialised: "target" = the target's own initialisation (the hparams seed of
#: its recipe; each reference still differs by its training subset, batches and noise), "independent" = a
#: fresh seed per model.
INIT_MODES = ("target", "independent")
SIGNALS_FILE = "reference_signals.npz"
#: n_jobs = 0 (automatic): one worker process per this many models (each pays TensorFlow's start-up).
MODELS_PER_WORKER = 4


def auto_n_jobs(k: int) -> int:
    """Worker processes for K models: one per :data:`MODELS_PER_WORKER` models, at most one per CPU core
    (1: in this process). See the ReferenceModelTrainer's doc for the measurements behind it."""
    return max(1, min(os.cpu_count() or 1, k // MODELS_PER_WORKER))


class ModelBuilder:
    """``() -> keras.Model`` for a DPTrainer recipe (picklable, for ``n_jobs > 1``): the built-in model or the
    user's module function, from the target's ``hparams``. With ``init="independent"`` the hparams seed is
    replaced by one drawn from numpy's global generator, which :func:`train_one` seeds per model."""

    def __init__(self, hparams: Mapping[str, Any], module_file: Optional[str] = None,
                 model_fn: str = "build_keras_model", builtin: str = "auto", init: str = "target"):
        if init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
        self.hparams = dict(hparams)
        self.module_file = module_file
        self.model_fn = model_fn
        self.builtin = builtin
        self.init = init

    def __call__(self):
        from privacy_audit.components.dp_trainer.models import build_model

        hparams = dict(self.hparams)
        if self.init == "independent":
            hparams["seed"] = int(np.random.randint(0, 2 ** 31 - 1))
        return build_model(hparams, module_file=self.module_file, model_fn=self.model_fn, builtin=self.builtin)


def sha1_to_id(sha1_hex: Sequence[str]) -> np.ndarray:
    """uint64 example ids from hex sha1 digests: the first 64 bits (the ``id``/``example_id`` of the
    evaluator's per-example records; ``examples.ids_from_hashes``)."""
    from privacy_audit.components.common.examples import ids_from_hashes

    return ids_from_hashes(sha1_hex)


def train_for_trainer_recipe(output_path: str, config: Any, *, x_members: np.ndarray, y_members: np.ndarray,
                             x_nonmembers: np.ndarray, y_nonmembers: np.ndarray, sha1_members: Sequence[str],
                             sha1_nonmembers: Sequence[str], input_features: Sequence[str], k: int = 4,
                             seed: int = 0, init: str = "target", fraction: Optional[float] = None, n_jobs: int = 1,
                             split_names: Tuple[str, str] = ("train", "eval"), verbose: bool = True
                             ) -> ReferenceSignals:
    """Trains K reference models with a DPTrainer recipe on balanced random subsets of the population (the
    target's members then its non-members) and writes ``output_path`` (:func:`save_reference_signals`:
    logits [K, M, C], in_mask [K, M], per-example ``sha1``, ``id``, ``label``, ``split``, and the record).

    Args:
      config: the target's :class:`privacy_audit.components.dp_trainer.trainer.DPTrainingConfig`. The recipe is resolved
        as the DPTrainer resolves it for the target: the same model and hparams (input size, classes from
        the members' labels, seed), optimizer, learning rate, epochs, expected batch size, sampling, clip
        norm and, for a private recipe, the noise multiplier (calibrated from ``target_epsilon`` for the
        members' count and the planned steps, as the target's was). Each reference trains with the
        project's DP-SGD loop (:func:`privacy_audit.components.dp_trainer.training.fit`), like the target.
      x_members, y_members, x_nonmembers, y_nonmembers: the population's inputs [N, D] and labels [N].
      sha1_members, sha1_nonmembers: hex sha1 of each serialized example (``examples.load_examples``).
      input_features: the ordered names of the model's input features.
      k, seed, fraction: the design (:func:`inclusion_matrix`; ``seed`` also seeds every model's batches
        and noise). ``fraction`` None (default): the target's share of the population (members / (members
        + non-members)), so that each reference trains on as many examples as the target did, with the same
        sampling rate, steps and noise: the recipe's training run, not only its hyperparameters (a
        reference on twice the data would take twice the steps and generalise better than the target).
        The fraction is kept within [1/K, (K-1)/K], so that every example has an IN and an OUT model.
        init: :data:`INIT_MODES`.
      n_jobs: worker processes (1: in this process); 0: :func:`auto_n_jobs`. Workers are spawned: the
        ``__main__`` module must be import-safe (an ``if __name__ == "__main__":`` guard).
    """
    from privacy_audit.components.dp_trainer import sampling, trainer

    if k < 1:
        raise ValueError(f"k (the number of reference models) must be >= 1, got {k}")
    y_members = np.asarray(y_members).astype(np.int64)
    y_nonmembers = np.asarray(y_nonmembers).astype(np.int64)
    num_classes = int(y_members.max()) + 1  # as the DPTrainer: the model's outputs
    if len(y_nonmembers) and int(y_nonmembers.max()) >= num_classes:
        raise ValueError(f"a non-member has label {int(y_nonmembers.max())}, outside the {num_classes} classes "
                         "of the members (the target model's outputs)")
    n_target = len(y_members)
    config.validate(n_examples=n_target)
    sampler_cls = sampling.PoissonSampler if config.sampling == "poisson" else sampling.ShuffleSampler
    steps_per_epoch = sampler_cls(n_target, config.batch_size, seed=config.seed).steps_per_epoch
    noise_multiplier, delta = trainer.resolve_noise(config, n_target, steps_per_epoch)
    hparams = trainer.model_hparams(config, x_members, num_classes, list(input_features))
    builder = ModelBuilder(hparams, config.module_file, config.model_fn, config.builtin_model, init)
    x = np.concatenate([np.asarray(x_members, np.float32), np.asarray(x_nonmembers, np.float32)])
    y = np.concatenate([y_members, y_nonmembers])
    wanted = n_target / len(y) if fraction is None else float(fraction)
    if not 0.0 < wanted < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {wanted}")
    # Every example keeps at least one IN and one OUT model (fraction * k in [1, k - 1]): with few models
    # the subsets are made slightly larger or smaller than asked rather than leave examples uncovered.
    fraction = min(max(wanted, 1.0 / k), (k - 1.0) / k)
    if verbose and abs(fraction - wanted) > 1e-12:
        print(f"[{config.model_variant}] reference subsets of {fraction:.3g} of the population instead of "
              f"{wanted:.3g}, so that every example has an IN and an OUT model among the {k}", flush=True)
    sha1 = np.asarray(list(sha1_members) + list(sha1_nonmembers))
    if len(np.unique(sha1)) != len(sha1):
        raise ValueError(f"{len(sha1) - len(np.unique(sha1))} examples appear twice in the population (same "
                         "serialized example): their reference inclusion would be ambiguous; deduplicate the splits")
    if verbose:
        mode = (f"DP-{config.optimizer.upper()} σ={noise_multiplier:.4g}, C={config.l2_norm_clip}"
                if config.private else "non-private")
        print(f"[{config.model_variant}] training {k} reference models, each on a random {fraction:.0%} of "
              f"{len(y)} examples ({n_target} members + {len(y_nonmembers)} non-members), {config.epochs} epochs, "
              f"{mode}, init={init}", flush=True)
    signals, in_mask, metadata = train_reference_models(
        builder, x, y, k=k, epochs=config.epochs, batch_size=config.batch_size,
        learning_rate=config.learning_rate, seed=seed, private=config.private, l2_norm_clip=config.l2_norm_clip,
        noise_multiplier=noise_multiplier, optimizer=config.optimizer, sampling=config.sampling,
        fit_with="dp_trainer", fraction=fraction, n_jobs=n_jobs or auto_n_jobs(k), verbose=verbose,
        return_metadata=True)
    metadata.update({
        "init": init, "fraction_wanted": wanted, "target_model_variant": config.model_variant,
        "target_n_examples": n_target,
        "target_seed": int(config.seed), "num_classes": num_classes, "input_features": list(input_features),
        "noise_multiplier": noise_multiplier, "delta": delta, "hparams": hparams,
        "model": config.module_file or config.builtin_model, "model_fn": config.model_fn,
        "split_names": list(split_names)})
    split = np.asarray([split_names[0]] * n_target + [split_names[1]] * len(y_nonmembers))
    examples = {"sha1": sha1, "id": sha1_to_id(sha1), "label": y, "split": split}
    save_reference_signals(output_path, signals, in_mask, metadata, examples)
    return ReferenceSignals(signals["logits"], in_mask, examples=examples, metadata=metadata)


def _subset_fraction(n_target: int, m: int, k: int, fraction: Optional[float]) -> Tuple[float, float]:
    """``(wanted, used)`` share of the population per reference: the target's share by default, kept within
    [1/K, (K-1)/K] so that every example has an IN and an OUT model."""
    wanted = n_target / m if fraction is None else float(fraction)
    if not 0.0 < wanted < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {wanted}")
    return wanted, min(max(wanted, 1.0 / k), (k - 1.0) / k)


def write_examples_split(directory: str, split: str, serialized: Sequence[bytes]) -> str:
    """Writes serialized tf.Examples as one GZIP TFRecord file of a TFX Examples layout
    (``directory/Split-<split>/data_tfrecord-00000-of-00001.gz``); returns the split directory."""
    import tensorflow as tf

    split_dir = os.path.join(directory, f"Split-{split}")
    tf.io.gfile.makedirs(split_dir)
    path = os.path.join(split_dir, "data_tfrecord-00000-of-00001.gz")
    with tf.io.TFRecordWriter(path + ".tmp", options="GZIP") as w:
        for record in serialized:
            w.write(record)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
    return split_dir


def train_with_user_trainer(output_path: str, train_reference: Callable[[int, str, int], str], *,
                            members: Sequence[bytes], nonmembers: Sequence[bytes], label_key: str, work_dir: str,
                            serving_options: Any, k: int = 4, seed: int = 0, fraction: Optional[float] = None,
                            transform: Optional[Callable[[Sequence[bytes]], List[bytes]]] = None,
                            split_names: Tuple[str, str] = ("train", "eval"), keep_models: bool = False,
                            metadata: Optional[Mapping[str, Any]] = None) -> ReferenceSignals:
    """K reference models trained by a user's own trainer (a TFX ``run_fn``) on balanced seeded subsets of
    the population (the target's members then its non-members, serialized raw tf.Examples); writes
    ``output_path`` like :func:`train_for_trainer_recipe` (logits [K, M, C], in_mask [K, M], per-example sha1,
    id, label, split).

    Args:
      train_reference: ``(index, examples_dir, model_seed) -> serving_model_dir``: trains reference ``index``
        on ``examples_dir`` (a TFX Examples layout: ``Split-train`` = its IN examples, ``Split-eval`` = the
        rest of the population) and returns the SavedModel directory it wrote.
      members, nonmembers: serialized raw tf.Examples of the two splits.
      label_key: the integer label feature.
      work_dir: scratch directory (one sub-directory per reference; removed unless ``keep_models``).
      serving_options: :class:`serving_model.ServingOptions` to read each reference's signature (as the
        evaluator reads the target); probabilities are stored as log-probabilities.
      k, seed, fraction: the design (:func:`inclusion_matrix`; default fraction: the target's share).
      transform: raw serialized examples -> the examples the trainer reads (e.g. Transform's output).
    """
    from privacy_audit.components.membership_inference import serving_model as sm

    # A canonical order (by example digest): ExampleGen's shard order changes between runs, the design must not.
    members, nonmembers = (sorted(side, key=lambda r: sm.example_columns([r], label_key).example_hashes[0])
                           for side in (members, nonmembers))
    population = list(members) + list(nonmembers)
    cols = sm.example_columns(population, label_key)
    sha1 = np.asarray(cols.example_hashes)
    if len(np.unique(sha1)) != len(sha1):
        raise ValueError(f"{len(sha1) - len(np.unique(sha1))} examples appear twice in the population (same "
                         "serialized example): their reference inclusion would be ambiguous; deduplicate the splits")
    wanted, used = _subset_fraction(len(members), len(population), k, fraction)
    in_mask = inclusion_matrix(k, len(population), seed=seed, fraction=used)
    trained_on = transform(population) if transform is not None else population
    seeds = _model_seeds(seed, k)
    logits, kinds, times = [], [], []
    for i in range(k):
        directory = os.path.join(work_dir, f"reference_{i:03d}")
        write_examples_split(directory, "train", [trained_on[j] for j in np.flatnonzero(in_mask[i])])
        write_examples_split(directory, "eval", [trained_on[j] for j in np.flatnonzero(~in_mask[i])])
        t0 = time.perf_counter()
        serving_dir = train_reference(i, directory, seeds[i])
        times.append(time.perf_counter() - t0)
        model = sm.ServingModel(serving_dir, serving_options)
        model.resolve(population[:64])
        scores = np.concatenate([model(population[j:j + 256]) for j in range(0, len(population), 256)])
        logits.append(sm.as_logits(scores, model.kind).astype(np.float32))
        kinds.append(model.kind)
        if not keep_models:
            io.rmtree(directory)
    if not keep_models:
        io.rmtree(work_dir)
    md = dict(metadata or {})
    md.update({"format_version": FORMAT_VERSION, "k": k, "seed": int(seed), "fraction": used,
               "fraction_wanted": wanted, "target_n_examples": len(members), "trainer": "user run_fn",
               "model_seeds": seeds, "outputs": kinds, "train_seconds": times,
               "serving": serving_options.to_json(), "split_names": list(split_names)})
    split = np.asarray([split_names[0]] * len(members) + [split_names[1]] * len(nonmembers))
    examples = {"sha1": sha1, "id": sha1_to_id(sha1), "label": cols.y, "split": split}
    stacked = np.stack(logits)
    save_reference_signals(output_path, {"logits": stacked}, in_mask, md, examples)
    return ReferenceSignals(stacked, in_mask, examples=examples, metadata=md)


# ---------------------------------------------------------------------------------------------------------
# Storage (.npz, no pickle)
# ---------------------------------------------------------------------------------------------------------

def save_reference_signals(path: str, signals: Mapping[str, np.ndarray], in_mask: np.ndarray,
                           metadata: Optional[Mapping[str, Any]] = None,
                           examples: Optional[Mapping[str, np.ndarray]] = None) -> None:
    """Writes ``signals`` (e.g. {"logits": [K, M, C]}), ``in_mask`` [K, M] and JSON ``metadata`` to one
    uncompressed ``.npz`` (numeric and fixed-width string arrays only; readable with ``allow_pickle=False``).
    ``examples``: optional per-example columns [M] (e.g. ``{"sha1": [M] str, "label": [M] int}``), stored
    as ``example_<name>``. Written to a temporary name beside ``path`` and moved into place."""
    in_mask = np.asarray(in_mask, dtype=bool)
    arrays: Dict[str, np.ndarray] = {}
    for name, arr in (examples or {}).items():
        arr = np.asarray(arr)
        if arr.dtype == object:
            arr = arr.astype(str)
        if arr.shape != in_mask.shape[1:]:
            raise ValueError(f"example column {name!r} has shape {arr.shape}; expected [{in_mask.shape[1]}]")
        arrays[f"example_{name}"] = arr
    for name, arr in signals.items():
        arr = np.asarray(arr)
        if arr.dtype == object:
            raise ValueError(f"signal {name!r} must be numeric")
        if arr.shape[:2] != in_mask.shape:
            raise ValueError(f"signal {name!r} has shape {arr.shape}; its first axes must be in_mask's {in_mask.shape}")
        arrays[f"signal_{name}"] = arr
    arrays["in_mask"] = in_mask
    arrays["metadata_json"] = np.array(json.dumps(dict(metadata or {}), sort_keys=True, allow_nan=False))
    io.save_npz(path, arrays)


def load_reference_signals(path: str) -> Tuple[Dict[str, np.ndarray], np.ndarray, Dict[str, Any]]:
    """Reads a file written by :func:`save_reference_signals`: ``(signals, in_mask, metadata)``."""
    refs = load_reference_file(path)
    return {"logits": refs.logits, **refs.extra_signals}, refs.in_mask, refs.metadata


def load_reference_file(path: str) -> "ReferenceSignals":
    """Reads a file written by :func:`save_reference_signals` (with its per-example columns, if any)."""
    data = io.load_npz(path)
    if "in_mask" not in data or "metadata_json" not in data:
        raise ValueError(f"{path}: not a reference-signals file (needs in_mask and metadata_json)")
    signals = {n[len("signal_"):]: data[n] for n in data if n.startswith("signal_")}
    in_mask = data["in_mask"].astype(bool)
    metadata = json.loads(str(data["metadata_json"]))
    examples = {n[len("example_"):]: data[n] for n in data if n.startswith("example_")}
    if metadata.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {metadata.get('format_version')!r}")
    if "logits" not in signals:
        raise ValueError(f"{path}: no signal_logits array (the reference models' logits)")
    return ReferenceSignals(signals["logits"], in_mask, examples=examples, metadata=metadata,
                            extra_signals={k: v for k, v in signals.items() if k != "logits"})


# ---------------------------------------------------------------------------------------------------------
# Reference signals as attack inputs; attack names and options
# ---------------------------------------------------------------------------------------------------------

#: Attack names with reference models, as the evaluator and ``privacy-audit attack`` accept them:
#: name -> (attack of :func:`score_with_references`, online).
REFERENCE_ATTACKS: Dict[str, Tuple[str, bool]] = {
    "lira": ("lira", True), "lira_offline": ("lira", False),
    "rmia": ("rmia", True), "rmia_offline": ("rmia", False)}
#: Options of each attack family (keys of ``options[family]``); see :func:`resolve_attack_options`.
ATTACK_OPTIONS = {"lira": ("fixed_variance", "ddof", "min_std"), "rmia": ("gamma", "offline_a")}
#: LiRA's per-example variance needs many references: below this many reference models the global
#: ("fixed") variance is used when ``fixed_variance`` is "auto" (Carlini et al. 2022 use the fixed variance
#: below 64 shadow models, i.e. below 32 IN and 32 OUT per example).
FIXED_VARIANCE_BELOW = 64


def check_reference_options(options: Optional[Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Validated ``{"lira": {...}, "rmia": {...}}`` options (unknown keys name the valid ones)."""
    out: Dict[str, Dict[str, Any]] = {}
    for family, opts in (options or {}).items():
        if family not in ATTACK_OPTIONS:
            raise ValueError(f"reference attack options: unknown attack {family!r}; "
                             f"options are for {sorted(ATTACK_OPTIONS)}")
        if not isinstance(opts, Mapping):
            raise ValueError(f"reference attack options for {family!r} must be an object, got {opts!r}")
        bad = sorted(set(opts) - set(ATTACK_OPTIONS[family]))
        if bad:
            raise ValueError(f"reference attack options: unknown option(s) {bad} for {family}; "
                             f"valid: {list(ATTACK_OPTIONS[family])}")
        fv = opts.get("fixed_variance", "auto")
        if not (isinstance(fv, bool) or fv == "auto"):
            raise ValueError(f"lira fixed_variance must be true, false or \"auto\", got {fv!r}")
        for key in ("gamma", "min_std"):
            if key in opts and not (isinstance(opts[key], (int, float)) and opts[key] > 0):
                raise ValueError(f"{family} {key} must be a number > 0, got {opts[key]!r}")
        if "offline_a" in opts and not (isinstance(opts["offline_a"], (int, float)) and 0 <= opts["offline_a"] <= 1):
            raise ValueError(f"rmia offline_a must be in [0, 1], got {opts['offline_a']!r}")
        if "ddof" in opts and opts["ddof"] not in (0, 1):
            raise ValueError(f"lira ddof must be 0 or 1, got {opts['ddof']!r}")
        out[family] = dict(opts)
    return out


def resolve_attack_options(name: str, k: int, options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The keyword arguments of :func:`score_with_references` for attack ``name`` (a key of
    :data:`REFERENCE_ATTACKS`) with K reference models: ``attack``, ``online``, and for LiRA
    ``fixed_variance`` (default "auto": True when K < :data:`FIXED_VARIANCE_BELOW`), for RMIA ``gamma`` and
    ``offline_a`` (defaults of :func:`strong_attacks.rmia_scores`)."""
    if name not in REFERENCE_ATTACKS:
        raise ValueError(f"unknown reference attack {name!r}; choose from {', '.join(REFERENCE_ATTACKS)}")
    attack, online = REFERENCE_ATTACKS[name]
    opts = dict(check_reference_options(options).get(attack, {}))
    out: Dict[str, Any] = {"attack": attack, "online": online}
    if attack == "lira":
        fv = opts.pop("fixed_variance", "auto")
        out["fixed_variance"] = bool(k < FIXED_VARIANCE_BELOW) if fv == "auto" else bool(fv)
    else:
        out.update(gamma=1.0, offline_a=0.3)
    out.update(opts)
    return out


@dataclasses.dataclass
class ReferenceSignals:
    """The reference models' outputs on a population of M examples.

    Attributes:
      logits: [K, M, C] float logits of the K reference models (or [K, M] for single-logit binary models).
      in_mask: [K, M] bool, True where example i was in reference model k's training set.
      examples: per-example columns [M] (e.g. ``sha1``: the hex sha1 of each serialized tf.Example).
      metadata: the training record (recipe, seed, K, ...).
      extra_signals: other [K, M, ...] arrays stored beside the logits.
    """
    logits: np.ndarray
    in_mask: np.ndarray
    examples: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)
    extra_signals: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.logits = np.asarray(self.logits)
        mask = np.asarray(self.in_mask)
        if self.logits.dtype == object or not np.issubdtype(self.logits.dtype, np.number):
            raise ValueError(f"ref_logits must be numeric, got dtype {self.logits.dtype}")
        if self.logits.ndim not in (2, 3) or self.logits.shape[0] < 1:
            raise ValueError(f"ref_logits must have shape [K, M, C] (K >= 1 reference models), got "
                             f"{list(self.logits.shape)}")
        if mask.shape != self.logits.shape[:2]:
            raise ValueError(f"ref_in_mask must have shape [K, M] = {list(self.logits.shape[:2])} like ref_logits, "
                             f"got {list(mask.shape)}")
        if mask.dtype != np.bool_:
            if not np.all(np.isin(mask, (0, 1))):
                raise ValueError("ref_in_mask must be boolean (or 0/1)")
            mask = mask.astype(bool)
        self.in_mask = mask
        if not np.all(np.isfinite(self.logits)):
            raise ValueError(f"ref_logits contain {int((~np.isfinite(self.logits)).sum())} non-finite values")
        for name, col in self.examples.items():
            if np.shape(col) != (self.m,):
                raise ValueError(f"reference example column {name!r} must have shape [{self.m}], got {np.shape(col)}")

    @property
    def k(self) -> int:
        return int(self.logits.shape[0])

    @property
    def m(self) -> int:
        return int(self.logits.shape[1])

    def take(self, idx: np.ndarray) -> "ReferenceSignals":
        """The columns ``idx`` (population order of the audit), every per-example column with them."""
        idx = np.asarray(idx)
        return ReferenceSignals(self.logits[:, idx], self.in_mask[:, idx],
                                {k: v[idx] for k, v in self.examples.items()}, dict(self.metadata),
                                {k: v[:, idx] for k, v in self.extra_signals.items()})

    def align(self, example_ids: Sequence[str], column: str = "sha1") -> "ReferenceSignals":
        """The columns for ``example_ids`` in their order (matched on the per-example column ``column``,
        e.g. the sha1 of each serialized example). ValueError naming how many are missing."""
        if column not in self.examples:
            raise ValueError(f"the reference signals have no per-example {column!r} column to align on")
        position = {str(v): i for i, v in enumerate(self.examples[column].tolist())}
        idx = np.fromiter((position.get(str(e), -1) for e in example_ids), dtype=np.int64, count=len(example_ids))
        missing = int((idx < 0).sum())
        if missing:
            raise ValueError(f"{missing} of {len(idx)} audited examples are not in the reference models' population "
                             "(the references were trained on other examples: retrain them on these Examples)")
        return self.take(idx)

    def summary(self) -> Dict[str, Any]:
        """JSON-ready description for results metadata."""
        return {"k": self.k, "m": self.m, "in_per_example_min": int(self.in_mask.sum(axis=0).min()),
                "in_per_example_max": int(self.in_mask.sum(axis=0).max()),
                **{key: self.metadata[key] for key in ("seed", "fraction", "recipe", "init")
                   if key in self.metadata}}


def reference_attack_scores(name: str, target_logits, labels, references: ReferenceSignals,
                            options: Optional[Mapping[str, Any]] = None) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Scores of reference attack ``name`` (:data:`REFERENCE_ATTACKS`) on the references' population, in
    its order: ``target_logits`` [M, C] and ``labels`` [M] of the same examples. Returns ``(scores [M],
    the resolved options)``."""
    opts = resolve_attack_options(name, references.k, options)
    kwargs = {k: v for k, v in opts.items() if k != "attack"}
    if opts["attack"] == "rmia":
        kwargs.pop("fixed_variance", None)
    scores = score_with_references(target_logits, labels, references.logits, references.in_mask, opts["attack"],
                                   **kwargs)
    return scores, opts


# ---------------------------------------------------------------------------------------------------------
# Results entries
# ---------------------------------------------------------------------------------------------------------

def reference_attack_results(target_logits, labels, is_member, ref_logits, in_mask,
                             attacks: Sequence[str] = ATTACKS, *, by_class: bool = False,
                             min_slice_size: int = 20, attack_options: Optional[Mapping[str, Mapping]] = None,
                             **metric_kwargs) -> List[Dict[str, Any]]:
    """Entries of the attack results JSON for LiRA / RMIA on the population.

    Args:
      target_logits [M, C], labels [M], ref_logits [K, M, C], in_mask [K, M]: as
        :func:`score_with_references`.
      is_member: [M] bool, the ground truth (the target's training set); used only to measure.
      attacks: any of "lira", "rmia".
      by_class: also one entry per true class with at least ``min_slice_size`` members and non-members
        (scores are computed once on the whole population and restricted to the slice).
      attack_options: per attack, keyword arguments of :func:`score_with_references`
        (e.g. {"lira": {"online": False}}).
      metric_kwargs: passed to :func:`metrics.attack_metrics` (delta, confidence, fpr_targets, ...).
    Returns: a list of ``{"slice": ..., "attack": name, **attack_metrics(...)}``; the attack name gets
    the suffix "_offline" for an offline variant.
    """
    from privacy_audit.components.membership_inference.metrics import attack_metrics

    is_member = np.asarray(is_member).astype(bool)
    labels = np.asarray(labels)
    out: List[Dict[str, Any]] = []
    for attack in attacks:
        opts = dict((attack_options or {}).get(attack, {}))
        scores = score_with_references(target_logits, labels, ref_logits, in_mask, attack, **opts)
        name = attack if opts.get("online", True) else f"{attack}_offline"
        slices: List[Tuple[Dict[str, Any], np.ndarray]] = [({"feature": "entire_dataset"},
                                                            np.ones(len(labels), dtype=bool))]
        if by_class:
            for c in np.unique(labels):
                sel = labels == c
                if min(int((sel & is_member).sum()), int((sel & ~is_member).sum())) >= min_slice_size:
                    slices.append(({"feature": "class", "value": int(c)}, sel))
        for spec, sel in slices:
            entry: Dict[str, Any] = {"slice": spec, "attack": name}
            entry.update(attack_metrics(scores[sel], is_member[sel], **metric_kwargs))
            out.append(entry)
    return out
