"""Training the K reference models with the target's recipe (the ReferenceModelTrainer component's library).

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
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from privacy_audit.components.common import io
from privacy_audit.components.common.inference import predict_fixed_batches
from privacy_audit.components.common.optimizers import recipe_optimizer
from privacy_audit.components.common.recipe import TrainingRecipe
from privacy_audit.components.reference_models.design import (
    INIT_MODES, architecture_fingerprint, auto_n_jobs, inclusion_matrix, model_seeds, population_fingerprint,
    subset_fraction)
from privacy_audit.components.reference_models.signals import (
    FORMAT_VERSION, ReferenceSignals, load_reference_signals, parquet_beside, save_reference_signals, sha1_to_id,
    write_signals_parquet)


FIT_BACKENDS = ("auto", "keras", "dp_trainer")


def fit_backend(recipe: TrainingRecipe, fit_with: str = "auto") -> str:
    """The training loop of a reference model: "keras" (``fit``) or "dp_trainer" (the project's DP-SGD loop,
    required when the recipe is private); ``"auto"``: the DP loop for private recipes, Keras otherwise."""
    if fit_with not in FIT_BACKENDS:
        raise ValueError(f"fit_with must be one of {FIT_BACKENDS}, got {fit_with!r}")
    if recipe.private and fit_with == "keras":
        raise ValueError("a private recipe needs fit_with='dp_trainer' (or 'auto'): Keras fit does not "
                         "clip per-example gradients or add noise")
    if fit_with != "auto":
        return fit_with
    return "dp_trainer" if recipe.private else "keras"


def fit_record(recipe: TrainingRecipe, fit_with: str = "auto") -> Dict[str, Any]:
    """What the reference models were trained with (stored with the signals; compared for reuse and with the
    target's ledger): the recipe's optimisation and privacy fields, the loop's ``fit_with`` and ``backend``."""
    return {"epochs": recipe.epochs, "batch_size": recipe.batch_size, "learning_rate": recipe.learning_rate,
            "optimizer": recipe.optimizer, "private": recipe.private,
            "l2_norm_clip": recipe.l2_norm_clip if recipe.private else None,
            "noise_multiplier": recipe.noise_multiplier if recipe.private else None, "sampling": recipe.sampling,
            "fit_with": fit_with, "backend": fit_backend(recipe, fit_with)}


def train_one(build_model_fn: Callable[[], Any], x_train: np.ndarray, y_train: np.ndarray,
              x_eval: np.ndarray, recipe: TrainingRecipe, seed: int, predict_batch_size: int = 1024,
              fit_with: str = "auto") -> np.ndarray:
    """Builds a model (Keras global seed = ``seed`` before ``build_model_fn()``), trains it per ``recipe``
    on (x_train, y_train) and returns its float32 logits on ``x_eval`` [len(x_eval), C]."""
    import keras

    keras.utils.set_random_seed(int(seed))
    model = build_model_fn()
    steps_per_epoch = math.ceil(len(y_train) / min(recipe.batch_size, len(y_train)))
    if fit_backend(recipe, fit_with) == "keras":
        model.compile(optimizer=recipe_optimizer(recipe, steps_per_epoch),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x_train, y_train, epochs=int(recipe.epochs), batch_size=int(min(recipe.batch_size, len(y_train))),
                  shuffle=True, verbose=0)
    else:
        from privacy_audit.components.dp_trainer import training
        from privacy_audit.components.dp_trainer.trainer import fit_adaptive_kwargs

        training.fit(model, x_train, y_train, epochs=int(recipe.epochs),
                     expected_batch_size=int(min(recipe.batch_size, len(y_train))),
                     optimizer=recipe_optimizer(recipe, steps_per_epoch),
                     l2_norm_clip=recipe.l2_norm_clip if recipe.private else None,
                     noise_multiplier=float(recipe.noise_multiplier or 0.0) if recipe.private else 0.0,
                     private=recipe.private, sampling=recipe.sampling, seed=int(seed) % (2 ** 31),
                     verbose=False, **fit_adaptive_kwargs(recipe))
    # Direct calls in chunks: Model.predict re-traces a function for every new model (K warnings).
    return predict_fixed_batches(model, x_eval, predict_batch_size, pad=False, dtype=np.float32)


def train_reference_model(index: int, build_model_fn: Callable[[], Any], x_population, y_population,
                          recipe: TrainingRecipe, *, k: int, seed: int = 0, fraction: float = 0.5,
                          fit_with: str = "auto") -> np.ndarray:
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
    return train_one(build_model_fn, x[row], y[row], x, recipe, model_seeds(seed, k)[index], fit_with=fit_with)


def _worker_init(threads: int) -> None:
    # Runs in a fresh (spawned) process before any TensorFlow op: one share of the cores per worker.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def _worker_train(args) -> Tuple[int, np.ndarray, float]:
    index, build_model_fn, x_train, y_train, x_eval, recipe, seed, fit_with = args
    t0 = time.perf_counter()
    logits = train_one(build_model_fn, x_train, y_train, x_eval, recipe, seed, fit_with=fit_with)
    return index, logits, time.perf_counter() - t0


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
                            noise_multiplier=noise_multiplier, sampling=sampling).validate()
    record = fit_record(recipe, fit_with)
    in_mask = inclusion_matrix(k, m, seed, fraction)
    if (in_mask.sum(axis=1) == 0).any():
        raise ValueError("a reference model would train on no example: the population is too small")

    metadata = {"format_version": FORMAT_VERSION, "k": int(k), "m": int(m), "seed": int(seed),
                "fraction": float(fraction), "recipe": record,
                "population_fingerprint": population_fingerprint(x, y),
                "build_model_fn": f"{getattr(build_model_fn, '__module__', '?')}."
                                  f"{getattr(build_model_fn, '__qualname__', repr(build_model_fn))}"}
    if cache_path is not None:
        metadata["architecture_fingerprint"] = architecture_fingerprint(build_model_fn)
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

    seeds = model_seeds(seed, k)
    tasks = [(i, build_model_fn, x[in_mask[i]], y[in_mask[i]], x, recipe, seeds[i], fit_with)
             for i in range(k)]
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


def train_for_trainer_recipe(output_path: str, recipe: Any, *, x_members: np.ndarray, y_members: np.ndarray,
                             x_nonmembers: np.ndarray, y_nonmembers: np.ndarray, sha1_members: Sequence[str],
                             sha1_nonmembers: Sequence[str], input_features: Sequence[str], k: int = 4,
                             seed: int = 0, init: str = "target", fraction: Optional[float] = None, n_jobs: int = 1,
                             split_names: Tuple[str, str] = ("train", "eval"), model_variant: str = "model",
                             verbose: bool = True) -> ReferenceSignals:
    """Trains K reference models with a DPTrainer recipe on balanced random subsets of the population (the
    target's members then its non-members) and writes ``output_path`` (:func:`save_reference_signals`:
    logits [K, M, C], in_mask [K, M], per-example ``sha1``, ``id``, ``label``, ``split``, and the record).

    Args:
      recipe: the target's :class:`privacy_audit.components.common.recipe.TrainingRecipe`. It is resolved
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
      model_variant: the target variant's name (recorded, and in the progress lines).
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
    recipe.validate(n_examples=n_target)
    sampler_cls = sampling.PoissonSampler if recipe.sampling == "poisson" else sampling.ShuffleSampler
    steps_per_epoch = sampler_cls(n_target, recipe.batch_size, seed=recipe.seed).steps_per_epoch
    noise_multiplier, delta = trainer.resolve_noise(recipe, n_target, steps_per_epoch)
    hparams = trainer.model_hparams(recipe, x_members, num_classes, list(input_features))
    builder = ModelBuilder(hparams, recipe.module_file, recipe.model_fn, recipe.builtin_model, init)
    x = np.concatenate([np.asarray(x_members, np.float32), np.asarray(x_nonmembers, np.float32)])
    y = np.concatenate([y_members, y_nonmembers])
    wanted, fraction = subset_fraction(n_target, len(y), k, fraction)
    if verbose and abs(fraction - wanted) > 1e-12:
        print(f"[{model_variant}] reference subsets of {fraction:.3g} of the population instead of "
              f"{wanted:.3g}, so that every example has an IN and an OUT model among the {k}", flush=True)
    sha1 = np.asarray(list(sha1_members) + list(sha1_nonmembers))
    if len(np.unique(sha1)) != len(sha1):
        raise ValueError(f"{len(sha1) - len(np.unique(sha1))} examples appear twice in the population (same "
                         "serialized example): their reference inclusion would be ambiguous; deduplicate the splits")
    if verbose:
        mode = (f"DP-{recipe.optimizer.upper()} σ={noise_multiplier:.4g}, C={recipe.l2_norm_clip}"
                if recipe.private else "non-private")
        print(f"[{model_variant}] training {k} reference models, each on a random {fraction:.0%} of "
              f"{len(y)} examples ({n_target} members + {len(y_nonmembers)} non-members), {recipe.epochs} epochs, "
              f"{mode}, init={init}", flush=True)
    signals, in_mask, metadata = train_reference_models(
        builder, x, y, k=k, epochs=recipe.epochs, batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate, seed=seed, private=recipe.private, l2_norm_clip=recipe.l2_norm_clip,
        noise_multiplier=noise_multiplier, optimizer=recipe.optimizer, sampling=recipe.sampling,
        fit_with="dp_trainer", fraction=fraction, n_jobs=n_jobs or auto_n_jobs(k), verbose=verbose,
        return_metadata=True)
    metadata.update({
        "init": init, "fraction_wanted": wanted, "target_model_variant": model_variant,
        "target_n_examples": n_target,
        "target_seed": int(recipe.seed), "target_recipe": recipe.to_dict(), "num_classes": num_classes,
        "input_features": list(input_features),
        "noise_multiplier": noise_multiplier, "delta": delta, "hparams": hparams,
        "model": recipe.module_file or recipe.builtin_model, "model_fn": recipe.model_fn,
        "split_names": list(split_names)})
    split = np.asarray([split_names[0]] * n_target + [split_names[1]] * len(y_nonmembers))
    examples = {"sha1": sha1, "id": sha1_to_id(sha1), "label": y, "split": split}
    save_reference_signals(output_path, signals, in_mask, metadata, examples)
    # The per-example signals keyed by id, which the evaluator's Beam pipeline joins with the target's records.
    write_signals_parquet(parquet_beside(output_path), signals["logits"], in_mask, examples["id"], y, metadata)
    return ReferenceSignals(signals["logits"], in_mask, examples=examples, metadata=metadata)


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
    from privacy_audit.components.membership_inference import serving_model as sm  # reads the references' signatures

    # A canonical order (by example digest): ExampleGen's shard order changes between runs, the design must not.
    members, nonmembers = (sorted(side, key=lambda r: sm.example_columns([r], label_key).example_hashes[0])
                           for side in (members, nonmembers))
    population = list(members) + list(nonmembers)
    cols = sm.example_columns(population, label_key)
    sha1 = np.asarray(cols.example_hashes)
    if len(np.unique(sha1)) != len(sha1):
        raise ValueError(f"{len(sha1) - len(np.unique(sha1))} examples appear twice in the population (same "
                         "serialized example): their reference inclusion would be ambiguous; deduplicate the splits")
    wanted, used = subset_fraction(len(members), len(population), k, fraction)
    in_mask = inclusion_matrix(k, len(population), seed=seed, fraction=used)
    trained_on = transform(population) if transform is not None else population
    seeds = model_seeds(seed, k)
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
    write_signals_parquet(parquet_beside(output_path), stacked, in_mask, examples["id"], cols.y, md)
    return ReferenceSignals(stacked, in_mask, examples=examples, metadata=md)
