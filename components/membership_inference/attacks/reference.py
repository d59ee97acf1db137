"""Attacks with reference models: the attack names the evaluator and ``privacy-audit attack`` accept
(``lira``, ``lira_offline``, ``rmia``, ``rmia_offline``), their options, and the scores from the target's and
the references' logits (:func:`score_with_references`; the signals file format is
:mod:`privacy_audit.components.reference_models.signals`). Every score is "higher = more likely a member";
measure them with :func:`privacy_audit.components.membership_inference.metrics.attack_metrics`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from privacy_audit.components.membership_inference.attacks.inputs import PreparedInputs
from privacy_audit.components.membership_inference.attacks.lira import lira_scores
from privacy_audit.components.membership_inference.attacks.registry import ScoreFn, register_attack
from privacy_audit.components.membership_inference.attacks.rmia import rmia_scores
from privacy_audit.components.membership_inference.attacks.signals import (
    DEFAULT_MIN_STD, _mask, logit_scaled_confidence, true_class_probability)

if TYPE_CHECKING:  # pragma: no cover
    from privacy_audit.components.reference_models.signals import ReferenceSignals


REFERENCE_FAMILIES = ("lira", "rmia")


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
    if attack not in REFERENCE_FAMILIES:
        raise ValueError(f"attack must be one of {REFERENCE_FAMILIES}, got {attack!r}")
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


#: Attack names with reference models, as the evaluator and ``privacy-audit attack`` accept them:
#: name -> (attack of :func:`score_with_references`, online).
REFERENCE_ATTACKS: Dict[str, Tuple[str, bool]] = {
    "lira": ("lira", True), "lira_offline": ("lira", False),
    "rmia": ("rmia", True), "rmia_offline": ("rmia", False)}


#: Options of each attack family (keys of ``options[family]``); see :func:`resolve_attack_options`.
ATTACK_OPTIONS = {"lira": ("fixed_variance", "ddof", "min_std"), "rmia": ("gamma", "offline_a")}


#: LiRA's per-example variance needs many references: below this many reference models the global
#: ("fixed") variance is used when ``fixed_variance`` is "auto" (Carlini et al. 2022 use the fixed variance
#: below 64 shadow models, i.e. below 32 IN and 32 OUT per example).
FIXED_VARIANCE_BELOW = 64


def check_reference_options(options: Optional[Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Validated ``{"lira": {...}, "rmia": {...}}`` options (unknown keys name the valid ones)."""
    out: Dict[str, Dict[str, Any]] = {}
    for family, opts in (options or {}).items():
        if family not in ATTACK_OPTIONS:
            raise ValueError(f"reference attack options: unknown attack {family!r}; "
                             f"options are for {sorted(ATTACK_OPTIONS)}")
        if not isinstance(opts, Mapping):
            raise ValueError(f"reference attack options for {family!r} must be an object, got {opts!r}")
        bad = sorted(set(opts) - set(ATTACK_OPTIONS[family]))
        if bad:
            raise ValueError(f"reference attack options: unknown option(s) {bad} for {family}; "
                             f"valid: {list(ATTACK_OPTIONS[family])}")
        fv = opts.get("fixed_variance", "auto")
        if not (isinstance(fv, bool) or fv == "auto"):
            raise ValueError(f"lira fixed_variance must be true, false or \"auto\", got {fv!r}")
        for key in ("gamma", "min_std"):
            if key in opts and not (isinstance(opts[key], (int, float)) and opts[key] > 0):
                raise ValueError(f"{family} {key} must be a number > 0, got {opts[key]!r}")
        if "offline_a" in opts and not (isinstance(opts["offline_a"], (int, float)) and 0 <= opts["offline_a"] <= 1):
            raise ValueError(f"rmia offline_a must be in [0, 1], got {opts['offline_a']!r}")
        if "ddof" in opts and opts["ddof"] not in (0, 1):
            raise ValueError(f"lira ddof must be 0 or 1, got {opts['ddof']!r}")
        out[family] = dict(opts)
    return out


def resolve_attack_options(name: str, k: int, options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The keyword arguments of :func:`score_with_references` for attack ``name`` (a key of
    :data:`REFERENCE_ATTACKS`) with K reference models: ``attack``, ``online``, and for LiRA
    ``fixed_variance`` (default "auto": True when K < :data:`FIXED_VARIANCE_BELOW`), for RMIA ``gamma`` and
    ``offline_a`` (defaults of :func:`.rmia.rmia_scores`)."""
    if name not in REFERENCE_ATTACKS:
        raise ValueError(f"unknown reference attack {name!r}; choose from {', '.join(REFERENCE_ATTACKS)}")
    attack, online = REFERENCE_ATTACKS[name]
    opts = dict(check_reference_options(options).get(attack, {}))
    out: Dict[str, Any] = {"attack": attack, "online": online}
    if attack == "lira":
        fv = opts.pop("fixed_variance", "auto")
        out["fixed_variance"] = bool(k < FIXED_VARIANCE_BELOW) if fv == "auto" else bool(fv)
    else:
        out.update(gamma=1.0, offline_a=0.3)
    out.update(opts)
    return out


def reference_attack_scores(name: str, target_logits, labels, references: ReferenceSignals,
                            options: Optional[Mapping[str, Any]] = None) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Scores of reference attack ``name`` (:data:`REFERENCE_ATTACKS`) on the references' population, in
    its order: ``target_logits`` [M, C] and ``labels`` [M] of the same examples. Returns ``(scores [M],
    the resolved options)``."""
    opts = resolve_attack_options(name, references.k, options)
    kwargs = {k: v for k, v in opts.items() if k != "attack"}
    if opts["attack"] == "rmia":
        kwargs.pop("fixed_variance", None)
    scores = score_with_references(target_logits, labels, references.logits, references.in_mask, opts["attack"],
                                   **kwargs)
    return scores, opts


def reference_attack_results(target_logits, labels, is_member, ref_logits, in_mask,
                             attacks: Sequence[str] = REFERENCE_FAMILIES, *, by_class: bool = False,
                             min_slice_size: int = 20, attack_options: Optional[Mapping[str, Mapping]] = None,
                             **metric_kwargs) -> List[Dict[str, Any]]:
    """Entries of the attack results JSON for LiRA / RMIA on a population in any order: a shortcut to
    :func:`api.run_attacks` (same slices, same metrics, same options) for arrays over the whole population.

    Args:
      target_logits [M, C], labels [M], ref_logits [K, M, C], in_mask [K, M]: as :func:`score_with_references`.
      is_member: [M] bool, the ground truth (the target's training set); used only to measure.
      attacks: any of "lira", "rmia".
      by_class: also one entry per true class with at least ``min_slice_size`` members and non-members.
      attack_options: per attack, ``online`` (False: the ``_offline`` variant) and the options of
        :func:`check_reference_options` (e.g. ``{"lira": {"online": False, "fixed_variance": True}}``).
      metric_kwargs: delta, confidence, fpr_targets, roc_points (as :func:`api.run_attacks`).
    Returns the results' entries ``{"slice", "attack", **metrics}``.
    """
    from privacy_audit.components.membership_inference.api import run_attacks
    from privacy_audit.components.membership_inference.data import AttackInputs
    from privacy_audit.components.membership_inference.slicing import SlicingSpec
    from privacy_audit.components.reference_models.signals import ReferenceSignals

    is_member = np.asarray(is_member).astype(bool)
    labels, target_logits = np.asarray(labels), np.asarray(target_logits)
    im, inn = np.flatnonzero(is_member), np.flatnonzero(~is_member)
    order = np.concatenate([im, inn])
    names, options = [], {}
    for attack in attacks:
        opts = dict((attack_options or {}).get(attack, {}))
        names.append(attack if opts.pop("online", True) else f"{attack}_offline")
        options[attack] = opts
    inputs = AttackInputs(logits_members=target_logits[im], logits_nonmembers=target_logits[inn],
                          labels_members=labels[im], labels_nonmembers=labels[inn])
    refs = ReferenceSignals(np.asarray(ref_logits)[:, order], np.asarray(in_mask)[:, order])
    obj = run_attacks(inputs, names, SlicingSpec(entire_dataset=True, by_class=by_class),
                      min_slice_size=min_slice_size, references=refs, reference_options=options, **metric_kwargs)
    return obj["results"]


def _reference_attack(name: str) -> ScoreFn:
    def score(prepared: PreparedInputs, im: np.ndarray, inn: np.ndarray, seed: int):
        scores, _ = prepared.reference_scores(name)
        return scores[im], scores[prepared.inputs.n_members + inn]
    return score


for _name, _description in (
        ("lira", "LiRA online: Gaussian likelihood ratio of the target's logit-scaled confidence, IN vs OUT "
                 "references (Carlini et al. 2022)"),
        ("lira_offline", "LiRA offline: one-sided test against the OUT references only"),
        ("rmia", "RMIA online: Pr(x|target) / mean over all references, ranked against population samples "
                 "(Zarifzadeh et al. 2024)"),
        ("rmia_offline", "RMIA offline: as rmia with OUT references and the linear approximation a")):
    register_attack(_name, trained=False, needs_references=True, description=_description)(_reference_attack(_name))
