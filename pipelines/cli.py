"""The `privacy-audit` command line.

Subcommands: run (the whole local pipeline), attack (attacks on saved model outputs), epsilon (DP-SGD
accounting), compile-kfp (Kubeflow Pipelines v2 spec). Heavy imports happen inside each subcommand so
that `privacy-audit epsilon` answers in about a second.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from typing import List, Optional


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def _add_epsilon(sub) -> None:
    p = sub.add_parser("epsilon", help="ε of DP-SGD with Poisson sampling, or the noise multiplier for a target ε",
                       description="Prints JSON {epsilon, noise_multiplier, steps, accountant, ...}. Steps are "
                                   "ceil(epochs * n / batch_size) unless --steps is given.")
    p.add_argument("--n", type=int, required=True, help="number of training examples")
    p.add_argument("--batch-size", type=int, required=True, help="expected batch size (q = batch_size / n)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--epochs", type=float, help="number of epochs")
    g.add_argument("--steps", type=int, help="number of steps (instead of --epochs)")
    g2 = p.add_mutually_exclusive_group(required=True)
    g2.add_argument("--noise-multiplier", type=float, help="σ: noise std / clip norm")
    g2.add_argument("--target-epsilon", type=float, help="find the smallest σ reaching this ε")
    p.add_argument("--delta", type=float, default=None, help="δ (default: 1/n rounded down to a power of ten)")
    p.add_argument("--accountant", choices=["rdp", "pld"], default="rdp")
    p.set_defaults(func=_cmd_epsilon)


def _cmd_epsilon(args) -> int:
    from privacy_audit.components.dp_trainer import accounting

    delta = args.delta if args.delta is not None else accounting.default_delta(args.n)
    try:
        accounting.validate_dp_params(n_examples=args.n, batch_size=args.batch_size,
                                      noise_multiplier=args.noise_multiplier, delta=delta,
                                      epochs=args.epochs, target_epsilon=args.target_epsilon)
        if args.steps is not None and args.steps < 0:
            raise ValueError(f"steps must be >= 0, got {args.steps}")
    except ValueError as e:
        raise UserError(str(e)) from None
    steps = args.steps if args.steps is not None else accounting.steps_for_epochs(args.n, args.batch_size,
                                                                                  args.epochs)
    if args.target_epsilon is not None:
        sigma = accounting.noise_multiplier_for_epsilon(target_epsilon=args.target_epsilon, n_examples=args.n,
                                                        batch_size=args.batch_size, delta=delta, steps=steps,
                                                        accountant=args.accountant)
    else:
        sigma = args.noise_multiplier
    eps = accounting.compute_epsilon(n_examples=args.n, batch_size=args.batch_size, noise_multiplier=sigma,
                                     delta=delta, steps=steps, accountant=args.accountant)
    out = {"epsilon": eps if math.isfinite(eps) else None, "noise_multiplier": sigma, "steps": steps,
           "accountant": args.accountant, "delta": delta, "sampling_probability": args.batch_size / args.n,
           "sampling": "poisson"}
    if args.target_epsilon is not None:
        out["target_epsilon"] = args.target_epsilon
    print(json.dumps(out))
    return 0


def _add_attack(sub) -> None:
    from privacy_audit.components.membership_inference import api

    p = sub.add_parser("attack", help="membership-inference attacks on saved model outputs (.npz or Parquet)")
    api.add_attack_arguments(p)
    p.set_defaults(func=lambda args: api.main_attack(args))


def _add_run(sub) -> None:
    from privacy_audit.pipelines import run as run_mod

    p = sub.add_parser("run", help="run the whole audit pipeline locally (default: embedded digits demo)")
    run_mod.add_run_arguments(p)
    p.set_defaults(func=run_mod.main_run)


def _add_compile_kfp(sub) -> None:
    from privacy_audit.pipelines import kubeflow

    p = sub.add_parser("compile-kfp", help="write the Kubeflow Pipelines v2 pipeline spec")
    kubeflow.add_compile_arguments(p)
    p.set_defaults(func=kubeflow.main_compile)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="privacy-audit",
        description="Train Keras models with differential privacy and audit them with membership-inference attacks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Each subcommand registers itself; one that cannot import (e.g. a missing optional part) is left
    # out rather than breaking the others.
    for add in (_add_run, _add_attack, _add_epsilon, _add_compile_kfp):
        try:
            add(sub)
        except ImportError as e:  # pragma: no cover - only on a broken install
            warnings.warn(f"subcommand unavailable: {e}")
    return parser


def _quiet_libraries() -> None:
    """TensorFlow's C++ start-up chatter and Google client deprecation notices bury our progress lines."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: Optional[List[str]] = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"privacy-audit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"privacy-audit {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
