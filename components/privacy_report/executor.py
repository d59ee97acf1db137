"""PrivacyReportGenerator executor: unpacks artifacts into plain results/ledgers/blessings for html_report.

Artifact files are read and written through common.io (local paths, gs://, s3://, ...). After the report,
this run's headline metrics are appended to the audit history (history.py) under ``history_uri``, which
also gives the trend of earlier runs without any ML Metadata connection.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import posixpath
import uuid
from typing import Any, Dict, List, Optional, Tuple

from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

from privacy_audit.components.common import io
from privacy_audit.components.privacy_report import history as history_lib
from privacy_audit.components.privacy_report import load
from privacy_audit.components.privacy_report.html_report import write_report
from privacy_audit.components.privacy_report.load import ReportInputError
from privacy_audit.components.privacy_report.summary import text_summary

from privacy_audit.components.common.layout import (  # noqa: E402
    BLESSING_FILE, LEDGER_FILE, ONE_RUN_AUDIT_FILE, RESULTS_DIR, RESULTS_INDEX as INDEX_FILE)


def _join(uri: str, *parts: str) -> str:
    return posixpath.join(uri, *parts) if "://" in uri else os.path.join(uri, *parts)


def _read_json(path: str) -> Dict[str, Any]:
    if not io.exists(path):
        raise ReportInputError(path, None, "file not found")
    try:
        data = json.loads(io.read_text(path))
    except ValueError as e:
        raise ReportInputError(path, None, f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ReportInputError(path, None, "top level must be a JSON object")
    return data


def pooled_inputs(input_dict: Dict[str, List[types.Artifact]], group: str) -> List[types.Artifact]:
    """Every artifact of an input group: keys "<group>", "<group>_1", "<group>_2", ... in that order."""
    keys = [k for k in input_dict if k == group or (k.startswith(group + "_") and k[len(group) + 1:].isdigit())]
    keys.sort(key=lambda k: 0 if k == group else int(k[len(group) + 1:]))
    return [a for k in keys for a in input_dict[k]]


def _results_paths(artifact: types.Artifact) -> List[str]:
    """The results files of one MembershipInferenceResults artifact: index.json's list, else results/*.json."""
    uri = artifact.uri
    index_path = _join(uri, INDEX_FILE)
    if io.exists(index_path):
        entries = _read_json(index_path).get("results")
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ReportInputError(index_path, "results", "must be a list of paths relative to the artifact")
        paths = []
        for rel in entries:
            normalized = posixpath.normpath(rel.replace(os.sep, "/"))
            if posixpath.isabs(normalized) or normalized.startswith(".."):
                raise ReportInputError(index_path, "results", f"path {rel!r} leaves the artifact directory")
            paths.append(_join(uri, *normalized.split("/")))
    else:
        paths = io.glob(_join(uri, RESULTS_DIR, "*.json"))
    if not paths:
        raise ReportInputError(uri, None, "the MembershipInferenceResults artifact holds no results files")
    return paths


def _variant_property(artifact: types.Artifact) -> Optional[str]:
    if artifact.has_custom_property("model_variant"):
        return artifact.get_string_custom_property("model_variant") or None
    return None


def read_blessings(artifacts: List[types.Artifact], variants: List[str]) -> Dict[str, load.Blessing]:
    """Blessings keyed by variant: blessing.json's model_variant, else the artifact's custom property,
    else the only variant there is."""
    out: Dict[str, load.Blessing] = {}
    for artifact in artifacts:
        path = _join(artifact.uri, BLESSING_FILE)
        blessing = load.read_blessing(_read_json(path), model_variant=_variant_property(artifact), name=path)
        variant = blessing.model_variant
        if variant is None:
            if len(variants) != 1:
                raise ReportInputError(
                    path, "model_variant",
                    f"missing (also as artifact custom property) and there are {len(variants)} variants: "
                    "cannot tell which one this blessing is for")
            variant = variants[0]
        if variant in out:
            raise ReportInputError(path, "model_variant", f"second blessing for variant {variant!r}")
        out[variant] = blessing
    return out


def read_model_run(uri: str) -> load.Ledger:
    """The ledger of a ModelRun artifact, with its one-run audit when the DPTrainer ran one."""
    import dataclasses

    ledger = load.read_ledger(_read_json(_join(uri, LEDGER_FILE)), name=_join(uri, LEDGER_FILE))
    audit_path = _join(uri, ONE_RUN_AUDIT_FILE)
    if io.exists(audit_path):
        ledger = dataclasses.replace(ledger, one_run_audit=load.read_one_run_audit(_read_json(audit_path),
                                                                                     name=audit_path))
    return ledger


class Executor(base_executor.BaseExecutor):

    def _history(self, exec_properties: Dict[str, Any], report_uri: str) -> Tuple[Optional[List[Dict[str, Any]]], List[str]]:
        """(trend entries of earlier runs, warnings): from the audit history when ``history_uri`` is set, else
        from a local ML Metadata SQLite file (runs recorded before the history existed)."""
        history_uri = exec_properties.get("history_uri")
        if history_uri:
            entries, warnings = history_lib.read(history_uri)
            return entries, warnings
        return self._history_from_mlmd(exec_properties, report_uri), []

    def _history_from_mlmd(self, exec_properties: Dict[str, Any], report_uri: str) -> Optional[List[Dict[str, Any]]]:
        sqlite_path = exec_properties.get("metadata_sqlite_path")
        pipeline_name = exec_properties.get("pipeline_name_for_trend")
        if not pipeline_name and self._context is not None and self._context.pipeline_info is not None:
            pipeline_name = self._context.pipeline_info.id
        if not sqlite_path or not pipeline_name:
            logging.info("PrivacyReportGenerator: no ML Metadata SQLite path given, no trend")
            return None
        from privacy_audit.components.privacy_report.trend import history_from_mlmd

        try:
            return history_from_mlmd(sqlite_path, pipeline_name, exclude_uris=[report_uri])
        except Exception as e:  # A trend is a nicety: never fail the audit over it.
            logging.warning("PrivacyReportGenerator: trend skipped, cannot read ML Metadata %s: %s", sqlite_path, e)
            return None

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        report = artifact_utils.get_single_instance(output_dict["report"])
        results = [load.read_results(_read_json(path), name=path)
                   for artifact in pooled_inputs(input_dict, "attack_results") for path in _results_paths(artifact)]
        ledgers = [read_model_run(a.uri) for a in pooled_inputs(input_dict, "ledgers")]
        variants = list(dict.fromkeys(r.model_variant for r in results))
        blessings = read_blessings(pooled_inputs(input_dict, "blessings"), variants)
        history, history_warnings = self._history(exec_properties, report.uri)
        # KFP's container entry point gives no pipeline run id: a time-stamped one keeps runs apart in the trend.
        run_id = (self._context.pipeline_run_id if self._context is not None else None) or \
            f"run-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        title = exec_properties.get("title") or "Privacy audit report"
        max_auc_increase = exec_properties.get("max_auc_increase")
        outputs = write_report(report.uri, results, ledgers, history, title, blessings=blessings, run_id=run_id,
                               max_auc_increase=None if max_auc_increase is None else float(max_auc_increase),
                               history_warnings=history_warnings)
        summary = outputs.summary
        if exec_properties.get("history_uri"):
            path = history_lib.append(exec_properties["history_uri"], summary, run_id)
            logging.info("PrivacyReportGenerator: audit history entry %s", path)
        report.set_int_custom_property("trend_alert", int(bool(summary["trend_alert"]["alert"])))
        report.set_int_custom_property("all_blessed", int(bool(summary["all_blessed"])))
        report.set_string_custom_property("variants", json.dumps([v["name"] for v in summary["variants"]]))
        logging.info("PrivacyReportGenerator wrote %s\n%s", _join(report.uri, "report.html"), text_summary(summary))
