"""Namespace of privacy-audit's custom TFX artifact types.

TFX names a custom artifact type "namespace.TypeName" (KubeflowV2DagRunner requires the namespace), and
the container entry point on Kubeflow imports the class from that name: `privacy_audit.PrivacyReport`
must therefore be importable. The classes themselves live with the components that produce them.
"""

from components.membership_inference.component import MembershipInferenceResults, PrivacyBlessing
from components.privacy_report.component import PrivacyReport
from components.reference_models.component import ReferenceModels

__all__ = ["MembershipInferenceResults", "PrivacyBlessing", "PrivacyReport", "ReferenceModels"]
