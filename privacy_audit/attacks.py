"""Membership-inference attacks on arrays of model outputs, returning the results JSON object.

    from privacy_audit.attacks import AttackInputs, SlicingSpec, run_attacks, write_results
    inputs = AttackInputs(logits_members=lt, labels_members=yt, logits_nonmembers=lv, labels_nonmembers=yv)
    results = run_attacks(inputs, ["threshold", "logistic_regression"], SlicingSpec(by_class=True), seed=0)
    write_results("results.json", results)

Members are the model's training examples, non-members held-out ones. Labels may be left out
(``labels_*=None``): the trained attacks and ``threshold_entropy`` (Shannon entropy of the prediction
without labels) still run, as in TF Privacy; the loss threshold needs labels or a given ``loss_*``.
``AttackInputs.from_arrays`` takes TF Privacy's names (``logits_train``, ``labels_test``, ...).
"""

from privacy_audit.components.membership_inference.api import run_attacks  # noqa: F401
from privacy_audit.components.membership_inference.attacks import ATTACKS, AttackConfig  # noqa: F401
from privacy_audit.components.membership_inference.data import AttackInputs, synthetic_inputs  # noqa: F401
from privacy_audit.components.membership_inference.results import read_results, write_results  # noqa: F401
from privacy_audit.components.membership_inference.slicing import SlicingSpec  # noqa: F401

#: Attack names accepted by :func:`run_attacks` (TF Privacy's ``AttackType`` members, as strings).
ATTACK_NAMES = tuple(ATTACKS)

__all__ = ["ATTACK_NAMES", "AttackConfig", "AttackInputs", "SlicingSpec", "read_results", "run_attacks",
           "synthetic_inputs", "write_results"]
