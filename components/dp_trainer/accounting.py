"""Privacy accounting for DP-SGD with `dp-accounting`, and the privacy ledger.

The ledger records what the trainer really ran (Poisson-sampled Gaussian steps); ε is always derived
from those events by an accountant, never stored as a separate truth.

Conventions: add-or-remove-one neighbouring datasets, Poisson sampling with probability
q = expected_batch_size / n_examples, Gaussian noise with standard deviation
noise_multiplier * l2_norm_clip on the sum of clipped per-example gradients.

Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially Private Learning with Adaptive
Clipping"; :func:`adaptive_noise_split`): each step releases two Gaussian sums of the same Poisson sample, the
clipped gradients (sensitivity C, noise std σ_Δ·C) and the count of unclipped examples, centred
(Σ_i (1[‖g_i‖ ≤ C] − 1/2): sensitivity 1/2, noise std σ_b, so noise multiplier 2σ_b). Together they are one
Gaussian mechanism on the concatenated vector with multiplier z, z^-2 = σ_Δ^-2 + (2σ_b)^-2 (the paper's
Theorem 1), so the step is recorded as ONE Poisson-sampled event whose Gaussian is the composition of the two:
``PoissonSampled(q, Composed([Gaussian(σ_Δ), Gaussian(2σ_b)]))``, which dp-accounting (RDP) and our PLD both
account as ``PoissonSampled(q, Gaussian(z))``. The user's noise multiplier (or the one calibrated for a
target ε) is that z: adaptive clipping costs the same ε as fixed clipping at z, and the gradient gets
σ_Δ = (z^-2 − (2σ_b)^-2)^(-1/2) > z. Recording the two as two independently Poisson-sampled events would be
wrong: both sums read the same sample, and the RDP of a subsampled Gaussian is superadditive in 1/σ², so two
separately sampled events would understate ε.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from typing import Any, Dict, List, Mapping, Optional

import dp_accounting
from dp_accounting import pld, rdp

ACCOUNTANTS = ("rdp", "pld")
LEDGER_SCHEMA_VERSION = 1

# Orders as in TF Privacy's compute_dp_sgd_privacy (fine grid near 1, then integers, then a few large
# ones) so that our RDP figures are comparable with published ones.
RDP_ORDERS = ([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512])
# 1e-4 reproduces published PLD figures to 3 decimals (2.382 for q=256/60000, σ=1.1, 60 epochs) in ~1 s.
PLD_DISCRETIZATION = 1e-4
# dp-accounting's PLD lives on a dense grid of privacy-loss values PLD_DISCRETIZATION apart. Building one
# step's grid runs a Python loop (~40 µs a point here), composing it runs an FFT over the composed grid
# (~2 µs and at most ~64 bytes a point at its peak). Small σ widens a step's loss range (~1/(2σ²)) and many
# steps widen the composition, up to hours of work or allocations of PiB. The rule: PLD runs only while
# PLD_STEP_POINT_WORK × (step grid points) + (composed grid points) <= PLD_MAX_WORK, sizes computed before
# anything is allocated (MNIST's 60 epochs: 0.97e6); past it ε comes from RDP with a note. A calibration
# (noise multiplier for a target ε) shares one such budget over all the ε it evaluates. So every accountant
# call answers within seconds and a few hundred MB (benchmarks/accountant_bounds.py measures it).
PLD_STEP_POINT_WORK = 20
PLD_MAX_WORK = 1_200_000
# dp-accounting's default tail mass truncated when a PLD is composed with itself.
_PLD_TAIL_MASS_TRUNCATION = 1e-15


class PLDTooLargeError(Exception):
    """The PLD accountant's work for these settings would exceed PLD_MAX_WORK (see there)."""


class AccountantFallbackWarning(UserWarning):
    """PLD was asked for but its grid would be too large: ε comes from RDP (a valid, looser upper bound)."""


def _is_number(v) -> bool:
    # numbers.Real takes numpy's scalars too; a bool is a number to Python but never a count or a rate here.
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and type(v).__name__ != "bool_"


def _check_int(name: str, value, lo: int) -> None:
    if not _is_number(value) or not math.isfinite(value) or value != int(value) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


def validate_dp_params(*, n_examples: Optional[int] = None, batch_size: Optional[int] = None,
                       noise_multiplier: Optional[float] = None, l2_norm_clip: Optional[float] = None,
                       delta: Optional[float] = None, epochs: Optional[float] = None,
                       target_epsilon: Optional[float] = None, steps: Optional[int] = None) -> None:
    """Raises ValueError naming the first invalid DP parameter (NaN and ±inf included); δ ≥ 1/n is refused."""
    if n_examples is not None:
        if not _is_number(n_examples) or n_examples <= 0:
            raise ValueError(f"the training split has no examples (n_examples={n_examples!r})")
        _check_int("n_examples", n_examples, 1)
    if batch_size is not None:
        _check_int("batch_size", batch_size, 1)
        if n_examples is not None and batch_size > n_examples:
            raise ValueError(f"batch_size {batch_size} is larger than the number of training examples "
                             f"{n_examples}")
    if noise_multiplier is not None and (not _is_number(noise_multiplier) or not math.isfinite(noise_multiplier)
                                         or noise_multiplier < 0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if l2_norm_clip is not None and (not _is_number(l2_norm_clip) or not math.isfinite(l2_norm_clip)
                                     or l2_norm_clip <= 0):
        raise ValueError(f"l2_norm_clip must be a finite number > 0, got {l2_norm_clip!r}")
    if delta is not None:
        check_delta(delta, n_examples)
    if epochs is not None and (not _is_number(epochs) or not math.isfinite(epochs) or epochs <= 0):
        raise ValueError(f"epochs must be a finite number > 0, got {epochs!r}")
    if steps is not None:
        _check_int("steps", steps, 0)
    if target_epsilon is not None and (not _is_number(target_epsilon) or not math.isfinite(target_epsilon)
                                       or target_epsilon <= 0):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")


def check_delta(delta: float, n_examples: Optional[int] = None) -> None:
    """Raises ValueError unless 0 < δ < 1 and, given the training set size n, δ < 1/n.

    Why δ < 1/n: (ε, δ)-DP allows a mechanism that releases each training example outright with probability
    δ; with δ ≥ 1/n that is about one whole example of every training set, which is no guarantee at all.
    Guidance asks for δ orders of magnitude below 1/n (TF Privacy "1e-7 or so"; 1/n^1.1 or less), hence
    :func:`default_delta`.
    """
    if not _is_number(delta) or not (0 < delta < 1):
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
    if n_examples is not None and delta >= 1.0 / n_examples:
        raise ValueError(f"delta={delta:g} is not below 1/N = 1/{n_examples} = {1.0 / n_examples:.3g}: (ε, δ)-DP "
                         f"with δ >= 1/N allows releasing about one training example outright, so it guarantees "
                         f"nothing; use delta <= {default_delta(n_examples):g} (the default, the largest power of "
                         f"ten not above 1/N^1.1) or smaller")


def default_delta(n_examples: int) -> float:
    """The default δ for n training examples: the largest power of ten not above 1/n^1.1 (924 → 1e-4,
    60,000 → 1e-6), well below 1/n as DP guidance asks (see :func:`check_delta`); for n = 1, 0.1."""
    if not _is_number(n_examples) or n_examples <= 0:
        raise ValueError(f"n_examples must be positive, got {n_examples!r}")
    # The tolerance keeps exact powers (n = 10^10: 1/n^1.1 = 1e-11) from rounding down one decade.
    exponent = math.floor(-1.1 * math.log10(n_examples) + 1e-9)
    return 10.0 ** min(exponent, -1)


def steps_for_epochs(n_examples: int, batch_size: int, epochs: float) -> int:
    """Number of Poisson-sampled steps for ``epochs`` passes: ceil(epochs * n / batch_size)."""
    validate_dp_params(n_examples=n_examples, batch_size=batch_size, epochs=epochs)
    steps = epochs * n_examples / batch_size
    if not math.isfinite(steps):
        raise ValueError(f"epochs={epochs:g} x n={n_examples} / batch_size={batch_size} steps is too large to count")
    return int(math.ceil(steps))


def dp_sgd_event(sampling_probability: float, noise_multiplier: float, steps: int) -> dp_accounting.DpEvent:
    """The DpEvent of ``steps`` Poisson-sampled Gaussian steps."""
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(sampling_probability,
                                            dp_accounting.GaussianDpEvent(noise_multiplier)),
        int(steps))


# ------------------------------------------------------------------------------------- adaptive clipping

#: The paper's defaults (Andrew et al. 2021): the median of the per-example norms, geometric step η_C = 0.2,
#: and a count noise std σ_b of 1/20 of the expected batch size (so the noisy unclipped fraction has std 0.05).
DEFAULT_TARGET_UNCLIPPED_QUANTILE = 0.5
DEFAULT_CLIP_LEARNING_RATE = 0.2
DEFAULT_COUNT_STDDEV_PER_EXAMPLE = 1.0 / 20.0


def validate_adaptive_clipping(*, target_unclipped_quantile, clip_learning_rate,
                               clipped_count_stddev=None) -> None:
    """Raises ValueError naming the first invalid adaptive-clipping setting and its allowed range.

    Args:
      target_unclipped_quantile: γ, the share of per-example gradients left unclipped that C aims for; in (0, 1).
      clip_learning_rate: η_C >= 0 of the geometric update C ← C·exp(−η_C (b − γ)) (0 keeps C fixed).
      clipped_count_stddev: σ_b > 0, the noise std on the count of unclipped examples (None: the default,
        expected_batch_size / 20).
    """
    q = target_unclipped_quantile
    if not _is_number(q) or not math.isfinite(q) or not 0 < q < 1:
        raise ValueError(f"target_unclipped_quantile must be a number in (0, 1) (the share of per-example "
                         f"gradients left unclipped, e.g. 0.5 for the median), got {q!r}")
    lr = clip_learning_rate
    if not _is_number(lr) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"clip_learning_rate must be a finite number >= 0 (η_C of the geometric update of the "
                         f"clip norm, e.g. 0.2), got {lr!r}")
    s = clipped_count_stddev
    if s is not None and (not _is_number(s) or not math.isfinite(s) or s <= 0):
        raise ValueError(f"clipped_count_stddev must be a finite number > 0 (σ_b, the noise std on the count of "
                         f"unclipped examples; default expected_batch_size / 20), got {s!r}")


def default_clipped_count_stddev(expected_batch_size: float) -> float:
    """σ_b when not given: expected_batch_size / 20 (the paper's choice)."""
    return float(expected_batch_size) * DEFAULT_COUNT_STDDEV_PER_EXAMPLE


def adaptive_noise_split(noise_multiplier: float, clipped_count_stddev: float) -> tuple:
    """(σ_Δ, 2σ_b): the gradient's and the centred count's noise multipliers of one adaptive-clipping step
    whose composition is one Gaussian of multiplier z = ``noise_multiplier`` (Andrew et al. 2021, Theorem 1):
    σ_Δ = (z^-2 − (2σ_b)^-2)^(-1/2). z = 0 (no noise, ε = ∞) gives σ_Δ = 0.

    Raises ValueError when 2σ_b <= z: the count alone would then spend the whole step's budget.
    """
    z, sb = float(noise_multiplier), float(clipped_count_stddev)
    validate_dp_params(noise_multiplier=z)
    validate_adaptive_clipping(target_unclipped_quantile=0.5, clip_learning_rate=0.0, clipped_count_stddev=sb)
    count = 2.0 * sb
    if z == 0:
        return 0.0, count
    if count <= z:
        raise ValueError(
            f"clipped_count_stddev must be above noise_multiplier / 2 = {z / 2:.4g} for adaptive clipping, got "
            f"{sb:g}: the gradient's noise multiplier σ_Δ = (z^-2 - (2σ_b)^-2)^(-1/2) is undefined otherwise "
            f"(the count would spend the whole step's privacy budget). Use e.g. clipped_count_stddev={2 * z:.3g}, "
            f"or leave it unset (expected_batch_size / 20) with a larger batch")
    return float((z ** -2 - count ** -2) ** -0.5), count


def adaptive_step_event(sampling_probability: float, gradient_noise_multiplier: float,
                        count_noise_multiplier: float) -> dp_accounting.DpEvent:
    """One adaptive-clipping step: the two Gaussian sums of one Poisson sample, composed inside the sampling."""
    return dp_accounting.PoissonSampledDpEvent(
        sampling_probability, dp_accounting.ComposedDpEvent([
            dp_accounting.GaussianDpEvent(gradient_noise_multiplier),
            dp_accounting.GaussianDpEvent(count_noise_multiplier)]))


def make_accountant(accountant: str = "rdp"):
    """A fresh dp-accounting accountant: ``rdp`` (RDP, TF Privacy's orders) or ``pld``."""
    if accountant == "rdp":
        return rdp.RdpAccountant(RDP_ORDERS)
    if accountant == "pld":
        return pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")


def _pld_step_points(q: float, sigma: float) -> int:
    """Grid points of one step's PLD (the wider of its remove and add halves), from the loss range alone."""
    from dp_accounting.pld import privacy_loss_mechanism as plm

    points = 0
    for adjacency in (plm.AdjacencyType.REMOVE, plm.AdjacencyType.ADD):
        bounds = plm.GaussianPrivacyLoss(sigma, sampling_prob=q, adjacency_type=adjacency).connect_dots_bounds()
        width = (bounds.epsilon_upper - bounds.epsilon_lower) / PLD_DISCRETIZATION
        points = max(points, int(min(width, 1e18)) + 2 if math.isfinite(width) else 10 ** 18)
    return points


def _pld_composed_points(single, steps: int) -> int:
    """Grid points of ``single`` composed ``steps`` times, as dp-accounting's Chernoff-truncated FFT sizes it."""
    from dp_accounting.pld import common

    points = 0
    for pmf in (single._pmf_remove, single._pmf_add):  # dp-accounting 0.6 keeps no public accessor
        probs = pmf.to_dense_pmf()._probs
        lo, hi = common.compute_self_convolve_bounds(probs, int(steps), _PLD_TAIL_MASS_TRUNCATION)
        points = max(points, hi - lo + 1, len(probs))
    return points


class _Work:
    """A budget of PLD work points (see PLD_MAX_WORK), spent as grids are sized, before they are built."""

    def __init__(self, limit: float = PLD_MAX_WORK):
        self.limit, self.spent = limit, 0.0

    def spend(self, points: float, what: str, q: float, sigma: float, steps: int) -> None:
        if self.spent + points > self.limit:
            raise PLDTooLargeError(
                f"the PLD accountant would need {what} (~{self.spent + points:.3g} work points, limit "
                f"{self.limit:.3g}) for noise_multiplier={sigma:g}, q={q:.4g}, steps={steps}")
        self.spent += points


def compose_pld(runs: List[tuple], work: Optional[_Work] = None):
    """The PLD (dp-accounting PrivacyLossDistribution, or None for no steps) of the composition of
    Poisson-sampled Gaussian runs ``(q, sigma, steps)`` with σ > 0.

    Raises PLDTooLargeError, before building or composing anything too large, when the work would exceed
    ``work`` (default: a fresh PLD_MAX_WORK budget). Same distribution as dp-accounting's PLDAccountant builds
    (same discretisation and truncation).
    """
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    work = work or _Work()
    total = None
    for q, sigma, steps in runs:
        if steps == 0:
            continue
        step_points = _pld_step_points(q, sigma)
        work.spend(PLD_STEP_POINT_WORK * step_points, f"a step grid of {step_points:.3g} points", q, sigma, steps)
        single = pld_lib.from_gaussian_mechanism(sigma, value_discretization_interval=PLD_DISCRETIZATION,
                                                 sampling_prob=q)
        if steps > 1:
            points = _pld_composed_points(single, steps)
            work.spend(points, f"a composition of {steps} steps on {points:.3g} grid points", q, sigma, steps)
        composed = single.self_compose(int(steps)) if steps > 1 else single
        total = composed if total is None else total.compose(composed)
    return total


def pld_epsilon(runs: List[tuple], delta: float, work: Optional[_Work] = None) -> float:
    """ε at ``delta`` by PLD of the composition of Poisson-sampled Gaussian runs ``(q, sigma, steps)``
    (PLDTooLargeError past the work bound: see :func:`compose_pld`)."""
    key = (tuple(runs), float(delta))
    if key in _PLD_MEMO:  # calibration's last ε is asked again by the caller: no second bill
        return _PLD_MEMO[key]
    if any(sigma == 0 and steps for _, sigma, steps in runs):
        return math.inf
    total = compose_pld(runs, work)
    eps = 0.0 if total is None else float(total.get_epsilon_for_delta(delta))
    if len(_PLD_MEMO) >= 64:
        _PLD_MEMO.clear()
    _PLD_MEMO[key] = eps
    return eps


class _ComposedPLD:
    """``get_epsilon(delta)`` of a composed PLD, like a dp-accounting accountant's."""

    def __init__(self, pld):
        self._pld = pld

    def get_epsilon(self, delta: float) -> float:
        return 0.0 if self._pld is None else float(self._pld.get_epsilon_for_delta(delta))


def composed_accountant(events: List[dp_accounting.DpEvent], accountant: str = "rdp") -> tuple:
    """(object with ``get_epsilon(delta)``, accountant used, note) for the composition of ``events``: for
    many δ of one composition (a privacy profile). PLD obeys the work bound; past it RDP is used and
    ``note`` says why (as :func:`epsilon_and_accountant`)."""
    runs = _gaussian_runs(events) if accountant == "pld" else None
    if runs is not None and not any(sigma == 0 and steps for _, sigma, steps in runs):
        try:
            return _ComposedPLD(compose_pld(runs)), "pld", None
        except PLDTooLargeError as e:
            note = f"{e}: ε from the RDP accountant instead (a valid, looser upper bound)"
            return composed_accountant(events, "rdp")[0], "rdp", note
    acc = make_accountant(accountant)
    for e in events:
        acc.compose(e)
    return acc, accountant, None


_PLD_MEMO: Dict[tuple, float] = {}


def _effective_sigma(event: dp_accounting.DpEvent) -> Optional[float]:
    """σ of the one Gaussian equal to ``event`` (a Gaussian, or Gaussians composed on the same data:
    σ^-2 = Σ σ_i^-2, as dp-accounting's RDP accountant reduces them); None for any other event."""
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return float(event.noise_multiplier)
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        sigma = _effective_sigma(event.event)
        return None if sigma is None else sigma * event.count ** -0.5
    if isinstance(event, dp_accounting.ComposedDpEvent):
        sigmas = [_effective_sigma(e) for e in event.events]
        if not sigmas or any(s is None for s in sigmas):
            return None
        if any(s == 0 for s in sigmas):
            return 0.0
        return float(sum(s ** -2 for s in sigmas) ** -0.5)
    return None


def _gaussian_runs(events: List[dp_accounting.DpEvent]) -> Optional[List[tuple]]:
    """``(q, sigma, steps)`` of each Poisson-sampled Gaussian event (an adaptive-clipping step's composed
    Gaussians reduced to their one σ); None when another kind is present."""
    runs = []
    for e in events:
        count = 1
        if isinstance(e, dp_accounting.SelfComposedDpEvent):
            e, count = e.event, e.count
        sigma = _effective_sigma(e.event) if isinstance(e, dp_accounting.PoissonSampledDpEvent) else None
        if sigma is None:
            return None
        runs.append((float(e.sampling_probability), sigma, int(count)))
    return runs


def epsilon_and_accountant(events: List[dp_accounting.DpEvent], delta: float,
                           accountant: str = "rdp", work: Optional[_Work] = None) -> tuple:
    """(ε, accountant used, note) at ``delta`` for the composition of ``events``.

    With ``accountant="pld"`` and settings past the PLD work bound (PLD_MAX_WORK), ε comes from RDP,
    which is also a valid (looser) upper bound: the accountant used is then "rdp" and ``note`` says why.
    """
    if accountant == "pld":
        runs = _gaussian_runs(events)
        if runs is not None:
            try:
                return pld_epsilon(runs, delta, work), "pld", None
            except PLDTooLargeError as e:
                note = f"{e}: ε from the RDP accountant instead (a valid, looser upper bound)"
                return epsilon_and_accountant(events, delta, "rdp")[0], "rdp", note
    acc = make_accountant(accountant)
    for e in events:
        acc.compose(e)
    return float(acc.get_epsilon(delta)), accountant, None


def epsilon_for_events(events: List[dp_accounting.DpEvent], delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` of the composition of ``events`` (warns AccountantFallbackWarning when PLD falls back)."""
    eps, _, note = epsilon_and_accountant(events, delta, accountant)
    if note:
        warnings.warn(note, AccountantFallbackWarning, stacklevel=2)
    return eps


def compute_epsilon(*, n_examples: int, batch_size: int, noise_multiplier: float, delta: float,
                    epochs: Optional[float] = None, steps: Optional[int] = None,
                    accountant: str = "rdp") -> float:
    """ε of DP-SGD with Poisson sampling (q = batch_size / n_examples) after ``steps`` steps
    (or ``epochs`` epochs → ceil(epochs * n / batch_size) steps). σ = 0 gives ∞."""
    validate_dp_params(n_examples=n_examples, batch_size=batch_size, noise_multiplier=noise_multiplier,
                       delta=delta, epochs=epochs, steps=steps)
    if steps is None:
        if epochs is None:
            raise ValueError("give epochs or steps")
        steps = steps_for_epochs(n_examples, batch_size, epochs)
    if noise_multiplier == 0:
        return math.inf
    if steps == 0:
        return 0.0
    q = batch_size / n_examples
    return epsilon_for_events([dp_sgd_event(q, noise_multiplier, steps)], delta, accountant)


class _BoundedAccountant:
    """dp-accounting's accountant interface (``ledger``, ``compose``, ``get_epsilon``) for calibration: PLD
    through :func:`pld_epsilon` on a shared work budget (PLDTooLargeError when spent), RDP as dp-accounting's."""

    def __init__(self, accountant: str, work: Optional[_Work] = None):
        self.ledger = dp_accounting.NoOpDpEvent()
        self._accountant, self._work = accountant, work
        self._events: List[dp_accounting.DpEvent] = []

    def compose(self, event: dp_accounting.DpEvent, count: int = 1) -> "_BoundedAccountant":
        self._events.append(event if count == 1 else dp_accounting.SelfComposedDpEvent(event, count))
        self.ledger = dp_accounting.ComposedDpEvent(list(self._events))
        return self

    def get_epsilon(self, delta: float) -> float:
        if self._accountant == "pld":
            return pld_epsilon(_gaussian_runs(self._events), delta, self._work)
        return epsilon_and_accountant(self._events, delta, self._accountant)[0]


def _calibrate(q: float, steps: int, target_epsilon: float, delta: float, accountant: str, bracket, tol: float,
               work: Optional[_Work] = None) -> float:
    """σ by dp-accounting's root finder over log σ: a relative tolerance ``tol`` takes ~10 evaluations
    whether σ is 0.01 or 10^4 (RDP of a large q costs up to ~1 s an evaluation, so their number matters)."""
    log_bracket = (dp_accounting.LowerEndpointAndGuess(math.log(bracket.lower_endpoint),
                                                       math.log(bracket.initial_guess))
                   if isinstance(bracket, dp_accounting.LowerEndpointAndGuess) else
                   dp_accounting.ExplicitBracketInterval(math.log(bracket.endpoint_1), math.log(bracket.endpoint_2)))
    log_sigma = dp_accounting.calibrate_dp_mechanism(
        lambda: _BoundedAccountant(accountant, work), lambda x: dp_sgd_event(q, math.exp(x), steps),
        target_epsilon, delta, bracket_interval=log_bracket, tol=math.log1p(tol))
    return float(math.exp(log_sigma))


def calibrate_noise(*, target_epsilon: float, n_examples: int, batch_size: int, delta: float,
                    epochs: Optional[float] = None, steps: Optional[int] = None, accountant: str = "rdp",
                    tol: float = 1e-4) -> tuple:
    """(σ, accountant used, note): the smallest noise multiplier whose ε (for the given run) is at most
    ``target_epsilon``, within ``tol``. A PLD calibration spends one PLD_MAX_WORK budget over all the ε it
    evaluates; past it σ comes from RDP (valid, slightly larger), and ``note`` says so."""
    validate_dp_params(n_examples=n_examples, batch_size=batch_size, delta=delta, epochs=epochs,
                       target_epsilon=target_epsilon, steps=steps)
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if steps is None:
        if epochs is None:
            raise ValueError("give epochs or steps")
        steps = steps_for_epochs(n_examples, batch_size, epochs)
    if steps == 0:
        raise ValueError("no training steps: every noise multiplier gives ε = 0; nothing to calibrate")
    q = batch_size / n_examples
    rdp_sigma = _calibrate(q, steps, target_epsilon, delta, "rdp", dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
                           tol)
    if accountant == "rdp":
        return rdp_sigma, "rdp", None
    work = _Work()
    try:
        # PLD is tighter than RDP, so RDP's σ is (nearly always) the upper end of the search: a narrow
        # bracket keeps the number of PLD evaluations small.
        hi = rdp_sigma + tol
        if _BoundedAccountant("pld", work).compose(dp_sgd_event(q, hi, steps)).get_epsilon(delta) > target_epsilon:
            bracket = dp_accounting.LowerEndpointAndGuess(hi, 2 * hi)
        else:
            bracket = dp_accounting.ExplicitBracketInterval(hi / 4, hi)
        return _calibrate(q, steps, target_epsilon, delta, "pld", bracket, tol, work), "pld", None
    except (PLDTooLargeError, ValueError) as e:  # noqa: B014 - two different causes
        # ValueError: the PLD σ lies below RDP's / 4 (brentq finds no sign change there); RDP's σ still holds.
        return rdp_sigma, "rdp", f"{e}: noise multiplier calibrated with the RDP accountant instead (valid, " \
                                 "slightly more noise)"


def noise_multiplier_for_epsilon(*, target_epsilon: float, n_examples: int, batch_size: int, delta: float,
                                 epochs: Optional[float] = None, steps: Optional[int] = None,
                                 accountant: str = "rdp", tol: float = 1e-4) -> float:
    """The smallest noise multiplier whose ε (for the given run) is at most ``target_epsilon`` (see
    :func:`calibrate_noise`; warns AccountantFallbackWarning when PLD falls back to RDP)."""
    sigma, _, note = calibrate_noise(target_epsilon=target_epsilon, n_examples=n_examples, batch_size=batch_size,
                                     delta=delta, epochs=epochs, steps=steps, accountant=accountant, tol=tol)
    if note:
        warnings.warn(note, AccountantFallbackWarning, stacklevel=2)
    return sigma


@dataclasses.dataclass
class EpochRecord:
    epoch: int
    steps: int
    epsilon: Optional[float]
    train_loss: Optional[float] = None
    train_accuracy: Optional[float] = None
    examples_sampled: Optional[int] = None
    seconds: Optional[float] = None
    # Adaptive clipping: the clip norm C after the epoch's last step (None with a fixed C).
    l2_norm_clip: Optional[float] = None


class PrivacyLedger:
    """What a training run spent: Poisson-sampled Gaussian steps, grouped as events, with ε per epoch.

    Non-private runs keep the same ledger with ``private=False`` and ε = null (infinite).

    ``adaptive_clipping`` (a private run with adaptive clipping): ``{"target_unclipped_quantile",
    "clip_learning_rate", "clipped_count_stddev"}`` (σ_b resolved). ``noise_multiplier`` is then the step's
    total z, ``l2_norm_clip`` the initial C; each event lists its two composed Gaussians (``gaussians``: the
    clipped gradient sum's σ_Δ and the centred count's 2σ_b, see :func:`adaptive_noise_split`) and each epoch
    record the C it ended with.
    """

    def __init__(self, *, model_variant: str, private: bool, n_examples: int, expected_batch_size: int,
                 noise_multiplier: Optional[float], l2_norm_clip: Optional[float], delta: Optional[float],
                 sampling: str = "poisson", accountant: str = "rdp", target_epsilon: Optional[float] = None,
                 extra: Optional[Dict] = None, adaptive_clipping: Optional[Mapping[str, Any]] = None):
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
        if sampling not in ("poisson", "shuffle"):
            raise ValueError(f"sampling must be 'poisson' or 'shuffle', got {sampling!r}")
        self.model_variant = model_variant
        self.private = private
        self.n_examples = n_examples
        self.expected_batch_size = expected_batch_size
        self.noise_multiplier = noise_multiplier if private else None
        self.l2_norm_clip = l2_norm_clip if private else None
        self.delta = delta if private else None
        self.sampling = sampling
        self.accountant = accountant
        self.target_epsilon = target_epsilon if private else None
        self.extra = dict(extra or {})
        self.adaptive_clipping: Optional[Dict] = None
        self._gaussians: Optional[List[Dict]] = None
        if private and adaptive_clipping is not None:
            cfg = dict(adaptive_clipping)
            validate_adaptive_clipping(target_unclipped_quantile=cfg.get("target_unclipped_quantile"),
                                       clip_learning_rate=cfg.get("clip_learning_rate"),
                                       clipped_count_stddev=cfg.get("clipped_count_stddev"))
            sigma_grad, sigma_count = adaptive_noise_split(float(noise_multiplier), cfg["clipped_count_stddev"])
            self.adaptive_clipping = {
                "target_unclipped_quantile": float(cfg["target_unclipped_quantile"]),
                "clip_learning_rate": float(cfg["clip_learning_rate"]),
                "clipped_count_stddev": float(cfg["clipped_count_stddev"]),
                "gradient_noise_multiplier": sigma_grad, "count_noise_multiplier": sigma_count,
                "initial_l2_norm_clip": l2_norm_clip}
            self._gaussians = [{"sum": "clipped_gradients", "noise_multiplier": sigma_grad},
                               {"sum": "unclipped_count_centred", "noise_multiplier": sigma_count}]
        self.events: List[Dict] = []
        # Set when PLD was asked for but past its work bound: ε then comes from RDP, and the ledger says so.
        self.accountant_note: Optional[str] = None
        self.epochs: List[EpochRecord] = []
        self.steps = 0

    @property
    def sampling_probability(self) -> float:
        return self.expected_batch_size / self.n_examples

    def record_steps(self, steps: int) -> None:
        """Records ``steps`` steps that really ran (merged into the last event when it is the same)."""
        if steps < 0:
            raise ValueError("steps must be >= 0")
        self.steps += steps
        if not self.private or steps == 0:
            return
        q, s = self.sampling_probability, float(self.noise_multiplier)
        if self.events and self.events[-1]["sampling_probability"] == q and \
                self.events[-1]["noise_multiplier"] == s and self.events[-1].get("gaussians") == self._gaussians:
            self.events[-1]["steps"] += steps
        else:
            event = {"type": "poisson_sampled_gaussian", "sampling_probability": q, "noise_multiplier": s,
                     "steps": steps}
            if self._gaussians is not None:
                event["gaussians"] = [dict(g) for g in self._gaussians]
            self.events.append(event)

    def dp_events(self) -> List[dp_accounting.DpEvent]:
        return [ledger_dp_event(e) for e in self.events]

    def epsilon(self) -> Optional[float]:
        """ε at the ledger's δ of all recorded steps (None for a non-private run: ε is infinite); by
        :func:`ledger_epsilon_and_note`, as every reader of a written ledger derives it."""
        eps, note = ledger_epsilon_and_note(self.to_json(with_epsilon=False))
        if note and note != self.accountant_note:
            warnings.warn(f"[{self.model_variant}] {note}", AccountantFallbackWarning, stacklevel=2)
        self.accountant_note = note
        return eps

    def end_epoch(self, epoch: int, **stats) -> EpochRecord:
        """Closes an epoch: records ε so far with the epoch's training statistics."""
        rec = EpochRecord(epoch=epoch, steps=self.steps, epsilon=self.epsilon(), **stats)
        self.epochs.append(rec)
        return rec

    def to_json(self, with_epsilon: bool = True) -> Dict:
        """The ledger JSON. Its ``epsilon`` (final) and per-epoch ``epsilon`` are written for readers that only
        display them; they are :func:`epsilon_of_ledger` of the events, which is where every reader of ours
        takes ε from (``with_epsilon=False``: the events and settings alone)."""
        eps = (self.epochs[-1].epsilon if self.epochs else self.epsilon()) if with_epsilon else None
        return {
            "schema_version": LEDGER_SCHEMA_VERSION,
            "model_variant": self.model_variant,
            "private": self.private,
            "sampling": self.sampling,
            # The accountant assumes Poisson sampling; fixed shuffled batches are not covered by it.
            "poisson_guarantee_holds": bool(self.private and self.sampling == "poisson"),
            "n_examples": self.n_examples,
            "expected_batch_size": self.expected_batch_size,
            "sampling_probability": self.sampling_probability,
            "noise_multiplier": self.noise_multiplier,
            "l2_norm_clip": self.l2_norm_clip,
            "delta": self.delta,
            "accountant": self.accountant,
            **({"accountant_used": "rdp", "accountant_note": self.accountant_note} if self.accountant_note else {}),
            "target_epsilon": self.target_epsilon,
            "events": [dict(e) for e in self.events],
            "epochs": [_finite_or_none(dataclasses.asdict(r)) for r in self.epochs],
            **({"adaptive_clipping": {**self.adaptive_clipping, "final_l2_norm_clip": next(
                (r.l2_norm_clip for r in reversed(self.epochs) if r.l2_norm_clip is not None), None)}}
               if self.adaptive_clipping else {}),
            "steps": self.steps,
            "epsilon": _json_eps(eps),
            **({"note": "sampling='shuffle': the reported ε assumes Poisson sampling and does not strictly "
                        "hold for shuffled fixed-size batches"}
               if self.private and self.sampling == "shuffle" else {}),
            **self.extra,
        }

    def write(self, path: str) -> None:
        write_json_atomic(path, self.to_json())


def ledger_dp_event(event: Mapping[str, Any]) -> dp_accounting.DpEvent:
    """The DpEvent of one ledger event: ``steps`` Poisson-sampled steps of one Gaussian (multiplier
    ``noise_multiplier``) or, when the event lists ``gaussians`` (adaptive clipping), of their composition."""
    q, steps = float(event["sampling_probability"]), int(event["steps"])
    if not event.get("gaussians"):
        return dp_sgd_event(q, float(event["noise_multiplier"]), steps)
    step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(float(g["noise_multiplier"])) for g in event["gaussians"]]))
    return dp_accounting.SelfComposedDpEvent(step, steps)


def _ledger_events(ledger: Mapping[str, Any], upto_epoch: Optional[int]) -> List[Dict]:
    """The ledger's events, cut at the step count closing epoch ``upto_epoch`` (None: every event)."""
    events = [dict(e) for e in ledger.get("events") or []]
    if upto_epoch is None:
        return events
    recs = [r for r in ledger.get("epochs") or [] if int(r["epoch"]) == int(upto_epoch)]
    if not recs:
        raise ValueError(f"the ledger of {ledger.get('model_variant')!r} has no epoch {upto_epoch}")
    left = int(recs[0]["steps"])
    out = []
    for e in events:
        if left <= 0:
            break
        take = min(int(e["steps"]), left)
        out.append({**e, "steps": take})
        left -= take
    return out


def ledger_epsilon_and_note(ledger: Mapping[str, Any], upto_epoch: Optional[int] = None) -> tuple:
    """(ε, note) of a ledger JSON (:meth:`PrivacyLedger.to_json`): see :func:`epsilon_of_ledger`; ``note`` says
    when PLD was past its work bound and ε comes from RDP (None otherwise)."""
    if not ledger.get("private"):
        return None, None
    if ledger.get("noise_multiplier") == 0:
        return math.inf, None
    if "events" not in ledger or (not ledger["events"] and ledger.get("epsilon") is not None):
        # A ledger that records no DP events (written by hand, or by a tool without the events format): its
        # written ε is all there is; the DPTrainer's ledgers always record their events.
        written = ledger.get("epsilon") if upto_epoch is None else next(
            (r.get("epsilon") for r in ledger.get("epochs") or [] if int(r["epoch"]) == int(upto_epoch)), None)
        return (None if written is None else float(written)), "no DP events in the ledger: its written ε"
    events = _ledger_events(ledger, upto_epoch)
    if not any(int(e["steps"]) for e in events):
        return 0.0, None
    dp_events = [ledger_dp_event(e) for e in events if int(e["steps"])]
    eps, _, note = epsilon_and_accountant(dp_events, float(ledger["delta"]), ledger.get("accountant") or "rdp")
    return eps, note


def epsilon_of_ledger(ledger: Mapping[str, Any], upto_epoch: Optional[int] = None) -> Optional[float]:
    """ε of a training run, derived from its privacy ledger: the composition of the ledger's DP events
    (Poisson-sampled Gaussian steps that really ran) by the ledger's accountant at the ledger's δ.

    The one place ε is computed from a ledger: the trainer's per-epoch ε, checkpoints/index.json, ML Metadata,
    the evaluator's results metadata and the report all take it from here.

    Args:
      ledger: the ledger JSON (a dict as :meth:`PrivacyLedger.to_json` writes it, or read from ledger.json).
      upto_epoch: ε after that epoch (the events cut at its step count); None: after every recorded step.
    Returns:
      ε (a float; ``math.inf`` for noise multiplier 0), or None for a non-private run (ε unbounded).
    """
    return ledger_epsilon_and_note(ledger, upto_epoch)[0]


def _json_eps(eps: Optional[float]):
    if eps is None:
        return None
    # JSON has no infinity: null means ε is unbounded (no noise, or a non-private run).
    return eps if math.isfinite(eps) else None


def _finite_or_none(d: Dict) -> Dict:
    # An epoch's clip norm is recorded only when it moves (adaptive clipping).
    return {k: (_json_eps(v) if k == "epsilon" else v) for k, v in d.items()
            if not (k == "l2_norm_clip" and v is None)}


def write_json_atomic(path: str, obj) -> None:
    """Writes JSON to a temporary name beside ``path`` and moves it into place (any scheme: common.io)."""
    from privacy_audit.components.common import io

    io.write_json(path, obj)


def read_ledger(path: str) -> Dict:
    """Reads a ledger JSON, checking its schema version."""
    from privacy_audit.components.common import io

    obj = io.read_json(path)
    if obj.get("schema_version") != LEDGER_SCHEMA_VERSION:
        raise ValueError(f"{path}: unsupported ledger schema_version {obj.get('schema_version')!r}")
    return obj
