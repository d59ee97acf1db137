"""The attack results JSON (DESIGN.md): build, validate, write atomically, read.

    {"schema_version": 1,
     "metadata": {"model_variant": str, "epoch": int|null, "accuracy_train": f|null, "accuracy_test": f|null,
                  "epsilon": f|null, ...},
     "results": [{"slice": {...}, "attack": str, "n_members": int, "n_nonmembers": int, "auc": f,
                  "attacker_advantage": f, "ppv": f, "tpr_at_fpr": {"0.01": f, "0.001": f},
                  "epsilon_lower_bound": f, "roc": {"fpr": [...], "tpr": [...]},
                  "auc_interval": [lo, hi], "tpr_at_fpr_interval": {"0.01": [lo, hi], "0.001": null},
                  "tpr_at_fpr_unresolved": ["0.001"], ...}],
     "skipped_slices": [{"slice": {...}, "n_members": int, "n_nonmembers": int, "reason": str}]}

Extra keys are allowed everywhere (readers must ignore what they do not know). JSON is strict: NaN and
infinities are written as null and refused on reading. No pickle anywhere. Standard library only.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional

SCHEMA_VERSION = 1
METADATA_DEFAULTS: Dict[str, Any] = {"model_variant": "model", "epoch": None, "accuracy_train": None,
                                     "accuracy_test": None, "epsilon": None}
RESULT_KEYS = ("slice", "attack", "n_members", "n_nonmembers", "auc", "attacker_advantage", "ppv",
               "tpr_at_fpr", "epsilon_lower_bound", "roc")


class ResultsValidationError(ValueError):
    """The results object does not follow the schema; the message starts with the bad field's path."""


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays become numbers/lists, non-finite floats become None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    # numpy types without importing numpy
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return to_jsonable(obj.item())
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def build_results(results: Iterable[Mapping[str, Any]], metadata: Optional[Mapping[str, Any]] = None,
                  skipped_slices: Iterable[Mapping[str, Any]] = ()) -> Dict[str, Any]:
    """The results object: metadata (defaults filled in), results and skipped slices; validated."""
    md = dict(METADATA_DEFAULTS)
    md.update(metadata or {})
    obj = {"schema_version": SCHEMA_VERSION, "metadata": to_jsonable(md),
           "results": to_jsonable(list(results)), "skipped_slices": to_jsonable(list(skipped_slices))}
    validate_results(obj)
    return obj


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------

def _fail(path: str, msg: str) -> None:
    raise ResultsValidationError(f"{path}: {msg}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(obj: Mapping[str, Any], key: str, path: str, *, lo: Optional[float] = None,
            hi: Optional[float] = None, nullable: bool = False) -> None:
    if key not in obj:
        _fail(f"{path}.{key}", "missing")
    v = obj[key]
    if v is None and nullable:
        return
    if not _is_number(v):
        _fail(f"{path}.{key}", f"expected a finite number{' or null' if nullable else ''}, got {v!r}")
    if lo is not None and v < lo - 1e-12 or hi is not None and v > hi + 1e-12:
        _fail(f"{path}.{key}", f"{v!r} outside [{lo}, {hi}]")


def _int(obj: Mapping[str, Any], key: str, path: str, *, nullable: bool = False, lo: Optional[int] = None):
    if key not in obj:
        _fail(f"{path}.{key}", "missing")
    v = obj[key]
    if v is None and nullable:
        return
    if not isinstance(v, int) or isinstance(v, bool):
        _fail(f"{path}.{key}", f"expected an integer{' or null' if nullable else ''}, got {v!r}")
    if lo is not None and v < lo:
        _fail(f"{path}.{key}", f"{v} is below {lo}")


def _slice(s: Any, path: str) -> None:
    if not isinstance(s, Mapping):
        _fail(path, f"expected an object like {{\"feature\": \"entire_dataset\"}}, got {s!r}")
    feature = s.get("feature")
    if not isinstance(feature, str) or not feature:
        _fail(f"{path}.feature", f"expected a non-empty string, got {feature!r}")
    if feature != "entire_dataset":
        if "value" not in s:
            _fail(f"{path}.value", f"missing (required for feature {feature!r})")
        v = s["value"]
        if not (v is None or isinstance(v, (str, bool)) or _is_number(v)):
            _fail(f"{path}.value", f"expected a string, number or boolean, got {v!r}")
        if feature == "class" and (not isinstance(v, int) or isinstance(v, bool)):
            _fail(f"{path}.value", f"class slices need an integer value, got {v!r}")
        if feature == "correctly_classified" and not isinstance(v, bool):
            _fail(f"{path}.value", f"correctly_classified slices need a boolean value, got {v!r}")


def _interval(v: Any, path: str) -> None:
    if not (isinstance(v, list) and len(v) == 2 and all(_is_number(x) and -1e-12 <= x <= 1 + 1e-12 for x in v)
            and v[0] <= v[1] + 1e-12):
        _fail(path, f"expected [lower, upper] with 0 <= lower <= upper <= 1, got {v!r}")


def _intervals(r: Mapping[str, Any], path: str) -> None:
    """The optional interval fields (older files have none): ``auc_interval`` [lo, hi] around ``auc``,
    ``tpr_at_fpr_interval`` {key: [lo, hi] | null}; a key in ``tpr_at_fpr_unresolved`` has a null TPR
    (an unresolvable TPR is never a number)."""
    if r.get("auc_interval") is not None:
        _interval(r["auc_interval"], f"{path}.auc_interval")
        lo, hi = r["auc_interval"]
        if not lo - 1e-9 <= r["auc"] <= hi + 1e-9:
            _fail(f"{path}.auc_interval", f"{r['auc_interval']!r} does not contain auc {r['auc']!r}")
    intervals = r.get("tpr_at_fpr_interval")
    if intervals is not None:
        if not isinstance(intervals, Mapping):
            _fail(f"{path}.tpr_at_fpr_interval", f"expected an object, got {intervals!r}")
        for key, v in intervals.items():
            if v is not None:
                _interval(v, f"{path}.tpr_at_fpr_interval.{key}")
    unresolved = r.get("tpr_at_fpr_unresolved")
    if unresolved is not None:
        if not isinstance(unresolved, list):
            _fail(f"{path}.tpr_at_fpr_unresolved", f"expected a list of FPR keys, got {unresolved!r}")
        for key in unresolved:
            if r["tpr_at_fpr"].get(key) is not None:
                _fail(f"{path}.tpr_at_fpr.{key}", f"is {r['tpr_at_fpr'][key]!r} but the FPR is listed as "
                      "unresolved (too few non-members): it must be null")


def _result(r: Any, path: str) -> None:
    if not isinstance(r, Mapping):
        _fail(path, f"expected an object, got {type(r).__name__}")
    _slice(r.get("slice"), f"{path}.slice")
    if not isinstance(r.get("attack"), str) or not r.get("attack"):
        _fail(f"{path}.attack", f"expected a non-empty string, got {r.get('attack')!r}")
    _int(r, "n_members", path, lo=0)
    _int(r, "n_nonmembers", path, lo=0)
    _number(r, "auc", path, lo=0.0, hi=1.0)
    _number(r, "attacker_advantage", path, lo=0.0, hi=1.0)
    _number(r, "ppv", path, lo=0.0, hi=1.0, nullable=True)
    _number(r, "epsilon_lower_bound", path, lo=0.0)
    tpr_at = r.get("tpr_at_fpr")
    if not isinstance(tpr_at, Mapping):
        _fail(f"{path}.tpr_at_fpr", f"expected an object like {{\"0.01\": 0.1}}, got {tpr_at!r}")
    for key in tpr_at:
        try:
            float(key)
        except ValueError:
            _fail(f"{path}.tpr_at_fpr", f"key {key!r} is not an FPR value")
        _number(tpr_at, key, f"{path}.tpr_at_fpr", lo=0.0, hi=1.0, nullable=True)
    _intervals(r, path)
    roc = r.get("roc")
    if not isinstance(roc, Mapping):
        _fail(f"{path}.roc", f"expected an object {{\"fpr\": [...], \"tpr\": [...]}}, got {roc!r}")
    for key in ("fpr", "tpr"):
        v = roc.get(key)
        if not isinstance(v, list):
            _fail(f"{path}.roc.{key}", f"expected a list of numbers, got {type(v).__name__}")
        for i, x in enumerate(v):
            if not _is_number(x) or not -1e-12 <= x <= 1 + 1e-12:
                _fail(f"{path}.roc.{key}[{i}]", f"expected a number in [0, 1], got {x!r}")
    if len(roc["fpr"]) != len(roc["tpr"]):
        _fail(f"{path}.roc", f"fpr has {len(roc['fpr'])} points but tpr has {len(roc['tpr'])}")


def validate_results(obj: Any) -> None:
    """Raises ResultsValidationError naming the first bad field (e.g. ``results[3].auc``)."""
    if not isinstance(obj, Mapping):
        _fail("$", f"expected a JSON object, got {type(obj).__name__}")
    if obj.get("schema_version") != SCHEMA_VERSION:
        _fail("schema_version", f"expected {SCHEMA_VERSION}, got {obj.get('schema_version')!r}")
    md = obj.get("metadata")
    if not isinstance(md, Mapping):
        _fail("metadata", f"expected an object, got {md!r}")
    if not isinstance(md.get("model_variant"), str):
        _fail("metadata.model_variant", f"expected a string, got {md.get('model_variant')!r}")
    if "epoch" in md:
        _int(md, "epoch", "metadata", nullable=True, lo=0)
    for key in ("accuracy_train", "accuracy_test"):
        if key in md:
            _number(md, key, "metadata", lo=0.0, hi=1.0, nullable=True)
    if "epsilon" in md:
        _number(md, "epsilon", "metadata", lo=0.0, nullable=True)
    results = obj.get("results")
    if not isinstance(results, list):
        _fail("results", f"expected a list, got {type(results).__name__}")
    for i, r in enumerate(results):
        _result(r, f"results[{i}]")
    skipped = obj.get("skipped_slices", [])
    if not isinstance(skipped, list):
        _fail("skipped_slices", f"expected a list, got {type(skipped).__name__}")
    for i, s in enumerate(skipped):
        path = f"skipped_slices[{i}]"
        if not isinstance(s, Mapping):
            _fail(path, "expected an object")
        if not isinstance(s.get("slice"), Mapping):
            _fail(f"{path}.slice", f"expected an object, got {s.get('slice')!r}")
        if not isinstance(s.get("reason"), str):
            _fail(f"{path}.reason", f"expected a string, got {s.get('reason')!r}")


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------

def dumps_results(obj: Mapping[str, Any]) -> str:
    """Strict JSON text (non-finite floats as null) of a validated results object."""
    clean = to_jsonable(obj)
    validate_results(clean)
    return json.dumps(clean, allow_nan=False, indent=1)


def write_results(path: str, obj: Mapping[str, Any]) -> None:
    """Validates and writes ``obj`` to ``path`` (any scheme) atomically with :func:`common.io.write_text`
    (readers never see a partial file). Creates the parent directory."""
    from privacy_audit.components.common import io

    io.write_text(path, dumps_results(obj) + "\n")


def _refuse_constant(name: str) -> None:
    raise ResultsValidationError(f"$: non-standard JSON constant {name} (NaN/Infinity are not allowed)")


def loads_results(text: str, source: str = "results") -> Dict[str, Any]:
    """Parses and validates results JSON text."""
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise ResultsValidationError(f"{source}: not valid JSON ({e})") from None
    try:
        validate_results(obj)
    except ResultsValidationError as e:
        raise ResultsValidationError(f"{source}: {e}") from None
    return obj


def read_results(path: str) -> Dict[str, Any]:
    """Reads and validates a results file; ResultsValidationError names the file and the bad field."""
    from privacy_audit.components.common import io

    return loads_results(io.read_text(path), source=path)


def max_metric(obj: Mapping[str, Any], metric: str) -> Optional[float]:
    """Maximum of a top-level metric (``auc``, ``attacker_advantage``, ...) or of ``tpr_at_fpr.<key>``
    over all results, None when there is none."""
    values: List[float] = []
    for r in obj.get("results", []):
        if metric.startswith("tpr_at_fpr."):
            v = r.get("tpr_at_fpr", {}).get(metric[len("tpr_at_fpr."):])
        else:
            v = r.get(metric)
        if _is_number(v):
            values.append(float(v))
    return max(values) if values else None
