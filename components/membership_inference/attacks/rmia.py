"""RMIA, the robust membership inference attack (Zarifzadeh, Liu, Shokri, "Low-Cost High-Power Membership
Inference Attacks", ICML 2024):
  Pr(x|theta) is the target model's probability of the true class; Pr(x) its average over reference
  models (online: all K; offline, OUT references only: Pr(x) = ((1 + a)/2) mean_out + (1 - a)/2, the
  paper's linear approximation Pr_in = a Pr_out + (1 - a)). With population samples z (non-members of
  the target) treated the same way, LR(x, z) = (Pr(x|theta)/Pr(x)) / (Pr(z|theta)/Pr(z)) and
  score(x) = fraction of z with LR(x, z) >= gamma.
  Defaults used here: ``gamma=1.0`` (x is compared with z on equal terms) and ``offline_a=0.3``. Values
  of gamma between 1 and 2 are the published range; the authors' released CIFAR-10 attack configurations
  (ml_privacy_meter, research/2023_rmia) use gamma = 2 with a temperature-scaled softmax signal and
  a = 0.33 offline. a depends on the data and training set-up and is best tuned with a model trained
  without x. With one population set for all x, the score is a non-decreasing function of
  Pr(x|theta)/Pr(x), so gamma changes only the resolution of the score (ties), not the ranking.
  Not reproduced: the softmax temperature and the trimmed means over references of the authors' code.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from privacy_audit.components.common.losses import MIN_PROB
from privacy_audit.components.membership_inference.attacks.signals import _mask, _matrix, _vector


def _reference_average(ref_probs: np.ndarray, in_mask: Optional[np.ndarray], online: bool, a: float
                       ) -> np.ndarray:
    """Pr(x) per column: online, the mean over all references; offline, ((1+a)/2) mean_out + (1-a)/2
    (columns without an OUT reference fall back to the mean over all references)."""
    mean_all = ref_probs.mean(axis=0)
    if online:
        return mean_all
    out = ~in_mask if in_mask is not None else np.ones(ref_probs.shape, dtype=bool)
    n_out = out.sum(axis=0)
    mean_out = np.where(n_out > 0, np.where(out, ref_probs, 0.0).sum(axis=0) / np.maximum(n_out, 1), 0.0)
    return np.where(n_out > 0, 0.5 * (1.0 + a) * mean_out + 0.5 * (1.0 - a), mean_all)


def rmia_scores(target_probs, ref_probs, ref_in_mask, population_target_probs, population_ref_probs,
                gamma: float = 1.0, offline_a: float = 0.3, *, online: bool = True,
                population_in_mask=None) -> np.ndarray:
    """RMIA membership scores (Zarifzadeh et al. 2024), in [0, 1], higher = more likely a member.

    Args:
      target_probs: [N] Pr(x | theta): the target model's probability of each example's true class.
      ref_probs: [K, N] the same probability under K reference models.
      ref_in_mask: [K, N] bool, True where x was in reference model k's training set (used offline).
      population_target_probs: [Z] Pr(z | theta) for population samples z (non-members of the target).
      population_ref_probs: [K, Z] the same under the reference models.
      gamma: threshold on the pairwise likelihood ratio (> 0).
      offline_a: the offline scaling a in [0, 1] (used when ``online=False``).
      online: True: Pr(x) = mean over all K references (IN and OUT, as the paper's online attack with
        references trained on random halves). False (offline): only OUT references,
        Pr(x) = ((1 + a)/2) mean_OUT + (1 - a)/2; an example without any OUT reference falls back to the
        mean over all references.
      population_in_mask: optional [K, Z] bool membership of the z in the references' training sets (for
        the offline OUT selection); default: the z are in no reference's training set.
    Score: with r(x) = Pr(x|theta) / Pr(x) and r(z) likewise (Pr(z) computed as Pr(x)),
      score(x) = (1/Z) #{z : r(x) / r(z) >= gamma}. Probabilities are floored at 1e-30 before dividing.
    Computed with sorted log-ratios: r(x)/r(z) >= gamma  <=>  log r(z) <= log r(x) - log gamma,
    O((N + Z) log Z).
    """
    px = _vector(target_probs, "target_probs")
    n = px.shape[0]
    rp = _matrix(ref_probs, "ref_probs", n)
    k = rp.shape[0]
    in_mask = _mask(ref_in_mask, "ref_in_mask", rp.shape)
    pz = _vector(population_target_probs, "population_target_probs")
    zn = pz.shape[0]
    if zn < 1:
        raise ValueError("RMIA needs at least one population sample z")
    rpz = _matrix(population_ref_probs, "population_ref_probs", zn)
    if rpz.shape[0] != k:
        raise ValueError(f"population_ref_probs has {rpz.shape[0]} reference models, ref_probs has {k}")
    pop_mask = None if population_in_mask is None else _mask(population_in_mask, "population_in_mask", rpz.shape)
    for name, arr in (("target_probs", px), ("ref_probs", rp), ("population_target_probs", pz),
                      ("population_ref_probs", rpz)):
        if (arr < 0).any() or (arr > 1).any():
            raise ValueError(f"{name} must be probabilities in [0, 1]")
    if not (gamma > 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a positive number, got {gamma}")
    if not 0.0 <= offline_a <= 1.0:
        raise ValueError(f"offline_a must be in [0, 1], got {offline_a}")

    log_rx = rmia_log_ratio(px, rp, in_mask, online, offline_a)
    log_rz = np.sort(rmia_log_ratio(pz, rpz, pop_mask, online, offline_a))
    return rmia_scores_from_population(log_rx, log_rz, gamma)


def rmia_log_ratio(target_probs: np.ndarray, ref_probs: np.ndarray, in_mask: Optional[np.ndarray], online: bool,
                   offline_a: float) -> np.ndarray:
    """log r(x) = log Pr(x|theta) - log Pr(x) per example ([N] from ``target_probs`` [N], ``ref_probs`` [K, N],
    ``in_mask`` [K, N] or None; validated arrays). A column's value depends on that column only (the Beam path
    computes it batch by batch, ``beam.reference``)."""
    return log_ratio(target_probs, _reference_average(ref_probs, in_mask, online, offline_a))


def reference_average(ref_probs: np.ndarray, in_mask: Optional[np.ndarray], online: bool, a: float) -> np.ndarray:
    """Pr(x) per example from ``ref_probs`` [K, N] (see :func:`rmia_scores`); per column, as
    :func:`rmia_log_ratio` uses it."""
    return _reference_average(ref_probs, in_mask, online, a)


def log_ratio(target_probs: np.ndarray, pr_x: np.ndarray) -> np.ndarray:
    """log Pr(x|theta) - log Pr(x), both floored at 1e-30."""
    return np.log(np.maximum(target_probs, MIN_PROB)) - np.log(np.maximum(pr_x, MIN_PROB))


def rmia_scores_from_population(log_rx: np.ndarray, sorted_log_rz: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """score(x) = (1/Z) #{z : log r(z) <= log r(x) - log gamma} from the population's sorted log-ratios [Z]."""
    counts = np.searchsorted(sorted_log_rz, log_rx - math.log(gamma), side="right")
    return counts / float(sorted_log_rz.shape[0])
