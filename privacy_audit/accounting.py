"""Privacy accounting: ε of DP-SGD runs, the noise multiplier for a target ε, and the privacy ledger.

    from privacy_audit import accounting
    accounting.compute_epsilon(n_examples=60000, batch_size=256, noise_multiplier=1.1, epochs=60, delta=1e-5)
    accounting.noise_multiplier_for_epsilon(target_epsilon=3, n_examples=60000, batch_size=256,
                                            epochs=60, delta=1e-5)

Poisson sampling with q = batch_size / n_examples, add-or-remove-one neighbours, Gaussian noise of std
σ·C on the sum of clipped gradients; RDP (TF Privacy's orders) by default, PLD on request. These are the
functions behind ``privacy-audit epsilon`` and the trainers' ledgers (no copy of them lives here).

Adaptive clipping: ``adaptive_noise_split(z, clipped_count_stddev)`` gives the gradient's and the unclipped
count's noise multipliers whose composition is one Gaussian of multiplier z (Andrew et al. 2021), so a run with
adaptive clipping has the ε of fixed clipping at z; ``adaptive_step_event`` is one such step as a DpEvent.
"""

from privacy_audit.components.dp_trainer.accounting import (  # noqa: F401
    ACCOUNTANTS,
    PrivacyLedger,
    adaptive_noise_split,
    adaptive_step_event,
    compute_epsilon,
    default_delta,
    dp_sgd_event,
    epsilon_for_events,
    noise_multiplier_for_epsilon,
    read_ledger,
    steps_for_epochs,
)

__all__ = ["ACCOUNTANTS", "PrivacyLedger", "adaptive_noise_split", "adaptive_step_event", "compute_epsilon",
           "default_delta", "dp_sgd_event", "epsilon_for_events", "noise_multiplier_for_epsilon", "read_ledger",
           "steps_for_epochs"]
