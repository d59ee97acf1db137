"""A real TFX pipeline (LocalDagRunner, ML Metadata in SQLite): CsvExampleGen on digits → Importer of a
fixture Model (a small Keras model trained here on the members' split, saved in the CONTRACTS layout with
two checkpoints) and of a ModelRun ledger → MembershipInferenceEvaluator (twice: without a gate, and with
a gate below the measured AUC)."""

import glob
import json
import os

import numpy as np
import pytest

from privacy_audit.components.common.examples import write_digits_csv

VARIANT = "fixture"
EPOCHS = (12, 24)
LEDGER_EPS = {12: 1.25, 24: 2.5}


def _metadata_config(db):
    from tfx.orchestration import metadata

    return metadata.sqlite_metadata_connection_config(db)


def _artifacts(db, type_name):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = db
    return metadata_store.MetadataStore(cfg).get_artifacts_by_type(type_name)


def _fixture_model(model_dir, examples_uri):
    """Trains a small overfitting Keras model on the members' split and saves it as DPTrainer does."""
    import keras

    from privacy_audit.components.common import examples as examples_lib

    train = examples_lib.load_examples(os.path.join(examples_uri, "Split-train", "*"), "label")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((train.x.shape[1],)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    os.makedirs(os.path.join(model_dir, "checkpoints"))
    os.makedirs(os.path.join(model_dir, "keras"))
    index = []
    done = 0
    for epoch in EPOCHS:
        model.fit(train.x, train.y, epochs=epoch - done, batch_size=64, verbose=0)
        done = epoch
        name = f"epoch_{epoch:04d}.keras"
        model.save(os.path.join(model_dir, "checkpoints", name))
        index.append({"epoch": epoch, "path": name, "steps": epoch * 20, "epsilon": None})
    model.save(os.path.join(model_dir, "keras", "model.keras"))
    with open(os.path.join(model_dir, "checkpoints", "index.json"), "w") as f:
        json.dump({"checkpoints": index}, f)
    with open(os.path.join(model_dir, "model_info.json"), "w") as f:
        json.dump({"model_variant": VARIANT, "label_key": "label", "feature_keys": None,
                   "input_features": train.input_features, "private": False, "epochs": EPOCHS[-1],
                   "num_classes": 10}, f)
    return train


def _ledger(run_dir):
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "ledger.json"), "w") as f:
        json.dump({"schema_version": 1, "model_variant": VARIANT, "private": True, "delta": 1e-5,
                   "epochs": [{"epoch": e, "steps": e * 20, "epsilon": LEDGER_EPS.get(e)}
                              for e in range(1, EPOCHS[-1] + 1)],
                   "steps": EPOCHS[-1] * 20, "epsilon": LEDGER_EPS[EPOCHS[-1]]}, f)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.types import standard_artifacts
    from tfx.v1 import dsl
    from tfx.v1.components import CsvExampleGen

    from privacy_audit.components.membership_inference.component import MembershipInferenceEvaluator

    tmp = tmp_path_factory.mktemp("mia_component")
    data = tmp / "data"
    write_digits_csv(str(data), n=900, seed=0)
    db = str(tmp / "mlmd.sqlite")
    root = str(tmp / "root")

    def gen():
        return CsvExampleGen(input_base=str(data))

    # 1. ExampleGen alone, to train the fixture model on its members' (train) split.
    LocalDagRunner().run(dsl.Pipeline(pipeline_name="mia-test", pipeline_root=root, components=[gen()],
                                      enable_cache=True, metadata_connection_config=_metadata_config(db)))
    [examples] = _artifacts(db, "Examples")
    model_dir, run_dir = str(tmp / "fixture_model"), str(tmp / "fixture_run")
    _fixture_model(model_dir, examples.uri)
    _ledger(run_dir)

    # 2. The audit: ExampleGen (cached) → importers → evaluators.
    g = gen()
    model = dsl.Importer(source_uri=model_dir, artifact_type=standard_artifacts.Model,
                         custom_properties={"model_variant": VARIANT}).with_id("ModelImporter")
    run = dsl.Importer(source_uri=run_dir, artifact_type=standard_artifacts.ModelRun).with_id("RunImporter")
    common = dict(examples=g.outputs["examples"], model=model.outputs["result"], label_key="label",
                  slicing={"entire_dataset": True, "by_class": True}, seed=1, min_slice_size=20)
    open_gate = MembershipInferenceEvaluator(model_run=run.outputs["result"],
                                             attacks=["threshold", "logistic_regression"],
                                             **common).with_id("Evaluator")
    strict = MembershipInferenceEvaluator(attacks=["threshold"], max_auc=0.5, write_per_example=False,
                                          **common).with_id("StrictEvaluator")
    LocalDagRunner().run(dsl.Pipeline(
        pipeline_name="mia-test", pipeline_root=root, components=[g, model, run, open_gate, strict],
        enable_cache=True, metadata_connection_config=_metadata_config(db),
        beam_pipeline_args=["--direct_running_mode=in_memory"]))
    return {"db": db, "root": root}


def _output_dir(root, component_id, output):
    [d] = glob.glob(os.path.join(root, component_id, output, "*"))
    return d


@pytest.mark.slow
def test_results_per_checkpoint_with_ledger_epsilon(pipeline_run):
    from privacy_audit.components.membership_inference.results import read_results

    uri = _output_dir(pipeline_run["root"], "Evaluator", "attack_results")
    with open(os.path.join(uri, "index.json")) as f:
        index = json.load(f)
    expected = [f"results/{VARIANT}_epoch_{e:04d}.json" for e in EPOCHS] + [f"results/{VARIANT}_final.json"]
    assert index["results"] == expected
    loaded = [read_results(os.path.join(uri, p)) for p in expected]
    for obj, epoch in zip(loaded, list(EPOCHS) + [EPOCHS[-1]]):
        md = obj["metadata"]
        assert md["model_variant"] == VARIANT and md["epoch"] == epoch
        assert md["epsilon"] == LEDGER_EPS[epoch]
        for key in ("accuracy_train", "accuracy_test", "loss_train", "loss_test"):
            assert md[key] is not None
        assert md["accuracy_train"] > md["accuracy_test"] and md["loss_train"] < md["loss_test"]
        slices = {json.dumps(r["slice"], sort_keys=True) for r in obj["results"]}
        assert json.dumps({"feature": "entire_dataset"}) in slices
        assert {r["attack"] for r in obj["results"]} == {"threshold", "logistic_regression"}
        assert len(obj["results"]) + 0 == 2 * len(slices)
    assert [o["metadata"]["is_final"] for o in loaded] == [False, False, True]
    # The final model is the last checkpoint: identical threshold results.
    assert loaded[1]["results"][0]["auc"] == loaded[2]["results"][0]["auc"]
    entire = loaded[2]["results"][0]
    assert entire["slice"] == {"feature": "entire_dataset"} and entire["auc"] > 0.5
    assert entire["n_members"] + entire["n_nonmembers"] == 900
    # Per-example scores for the report.
    import pyarrow.parquet as pq

    table = pq.read_table(os.path.join(uri, "per_example", f"{VARIANT}_final"))
    assert table.num_rows == 900
    assert {"example_id", "is_member", "label", "loss", "score_threshold", "correct"} <= set(table.column_names)
    assert np.allclose(-table.column("loss").to_numpy(), table.column("score_threshold").to_numpy())


@pytest.mark.slow
def test_blessing_without_gate_is_blessed(pipeline_run):
    uri = _output_dir(pipeline_run["root"], "Evaluator", "blessing")
    with open(os.path.join(uri, "blessing.json")) as f:
        blessing = json.load(f)
    assert blessing["blessed"] is True and blessing["failures"] == [] and blessing["thresholds"] == {}
    assert os.path.exists(os.path.join(uri, "BLESSED")) and not os.path.exists(os.path.join(uri, "NOT_BLESSED"))
    props = {a.uri: a.custom_properties for a in _artifacts(pipeline_run["db"], "ModelBlessing")}
    assert props[uri]["blessed"].int_value == 1


@pytest.mark.slow
def test_gate_below_measured_auc_is_not_blessed_and_names_slices(pipeline_run):
    from privacy_audit.components.membership_inference.results import read_results

    uri = _output_dir(pipeline_run["root"], "StrictEvaluator", "blessing")
    with open(os.path.join(uri, "blessing.json")) as f:
        blessing = json.load(f)
    results_uri = _output_dir(pipeline_run["root"], "StrictEvaluator", "attack_results")
    final = read_results(os.path.join(results_uri, "results", f"{VARIANT}_final.json"))
    above = {r["slice"].get("value", "entire_dataset") for r in final["results"] if r["auc"] > 0.5}
    assert above, "the fixture model should leak on some slice"
    assert blessing["blessed"] is False and blessing["thresholds"] == {"auc": 0.5}
    assert "entire_dataset" in blessing["failing_slices"]
    assert {f["slice"].get("value", "entire_dataset") for f in blessing["failures"]} == above
    for f in blessing["failures"]:
        assert f["metric"] == "auc" and f["value"] > 0.5 and f["threshold"] == 0.5
    assert os.path.exists(os.path.join(uri, "NOT_BLESSED")) and not os.path.exists(os.path.join(uri, "BLESSED"))
    props = {a.uri: a.custom_properties for a in _artifacts(pipeline_run["db"], "ModelBlessing")}
    assert props[uri]["blessed"].int_value == 0
    # Without a ModelRun, ε of the final model comes from the Model (none here) and per-example output is off.
    assert final["metadata"]["epsilon"] is None
    assert not os.path.exists(os.path.join(results_uri, "per_example"))


def test_component_rejects_bad_parameters():
    from tfx import types
    from tfx.types import standard_artifacts

    from privacy_audit.components.membership_inference.component import MembershipInferenceEvaluator

    ex = types.Channel(type=standard_artifacts.Examples)
    model = types.Channel(type=standard_artifacts.Model)
    with pytest.raises(ValueError, match="unknown attack"):
        MembershipInferenceEvaluator(examples=ex, model=model, label_key="label", attacks=["nope"])
    with pytest.raises(ValueError, match="unknown key"):
        MembershipInferenceEvaluator(examples=ex, model=model, label_key="label", slicing={"by_klass": True})
    with pytest.raises(ValueError, match="max_auc"):
        MembershipInferenceEvaluator(examples=ex, model=model, label_key="label", max_auc=-1.0)
    c = MembershipInferenceEvaluator(examples=ex, model=model, label_key="label",
                                     slicing={"feature_keys": ["pixel_00"]}, max_attacker_advantage=0.2)
    assert json.loads(c.exec_properties["slicing"])["feature_keys"] == ["pixel_00"]
    assert c.exec_properties["max_attacker_advantage"] == 0.2
    assert set(c.outputs) == {"attack_results", "blessing"}
