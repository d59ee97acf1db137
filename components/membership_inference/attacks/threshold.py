"""Threshold attacks: the score is minus a per-example loss (Yeom et al. 2018) or minus the modified
prediction entropy (Song & Mittal 2021); no attacker is trained."""

from __future__ import annotations

import numpy as np

from privacy_audit.components.membership_inference.attacks.inputs import PreparedInputs
from privacy_audit.components.membership_inference.attacks.registry import register_attack


@register_attack("threshold", trained=False, description="score = -cross-entropy loss")
def _threshold(prepared: PreparedInputs, im: np.ndarray, inn: np.ndarray, seed: int):
    inputs = prepared.inputs
    return -inputs.loss("members")[im], -inputs.loss("nonmembers")[inn]


@register_attack("threshold_entropy", trained=False,
                 description="score = -modified prediction entropy (-Shannon entropy without labels)")
def _threshold_entropy(prepared: PreparedInputs, im: np.ndarray, inn: np.ndarray, seed: int):
    inputs = prepared.inputs
    return -inputs.entropy("members")[im], -inputs.entropy("nonmembers")[inn]
