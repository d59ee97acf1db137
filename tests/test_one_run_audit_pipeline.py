"""The one-run privacy audit inside a real TFX pipeline (LocalDagRunner): CsvExampleGen on digits → two
private DPTrainers with audit_canaries → MembershipInferenceEvaluator each → PrivacyReportGenerator.

One trainer is correct. The other is deliberately broken the way a real bug would break it: its DP-SGD
steps add no noise at all (the training loop is patched for that noise multiplier only) while the ledger
still claims the ε of σ = 8.5. The audit must stay below the accountant's ε for the correct run, and
catch the broken one: its blessing is NOT_BLESSED with the reason, and the report shows the bound beside ε.
"""

import json
import os

import pytest

from privacy_audit.components.common.examples import write_digits_csv

pytestmark = pytest.mark.slow

CANARIES = 200
SIGMA_OK, SIGMA_BROKEN = 8.0, 8.5
RECIPE = dict(private=True, epochs=30, batch_size=64, learning_rate=5e-3, l2_norm_clip=1.0, checkpoint_every=0,
              builtin_model="mlp", hparams={"hidden_units": [512, 512]}, seed=0, audit_canaries=CANARIES)


def _artifacts(db, type_name):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = db
    return metadata_store.MetadataStore(cfg).get_artifacts_by_type(type_name)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tfx.orchestration import metadata
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.v1 import dsl
    from tfx.v1.components import CsvExampleGen

    from privacy_audit.components.dp_trainer import training
    from privacy_audit.components.dp_trainer.component import DPTrainer
    from privacy_audit.components.membership_inference.component import MembershipInferenceEvaluator
    from privacy_audit.components.privacy_report.component import PrivacyReportGenerator

    tmp = tmp_path_factory.mktemp("one_run_audit_pipeline")
    write_digits_csv(str(tmp / "data"), n=800, seed=0)
    gen = CsvExampleGen(input_base=str(tmp / "data"))
    examples = gen.outputs["examples"]
    components, results, runs, blessings = [gen], [], [], []
    for name, sigma in (("dp_ok", SIGMA_OK), ("dp_broken", SIGMA_BROKEN)):
        trainer = DPTrainer(examples=examples, label_key="label", model_variant=name, noise_multiplier=sigma,
                            **RECIPE).with_id(f"DPTrainer.{name}")
        evaluator = MembershipInferenceEvaluator(
            examples=examples, model=trainer.outputs["model"], model_run=trainer.outputs["model_run"],
            label_key="label", attacks=["threshold"], model_variant=name).with_id(f"Evaluator.{name}")
        components += [trainer, evaluator]
        results.append(evaluator.outputs["attack_results"])
        runs.append(trainer.outputs["model_run"])
        blessings.append(evaluator.outputs["blessing"])
    components.append(PrivacyReportGenerator(attack_results=results, ledgers=runs, blessings=blessings))
    db = str(tmp / "mlmd.sqlite")
    pipeline = dsl.Pipeline(pipeline_name="one-run-audit-test", pipeline_root=str(tmp / "root"),
                            components=components, enable_cache=False,
                            metadata_connection_config=metadata.sqlite_metadata_connection_config(db),
                            beam_pipeline_args=["--direct_running_mode=in_memory"])

    fit = training.fit

    def broken_fit(*args, **kwargs):
        # The bug: DP-SGD steps of the σ = 8.5 variant add no noise (its accounting still uses σ = 8.5).
        if kwargs.get("private", True) and kwargs.get("noise_multiplier") == SIGMA_BROKEN:
            kwargs["noise_multiplier"] = 0.0
        return fit(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(training, "fit", broken_fit)  # executors run in this process under LocalDagRunner
    try:
        LocalDagRunner().run(pipeline)
    finally:
        mp.undo()
    out = {"db": db}
    for art in _artifacts(db, "ModelRun"):
        name = art.custom_properties["model_variant"].string_value
        with open(os.path.join(art.uri, "one_run_audit.json")) as f:
            out[f"audit_{name}"] = json.load(f)
        with open(os.path.join(art.uri, "ledger.json")) as f:
            out[f"ledger_{name}"] = json.load(f)
        out[f"run_{name}"] = art
    for art in _artifacts(db, "ModelBlessing"):
        with open(os.path.join(art.uri, "blessing.json")) as f:
            blessing = json.load(f)
        blessing["markers"] = sorted(n for n in os.listdir(art.uri) if n in ("BLESSED", "NOT_BLESSED"))
        out[f"blessing_{blessing['model_variant']}"] = blessing
    [report] = _artifacts(db, "privacy_audit.PrivacyReport")
    with open(os.path.join(report.uri, "summary.json")) as f:
        out["summary"] = json.load(f)
    with open(os.path.join(report.uri, "report.html"), encoding="utf-8") as f:
        out["html"] = f.read()
    return out


def test_correct_dp_run_stays_below_the_accountants_epsilon(run):
    audit, ledger = run["audit_dp_ok"], run["ledger_dp_ok"]
    assert audit["n_canaries"] == CANARIES and 60 < audit["n_included"] < 140
    assert audit["confidence"] == 0.95 and audit["delta"] <= ledger["delta"]
    assert audit["ledger_epsilon"] == ledger["epsilon"]
    assert audit["epsilon_lower_bound"] <= audit["accountant_epsilon"], audit["message"]
    assert not audit["violated"]
    blessing = run["blessing_dp_ok"]
    assert blessing["blessed"] is True and blessing["markers"] == ["BLESSED"]
    assert blessing["one_run_audit"]["violated"] is False
    props = run["run_dp_ok"].custom_properties
    assert props["one_run_audit_violated"].int_value == 0


def test_broken_dp_run_is_caught_and_not_blessed(run):
    audit = run["audit_dp_broken"]
    # The ledger claims the ε of σ = 8.5 (about 0.7), the audit proves far more leakage.
    assert run["ledger_dp_broken"]["noise_multiplier"] == SIGMA_BROKEN and run["ledger_dp_broken"]["epsilon"] < 1.0
    assert audit["violated"] is True
    assert audit["epsilon_lower_bound"] > audit["accountant_epsilon"] > 0
    blessing = run["blessing_dp_broken"]
    assert blessing["blessed"] is False and blessing["markers"] == ["NOT_BLESSED"]
    [failure] = [f for f in blessing["failures"] if f["attack"] == "one_run_audit"]
    assert failure["metric"] == "one_run_audit_epsilon_lower_bound"
    assert failure["value"] == pytest.approx(audit["epsilon_lower_bound"])
    assert failure["threshold"] == pytest.approx(audit["accountant_epsilon"])
    assert "the DP training is broken" in failure["reason"]
    assert any("the DP training is broken" in r for r in blessing["reasons"])
    assert run["run_dp_broken"].custom_properties["one_run_audit_violated"].int_value == 1


def test_report_puts_the_audit_bound_beside_the_accountants_epsilon(run):
    rows = {r["name"]: r for r in run["summary"]["variants"]}
    for name in ("dp_ok", "dp_broken"):
        assert rows[name]["one_run_audit_epsilon_lower_bound"] == pytest.approx(
            run[f"audit_{name}"]["epsilon_lower_bound"])
        assert rows[name]["one_run_audit"]["accountant_epsilon"] == pytest.approx(
            run[f"audit_{name}"]["accountant_epsilon"])
    assert rows["dp_ok"]["blessed"] is True and rows["dp_broken"]["blessed"] is False
    # Issue 12: the broken run is not DP-consistent (its audit proves more than its ε), and the page says so.
    assert rows["dp_broken"]["dp_consistent"] is False
    assert any("the DP training is broken" in r for r in rows["dp_broken"]["dp_consistency"]["reasons"])
    assert rows["dp_broken"]["one_run_audit"]["fdp_epsilon_lower_bound"] >= \
        rows["dp_broken"]["one_run_audit"]["epsilon_lower_bound"]
    assert "NOT DP-consistent" in run["html"]
    assert "One-run audit ε ≥" in run["html"] and "exceeds ε: DP broken" in run["html"]
    assert "the DP training is broken" in run["html"]
