"""LiRA, the likelihood-ratio attack (Carlini, Chien, Nasr, Song, Terzis, Tramer, "Membership Inference
Attacks From First Principles", IEEE S&P 2022):
  signal: the logit-scaled confidence of the true class, phi = log(p_y / (1 - p_y))
  (:func:`logit_scaled_confidence`), which is close to Gaussian across training runs.
  For each example, Gaussians are fitted to its IN and OUT reference signals.
  - online:  score = log N(phi; mu_in, sigma_in^2) - log N(phi; mu_out, sigma_out^2)
  - offline: score = log Phi((phi - mu_out) / sigma_out), Phi the standard normal CDF: the one-sided
    test "how far above the OUT distribution", using OUT references only.
  - fixed variance: every example uses one global variance per kind (IN / OUT), the pooled
    within-example variance (see :func:`lira_scores`); the paper recommends it for few references.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping

import numpy as np
from scipy import special

from privacy_audit.components.membership_inference.attacks.signals import DEFAULT_MIN_STD, _mask, _matrix, _vector


def _gaussian_fit(signals: np.ndarray, mask: np.ndarray, ddof: int) -> Dict[str, np.ndarray]:
    """Per-example count, sum, mean (NaN where count 0), sum of squared deviations and variance (divisor
    count - ddof; NaN where count < 2) of the entries of ``signals`` [K, N] selected by ``mask`` [K, N].
    Each column's values depend on that column only (so batches of columns give the same numbers)."""
    count = mask.sum(axis=0)
    total = np.where(mask, signals, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        sq_dev = np.where(mask, (signals - np.where(count > 0, mean, 0.0)[None, :]) ** 2, 0.0).sum(axis=0)
        var = np.where(count >= 2, sq_dev / np.maximum(count - ddof, 1), np.nan)
    return {"count": count, "total": total, "mean": mean, "sq_dev": sq_dev, "var": var}


def _pooled_var(fit: Mapping[str, np.ndarray], ddof: int) -> float:
    """The pooled within-example variance of one kind from the per-example fits (see :func:`lira_scores`)."""
    count, sq_dev = fit["count"], fit["sq_dev"]
    dof = np.where(count >= 2, count - ddof, 0).sum()
    if dof > 0:
        return float(sq_dev[count >= 2].sum() / dof)
    if count.sum() >= 2:
        # No example has two references of this kind (e.g. K = 2 with one IN and one OUT each): the
        # variance of all of this kind's signals around their grand mean (it includes the between-example
        # spread, so it is wide: the attack is then conservative rather than over-confident). Each example
        # has at most one signal of the kind here: its mean.
        return float(np.var(fit["mean"][count == 1], ddof=ddof))
    return math.nan


def lira_example_fit(ref_signals, ref_in_mask, ddof: int = 0) -> Dict[str, Dict[str, np.ndarray]]:
    """The per-example part of LiRA's fit: ``{"in": fit, "out": fit}`` of :func:`_gaussian_fit` for
    ``ref_signals`` [K, N] and ``ref_in_mask`` [K, N] bool (already validated). A column's fit depends on that
    column only: the Beam path computes it batch by batch (``beam.reference``)."""
    return {"in": _gaussian_fit(ref_signals, ref_in_mask, ddof),
            "out": _gaussian_fit(ref_signals, ~ref_in_mask, ddof)}


def lira_global_fit(fit_in: Mapping[str, np.ndarray], fit_out: Mapping[str, np.ndarray], ddof: int = 0
                    ) -> Dict[str, Any]:
    """The global part of LiRA's fit from every example's per-example fits (in the population's order):
    ``pooled_var_in/out`` (NaN when undefined), ``shift`` (the IN - OUT gap), ``any_in``, ``any_out``."""
    count_in, count_out = fit_in["count"], fit_out["count"]
    any_in, any_out = bool((count_in > 0).any()), bool((count_out > 0).any())
    both = (count_in > 0) & (count_out > 0)
    if both.any():
        shift = float(np.mean(fit_in["mean"][both] - fit_out["mean"][both]))
    elif any_in and any_out:
        shift = float(fit_in["total"].sum() / count_in.sum() - fit_out["total"].sum() / count_out.sum())
    else:
        shift = 0.0  # offline with OUT references only: every example has an OUT mean
    return {"pooled_var_in": _pooled_var(fit_in, ddof), "pooled_var_out": _pooled_var(fit_out, ddof),
            "shift": shift, "any_in": any_in, "any_out": any_out}


def lira_scores_from_fit(target_signal: np.ndarray, fit_in: Mapping[str, np.ndarray],
                         fit_out: Mapping[str, np.ndarray], global_fit: Mapping[str, Any], online: bool = True,
                         fixed_variance: bool = False, min_std: float = DEFAULT_MIN_STD,
                         return_fit: bool = False):
    """LiRA scores of examples from their per-example fits (:func:`lira_example_fit`, any subset of the
    population) and the population's :func:`lira_global_fit`; the arithmetic of :func:`lira_scores`."""
    x = target_signal
    n = x.shape[0]
    any_in, any_out = global_fit["any_in"], global_fit["any_out"]
    if not any_out:
        raise ValueError("LiRA needs OUT references: every reference model was trained on every example")
    if online and not any_in:
        raise ValueError("online LiRA needs IN references (ref_in_mask has no True entry); use online=False")
    shift = global_fit["shift"]
    mu_out = np.where(fit_out["count"] > 0, fit_out["mean"], fit_in["mean"] - shift)
    mu_in = np.where(fit_in["count"] > 0, fit_in["mean"], fit_out["mean"] + shift)
    pooled_in, pooled_out = global_fit["pooled_var_in"], global_fit["pooled_var_out"]

    def sigma(fit: Mapping[str, np.ndarray], pooled: float, other: float) -> np.ndarray:
        if math.isnan(pooled):
            pooled = other if not math.isnan(other) else min_std ** 2
        var = np.full(n, pooled) if fixed_variance else np.where(fit["count"] >= 2, fit["var"], pooled)
        return np.maximum(np.sqrt(var), min_std)

    sigma_out = sigma(fit_out, pooled_out, pooled_in)
    if online:
        sigma_in = sigma(fit_in, pooled_in, pooled_out)
        score = _log_normal_pdf(x, mu_in, sigma_in) - _log_normal_pdf(x, mu_out, sigma_out)
    else:
        sigma_in = sigma(fit_in, pooled_in, pooled_out) if any_in else np.full(n, np.nan)
        score = special.log_ndtr((x - mu_out) / sigma_out)
    if not return_fit:
        return score
    fit = {"mu_in": mu_in, "sigma_in": sigma_in, "mu_out": mu_out, "sigma_out": sigma_out,
           "n_in": fit_in["count"], "n_out": fit_out["count"], "shift": shift,
           "pooled_sigma_in": math.sqrt(pooled_in) if not math.isnan(pooled_in) else None,
           "pooled_sigma_out": math.sqrt(pooled_out) if not math.isnan(pooled_out) else None}
    return score, fit


def lira_scores(target_signal, ref_signals, ref_in_mask, online: bool = True, fixed_variance: bool = False,
                *, ddof: int = 0, min_std: float = DEFAULT_MIN_STD, return_fit: bool = False):
    """LiRA membership scores (Carlini et al. 2022), higher = more likely a member.

    Args:
      target_signal: [N] the target model's signal per example (normally :func:`logit_scaled_confidence`).
      ref_signals: [K, N] the same signal from K reference models.
      ref_in_mask: [K, N] bool, True where example i was in reference model k's training set.
      online: True: score = log N(x; mu_in, sigma_in^2) - log N(x; mu_out, sigma_out^2) (natural log);
        False (offline, OUT references only): score = log Phi((x - mu_out) / sigma_out).
      fixed_variance: use, for every example, the global variance of its kind instead of its own.
      ddof: variance divisor n - ddof: 0 (default) is the maximum-likelihood Gaussian fit
        (``scipy.stats.norm.fit``, and ``np.std`` as in the paper's code); 1 the unbiased estimate.
      min_std: floor applied to every standard deviation.
      return_fit: also return the fitted parameters (dict of [N] arrays ``mu_in``, ``sigma_in``,
        ``mu_out``, ``sigma_out``, ``n_in``, ``n_out`` and the global ``pooled_sigma_in/out``, ``shift``).

    Estimates, separately for IN and OUT references of each example i (n_i of them, values s_k):
      mu_i = mean(s_k); sigma_i^2 = sum_k (s_k - mu_i)^2 / (n_i - ddof), when n_i >= 2.
      Global (pooled within-example) variance of a kind: sum over examples with n_i >= 2 of
      sum_k (s_k - mu_i)^2, divided by sum over those examples of (n_i - ddof). (Not the variance of
      all signals together, which would add the spread between examples' means.)
    Fallbacks when an example has too few references of a kind:
      - n_i < 2 (no variance estimate): the global pooled variance of that kind; if no example has two
        references of that kind, the variance (same ddof) of all that kind's signals; if the kind has a
        single signal in all, the other kind's global variance.
      - n_i = 0 (no mean): the mean of the other kind shifted by the global IN-OUT gap
        shift = mean over examples having both kinds of (mu_in - mu_out): mu_in = mu_out + shift,
        mu_out = mu_in - shift. If no example has both kinds, shift = (grand mean of all IN signals) -
        (grand mean of all OUT signals).
    Offline scoring needs no IN references (they are only used for the fallback of examples without
    OUT references). Online scoring needs at least one IN and one OUT signal overall.
    Returns: [N] float64 scores (and the fit dict when ``return_fit``).
    """
    x = _vector(target_signal, "target_signal")
    n = x.shape[0]
    s = _matrix(ref_signals, "ref_signals", n)
    mask_in = _mask(ref_in_mask, "ref_in_mask", s.shape)
    if not (min_std > 0 and math.isfinite(min_std)):
        raise ValueError(f"min_std must be a positive number, got {min_std}")
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
    fits = lira_example_fit(s, mask_in, ddof)
    return lira_scores_from_fit(x, fits["in"], fits["out"], lira_global_fit(fits["in"], fits["out"], ddof),
                                online=online, fixed_variance=fixed_variance, min_std=min_std,
                                return_fit=return_fit)


def _log_normal_pdf(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * math.log(2.0 * math.pi)
