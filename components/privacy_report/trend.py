"""Earlier audit runs of a pipeline for the report's trend, and the drift alert over them.

The trend's source is the audit history (history.py: one file per run, no ML Metadata needed, any runner);
this module also reads the earlier runs from a local ML Metadata store, the source before the history
existed (``history_from_mlmd``), and computes ``trend_alert`` (``drift_alert``, ``apply_drift``).

Each earlier PrivacyReport artifact of the pipeline holds a summary.json; its headline metrics,
with the artifact's creation time and pipeline run id, become trend entries
({"run_id", "date", "variant", "max_auc", ...}; see summary.trend_entries).

Imports ml_metadata, not tfx. Tolerant by design: no store, no pipeline, no earlier report, or an
unreadable summary simply gives fewer entries, because a missing trend must not fail an audit.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from privacy_audit.components.common import io
from privacy_audit.components.privacy_report.history import history_entries

logger = logging.getLogger(__name__)

# privacy_audit.components.privacy_report.component.PrivacyReport.TYPE_NAME (not imported: this module stays free of tfx).
REPORT_TYPE_NAME = "privacy_audit.PrivacyReport"
PIPELINE_CONTEXT_TYPE = "pipeline"
PIPELINE_RUN_CONTEXT_TYPE = "pipeline_run"
from privacy_audit.components.common.layout import SUMMARY_FILE  # noqa: E402


def _open_store(store_or_config: Any):
    """MetadataStore from a store, a ConnectionConfig, or an SQLite file path (opened read-only)."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2

    if isinstance(store_or_config, mlmd.MetadataStore):
        return store_or_config
    if isinstance(store_or_config, metadata_store_pb2.ConnectionConfig):
        return mlmd.MetadataStore(store_or_config)
    if isinstance(store_or_config, (str, os.PathLike)):
        path = os.fspath(store_or_config)
        if not os.path.isfile(path):
            return None
        config = metadata_store_pb2.ConnectionConfig()
        config.sqlite.filename_uri = path
        config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
        return mlmd.MetadataStore(config)
    raise TypeError(
        f"expected an ml_metadata MetadataStore, ConnectionConfig or SQLite path, got {type(store_or_config).__name__}")


def _read_summary(uri: str) -> dict | None:
    path = io.join(uri, SUMMARY_FILE)
    try:
        data = json.loads(io.read_text(path))
    except (OSError, ValueError) as e:
        logger.warning("trend: skipping %s (%s)", path, e)
        return None
    return data if isinstance(data, dict) else None


def history_from_mlmd(
    store_or_config: Any,
    pipeline_name: str,
    artifact_type_name: str = REPORT_TYPE_NAME,
    *,
    exclude_uris: Iterable[str] = (),
    max_runs: int | None = 100,
) -> list[dict[str, Any]]:
    """Trend entries of the earlier runs of `pipeline_name`, oldest first.

    Args:
      store_or_config: ml_metadata MetadataStore, metadata_store_pb2.ConnectionConfig, or the path
        of an SQLite ML Metadata file (opened read-only; a missing file gives []).
      pipeline_name: the pipeline context's name (TFX pipeline_name).
      artifact_type_name: the report artifact type.
      exclude_uris: artifact URIs to leave out (the report being written now).
      max_runs: keep only the latest this many reports (None: all).

    Returns:
      [{"run_id", "date" (ISO, UTC), "variant", "max_auc", "max_attacker_advantage",
        "epsilon_lower_bound", ...}], sorted by date. Only LIVE (published) artifacts count.
    """
    from ml_metadata import errors
    from ml_metadata.proto import metadata_store_pb2

    store = _open_store(store_or_config)
    if store is None:
        return []
    try:
        context = store.get_context_by_type_and_name(PIPELINE_CONTEXT_TYPE, pipeline_name)
        if context is None:
            return []
        artifact_type = store.get_artifact_type(artifact_type_name)
        artifacts = [a for a in store.get_artifacts_by_context(context.id)
                     if a.type_id == artifact_type.id and a.state == metadata_store_pb2.Artifact.LIVE]
    except errors.NotFoundError:
        return []
    excluded = {os.path.normpath(u) for u in exclude_uris}
    artifacts = [a for a in artifacts if a.uri and os.path.normpath(a.uri) not in excluded]
    artifacts.sort(key=lambda a: (a.create_time_since_epoch, a.id))
    if max_runs is not None:
        artifacts = artifacts[-max_runs:] if max_runs > 0 else []

    try:
        run_type_id = store.get_context_type(PIPELINE_RUN_CONTEXT_TYPE).id
    except errors.NotFoundError:
        run_type_id = None
    entries: list[dict[str, Any]] = []
    for artifact in artifacts:
        summary = _read_summary(artifact.uri)
        if summary is None:
            continue
        run_ids = [c.name for c in store.get_contexts_by_artifact(artifact.id) if c.type_id == run_type_id]
        date = dt.datetime.fromtimestamp(artifact.create_time_since_epoch / 1000, tz=dt.timezone.utc)
        entries += history_entries(summary, run_ids[0] if run_ids else f"artifact-{artifact.id}",
                                 date.replace(microsecond=0).isoformat())
    return entries


# --------------------------------------------------------------------------- drift alert

#: A run's leakage "rose" when its entire-data-set max AUC exceeds the previous run's by more than this many
#: of the previous value's null standard deviations (the spread of an AUC with that many members and
#: non-members when nothing leaks: summary.auc_null_sd).
DRIFT_NULL_SDS = 2.0


def drift_alert(earlier: list[dict[str, Any]], current: list[dict[str, Any]],
                max_auc_increase: float | None = None) -> dict[str, Any]:
    """The ``trend_alert`` of summary.json: per variant, this run against the latest earlier run of it.

    Args:
      earlier: trend entries of earlier runs, oldest first (history.read), with
        ``entire_dataset_max_auc`` / ``entire_dataset_auc_null_sd`` (history.history_entries).
      current: this run's entries, same keys.
      max_auc_increase: optional gate: the blessing is refused when the entire-data-set max AUC rose by more
        than this (absolute AUC) over the previous run.

    Returns:
      {"alert": bool (any variant drifted), "rule": str, "max_auc_increase": f|null,
       "variants": [{"variant", "run_id", "previous_run_id", "auc", "previous_auc", "previous_null_sd",
                     "threshold", "increase", "alert", "gate_failed"}]}; a variant without an earlier run
      or without the AUCs is listed with alert false and a "note".
    """
    rule = (f"alert when the entire-data-set max AUC exceeds the previous run's by more than "
            f"{DRIFT_NULL_SDS:g} of its null standard deviations")
    rows = []
    for cur in current:
        name = cur.get("variant")
        previous = [e for e in earlier if e.get("variant") == name and e.get("run_id") != cur.get("run_id")]
        row: dict[str, Any] = {"variant": name, "run_id": cur.get("run_id"), "alert": False, "gate_failed": False}
        rows.append(row)
        if not previous:
            row["note"] = "no earlier run of this variant in the history"
            continue
        prev = previous[-1]
        auc, prev_auc = cur.get("entire_dataset_max_auc"), prev.get("entire_dataset_max_auc")
        sd = prev.get("entire_dataset_auc_null_sd")
        row.update(previous_run_id=prev.get("run_id"), auc=auc, previous_auc=prev_auc, previous_null_sd=sd)
        if not all(isinstance(v, (int, float)) for v in (auc, prev_auc, sd)):
            row["note"] = "AUC or its null standard deviation missing in this or the previous run"
            continue
        row["increase"] = auc - prev_auc
        row["threshold"] = prev_auc + DRIFT_NULL_SDS * sd
        row["alert"] = auc > row["threshold"]
        row["gate_failed"] = max_auc_increase is not None and row["increase"] > max_auc_increase
    return {"alert": any(r["alert"] for r in rows), "rule": rule, "max_auc_increase": max_auc_increase,
            "variants": rows}


def apply_drift(summary: dict[str, Any], earlier: list[dict[str, Any]], current: list[dict[str, Any]],
                max_auc_increase: float | None = None) -> None:
    """Adds ``trend_alert`` to a summary and, with the ``max_auc_increase`` gate, refuses the blessing of
    every variant that drifted by more (its row's ``blessed`` false, a ``gate_failures`` entry, and
    ``all_blessed`` recomputed)."""
    alert = drift_alert(earlier, current, max_auc_increase)
    summary["trend_alert"] = alert
    rows = {r.get("name"): r for r in summary.get("variants", [])}
    for a in alert["variants"]:
        row = rows.get(a["variant"])
        if row is None:
            continue
        if a["alert"]:
            summary.setdefault("warnings", []).append(
                f"variant {a['variant']!r}: leakage drift: entire-data-set max AUC {a['auc']:.3f} > previous run's "
                f"{a['previous_auc']:.3f} + {DRIFT_NULL_SDS:g} x {a['previous_null_sd']:.3f} "
                f"(run {a['previous_run_id']})")
        if a["gate_failed"]:
            row["blessed"] = False
            row["gate_evaluated"] = True
            row.setdefault("gate_failures", []).append({
                "slice": {"feature": "entire_dataset"}, "attack": "max over attacks", "metric": "auc_increase",
                "value": a["increase"], "threshold": max_auc_increase,
                "reason": f"AUC rose from {a['previous_auc']:.3f} (run {a['previous_run_id']}) to {a['auc']:.3f}"})
    summary["all_blessed"] = all(r.get("blessed", True) for r in summary.get("variants", []))
