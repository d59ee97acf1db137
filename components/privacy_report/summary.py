"""summary.json of the privacy report (DESIGN.md "Contracts") and its one-paragraph text form.

    {"variants": [{"name", "private", "epsilon", "delta", "test_accuracy", "max_auc",
                   "max_attacker_advantage", "max_tpr_at_fpr_0.001", "blessed",
                   "one_run_audit_epsilon_lower_bound", ...extras}],
     "schema_version", "title", "generated_at", "trend", "warnings", "inputs"}

Headline metrics are maxima over every slice and attack of each variant's FINAL model. epsilon and
delta are the ledger's final values (epsilon null = non-private, i.e. infinite). blessed is the
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
                f"ledger's final epsilon={epsilon!r}; the report uses the ledger's")
    else:
        epsilon = _finite_or_none(final.epsilon)
        private = epsilon is not None
        delta = final.metadata.get("delta") if private else None
        warnings.append(f"variant {variant.name!r}: no privacy ledger given; ε taken from the attack results metadata")
    worst = most_vulnerable(results)
    lower_bounds = [r.epsilon_lower_bound for r in results]
    audit = ledger.one_run_audit if ledger is not None else None
    return {
        "name": variant.name,
        "private": private,
        "epsilon": epsilon,
        "delta": delta,
        "test_accuracy": final.accuracy_test,
        "max_auc": _max(r.auc for r in results),
        "max_attacker_advantage": _max(r.attacker_advantage for r in results),
        TPR_KEY: _max(r.tpr_at(HEADLINE_FPR) for r in results),
        "blessed": blessing.blessed if blessing is not None else True,
        AUDIT_KEY: None if audit is None else audit.get("epsilon_lower_bound"),
        # Extras.
        "gate_evaluated": blessing is not None,
        "gate_failures": [dict(f) for f in blessing.failures] if blessing is not None else [],
        "train_accuracy": final.accuracy_train,
        "final_epoch": final.epoch,
        "epsilon_lower_bound": _finite_or_none(_max(lower_bounds)),
        "epsilon_lower_bound_infinite": any(v is not None and math.isinf(v) for v in lower_bounds),
        TPR_1PCT_KEY: _max(r.tpr_at(0.01) for r in results),
        "one_run_audit": None if audit is None else {
            key: audit.get(key) for key in ("epsilon_lower_bound", "accountant_epsilon", "ledger_epsilon",
                                            "confidence", "delta", "violated", "n_canaries", "n_included",
                                            "message")},
        "attacks": attack_rows(final),
        "most_vulnerable": None if worst is None else {
            "slice": dict(worst.slice), "slice_label": worst.slice_label, "attack": worst.attack,
            "auc": worst.auc, "attacker_advantage": worst.attacker_advantage,
            "n_members": worst.n_members, "n_nonmembers": worst.n_nonmembers,
            "auc_null_sd": auc_null_sd(worst.n_members, worst.n_nonmembers)},
        "noise_multiplier": ledger.noise_multiplier if ledger else None,
        "accountant": ledger.accountant if ledger else None,
        "evaluated_epochs": sorted({f.epoch for f in variant.files if f.epoch is not None}),
        "sources": {"final_results": final.source, "ledger": ledger.source if ledger else None,
                    "blessing": blessing.source if blessing else None},
    }


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
                     "tpr_at_fpr_0.01": r.tpr_at(0.01), "tpr_at_fpr_0.001": r.tpr_at(0.001),
                     "tpr_at_fpr_0.0001": r.tpr_at(0.0001) if resolvable else None})
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
    summary["trend"] = earlier + trend_entries(summary, run_id, generated_at)
    summary["has_history"] = bool(earlier)
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
        gate = ("blessed" if r.get("blessed") else "NOT blessed") if r.get("gate_evaluated", True) else "no gate"
        lines.append(
            f"  {r.get('name')}: ε={format_epsilon(r.get('epsilon'), r.get('private'))}{delta}; "
            f"test accuracy {format_number(r.get('test_accuracy'))}; "
            f"max AUC {format_number(r.get('max_auc'))}; "
            f"max advantage {format_number(r.get('max_attacker_advantage'))}; "
            f"TPR@0.1%FPR {format_number(r.get(TPR_KEY))}; "
            f"ε lower bound {format_number(r.get('epsilon_lower_bound'), 2)}"
            + (f"; one-run audit ε ≥ {format_number(r.get(AUDIT_KEY), 2)}" if r.get(AUDIT_KEY) is not None else "")
            + f"; {gate}")
    for w in summary.get("warnings", []):
        lines.append(f"  warning: {w}")
    return "\n".join(lines)
