"""ReferenceModelTrainer's Executor.Do on a tiny fixture (TFX's executor_test style, no pipeline): 60
members and 60 non-members of the digits, K = 2 non-private softmax regressions with a DPTrainer's recipe."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from executor_fixtures import (LABEL_KEY, channel, cross_entropy, digits_examples, example_sha1, output_artifact,
                               read_json, serialize)

K, SEED, N_MEMBERS, N_NONMEMBERS = 2, 7, 60, 60
RECIPE = dict(model_variant="baseline", private=False, epochs=4, batch_size=10, learning_rate=0.05, optimizer="sgd",
              checkpoint_every=0, builtin_model="softmax_regression", seed=2)


def _reference_properties():
    """The exec properties as ReferenceModelTrainer.for_trainer passes a DPTrainer's recipe to the executor."""
    from tfx.types import standard_artifacts

    from privacy_audit.components.dp_trainer.component import DPTrainer
    from privacy_audit.components.reference_models.component import ReferenceModelTrainer

    examples = channel(standard_artifacts.Examples)
    trainer = DPTrainer(examples=examples, label_key=LABEL_KEY, **RECIPE)
    return dict(ReferenceModelTrainer.for_trainer(trainer, examples, k=K, seed=SEED).exec_properties)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from privacy_audit.components.reference_models.component import ReferenceModels
    from privacy_audit.components.reference_models.executor import Executor

    tmp = tmp_path_factory.mktemp("reference_executor")
    examples, splits = digits_examples(str(tmp / "examples"), n_train=N_MEMBERS, n_eval=N_NONMEMBERS, seed=4)
    out = output_artifact(ReferenceModels, str(tmp / "reference_models"))
    Executor().Do({"examples": [examples]}, {"reference_models": [out]}, _reference_properties())
    return out, splits


def test_signals_hold_every_example_once_with_a_balanced_inclusion_design(run):
    out, splits = run
    with np.load(os.path.join(out.uri, "reference_signals.npz"), allow_pickle=False) as f:  # no pickle inside
        files = {k: f[k] for k in f.files}
    m = N_MEMBERS + N_NONMEMBERS
    assert files["signal_logits"].shape == (K, m, 10) and files["signal_logits"].dtype == np.float32
    assert files["in_mask"].shape == (K, m) and files["in_mask"].dtype == bool
    assert np.isfinite(files["signal_logits"]).all()
    # Members then non-members, each identified by the sha1 of its tf.Example, with its label and split.
    expected = {}
    for split in ("train", "eval"):
        x, y = splits[split]
        for record, label in zip(serialize(x, y), y):
            expected[example_sha1(record)] = (int(label), split)
    got = {str(s): (int(label), str(split)) for s, label, split in
           zip(files["example_sha1"], files["example_label"], files["example_split"])}
    assert got == expected and len(files["example_sha1"]) == m
    assert list(files["example_split"]) == ["train"] * N_MEMBERS + ["eval"] * N_NONMEMBERS
    # Each reference trains on as many examples as the target (the members' share: half), every example IN
    # for exactly K / 2 = 1 of the 2 models.
    assert (files["in_mask"].sum(axis=1) == N_MEMBERS).all()
    assert (files["in_mask"].sum(axis=0) == K // 2).all()


def test_each_reference_fits_its_own_training_subset_better(run):
    out, _ = run
    with np.load(os.path.join(out.uri, "reference_signals.npz"), allow_pickle=False) as f:
        logits, in_mask, labels = f["signal_logits"], f["in_mask"], f["example_label"]
    for k in range(K):
        loss = cross_entropy(logits[k], labels)
        assert loss[in_mask[k]].mean() < loss[~in_mask[k]].mean()


def test_recipe_and_design_are_recorded(run):
    out, _ = run
    info = read_json(os.path.join(out.uri, "reference_info.json"))
    recipe = info["recipe"]
    assert (recipe["epochs"], recipe["batch_size"], recipe["learning_rate"], recipe["private"]) == (4, 10, 0.05, False)
    assert info["init"] == "target" and info["target_n_examples"] == N_MEMBERS
    assert info["fraction"] == pytest.approx(N_MEMBERS / (N_MEMBERS + N_NONMEMBERS))
    with np.load(os.path.join(out.uri, "reference_signals.npz"), allow_pickle=False) as f:
        assert json.loads(str(f["metadata_json"])) == info
    assert out.get_int_custom_property("k") == K
    assert out.get_int_custom_property("n_examples") == N_MEMBERS + N_NONMEMBERS
    assert out.get_int_custom_property("seed") == SEED
    assert out.get_string_custom_property("model_variant") == "baseline"
    assert out.get_string_custom_property("init") == "target"
