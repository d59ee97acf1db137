"""Reference ("shadow") models for LiRA and RMIA: the design (:mod:`.design`), training with the target's recipe
(:mod:`.training`) and the signals file that membership inference reads (:mod:`.signals`); the TFX
component is :mod:`.component`. Scoring with the signals is ``membership_inference.attacks.reference``."""

from privacy_audit.components.reference_models.design import (  # noqa: F401
    INIT_MODES, auto_n_jobs, inclusion_matrix, population_fingerprint)
from privacy_audit.components.reference_models.signals import (  # noqa: F401
    SIGNALS_FILE, ReferenceSignals, load_reference_file, load_reference_signals, save_reference_signals, sha1_to_id)
from privacy_audit.components.reference_models.training import (  # noqa: F401
    ModelBuilder, TrainingRecipe, train_for_trainer_recipe, train_one, train_reference_model, train_reference_models,
    train_with_user_trainer)
