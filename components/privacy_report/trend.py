"""Earlier audit runs of a pipeline, from ML Metadata, for the report's trend plot.

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

from privacy_audit.components.privacy_report.summary import trend_entries

logger = logging.getLogger(__name__)

# privacy_audit.components.privacy_report.component.PrivacyReport.TYPE_NAME (not imported: this module stays free of tfx).
REPORT_TYPE_NAME = "privacy_audit.PrivacyReport"
PIPELINE_CONTEXT_TYPE = "pipeline"
PIPELINE_RUN_CONTEXT_TYPE = "pipeline_run"
SUMMARY_FILE = "summary.json"


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
    path = os.path.join(uri, SUMMARY_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
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
        entries += trend_entries(summary, run_ids[0] if run_ids else f"artifact-{artifact.id}",
                                 date.replace(microsecond=0).isoformat())
    return entries
