"""Cost of K reference models (LiRA / RMIA) against one training run, on the digits data.

    .venv/bin/python benchmarks/reference_models_cost.py [--k 4] [--n-jobs 1] [--compare-n-jobs] [--private]
    .venv/bin/python benchmarks/reference_models_cost.py --pipeline-variant non_private [--k 4]

``--pipeline-variant NAME`` measures what the pipeline's ReferenceModelTrainer does for a variant of the
default demo (pipelines.pipeline.default_variants; the demo's members fraction): the median of
``--target-runs`` training runs of the target with the DPTrainer's recipe and training loop, then
``reference_models.train_for_trainer_recipe`` (K models, each on a random subset as large as the target's
training set). Without it:

Workload: scikit-learn's digits (1797 8x8 images, 10 classes, pixels scaled to [0, 1]); the target is the
project's built-in MLP (64-128-128-10) trained on a seeded random half of the data (its members; the other
half are non-members) with Adam (``--learning-rate``, default 1e-3), batch 64, ``--epochs`` epochs; plain
Keras ``fit``, or the project's DP-SGD loop with ``--private`` (σ = 1.0, C = 1.0, Poisson batches).
One training run = building the target, training it and computing its logits on the 1797 examples.
The references: :func:`reference_models.train_reference_models` with the same recipe on balanced random
halves of the 1797 examples (so each reference trains on as many examples as the target), plus LiRA and
RMIA scoring. A warm-up fit of one epoch runs first, untimed, so that TensorFlow's one-time start-up is
charged to neither side. ``--compare-n-jobs`` also times the references with 2 worker processes.

Prints wall times and the attacks' AUCs; the last line is ``ref_cost_over_one_run=<ratio>`` (the
references' wall time at ``--n-jobs`` over the one training run's).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def build_mlp():
    """The project's built-in MLP for the digits' 64 features and 10 classes (module level: picklable)."""
    from privacy_audit.components.dp_trainer.models import mlp

    return mlp(64, 10)


def load_population():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    member = np.random.default_rng(0).random(len(y)) < 0.5
    return x, y, member


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=4, help="number of reference models")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--n-jobs", type=int, default=1, help="worker processes for the references")
    parser.add_argument("--compare-n-jobs", action="store_true", help="also time the references with n_jobs=2")
    parser.add_argument("--private", action="store_true", help="DP-SGD recipe (sigma 1.0, clip 1.0)")
    parser.add_argument("--target-runs", type=int, default=3,
                        help="--pipeline-variant: time the target's run this many times (median)")
    parser.add_argument("--pipeline-variant", help="a default demo variant (non_private, dp_eps1): the "
                                                   "ReferenceModelTrainer's path with that variant's recipe")
    args = parser.parse_args(argv)
    if args.pipeline_variant:
        return pipeline_variant(args)

    import keras

    from privacy_audit.components import reference_models as rm
    from privacy_audit.components.membership_inference import attacks as sa
    from privacy_audit.components.membership_inference.metrics import attack_metrics

    x, y, member = load_population()
    recipe = rm.TrainingRecipe(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                               private=args.private, noise_multiplier=1.0 if args.private else None,
                               l2_norm_clip=1.0)
    backend = rm.training.fit_backend(recipe)
    print(f"digits: {len(y)} examples, target members {int(member.sum())}; model mlp 64-128-128-10; "
          f"{args.epochs} epochs, batch {args.batch_size}, lr {args.learning_rate}, "
          f"{'DP-SGD sigma=1.0 C=1.0' if args.private else 'non-private'} ({backend}); "
          f"{os.cpu_count()} CPU cores", flush=True)

    # Warm-up (untimed): TensorFlow start-up, first tracing.
    rm.train_one(build_mlp, x[:256], y[:256], x[:8], rm.TrainingRecipe(
        epochs=1, batch_size=args.batch_size, learning_rate=args.learning_rate, private=args.private,
        noise_multiplier=1.0 if args.private else None), seed=99)

    t0 = time.perf_counter()
    target_logits = rm.train_one(build_mlp, x[member], y[member], x, recipe, seed=12345)
    one_run = time.perf_counter() - t0
    print(f"one training run (target): {one_run:.2f}s", flush=True)

    def references(n_jobs: int):
        t = time.perf_counter()
        signals, mask = rm.train_reference_models(
            build_mlp, x, y, k=args.k, epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.learning_rate, seed=0, private=args.private,
            noise_multiplier=1.0 if args.private else None, l2_norm_clip=1.0, n_jobs=n_jobs, verbose=True)
        scores = {name: sa.score_with_references(target_logits, y, signals["logits"], mask, name)
                  for name in ("lira", "rmia")}
        scores["lira_fixed_variance"] = sa.score_with_references(target_logits, y, signals["logits"], mask,
                                                                 "lira", fixed_variance=True)
        return time.perf_counter() - t, scores

    ref_seconds, scores = references(args.n_jobs)
    print(f"{args.k} reference models + LiRA/RMIA scoring, n_jobs={args.n_jobs}: {ref_seconds:.2f}s "
          f"({ref_seconds / args.k:.2f}s per model)", flush=True)
    if args.compare_n_jobs:
        other = 2 if args.n_jobs == 1 else 1
        other_seconds, _ = references(other)
        print(f"{args.k} reference models + scoring, n_jobs={other}: {other_seconds:.2f}s "
              f"(n_jobs={other} / n_jobs={args.n_jobs}: {other_seconds / ref_seconds:.2f})", flush=True)

    # p_y ranks examples exactly as minus the loss: the threshold attack's AUC.
    loss_auc = attack_metrics(sa.true_class_probability(target_logits, y), member)["auc"]
    print(f"AUC: threshold (loss) {loss_auc:.4f}, "
          f"LiRA (online, K={args.k}) {attack_metrics(scores['lira'], member)['auc']:.4f}, "
          f"LiRA fixed variance {attack_metrics(scores['lira_fixed_variance'], member)['auc']:.4f}, "
          f"RMIA (online, K={args.k}) {attack_metrics(scores['rmia'], member)['auc']:.4f}")
    print(f"one_run_seconds={one_run:.3f}")
    print(f"references_seconds={ref_seconds:.3f}")
    print(f"ref_cost_over_one_run={ref_seconds / one_run:.3f}")
    keras.backend.clear_session()
    return 0


def pipeline_variant(args) -> int:
    """K references of a demo variant through the ReferenceModelTrainer's library, against one target run."""
    import tempfile

    import keras

    from privacy_audit.components.dp_trainer import sampling, trainer
    from privacy_audit.components import reference_models as rm
    from privacy_audit.components.membership_inference import attacks as sa
    from privacy_audit.components.membership_inference.metrics import attack_metrics
    from privacy_audit.pipelines import run
    from privacy_audit.pipelines.pipeline import default_variants

    spec = {v.name: v for v in default_variants()}.get(args.pipeline_variant)
    if spec is None:
        raise SystemExit(f"--pipeline-variant must be one of {[v.name for v in default_variants()]}")
    x, y, _ = load_population()
    fraction = run.DEFAULTS["members_fraction"]
    member = np.random.default_rng(0).random(len(y)) < fraction
    config = spec.recipe.replace(checkpoint_every=0)
    n = int(member.sum())
    steps = sampling.PoissonSampler(n, config.batch_size, seed=0).steps_per_epoch
    sigma, _ = trainer.resolve_noise(config, n, steps)
    recipe = config.replace(noise_multiplier=sigma, target_epsilon=None)
    builder = rm.ModelBuilder(trainer.model_hparams(config, x, 10), builtin=config.builtin_model)
    print(f"digits: {len(y)} examples, target members {n} (fraction {fraction}); variant {spec.name}: "
          f"{config.builtin_model} {config.hparams}, {config.epochs} epochs, batch {config.batch_size}, "
          f"lr {config.learning_rate}, {'DP σ=%.3g' % sigma if config.private else 'non-private'}; "
          f"{os.cpu_count()} CPU cores", flush=True)
    rm.train_one(builder, x[:256], y[:256], x[:8], recipe.replace(epochs=1), seed=99, fit_with="dp_trainer")  # warm-up
    # The target's run is timed --target-runs times (the median is the denominator): one run on a shared
    # 2-core machine varies by 2x, and a single noisy denominator made the ratio swing from 1.8 to 6.
    runs = []
    for r in range(args.target_runs):
        t0 = time.perf_counter()
        target = rm.train_one(builder, x[member], y[member], x, recipe, seed=0, fit_with="dp_trainer")
        runs.append(time.perf_counter() - t0)
    one_run = float(np.median(runs))
    print(f"one training run (target): median {one_run:.2f}s of {', '.join(f'{t:.2f}' for t in runs)}s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        refs = rm.train_for_trainer_recipe(
            os.path.join(tmp, "refs.npz"), config, model_variant=spec.name, x_members=x[member], y_members=y[member], x_nonmembers=x[~member],
            y_nonmembers=y[~member], sha1_members=[f"{i:040x}" for i in np.flatnonzero(member)],
            sha1_nonmembers=[f"{i:040x}" for i in np.flatnonzero(~member)], input_features=[], k=args.k,
            n_jobs=args.n_jobs, verbose=True)
        ref_seconds = time.perf_counter() - t
    order = np.concatenate([np.flatnonzero(member), np.flatnonzero(~member)])
    is_member = np.arange(len(y)) < n
    aucs = {name: attack_metrics(sa.reference_attack_scores(name, target[order], y[order], refs)[0], is_member)
            for name in ("lira", "lira_offline", "rmia")}
    # p_y ranks examples exactly as minus the loss: the threshold attack.
    loss = attack_metrics(sa.true_class_probability(target[order], y[order]), is_member)
    print("threshold: auc {:.4f} tpr@1% {:.4f}; ".format(loss["auc"], loss["tpr_at_fpr"]["0.01"]) + "; ".join(
        f"{k}: auc {m['auc']:.4f} tpr@1% {m['tpr_at_fpr']['0.01']:.4f}" for k, m in aucs.items()))
    print(f"{args.k} reference models, n_jobs={args.n_jobs}: {ref_seconds:.2f}s ({ref_seconds / args.k:.2f}s per model)")
    print(f"one_run_seconds={one_run:.3f}")
    print(f"references_seconds={ref_seconds:.3f}")
    print(f"ref_cost_over_one_run={ref_seconds / one_run:.3f}")
    keras.backend.clear_session()
    return 0


if __name__ == "__main__":
    sys.exit(main())
