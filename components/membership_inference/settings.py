"""What a Beam audit computes: :class:`AuditSettings` (the arguments of :func:`api.run_attacks` plus the
Beam-only limits) and :class:`OutputTarget` (where one model's results go)."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple

from privacy_audit.components.membership_inference import combiners
from privacy_audit.components.membership_inference import metrics as metrics_lib
from privacy_audit.components.membership_inference import slicing as slicing_lib
from privacy_audit.components.membership_inference.api import DEFAULT_ATTACKS
from privacy_audit.components.membership_inference.slicing import SlicingSpec


THRESHOLD_ATTACKS = {"threshold": "xent", "threshold_entropy": "mentr"}
#: Seeded sample per side (members, non-members) and slice for the trained attacks.
DEFAULT_SAMPLE_SIZE = 20000


@dataclasses.dataclass(frozen=True)
class AuditSettings:
    """What to compute; the arguments of :func:`api.run_attacks` plus the Beam-only limits.

    Attributes:
      attacks: attack names (:data:`attacks.ATTACKS`).
      slicing: which slices (``custom`` slices are positional and not supported here).
      seed: seeds the samples and the trained attacks (per slice and attack as in the in-memory path).
      min_slice_size: slices with fewer members or non-members are skipped.
      max_feature_values: slicing by a feature with more distinct values is skipped.
      max_distinct_scores: threshold attacks are exact up to this many distinct scores per slice.
      sample_size: members and non-members sampled per slice for trained attacks.
      attack_config: trained-attack settings (``attacks.AttackConfig``; None: its defaults).
      delta, confidence, fpr_targets, roc_points: as :func:`api.run_attacks`.
    """

    attacks: Tuple[str, ...] = DEFAULT_ATTACKS
    slicing: SlicingSpec = SlicingSpec()
    seed: int = 0
    min_slice_size: int = slicing_lib.DEFAULT_MIN_SLICE_SIZE
    max_feature_values: int = slicing_lib.DEFAULT_MAX_FEATURE_VALUES
    max_distinct_scores: int = combiners.DEFAULT_MAX_DISTINCT_SCORES
    sample_size: int = DEFAULT_SAMPLE_SIZE
    attack_config: Any = None
    delta: float = metrics_lib.DEFAULT_DELTA
    confidence: float = metrics_lib.DEFAULT_CONFIDENCE
    fpr_targets: Tuple[float, ...] = metrics_lib.DEFAULT_FPR_TARGETS
    roc_points: int = metrics_lib.DEFAULT_ROC_POINTS

    def __post_init__(self) -> None:
        from privacy_audit.components.membership_inference import attacks as attacks_mod

        object.__setattr__(self, "attacks", tuple(attacks_mod.check_attack_names(list(self.attacks))))
        with_references = attacks_mod.reference_attack_names(self.attacks)
        if with_references:
            # They need the reference models' signals: given to the pipeline separately
            # (beam.reference.ReferenceAttackSpec, joined by example id), not as an attack name here.
            raise ValueError(f"{', '.join(with_references)} need reference models: give the reference signals "
                             "(the evaluator's reference_models input, beam.reference.ReferenceAttackSpec, or "
                             "privacy-audit attack with ref_logits/ref_in_mask in the .npz)")
        if self.slicing.custom:
            raise ValueError("custom slices (row indices) are not supported by the Beam path; slice by a "
                             "feature (feature_keys) instead")
        if self.min_slice_size < 1:
            raise ValueError(f"min_slice_size must be >= 1, got {self.min_slice_size}")
        if self.sample_size < 2:
            raise ValueError(f"sample_size must be >= 2, got {self.sample_size}")
        if self.max_distinct_scores < combiners.MIN_MAX_DISTINCT_SCORES:
            raise ValueError(f"max_distinct_scores must be >= {combiners.MIN_MAX_DISTINCT_SCORES}")

    @property
    def threshold_attacks(self) -> List[str]:
        return [a for a in self.attacks if a in THRESHOLD_ATTACKS]

    @property
    def trained_attacks(self) -> List[str]:
        return [a for a in self.attacks if a not in THRESHOLD_ATTACKS]

    @property
    def needs_plan(self) -> bool:
        """Slices whose values are only known after a first pass (loss deciles, feature values)."""
        return bool(self.slicing.by_percentiles or self.slicing.feature_keys)

    def metric_kwargs(self) -> Dict[str, Any]:
        return {"delta": self.delta, "confidence": self.confidence, "fpr_targets": tuple(self.fpr_targets),
                "roc_points": self.roc_points}


@dataclasses.dataclass(frozen=True)
class OutputTarget:
    """Where the results of one model (key) go, and the metadata to put in them. ``results_path`` None: the
    driver gets the results object back and writes it itself."""

    results_path: Optional[str]
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

