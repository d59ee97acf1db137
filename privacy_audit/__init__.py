"""privacy-audit: train Keras models with differential privacy and audit them with membership inference.

Public API (none of these imports TFX):
    privacy_audit.keras        make_private(model, ...) for Keras compile/fit, poisson_batches, the audit
                               callback PrivacyMetrics, AuditCheckpoints for a TFX Trainer's run_fn
    privacy_audit.attacks      run_attacks on arrays -> results JSON
    privacy_audit.accounting   epsilon / noise multiplier / privacy ledger
    privacy_audit.report       plots and the HTML report from results
and, with TFX installed (`pip install "privacy-audit[tfx]"`):
    privacy_audit.components   DPTrainer, ReferenceModelTrainer, MembershipInferenceEvaluator,
                               PrivacyReportGenerator

This module is also the namespace of the custom TFX artifact types: TFX names a custom type
"namespace.TypeName" (KubeflowV2DagRunner requires the namespace) and the container entry point on Kubeflow
imports the class from that name, so `privacy_audit.PrivacyReport` must resolve. They are loaded lazily so that
`import privacy_audit` does not import TFX.
"""

from __future__ import annotations

import importlib
import os as _os

# In a source checkout (a script or `python -c` run from the repository root puts it first on sys.path), this
# folder shadows the installed package and has no components/ or pipelines/ below it: find them beside it, where
# the installed package maps them from (pyproject's package-dir).
_here = _os.path.dirname(_os.path.abspath(__file__))
_repo = _os.path.dirname(_here)
if (not _os.path.isdir(_os.path.join(_here, "components"))
        and _os.path.isfile(_os.path.join(_repo, "components", "__init__.py"))
        and _os.path.isfile(_os.path.join(_repo, "pipelines", "__init__.py"))):
    __path__.append(_repo)  # noqa: F821 - the package's own __path__

__version__ = "0.2.0"

_ARTIFACT_TYPES = {
    "MembershipInferenceResults": "privacy_audit.components.membership_inference.component",
    "PrivacyReport": "privacy_audit.components.privacy_report.component",
    "ReferenceModels": "privacy_audit.components.reference_models.component",
}


def __getattr__(name: str):
    if name in _ARTIFACT_TYPES:
        from privacy_audit.components import require_tfx

        require_tfx(f"privacy_audit.{name}")
        value = getattr(importlib.import_module(_ARTIFACT_TYPES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
