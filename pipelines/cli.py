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
    p.add_argument("--delta", type=float, default=None,
                   help="δ, below 1/n (default: the largest power of ten not above 1/n^1.1)")
    p.add_argument("--accountant", choices=["rdp", "pld"], default="rdp",
                   help="rdp (default) or pld (tighter; past its work bound ε comes from rdp, with a note)")
    p.set_defaults(func=_cmd_epsilon)


def _check_epsilon_args(args) -> None:
    """Names the first invalid option (NaN, ±inf, 0 and negatives included), as the library names it."""
    if args.n <= 0:
        raise UserError(f"n must be a positive number of training examples, got {args.n}")
    if not 0 < args.batch_size <= args.n:
        raise UserError(f"batch_size must be in 1..n ({args.n}), got {args.batch_size}")
    if args.epochs is not None and not (math.isfinite(args.epochs) and args.epochs > 0):
        raise UserError(f"epochs must be a finite number > 0, got {args.epochs}")
    if args.steps is not None and args.steps < 0:
        raise UserError(f"steps must be >= 0, got {args.steps}")
    if args.noise_multiplier is not None:
        if not (math.isfinite(args.noise_multiplier) and args.noise_multiplier >= 0):
            raise UserError(f"noise_multiplier must be a finite number >= 0, got {args.noise_multiplier}")
        if args.noise_multiplier == 0:
            raise UserError("noise_multiplier 0 adds no noise: ε is infinite (no privacy guarantee); give σ > 0")
    if args.target_epsilon is not None and not (math.isfinite(args.target_epsilon) and args.target_epsilon > 0):
        raise UserError(f"target_epsilon must be a finite number > 0, got {args.target_epsilon}")


def _cmd_epsilon(args) -> int:
    import logging

    from privacy_audit.components.dp_trainer import accounting

    # dp-accounting logs every RDP order it drops (a series that does not converge) as a warning: the
    # order is excluded and ε stays a valid bound, so this is not the user's concern.
    logging.getLogger("absl").setLevel(logging.ERROR)
    _check_epsilon_args(args)
    delta = args.delta if args.delta is not None else accounting.default_delta(args.n)
    try:
        accounting.validate_dp_params(n_examples=args.n, batch_size=args.batch_size, delta=delta,
                                      epochs=args.epochs, steps=args.steps)
        steps = args.steps if args.steps is not None else accounting.steps_for_epochs(args.n, args.batch_size,
                                                                                      args.epochs)
    except ValueError as e:
        raise UserError(str(e)) from None
    q = args.batch_size / args.n
    notes = []
    sigma, used = args.noise_multiplier, args.accountant
    if args.target_epsilon is not None:
        sigma, used, note = accounting.calibrate_noise(target_epsilon=args.target_epsilon, n_examples=args.n,
                                                       batch_size=args.batch_size, delta=delta, steps=steps,
                                                       accountant=args.accountant)
        notes.append(note)
    eps, used_eps, note = accounting.epsilon_and_accountant([accounting.dp_sgd_event(q, sigma, steps)], delta,
                                                            used) if steps else (0.0, used, None)
    notes.append(note)
    if not math.isfinite(eps):
        raise UserError(f"ε is unbounded for noise_multiplier={sigma:g}, q={q:.4g}, steps={steps}: the noise is "
                        "far too small for any guarantee")
    out = {"epsilon": eps, "noise_multiplier": sigma, "steps": steps, "accountant": used_eps,
           "delta": delta, "sampling_probability": q, "sampling": "poisson"}
    notes = [n for n in notes if n]
    if used_eps != args.accountant:
        out.update(accountant_requested=args.accountant, accountant_note=notes[0] if notes else None)
    if args.target_epsilon is not None:
        out["target_epsilon"] = args.target_epsilon
    for n in notes[:1]:
        print(f"privacy-audit epsilon: note: {n}", file=sys.stderr)
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
    except (PermissionError, FileExistsError, OSError) as e:
        # A path the system refuses (no permission, name too long, read-only): name it, on one line.
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"privacy-audit {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"privacy-audit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
