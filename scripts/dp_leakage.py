"""How much a DP-trained model on digits leaks to the strong attacks: the measurements behind the demo's
DP variant (README, "What DP promises on small data").

    .venv/bin/python scripts/dp_leakage.py --model softmax_regression --epsilon 1 --clip 4 --batch-size 128 \
        --learning-rate 2e-2 --members-fraction 0.5 --seeds 0,1,2
    .venv/bin/python scripts/dp_leakage.py --model mlp --hidden 512,512 --epsilon 3 --members-fraction 0.25
    .venv/bin/python scripts/dp_leakage.py ... --null      # a check of the attacks themselves, see below

For each seed: a seeded random ``--members-fraction`` of scikit-learn's digits (1797 images) is the
members, the rest the non-members; the target is trained on the members with the project's DP-Adam loop
(σ calibrated to ``--epsilon`` at δ = ``--delta``, default 1/N rounded down to a power of ten, as the
DPTrainer does), K reference models with the same recipe as the ReferenceModelTrainer trains them, then
the entire-data-set AUC of the loss threshold, LiRA (online and offline) and RMIA is computed. One JSON line
per seed: {"seed", "sigma", "test_accuracy", "threshold", "lira", "lira_offline", "rmia"}.

``--null`` replaces the members by a random 30% of the non-members: nothing distinguishes them, so every
AUC must be 0.5 up to sampling noise (about ±0.015 here) — a bias check of the attacks and of the
reference design. ``--epsilon 0`` trains without DP.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def measure(x, y, seed: int, args) -> dict:
    from privacy_audit.components.dp_trainer import sampling, trainer
    from privacy_audit.components import reference_models as rm
    from privacy_audit.components.membership_inference import attacks as sa
    from privacy_audit.components.membership_inference.metrics import attack_metrics

    member = np.random.default_rng([seed, 0x5E]).random(len(y)) < args.members_fraction
    private = args.epsilon > 0
    hidden = [int(h) for h in args.hidden.split(",") if h]
    config = rm.TrainingRecipe(
        private=private, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        optimizer=args.optimizer, l2_norm_clip=args.clip, target_epsilon=args.epsilon if private else None,
        delta=args.delta, builtin_model=args.model, hparams={"hidden_units": hidden}, checkpoint_every=0, seed=seed)
    n = int(member.sum())
    steps = sampling.PoissonSampler(n, config.batch_size, seed=seed).steps_per_epoch
    sigma = trainer.resolve_noise(config, n, steps)[0] if private else None
    recipe = config.replace(noise_multiplier=sigma, target_epsilon=None)
    builder = rm.ModelBuilder(trainer.model_hparams(config, x, 10), builtin=args.model)
    target = rm.train_one(builder, x[member], y[member], x, recipe, seed=1000 + seed, fit_with="dp_trainer")
    with tempfile.TemporaryDirectory() as tmp:
        refs = rm.train_for_trainer_recipe(
            os.path.join(tmp, "refs.npz"), config, model_variant="dp" if private else "non_private",
            x_members=x[member], y_members=y[member],
            x_nonmembers=x[~member], y_nonmembers=y[~member],
            sha1_members=[f"{i:040x}" for i in np.flatnonzero(member)],
            sha1_nonmembers=[f"{i:040x}" for i in np.flatnonzero(~member)], input_features=[], k=args.k,
            seed=seed, verbose=False)
    order = np.concatenate([np.flatnonzero(member), np.flatnonzero(~member)])
    logits, labels = target[order], y[order]
    scores = {"threshold": sa.true_class_probability(logits, labels)}
    for name in ("lira", "lira_offline", "rmia"):
        scores[name] = sa.reference_attack_scores(name, logits, labels, refs)[0]
    is_member = np.arange(len(y)) < n
    keep = np.ones(len(y), bool)
    if args.null:  # fake members among the non-members only
        keep = ~is_member
        is_member = np.random.default_rng([seed, 0x0A]).random(len(y)) < 0.3
    out = {"seed": seed, "sigma": sigma,
           "test_accuracy": round(float((target[~member].argmax(1) == y[~member]).mean()), 4)}
    for name, s in scores.items():
        out[name] = round(attack_metrics(s[keep], is_member[keep])["auc"], 4)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="softmax_regression", choices=["softmax_regression", "mlp"])
    p.add_argument("--hidden", default="512,512", help="MLP hidden units")
    p.add_argument("--epsilon", type=float, default=1.0, help="target ε (0: no DP)")
    p.add_argument("--delta", type=float, default=None)
    p.add_argument("--clip", type=float, default=4.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=2e-2)
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--members-fraction", type=float, default=0.5)
    p.add_argument("--k", type=int, default=4, help="reference models")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--null", action="store_true", help="fake members drawn from the non-members")
    args = p.parse_args(argv)
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rows.append(measure(x, y, seed, args))
        print(json.dumps(rows[-1]), flush=True)
    best = max(max(r[a] for a in ("threshold", "lira", "lira_offline", "rmia")) for r in rows)
    print(f"max_attack_auc={best:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
