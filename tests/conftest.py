"""Shared pytest set-up.

Where TFX is not installed (the Python 3.12 core environment of `make test-py312`), the test modules that
need TFX are not collected: the core's tests run there, the components' and pipelines' tests run in the
pinned Python 3.10 environment. A module needs TFX when it is listed below or when its source imports
tfx, a component/executor module, or the pipeline definition/runner.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re

HAS_TFX = importlib.util.find_spec("tfx") is not None

# Modules whose every test builds or runs TFX components or pipelines.
TFX_TEST_MODULES = {
    "test_dp_trainer_pipeline.py",
    "test_executor_dp_trainer.py",
    "test_executor_membership_inference.py",
    "test_executor_privacy_report.py",
    "test_executor_reference_models.py",
    "test_kubeflow.py",
    "test_mia_component.py",
    "test_object_store.py",
    "test_one_run_audit_pipeline.py",
    "test_reference_component.py",
    "test_report_component.py",
    "test_run_cli.py",
}
_NEEDS_TFX = re.compile(
    r"^\s*(from tfx\b|import tfx\b)"
    r"|LocalDagRunner"
    r"|privacy_audit\.pipelines\.(pipeline|run|kubeflow)\b"
    r"|privacy_audit\.pipelines import (pipeline|run|kubeflow)\b"
    r"|privacy_audit\.components\.\w+\.(component|executor)\b"
    r"|privacy_audit\.components import (DPTrainer|ReferenceModelTrainer|MembershipInferenceEvaluator"
    r"|PrivacyReportGenerator)",
    re.MULTILINE)


def needs_tfx(path: pathlib.Path) -> bool:
    """Whether the test module at ``path`` needs TFX (listed, or imports TFX-dependent code)."""
    if path.name in TFX_TEST_MODULES:
        return True
    try:
        return bool(_NEEDS_TFX.search(path.read_text(encoding="utf-8")))
    except OSError:
        return False


def pytest_ignore_collect(collection_path: pathlib.Path, config):
    if HAS_TFX or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    return True if needs_tfx(collection_path) else None


# Issue 15: the tests leave nothing in the system's temporary directory (Beam's beam-temp-* folders, the files
# TensorFlow's autograph generates, libraries' own mkdtemp()s): the session gets its own TMPDIR, inherited by
# the subprocesses it starts, and removes it at the end.
_SESSION_TMP: list = []


def pytest_configure(config):
    import os
    import tempfile

    if os.environ.get("PRIVACY_AUDIT_KEEP_TMP"):
        return
    path = tempfile.mkdtemp(prefix="privacy-audit-tests-")
    _SESSION_TMP.append((path, os.environ.get("TMPDIR")))
    os.environ["TMPDIR"] = path
    tempfile.tempdir = path


def pytest_unconfigure(config):
    import os
    import shutil
    import tempfile

    for path, previous in _SESSION_TMP:
        shutil.rmtree(path, ignore_errors=True)
        if previous is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous
        tempfile.tempdir = None
    _SESSION_TMP.clear()
