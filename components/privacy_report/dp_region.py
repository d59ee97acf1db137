"""The region of the ROC plane a DP guarantee allows, and whether a run's measured points stay inside it.

An (ε, δ)-DP training algorithm bounds every membership test (Kairouz et al. 2015): TPR <= e^ε FPR + δ and,
applied to the complementary test, 1 - FPR <= e^ε (1 - TPR) + δ, i.e. TPR <= 1 - e^-ε (1 - FPR - δ). DP-SGD
is (ε(δ), δ)-DP for every δ at once (its privacy profile, from the accountant), so every attack's ROC curve
must lie below

    tpr_max(FPR) = min over δ of min(e^ε(δ) FPR + δ, 1 - e^-ε(δ) (1 - FPR - δ))

The profile is evaluated with dp-accounting on a grid of δ (:data:`PROFILE_DELTAS`); a finite grid takes
the minimum over fewer constraints, so the drawn region is slightly larger than the exact one: a point found
outside it is outside the exact region too.

A measured point is only an estimate, so a point counts as outside only when it is outside beyond its
interval: its TPR's lower and its FPR's upper Clopper-Pearson bound, made simultaneous over every point
checked (Bonferroni), still violate the bound. That is the statement "the run's empirical ε lower bound
exceeds the accountant's ε" at the stated confidence.

No TFX; dp-accounting, numpy and scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from privacy_audit.components.dp_trainer import accounting
from privacy_audit.components.membership_inference.metrics import clopper_pearson_lower, clopper_pearson_upper

#: δ grid of the privacy profile: 1e-12 ... 0.5 (below 1e-12 the bound is e^ε FPR to float precision).
PROFILE_DELTAS: tuple[float, ...] = tuple(float(d) for d in np.geomspace(1e-12, 0.5, 49))
DEFAULT_CONFIDENCE = 0.95


def privacy_profile(events: Sequence[Mapping[str, Any]], accountant: str = "rdp",
                    deltas: Sequence[float] = PROFILE_DELTAS) -> list[tuple[float, float]]:
    """The accountant's (ε(δ), δ) curve of a ledger's events.

    Args:
      events: the ledger's "events": [{"sampling_probability": q, "noise_multiplier": σ, "steps": T}, ...].
      accountant: "rdp" or "pld" (the ledger's).
      deltas: δ values at which ε is computed.
    Returns: [(ε, δ)] sorted by δ, infinite ε left out (a step without noise: no region).
    """
    acc = accounting.make_accountant(accountant)
    for e in events:
        acc.compose(accounting.dp_sgd_event(float(e["sampling_probability"]), float(e["noise_multiplier"]),
                                            int(e["steps"])))
    profile = []
    for d in sorted(deltas):
        eps = float(acc.get_epsilon(float(d)))
        if math.isfinite(eps):
            profile.append((max(eps, 0.0), float(d)))
    return profile


def max_tpr(fpr, profile: Sequence[tuple[float, float]]) -> np.ndarray:
    """Upper edge of the DP region: the largest TPR any attack can have at each FPR (array in, array out),
    min over the profile of both (ε, δ) bounds, clipped to [0, 1]; 1 everywhere for an empty profile."""
    fpr = np.clip(np.asarray(fpr, dtype=np.float64), 0.0, 1.0)
    bound = np.ones_like(fpr)
    for eps, delta in profile:
        e = math.exp(min(eps, 700.0))
        bound = np.minimum(bound, np.minimum(e * fpr + delta, 1.0 - (1.0 - fpr - delta) / e))
    return np.clip(bound, 0.0, 1.0)


def _points(results: Iterable[Any]) -> list[dict[str, Any]]:
    """Every resolvable reported point (TPR at an FPR target) of the results, with its counts."""
    points = []
    for r in results:
        if not r.n_members or not r.n_nonmembers:
            continue
        for key, tpr in r.tpr_at_fpr.items():
            if tpr is None or r.tpr_unresolved(float(key)):
                continue
            fpr = r.tpr_at_fpr_achieved_fpr.get(key, float(key))
            interval = r.tpr_interval(float(key))
            points.append({"slice": r.slice_label, "attack": r.attack, "fpr_target": float(key), "tpr": tpr,
                           "fpr": fpr, "n_members": r.n_members, "n_nonmembers": r.n_nonmembers,
                           "tpr_interval": None if interval is None else [float(v) for v in interval]})
    return points


def check_results(results: Sequence[Any], profile: Sequence[tuple[float, float]],
                  confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """Whether every resolvable reported point of a model's results lies inside the DP region.

    Args:
      results: load.AttackResult of the final model (all slices and attacks).
      profile: :func:`privacy_profile`.
      confidence: simultaneous confidence over all points (each side of each point gets
        (1 - confidence) / (2 · points)).
    Returns: {"consistent": bool, "points_checked": int, "confidence", "violations": [point dicts with
    "tpr_lower", "fpr_upper", "tpr_max"]} (points outside beyond their intervals), and
    "intervals_inside": how many points have their whole reported 95% TPR interval below the region's edge
    at their FPR (a stricter, descriptive count: an upper end above the edge is no evidence of a violation).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {confidence!r}")
    points = _points(results)
    violations = []
    if points:
        alpha = (1.0 - confidence) / (2.0 * len(points))
        n_m = np.array([p["n_members"] for p in points], dtype=np.float64)
        n_n = np.array([p["n_nonmembers"] for p in points], dtype=np.float64)
        tpr_lo = clopper_pearson_lower(np.round(np.array([p["tpr"] for p in points]) * n_m), n_m, alpha)
        fpr_hi = clopper_pearson_upper(np.round(np.array([p["fpr"] for p in points]) * n_n), n_n, alpha)
        limit = max_tpr(fpr_hi, profile)
        for p, lo, hi, lim in zip(points, tpr_lo, fpr_hi, limit):
            if lo > lim + 1e-12:
                violations.append({**p, "tpr_lower": float(lo), "fpr_upper": float(hi), "tpr_max": float(lim)})
    inside = sum(1 for p in points if p["tpr_interval"] is not None
                 and p["tpr_interval"][1] <= float(max_tpr([p["fpr"]], profile)[0]) + 1e-12)
    return {"consistent": not violations, "points_checked": len(points), "confidence": confidence,
            "violations": violations, "intervals_inside": inside}


def _events(events: Sequence[Mapping[str, Any]]) -> list:
    return [accounting.dp_sgd_event(float(e["sampling_probability"]), float(e["noise_multiplier"]), int(e["steps"]))
            for e in events]


def variant_consistency(results: Sequence[Any], events: Sequence[Mapping[str, Any]], accountant: str = "rdp",
                        one_run_audit: Mapping[str, Any] | None = None,
                        confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """``dp_consistent`` of one private variant and why: False when (1) a resolvable reported point lies
    outside the DP region beyond its interval (:func:`check_results`), (2) an attack's empirical ε lower
    bound (metrics.epsilon_lower_bound, at its own δ and confidence) exceeds the accountant's ε at that δ,
    or (3) the one-run audit proved more than the accountant's ε (``violated``).

    Args:
      results: load.AttackResult of the final model.
      events: the ledger's "events"; accountant: its accountant.
      one_run_audit: one_run_audit.json of the variant, when the audit ran.
    Returns: {"dp_consistent": bool, "reasons": [str], "region": check_results(...),
    "epsilon_lower_bound_violations": [...], "profile": [[ε, δ], ...]}.
    """
    profile = privacy_profile(events, accountant)
    region = check_results(results, profile, confidence)
    reasons = [f"{v['attack']} on {v['slice']}: TPR ≥ {v['tpr_lower']:.3g} at FPR ≤ {v['fpr_upper']:.3g} is "
               f"above the {v['tpr_max']:.3g} its DP guarantee allows" for v in region["violations"]]
    eps_cache: dict[float, float] = {}
    lb_violations = []
    for r in results:
        lb, delta = r.epsilon_lower_bound, r.epsilon_lower_bound_details.get("delta")
        if not lb or delta is None or not 0.0 < float(delta) < 1.0:
            continue
        if delta not in eps_cache:
            eps_cache[delta] = accounting.epsilon_for_events(_events(events), float(delta), accountant)
        if lb > eps_cache[delta]:
            lb_violations.append({"slice": r.slice_label, "attack": r.attack, "epsilon_lower_bound": lb,
                                  "delta": float(delta), "accountant_epsilon": eps_cache[delta]})
            reasons.append(f"{r.attack} on {r.slice_label}: empirical ε ≥ {lb:.3g} exceeds the accountant's "
                           f"ε = {eps_cache[delta]:.3g} at δ = {float(delta):g}")
    if one_run_audit is not None and one_run_audit.get("violated"):
        reasons.append(one_run_audit.get("message") or "the one-run audit proves more than the accountant's ε")
    return {"dp_consistent": not reasons, "reasons": reasons, "region": region,
            "epsilon_lower_bound_violations": lb_violations, "profile": [[e, d] for e, d in profile]}
