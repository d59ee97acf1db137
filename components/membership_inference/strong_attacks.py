"""Membership inference with reference models: LiRA and RMIA.

Both attacks compare the target model's output on an example with the outputs of K *reference models*
trained with the target's recipe on random halves of a population that contains the audited examples
(members and non-members of the target). ``ref_in_mask[k, i]`` says whether example ``i`` was in the
training set of reference model ``k`` (an "IN" reference for ``i``) or not ("OUT").
:mod:`privacy_audit.components.membership_inference.reference_models` trains such references and stores the matrix.

LiRA, the likelihood-ratio attack (Carlini, Chien, Nasr, Song, Terzis, Tramer, "Membership Inference
Attacks From First Principles", IEEE S&P 2022):
  signal: the logit-scaled confidence of the true class, phi = log(p_y / (1 - p_y))
  (:func:`logit_scaled_confidence`), which is close to Gaussian across training runs.
  For each example, Gaussians are fitted to its IN and OUT reference signals.
  - online:  score = log N(phi; mu_in, sigma_in^2) - log N(phi; mu_out, sigma_out^2)
  - offline: score = log Phi((phi - mu_out) / sigma_out), Phi the standard normal CDF: the one-sided
    test "how far above the OUT distribution", using OUT references only.
  - fixed variance: every example uses one global variance per kind (IN / OUT), the pooled
    within-example variance (see :func:`lira_scores`); the paper recommends it for few references.

RMIA, the robust membership inference attack (Zarifzadeh, Liu, Shokri, "Low-Cost High-Power Membership
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

Every score here is "higher = more likely a member"; measure them with
:func:`privacy_audit.components.membership_inference.metrics.attack_metrics`.

Pure numpy/scipy; imports no TensorFlow.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np
from scipy import special

from privacy_audit.components.membership_inference.data import MIN_PROB, cross_entropy_from_logits

#: Default floor on a fitted standard deviation (in logit-scaled-confidence units): a reference set whose
#: signals all agree (e.g. saturated float32 outputs) would otherwise give a zero variance and an
#: infinite score.
DEFAULT_MIN_STD = 1e-4


# ---------------------------------------------------------------------------------------------------------
# Per-example signals
# ---------------------------------------------------------------------------------------------------------

def _logits_and_labels(logits, labels) -> Tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim == 0:
        raise ValueError("logits must be an array of shape [..., C]")
    # Single-logit (sigmoid) binary outputs: [..., 1], or exactly the labels' shape.
    single = z.shape[-1] == 1 or z.shape == y.shape
    if z.shape[-1] == 1:
        z = z[..., 0]
    target_shape = z.shape if single else z.shape[:-1]
    try:
        y = np.broadcast_to(y, target_shape)
    except ValueError:
        raise ValueError(f"labels {np.shape(labels)} do not match logits {np.shape(logits)} (expected labels of "
                         f"shape {target_shape} or one that broadcasts to it)") from None
    if single:  # softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]
        z = np.stack([np.zeros_like(z), z], axis=-1)
    if z.shape[-1] < 2:
        raise ValueError(f"logits must have C >= 2 classes, got shape {np.shape(logits)}")
    if not np.issubdtype(y.dtype, np.integer):
        if y.dtype == np.bool_:
            y = y.astype(np.int64)
        elif not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or \
                not np.all(y == np.round(y)):
            raise ValueError("labels must be integer class indices")
    y = y.astype(np.int64)
    if (y < 0).any() or (y >= z.shape[-1]).any():
        raise ValueError(f"labels must be in [0, {z.shape[-1]})")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"logits contain {int((~np.isfinite(z)).sum())} non-finite values")
    return z, y


def logit_scaled_confidence(logits, labels) -> np.ndarray:
    """LiRA's signal phi = log(p_y / (1 - p_y)) of the true class, computed stably from logits.

    phi = z_y - logsumexp_{j != y} z_j (exact: p_y / (1 - p_y) = exp(z_y) / sum_{j != y} exp(z_j)), which
    stays finite and precise when p_y rounds to 1 (where log(1 - p_y) from probabilities would be -inf).

    Args:
      logits: [..., C] logits (e.g. [N, C] for one model, [K, N, C] for K models); or single logits of a
        sigmoid binary model, shaped [..., 1] or exactly like ``labels`` (label 1 = positive class).
      labels: [...] integer classes, or any shape that broadcasts to ``logits.shape[:-1]`` (e.g. [N] for
        [K, N, C] logits).
    Returns: [...] float64.
    """
    z, y = _logits_and_labels(logits, labels)
    z_y = np.take_along_axis(z, y[..., None], axis=-1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, y[..., None], -np.inf, axis=-1)
    return z_y - special.logsumexp(others, axis=-1)


def true_class_probability(logits, labels) -> np.ndarray:
    """p_y = softmax(logits)[y] (RMIA's Pr(x | theta)), shape ``logits.shape[:-1]``; same arguments as
    :func:`logit_scaled_confidence`. Computed as exp(-cross-entropy) with the project's stable loss."""
    z, y = _logits_and_labels(logits, labels)
    flat = cross_entropy_from_logits(z.reshape(-1, z.shape[-1]), y.reshape(-1))
    return np.exp(-flat).reshape(y.shape)


# ---------------------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------------------

def _vector(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must have shape [N], got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains {int((~np.isfinite(arr)).sum())} non-finite values")
    return arr


def _matrix(x, name: str, n: int) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1 and n >= 1 and arr.shape[0] == n:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != n or arr.shape[0] < 1:
        raise ValueError(f"{name} must have shape [K, {n}] (K >= 1 reference models), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains {int((~np.isfinite(arr)).sum())} non-finite values")
    return arr


def _mask(x, name: str, shape: Tuple[int, int]) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 1 and shape[0] == 1:
        arr = arr[None, :]
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)} like the reference signals, got {arr.shape}")
    if arr.dtype != np.bool_:
        if not np.all(np.isin(arr, (0, 1))):
            raise ValueError(f"{name} must be boolean (or 0/1)")
        arr = arr.astype(bool)
    return arr


# ---------------------------------------------------------------------------------------------------------
# LiRA
# ---------------------------------------------------------------------------------------------------------

def _gaussian_fit(signals: np.ndarray, mask: np.ndarray, ddof: int) -> Dict[str, np.ndarray]:
    """Per-example count, mean (NaN where count 0), variance (divisor count - ddof; NaN where count < 2)
    of the entries of ``signals`` [K, N] selected by ``mask`` [K, N]; plus the pooled variance."""
    count = mask.sum(axis=0)
    total = np.where(mask, signals, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        sq_dev = np.where(mask, (signals - np.where(count > 0, mean, 0.0)[None, :]) ** 2, 0.0).sum(axis=0)
        var = np.where(count >= 2, sq_dev / np.maximum(count - ddof, 1), np.nan)
    dof = np.where(count >= 2, count - ddof, 0).sum()
    if dof > 0:
        pooled = float(sq_dev[count >= 2].sum() / dof)
    elif mask.sum() >= 2:
        # No example has two references of this kind (e.g. K = 2 with one IN and one OUT each): the
        # variance of all of this kind's signals around their grand mean (it includes the between-example
        # spread, so it is wide: the attack is then conservative rather than over-confident).
        pooled = float(np.var(signals[mask], ddof=ddof))
    else:
        pooled = math.nan
    return {"count": count, "mean": mean, "var": var, "pooled_var": pooled}


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
    fit_in = _gaussian_fit(s, mask_in, ddof)
    fit_out = _gaussian_fit(s, ~mask_in, ddof)
    any_in, any_out = bool(mask_in.any()), bool((~mask_in).any())
    if not any_out:
        raise ValueError("LiRA needs OUT references: every reference model was trained on every example")
    if online and not any_in:
        raise ValueError("online LiRA needs IN references (ref_in_mask has no True entry); use online=False")

    both = (fit_in["count"] > 0) & (fit_out["count"] > 0)
    if both.any():
        shift = float(np.mean(fit_in["mean"][both] - fit_out["mean"][both]))
    elif any_in:
        shift = float(s[mask_in].mean() - s[~mask_in].mean())
    else:
        shift = 0.0  # offline with OUT references only: every example has an OUT mean
    mu_out = np.where(fit_out["count"] > 0, fit_out["mean"], fit_in["mean"] - shift)
    mu_in = np.where(fit_in["count"] > 0, fit_in["mean"], fit_out["mean"] + shift)

    def sigma(fit: Dict[str, np.ndarray]) -> np.ndarray:
        pooled = fit["pooled_var"]
        if math.isnan(pooled):
            other = fit_out if fit is fit_in else fit_in
            pooled = other["pooled_var"] if not math.isnan(other["pooled_var"]) else min_std ** 2
        var = np.full(n, pooled) if fixed_variance else np.where(fit["count"] >= 2, fit["var"], pooled)
        return np.maximum(np.sqrt(var), min_std)

    sigma_out = sigma(fit_out)
    if online:
        sigma_in = sigma(fit_in)
        score = _log_normal_pdf(x, mu_in, sigma_in) - _log_normal_pdf(x, mu_out, sigma_out)
    else:
        sigma_in = sigma(fit_in) if any_in else np.full(n, np.nan)
        score = special.log_ndtr((x - mu_out) / sigma_out)
    if not return_fit:
        return score
    fit = {"mu_in": mu_in, "sigma_in": sigma_in, "mu_out": mu_out, "sigma_out": sigma_out,
           "n_in": fit_in["count"], "n_out": fit_out["count"], "shift": shift,
           "pooled_sigma_in": math.sqrt(fit_in["pooled_var"]) if not math.isnan(fit_in["pooled_var"]) else None,
           "pooled_sigma_out": math.sqrt(fit_out["pooled_var"]) if not math.isnan(fit_out["pooled_var"]) else None}
    return score, fit


def _log_normal_pdf(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------------------------------------
# RMIA
# ---------------------------------------------------------------------------------------------------------

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

    pr_x = _reference_average(rp, in_mask, online, offline_a)
    pr_z = _reference_average(rpz, pop_mask, online, offline_a)
    log_rx = np.log(np.maximum(px, MIN_PROB)) - np.log(np.maximum(pr_x, MIN_PROB))
    log_rz = np.sort(np.log(np.maximum(pz, MIN_PROB)) - np.log(np.maximum(pr_z, MIN_PROB)))
    counts = np.searchsorted(log_rz, log_rx - math.log(gamma), side="right")
    return counts / float(zn)


# ---------------------------------------------------------------------------------------------------------
# From saved model outputs
# ---------------------------------------------------------------------------------------------------------

ATTACKS = ("lira", "rmia")


def score_with_references(target_logits, labels, ref_logits, in_mask, attack: str = "lira", *,
                          online: bool = True, fixed_variance: bool = False, gamma: float = 1.0,
                          offline_a: float = 0.3, population_mask=None,
                          ddof: int = 0, min_std: float = DEFAULT_MIN_STD) -> np.ndarray:
    """Membership scores of the population's examples from the target's and the references' logits.

    Args:
      target_logits: [M, C] the target model's logits on the population (its members and non-members).
      labels: [M] true classes.
      ref_logits: [K, M, C] the reference models' logits on the same examples, same order.
      in_mask: [K, M] bool, reference model k trained on example i.
      attack: "lira" (signal :func:`logit_scaled_confidence`; see :func:`lira_scores`) or "rmia"
        (signal :func:`true_class_probability`; see :func:`rmia_scores`).
      online, fixed_variance, ddof, min_std: LiRA options (``online`` also selects RMIA's online/offline mode).
      gamma, offline_a: RMIA options.
      population_mask: RMIA only: [M] bool selecting the population samples z among the M examples
        (e.g. examples known not to be the target's members). Default: all M. Since every x is compared
        with the same z set, the choice only changes the score's resolution (see module doc).
    Returns: [M] float64 scores, higher = more likely a member of the target's training set.
    """
    attack = attack.lower()
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    target_logits = np.asarray(target_logits, dtype=np.float64)
    ref_logits = np.asarray(ref_logits, dtype=np.float64)
    if ref_logits.ndim != target_logits.ndim + 1 or ref_logits.shape[1:] != target_logits.shape:
        raise ValueError(f"ref_logits must have shape [K, *target_logits.shape] = [K, {list(target_logits.shape)}], "
                         f"got {list(ref_logits.shape)}")
    if target_logits.ndim == 1:  # single-logit binary model: make the class axis explicit ([..., 1])
        target_logits, ref_logits = target_logits[:, None], ref_logits[..., None]
    m = target_logits.shape[0]
    labels = np.asarray(labels)
    if labels.shape != (m,):
        raise ValueError(f"labels must have shape [{m}], got {labels.shape}")
    if attack == "lira":
        return lira_scores(logit_scaled_confidence(target_logits, labels),
                           logit_scaled_confidence(ref_logits, labels), in_mask, online=online,
                           fixed_variance=fixed_variance, ddof=ddof, min_std=min_std)
    px = true_class_probability(target_logits, labels)
    rp = true_class_probability(ref_logits, labels)
    mask = _mask(in_mask, "in_mask", rp.shape)
    if population_mask is None:
        sel = np.ones(m, dtype=bool)
    else:
        sel = np.asarray(population_mask).astype(bool)
        if sel.shape != (m,) or not sel.any():
            raise ValueError(f"population_mask must be [{m}] bool with at least one True")
    return rmia_scores(px, rp, mask, px[sel], rp[:, sel], gamma=gamma, offline_a=offline_a, online=online,
                       population_in_mask=mask[:, sel])
