"""The pipeline with its pipeline root and output in a bucket of a local GCS emulator that this test starts
and stops itself (tests/gcs_emulator.py: fake-gcs-server on 127.0.0.1), and the unreachable-bucket fault.

What is checked is read back from the emulator through its JSON API, not through the code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gcs_emulator import GcsEmulator

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "audit-bucket"


def _cli() -> list:
    cli = ROOT / ".venv" / "bin" / "privacy-audit"
    return [str(cli)] if cli.exists() else [sys.executable, "-m", "privacy_audit.pipelines.cli"]


@pytest.fixture(scope="module")
def emulator():
    with GcsEmulator() as gcs:
        gcs.create_bucket(BUCKET)
        yield gcs


def _run(emulator, args, tmp_path, timeout):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0", **emulator.env)
    return subprocess.run(_cli() + ["run"] + args, capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=str(tmp_path))


@pytest.mark.slow
def test_pipeline_with_bucket_pipeline_root_writes_report_summary_and_results_there(emulator, tmp_path):
    out = f"gs://{BUCKET}/audit"
    proc = _run(emulator, ["--output-dir", out, "--epochs", "2", "--reference-models", "0",
                           "--metadata-path", str(tmp_path / "mlmd" / "metadata.sqlite")], tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    names = emulator.list_objects(BUCKET, "audit/")
    assert "audit/report.html" in names and "audit/summary.json" in names
    summary = json.loads(emulator.read_object(BUCKET, "audit/summary.json"))
    assert [v["name"] for v in summary["variants"]] == ["non_private", "dp_eps1"]
    for v in summary["variants"]:
        assert 0.0 <= v["max_auc"] <= 1.0 and 0.0 <= v["test_accuracy"] <= 1.0
    # Every component's artifacts are in the bucket: examples, models, ledgers, attack results, the report.
    root = "audit/pipeline_root/"
    for part in ("/Split-train/", "/keras/model.keras", "/ledger.json", "/attack_results/", "/index.json",
                 "PrivacyReportGenerator/report/"):
        assert any(n.startswith(root) and part in n for n in names), part
    results = [n for n in names if "/attack_results/" in n and "/results/" in n and n.endswith("_final.json")]
    assert len(results) == 2
    final = json.loads(emulator.read_object(BUCKET, results[0]))
    assert final["schema_version"] == 1 and final["results"]
    # The audit history of this run, under the pipeline root; ML Metadata stayed local.
    assert len([n for n in names if n.startswith(root + "audit_history/") and n.endswith(".json")]) == 1
    assert (tmp_path / "mlmd" / "metadata.sqlite").is_file()
    assert not any(Path(n).name.startswith(".") and ".tmp-" in n for n in names)  # no temporary file left


@pytest.mark.slow
def test_unreachable_bucket_is_named_before_any_training(emulator, tmp_path):
    t0 = time.time()
    proc = _run(emulator, ["--output-dir", "gs://no-such-bucket/audit", "--epochs", "2", "--reference-models", "0",
                           "--metadata-path", str(tmp_path / "metadata.sqlite")], tmp_path, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "gs://no-such-bucket/audit" in proc.stderr
    assert "epoch" not in proc.stdout and "Running pipeline" not in proc.stdout
    assert not (tmp_path / "metadata.sqlite").exists()
