"""DPTrainer's Executor.Do on a tiny fixture (TFX's executor_test style, no pipeline): 100 members and 100
non-members of the digits, a softmax regression trained for 2 epochs with DP-SGD."""

from __future__ import annotations

import json
import os

import pytest

from executor_fixtures import (LABEL_KEY, channel, digits_examples, dp_accounting_epsilon, output_artifact,
                               read_json)

N_MEMBERS, BATCH, EPOCHS, SIGMA, CLIP, DELTA = 100, 20, 2, 1.0, 1.0, 1e-3


def _trainer_properties(label_key=LABEL_KEY, **kwargs):
    """The exec properties as the DPTrainer component passes them to its executor."""
    from tfx.types import standard_artifacts

    from privacy_audit.components.dp_trainer.component import DPTrainer

    return dict(DPTrainer(examples=channel(standard_artifacts.Examples), label_key=label_key, **kwargs).exec_properties)


def _do(tmp_path, **kwargs):
    from tfx.types import standard_artifacts

    from privacy_audit.components.dp_trainer.executor import Executor

    examples, splits = digits_examples(str(tmp_path / "examples"), n_train=N_MEMBERS, n_eval=100, seed=0)
    model = output_artifact(standard_artifacts.Model, str(tmp_path / "model"))
    model_run = output_artifact(standard_artifacts.ModelRun, str(tmp_path / "model_run"))
    Executor().Do({"examples": [examples]}, {"model": [model], "model_run": [model_run]},
                  _trainer_properties(**kwargs))
    return model, model_run, splits


def test_dp_training_writes_model_checkpoints_and_a_ledger_whose_epsilon_is_dp_accountings(tmp_path):
    model, model_run, splits = _do(tmp_path, model_variant="dp", epochs=EPOCHS, batch_size=BATCH,
                                   learning_rate=0.05, optimizer="sgd", noise_multiplier=SIGMA, l2_norm_clip=CLIP,
                                   delta=DELTA, checkpoint_every=1, builtin_model="softmax_regression", seed=3)
    ledger = read_json(os.path.join(model_run.uri, "ledger.json"))
    # Poisson sampling at q = B / N over the members only, N / B steps per epoch.
    steps = EPOCHS * (N_MEMBERS // BATCH)
    q = BATCH / N_MEMBERS
    assert ledger["n_examples"] == N_MEMBERS and ledger["sampling_probability"] == pytest.approx(q)
    assert ledger["private"] is True and ledger["sampling"] == "poisson" and ledger["poisson_guarantee_holds"]
    assert ledger["steps"] == steps == sum(e["steps"] for e in ledger["events"])
    assert (ledger["noise_multiplier"], ledger["l2_norm_clip"], ledger["delta"]) == (SIGMA, CLIP, DELTA)
    assert ledger["epsilon"] == pytest.approx(dp_accounting_epsilon(q, SIGMA, steps, DELTA), rel=1e-9)
    assert [e["epoch"] for e in ledger["epochs"]] == [1, 2]
    for record in ledger["epochs"]:
        assert record["steps"] == record["epoch"] * steps // EPOCHS
        assert record["epsilon"] == pytest.approx(dp_accounting_epsilon(q, SIGMA, record["steps"], DELTA), rel=1e-9)
    # The Model artifact: serving SavedModel, Keras model, a checkpoint per epoch, model_info.json.
    assert os.path.exists(os.path.join(model.uri, "Format-Serving", "saved_model.pb"))
    assert os.path.exists(os.path.join(model.uri, "keras", "model.keras"))
    index = read_json(os.path.join(model.uri, "checkpoints", "index.json"))["checkpoints"]
    assert [c["epoch"] for c in index] == [1, 2]
    assert [c["steps"] for c in index] == [r["steps"] for r in ledger["epochs"]]
    for c, record in zip(index, ledger["epochs"]):
        assert os.path.exists(os.path.join(model.uri, "checkpoints", c["path"]))
        assert c["epsilon"] == pytest.approx(record["epsilon"])
    info = read_json(os.path.join(model.uri, "model_info.json"))
    assert info["model_variant"] == "dp" and info["private"] is True and info["num_classes"] == 10
    assert info["input_features"] == [f"pixel_{i:02d}" for i in range(64)]
    # The final model predicts the members' inputs with the Keras model saved beside it.
    import keras

    final = keras.saving.load_model(os.path.join(model.uri, "keras", "model.keras"), compile=False)
    assert final(splits["train"][0][:5]).shape == (5, 10)
    # The ModelRun: training log per epoch, TensorBoard logs.
    with open(os.path.join(model_run.uri, "training_log.jsonl")) as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2]
    assert os.listdir(os.path.join(model_run.uri, "logs"))
    # ML Metadata custom properties: ε, δ, σ, steps, from the ledger.
    assert model.get_float_custom_property("epsilon") == pytest.approx(ledger["epsilon"])
    assert model.get_int_custom_property("steps") == steps
    assert model.get_int_custom_property("n_examples") == N_MEMBERS
    assert model.get_float_custom_property("noise_multiplier") == SIGMA
    assert model.get_float_custom_property("delta") == DELTA
    assert model.get_int_custom_property("private") == 1
    assert model.get_string_custom_property("model_variant") == "dp"
    assert model_run.get_string_custom_property("model_variant") == "dp"


def test_target_epsilon_sets_the_smallest_noise_that_reaches_it(tmp_path):
    _, model_run, _ = _do(tmp_path, model_variant="dp", epochs=1, batch_size=BATCH, target_epsilon=2.0, delta=DELTA,
                          checkpoint_every=0, builtin_model="softmax_regression")
    ledger = read_json(os.path.join(model_run.uri, "ledger.json"))
    q, steps, sigma = BATCH / N_MEMBERS, N_MEMBERS // BATCH, ledger["noise_multiplier"]
    assert ledger["target_epsilon"] == 2.0 and ledger["steps"] == steps
    # dp-accounting's ε of the steps that ran, at the σ the trainer chose: at most the target, and a little
    # less noise would exceed it.
    assert ledger["epsilon"] == pytest.approx(dp_accounting_epsilon(q, sigma, steps, DELTA), rel=1e-9)
    assert ledger["epsilon"] <= 2.0 + 1e-9
    assert dp_accounting_epsilon(q, sigma - 1e-3, steps, DELTA) > 2.0


def test_non_private_baseline_records_no_epsilon_and_no_noise(tmp_path):
    model, model_run, _ = _do(tmp_path, model_variant="baseline", private=False, epochs=1, batch_size=BATCH,
                              checkpoint_every=0, builtin_model="softmax_regression", seed=0)
    ledger = read_json(os.path.join(model_run.uri, "ledger.json"))
    assert ledger["private"] is False and ledger["epsilon"] is None and ledger["events"] == []
    assert ledger["noise_multiplier"] is None and ledger["delta"] is None
    assert ledger["steps"] == N_MEMBERS // BATCH
    assert model.get_int_custom_property("private") == 0
    assert not model.has_custom_property("epsilon") and not model.has_custom_property("noise_multiplier")
    assert not os.path.exists(os.path.join(model.uri, "checkpoints", "index.json"))  # checkpoint_every=0
    assert os.path.exists(os.path.join(model.uri, "keras", "model.keras"))


def test_missing_label_key_is_named(tmp_path):
    from tfx.types import standard_artifacts

    from privacy_audit.components.dp_trainer.executor import Executor

    examples, _ = digits_examples(str(tmp_path / "examples"), n_train=40, n_eval=40)
    props = _trainer_properties(label_key="target", epochs=1, batch_size=10, noise_multiplier=1.0)
    outputs = {"model": [output_artifact(standard_artifacts.Model, str(tmp_path / "model"))],
               "model_run": [output_artifact(standard_artifacts.ModelRun, str(tmp_path / "model_run"))]}
    with pytest.raises(ValueError, match="label key 'target'"):
        Executor().Do({"examples": [examples]}, outputs, props)
