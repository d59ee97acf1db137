"""summary.json of the privacy report (DESIGN.md "Contracts") and its one-paragraph text form.

    {"variants": [{"name", "private", "epsilon", "delta", "test_accuracy", "max_auc",
                   "max_attacker_advantage", "max_tpr_at_fpr_0.001", "blessed",
                   "one_run_audit_epsilon_lower_bound", ...extras}],
     "schema_version", "title", "generated_at", "trend", "warnings", "inputs"}

Each variant leads with "entire_dataset": the entire data set's best attack (by AUC) with 95% intervals
(DeLong for the AUC, Clopper-Pearson for TPR at 1% and 0.1% FPR; a TPR the non-members cannot resolve is
null and listed in tpr_at_fpr_unresolved). The maxima that follow (DESIGN.md's keys) are over every slice
and attack of each variant's FINAL model, TPRs over resolvable results only; "max_auc_significant",
"max_tpr_at_fpr_0.001_significant" and "max_tpr_at_fpr_0.01_significant" say whether that maximum
exceeds the no-leakage band after Holm's correction over all slices x attacks ("significance" has the
families, see :func:`significance`). "dp_consistent" (private variants; null otherwise) is false when a
measured point lies outside the region the accountant's privacy profile allows (dp_region), an empirical
ε lower bound exceeds the accountant's ε, or the one-run audit failed; "dp_consistency" says why.
"gate_configured" is false when the evaluator had no threshold and no one-run audit ran. epsilon is
derived from the ledger's DP events (load.read_ledger: accounting.epsilon_of_ledger) and delta is the ledger's
(epsilon null = non-private, i.e. infinite). blessed is the
evaluator's gate result when a blessing is given, else true (no gate was set: nothing failed).
one_run_audit_epsilon_lower_bound is the one-run privacy audit's ε lower bound (at
one_run_audit.confidence) beside the accountant's ε, null when no audit ran; "max_tpr_at_fpr_0.01" is
the TPR at 1% FPR, max over slices and attacks, and "attacks" the entire data set's metrics per attack.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

from scipy import stats

from privacy_audit.components.privacy_report import dp_region
from privacy_audit.components.privacy_report.load import HEADLINE_FPR, Blessing, Ledger, VariantResults
from privacy_audit.components.privacy_report.plots import most_vulnerable

SUMMARY_SCHEMA_VERSION = 1
TPR_KEY = "max_tpr_at_fpr_0.001"
TPR_1PCT_KEY = "max_tpr_at_fpr_0.01"
AUDIT_KEY = "one_run_audit_epsilon_lower_bound"
#: TPR at 0.01% FPR is shown only with at least this many non-members (below, FPR <= 0.01% means no false
#: positive at all and the number says little).
MIN_NONMEMBERS_FOR_0_01PCT = 10_000
# Metrics copied into each trend entry (history of earlier runs and the current one).
TREND_KEYS = ("max_auc", "max_attacker_advantage", "epsilon_lower_bound", TPR_KEY, "test_accuracy", "epsilon")
_EPSILON_TOLERANCE = 1e-6
#: Family-wise error rate of the "exceeds the no-leakage band" flags (Holm over all slices x attacks).
SIGNIFICANCE_ALPHA = 0.05
#: FPR targets whose TPR gets a headline, a max over slices and a significance flag.
HEADLINE_FPRS = (0.01, 0.001)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _max(values) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def variant_summary(
    variant: VariantResults, ledger: Ledger | None, blessing: Blessing | None, warnings: list[str]
) -> dict[str, Any]:
    """One "variants" entry: headline metrics of the final model, ε/δ from the ledger, gate result."""
    final = variant.final
    results = final.results
    if ledger is not None:
        private, epsilon, delta = ledger.private, ledger.epsilon, ledger.delta
        if final.epsilon is not None and epsilon is not None and not math.isclose(
                final.epsilon, epsilon, rel_tol=_EPSILON_TOLERANCE):
            warnings.append(
                f"variant {variant.name!r}: attack results metadata.epsilon={final.epsilon!r} differs from the "
                f"ledger's final epsilon={epsilon!r}; the report uses the ledger's")  # derived from its events
    else:
        epsilon = _finite_or_none(final.epsilon)
        private = epsilon is not None
        delta = final.metadata.get("delta") if private else None
        warnings.append(f"variant {variant.name!r}: no privacy ledger given; ε taken from the attack results metadata")
    if final.metadata.get("checkpoints_audited") == 0:  # e.g. a standard TFX Trainer's model without checkpoints
        warnings.append(f"variant {variant.name!r}: only the final model was audited (no checkpoints; add "
                        "privacy_audit.keras.AuditCheckpoints to the Trainer's run_fn for attack AUC by epoch)")
    worst = most_vulnerable(results)
    lower_bounds = [r.epsilon_lower_bound for r in results]
    audit = ledger.one_run_audit if ledger is not None else None
    tests = significance(results)
    consistency = _dp_consistency(results, ledger, audit) if private else None
    return {
        "name": variant.name,
        "private": private,
        "epsilon": epsilon,
        "delta": delta,
        "test_accuracy": final.accuracy_test,
        # The headline: the entire data set's best attack, with 95% intervals (DESIGN.md's keys follow).
        "entire_dataset": entire_dataset_headline(final),
        "max_auc": _max(r.auc for r in results),
        "max_attacker_advantage": _max(r.attacker_advantage for r in results),
        TPR_KEY: _max(resolved_tpr(r, HEADLINE_FPR) for r in results),
        "blessed": blessing.blessed if blessing is not None else True,
        AUDIT_KEY: None if audit is None else audit.get("epsilon_lower_bound"),
        # Extras.
        "max_auc_significant": tests["auc"]["max_significant"],
        f"{TPR_KEY}_significant": tests["tpr_at_fpr_0.001"]["max_significant"],
        f"{TPR_1PCT_KEY}_significant": tests["tpr_at_fpr_0.01"]["max_significant"],
        "significance": tests,
        "dp_consistent": None if consistency is None else consistency["dp_consistent"],
        "dp_consistency": consistency,
        "gate_configured": _gate_configured(blessing, audit),
        "gate_evaluated": blessing is not None,
        "gate_failures": [dict(f) for f in blessing.failures] if blessing is not None else [],
        "train_accuracy": final.accuracy_train,
        "final_epoch": final.epoch,
        "epsilon_lower_bound": _finite_or_none(_max(lower_bounds)),
        "epsilon_lower_bound_infinite": any(v is not None and math.isinf(v) for v in lower_bounds),
        TPR_1PCT_KEY: _max(resolved_tpr(r, 0.01) for r in results),
        "one_run_audit": None if audit is None else {
            key: audit.get(key) for key in ("epsilon_lower_bound", "fdp_epsilon_lower_bound", "accountant_epsilon",
                                            "ledger_epsilon", "confidence", "delta", "violated", "n_canaries",
                                            "n_included", "message")},
        "attacks": attack_rows(final),
        "most_vulnerable": None if worst is None else {
            "slice": dict(worst.slice), "slice_label": worst.slice_label, "attack": worst.attack,
            "auc": worst.auc, "attacker_advantage": worst.attacker_advantage,
            "n_members": worst.n_members, "n_nonmembers": worst.n_nonmembers,
            "auc_null_sd": auc_null_sd(worst.n_members, worst.n_nonmembers),
            "auc_interval": _list_or_none(worst.auc_interval),
            "significant": tests["auc"]["max_significant"]},
        "noise_multiplier": ledger.noise_multiplier if ledger else None,
        "accountant": ledger.accountant if ledger else None,
        "evaluated_epochs": sorted({f.epoch for f in variant.files if f.epoch is not None}),
        "sources": {"final_results": final.source, "ledger": ledger.source if ledger else None,
                    "blessing": blessing.source if blessing else None},
    }


def _list_or_none(interval) -> list[float] | None:
    return None if interval is None else [float(v) for v in interval]


def resolved_tpr(r, fpr: float) -> float | None:
    """TPR at ``fpr`` of one result, None when its non-members cannot resolve that FPR (never a number)."""
    return None if r.tpr_unresolved(fpr) else r.tpr_at(fpr)


def _gate_configured(blessing: Blessing | None, audit: Mapping[str, Any] | None) -> bool:
    """A gate is configured when the evaluator had a threshold to check or the one-run audit ran (its bound
    against the accountant's ε is a check); a blessing that lists no threshold and no failure passed
    nothing. A blessing that does not list its thresholds at all counts as a configured gate."""
    if audit is not None:
        return True
    if blessing is None:
        return False
    if not blessing.thresholds_known:
        return True
    return any(v is not None for v in blessing.thresholds.values()) or bool(blessing.failures)


def entire_dataset_headline(final) -> dict[str, Any] | None:
    """The entire data set's result with the highest AUC (the report's lead): attack, counts, AUC and its
    interval, and TPR at 1% and 0.1% FPR with intervals (null when unresolvable, listed in
    ``tpr_at_fpr_unresolved``)."""
    rows = [r for r in final.results if r.slice.get("feature") == "entire_dataset"]
    if not rows:
        return None
    best = max(rows, key=lambda r: (r.auc, r.attacker_advantage, r.attack))
    out = {"attack": best.attack, "n_members": best.n_members, "n_nonmembers": best.n_nonmembers,
           "auc": best.auc, "auc_interval": _list_or_none(best.auc_interval),
           "auc_null_sd": auc_null_sd(best.n_members, best.n_nonmembers),
           "attacker_advantage": best.attacker_advantage, "tpr_at_fpr_unresolved": []}
    for fpr in HEADLINE_FPRS:
        key = f"tpr_at_fpr_{fpr:g}"
        out[key] = resolved_tpr(best, fpr)
        out[f"{key}_interval"] = None if out[key] is None else _list_or_none(best.tpr_interval(fpr))
        if out[key] is None:
            out["tpr_at_fpr_unresolved"].append(f"{fpr:g}")
    return out


def holm(p_values: Sequence[float], alpha: float = SIGNIFICANCE_ALPHA) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected with family-wise error <= alpha."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    k = len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (k - rank):
            break
        rejected[i] = True
    return rejected


def auc_p_value(auc: float, n_members: int, n_nonmembers: int) -> float:
    """One-sided p-value of "the attack learns nothing" against "AUC > 0.5": the Mann-Whitney statistic's
    normal approximation with its null standard deviation (:func:`auc_null_sd`)."""
    sd = auc_null_sd(n_members, n_nonmembers)
    return 1.0 if not sd else float(stats.norm.sf((auc - 0.5) / sd))


def tpr_p_value(tpr: float, fpr: float, n_members: int, n_nonmembers: int) -> float:
    """Exact one-sided p-value of a TPR at a threshold passing j = FPR·n_nonmembers non-members when members
    and non-members are exchangeable (no leakage): TP >= k exactly when the top k + j examples hold at most
    j non-members, a hypergeometric tail (draw k + j of n_members + n_nonmembers, >= k members)."""
    k = int(round(tpr * n_members))
    j = int(round(fpr * n_nonmembers))
    if k == 0:
        return 1.0
    return float(stats.hypergeom.sf(k - 1, n_members + n_nonmembers, n_members, k + j))


def significance(results, alpha: float = SIGNIFICANCE_ALPHA) -> dict[str, Any]:
    """Which results exceed the no-leakage band after a multiple-comparison correction.

    One family per metric (AUC; TPR at 1% FPR; TPR at 0.1% FPR), each over every slice x attack of the final
    model (resolvable TPRs only), Holm-corrected at family-wise error ``alpha`` (valid under any dependence
    between slices and attacks). ``max_significant`` says whether the result holding the family's maximum
    is among the rejections (None when the family is empty).
    """
    out: dict[str, Any] = {"method": "holm", "alpha": alpha}
    families = {"auc": [(r, r.auc, auc_p_value(r.auc, r.n_members, r.n_nonmembers))
                        for r in results if r.n_members and r.n_nonmembers]}
    for fpr in HEADLINE_FPRS:
        fam = []
        for r in results:
            tpr = resolved_tpr(r, fpr)
            if tpr is not None and r.n_members and r.n_nonmembers:
                achieved = r.tpr_at_fpr_achieved_fpr.get(f"{fpr!r}", fpr)
                fam.append((r, tpr, tpr_p_value(tpr, achieved, r.n_members, r.n_nonmembers)))
        families[f"tpr_at_fpr_{fpr:g}"] = fam
    for name, fam in families.items():
        rejected = holm([p for _, _, p in fam], alpha)
        top = max(range(len(fam)), key=lambda i: fam[i][1]) if fam else None
        out[name] = {"n_comparisons": len(fam), "n_significant": sum(rejected),
                     "significant": [{"slice": r.slice_label, "attack": r.attack, "value": v, "p_value": p}
                                     for (r, v, p), rej in zip(fam, rejected) if rej],
                     "max_significant": None if top is None else rejected[top]}
    return out


def _dp_consistency(results, ledger: Ledger | None, audit: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """dp_region.variant_consistency from the ledger's events; None without a ledger (no privacy profile)."""
    if ledger is None or not ledger.raw.get("events"):
        return None
    return dp_region.variant_consistency(results, ledger.raw["events"], ledger.accountant or "rdp", audit)


def auc_null_sd(n_members: Any, n_nonmembers: Any) -> float | None:
    """Standard deviation of an attack's AUC when the attack learns nothing about membership (its scores are
    exchangeable between members and non-members): the Mann-Whitney statistic's null variance,
    (n_m + n_n + 1) / (12 n_m n_n), without ties. ±2 of it around 0.5 is what a model that leaks nothing
    shows with this many examples; None when a count is missing or zero."""
    if not n_members or not n_nonmembers:
        return None
    n1, n0 = float(n_members), float(n_nonmembers)
    return math.sqrt((n1 + n0 + 1.0) / (12.0 * n1 * n0))


def attack_rows(final) -> list[dict[str, Any]]:
    """Per attack, the final model's entire-data-set metrics: auc, auc_null_sd (:func:`auc_null_sd`),
    attacker_advantage, tpr_at_fpr_0.01, tpr_at_fpr_0.001 and tpr_at_fpr_0.0001 (None unless there are >=
    MIN_NONMEMBERS_FOR_0_01PCT non-members)."""
    rows = []
    for r in final.results:
        if r.slice.get("feature") != "entire_dataset":
            continue
        resolvable = r.n_nonmembers is not None and r.n_nonmembers >= MIN_NONMEMBERS_FOR_0_01PCT
        rows.append({"attack": r.attack, "auc": r.auc, "attacker_advantage": r.attacker_advantage,
                     "n_members": r.n_members, "n_nonmembers": r.n_nonmembers,
                     "auc_null_sd": auc_null_sd(r.n_members, r.n_nonmembers),
                     "auc_interval": _list_or_none(r.auc_interval),
                     "tpr_at_fpr_0.01": resolved_tpr(r, 0.01), "tpr_at_fpr_0.001": resolved_tpr(r, 0.001),
                     "tpr_at_fpr_0.0001": resolved_tpr(r, 0.0001) if resolvable else None,
                     "tpr_at_fpr_interval": {f"{f:g}": _list_or_none(r.tpr_interval(f))
                                             for f in (0.01, 0.001, 0.0001) if resolved_tpr(r, f) is not None},
                     "tpr_at_fpr_unresolved": [f"{f:g}" for f in (0.01, 0.001, 0.0001) if r.tpr_unresolved(f)]})
    return rows


def trend_entries(summary: Mapping[str, Any], run_id: str, date: str) -> list[dict[str, Any]]:
    """One trend entry per variant of a summary: {"run_id", "date", "variant", <TREND_KEYS>}."""
    entries = []
    for row in summary.get("variants", []):
        entry = {"run_id": run_id, "date": date, "variant": row.get("name")}
        entry.update({k: row.get(k) for k in TREND_KEYS})
        entries.append(entry)
    return entries


def build_summary(
    variants: Mapping[str, VariantResults],
    ledgers: Mapping[str, Ledger],
    blessings: Mapping[str, Blessing] | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    *,
    title: str = "Privacy audit report",
    generated_at: str | None = None,
    run_id: str = "current",
    max_auc_increase: float | None = None,
    history_warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """Build the summary.json object.

    Args:
      variants: model variant name -> its results (load.group_by_variant).
      ledgers: variant name -> ledger (load.index_ledgers); a variant without one gets ε from its
        results metadata and a warning.
      blessings: variant name -> blessing; absent variant = no gate set (blessed true).
      history: trend entries of earlier runs ({"run_id", "date", "variant", metrics}).
      generated_at: ISO time of this run (default now, UTC).
      run_id: id of this run in the trend.
      max_auc_increase: drift gate (trend.apply_drift): refuse the blessing of a variant whose entire-data-set
        max AUC rose by more than this over the previous run; ``trend_alert`` is added either way.
      history_warnings: files of the audit history that were skipped (history.read), shown as warnings.
    """
    generated_at = generated_at or now_iso()
    blessings = blessings or {}
    warnings: list[str] = []
    rows = [variant_summary(v, ledgers.get(name), blessings.get(name), warnings) for name, v in variants.items()]
    for name in ledgers:
        if name not in variants:
            warnings.append(f"ledger for variant {name!r} ({ledgers[name].source}) has no attack results; ignored")
    for name in blessings:
        if name not in variants:
            warnings.append(f"blessing for variant {name!r} has no attack results; ignored")
    summary: dict[str, Any] = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "title": title,
        "generated_at": generated_at,
        "run_id": run_id,
        "variants": rows,
        "all_blessed": all(r["blessed"] for r in rows),
        "warnings": warnings,
        "inputs": {
            "results": [f.source for v in variants.values() for f in v.files],
            "ledgers": [ledgers[n].source for n in ledgers],
        },
    }
    earlier = [dict(e) for e in (history or [])]
    from privacy_audit.components.privacy_report import history as history_lib, trend as trend_lib

    current = history_lib.history_entries(summary, run_id, generated_at)
    summary["trend"] = earlier + current
    summary["has_history"] = bool(earlier)
    summary["warnings"] += list(history_warnings)
    trend_lib.apply_drift(summary, earlier, current, max_auc_increase)
    return summary


# --------------------------------------------------------------------------- formatting


def format_epsilon(epsilon: float | None, private: bool | None = None) -> str:
    """ε for people: "∞ (non-private)" when training was not private."""
    if epsilon is None or math.isinf(epsilon):
        # A private run has infinite ε only without noise (the ledger writes it as null).
        return "∞" if private else "∞ (non-private)"
    return f"{epsilon:.3g}"


def format_number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}"


def text_summary(summary: Mapping[str, Any]) -> str:
    """A short human-readable summary for logs (one line per variant)."""
    rows = summary.get("variants", [])
    lines = [f"{summary.get('title', 'Privacy audit')}: {len(rows)} variant(s), generated "
             f"{summary.get('generated_at', '?')}"]
    for r in rows:
        delta = f", δ={r['delta']:.3g}" if r.get("delta") is not None else ""
        gate = ("blessed" if r.get("blessed") else "NOT blessed") if r.get(
            "gate_configured", r.get("gate_evaluated", True)) else "no gate"
        lines.append(
            f"  {r.get('name')}: ε={format_epsilon(r.get('epsilon'), r.get('private'))}{delta}; "
            f"test accuracy {format_number(r.get('test_accuracy'))}; "
            f"max AUC {format_number(r.get('max_auc'))}; "
            f"max advantage {format_number(r.get('max_attacker_advantage'))}; "
            f"TPR@0.1%FPR {format_number(r.get(TPR_KEY))}; "
            f"ε lower bound {format_number(r.get('epsilon_lower_bound'), 2)}"
            + (f"; one-run audit ε ≥ {format_number(r.get(AUDIT_KEY), 2)}" if r.get(AUDIT_KEY) is not None else "")
            + ("" if r.get("dp_consistent") is None else
               "; inside its DP region" if r["dp_consistent"] else "; OUTSIDE its DP region (DP broken)")
            + f"; {gate}")
    for w in summary.get("warnings", []):
        lines.append(f"  warning: {w}")
    return "\n".join(lines)
