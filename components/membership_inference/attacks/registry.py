"""The attack registry: each attack is one function registered by name with :func:`register_attack`,
``fn(prepared, member_idx, nonmember_idx, seed) -> (scores_members, scores_nonmembers)``."""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from privacy_audit.components.membership_inference.attacks.inputs import PreparedInputs


ScoreFn = Callable[[PreparedInputs, np.ndarray, np.ndarray, int], Tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class AttackDefinition:
    name: str
    score: ScoreFn
    trained: bool
    description: str
    needs_references: bool = False


ATTACKS: Dict[str, AttackDefinition] = {}


def register_attack(name: str, *, trained: bool, description: str = "", needs_references: bool = False):
    """Decorator registering ``fn(prepared, member_idx, nonmember_idx, seed) -> (scores_m, scores_n)``."""

    def wrap(fn: ScoreFn) -> ScoreFn:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} registered twice")
        ATTACKS[name] = AttackDefinition(name, fn, trained, description or (fn.__doc__ or "").strip(),
                                         needs_references)
        return fn
    return wrap


def reference_attack_names(names: Sequence[str]) -> List[str]:
    """The names among ``names`` that need reference models (lira, rmia, ...)."""
    return [n for n in names if n in ATTACKS and ATTACKS[n].needs_references]


def check_attack_names(names: Sequence[str]) -> List[str]:
    """Validated, de-duplicated attack names (order kept); ValueError lists the known ones."""
    out: List[str] = []
    for raw in names:
        name = raw.strip().replace("-", "_")
        if not name:
            continue
        if name in ("lr", "logistic"):
            name = "logistic_regression"
        if name in ("rf",):
            name = "random_forest"
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {raw!r}; choose from {', '.join(ATTACKS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"no attack given; choose from {', '.join(ATTACKS)}")
    return out


def attack_scores(name: str, prepared: PreparedInputs, member_idx: np.ndarray, nonmember_idx: np.ndarray,
                  seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Membership scores ``(scores_members [n_m], scores_nonmembers [n_n])`` of attack ``name`` on the
    slice given by row indices into the members and non-members."""
    return ATTACKS[check_attack_names([name])[0]].score(prepared, np.asarray(member_idx),
                                                         np.asarray(nonmember_idx), int(seed))
