"""The privacy gate: thresholds on the attacks' metrics (and the one-run audit's verdict) → a blessing, ANDed
with a baseline blessing (e.g. TFMA's) when one is given. Plain values in, plain dicts out: no TFX; the
evaluator's executor only writes the result as a ModelBlessing."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, List, Mapping, Optional

from privacy_audit.components.common import io, layout

_LOG = logging.getLogger(__name__)

GATE_METRICS = ("auc", "attacker_advantage", "epsilon_lower_bound")


def _finite_or_none(value) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def parse_thresholds(max_auc: Optional[float], max_attacker_advantage: Optional[float],
                     max_epsilon_lower_bound: Optional[float]) -> Dict[str, float]:
    """``{metric: threshold}`` of the gate (metrics without a threshold are left out)."""
    out: Dict[str, float] = {}
    for metric, value in zip(GATE_METRICS, (max_auc, max_attacker_advantage, max_epsilon_lower_bound)):
        if value is None:
            continue
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"max_{metric} must be a finite number >= 0, got {value}")
        out[metric] = value
    return out


def privacy_gate(results_obj: Mapping[str, Any], thresholds: Mapping[str, float],
                 one_run_audit: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The blessing of one results object: blessed unless some slice and attack exceeds a threshold, or the
    one-run audit (when given, ``one_run_audit.json`` of the ModelRun) proves more leakage than the
    accountant's ε, which means the DP training is broken.

    Returns ``{"blessed": bool, "thresholds": {...}, "failures": [{"slice", "slice_name", "attack",
    "metric", "value", "threshold"(, "reason")}], "failing_slices": [names], "reasons": [str],
    "max": {metric: value}}`` (and ``one_run_audit``: its bound and claim, when given).
    """
    from privacy_audit.components.membership_inference.slicing import slice_name

    failures: List[Dict[str, Any]] = []
    maxima: Dict[str, Optional[float]] = {m: None for m in GATE_METRICS}
    for r in results_obj.get("results", []):
        for metric in GATE_METRICS:
            value = r.get(metric)
            if value is None:
                continue
            if maxima[metric] is None or value > maxima[metric]:
                maxima[metric] = float(value)
            limit = thresholds.get(metric)
            if limit is not None and value > limit:
                failures.append({"slice": r["slice"], "slice_name": slice_name(r["slice"]), "attack": r["attack"],
                                 "metric": metric, "value": float(value), "threshold": float(limit)})
    failing = sorted({f["slice_name"] for f in failures})
    reasons = [f"{len(failures)} slice/attack result(s) above the thresholds (slices: {', '.join(failing)})"] \
        if failures else []
    out: Dict[str, Any] = {"thresholds": dict(thresholds), "failures": failures, "failing_slices": failing}
    if one_run_audit is not None:
        bound = _finite_or_none(one_run_audit.get("epsilon_lower_bound"))
        claim = _finite_or_none(one_run_audit.get("accountant_epsilon"))
        out["one_run_audit"] = {"epsilon_lower_bound": bound, "accountant_epsilon": claim,
                                "confidence": one_run_audit.get("confidence"),
                                "violated": bool(one_run_audit.get("violated"))}
        if one_run_audit.get("violated"):
            message = one_run_audit.get("message") or (
                f"the one-run audit proves ε >= {bound} but the accountant claims ε = {claim}")
            failures.append({"slice": None, "slice_name": "one_run_audit", "attack": "one_run_audit",
                             "metric": "one_run_audit_epsilon_lower_bound", "value": bound, "threshold": claim,
                             "reason": message})
            reasons.append(message)
    out.update({"blessed": not failures, "reasons": reasons, "max": maxima})
    return out


def check_baseline_model(baseline: Mapping[str, Any], model_uri: str, model_id: Optional[int]) -> None:
    """ValueError when a baseline blessing (e.g. TFMA's) names another model than the audited one (its
    ``current_model`` / ``current_model_id`` custom properties)."""
    other_id, other_uri = baseline.get("current_model_id"), baseline.get("current_model")
    if other_id is not None and model_id is not None and int(other_id) != int(model_id):
        raise ValueError(f"baseline_blessing ({baseline.get('uri')}) blesses model id {other_id} at {other_uri}, "
                         f"not the audited model id {model_id} at {model_uri}: wire the same Trainer's model")
    if other_uri and os.path.normpath(str(other_uri)) != os.path.normpath(model_uri):
        raise ValueError(f"baseline_blessing ({baseline.get('uri')}) blesses the model at {other_uri}, not the "
                         f"audited model at {model_uri}: wire the same Trainer's model")


def and_baseline(blessing: Dict[str, Any], baseline: Mapping[str, Any]) -> Dict[str, Any]:
    """The privacy blessing ANDed with a baseline blessing (``{"blessed": bool | None, "uri": ...}``): not
    blessed when the baseline is not (a baseline without a ``blessed`` value counts as not blessed, as for
    TFX's Pusher). Records the baseline under ``baseline`` and ``privacy_blessed``."""
    ok = bool(baseline.get("blessed"))
    out = dict(blessing, privacy_blessed=bool(blessing["blessed"]),
               baseline={k: baseline.get(k) for k in ("blessed", "uri", "current_model", "current_model_id")})
    if not ok:
        why = ("has no blessed property (an Evaluator without thresholds writes none)"
               if baseline.get("blessed") is None else "is NOT_BLESSED")
        out["reasons"] = list(blessing.get("reasons", [])) + [f"the baseline blessing {why} ({baseline.get('uri')})"]
        out["blessed"] = False
    return out


def bless(results_obj: Mapping[str, Any], thresholds: Mapping[str, float],
          one_run_audit: Optional[Mapping[str, Any]] = None,
          baseline: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """:func:`privacy_gate`, ANDed with ``baseline`` when given (:func:`and_baseline`); logs the verdict."""
    blessing = privacy_gate(results_obj, thresholds, one_run_audit)
    if baseline is not None:
        blessing = and_baseline(blessing, baseline)
    if blessing["blessed"]:
        _LOG.info("blessed (%s)", dict(thresholds) or "no thresholds")
    else:
        _LOG.warning("NOT blessed: %s", "; ".join(blessing["reasons"]))
    return blessing


def write_blessing(directory: str, blessing: Mapping[str, Any]) -> None:
    """``blessing.json`` and, as TFMA's Evaluator writes a ModelBlessing (what TFX's Pusher checks), an empty
    ``BLESSED`` or ``NOT_BLESSED`` file."""
    io.write_text(io.join(directory, layout.BLESSING_FILE), json.dumps(blessing, indent=1, allow_nan=False) + "\n")
    io.write_text(io.join(directory, layout.BLESSED_MARKER if blessing["blessed"] else layout.NOT_BLESSED_MARKER), "")
