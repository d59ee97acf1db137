"""A real TFX pipeline (LocalDagRunner, ML Metadata in SQLite): CsvExampleGen on digits → DPTrainer."""

import json
import os

import pytest

from privacy_audit.components.common.examples import write_digits_csv


def _run(tmp_path, **trainer_kwargs):
    from tfx.orchestration import metadata
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.v1 import dsl
    from tfx.v1.components import CsvExampleGen

    from privacy_audit.components.dp_trainer.component import DPTrainer

    data = tmp_path / "data"
    write_digits_csv(str(data), n=600, seed=1)
    gen = CsvExampleGen(input_base=str(data))
    trainer = DPTrainer(examples=gen.outputs["examples"], label_key="label", **trainer_kwargs)
    db = str(tmp_path / "mlmd.sqlite")
    p = dsl.Pipeline(pipeline_name="dp-trainer-test", pipeline_root=str(tmp_path / "root"),
                     components=[gen, trainer], enable_cache=True,
                     metadata_connection_config=metadata.sqlite_metadata_connection_config(db))
    LocalDagRunner().run(p)
    return db


def _artifacts(db, type_name):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = db
    return metadata_store.MetadataStore(cfg).get_artifacts_by_type(type_name)


@pytest.mark.slow
def test_pipeline_trains_dp_model_and_mlmd_holds_ledger_epsilon(tmp_path):
    db = _run(tmp_path, model_variant="dp", epochs=3, batch_size=50, noise_multiplier=1.0, l2_norm_clip=1.0,
              checkpoint_every=2, builtin_model="softmax_regression", seed=3)
    [model] = _artifacts(db, "Model")
    [run] = _artifacts(db, "ModelRun")
    with open(os.path.join(run.uri, "ledger.json")) as f:
        ledger = json.load(f)
    props = model.custom_properties
    # ε on the Model artifact is the ledger's, which is derived from the steps that really ran.
    # MLMD's SQLite store keeps ~6 significant digits of a double; the exact value is derived from the ledger's
    # events (the one function every reader uses), equal to the ledger's written ε.
    from privacy_audit.components.dp_trainer.accounting import epsilon_of_ledger

    assert props["epsilon"].double_value == pytest.approx(ledger["epsilon"], rel=1e-5)
    assert "epsilon_exact" not in props and epsilon_of_ledger(ledger) == ledger["epsilon"]
    assert props["steps"].int_value == ledger["steps"] == sum(e["steps"] for e in ledger["events"])
    assert props["noise_multiplier"].double_value == 1.0
    assert props["delta"].double_value == ledger["delta"]
    assert ledger["private"] and ledger["sampling"] == "poisson" and len(ledger["epochs"]) == 3
    # Only the train split was used: N is the train split's size, q = batch / N.
    assert ledger["sampling_probability"] == pytest.approx(50 / ledger["n_examples"])
    assert 350 < ledger["n_examples"] < 450  # 2/3 of 600 by hash
    # Independent recomputation of ε from the ledger's own numbers.
    from privacy_audit.components.dp_trainer.accounting import compute_epsilon

    assert ledger["epsilon"] == pytest.approx(compute_epsilon(
        n_examples=ledger["n_examples"], batch_size=50, noise_multiplier=1.0, delta=ledger["delta"],
        steps=ledger["steps"]))
    # Artifacts on disk: serving SavedModel, Keras model, checkpoints every 2 epochs and the last.
    assert os.path.exists(os.path.join(model.uri, "Format-Serving", "saved_model.pb"))
    assert os.path.exists(os.path.join(model.uri, "keras", "model.keras"))
    with open(os.path.join(model.uri, "checkpoints", "index.json")) as f:
        index = json.load(f)["checkpoints"]
    assert [c["epoch"] for c in index] == [2, 3]
    for c in index:
        assert os.path.exists(os.path.join(model.uri, "checkpoints", c["path"]))
    assert index[-1]["epsilon"] == pytest.approx(ledger["epsilon"])
    assert os.listdir(os.path.join(run.uri, "logs"))


@pytest.mark.slow
def test_missing_model_function_is_a_clear_error(tmp_path):
    mod = tmp_path / "my_model.py"
    mod.write_text("def something_else(h):\n    return None\n")
    with pytest.raises(Exception, match="build_keras_model"):
        _run(tmp_path, model_variant="dp", epochs=1, batch_size=50, noise_multiplier=1.0,
             module_file=str(mod))


@pytest.mark.slow
def test_missing_label_key_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="label key 'target'"):
        _run_with_label(tmp_path, "target")


def _run_with_label(tmp_path, label_key):
    from tfx.orchestration import metadata
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.v1 import dsl
    from tfx.v1.components import CsvExampleGen

    from privacy_audit.components.dp_trainer.component import DPTrainer

    data = tmp_path / "data"
    write_digits_csv(str(data), n=300, seed=1)
    gen = CsvExampleGen(input_base=str(data))
    trainer = DPTrainer(examples=gen.outputs["examples"], label_key=label_key, epochs=1, batch_size=20,
                        noise_multiplier=1.0)
    p = dsl.Pipeline(pipeline_name="dp-trainer-bad", pipeline_root=str(tmp_path / "root"),
                     components=[gen, trainer],
                     metadata_connection_config=metadata.sqlite_metadata_connection_config(
                         str(tmp_path / "m.sqlite")))
    LocalDagRunner().run(p)


@pytest.mark.parametrize("kwargs, match", [
    (dict(noise_multiplier=-1.0), "noise_multiplier"),
    (dict(noise_multiplier=1.0, l2_norm_clip=0.0), "l2_norm_clip"),
    (dict(target_epsilon=1.0, delta=1.5), "delta"),
    (dict(noise_multiplier=1.0, batch_size=0), "batch_size"),
    (dict(), "exactly one of noise_multiplier or target_epsilon"),
])
def test_bad_settings_fail_when_the_pipeline_is_built(kwargs, match):
    from tfx import types
    from tfx.types import standard_artifacts

    from privacy_audit.components.dp_trainer.component import DPTrainer

    ch = types.Channel(type=standard_artifacts.Examples)
    with pytest.raises(ValueError, match=match):
        DPTrainer(examples=ch, label_key="label", **kwargs)


@pytest.mark.slow
def test_examples_that_lost_rows_are_refused_before_training(tmp_path):
    """CsvExampleGen writes all 600 rows of the CSV; told the data had 601 (a row lost upstream, as Beam's
    multi-process DirectRunner did on 10M rows), the trainer refuses before training and names both counts."""
    with pytest.raises(Exception, match=r"hold 600 examples \(train: \d+, eval: \d+\) but the source data "
                                        r"has 601 rows: 1 rows were lost"):
        _run(tmp_path, model_variant="dp", epochs=1, batch_size=50, noise_multiplier=1.0, expected_examples=601)
    assert not [m for m in _artifacts(str(tmp_path / "mlmd.sqlite"), "Model") if m.state == 2]  # none LIVE
