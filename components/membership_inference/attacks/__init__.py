"""Membership-inference attacks: each turns a slice's members and non-members into membership scores
(higher = more likely a member); :mod:`metrics` then measures how well the scores separate them.

Attacks (registered by name with :func:`register_attack`; adding one is one decorated function):
- ``threshold``: score = minus the cross-entropy loss (Yeom et al. 2018; TF Privacy's threshold attack).
- ``threshold_entropy``: score = minus the modified prediction entropy (Song & Mittal 2021); without labels,
  minus the Shannon entropy of the prediction (TF Privacy's label-free variant).
- ``logistic_regression``, ``mlp``, ``random_forest``, ``knn``: a classifier trained to tell
  members from non-members from features of the model outputs (:func:`attack_features`).
- ``lira``, ``lira_offline``, ``rmia``, ``rmia_offline``: attacks with reference models
  (:mod:`.reference`, :mod:`.lira`, :mod:`.rmia`); they need the references' outputs on the same examples
  (``PreparedInputs(references=...)``, see :mod:`privacy_audit.components.reference_models`).

Trained attacks are cross-validated: stratified k-fold (default 5) over the slice, so that every example is
scored exactly once, by a model that did not see it. Each fold's attacker is trained on a balanced, seeded
subsample of the other folds (equal numbers of members and non-members, at most ``max_train_per_fold``
examples), so that the majority side cannot be learnt as a prior and large slices stay fast; every
example is still scored. Hyperparameters come from a small fixed grid per attack (:data:`GRIDS`): each
candidate is trained on 75% of (at most 6000 examples of) the first fold's training subsample and scored
by ROC AUC on the other 25%; the best is used for all folds (``AttackConfig(hyperparameter_search=False)``:
the first grid entry). Everything is seeded.

Reading the numbers: a trained attack's AUC on a slice without signal fluctuates around 0.5 and can fall
clearly below it on small or narrow slices (e.g. a loss decile): a fold and its complement partition one
finite pool, so what the attacker learns on the complement is anti-correlated with the held-out fold.
AUC below 0.5 therefore means "no detectable leakage", not a reversed attack; note that
``attacker_advantage`` = max |TPR - FPR| counts such reversed separations too (TF Privacy's definition).

scikit-learn is imported lazily (only the trained attacks that use it: mlp, random_forest, knn, and
logistic_regression with its default lbfgs solver; ``AttackConfig(lr_solver="newton")`` needs none).

Layout: registry.py (names → score functions), inputs.py (what attacks read), threshold.py, trained.py,
signals.py + lira.py + rmia.py + reference.py (attacks with reference models). A new attack is one decorated
function in one of these files (or a new one imported below).
"""

from privacy_audit.components.membership_inference.attacks.inputs import (  # noqa: F401
    AttackConfig, PreparedInputs, attack_features)
from privacy_audit.components.membership_inference.attacks.registry import (  # noqa: F401
    ATTACKS, AttackDefinition, attack_scores, check_attack_names, reference_attack_names, register_attack)
from privacy_audit.components.membership_inference.attacks import threshold, trained, reference  # noqa: F401,E402
from privacy_audit.components.membership_inference.attacks.trained import GRIDS, cross_validated_scores  # noqa: F401
from privacy_audit.components.membership_inference.attacks.signals import (  # noqa: F401
    logit_scaled_confidence, true_class_probability)
from privacy_audit.components.membership_inference.attacks.lira import lira_scores  # noqa: F401
from privacy_audit.components.membership_inference.attacks.rmia import rmia_scores  # noqa: F401
from privacy_audit.components.membership_inference.attacks.reference import (  # noqa: F401
    REFERENCE_ATTACKS, REFERENCE_FAMILIES, check_reference_options, reference_attack_results, reference_attack_scores,
    resolve_attack_options, score_with_references)
