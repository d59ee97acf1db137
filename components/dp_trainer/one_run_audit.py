"""Privacy auditing with one training run (Steinke, Nasr, Jagielski, NeurIPS 2023; f-DP: Mahloujifar et al. 2024).

The audit checks the DP claim of a training run empirically. m *canaries* (examples the auditor
controls) are each included in the training set independently with probability 1/2; after training,
the auditor looks at the model, guesses "in" for some canaries and "out" for others (abstaining on the
rest), and counts the correct guesses. If the algorithm is (ε, δ)-DP, the guesses cannot be much better
than randomized response with accuracy e^ε / (1 + e^ε), so many correct guesses refute small ε.

Bound (the paper's main theorem for (ε, δ)-DP, with the tail computation of its Appendix D). Let
W be the number of correct guesses among r guesses, q = e^ε / (1 + e^ε), and
f(v) = P[Binomial(r, q) >= v]. If the training algorithm is (ε, δ)-DP with respect to adding or removing
one canary, then for every v

    P[W >= v]  <=  f(v) + 2 m δ · max_{i = 1..v} ( f(v - i) - f(v) ) / i      (=: p(ε))

where f(v - i) - f(v) = P[v - i <= Binomial(r, q) < v]. For δ = 0 this is the binomial tail alone.
Observing v correct guesses, every ε with p(ε) < 1 - confidence is rejected at that confidence, and
:func:`epsilon_lower_bound` returns the largest such ε (the supremum of the rejected set: since
(ε, δ)-DP implies (ε', δ)-DP for every ε' > ε, rejecting ε' also rejects every smaller ε, so the
rejected set is an interval [0, ε_lb) even where p is not monotone). Search: p is evaluated on a grid of
ε in [0, ε_max], where ε_max is where the binomial tail alone reaches 1 - confidence (above it p can
never be small enough), and the last grid cell where p crosses 1 - confidence is refined by bisection
to 1e-10. The paper's reference code instead bisects assuming p increases with ε; both agree whenever
it does (all cases in the tests).

Guessing (:func:`audit_from_scores`): "in" for the k_plus highest membership scores (e.g. minus the
loss), "out" for the k_minus lowest. When the counts are not given, a small grid of
(k_plus, k_minus) is searched and the best bound reported; to keep the stated confidence, each candidate
is evaluated at confidence 1 - (1 - confidence) / n_candidates (Bonferroni: the chance that any of them
overstates ε is at most 1 - confidence).

:func:`canary_audit` runs the whole procedure around a training function and compares the bound with
the accountant's ε: a bound above it means the DP training (or its accounting) is broken.

The f-DP bound (Mahloujifar, Melis, Chaudhuri, "Auditing f-Differential Privacy in One Run", 2024;
:func:`fdp_epsilon_lower_bound`) analyses the same guesses against a hypothesised trade-off curve rather
than the worst-case (ε, δ) curve: here the Gaussian curve of μ-GDP, with μ searched and the refuted μ
converted to ε at the audit's δ. It proves larger bounds from the same canaries; both are reported, and
the gate (``violated``) stays on the Steinke et al. bound, which assumes nothing about the curve's shape.

numpy/scipy only at import; TensorFlow is imported lazily by :func:`dp_training_fn`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import optimize, special, stats

DEFAULT_CONFIDENCE = 0.95
#: Fractions of m used as candidate guess counts when k_plus / k_minus are not given.
DEFAULT_GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
_GRID_POINTS = 129
_BISECTION_TOL = 1e-10
_MAX_EPSILON = 60.0  # logit(1 - 1e-26): beyond float64 resolution of q anyway
_MAX_MU = 40.0  # Φ(-20) ~ 3e-89: no finite set of guesses refutes more


# ---------------------------------------------------------------------------------------------------------
# The bound
# ---------------------------------------------------------------------------------------------------------

def _check_counts(m: int, r: int, v: int) -> Tuple[int, int, int]:
    for name, val in (("m", m), ("r", r), ("v", v)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {val!r}")
    m, r, v = int(m), int(r), int(v)
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v (correct guesses) <= r (guesses) <= m (canaries); got v={v}, r={r}, m={m}")
    return m, r, v


def _check_delta_confidence(delta: float, confidence: Optional[float] = None) -> None:
    if not (0.0 <= delta <= 1.0):
        raise ValueError(f"delta must be in [0, 1], got {delta}")
    if confidence is not None and not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def p_value(m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """Upper bound on P[at least v of r guesses correct] for an (ε, δ)-DP algorithm with m canaries
    (see the module doc for the formula); in [0, 1]."""
    m, r, v = _check_counts(m, r, v)
    _check_delta_confidence(delta)
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    return _p_value(m, r, v, float(epsilon), float(delta))


def _p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    if v == 0:
        return 1.0
    q = float(special.expit(epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))  # f(v) = P[W >= v]
    if delta == 0.0:
        return min(tail, 1.0)
    # P[W = v-1], P[W = v-2], ..., P[W = 0]; cumulative sums are P[v-i <= W < v] for i = 1..v.
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)
    worst = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(tail + 2.0 * m * delta * worst, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float = 0.0,
                        confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The largest ε refuted at ``confidence`` by v correct guesses out of r, with m canaries, for
    (ε, δ)-DP (0 when nothing is refuted). See the module doc.

    Args:
      m: number of canaries, each included independently with probability 1/2.
      r: number of guesses made (abstentions excluded), r <= m.
      v: number of correct guesses, v <= r.
      delta: the δ of the DP claim being tested.
      confidence: e.g. 0.95: with probability >= 0.95 over the canaries' inclusion and the training
        randomness, a truly (ε, δ)-DP algorithm gives a bound <= ε.
    """
    m, r, v = _check_counts(m, r, v)
    _check_delta_confidence(delta, confidence)
    beta = 1.0 - confidence
    if v == 0:
        return 0.0
    # Above eps_max the binomial tail alone is >= beta (P[Bin(r, q) >= v] = I_q(v, r - v + 1)).
    q_max = float(special.betaincinv(v, r - v + 1, beta))
    eps_max = min(float(special.logit(q_max)) if q_max < 1.0 else _MAX_EPSILON, _MAX_EPSILON)
    if eps_max <= 0.0:
        return 0.0
    grid = np.linspace(0.0, eps_max, _GRID_POINTS)
    below = [j for j, e in enumerate(grid) if _p_value(m, r, v, float(e), delta) < beta]
    if not below:
        return 0.0
    lo = float(grid[below[-1]])
    if below[-1] == len(grid) - 1:
        return lo
    hi = float(grid[below[-1] + 1])
    while hi - lo > _BISECTION_TOL:
        mid = 0.5 * (lo + hi)
        if _p_value(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


# ---------------------------------------------------------------------------------------------------------
# The f-DP bound (Mahloujifar, Melis, Chaudhuri 2024)
# ---------------------------------------------------------------------------------------------------------

def gdp_delta(epsilon: float, mu: float) -> float:
    """δ(ε) of μ-Gaussian DP (Dong, Roth, Su 2019, Cor. 2.13; the Gaussian mechanism of sensitivity 1 and
    noise 1/μ): Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)."""
    if mu <= 0.0:
        return 0.0
    return float(special.ndtr(-epsilon / mu + mu / 2.0) - math.exp(epsilon) * special.ndtr(-epsilon / mu - mu / 2.0))


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest ε with μ-GDP ⊂ (ε, δ)-DP, i.e. gdp_delta(ε, μ) = δ (0 when δ(0) <= δ already)."""
    if mu <= 0.0 or gdp_delta(0.0, mu) <= delta:
        return 0.0
    hi = 1.0
    while gdp_delta(hi, mu) > delta:
        hi *= 2.0
    return float(optimize.brentq(lambda e: gdp_delta(e, mu) - delta, 0.0, hi, xtol=1e-12))


def fdp_rejects(m: int, r: int, v: int, mu: float, confidence: float = DEFAULT_CONFIDENCE) -> bool:
    """Whether v correct of r guesses on m canaries refute, at ``confidence``, that training is μ-GDP
    (trade-off curve f(α) = Φ(Φ⁻¹(1 - α) - μ)).

    The numerical audit of Mahloujifar et al. (2024, Sec. 4): with τ = 1 - confidence, start from the
    masses r_v = τ v / m (correct) and h_v = τ (r - v) / m (wrong), and for i = v - 1, ..., 0 raise the
    wrong-guess mass to what f-DP forces for the correct-guess mass, h_i = max(h_{i+1}, g(r_{i+1})) with
    g(x) = Φ(Φ⁻¹(x) - μ) (the inverse of the f-DP blow-up x -> 1 - f(x)), and carry the increase to the
    correct side, r_i = min(r_{i+1} + i / (r - i) · (h_i - h_{i+1}), 1). The claim is refuted when the
    masses cannot fit into the r guesses: r_0 + h_0 > r / m. (Once h stops growing it never grows again,
    so the loop stops there.)
    """
    tau = 1.0 - confidence
    corr, wrong = tau * v / m, tau * (r - v) / m
    for i in range(v - 1, -1, -1):
        raised = max(wrong, float(special.ndtr(special.ndtri(min(corr, 1.0)) - mu)))
        if raised == wrong:
            break
        corr = min(corr + i / (r - i) * (raised - wrong), 1.0)
        wrong = raised
    return corr + wrong > r / m


def fdp_epsilon_lower_bound(m: int, r: int, v: int, delta: float,
                            confidence: float = DEFAULT_CONFIDENCE) -> Dict[str, float]:
    """The f-DP one-run bound: the largest μ whose Gaussian trade-off curve the guesses refute
    (:func:`fdp_rejects`, bisection on μ, which only refutes less as μ grows), and the ε that this μ-GDP
    curve has at ``delta`` (:func:`gdp_epsilon`): the run is not (ε, δ)-DP in the way a Gaussian mechanism
    with that (ε, δ) is. Returns {"mu_lower_bound", "epsilon_lower_bound"} (0, 0 when nothing is refuted).

    The hypothesis is a Gaussian-shaped trade-off curve (as DP-SGD's is, by the central limit theorem
    for many steps), tighter than the worst-case (ε, δ) curve of :func:`epsilon_lower_bound`; that is why
    the same guesses prove more."""
    m, r, v = _check_counts(m, r, v)
    _check_delta_confidence(delta, confidence)
    if not delta > 0.0:
        raise ValueError("the f-DP bound converts μ to ε at δ > 0; got delta = 0")
    if v == 0 or not fdp_rejects(m, r, v, 1e-9, confidence):
        return {"mu_lower_bound": 0.0, "epsilon_lower_bound": 0.0}
    lo, hi = 1e-9, _MAX_MU
    if fdp_rejects(m, r, v, hi, confidence):
        lo = hi
    else:
        while hi - lo > 1e-7:
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if fdp_rejects(m, r, v, mid, confidence) else (lo, mid)
    return {"mu_lower_bound": float(lo), "epsilon_lower_bound": gdp_epsilon(lo, delta)}


# ---------------------------------------------------------------------------------------------------------
# Guessing from scores
# ---------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class OneRunAudit:
    """Outcome of :func:`audit_from_scores`.

    Attributes:
      epsilon_lower_bound: the best bound over the candidates (each at ``per_candidate_confidence``).
      k_plus, k_minus, guesses, correct: the candidate achieving it (guesses = k_plus + k_minus = r,
        correct = v).
      m, delta, confidence: the audit's settings; per_candidate_confidence = 1 - (1 - confidence) / n.
      candidates: every candidate as {"k_plus", "k_minus", "guesses", "correct", "epsilon_lower_bound",
        "fdp_epsilon_lower_bound"}.
      fdp_epsilon_lower_bound, fdp_mu_lower_bound: the f-DP bound (:func:`fdp_epsilon_lower_bound`) of the
        same candidates at the same per-candidate confidence, best over them (None when delta = 0).
    """
    epsilon_lower_bound: float
    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    m: int
    delta: float
    confidence: float
    per_candidate_confidence: float
    candidates: List[Dict[str, Any]]
    fdp_epsilon_lower_bound: Optional[float] = None
    fdp_mu_lower_bound: Optional[float] = None

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def default_guess_counts(m: int, fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS) -> List[Tuple[int, int]]:
    """Candidate (k_plus, k_minus) pairs: for k = round(f m) (at least 1) over ``fractions``, guessing only
    "in" (k, 0) and both ways (k, k) when 2k <= m."""
    ks = sorted({max(1, int(round(f * m))) for f in fractions if f > 0})
    pairs: List[Tuple[int, int]] = []
    for k in ks:
        if k <= m and (k, 0) not in pairs:
            pairs.append((k, 0))
        if 2 * k <= m and (k, k) not in pairs:
            pairs.append((k, k))
    return pairs


def _as_list(k: Union[None, int, Sequence[int]]) -> Optional[List[int]]:
    if k is None:
        return None
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
        return [int(k)]
    return [int(x) for x in k]


def audit_from_scores(scores, included, k_plus: Union[None, int, Sequence[int]] = None,
                      k_minus: Union[None, int, Sequence[int]] = None, *, delta: float = 0.0,
                      confidence: float = DEFAULT_CONFIDENCE, m: Optional[int] = None,
                      seed: int = 0) -> OneRunAudit:
    """One-run audit from per-canary membership scores.

    Args:
      scores: [n] scores, higher = more likely included (e.g. minus the loss).
      included: [n] bool, whether each canary was in the training set (drawn with probability 1/2).
      k_plus, k_minus: guess "in" for the k_plus highest scores and "out" for the k_minus lowest.
        Both ints: that single choice, at ``confidence``. Lists (or None for the default grid of
        :func:`default_guess_counts`): every pair of the given lists (if one is None, it is 0 when the
        other is given), each at the Bonferroni-adjusted confidence; the best bound is reported.
      delta: δ of the DP claim.
      confidence: overall confidence of the reported bound.
      m: number of randomized canaries (default n; larger when only some were scored).
      seed: ties between equal scores are broken by a seeded random order, never by input order.
    """
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included)
    if s.ndim != 1 or inc.shape != s.shape:
        raise ValueError(f"scores and included must both have shape [n]; got {s.shape} and {inc.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores contain {int((~np.isfinite(s)).sum())} non-finite values")
    inc = inc.astype(bool)
    n = s.shape[0]
    m = n if m is None else int(m)
    if m < n:
        raise ValueError(f"m ({m}) must be at least the number of scored canaries ({n})")
    _check_delta_confidence(delta, confidence)

    kp, km = _as_list(k_plus), _as_list(k_minus)
    if kp is None and km is None:
        pairs = default_guess_counts(n)
    else:
        pairs = [(a, b) for a in (kp if kp is not None else [0]) for b in (km if km is not None else [0])]
    pairs = [(a, b) for a, b in pairs if a >= 0 and b >= 0 and 0 < a + b <= n]
    if not pairs:
        raise ValueError(f"no valid (k_plus, k_minus): need k_plus, k_minus >= 0 and 0 < k_plus + k_minus <= {n}")
    per_conf = 1.0 - (1.0 - confidence) / len(pairs)

    rng = np.random.default_rng(seed)
    tiebreak = rng.permutation(n)
    order = np.lexsort((tiebreak, -s))  # highest score first; equal scores in random order
    inc_sorted = inc[order]
    correct_top = np.concatenate([[0], np.cumsum(inc_sorted)])              # included among the top k
    correct_bottom = np.concatenate([[0], np.cumsum(~inc_sorted[::-1])])    # excluded among the bottom k
    candidates: List[Dict[str, Any]] = []
    for a, b in pairs:
        v = int(correct_top[a] + correct_bottom[b])
        eps = epsilon_lower_bound(m, a + b, v, delta, per_conf)
        fdp = fdp_epsilon_lower_bound(m, a + b, v, delta, per_conf) if delta > 0 else None
        candidates.append({"k_plus": a, "k_minus": b, "guesses": a + b, "correct": v, "epsilon_lower_bound": eps,
                           "fdp_epsilon_lower_bound": None if fdp is None else fdp["epsilon_lower_bound"],
                           "fdp_mu_lower_bound": None if fdp is None else fdp["mu_lower_bound"]})
    best = max(candidates, key=lambda c: c["epsilon_lower_bound"])
    best_fdp = max(candidates, key=lambda c: c["fdp_epsilon_lower_bound"] or 0.0)
    return OneRunAudit(epsilon_lower_bound=best["epsilon_lower_bound"], k_plus=best["k_plus"],
                       k_minus=best["k_minus"], guesses=best["guesses"], correct=best["correct"], m=m,
                       delta=float(delta), confidence=float(confidence), per_candidate_confidence=per_conf,
                       candidates=candidates, fdp_epsilon_lower_bound=best_fdp["fdp_epsilon_lower_bound"],
                       fdp_mu_lower_bound=best_fdp["fdp_mu_lower_bound"])


# ---------------------------------------------------------------------------------------------------------
# Canary audit of a training function
# ---------------------------------------------------------------------------------------------------------

LogitsFn = Callable[[np.ndarray], Any]
TrainFn = Callable[[np.ndarray, np.ndarray], Union[LogitsFn, Tuple[LogitsFn, float]]]


@dataclasses.dataclass
class CanaryAudit:
    """Outcome of :func:`canary_audit`.

    ``violated`` is True when the empirical lower bound exceeds the accountant's ε: the run leaked more
    than its DP claim allows, so the DP training or its accounting is broken (this happens by chance
    with probability at most 1 - confidence for a correct implementation).
    """
    epsilon_lower_bound: float
    accountant_epsilon: float
    delta: float
    violated: bool
    audit: OneRunAudit
    n_canaries: int
    n_included: int
    n_training_examples: int
    included: np.ndarray
    scores: np.ndarray
    message: str

    def to_json(self) -> Dict[str, Any]:
        """JSON-ready summary (without the per-canary arrays; ε = ∞ is written as null)."""
        eps = self.accountant_epsilon
        return {"epsilon_lower_bound": self.epsilon_lower_bound,
                "fdp_epsilon_lower_bound": self.audit.fdp_epsilon_lower_bound,
                "fdp_mu_lower_bound": self.audit.fdp_mu_lower_bound,
                "accountant_epsilon": eps if math.isfinite(eps) else None, "delta": self.delta,
                "violated": bool(self.violated), "n_canaries": self.n_canaries, "n_included": self.n_included,
                "n_training_examples": self.n_training_examples, "message": self.message,
                "audit": self.audit.to_json()}


def mislabeled_canaries(x_pool, y_pool, m: int, num_classes: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """m canaries copied from ``x_pool`` (distinct rows, seeded) with a uniformly random *wrong* label:
    black-box canaries that a model fits only by memorising them. Returns ``(x [m, ...], y [m])``."""
    x_pool = np.asarray(x_pool)
    y_pool = np.asarray(y_pool).astype(np.int64)
    if m > len(x_pool):
        raise ValueError(f"m ({m}) exceeds the pool size ({len(x_pool)})")
    if num_classes < 2:
        raise ValueError("mislabelled canaries need at least 2 classes")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xCA]))
    idx = rng.choice(len(x_pool), size=m, replace=False)
    shift = rng.integers(1, num_classes, size=m)
    return x_pool[idx].copy(), (y_pool[idx] + shift) % num_classes


def canary_audit(train_fn: TrainFn, x_train, y_train, x_canaries, y_canaries, *,
                 epsilon: Union[None, float, Callable[[int], float]] = None, delta: float,
                 seed: int = 0, confidence: float = DEFAULT_CONFIDENCE,
                 k_plus: Union[None, int, Sequence[int]] = None,
                 k_minus: Union[None, int, Sequence[int]] = None) -> CanaryAudit:
    """Inserts canaries with probability 1/2 each, trains once, and audits the DP claim.

    Args:
      train_fn: ``(x, y) -> logits_fn`` or ``(x, y) -> (logits_fn, accountant_epsilon)``; trains on the
        given set (``logits_fn(x) -> [n, C]`` logits; a Keras model works). :func:`dp_training_fn`
        builds one for the project's DP-SGD loop.
      x_train, y_train: the ordinary training data ([N, ...], [N]); always included.
      x_canaries, y_canaries: the m canaries ([m, ...], [m]); each included independently with
        probability 1/2 (seeded by ``seed``), inserted at random positions.
      epsilon: the accountant's ε claimed for the run: a number, or ``f(n_training_examples) -> ε``;
        None: the ε returned by ``train_fn``.
      delta: δ of the claim (use the ledger's δ).
      confidence, k_plus, k_minus: see :func:`audit_from_scores`.
    Score of a canary: minus its cross-entropy loss under the trained model.
    """
    from privacy_audit.components.common.losses import cross_entropy_from_logits

    x_train, y_train = np.asarray(x_train), np.asarray(y_train)
    x_can, y_can = np.asarray(x_canaries), np.asarray(y_canaries)
    if len(x_train) != len(y_train) or len(x_can) != len(y_can):
        raise ValueError("x_train/y_train and x_canaries/y_canaries must have matching lengths")
    if x_train.shape[1:] != x_can.shape[1:]:
        raise ValueError(f"canaries have input shape {x_can.shape[1:]}, the training data {x_train.shape[1:]}")
    m = len(y_can)
    if m < 2:
        raise ValueError("a one-run audit needs canaries (m >= 2; hundreds for a useful bound)")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x0A]))
    included = rng.random(m) < 0.5
    x_all = np.concatenate([x_train, x_can[included]])
    y_all = np.concatenate([y_train, y_can[included]])
    perm = rng.permutation(len(y_all))
    x_all, y_all = x_all[perm], y_all[perm]

    out = train_fn(x_all, y_all)
    returned_eps = None
    if isinstance(out, tuple):
        logits_fn, returned_eps = out
    else:
        logits_fn = out
    if epsilon is None:
        if returned_eps is None:
            raise ValueError("give epsilon (the accountant's ε) or a train_fn that returns (logits_fn, ε)")
        claimed = float(returned_eps)
    elif callable(epsilon):
        claimed = float(epsilon(len(y_all)))
    else:
        claimed = float(epsilon)
    logits = np.asarray(logits_fn(x_can), dtype=np.float64)
    scores = -cross_entropy_from_logits(logits, y_can)
    audit = audit_from_scores(scores, included, k_plus, k_minus, delta=delta, confidence=confidence, seed=seed)
    # The gate uses Steinke et al.'s bound (valid for any (ε, δ)-DP algorithm); the f-DP bound assumes a
    # Gaussian-shaped trade-off curve and is reported beside it.
    violated = audit.epsilon_lower_bound > claimed
    if violated:
        message = (f"the DP training is broken: the one-run audit proves ε >= {audit.epsilon_lower_bound:.3f} "
                   f"(at {confidence:.0%} confidence, δ={delta:g}) but the accountant claims ε = {claimed:.3f}")
    else:
        message = (f"consistent: audit lower bound ε >= {audit.epsilon_lower_bound:.3f} does not exceed the "
                   f"accountant's ε = {claimed:.3f}")
    if audit.fdp_epsilon_lower_bound is not None:
        message += f" (f-DP audit of the same canaries: ε >= {audit.fdp_epsilon_lower_bound:.3f})"
    return CanaryAudit(epsilon_lower_bound=audit.epsilon_lower_bound, accountant_epsilon=claimed,
                       delta=float(delta), violated=bool(violated), audit=audit, n_canaries=m,
                       n_included=int(included.sum()), n_training_examples=int(len(y_all)),
                       included=included, scores=scores, message=message)


def dp_training_fn(build_model_fn: Callable[[], Any], *, epochs: int, batch_size: int, learning_rate: float,
                   l2_norm_clip: float, noise_multiplier: float, delta: float, optimizer: str = "sgd",
                   lr_schedule: str = "constant", fit_kwargs: Optional[Dict[str, Any]] = None,
                   sampling: str = "poisson", seed: int = 0, accountant: str = "rdp",
                   claimed_noise_multiplier: Optional[float] = None) -> TrainFn:
    """A ``train_fn`` for :func:`canary_audit` using :func:`privacy_audit.components.dp_trainer.training.fit`.

    It returns ``(logits_fn, ε)`` with ε from the accountant for the steps and sampling probability
    that really ran, computed for ``claimed_noise_multiplier`` when given (to test a run whose claim
    differs from what it does, e.g. noise_multiplier=0 claiming σ = 1), else for ``noise_multiplier``.
    ``build_model_fn() -> keras.Model`` is called after ``keras.utils.set_random_seed(seed)``.
    """
    from privacy_audit.components.dp_trainer import accounting

    sigma_claim = noise_multiplier if claimed_noise_multiplier is None else claimed_noise_multiplier

    def train(x: np.ndarray, y: np.ndarray):
        import keras

        from privacy_audit.components.common.optimizers import make_optimizer
        from privacy_audit.components.dp_trainer import training

        keras.utils.set_random_seed(int(seed))
        model = build_model_fn()
        steps = epochs * max(1, math.ceil(len(y) / batch_size))  # the Poisson and shuffle samplers' steps/epoch
        opt = make_optimizer(optimizer, learning_rate, lr_schedule, steps)
        result = training.fit(model, np.asarray(x, dtype=np.float32), y, epochs=epochs,
                              expected_batch_size=batch_size, optimizer=opt, l2_norm_clip=l2_norm_clip,
                              noise_multiplier=noise_multiplier, private=True, sampling=sampling, seed=seed,
                              verbose=False, **(fit_kwargs or {}))
        if sigma_claim == 0:
            eps = math.inf
        else:
            event = accounting.dp_sgd_event(result.sampling_probability, float(sigma_claim), result.steps)
            eps = accounting.epsilon_for_events([event], delta, accountant)

        def logits_fn(xc: np.ndarray) -> np.ndarray:
            xc = np.asarray(xc, dtype=np.float32)
            return np.concatenate([np.asarray(model(xc[i:i + 1024], training=False))
                                   for i in range(0, len(xc), 1024)])
        return logits_fn, eps

    return train
