"""Assembling results objects: the results metadata every audit writes (:func:`run_metadata`, the in-memory
and the Beam path alike) and one model's results from the Beam pipeline's items (counts, samples' results,
statistics, plan): the slices kept and skipped, in the in-memory path's order. Imports no Beam."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Tuple

from privacy_audit.components.membership_inference import results as results_lib
from privacy_audit.components.membership_inference import slicing as slicing_lib
from privacy_audit.components.membership_inference.records import problem_messages
from privacy_audit.components.membership_inference.slicing import slice_key

if TYPE_CHECKING:  # pragma: no cover (settings imports Beam; the in-memory path must not)
    from privacy_audit.components.membership_inference.settings import AuditSettings


def assemble_results(items: Iterable[Tuple], settings: AuditSettings, metadata: Mapping[str, Any]
                     ) -> Tuple[Optional[Dict[str, Any]], List[str], Dict[str, Any]]:
    """Builds one model's results object from the pipeline's items.

    Items: ``("stats", dict)``, ``("plan", dict)``, ``("counts", slice_key, n_m, n_n)``,
    ``("result", slice_key, attack, entry)``, ``("duplicates", n)``, ``("per_example", path, rows)``.
    Returns ``(results object or None, errors, info)``; results and skipped slices are in the in-memory
    path's order (slices as :func:`slicing.make_slices` lists them, then attacks as given).
    """
    stats: Dict[str, float] = {}
    plan: Optional[Dict[str, Any]] = None
    counts: Dict[str, Tuple[int, int]] = {}
    found: Dict[Tuple[str, str], Dict[str, Any]] = {}
    n_dup: Optional[int] = None
    per_example: List[str] = []
    for item in items:
        kind = item[0]
        if kind == "stats":
            stats = item[1]
        elif kind == "plan":
            plan = item[1]
        elif kind == "counts":
            counts[item[1]] = (item[2], item[3])
        elif kind == "result":
            found[(item[1], item[2])] = item[3]
        elif kind == "duplicates":
            n_dup = (n_dup or 0) + int(item[1])
        elif kind == "per_example":
            per_example.append(item[1])
    problems = {k[len("problem:"):]: int(v) for k, v in stats.items() if k.startswith("problem:")}
    errors = problem_messages(problems)
    nm, nn = int(stats.get("n_members", 0)), int(stats.get("n_nonmembers", 0))
    if nm == 0 and not problems:
        errors.append("no members: the members' split (train) has no examples")
    if nn == 0 and not problems:
        errors.append("no non-members: the non-members' split (test) has no examples")
    info = {"n_duplicate_examples": n_dup, "per_example_files": sorted(per_example)}
    if errors:
        return None, errors, info

    spec = settings.slicing
    n_classes = int(stats.get("max:n_classes", stats.get("max:label", -1) + 1))
    feature_values = {key: (None if plan is None else plan["feature_values"].get(key)) for key in spec.feature_keys}
    candidates, skipped = slicing_lib.slice_candidates(
        spec, n_classes=n_classes, feature_values=feature_values, max_feature_values=settings.max_feature_values,
        n_members=nm, n_nonmembers=nn)
    rows: List[Dict[str, Any]] = []
    for cand, _, _ in candidates:
        key = slice_key(cand)
        cm, cn = counts.get(key, (0, 0))
        small = slicing_lib.too_small(cand, cm, cn, settings.min_slice_size)
        if small is not None:
            skipped.append(small)
            continue
        for attack in settings.attacks:
            entry = found.get((key, attack))
            if entry is None:
                errors.append(f"internal: no result for slice {key} and attack {attack}")
                continue
            rows.append(entry)
    if errors:
        return None, errors, info

    def ratio(a: str, b: str) -> Optional[float]:
        return float(stats[a] / stats[b]) if a in stats and stats.get(b) else None

    md = run_metadata(accuracy_train=ratio("correct_members", "n_members"),
                      accuracy_test=ratio("correct_nonmembers", "n_nonmembers"), n_members=nm, n_nonmembers=nn,
                      n_duplicate_examples=n_dup, attacks=settings.attacks, slicing=spec, seed=settings.seed,
                      min_slice_size=settings.min_slice_size, delta=settings.delta, confidence=settings.confidence)
    md.update({"loss_train": ratio("loss_sum_members", "n_members"),
               "loss_test": ratio("loss_sum_nonmembers", "n_nonmembers"), "engine": "beam",
               "sample_size": int(settings.sample_size)})
    if spec.by_percentiles and plan is not None:
        md["loss_decile_edges_exact"] = bool(plan.get("loss_edges_exact"))
    md = with_given_metadata(md, metadata)
    return results_lib.build_results(rows, md, skipped), [], info


def run_metadata(*, accuracy_train: Optional[float], accuracy_test: Optional[float], n_members: int,
                 n_nonmembers: int, n_duplicate_examples: Optional[int], attacks, slicing, seed: int,
                 min_slice_size: int, delta: float, confidence: float) -> Dict[str, Any]:
    """The results metadata every audit writes, in-memory (:func:`api.run_attacks`) or Beam."""
    return {"accuracy_train": accuracy_train, "accuracy_test": accuracy_test, "n_members": int(n_members),
            "n_nonmembers": int(n_nonmembers), "n_duplicate_examples": n_duplicate_examples,
            "attacks": list(attacks), "slicing": slicing.to_json(), "seed": int(seed),
            "min_slice_size": int(min_slice_size), "delta": float(delta), "confidence": float(confidence)}


def with_given_metadata(md: Dict[str, Any], given: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``md`` updated with the caller's metadata (model_variant, epoch, ε, ...); a given None does not replace a
    computed value."""
    out = dict(md)
    for key, value in (given or {}).items():
        if value is not None or key not in out:
            out[key] = value
    return out
