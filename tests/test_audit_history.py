"""The audit history (one immutable file per report run) and the drift alert, without ML Metadata.

Two runs of the report executor (locally, in-process) and two runs of the report task through TFX's
KubeflowV2 container entry point each give a trend with two points; the faults of issue 10 (corrupt or
newer-schema history files, two runs in the same second) are each checked; the drift alert is checked on a
constructed history against the Mann-Whitney null standard deviation computed here by hand.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pytest

from privacy_audit.components.common import io
from privacy_audit.components.privacy_report import history, trend

VARIANT = "dp_eps1"


def _summary(auc: float, n: int = 100, blessed: bool = True) -> dict:
    null_sd = math.sqrt((n + n + 1) / (12.0 * n * n))
    return {"title": "t", "variants": [{
        "name": VARIANT, "max_auc": auc, "max_attacker_advantage": 0.1, "epsilon_lower_bound": None,
        "max_tpr_at_fpr_0.001": 0.0, "test_accuracy": 0.9, "epsilon": 1.0, "blessed": blessed,
        "attacks": [{"attack": "threshold", "auc": auc - 0.01, "auc_null_sd": null_sd},
                    {"attack": "lira", "auc": auc, "auc_null_sd": null_sd}]}]}


def test_two_runs_in_the_same_second_both_kept_and_read_in_order(tmp_path):
    uri = str(tmp_path / "history")
    when = dt.datetime(2026, 12, 2, 17, 0, 0, tzinfo=dt.timezone.utc)
    a = history.append(uri, _summary(0.55), "run-a", when=when)
    b = history.append(uri, _summary(0.56), "run-a", when=when)  # same run id, same microsecond
    assert a != b and len(io.listdir(uri)) == 2
    entries, warnings = history.read(uri)
    assert warnings == [] and sorted(e["entire_dataset_max_auc"] for e in entries) == [0.55, 0.56]
    assert all(e["entire_dataset_attack"] == "lira" for e in entries)


def test_corrupt_newer_schema_and_partial_files_are_skipped_with_a_warning(tmp_path):
    uri = tmp_path / "history"
    history.append(str(uri), _summary(0.55), "good")
    (uri / "20261201T000000.000000Z_corrupt_00000000.json").write_text('{"entries": [')
    (uri / "20261201T000001.000000Z_future_00000000.json").write_text(
        json.dumps({"history_schema_version": history.HISTORY_SCHEMA_VERSION + 1, "entries": []}))
    (uri / ".20261201T000002.000000Z_killed_00000000.json.tmp-abc").write_text('{"entr')  # a killed writer
    entries, warnings = history.read(str(uri))
    assert [e["run_id"] for e in entries] == ["good"]
    assert len(warnings) == 2
    assert any("corrupt" in w and "not valid JSON" in w for w in warnings)
    assert any("future" in w and "newer" in w for w in warnings)
    assert history.read(str(tmp_path / "missing")) == ([], [])


def test_drift_alert_beyond_two_null_standard_deviations():
    n = 100
    sd = math.sqrt((2 * n + 1) / (12.0 * n * n))  # Mann-Whitney AUC null sd, 100 members / 100 non-members
    earlier = history.history_entries(_summary(0.55, n), "r1", "2026-12-01T00:00:00+00:00")
    jump = history.history_entries(_summary(0.55 + 2 * sd + 0.01, n), "r2", "2026-12-02T00:00:00+00:00")
    noise = history.history_entries(_summary(0.55 + 2 * sd - 0.01, n), "r2", "2026-12-02T00:00:00+00:00")
    alert = trend.drift_alert(earlier, jump)
    [row] = alert["variants"]
    assert alert["alert"] is True and row["alert"] is True and row["previous_run_id"] == "r1"
    assert row["threshold"] == pytest.approx(0.55 + 2 * sd) and row["previous_null_sd"] == pytest.approx(sd)
    assert trend.drift_alert(earlier, noise)["alert"] is False
    assert trend.drift_alert([], jump)["variants"][0]["note"].startswith("no earlier run")


def test_max_auc_increase_gate_refuses_the_blessing():
    earlier = history.history_entries(_summary(0.55), "r1", "2026-12-01T00:00:00+00:00")
    summary = _summary(0.62)
    summary["all_blessed"] = True
    current = history.history_entries(summary, "r2", "2026-12-02T00:00:00+00:00")
    trend.apply_drift(summary, earlier, current, max_auc_increase=0.05)
    row = summary["variants"][0]
    assert summary["trend_alert"]["variants"][0]["increase"] == pytest.approx(0.07)
    assert row["blessed"] is False and summary["all_blessed"] is False
    assert row["gate_failures"][-1]["metric"] == "auc_increase"
    loose = _summary(0.62)
    trend.apply_drift(loose, earlier, history.history_entries(loose, "r2", "x"), max_auc_increase=0.1)
    assert loose["variants"][0]["blessed"] is True


# ------------------------------------------------------------------ the report component, run twice


def _fixture_artifacts(root: Path):
    """The report's inputs as artifacts, from test_kubeflow's fixture documents (non-private and DP)."""
    from tfx.types import standard_artifacts

    import test_kubeflow as kf
    from privacy_audit.components.privacy_report.component import MembershipInferenceResults

    inputs = {"attack_results": [], "ledgers": [], "blessings": []}
    for v in kf.VARIANTS:
        results = root / v / "attack_results"
        kf._write_json(results / "results" / f"{v}_final.json", kf._results_doc(v, 4, True))
        ledger = root / v / "model_run"
        kf._write_json(ledger / "ledger.json", kf._ledger_doc(v))
        for key, art_type, uri in (("attack_results", MembershipInferenceResults, results),
                                   ("ledgers", standard_artifacts.ModelRun, ledger)):
            art = art_type()
            art.uri = str(uri)
            inputs[key].append(art)
    return inputs


@pytest.mark.medium
def test_two_local_report_runs_give_a_two_point_trend_without_ml_metadata(tmp_path):
    from tfx.types import standard_artifacts  # noqa: F401 - the executor needs tfx

    from privacy_audit.components.privacy_report.component import PrivacyReport
    from privacy_audit.components.privacy_report.executor import Executor

    inputs = _fixture_artifacts(tmp_path / "store")
    flat = {"attack_results": [inputs["attack_results"][0]], "attack_results_1": [inputs["attack_results"][1]],
            "ledgers": [inputs["ledgers"][0]], "ledgers_1": [inputs["ledgers"][1]]}
    props = {"title": "t", "history_uri": str(tmp_path / "pipeline_root" / "audit_history")}
    summaries = []
    for i in range(2):
        report = PrivacyReport()
        report.uri = str(tmp_path / f"report_{i}")
        Executor().Do(flat, {"report": [report]}, props)
        summaries.append(json.loads((Path(report.uri) / "summary.json").read_text()))
    assert len(io.listdir(props["history_uri"])) == 2
    first, second = summaries
    assert first["has_history"] is False and len({e["run_id"] for e in first["trend"]}) == 1
    assert second["has_history"] is True and len({e["run_id"] for e in second["trend"]}) == 2
    # Same inputs twice: the same AUCs, no drift.
    assert second["trend_alert"]["alert"] is False
    assert {r["variant"] for r in second["trend_alert"]["variants"]} == set(r["name"] for r in second["variants"])


from test_kubeflow import compiled  # noqa: E402,F401 - the compiled default pipeline (module fixture)


def _report_task_inputs(kf, store: Path) -> dict:
    """The report task's input artifacts (results, ledger, blessing per variant) as in test_kubeflow."""
    inputs = {}
    for i, v in enumerate(kf.VARIANTS):
        suffix = "" if i == 0 else f"_{i}"
        results = store / kf._task("MembershipInferenceEvaluator", v) / "attack_results"
        kf._write_json(results / "results" / f"{v}_final.json", kf._results_doc(v, 4, True))
        ledger = store / kf._task("DPTrainer", v) / "model_run"
        kf._write_json(ledger / "ledger.json", kf._ledger_doc(v))
        blessing = store / kf._task("MembershipInferenceEvaluator", v) / "blessing"
        kf._write_json(blessing / "blessing.json", {"blessed": True, "model_variant": v, "failures": []})
        inputs[f"attack_results{suffix}"] = (str(results), {"model_variant": v})
        inputs[f"ledgers{suffix}"] = (str(ledger), {"model_variant": v})
        inputs[f"blessings{suffix}"] = (str(blessing), {"model_variant": v, "blessed": 1.0})
    return inputs


@pytest.mark.slow
def test_two_kubeflow_entry_point_runs_give_a_two_point_trend(compiled, tmp_path):
    """The report task as KFP runs it (no ML Metadata connection in the container), twice, sharing the
    history folder; the compiled default history_uri is <pipeline root>/audit_history."""
    import test_kubeflow as kf

    _, spec = compiled
    _, comp = kf._task_component(spec, "PrivacyReportGenerator")
    params = kf._resolve_parameters(spec, spec["root"]["dag"]["tasks"]["PrivacyReportGenerator"], None)
    assert params["history_uri"] == kf.PIPELINE_ROOT + "/audit_history"
    history_uri = str(tmp_path / "bucket" / "audit_history")  # stands in for the pipeline root's bucket
    inputs = _report_task_inputs(kf, tmp_path / "store")
    summaries = []
    for i in range(2):
        report_uri = tmp_path / "store" / f"run{i}" / "PrivacyReportGenerator" / "report"
        executor_input = kf._executor_input(spec, "PrivacyReportGenerator", inputs, {"report": str(report_uri)},
                                            tmp_path / f"kfp_outputs_{i}" / "output_metadata.json",
                                            overrides={"history_uri": history_uri})
        out = kf._run_task(spec, "PrivacyReportGenerator", executor_input, cwd=tmp_path)
        summaries.append(json.loads((report_uri / "summary.json").read_text()))
        assert out["artifacts"]["report"]["artifacts"][0]["metadata"]["trend_alert"] == 0
    assert len(io.listdir(history_uri)) == 2
    assert len({e["run_id"] for e in summaries[0]["trend"]}) == 1
    trend_runs = {e["run_id"] for e in summaries[1]["trend"]}
    assert len(trend_runs) == 2 and summaries[1]["has_history"] is True
    assert [e["variant"] for e in summaries[1]["trend"]] == list(kf.VARIANTS) * 2
