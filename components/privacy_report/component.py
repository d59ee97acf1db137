"""PrivacyReportGenerator: the TFX component (spec and channel wiring only; the work is in html_report.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Dict, List, Optional, Type, Union

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from tfx.types import standard_artifacts

from privacy_audit.components.membership_inference.component import MembershipInferenceResults
from privacy_audit.components.privacy_report import executor

# The evaluator's blessing is a standard ModelBlessing (Pusher takes it) with blessing.json inside.
PrivacyBlessing = standard_artifacts.ModelBlessing

__all__ = ["MembershipInferenceResults", "PrivacyBlessing", "PrivacyReport", "PrivacyReportGenerator",
           "PrivacyReportGeneratorSpec", "input_keys"]

ModelRun = standard_artifacts.ModelRun


class PrivacyReport(types.Artifact):
    """The privacy report: <uri>/report.html (self-contained), <uri>/summary.json, <uri>/*.png."""

    TYPE_NAME = "privacy_audit.PrivacyReport"


ChannelOrChannels = Union[types.BaseChannel, Sequence[types.BaseChannel]]
INPUT_GROUPS = ("attack_results", "ledgers", "blessings")


class PrivacyReportGeneratorSpec(types.ComponentSpec):
    PARAMETERS = {
        "title": ExecutionParameter(type=str),
        # Trend over earlier runs: read from ML Metadata when the executor can open it (local SQLite).
        "pipeline_name_for_trend": ExecutionParameter(type=str, optional=True),
        "metadata_sqlite_path": ExecutionParameter(type=str, optional=True),
        # The audit history (one file per run; the trend's source on every runner) and the drift gate.
        "history_uri": ExecutionParameter(type=str, optional=True),
        "max_auc_increase": ExecutionParameter(type=float, optional=True),
    }
    # With several channels per group the spec gains "<group>_1", "<group>_2", ... (see _spec_class).
    INPUTS = {
        "attack_results": ChannelParameter(type=MembershipInferenceResults),
        "ledgers": ChannelParameter(type=ModelRun, optional=True),
        "blessings": ChannelParameter(type=PrivacyBlessing, optional=True),
    }
    OUTPUTS = {"report": ChannelParameter(type=PrivacyReport)}


def input_keys(group: str, n: int) -> List[str]:
    """Input keys of the n channels of one group: "attack_results", "attack_results_1", ..."""
    return [group] + [f"{group}_{i}" for i in range(1, n)]


def _channels(value: Optional[ChannelOrChannels], group: str) -> List[types.BaseChannel]:
    if value is None:
        return []
    if isinstance(value, types.BaseChannel):
        return [value]
    channels = list(value)
    if not all(isinstance(c, types.BaseChannel) for c in channels):
        raise TypeError(f"{group}: expected a Channel or a list of Channels, got {value!r}")
    return channels


def _spec_class(counts: Dict[str, int]) -> Type[PrivacyReportGeneratorSpec]:
    """The spec with one input key per channel.

    One key per channel, not a union channel: Kubeflow Pipelines v2 compilation (TFX 1.16) takes
    only single channels as inputs, and this way both runners accept the same pipeline.
    """
    if all(n <= 1 for n in counts.values()):
        return PrivacyReportGeneratorSpec
    inputs = {}
    for group, param in PrivacyReportGeneratorSpec.INPUTS.items():
        for key in input_keys(group, max(counts[group], 1)):
            inputs[key] = ChannelParameter(type=param.type, optional=param.optional)
    name = "PrivacyReportGeneratorSpec_" + "_".join(str(counts[g]) for g in INPUT_GROUPS)
    return type(name, (PrivacyReportGeneratorSpec,), {"INPUTS": inputs, "__module__": __name__})


class PrivacyReportGenerator(base_component.BaseComponent):
    """Writes the privacy report of every model variant: report.html, plots, summary.json.

    Inputs (each a channel or a list of channels, typically one per model variant; the executor
    pools every artifact of a group):
      attack_results: MembershipInferenceResults (<uri>/index.json, <uri>/results/*.json).
      ledgers: ModelRun artifacts holding ledger.json (DP ε per variant). Optional.
      blessings: the evaluators' ModelBlessing artifacts (<uri>/blessing.json). Optional; without one a
        variant is reported as "no gate".
    Output ``report``: PrivacyReport (<uri>/report.html, <uri>/summary.json, <uri>/*.png).
    Variants are matched by model_variant (results metadata, ledger, blessing).
    """

    SPEC_CLASS = PrivacyReportGeneratorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, attack_results: ChannelOrChannels, ledgers: Optional[ChannelOrChannels] = None,
                 blessings: Optional[ChannelOrChannels] = None, *, title: str = "Privacy audit report",
                 pipeline_name_for_trend: Optional[str] = None, metadata_sqlite_path: Optional[str] = None,
                 history_uri: Optional[str] = None, max_auc_increase: Optional[float] = None):
        """
        Args:
          attack_results: channel(s) of MembershipInferenceResults.
          ledgers: channel(s) of ModelRun with ledger.json.
          blessings: channel(s) of the evaluators' ModelBlessing.
          title: the report's title.
          pipeline_name_for_trend: pipeline whose earlier reports make the trend (default: this
            pipeline, when metadata_sqlite_path is given).
          history_uri: folder of the audit history (history.py): the trend reads it and this run adds one
            file to it; any scheme (gs://...). When given, ML Metadata is not read for the trend.
          max_auc_increase: drift gate: refuse the blessing (summary ``blessed``, ``all_blessed``) of a variant
            whose entire-data-set max AUC rose by more than this over the previous run in the history.
          metadata_sqlite_path: the ML Metadata SQLite file of local runs (trend source without history_uri); the trend is skipped
            without it (executors get no metadata connection from TFX).
        """
        groups = {"attack_results": _channels(attack_results, "attack_results"),
                  "ledgers": _channels(ledgers, "ledgers"),
                  "blessings": _channels(blessings, "blessings")}
        if not groups["attack_results"]:
            raise ValueError("attack_results: at least one channel of MembershipInferenceResults is needed")
        spec_class = _spec_class({g: len(c) for g, c in groups.items()})
        inputs = {key: channel for group, channels in groups.items()
                  for key, channel in zip(input_keys(group, len(channels)), channels)}
        spec = spec_class(title=title, pipeline_name_for_trend=pipeline_name_for_trend,
                          metadata_sqlite_path=metadata_sqlite_path, history_uri=history_uri,
                          max_auc_increase=max_auc_increase, report=types.Channel(type=PrivacyReport),
                          **inputs)
        super().__init__(spec=spec)
