"""The audit history: one immutable JSON file per report run under ``history_uri``, read back for the trend.

Scheduled audits of one pipeline share a folder (by default ``<pipeline_root>/audit_history``); every run of
the report adds one file and never touches the others, so the trend needs no ML Metadata and works on any
runner (local, Kubeflow, with a bucket as the pipeline root):

    <history_uri>/20261202T171336.123456Z_<run id>_<8 hex>.json
    {"history_schema_version": 1, "run_id": str, "date": ISO UTC, "title": str,
     "entries": [{"run_id", "date", "variant", "max_auc", ..., "entire_dataset_max_auc",
                  "entire_dataset_auc_null_sd"}, ...]}

Writing: the name holds the time to the microsecond, the run id and a random suffix, and the file is written
atomically with ``overwrite=False`` (common.io.write_json): two runs finishing in the same second, or two
concurrent writers, each keep their own file, and a run killed while writing leaves only a ``.``-prefixed
temporary name, which the reader ignores. Reading is tolerant: an unreadable, corrupt or newer-schema file is
skipped with a warning (a trend must never fail an audit). Imports no tfx.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import Mapping
from typing import Any

from privacy_audit.components.common import io
from privacy_audit.components.privacy_report.summary import trend_entries

logger = logging.getLogger(__name__)

HISTORY_SCHEMA_VERSION = 1
from privacy_audit.components.common.layout import HISTORY_DIR  # noqa: E402
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_history_uri(pipeline_root: str) -> str:
    """The history folder scheduled runs of a pipeline share: ``<pipeline_root>/audit_history``."""
    return io.join(pipeline_root, HISTORY_DIR)


def history_entries(summary: Mapping[str, Any], run_id: str, date: str) -> list[dict[str, Any]]:
    """The trend entries of one summary (summary.trend_entries), each with the drift signal: the final
    model's max AUC over the attacks on the entire data set and that AUC's null standard deviation."""
    entries = trend_entries(summary, run_id, date)
    for entry, row in zip(entries, summary.get("variants", [])):
        whole = [a for a in row.get("attacks") or [] if a.get("auc") is not None]
        worst = max(whole, key=lambda a: a["auc"]) if whole else None
        entry["entire_dataset_max_auc"] = worst["auc"] if worst else None
        entry["entire_dataset_auc_null_sd"] = worst.get("auc_null_sd") if worst else None
        entry["entire_dataset_attack"] = worst.get("attack") if worst else None
    return entries


def file_name(run_id: str, when: dt.datetime) -> str:
    """``<UTC time to the microsecond>_<run id, made file-safe>_<8 random hex>.json``: sortable by time, unique
    even for runs with one run id finishing in the same microsecond."""
    stamp = when.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    safe = _SAFE.sub("-", run_id)[:80] or "run"
    return f"{stamp}_{safe}_{uuid.uuid4().hex[:8]}.json"


def append(history_uri: str, summary: Mapping[str, Any], run_id: str,
           when: dt.datetime | None = None) -> str:
    """Adds this run's file to the history; returns its path. Never overwrites a file (a name collision,
    which the random suffix makes practically impossible, is retried with a new suffix)."""
    when = when or dt.datetime.now(dt.timezone.utc)
    date = when.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat()
    doc = {"history_schema_version": HISTORY_SCHEMA_VERSION, "run_id": run_id, "date": date,
           "title": summary.get("title"), "entries": history_entries(summary, run_id, date)}
    for _ in range(5):
        path = io.join(history_uri, file_name(run_id, when))
        try:
            return io.write_json(path, doc, overwrite=False)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not find a free history file name under {history_uri}")


def _parse(path: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(entries, None) or (None, why the file is skipped)."""
    try:
        doc = json.loads(io.read_text(path))
    except (OSError, ValueError) as e:
        return None, f"not valid JSON ({str(e).splitlines()[0][:120]})"
    except Exception as e:  # noqa: BLE001 - object-store errors have their own types
        return None, f"unreadable ({type(e).__name__})"
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        return None, "not an audit history file (no entries list)"
    version = doc.get("history_schema_version")
    if not isinstance(version, int) or version < 1:
        return None, f"history_schema_version {version!r} is not a positive integer"
    if version > HISTORY_SCHEMA_VERSION:
        return None, (f"written by a newer privacy-audit (history_schema_version {version} > "
                      f"{HISTORY_SCHEMA_VERSION})")
    entries = [e for e in doc["entries"] if isinstance(e, dict) and isinstance(e.get("variant"), str)]
    return entries, None


def read(history_uri: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Every entry of the history, oldest first, and one warning per skipped file.

    A missing folder is an empty history. Temporary names (``.``-prefixed: a write in progress or killed)
    are not history files and are ignored without a warning."""
    try:
        if not io.isdir(history_uri):
            return [], []
        names = [n for n in io.listdir(history_uri) if n.endswith(".json") and not n.startswith(".")]
    except Exception as e:  # noqa: BLE001 - a trend is a nicety: an unreachable history is a warning
        return [], [f"audit history {history_uri} not readable ({type(e).__name__}: {str(e)[:120]}); no trend"]
    entries: list[dict[str, Any]] = []
    warnings: list[str] = []
    for name in sorted(names):
        path = io.join(history_uri, name)
        parsed, why = _parse(path)
        if parsed is None:
            msg = f"audit history file {path} skipped: {why}"
            logger.warning(msg)
            warnings.append(msg)
            continue
        entries += parsed
    # File names sort by time to the microsecond; the stable sort keeps that order within one second.
    entries.sort(key=lambda e: str(e.get("date")))
    return entries, warnings
