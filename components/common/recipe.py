"""The training recipe: everything that defines how a model variant is trained, in one frozen dataclass.

One shape everywhere: the DPTrainer takes it as one JSON execution property (``recipe``, as TFX's Trainer takes
``custom_config``), the ReferenceModelTrainer copies that JSON as it is, a pipeline's ``VariantSpec`` is a name
and a recipe, and the command line's defaults for the variants a user defines are this dataclass's defaults.

Not in the recipe: the variant's name, the data it reads (label and feature keys, split names) and the module
file's content hash (a cache key); the reference models' own design (K, seed, ``fit_with``...).

Run-time overrides. A Kubeflow run may change ``epochs`` and ``target_epsilon`` without recompiling (TFX
RuntimeParameters). A RuntimeParameter cannot sit inside a JSON string, so the components carry those two as
separate optional execution properties beside ``recipe``; the executor applies them with
:meth:`TrainingRecipe.with_overrides`, the one place where they meet the recipe.

Core code: no tfx import.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

OPTIMIZERS = ("adam", "sgd")
SAMPLINGS = ("poisson", "shuffle")
LR_SCHEDULES = ("constant", "cosine")
#: ε of a private variant of `privacy-audit run` that gives neither noise_multiplier nor target_epsilon. A
#: resolution rule of the command line, not a field default: a recipe given ``noise_multiplier`` must not also
#: carry an ε (exactly one of the two), so the dataclass leaves both unset.
DEFAULT_TARGET_EPSILON = 3.0
#: Fields a Kubeflow run may override (RuntimeParameters; see the module doc).
RUNTIME_OVERRIDES = ("epochs", "target_epsilon")

_FLOAT_FIELDS = ("learning_rate", "l2_norm_clip", "noise_multiplier", "target_epsilon", "delta",
                 "target_unclipped_quantile", "clip_learning_rate", "clipped_count_stddev")
_INT_FIELDS = ("epochs", "batch_size", "checkpoint_every", "seed", "audit_canaries")


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and type(v).__name__ != "bool_"


class FrozenMapping(dict):
    """A read-only dict (a recipe's ``hparams``): JSON-serialisable, hashable, copied and pickled as itself."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a training recipe's hparams are read-only; use recipe.replace(hparams={...})")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse  # type: ignore

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(json.dumps(self, sort_keys=True))

    def __copy__(self) -> "FrozenMapping":
        return self

    def __deepcopy__(self, memo: Any) -> "FrozenMapping":
        return self

    def __reduce__(self):
        return FrozenMapping, (dict(self),)


def _frozen_hparams(hparams: Any) -> Mapping[str, Any]:
    if hparams is None:
        return FrozenMapping()
    if isinstance(hparams, str):
        hparams = json.loads(hparams)
    if not isinstance(hparams, Mapping):
        raise ValueError(f"hparams must be a mapping of hyperparameters, got {type(hparams).__name__}")
    try:
        # A JSON round trip: a private copy of plain values (the recipe travels as JSON, so it must be JSON).
        plain = json.loads(json.dumps(dict(hparams), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"hparams must hold JSON values (numbers, strings, lists, mappings): {e}") from None
    return FrozenMapping(plain)


@dataclasses.dataclass(frozen=True)
class TrainingRecipe:
    """How one model variant is trained (by the DPTrainer, and by each of its reference models).

    Model: ``module_file`` (a Python file with ``model_fn(hparams) -> keras.Model``) or, without one, the
    ``builtin_model`` (auto, cnn, mlp, softmax_regression); ``hparams``: the model's own hyperparameters
    (a read-only mapping; JSON values).
    Optimisation: ``epochs``, ``batch_size`` (expected batch size of Poisson sampling), ``learning_rate``,
    ``optimizer`` (adam | sgd), ``lr_schedule`` (constant | cosine: the learning rate decays to 0 along a
    half cosine over the planned steps), ``sampling`` (poisson | shuffle), ``seed`` (initialisation, batches, noise).
    Privacy: ``private=False`` trains the same model without clipping or noise (a baseline). A private recipe
    gives exactly one of ``noise_multiplier`` σ or ``target_epsilon`` (σ is then calibrated for the planned
    steps); ``l2_norm_clip`` C; ``delta`` defaults to the largest power of ten not above 1/N^1.1 (δ >= 1/N is
    refused); ``accountant`` rdp | pld.
    Adaptive clipping (Andrew et al. 2021): ``adaptive_clipping=True`` starts C at ``l2_norm_clip`` and moves it
    each step towards the ``target_unclipped_quantile`` γ of the per-example gradient norms, privately
    (C ← C·exp(−``clip_learning_rate``·(b − γ)), b the noisy unclipped fraction, count noise std
    ``clipped_count_stddev`` σ_b, default batch_size / 20). The step's noise multiplier stays σ (same ε as fixed
    clipping); the gradient gets σ_Δ = (σ^-2 − (2σ_b)^-2)^(-1/2) (see ``accounting.adaptive_noise_split``).
    Outputs: ``checkpoint_every`` k saves the model every k epochs and after the last (0: none);
    ``audit_canaries`` m >= 2 runs the one-run privacy audit of a private recipe (0: off).

    The defaults are the command line's for the variants a user defines (``privacy-audit run``).
    """
    module_file: Optional[str] = None
    model_fn: str = "build_keras_model"
    builtin_model: str = "auto"
    hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    lr_schedule: str = "constant"
    private: bool = True
    l2_norm_clip: float = 1.0
    noise_multiplier: Optional[float] = None
    target_epsilon: Optional[float] = None
    delta: Optional[float] = None
    sampling: str = "poisson"
    accountant: str = "rdp"
    checkpoint_every: int = 2
    seed: int = 0
    audit_canaries: int = 0
    adaptive_clipping: bool = False
    target_unclipped_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clipped_count_stddev: Optional[float] = None

    def __post_init__(self) -> None:
        # Numbers in one canonical type each, so that equal recipes have equal JSON (TFX's cache key).
        for name in _FLOAT_FIELDS:
            v = getattr(self, name)
            if _is_number(v) and not isinstance(v, float):
                object.__setattr__(self, name, float(v))
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, numbers.Integral) and not isinstance(v, (bool, int)) and type(v).__name__ != "bool_":
                object.__setattr__(self, name, int(v))
        for name in ("private", "adaptive_clipping"):
            v = getattr(self, name)
            if type(v).__name__ == "bool_" or v in (0, 1):
                object.__setattr__(self, name, bool(v))
        object.__setattr__(self, "hparams", _frozen_hparams(self.hparams))

    def __hash__(self) -> int:
        return hash(self.to_json())

    # ------------------------------------------------------------------ checks

    def validate(self, n_examples: Optional[int] = None) -> "TrainingRecipe":
        """Raises ValueError naming the first invalid setting (``n_examples``: the training set's size, when
        known: the batch size, δ and the canaries are checked against it). Returns the recipe."""
        from privacy_audit.components.dp_trainer import accounting

        if isinstance(self.audit_canaries, bool) or not isinstance(self.audit_canaries, int) or \
                self.audit_canaries < 0 or self.audit_canaries == 1:
            raise ValueError(f"audit_canaries must be 0 (no one-run audit) or an integer >= 2, got "
                             f"{self.audit_canaries!r}")
        if n_examples is not None and self.audit_canaries > n_examples // 2:
            raise ValueError(f"audit_canaries ({self.audit_canaries}) must be at most half the training examples "
                             f"({n_examples // 2}): the canaries are taken from them")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be 'poisson' or 'shuffle', got {self.sampling!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs <= 0:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) or \
                self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not (_is_number(self.learning_rate) and self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.accountant not in accounting.ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {accounting.ACCOUNTANTS}, got {self.accountant!r}")
        if not isinstance(self.private, bool):
            raise ValueError(f"private must be true or false, got {self.private!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        accounting.validate_dp_params(n_examples=n_examples, batch_size=self.batch_size)
        if self.private:
            if (self.noise_multiplier is None) == (self.target_epsilon is None):
                raise ValueError("a private run needs exactly one of noise_multiplier or target_epsilon")
            accounting.validate_dp_params(n_examples=n_examples, noise_multiplier=self.noise_multiplier,
                                          l2_norm_clip=self.l2_norm_clip, delta=self.delta,
                                          target_epsilon=self.target_epsilon)
        if not isinstance(self.adaptive_clipping, bool):
            raise ValueError(f"adaptive_clipping must be true or false, got {self.adaptive_clipping!r}")
        # Checked even when off: a setting that would be refused must not wait silently for the switch.
        accounting.validate_adaptive_clipping(target_unclipped_quantile=self.target_unclipped_quantile,
                                              clip_learning_rate=self.clip_learning_rate,
                                              clipped_count_stddev=self.clipped_count_stddev)
        if self.private and self.adaptive_clipping and self.noise_multiplier is not None:
            accounting.adaptive_noise_split(self.noise_multiplier, self.resolved_clipped_count_stddev())
        return self

    def resolved_clipped_count_stddev(self) -> float:
        """σ_b of adaptive clipping: ``clipped_count_stddev``, or batch_size / 20 when unset."""
        from privacy_audit.components.dp_trainer import accounting

        if self.clipped_count_stddev is not None:
            return float(self.clipped_count_stddev)
        return accounting.default_clipped_count_stddev(self.batch_size)

    # ------------------------------------------------------------------ JSON

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> Dict[str, Any]:
        """The recipe as plain JSON values (``hparams`` a plain dict)."""
        out = {name: getattr(self, name) for name in self.field_names()}
        out["hparams"] = json.loads(json.dumps(dict(self.hparams)))
        return out

    def to_json(self) -> str:
        """The recipe as JSON text with sorted keys: equal recipes give equal text (a stable cache key)."""
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], what: str = "training recipe") -> "TrainingRecipe":
        """A recipe from a mapping of its fields (missing ones take the defaults); unknown keys are an error that
        names them and lists the valid ones."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"a {what} must be a JSON object of its fields, got {type(obj).__name__}")
        unknown = sorted(set(map(str, obj)) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown {what} key(s) {unknown}; valid keys: {sorted(cls.field_names())}")
        return cls(**dict(obj))

    @classmethod
    def from_json(cls, text: str) -> "TrainingRecipe":
        """The recipe of :meth:`to_json`'s text (ValueError for invalid JSON or unknown keys)."""
        try:
            obj = json.loads(text)
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"the training recipe is not valid JSON: {e}") from None
        return cls.from_dict(obj)

    # ------------------------------------------------------------------ changes

    def replace(self, **changes: Any) -> "TrainingRecipe":
        """A copy with ``changes`` (field names; an unknown name is an error that lists the valid ones)."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise ValueError(f"unknown training recipe key(s) {unknown}; valid keys: {sorted(self.field_names())}")
        return dataclasses.replace(self, **changes)

    def with_overrides(self, *, epochs: Optional[int] = None,
                       target_epsilon: Optional[float] = None) -> "TrainingRecipe":
        """The recipe with a run's overrides (Kubeflow run-time parameters; None: keep the recipe's value).
        ``target_epsilon`` applies to a private recipe calibrated to an ε only (a σ-given or non-private
        recipe has no ε to change)."""
        changes: Dict[str, Any] = {}
        if epochs is not None:
            changes["epochs"] = int(epochs)
        if target_epsilon is not None and self.private and self.noise_multiplier is None:
            changes["target_epsilon"] = float(target_epsilon)
        return self.replace(**changes) if changes else self


def as_recipe(value: Any) -> TrainingRecipe:
    """A TrainingRecipe from a recipe, its JSON text or a mapping of its fields."""
    if isinstance(value, TrainingRecipe):
        return value
    if isinstance(value, str):
        return TrainingRecipe.from_json(value)
    return TrainingRecipe.from_dict(value)


def recipe_from_exec_properties(exec_properties: Mapping[str, Any]) -> TrainingRecipe:
    """The recipe a DPTrainer or ReferenceModelTrainer execution trains with: its ``recipe`` JSON with the run's
    overrides applied (``epochs``, ``target_epsilon`` exec properties: Kubeflow run-time parameters, absent or
    None when the pipeline has none)."""
    return TrainingRecipe.from_json(exec_properties["recipe"]).with_overrides(
        epochs=exec_properties.get("epochs"), target_epsilon=exec_properties.get("target_epsilon"))


# ------------------------------------------------------------------------------------------------------------
# Comparing recipes (a reference model's recipe against its target's, one variant against another)
# ------------------------------------------------------------------------------------------------------------

#: Recipe fields a privacy ledger records, and their names there: (recipe key, ledger key).
LEDGER_FIELDS = (("epochs", "epochs_planned"), ("batch_size", "expected_batch_size"),
                 ("learning_rate", "learning_rate"), ("optimizer", "optimizer"), ("private", "private"),
                 ("sampling", "sampling"), ("l2_norm_clip", "l2_norm_clip"),
                 ("noise_multiplier", "noise_multiplier"))
_DP_ONLY = ("l2_norm_clip", "noise_multiplier", "target_epsilon", "delta", "accountant", "audit_canaries",
            "adaptive_clipping", "target_unclipped_quantile", "clip_learning_rate", "clipped_count_stddev")


def _same(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def _fields_of(recipe: Any) -> Dict[str, Any]:
    if isinstance(recipe, (TrainingRecipe, str)):
        return as_recipe(recipe).to_dict()
    return dict(recipe)


def recipe_differences(a: Any, b: Any, *, fields: Optional[Iterable[str]] = None,
                       labels: Tuple[str, str] = ("first", "second")) -> List[str]:
    """The fields where two recipes (TrainingRecipe, JSON text or mappings of fields) differ, as
    ``"field: <labels[0]> a, <labels[1]> b"`` lines (empty: the same recipe). Numbers compare to 1e-9
    relative; DP settings are ignored when both recipes are non-private; only ``fields`` when given."""
    da, db = _fields_of(a), _fields_of(b)
    names = list(fields) if fields is not None else [n for n in TrainingRecipe.field_names()]
    both_public = da.get("private") is False and db.get("private") is False
    out = []
    for name in names:
        if name not in da or name not in db or (both_public and name in _DP_ONLY):
            continue
        if not _same(da[name], db[name]):
            out.append(f"{name}: {labels[0]} {da[name]!r}, {labels[1]} {db[name]!r}")
    return out


def ledger_mismatches(recipe: Mapping[str, Any], ledger: Optional[Mapping[str, Any]], *,
                      labels: Tuple[str, str] = ("references", "target")) -> List[str]:
    """The recipe fields (:data:`LEDGER_FIELDS`) where a recipe as run (e.g. the reference models' training
    record, with the resolved ``noise_multiplier``) differs from what a target's privacy ledger records (empty:
    same recipe; no ledger: nothing to compare). Clip and noise are not compared for a non-private target."""
    if not ledger:
        return []
    view = {rkey: ledger[lkey] for rkey, lkey in LEDGER_FIELDS if lkey in ledger}
    if not ledger.get("private"):
        view = {k: v for k, v in view.items() if k not in ("l2_norm_clip", "noise_multiplier")}
    out = []
    for rkey, _ in LEDGER_FIELDS:
        if rkey not in view or rkey not in recipe:
            continue
        a, b = recipe[rkey], view[rkey]
        if not _same(a, b):
            out.append(f"{rkey}: {labels[0]} {a!r}, {labels[1]} {b!r}")
    return out


__all__ = ["TrainingRecipe", "as_recipe", "recipe_from_exec_properties", "recipe_differences", "ledger_mismatches", "DEFAULT_TARGET_EPSILON",
           "RUNTIME_OVERRIDES", "OPTIMIZERS", "SAMPLINGS"]
