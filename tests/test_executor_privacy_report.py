"""PrivacyReportGenerator's Executor.Do on fixture artifacts (TFX's executor_test style, no pipeline): two
variants' results with known values (test_report_plots' documents), their ledgers and blessings."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

from executor_fixtures import channel, input_artifact, output_artifact

try:
    from test_report_plots import EPOCHS, make_ledger_doc, make_results_doc, write_json
except ImportError:  # tests/ imported as a package
    from tests.test_report_plots import EPOCHS, make_ledger_doc, make_results_doc, write_json

VARIANTS = ("non_private", "dp")


def _inputs(root: pathlib.Path) -> dict:
    """Artifacts laid out as the evaluator and the trainer write them, one per variant and group."""
    from tfx.types import standard_artifacts

    from privacy_audit.components.membership_inference.component import MembershipInferenceResults

    inputs = {"attack_results": [], "ledgers": [], "blessings": []}
    for v in VARIANTS:
        results = root / f"attack_results_{v}"
        rel = [f"results/{v}_epoch_{e:04d}.json" for e in EPOCHS[:-1]] + [f"results/{v}_final.json"]
        for path, e in zip(rel, EPOCHS):
            write_json(results / path, make_results_doc(v, e, is_final=e == EPOCHS[-1]))
        write_json(results / "index.json", {"results": rel})
        write_json(root / f"model_run_{v}" / "ledger.json", make_ledger_doc(v))
        inputs["attack_results"].append(input_artifact(MembershipInferenceResults, str(results)))
        inputs["ledgers"].append(input_artifact(standard_artifacts.ModelRun, str(root / f"model_run_{v}")))
    # non_private's blessing names its variant only through the artifact's custom property.
    write_json(root / "blessing_non_private" / "blessing.json", {
        "blessed": False, "thresholds": {"max_auc": 0.6},
        "failures": [{"slice": {"feature": "class", "value": 1}, "attack": "logistic_regression",
                      "metric": "auc", "value": 0.65, "threshold": 0.6}]})
    write_json(root / "blessing_dp" / "blessing.json",
               {"blessed": True, "thresholds": {"max_auc": 0.6}, "failures": [], "model_variant": "dp"})
    inputs["blessings"] = [
        input_artifact(standard_artifacts.ModelBlessing, str(root / "blessing_non_private"), model_variant="non_private"),
        input_artifact(standard_artifacts.ModelBlessing, str(root / "blessing_dp"))]
    return inputs


def _do(tmp_path: pathlib.Path, name: str, inputs: dict, **kwargs):
    """One Do with the component's own input keys (attack_results, attack_results_1, ...) and exec properties."""
    from tfx.types import standard_artifacts

    from privacy_audit.components.membership_inference.component import MembershipInferenceResults
    from privacy_audit.components.privacy_report.component import PrivacyReport, PrivacyReportGenerator
    from privacy_audit.components.privacy_report.executor import Executor

    types_ = {"attack_results": MembershipInferenceResults, "ledgers": standard_artifacts.ModelRun,
              "blessings": standard_artifacts.ModelBlessing}
    component = PrivacyReportGenerator(**{g: [channel(types_[g]) for _ in arts] for g, arts in inputs.items()},
                                       **kwargs)
    input_dict = {}
    for group, artifacts in inputs.items():
        keys = [k for k in component.inputs if k == group or k.startswith(group + "_")]
        assert len(keys) == len(artifacts)
        for key, artifact in zip(sorted(keys, key=lambda k: (k != group, k)), artifacts):
            input_dict[key] = [artifact]
    report = output_artifact(PrivacyReport, str(tmp_path / name))
    Executor().Do(input_dict, {"report": [report]}, dict(component.exec_properties))
    return report


def test_report_and_summary_hold_the_fixture_values(tmp_path):
    inputs = _inputs(tmp_path / "fixtures")
    report = _do(tmp_path, "report", inputs, title="Executor test audit")
    files = set(os.listdir(report.uri))
    assert {"report.html", "summary.json", "roc_curves.png", "epoch_plot.png"} <= files
    summary = json.loads(pathlib.Path(report.uri, "summary.json").read_text())
    rows = {r["name"]: r for r in summary["variants"]}
    assert set(rows) == set(VARIANTS)
    for v in VARIANTS:
        ledger = make_ledger_doc(v)
        final = make_results_doc(v, EPOCHS[-1], is_final=True)
        assert rows[v]["epsilon"] == ledger["epsilon"] and rows[v]["delta"] == ledger["delta"]
        assert rows[v]["private"] is ledger["private"]
        assert rows[v]["test_accuracy"] == final["metadata"]["accuracy_test"]
        assert rows[v]["max_auc"] == max(r["auc"] for r in final["results"])
        assert rows[v]["max_attacker_advantage"] == max(r["attacker_advantage"] for r in final["results"])
        assert rows[v]["final_epoch"] == EPOCHS[-1] and rows[v]["evaluated_epochs"] == list(EPOCHS)
    assert rows["dp"]["blessed"] is True and rows["non_private"]["blessed"] is False
    assert summary["title"] == "Executor test audit" and not summary["has_history"]
    page = pathlib.Path(report.uri, "report.html").read_text(encoding="utf-8")
    assert "Executor test audit" in page and "∞ (non-private)" in page and "not blessed" in page
    # ML Metadata custom properties of the report.
    assert report.get_int_custom_property("all_blessed") == 0
    assert report.get_int_custom_property("trend_alert") == 0
    assert json.loads(report.get_string_custom_property("variants")) == list(VARIANTS)


def test_a_blessing_without_variant_among_several_variants_is_named(tmp_path):
    from privacy_audit.components.privacy_report.load import ReportInputError

    inputs = _inputs(tmp_path / "fixtures")
    inputs["blessings"][0] = input_artifact(type(inputs["blessings"][0]), inputs["blessings"][0].uri)
    with pytest.raises(ReportInputError, match="model_variant"):
        _do(tmp_path, "report", inputs)
