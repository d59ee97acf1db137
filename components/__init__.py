"""privacy_audit.components: the TFX components (this folder is mapped under `privacy_audit` when installed).

    from privacy_audit.components import DPTrainer, ReferenceModelTrainer, MembershipInferenceEvaluator, \
        PrivacyReportGenerator

The component classes import TFX (`pip install "privacy-audit[tfx]"`). They are loaded on first access, so
importing a core submodule (e.g. `privacy_audit.components.membership_inference.metrics`) never imports tfx.
"""

from __future__ import annotations

import importlib

# Public name -> module (relative to this package) that defines it.
_EXPORTS = {
    "DPTrainer": "dp_trainer.component",
    "ReferenceModelTrainer": "reference_models.component",
    "MembershipInferenceEvaluator": "membership_inference.component",
    "PrivacyReportGenerator": "privacy_report.component",
    # Artifact types, for pipelines that declare channels of them.
    "MembershipInferenceResults": "membership_inference.component",
    "PrivacyReport": "privacy_report.component",
    "ReferenceModels": "reference_models.component",
}

__all__ = sorted(_EXPORTS)


def require_tfx(what: str) -> None:
    """Raises an ImportError that says how to install TFX when `tfx` is not importable."""
    try:
        importlib.import_module("tfx")
    except ImportError as e:
        raise ImportError(f"{what} needs TFX, which is not installed: pip install \"privacy-audit[tfx]\" "
                          f"(Python 3.10; TFX 1.16 pins TensorFlow 2.16). The core (privacy_audit.keras, "
                          f".attacks, .accounting, .report) works without it.") from e


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require_tfx(f"privacy_audit.components.{name}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
