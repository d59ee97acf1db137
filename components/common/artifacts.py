"""Custom TFX artifact types of privacy-audit (one definition, imported by every component).

    MembershipInferenceResults  <uri>/index.json {"results": [relative paths]}, <uri>/results/*.json
                                (attack results JSON, DESIGN.md), <uri>/per_example/ (Parquet)
    PrivacyBlessing             <uri>/blessing.json {"blessed", "thresholds", "failures", ...},
                                <uri>/BLESSED or <uri>/NOT_BLESSED; custom property blessed = 0/1
    PrivacyReport               <uri>/report.html, <uri>/summary.json, <uri>/*.png
    ModelRun                    TFX's standard ModelRun: <uri>/ledger.json (privacy ledger), logs/

This is a TFX-layer module (it imports tfx); core libraries must not import it.

TYPE_NAMEs carry a namespace ("privacy_audit.") because Kubeflow Pipelines v2 compilation
(KubeflowV2DagRunner) only accepts custom artifact types named like "namespace.TypeName".
"""

from __future__ import annotations

from tfx import types
from tfx.types import standard_artifacts


class MembershipInferenceResults(types.Artifact):
    """Attack results of one model variant (every evaluated epoch and the final model)."""

    TYPE_NAME = "privacy_audit.MembershipInferenceResults"


class PrivacyBlessing(types.Artifact):
    """Outcome of the evaluator's privacy gate for one model variant."""

    TYPE_NAME = "privacy_audit.PrivacyBlessing"


class PrivacyReport(types.Artifact):
    """The privacy report: one self-contained HTML page, its plots and summary.json."""

    TYPE_NAME = "privacy_audit.PrivacyReport"


ModelRun = standard_artifacts.ModelRun

__all__ = ["MembershipInferenceResults", "PrivacyBlessing", "PrivacyReport", "ModelRun"]
