"""MembershipInferenceEvaluator's Executor.Do on a tiny fixture (TFX's executor_test style, no pipeline):
100 members and 100 non-members of the digits, a small Keras MLP trained here on the members with two
checkpoints, a ledger with ε per epoch. The attack AUC is recomputed with scikit-learn from losses computed
in numpy from the model's weights."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from executor_fixtures import (DIGITS_FEATURES, LABEL_KEY, channel, cross_entropy, dense_weights, digits_examples,
                               dp_accounting_epsilon, input_artifact, numpy_logits, output_artifact, read_json,
                               write_keras_model_artifact)

VARIANT = "fixture"
CHECKPOINTS = (4, 8)
# The ledger of a DP-SGD run of 5 steps per epoch at q = 0.2, σ = 1.5 (the fixture model itself is trained
# without noise: only the evaluator's reading of the ledger is under test).
Q, SIGMA, STEPS_PER_EPOCH, DELTA = 0.2, 1.5, 5, 1e-3


def _epsilon(epoch: int) -> float:
    return dp_accounting_epsilon(Q, SIGMA, STEPS_PER_EPOCH * epoch, DELTA)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    """Examples, a Model artifact in the DPTrainer's layout (checkpoints at epochs 4 and 8, the final model
    = epoch 8), a ModelRun with a ledger, and each evaluated model's Dense weights."""
    import keras

    tmp = tmp_path_factory.mktemp("mia_executor")
    examples, splits = digits_examples(str(tmp / "examples"), n_train=100, n_eval=100, seed=1)
    x, y = splits["train"]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    weights, done, checkpoints = {}, 0, {}
    for epoch in CHECKPOINTS:
        model.fit(x, y, epochs=epoch - done, batch_size=20, verbose=0)
        done = epoch
        weights[epoch] = dense_weights(model)
        checkpoints[epoch] = keras.models.clone_model(model)
        checkpoints[epoch].set_weights(model.get_weights())
    model_dir = str(tmp / "model")
    write_keras_model_artifact(model_dir, model, checkpoints, model_variant=VARIANT,
                               input_features=DIGITS_FEATURES, num_classes=10)
    run_dir = tmp / "model_run"
    run_dir.mkdir()
    epochs, steps = CHECKPOINTS[-1], CHECKPOINTS[-1] * STEPS_PER_EPOCH
    (run_dir / "ledger.json").write_text(json.dumps({
        "schema_version": 1, "model_variant": VARIANT, "private": True, "sampling": "poisson",
        "n_examples": 100, "expected_batch_size": 20, "sampling_probability": Q, "noise_multiplier": SIGMA,
        "l2_norm_clip": 1.0, "delta": DELTA, "accountant": "rdp",
        "events": [{"type": "poisson_sampled_gaussian", "sampling_probability": Q, "noise_multiplier": SIGMA,
                    "steps": steps}],
        "epochs": [{"epoch": e, "steps": e * STEPS_PER_EPOCH, "epsilon": _epsilon(e)} for e in range(1, epochs + 1)],
        "steps": steps, "epsilon": _epsilon(epochs)}))
    return {"tmp": tmp, "examples": examples, "splits": splits, "model_dir": model_dir, "run_dir": str(run_dir),
            "weights": weights}


def _evaluator_properties(**kwargs):
    """The exec properties as the MembershipInferenceEvaluator component passes them to its executor."""
    from tfx.types import standard_artifacts

    from privacy_audit.components.membership_inference.component import MembershipInferenceEvaluator

    return dict(MembershipInferenceEvaluator(
        examples=channel(standard_artifacts.Examples), model=channel(standard_artifacts.Model),
        model_run=channel(standard_artifacts.ModelRun), label_key=LABEL_KEY, **kwargs).exec_properties)


def _do(fixture, name, *, with_ledger=True, **kwargs):
    from tfx.dsl.components.base import base_beam_executor
    from tfx.types import standard_artifacts

    from privacy_audit.components.membership_inference.component import MembershipInferenceResults
    from privacy_audit.components.membership_inference.executor import Executor

    model = input_artifact(standard_artifacts.Model, fixture["model_dir"], model_variant=VARIANT)
    inputs = {"examples": [fixture["examples"]], "model": [model]}
    if with_ledger:
        inputs["model_run"] = [input_artifact(standard_artifacts.ModelRun, fixture["run_dir"])]
    results = output_artifact(MembershipInferenceResults, str(fixture["tmp"] / name / "attack_results"))
    blessing = output_artifact(standard_artifacts.ModelBlessing, str(fixture["tmp"] / name / "blessing"))
    context = base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"])
    Executor(context).Do(inputs, {"attack_results": [results], "blessing": [blessing]},
                         _evaluator_properties(seed=1, min_slice_size=20, **kwargs))
    return results, blessing


def _sklearn_threshold_auc(weights, splits) -> float:
    """AUC of the loss-threshold attack: scikit-learn's on minus the per-example loss, members positive."""
    from sklearn.metrics import roc_auc_score

    losses = [cross_entropy(numpy_logits(weights, splits[s][0]), splits[s][1]) for s in ("train", "eval")]
    is_member = np.concatenate([np.ones(len(losses[0])), np.zeros(len(losses[1]))])
    return float(roc_auc_score(is_member, -np.concatenate(losses)))


def test_results_per_checkpoint_match_sklearn_and_the_ledger_and_an_open_gate_blesses(fixture):
    from privacy_audit.components.membership_inference.results import read_results, validate_results

    results, blessing = _do(fixture, "open", attacks=["threshold"], slicing={"entire_dataset": True, "by_class": True})
    index = read_json(os.path.join(results.uri, "index.json"))
    expected = [f"results/{VARIANT}_epoch_{e:04d}.json" for e in CHECKPOINTS] + [f"results/{VARIANT}_final.json"]
    assert index["results"] == expected and index["model_variant"] == VARIANT
    for path, epoch in zip(expected, list(CHECKPOINTS) + [CHECKPOINTS[-1]]):
        obj = read_results(os.path.join(results.uri, path))
        validate_results(obj)
        md = obj["metadata"]
        assert md["model_variant"] == VARIANT and md["epoch"] == epoch
        assert md["epsilon"] == pytest.approx(_epsilon(epoch), rel=1e-9)  # the ledger's ε after that epoch
        assert md["delta"] == DELTA
        [entire] = [r for r in obj["results"] if r["slice"] == {"feature": "entire_dataset"}]
        assert entire["attack"] == "threshold" and (entire["n_members"], entire["n_nonmembers"]) == (100, 100)
        assert entire["auc"] == pytest.approx(_sklearn_threshold_auc(fixture["weights"][epoch], fixture["splits"]),
                                              abs=1e-12)
        assert entire["auc"] > 0.5  # the fixture model overfits its 100 members
        # by_class: the slices with at least min_slice_size members and non-members, and no other.
        classes = {r["slice"]["value"] for r in obj["results"] if r["slice"].get("feature") == "class"}
        y_m, y_n = fixture["splits"]["train"][1], fixture["splits"]["eval"][1]
        assert classes == {c for c in range(10) if (y_m == c).sum() >= 20 and (y_n == c).sum() >= 20}
    assert read_results(os.path.join(results.uri, expected[-1]))["metadata"]["is_final"] is True
    # Per-example records of the final model: minus the loss is the threshold score.
    import pyarrow.parquet as pq

    table = pq.read_table(os.path.join(results.uri, "per_example", f"{VARIANT}_final"))
    assert table.num_rows == 200
    np.testing.assert_allclose(-table.column("loss").to_numpy(), table.column("score_threshold").to_numpy())
    # Without thresholds the model is blessed: BLESSED file, blessed=1, blessing.json says why.
    doc = read_json(os.path.join(blessing.uri, "blessing.json"))
    assert doc["blessed"] is True and doc["failures"] == [] and doc["thresholds"] == {}
    assert os.path.exists(os.path.join(blessing.uri, "BLESSED"))
    assert not os.path.exists(os.path.join(blessing.uri, "NOT_BLESSED"))
    assert blessing.get_int_custom_property("blessed") == 1
    assert blessing.get_string_custom_property("current_model") == fixture["model_dir"]
    assert results.get_int_custom_property("n_results_files") == 3
    final = read_results(os.path.join(results.uri, expected[-1]))
    assert results.get_float_custom_property("max_auc") == pytest.approx(max(r["auc"] for r in final["results"]))


def test_the_gate_fails_on_the_exceeded_threshold_only(fixture):
    """max_auc above the measured AUC passes; max_attacker_advantage below the measured advantage fails:
    NOT_BLESSED, naming that metric and slice only."""
    from sklearn.metrics import roc_curve

    from privacy_audit.components.membership_inference.results import read_results

    results, blessing = _do(fixture, "gate", with_ledger=False, attacks=["threshold"], slicing={"entire_dataset": True},
                            max_auc=0.99, max_attacker_advantage=0.05, write_per_example=False)
    final = read_results(os.path.join(results.uri, "results", f"{VARIANT}_final.json"))
    [entire] = final["results"]
    weights, splits = fixture["weights"][CHECKPOINTS[-1]], fixture["splits"]
    assert entire["auc"] == pytest.approx(_sklearn_threshold_auc(weights, splits), abs=1e-12)
    # The attacker advantage, max |TPR - FPR| over the thresholds of scikit-learn's ROC of minus the loss.
    losses = [cross_entropy(numpy_logits(weights, splits[s][0]), splits[s][1]) for s in ("train", "eval")]
    fpr, tpr, _ = roc_curve(np.r_[np.ones(100), np.zeros(100)], -np.concatenate(losses), drop_intermediate=False)
    assert entire["attacker_advantage"] == pytest.approx(float(np.max(np.abs(tpr - fpr))), abs=1e-12)
    assert entire["auc"] <= 0.99 and entire["attacker_advantage"] > 0.05
    doc = read_json(os.path.join(blessing.uri, "blessing.json"))
    assert doc["blessed"] is False and doc["thresholds"] == {"auc": 0.99, "attacker_advantage": 0.05}
    assert doc["failing_slices"] == ["entire_dataset"]
    [failure] = doc["failures"]
    assert (failure["metric"], failure["threshold"]) == ("attacker_advantage", 0.05)
    assert failure["value"] == pytest.approx(entire["attacker_advantage"])
    assert os.path.exists(os.path.join(blessing.uri, "NOT_BLESSED"))
    assert not os.path.exists(os.path.join(blessing.uri, "BLESSED"))
    assert blessing.get_int_custom_property("blessed") == 0
    # Without a ModelRun the final ε comes from the Model (none here); per-example output is off.
    assert final["metadata"]["epsilon"] is None
    assert not os.path.exists(os.path.join(results.uri, "per_example"))
