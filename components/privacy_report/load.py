"""Readers for the report's inputs: attack results JSON, privacy ledger JSON, blessing JSON.

The schemas are DESIGN.md's "Attack results JSON" and CONTRACTS.md's "Privacy ledger JSON".
Every reader accepts a path or an already-parsed dict, validates what the report uses, and
raises `ReportInputError` naming the file and the field when something is wrong, so a broken
upstream artifact is found at once rather than as a odd-looking plot.

No TFX here: this is plain Python usable on any saved results.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any, Union

RESULTS_SCHEMA_VERSION = 1
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

    @property
    def slice_label(self) -> str:
        return slice_label(self.slice)

    def tpr_at(self, fpr: float = HEADLINE_FPR) -> float | None:
        """TPR at the given FPR, matching the "tpr_at_fpr" keys by value ("0.001" == "1e-3")."""
        for key, value in self.tpr_at_fpr.items():
            if math.isclose(float(key), fpr, rel_tol=1e-9, abs_tol=0.0):
                return value
        return None


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


@dataclasses.dataclass(frozen=True)
class Ledger:
    """The privacy ledger of one trained model variant (only the fields the report uses, plus raw)."""

    source: str
    model_variant: str
    private: bool
    epsilon: float | None  # final ε; None means infinite (non-private)
    delta: float | None
    noise_multiplier: float | None
    accountant: str | None
    epochs: tuple[Mapping[str, Any], ...]
    raw: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Blessing:
    """Outcome of the evaluator's privacy gate for one variant."""

    source: str
    blessed: bool
    failures: tuple[Mapping[str, Any], ...]
    thresholds: Mapping[str, Any]
    model_variant: str | None


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


def _load_json(source: PathOrDict, kind: str) -> tuple[dict, str]:
    if isinstance(source, Mapping):
        return dict(source), f"<{kind} object>"
    path = os.fspath(source)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
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


def _read_attack_result(entry: Any, source: str, field: str) -> AttackResult:
    if not isinstance(entry, Mapping):
        raise ReportInputError(source, field, f"must be an object, got {type(entry).__name__}")
    spec = entry.get("slice")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("feature"), str):
        raise ReportInputError(
            source, f"{field}.slice", f"must be an object with a string 'feature', got {spec!r}")
    attack = _string(entry, "attack", source, f"{field}.attack")

    tpr = entry.get("tpr_at_fpr", {})
    if tpr is None:
        tpr = {}
    if not isinstance(tpr, Mapping):
        raise ReportInputError(source, f"{field}.tpr_at_fpr", f"must be an object, got {tpr!r}")
    tpr_at_fpr = {}
    for key in tpr:
        try:
            float(key)
        except ValueError:
            raise ReportInputError(
                source, f"{field}.tpr_at_fpr", f"keys must be FPR values like \"0.001\", got {key!r}") from None
        value = _number(tpr, key, source, f"{field}.tpr_at_fpr.{key}", required=False, lo=0.0, hi=1.0)
        if value is not None:
            tpr_at_fpr[str(key)] = value

    roc_fpr: tuple[float, ...] = ()
    roc_tpr: tuple[float, ...] = ()
    roc = entry.get("roc")
    if roc is not None:
        if not isinstance(roc, Mapping):
            raise ReportInputError(source, f"{field}.roc", f"must be an object with 'fpr' and 'tpr', got {roc!r}")
        curves = []
        for axis in ("fpr", "tpr"):
            values = roc.get(axis)
            if not isinstance(values, list) or not all(_is_number(v) for v in values):
                raise ReportInputError(source, f"{field}.roc.{axis}", "must be a list of numbers")
            curves.append(tuple(float(v) for v in values))
        if len(curves[0]) != len(curves[1]):
            raise ReportInputError(
                source, f"{field}.roc",
                f"'fpr' and 'tpr' differ in length ({len(curves[0])} != {len(curves[1])})")
        roc_fpr, roc_tpr = curves

    return AttackResult(
        slice=dict(spec),
        attack=attack,
        auc=_number(entry, "auc", source, f"{field}.auc", lo=0.0, hi=1.0),
        attacker_advantage=_number(
            entry, "attacker_advantage", source, f"{field}.attacker_advantage", lo=0.0, hi=1.0),
        n_members=_integer(entry, "n_members", source, f"{field}.n_members", required=False),
        n_nonmembers=_integer(entry, "n_nonmembers", source, f"{field}.n_nonmembers", required=False),
        ppv=_number(entry, "ppv", source, f"{field}.ppv", required=False, lo=0.0, hi=1.0),
        tpr_at_fpr=tpr_at_fpr,
        epsilon_lower_bound=_number(
            entry, "epsilon_lower_bound", source, f"{field}.epsilon_lower_bound",
            required=False, lo=0.0, allow_inf=True),
        roc_fpr=roc_fpr,
        roc_tpr=roc_tpr,
    )


def read_results(source: PathOrDict | ResultsFile) -> ResultsFile:
    """Read and validate one attack results file (path or parsed dict).

    Raises:
      ReportInputError: naming the file and field that is missing or malformed.
    """
    if isinstance(source, ResultsFile):
        return source
    data, name = _load_json(source, "attack results")
    _check_schema_version(data, name, RESULTS_SCHEMA_VERSION)
    meta = data.get("metadata")
    if not isinstance(meta, Mapping):
        raise ReportInputError(name, "metadata", f"must be an object, got {meta!r}")
    variant = _string(meta, "model_variant", name, "metadata.model_variant")
    is_final = meta.get("is_final")
    if is_final is not None and not isinstance(is_final, bool):
        raise ReportInputError(name, "metadata.is_final", f"must be true or false, got {is_final!r}")
    entries = data.get("results")
    if not isinstance(entries, list):
        raise ReportInputError(name, "results", f"must be a list, got {type(entries).__name__}")
    if not entries:
        raise ReportInputError(name, "results", "is empty: no attack was recorded")
    results = tuple(_read_attack_result(e, name, f"results[{i}]") for i, e in enumerate(entries))
    return ResultsFile(
        source=name,
        model_variant=variant,
        epoch=_integer(meta, "epoch", name, "metadata.epoch", required=False),
        accuracy_train=_number(meta, "accuracy_train", name, "metadata.accuracy_train",
                               required=False, lo=0.0, hi=1.0),
        accuracy_test=_number(meta, "accuracy_test", name, "metadata.accuracy_test",
                              required=False, lo=0.0, hi=1.0),
        epsilon=_number(meta, "epsilon", name, "metadata.epsilon", required=False, lo=0.0, allow_inf=True),
        is_final=is_final,
        results=results,
        metadata=dict(meta),
    )


def read_ledger(source: PathOrDict | Ledger) -> Ledger:
    """Read and validate a privacy ledger (CONTRACTS.md "Privacy ledger JSON").

    The final ε is the ledger's top-level "epsilon" (null = infinite, i.e. non-private training).
    """
    if isinstance(source, Ledger):
        return source
    data, name = _load_json(source, "privacy ledger")
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
    if epsilon is not None and math.isinf(epsilon):
        epsilon = None
    if private and epsilon is None:
        raise ReportInputError(name, "epsilon", "is null but the ledger says private=true")
    delta = _number(data, "delta", name, "delta", required=False, lo=0.0, hi=1.0)
    if private and delta is None:
        raise ReportInputError(name, "delta", "is null but the ledger says private=true")
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


def read_blessing(source: PathOrDict | Blessing, model_variant: str | None = None) -> Blessing:
    """Read a blessing.json ({"blessed": bool, "failures": [...], "thresholds": {...}}).

    Args:
      model_variant: the variant it belongs to when the file itself does not say
        (e.g. taken from the artifact's custom property).
    """
    if isinstance(source, Blessing):
        return source
    data, name = _load_json(source, "blessing")
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
        thresholds=dict(thresholds), model_variant=variant)


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
