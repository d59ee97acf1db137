"""A real TFX pipeline (LocalDagRunner, ML Metadata in SQLite): CsvExampleGen on a small digits CSV →
DPTrainer (non-private, few epochs) → ReferenceModelTrainer (K = 4) → MembershipInferenceEvaluator with
lira / lira_offline / rmia / rmia_offline beside the threshold attack. The results' reference-attack
entries are checked against an independent recomputation from the saved signal matrix
(attacks.reference + scikit-learn), and a second run reuses the references through TFX's cache."""

import glob
import hashlib
import json
import os

import numpy as np
import pytest

from privacy_audit.components.common.examples import write_digits_csv

K = 4
REF_SEED = 5
ATTACKS = ["threshold", "lira", "lira_offline", "rmia", "rmia_offline"]


def _artifacts(db, type_name):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = db
    return metadata_store.MetadataStore(cfg).get_artifacts_by_type(type_name)


def _pipeline(tmp, data, db):
    from tfx.orchestration import metadata
    from tfx.v1 import dsl
    from tfx.v1.components import CsvExampleGen

    from privacy_audit.components.dp_trainer.component import DPTrainer
    from privacy_audit.components.membership_inference.component import MembershipInferenceEvaluator
    from privacy_audit.components.reference_models.component import ReferenceModelTrainer

    gen = CsvExampleGen(input_base=str(data))
    examples = gen.outputs["examples"]
    trainer = DPTrainer(examples=examples, label_key="label", model_variant="baseline", private=False, epochs=6,
                        batch_size=32, learning_rate=3e-3, checkpoint_every=3, builtin_model="mlp", seed=2)
    refs = ReferenceModelTrainer.for_trainer(trainer, examples, k=K, seed=REF_SEED)
    evaluator = MembershipInferenceEvaluator(
        examples=examples, model=trainer.outputs["model"], model_run=trainer.outputs["model_run"],
        reference_models=refs.outputs["reference_models"], label_key="label", attacks=ATTACKS,
        slicing={"entire_dataset": True, "by_class": True}, min_slice_size=10, seed=0)
    return dsl.Pipeline(pipeline_name="reference-test", pipeline_root=str(tmp / "root"),
                        components=[gen, trainer, refs, evaluator], enable_cache=True,
                        metadata_connection_config=metadata.sqlite_metadata_connection_config(db),
                        beam_pipeline_args=["--direct_running_mode=in_memory"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    tmp = tmp_path_factory.mktemp("reference_component")
    data = tmp / "data"
    write_digits_csv(str(data), n=500, seed=0)
    db = str(tmp / "mlmd.sqlite")
    LocalDagRunner().run(_pipeline(tmp, data, db))
    [examples] = _artifacts(db, "Examples")
    [refs] = _artifacts(db, "privacy_audit.ReferenceModels")
    [model] = _artifacts(db, "Model")
    [results] = _artifacts(db, "privacy_audit.MembershipInferenceResults")
    return {"tmp": tmp, "data": data, "db": db, "examples": examples.uri, "refs": refs, "model": model.uri,
            "results": results.uri}


def _population(examples_uri):
    """Members (train split) then non-members (eval split): inputs, labels, sha1 of each serialized example."""
    from privacy_audit.components.common import examples as examples_lib

    out = []
    for split in ("train", "eval"):
        pattern = os.path.join(examples_uri, f"Split-{split}", "*")
        data = examples_lib.load_examples(pattern, "label")
        sha1 = sorted(examples_lib.example_digest(s).hex() for s in examples_lib.read_serialized(pattern))
        assert sha1 == data.example_hashes  # the canonical order
        out.append(data)
    return out


@pytest.mark.slow
def test_reference_artifact_records_the_design_per_example_id(run):
    from privacy_audit.components import reference_models as rm

    refs = run["refs"]
    assert refs.custom_properties["k"].int_value == K
    path = os.path.join(refs.uri, "reference_signals.npz")
    with np.load(path, allow_pickle=False) as f:  # no pickle inside
        assert {"signal_logits", "in_mask", "metadata_json", "example_sha1", "example_id", "example_label",
                "example_split"} <= set(f.files)
    signals = rm.load_reference_file(path)
    members, nonmembers = _population(run["examples"])
    m = len(members.y) + len(nonmembers.y)
    assert signals.logits.shape == (K, m, 10) and signals.in_mask.shape == (K, m)
    # Members then non-members, identified by the sha1 of the serialized tf.Example.
    assert list(signals.examples["sha1"]) == members.example_hashes + nonmembers.example_hashes
    assert list(signals.examples["split"]) == ["train"] * len(members.y) + ["eval"] * len(nonmembers.y)
    np.testing.assert_array_equal(signals.examples["label"], np.concatenate([members.y, nonmembers.y]))
    np.testing.assert_array_equal(signals.examples["id"], rm.sha1_to_id(signals.examples["sha1"]))
    # Balanced seeded design: each reference trains on as many examples as the target (its share of the
    # population, 2/3 with CsvExampleGen's default split), every example IN for 2 or 3 of the 4 models.
    fraction = len(members.y) / m
    assert signals.metadata["fraction"] == pytest.approx(fraction)
    np.testing.assert_array_equal(signals.in_mask, rm.inclusion_matrix(K, m, seed=REF_SEED, fraction=fraction))
    assert set(np.unique(signals.in_mask.sum(axis=0))) <= {2, 3}
    assert np.all(np.abs(signals.in_mask.sum(axis=1) - len(members.y)) < 40)
    # The target's recipe, copied from the DPTrainer.
    recipe = signals.metadata["recipe"]
    assert (recipe["epochs"], recipe["batch_size"], recipe["learning_rate"], recipe["private"]) == (6, 32, 3e-3, False)
    assert recipe["backend"] == "dp_trainer" and signals.metadata["init"] == "target"
    assert signals.metadata["target_n_examples"] == len(members.y)


def _target_logits(model_uri, x):
    import keras

    model = keras.saving.load_model(os.path.join(model_uri, "keras", "model.keras"), compile=False)
    # The evaluator computes logits in zero-padded batches of exactly 256 rows (float32 results depend on the
    # batch shape); do the same here, by hand.
    pad = (-len(x)) % 256
    xp = np.concatenate([x, np.zeros((pad,) + x.shape[1:], dtype=x.dtype)])
    return np.concatenate([np.asarray(model.predict_on_batch(xp[i:i + 256]))
                           for i in range(0, len(xp), 256)])[:len(x)]


@pytest.mark.slow
def test_reference_attack_entries_equal_an_independent_recomputation(run):
    from sklearn.metrics import roc_auc_score, roc_curve

    from privacy_audit.components.membership_inference import attacks as sa
    from privacy_audit.components.membership_inference.results import read_results

    with open(os.path.join(run["results"], "index.json")) as f:
        index = json.load(f)
    final = read_results(os.path.join(run["results"], index["results"][-1]))
    assert final["metadata"]["is_final"]
    # The saved signal matrix, read with numpy only.
    with np.load(os.path.join(run["refs"].uri, "reference_signals.npz"), allow_pickle=False) as f:
        ref_logits, in_mask, sha1 = f["signal_logits"], f["in_mask"], list(f["example_sha1"])
    members, nonmembers = _population(run["examples"])
    assert sha1 == members.example_hashes + nonmembers.example_hashes
    x = np.concatenate([members.x, nonmembers.x])
    y = np.concatenate([members.y, nonmembers.y])
    is_member = np.arange(len(y)) < len(members.y)
    target = _target_logits(run["model"], x)
    scores = {
        "lira": sa.score_with_references(target, y, ref_logits, in_mask, "lira", online=True, fixed_variance=True),
        "lira_offline": sa.score_with_references(target, y, ref_logits, in_mask, "lira", online=False,
                                                 fixed_variance=True),
        "rmia": sa.score_with_references(target, y, ref_logits, in_mask, "rmia", online=True),
        "rmia_offline": sa.score_with_references(target, y, ref_logits, in_mask, "rmia", online=False),
    }
    entries = {(json.dumps(r["slice"], sort_keys=True), r["attack"]): r for r in final["results"]}
    slices = {json.dumps(r["slice"], sort_keys=True) for r in final["results"]}
    assert len(slices) >= 5  # the entire data set and classes with >= 10 members and non-members
    for key in slices:
        spec = json.loads(key)
        sel = np.ones(len(y), bool) if spec["feature"] == "entire_dataset" else y == spec["value"]
        for attack, s in scores.items():
            r = entries[(key, attack)]  # same slicing as the other attacks
            assert r["n_members"] == int((sel & is_member).sum()) and r["n_nonmembers"] == int((sel & ~is_member).sum())
            assert r["auc"] == pytest.approx(roc_auc_score(is_member[sel], s[sel]), abs=1e-12), (key, attack)
            fpr, tpr, _ = roc_curve(is_member[sel], s[sel])
            assert r["attacker_advantage"] == pytest.approx(np.max(np.abs(tpr - fpr)), abs=1e-12)
            assert set(r["tpr_at_fpr"]) >= {"0.01", "0.001"}
        assert entries[(key, "threshold")]["attack"] == "threshold"
    md = final["metadata"]
    assert md["attacks"] == ATTACKS
    refs_md = md["reference_models"]
    assert refs_md["k"] == K and refs_md["recipe_mismatches"] == []
    assert refs_md["attacks"]["lira"]["fixed_variance"] is True  # K < 64: global variance
    # The references model the full training run: checkpoints get only the other attacks.
    [checkpoint] = [p for p in index["results"] if "epoch_0003" in p]
    assert {r["attack"] for r in read_results(os.path.join(run["results"], checkpoint))["results"]} == {"threshold"}
    # Per-example scores of the reference attacks, keyed by the evaluator's example ids.
    import pyarrow.parquet as pq

    [per_example] = glob.glob(os.path.join(run["results"], "per_example_reference", "*.parquet"))
    table = pq.read_table(per_example)
    np.testing.assert_allclose(table.column("score_lira").to_numpy(), scores["lira"], rtol=1e-12)


@pytest.mark.slow
def test_second_run_reuses_the_references_from_the_cache(run):
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    LocalDagRunner().run(_pipeline(run["tmp"], run["data"], run["db"]))
    assert [a.id for a in _artifacts(run["db"], "privacy_audit.ReferenceModels")] == [run["refs"].id]
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = run["db"]
    store = metadata_store.MetadataStore(cfg)
    [type_name] = [t.name for t in store.get_execution_types() if "ReferenceModelTrainer" in t.name]
    states = [e.last_known_state for e in store.get_executions_by_type(type_name)]
    assert states == [metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED]


def test_reference_attacks_need_the_reference_input():
    from tfx import types
    from tfx.types import standard_artifacts

    from privacy_audit.components.membership_inference.component import MembershipInferenceEvaluator
    from privacy_audit.components.reference_models.component import ReferenceModelTrainer

    ex = types.Channel(type=standard_artifacts.Examples)
    model = types.Channel(type=standard_artifacts.Model)
    with pytest.raises(ValueError, match="need reference models"):
        MembershipInferenceEvaluator(examples=ex, model=model, label_key="label", attacks=["threshold", "lira"])
    with pytest.raises(ValueError, match="at least one attack without"):
        MembershipInferenceEvaluator(examples=ex, model=model, label_key="label", attacks=["rmia"])
    with pytest.raises(ValueError, match="unknown option"):
        MembershipInferenceEvaluator(examples=ex, model=model, label_key="label", attacks=["threshold"],
                                     reference_options={"lira": {"variance": "fixed"}})
    with pytest.raises(ValueError, match="k"):
        ReferenceModelTrainer(ex, label_key="label", k=1, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="init"):
        ReferenceModelTrainer(ex, label_key="label", init="random", noise_multiplier=1.0)
