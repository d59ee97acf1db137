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
:func:`components.dp_trainer.training.fit` (``fit_with="dp_trainer"``, required when ``private``).
``"auto"`` uses the DP loop for private recipes and Keras otherwise; pass ``"dp_trainer"`` for a
non-private target trained by the DPTrainer component (Poisson batches), to match its recipe exactly.

Parallelism. ``n_jobs > 1`` trains models in separate processes (``spawn``; each worker imports
TensorFlow once and limits itself to cpu_count / n_jobs threads). Measured with
``benchmarks/reference_models_cost.py --compare-n-jobs`` (digits, built-in MLP, 30 epochs, 2 cores): with
K = 4 the references took 14.6 s with n_jobs=1 and 17.8 s with n_jobs=2; with K = 8, 37.5 s and 38.8 s.
Each worker pays several seconds to import TensorFlow, and a one-thread worker trains a model slower than
the main process with two threads, so on 2 cores processes do not pay for Keras models of this size:
the default is ``n_jobs=1`` (no subprocesses). Process-level parallelism is meant for machines with many
cores (and K large enough to amortise the start-up); large audits should rather spread reference models
over a distributed runner, one element per model with :func:`train_reference_model` (same design and
seeds), and write the stacked matrix with :func:`save_reference_signals`.
With ``n_jobs > 1``, ``build_model_fn`` must be importable (a module-level function): it is sent to the
workers by reference.

Scoring: :func:`score_with_references` (defined in :mod:`strong_attacks`, re-exported here) and
:func:`reference_attack_results`, which turns scores into entries of the attack results JSON.
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

from components.membership_inference.strong_attacks import ATTACKS, score_with_references

__all__ = ["inclusion_matrix", "TrainingRecipe", "train_reference_models", "train_reference_model",
           "save_reference_signals", "load_reference_signals", "score_with_references",
           "reference_attack_results"]

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
        from components.dp_trainer import training

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
                           n_jobs: int = 1, cache_path: Optional[str] = None, verbose: bool = False
                           ) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Trains K reference models on balanced random halves of the population; returns their logits.

    Args:
      build_model_fn: ``() -> keras.Model`` (uncompiled, outputs logits [batch, C]); called once per model
        after ``keras.utils.set_random_seed`` with that model's seed. Module-level when ``n_jobs > 1``.
      x_population: [M, ...] float inputs of every audited example (target members and non-members).
      y_population: [M] integer labels.
      k: number of reference models.
      epochs, batch_size, learning_rate, optimizer ("adam" | "sgd"): the target's recipe.
      private, l2_norm_clip, noise_multiplier, sampling: DP-SGD settings of the recipe (private
        references are trained with :func:`components.dp_trainer.training.fit`).
      fit_with: "auto" | "keras" | "dp_trainer" (see module doc).
      seed: seeds the inclusion design and every model (initialisation, batches, noise).
      fraction: share of the population each example-model pair includes (default one half).
      n_jobs: worker processes (1: train in this process; -1: one per CPU core).
      cache_path: ``.npz`` file: reused when its fingerprint matches, written after training otherwise.
      verbose: print one line per model.
    Returns:
      ``(signals, in_mask)``: ``signals["logits"]`` float32 [K, M, C], ``in_mask`` bool [K, M].
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
        if os.path.exists(cache_path):
            signals, cached_mask, cached_md = load_reference_signals(cache_path)
            same = all(cached_md.get(key) == metadata[key] for key in
                       ("format_version", "k", "m", "seed", "fraction", "recipe", "population_fingerprint",
                        "architecture_fingerprint"))
            if same and np.array_equal(cached_mask, in_mask):
                if verbose:
                    print(f"reference models: reusing {cache_path}", flush=True)
                return signals, cached_mask
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
    return signals, in_mask


# ---------------------------------------------------------------------------------------------------------
# Storage (.npz, no pickle)
# ---------------------------------------------------------------------------------------------------------

def save_reference_signals(path: str, signals: Mapping[str, np.ndarray], in_mask: np.ndarray,
                           metadata: Optional[Mapping[str, Any]] = None) -> None:
    """Writes ``signals`` (e.g. {"logits": [K, M, C]}), ``in_mask`` [K, M] and JSON ``metadata`` to one
    uncompressed ``.npz`` (numeric arrays and one string; readable with ``allow_pickle=False``).
    Written to a temporary name beside ``path`` and moved into place."""
    in_mask = np.asarray(in_mask, dtype=bool)
    arrays: Dict[str, np.ndarray] = {}
    for name, arr in signals.items():
        arr = np.asarray(arr)
        if arr.dtype == object:
            raise ValueError(f"signal {name!r} must be numeric")
        if arr.shape[:2] != in_mask.shape:
            raise ValueError(f"signal {name!r} has shape {arr.shape}; its first axes must be in_mask's {in_mask.shape}")
        arrays[f"signal_{name}"] = arr
    arrays["in_mask"] = in_mask
    arrays["metadata_json"] = np.array(json.dumps(dict(metadata or {}), sort_keys=True, allow_nan=False))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_reference_signals(path: str) -> Tuple[Dict[str, np.ndarray], np.ndarray, Dict[str, Any]]:
    """Reads a file written by :func:`save_reference_signals`: ``(signals, in_mask, metadata)``."""
    with np.load(path, allow_pickle=False) as data:
        names = set(data.files)
        if "in_mask" not in names or "metadata_json" not in names:
            raise ValueError(f"{path}: not a reference-signals file (needs in_mask and metadata_json)")
        signals = {n[len("signal_"):]: data[n] for n in data.files if n.startswith("signal_")}
        in_mask = data["in_mask"].astype(bool)
        metadata = json.loads(str(data["metadata_json"]))
    if metadata.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {metadata.get('format_version')!r}")
    return signals, in_mask, metadata


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
    from components.membership_inference.metrics import attack_metrics

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
