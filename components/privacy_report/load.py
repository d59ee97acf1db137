"""Readers for the report's inputs: attack results JSON, privacy ledger JSON, blessing JSON.

The schemas are DESIGN.md's "Attack results JSON" (validated by membership_inference.results, its
owner) and CONTRACTS.md's "Privacy ledger JSON". Every reader accepts a path or an already-parsed
dict and raises `ReportInputError` naming the file and the field when something is wrong, so a
broken upstream artifact is found at once rather than as an odd-looking plot.

No TFX here: this is plain Python usable on any saved results.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any, Union

from privacy_audit.components.common import io
from privacy_audit.components.membership_inference import results as results_schema

LEDGER_SCHEMA_VERSION = 1
# The false-positive rate of the headline "TPR at low FPR" metric (0.1 %).
HEADLINE_FPR = 0.001

PathOrDict = Union[str, os.PathLike, Mapping]


class ReportInputError(ValueError):
    """An input file of the privacy report is missing, unreadable or does not match its schema."""

    def __init__(self, source: str, field: str | None, problem: str):
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}: field '{field}'" if field else source
        super().__init__(f"{where}: {problem}")


@dataclasses.dataclass(frozen=True)
class AttackResult:
    """One attack on one slice of one model (one entry of a results file's "results" list)."""

    slice: Mapping[str, Any]
    attack: str
    auc: float
    attacker_advantage: float
    n_members: int | None = None
    n_nonmembers: int | None = None
    ppv: float | None = None
    tpr_at_fpr: Mapping[str, float] = dataclasses.field(default_factory=dict)
    epsilon_lower_bound: float | None = None
    roc_fpr: tuple[float, ...] = ()
    roc_tpr: tuple[float, ...] = ()
    # 95% intervals (older results files have none): auc [lo, hi]; per FPR key [lo, hi] of the TPR.
    auc_interval: tuple[float, float] | None = None
    tpr_at_fpr_interval: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    # FPR keys the slice's non-members cannot resolve (TPR null there), and the FPR each reported
    # threshold really has.
    tpr_at_fpr_unresolved: tuple[str, ...] = ()
    tpr_at_fpr_achieved_fpr: Mapping[str, float] = dataclasses.field(default_factory=dict)
    epsilon_lower_bound_details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def slice_label(self) -> str:
        return slice_label(self.slice)

    def tpr_at(self, fpr: float = HEADLINE_FPR) -> float | None:
        """TPR at the given FPR, matching the "tpr_at_fpr" keys by value ("0.001" == "1e-3")."""
        for key, value in self.tpr_at_fpr.items():
            if math.isclose(float(key), fpr, rel_tol=1e-9, abs_tol=0.0):
                return value
        return None

    def _by_fpr(self, table: Mapping[str, Any], fpr: float):
        for key, value in table.items():
            if math.isclose(float(key), fpr, rel_tol=1e-9, abs_tol=0.0):
                return value
        return None

    def tpr_interval(self, fpr: float = HEADLINE_FPR) -> tuple[float, float] | None:
        """The interval of :meth:`tpr_at` (None when unresolved or not recorded)."""
        return self._by_fpr(self.tpr_at_fpr_interval, fpr)

    def tpr_unresolved(self, fpr: float = HEADLINE_FPR) -> bool:
        """True when the slice's non-members cannot resolve this FPR (the evaluator's rule, or, for
        results files written before it, fewer than 1/fpr non-members)."""
        if any(math.isclose(float(k), fpr, rel_tol=1e-9) for k in self.tpr_at_fpr_unresolved):
            return True
        return self.n_nonmembers is not None and self.n_nonmembers * fpr < 1.0 - 1e-9


@dataclasses.dataclass(frozen=True)
class ResultsFile:
    """One attack results file: every attack and slice evaluated on one model (variant, epoch)."""

    source: str
    model_variant: str
    epoch: int | None
    accuracy_train: float | None
    accuracy_test: float | None
    epsilon: float | None
    # None when the file does not say; `group_by_variant` then takes the latest epoch as final.
    is_final: bool | None
    results: tuple[AttackResult, ...]
    metadata: Mapping[str, Any]
    # Slices the evaluator did not attack (too few examples...): {"slice", "n_members", "n_nonmembers", "reason"}.
    skipped_slices: tuple[Mapping[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class Ledger:
    """The privacy ledger of one trained model variant (only the fields the report uses, plus raw)."""

    source: str
    model_variant: str
    private: bool
    epsilon: float | None  # final ε; None means infinite (non-private, or private without noise)
    delta: float | None
    noise_multiplier: float | None
    accountant: str | None
    epochs: tuple[Mapping[str, Any], ...]
    raw: Mapping[str, Any]
    # one_run_audit.json of the same ModelRun (DPTrainer audit_canaries), when the audit ran.
    one_run_audit: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Blessing:
    """Outcome of the evaluator's privacy gate for one variant."""

    source: str
    blessed: bool
    failures: tuple[Mapping[str, Any], ...]
    thresholds: Mapping[str, Any]
    model_variant: str | None
    # Whether the blessing listed its thresholds (the evaluator's blessing.json always does); a blessing
    # without them (e.g. a bare true/false from the caller) is taken as a configured gate.
    thresholds_known: bool = False


@dataclasses.dataclass(frozen=True)
class VariantResults:
    """All results files of one model variant, sorted by epoch, with the final model's file."""

    name: str
    files: tuple[ResultsFile, ...]
    final: ResultsFile


def slice_label(slice_spec: Mapping[str, Any]) -> str:
    """Human label of a slice: "entire_dataset", "class=3", "percentile=[0, 10]"."""
    feature = str(slice_spec.get("feature", "?"))
    if "value" not in slice_spec:
        return feature
    value = slice_spec["value"]
    if isinstance(value, str):
        return f"{feature}={value}"
    return f"{feature}={json.dumps(value)}"


def slice_sort_key(slice_spec: Mapping[str, Any]) -> tuple:
    """Order slices: entire dataset first, then by feature, then by value (numbers numerically)."""
    feature = str(slice_spec.get("feature", ""))
    value = slice_spec.get("value")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value_key = (0, float(value), "")
    else:
        value_key = (1, 0.0, json.dumps(value, sort_keys=True, default=str))
    return (feature != "entire_dataset", feature, value_key)


# --------------------------------------------------------------------------- helpers


def _load_json(source: PathOrDict, kind: str, name: str | None = None) -> tuple[dict, str]:
    if isinstance(source, Mapping):
        return dict(source), name or f"<{kind} object>"
    path = os.fspath(source)
    try:
        data = json.loads(io.read_text(path))
    except FileNotFoundError:
        raise ReportInputError(path, None, f"{kind} file not found") from None
    except json.JSONDecodeError as e:
        raise ReportInputError(path, None, f"not valid JSON ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportInputError(path, None, f"cannot read {kind} file ({e})") from None
    if not isinstance(data, dict):
        raise ReportInputError(path, None, f"top level must be a JSON object, got {type(data).__name__}")
    return data, path


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(
    obj: Mapping, key: str, source: str, field: str, *, required: bool = True,
    lo: float | None = None, hi: float | None = None, allow_inf: bool = False,
) -> float | None:
    if key not in obj or obj[key] is None:
        if required:
            raise ReportInputError(source, field, "missing (a number is required)")
        return None
    value = obj[key]
    if not _is_number(value):
        raise ReportInputError(source, field, f"must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ReportInputError(source, field, f"must be finite, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ReportInputError(source, field, f"must be in [{lo}, {hi}], got {value!r}")
    return value


def _integer(obj: Mapping, key: str, source: str, field: str, *, required: bool) -> int | None:
    if key not in obj or obj[key] is None:
        if required:
            raise ReportInputError(source, field, "missing (an integer is required)")
        return None
    value = obj[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ReportInputError(source, field, f"must be a non-negative integer, got {value!r}")
    return value


def _string(obj: Mapping, key: str, source: str, field: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise ReportInputError(source, field, f"must be a non-empty string, got {value!r}")
    return value


def _check_schema_version(data: Mapping, source: str, expected: int) -> None:
    version = data.get("schema_version")
    if version is None:
        raise ReportInputError(source, "schema_version", "missing")
    if version != expected:
        raise ReportInputError(
            source, "schema_version", f"unsupported version {version!r} (this reader knows {expected})")


# --------------------------------------------------------------------------- readers


def _attack_result(entry: Mapping[str, Any]) -> AttackResult:
    # `entry` has passed membership_inference.results.validate_results.
    roc = entry.get("roc") or {}
    tpr = entry.get("tpr_at_fpr") or {}
    return AttackResult(
        slice=dict(entry["slice"]),
        attack=entry["attack"],
        auc=float(entry["auc"]),
        attacker_advantage=float(entry["attacker_advantage"]),
        n_members=entry.get("n_members"),
        n_nonmembers=entry.get("n_nonmembers"),
        ppv=None if entry.get("ppv") is None else float(entry["ppv"]),
        tpr_at_fpr={str(k): float(v) for k, v in tpr.items() if v is not None},
        # null = not computed, or infinite (strict JSON has no inf).
        epsilon_lower_bound=None if entry.get("epsilon_lower_bound") is None else float(entry["epsilon_lower_bound"]),
        roc_fpr=tuple(float(v) for v in roc.get("fpr", ())),
        roc_tpr=tuple(float(v) for v in roc.get("tpr", ())),
        auc_interval=None if entry.get("auc_interval") is None else tuple(entry["auc_interval"]),
        tpr_at_fpr_interval={str(k): tuple(v) for k, v in (entry.get("tpr_at_fpr_interval") or {}).items()
                             if v is not None},
        tpr_at_fpr_unresolved=tuple(str(k) for k in entry.get("tpr_at_fpr_unresolved") or ()),
        tpr_at_fpr_achieved_fpr={str(k): float(v) for k, v in (entry.get("tpr_at_fpr_achieved_fpr") or {}).items()
                                 if v is not None},
        epsilon_lower_bound_details=dict(entry.get("epsilon_lower_bound_details") or {}),
    )


def read_results(source: PathOrDict | ResultsFile, name: str | None = None) -> ResultsFile:
    """Read and validate one attack results file (path or parsed dict).

    Args:
      name: where a parsed dict came from, for error messages (default: the path).

    The schema is checked by membership_inference.results (the schema's owner); this adds the
    report's own needs (metadata.is_final) and converts to `ResultsFile`.

    Raises:
      ReportInputError: naming the file and field that is missing or malformed.
    """
    if isinstance(source, ResultsFile):
        return source
    if isinstance(source, Mapping):
        name, data = name or "<attack results object>", dict(source)
        try:
            results_schema.validate_results(data)
        except results_schema.ResultsValidationError as e:
            raise ReportInputError(name, None, str(e)) from None
    else:
        name = os.fspath(source)
        try:
            text = io.read_text(name)
        except FileNotFoundError:
            raise ReportInputError(name, None, "attack results file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ReportInputError(name, None, f"cannot read attack results file ({e})") from None
        try:
            # The error message starts with the file name already.
            data = results_schema.loads_results(text, source=name)
        except results_schema.ResultsValidationError as e:
            raise ReportInputError(name, None, str(e).removeprefix(f"{name}: ")) from None
    meta = data["metadata"]
    is_final = meta.get("is_final")
    if is_final is not None and not isinstance(is_final, bool):
        raise ReportInputError(name, "metadata.is_final", f"must be true or false, got {is_final!r}")
    skipped = data.get("skipped_slices") or []
    return ResultsFile(
        source=name,
        model_variant=meta["model_variant"],
        epoch=meta.get("epoch"),
        accuracy_train=meta.get("accuracy_train"),
        accuracy_test=meta.get("accuracy_test"),
        epsilon=meta.get("epsilon"),
        is_final=is_final,
        results=tuple(_attack_result(e) for e in data["results"]),
        metadata=dict(meta),
        skipped_slices=tuple(dict(s) for s in skipped),
    )


def read_ledger(source: PathOrDict | Ledger, name: str | None = None) -> Ledger:
    """Read and validate a privacy ledger (CONTRACTS.md "Privacy ledger JSON").

    The final ε is derived from the ledger's DP events by `accounting.epsilon_of_ledger` (the one function every
    reader of a ledger uses); the top-level "epsilon" the trainer writes beside them is required by the schema
    but not read back as a source, except from a ledger that records no events (written by hand or by another
    tool), where it is all there is. None = infinite (non-private training, or no noise).
    `name` says where a parsed dict came from, for error messages.
    """
    if isinstance(source, Ledger):
        return source
    data, name = _load_json(source, "privacy ledger", name)
    _check_schema_version(data, name, LEDGER_SCHEMA_VERSION)
    variant = _string(data, "model_variant", name, "model_variant")
    private = data.get("private")
    if not isinstance(private, bool):
        raise ReportInputError(name, "private", f"must be true or false, got {private!r}")
    epochs = data.get("epochs", [])
    if not isinstance(epochs, list) or not all(isinstance(e, Mapping) for e in epochs):
        raise ReportInputError(name, "epochs", "must be a list of objects")
    for i, e in enumerate(epochs):
        _integer(e, "epoch", name, f"epochs[{i}].epoch", required=True)
        _number(e, "epsilon", name, f"epochs[{i}].epsilon", required=False, lo=0.0, allow_inf=True)
    if "epsilon" not in data:
        raise ReportInputError(name, "epsilon", "missing (null is allowed for non-private training)")
    epsilon = _number(data, "epsilon", name, "epsilon", required=False, lo=0.0, allow_inf=True)
    delta = _number(data, "delta", name, "delta", required=False, lo=0.0, hi=1.0)
    if private and delta is None:
        raise ReportInputError(name, "delta", "is null but the ledger says private=true")
    if data.get("events"):
        epsilon = _epsilon_of_events(data, name)
    if epsilon is not None and math.isinf(epsilon):
        epsilon = None
    accountant = data.get("accountant")
    return Ledger(
        source=name,
        model_variant=variant,
        private=private,
        epsilon=epsilon,
        delta=delta,
        noise_multiplier=_number(data, "noise_multiplier", name, "noise_multiplier", required=False, lo=0.0),
        accountant=accountant if isinstance(accountant, str) else None,
        epochs=tuple(dict(e) for e in epochs),
        raw=data,
    )


def _epsilon_of_events(data: Mapping[str, Any], name: str) -> float | None:
    from privacy_audit.components.dp_trainer import accounting

    events = data["events"]
    if not isinstance(events, list) or not all(isinstance(e, Mapping) for e in events):
        raise ReportInputError(name, "events", "must be a list of objects")
    for i, e in enumerate(events):
        _number(e, "sampling_probability", name, f"events[{i}].sampling_probability", lo=0.0, hi=1.0)
        _number(e, "noise_multiplier", name, f"events[{i}].noise_multiplier", lo=0.0)
        _integer(e, "steps", name, f"events[{i}].steps", required=True)
    try:
        return accounting.epsilon_of_ledger(data)
    except (ValueError, TypeError, ArithmeticError) as e:
        raise ReportInputError(name, "events", f"no ε can be derived from them: {e}") from None


def read_one_run_audit(source: PathOrDict, name: str | None = None) -> dict[str, Any]:
    """Read and check a one_run_audit.json (DPTrainer's one-run privacy audit): needs
    ``epsilon_lower_bound`` (number >= 0), ``accountant_epsilon`` (number or null = infinite), ``violated``
    (bool) and ``confidence`` (in (0, 1)). Returns the parsed dict."""
    data, name = _load_json(source, "one-run audit", name)
    _number(data, "epsilon_lower_bound", name, "epsilon_lower_bound", lo=0.0)
    _number(data, "accountant_epsilon", name, "accountant_epsilon", required=False, lo=0.0)
    _number(data, "confidence", name, "confidence", lo=0.0, hi=1.0)
    if not isinstance(data.get("violated"), bool):
        raise ReportInputError(name, "violated", f"must be true or false, got {data.get('violated')!r}")
    return data


def read_blessing(
    source: PathOrDict | Blessing, model_variant: str | None = None, name: str | None = None
) -> Blessing:
    """Read a blessing.json ({"blessed": bool, "failures": [...], "thresholds": {...}}).

    Args:
      model_variant: the variant it belongs to when the file itself does not say
        (e.g. taken from the artifact's custom property).
      name: where a parsed dict came from, for error messages.
    """
    if isinstance(source, Blessing):
        return source
    data, name = _load_json(source, "blessing", name)
    blessed = data.get("blessed")
    if not isinstance(blessed, bool):
        raise ReportInputError(name, "blessed", f"must be true or false, got {blessed!r}")
    failures = data.get("failures", [])
    if not isinstance(failures, list) or not all(isinstance(f, Mapping) for f in failures):
        raise ReportInputError(name, "failures", "must be a list of objects")
    thresholds = data.get("thresholds", {})
    if not isinstance(thresholds, Mapping):
        raise ReportInputError(name, "thresholds", "must be an object")
    variant = data.get("model_variant", model_variant)
    if variant is not None and not isinstance(variant, str):
        raise ReportInputError(name, "model_variant", f"must be a string, got {variant!r}")
    return Blessing(
        source=name, blessed=blessed, failures=tuple(dict(f) for f in failures),
        thresholds=dict(thresholds), model_variant=variant, thresholds_known="thresholds" in data)


# --------------------------------------------------------------------------- grouping


def _epoch_key(f: ResultsFile) -> tuple:
    # Unknown epochs sort first; among equal epochs a file marked final sorts last.
    return (f.epoch is not None, f.epoch if f.epoch is not None else -1, bool(f.is_final))


def group_by_variant(results: Iterable[PathOrDict | ResultsFile]) -> dict[str, VariantResults]:
    """Read results files and group them by metadata.model_variant (in first-seen order).

    The final model of a variant is its file with metadata.is_final = true (the latest one if
    several); when no file says, the file with the highest epoch.

    Raises:
      ReportInputError: on a malformed file, or when no results are given.
    """
    by_variant: dict[str, list[ResultsFile]] = {}
    for source in results:
        rf = read_results(source)
        by_variant.setdefault(rf.model_variant, []).append(rf)
    if not by_variant:
        raise ReportInputError("<attack results>", None, "no attack results files were given")
    grouped = {}
    for name, files in by_variant.items():
        files.sort(key=_epoch_key)
        finals = [f for f in files if f.is_final]
        final = finals[-1] if finals else files[-1]
        grouped[name] = VariantResults(name=name, files=tuple(files), final=final)
    return grouped


def index_ledgers(ledgers: Iterable[PathOrDict | Ledger]) -> dict[str, Ledger]:
    """Read ledgers and key them by model_variant; two ledgers for one variant is an error."""
    indexed: dict[str, Ledger] = {}
    for source in ledgers:
        ledger = read_ledger(source)
        if ledger.model_variant in indexed:
            raise ReportInputError(
                ledger.source, "model_variant",
                f"second ledger for variant {ledger.model_variant!r} "
                f"(the first is {indexed[ledger.model_variant].source})")
        indexed[ledger.model_variant] = ledger
    return indexed
