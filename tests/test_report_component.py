"""PrivacyReportGenerator in a real TFX pipeline: LocalDagRunner, ML Metadata in SQLite, Importer nodes.

Two fixture attack-results artifacts, two ledgers and two blessings (known values) feed the
component; the test checks the report artifact's report.html and summary.json, then runs the
pipeline again and checks the trend read back from ML Metadata.
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest

pytest.importorskip("tfx")

from ml_metadata import metadata_store  # noqa: E402
from tfx.orchestration import metadata  # noqa: E402
from tfx.orchestration.local.local_dag_runner import LocalDagRunner  # noqa: E402
from tfx.v1 import dsl  # noqa: E402

from privacy_audit.components.privacy_report.component import (  # noqa: E402
    MembershipInferenceResults,
    ModelRun,
    PrivacyBlessing,
    PrivacyReport,
)
from privacy_audit.components.privacy_report import trend  # noqa: E402
from privacy_audit.components.privacy_report.component import PrivacyReportGenerator  # noqa: E402

try:
    from test_report_plots import EPOCHS, make_ledger_doc, make_results_doc, write_json
except ImportError:  # tests/ imported as a package
    from tests.test_report_plots import EPOCHS, make_ledger_doc, make_results_doc, write_json

PIPELINE_NAME = "privacy-report-test"
VARIANTS = ("non_private", "dp")


def _write_fixture_artifacts(root: pathlib.Path) -> dict:
    """Artifact directories as the upstream components lay them out (CONTRACTS.md)."""
    dirs = {}
    for v in VARIANTS:
        results_dir = root / f"attack_results_{v}"
        rel = []
        for e in EPOCHS[:-1]:
            rel.append(f"results/{v}_epoch_{e:04d}.json")
            write_json(results_dir / rel[-1], make_results_doc(v, e, is_final=False))
        rel.append(f"results/{v}_final.json")
        write_json(results_dir / rel[-1], make_results_doc(v, EPOCHS[-1], is_final=True))
        write_json(results_dir / "index.json", {"results": rel})
        write_json(root / f"model_run_{v}" / "ledger.json", make_ledger_doc(v))
        dirs[v] = {"results": str(results_dir), "ledger": str(root / f"model_run_{v}")}
    # non_private's blessing names its variant only through the artifact's custom property.
    write_json(root / "blessing_non_private" / "blessing.json", {
        "blessed": False, "thresholds": {"max_auc": 0.6},
        "failures": [{"slice": {"feature": "class", "value": 1}, "attack": "logistic_regression",
                      "metric": "auc", "value": 0.65, "threshold": 0.6}]})
    write_json(root / "blessing_dp" / "blessing.json",
               {"blessed": True, "thresholds": {"max_auc": 0.6}, "failures": [], "model_variant": "dp"})
    for v in VARIANTS:
        dirs[v]["blessing"] = str(root / f"blessing_{v}")
    return dirs


def _pipeline(tmp_path: pathlib.Path, dirs: dict) -> dsl.Pipeline:
    results, ledgers, blessings, nodes = [], [], [], []
    for v in VARIANTS:
        r = dsl.Importer(source_uri=dirs[v]["results"], artifact_type=MembershipInferenceResults).with_id(f"results_{v}")
        m = dsl.Importer(source_uri=dirs[v]["ledger"], artifact_type=ModelRun).with_id(f"ledger_{v}")
        b = dsl.Importer(source_uri=dirs[v]["blessing"], artifact_type=PrivacyBlessing,
                         custom_properties={"model_variant": v}).with_id(f"blessing_{v}")
        nodes += [r, m, b]
        results.append(r.outputs["result"])
        ledgers.append(m.outputs["result"])
        blessings.append(b.outputs["result"])
    sqlite = str(tmp_path / "metadata.sqlite")
    report = PrivacyReportGenerator(attack_results=results, ledgers=ledgers, blessings=blessings,
                                    title="Component test audit", metadata_sqlite_path=sqlite)
    return dsl.Pipeline(pipeline_name=PIPELINE_NAME, pipeline_root=str(tmp_path / "root"),
                        components=nodes + [report], enable_cache=False,
                        metadata_connection_config=metadata.sqlite_metadata_connection_config(sqlite))


def _report_uris(tmp_path: pathlib.Path) -> list[str]:
    store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(str(tmp_path / "metadata.sqlite")))
    artifacts = sorted(store.get_artifacts_by_type(PrivacyReport.TYPE_NAME), key=lambda a: a.id)
    return [a.uri for a in artifacts]


def test_constructor_takes_lists_of_channels():
    r = [dsl.Importer(source_uri=f"/x/{v}", artifact_type=MembershipInferenceResults).with_id(f"r_{v}")
         for v in VARIANTS]
    m = [dsl.Importer(source_uri=f"/m/{v}", artifact_type=ModelRun).with_id(f"m_{v}") for v in VARIANTS]
    both = PrivacyReportGenerator(attack_results=[i.outputs["result"] for i in r],
                                  ledgers=[i.outputs["result"] for i in m])
    # One input key per channel (Kubeflow v2 takes no union channels); the executor pools them.
    assert both.inputs["attack_results"] is r[0].outputs["result"]
    assert both.inputs["attack_results_1"] is r[1].outputs["result"]
    assert both.inputs["ledgers_1"] is m[1].outputs["result"] and "blessings" not in both.inputs
    single = PrivacyReportGenerator(attack_results=r[0].outputs["result"], ledgers=[])
    assert set(single.inputs) == {"attack_results"}
    assert single.outputs["report"].type is PrivacyReport
    with pytest.raises(ValueError, match="attack_results"):
        PrivacyReportGenerator(attack_results=[])


def test_trend_defaults_to_the_report_type_name():
    assert trend.REPORT_TYPE_NAME == PrivacyReport.TYPE_NAME


def test_pipeline_compiles_for_kubeflow(tmp_path):
    kv2 = pytest.importorskip("tfx.orchestration.kubeflow.v2.kubeflow_v2_dag_runner")
    pipeline = _pipeline(tmp_path, _write_fixture_artifacts(tmp_path / "fixtures"))
    runner = kv2.KubeflowV2DagRunner(config=kv2.KubeflowV2DagRunnerConfig(default_image="image"),
                                     output_dir=str(tmp_path), output_filename="pipeline.json")
    runner.run(pipeline, write_out=True)
    spec = json.loads((tmp_path / "pipeline.json").read_text())
    inputs = spec["pipelineSpec"]["root"]["dag"]["tasks"]["PrivacyReportGenerator"]["inputs"]["artifacts"]
    assert set(inputs) == {"attack_results", "attack_results_1", "ledgers", "ledgers_1", "blessings", "blessings_1"}


@pytest.mark.slow
def test_pipeline_writes_report_with_fixture_values_and_trend(tmp_path):
    dirs = _write_fixture_artifacts(tmp_path / "fixtures")
    LocalDagRunner().run(_pipeline(tmp_path, dirs))

    (uri,) = _report_uris(tmp_path)
    assert {"report.html", "summary.json", "roc_curves.png", "epoch_plot.png"} <= set(os.listdir(uri))
    summary = json.loads(pathlib.Path(uri, "summary.json").read_text())
    rows = {r["name"]: r for r in summary["variants"]}
    assert set(rows) == set(VARIANTS)
    for v in VARIANTS:
        ledger = json.loads(pathlib.Path(dirs[v]["ledger"], "ledger.json").read_text())
        assert rows[v]["epsilon"] == ledger["epsilon"]  # the ledger's final ε (null: non-private)
        assert rows[v]["delta"] == ledger["delta"] and rows[v]["private"] is ledger["private"]
        final = make_results_doc(v, EPOCHS[-1], is_final=True)
        assert rows[v]["test_accuracy"] == final["metadata"]["accuracy_test"]
        assert rows[v]["max_auc"] == max(r["auc"] for r in final["results"])
        assert rows[v]["max_attacker_advantage"] == max(r["attacker_advantage"] for r in final["results"])
        # 90 non-members per slice cannot resolve 0.1% FPR: no headline number (issue 12).
        assert all(r["n_nonmembers"] * 0.001 < 1 for r in final["results"])
        assert rows[v]["max_tpr_at_fpr_0.001"] is None
        assert rows[v]["final_epoch"] == EPOCHS[-1] and rows[v]["evaluated_epochs"] == list(EPOCHS)
    assert rows["dp"]["epsilon"] == 2.5 and rows["non_private"]["epsilon"] is None
    assert rows["dp"]["blessed"] is True and rows["non_private"]["blessed"] is False
    assert summary["title"] == "Component test audit" and not summary["has_history"]
    page = pathlib.Path(uri, "report.html").read_text(encoding="utf-8")
    assert "Component test audit" in page and "∞ (non-private)" in page and "not blessed" in page

    # A second run reads the first report back from ML Metadata for the trend.
    LocalDagRunner().run(_pipeline(tmp_path, dirs))
    first, second = _report_uris(tmp_path)
    assert first == uri
    summary2 = json.loads(pathlib.Path(second, "summary.json").read_text())
    assert summary2["has_history"]
    earlier = [t for t in summary2["trend"] if t["run_id"] != summary2["run_id"]]
    assert {t["variant"] for t in earlier} == set(VARIANTS)
    assert {t["run_id"] for t in earlier} == {summary["run_id"]}
    assert {t["variant"]: t["max_auc"] for t in earlier} == {v: rows[v]["max_auc"] for v in VARIANTS}
    assert pathlib.Path(second, "trend.png").exists()
    assert (pathlib.Path(first, "report.html").read_text(encoding="utf-8") == page)  # earlier report untouched
