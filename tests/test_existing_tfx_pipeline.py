"""The audit inside a team's own TFX pipeline, with real TFX components under LocalDagRunner (ML Metadata
in SQLite, no mocks): pipelines/examples/existing_tfx_pipeline.py's CsvExampleGen → StatisticsGen →
SchemaGen → Transform (scaled pixels, the string ``writer`` feature through a vocabulary) → standard
Trainer (the example's user module: a wide MLP that memorises, probabilities out, AuditCheckpoints) → TFMA
Evaluator, then three audits of the same model, each gating its own Pusher:

  tight   max_auc 0.55, no baseline                         → NOT pushed, the blessing names the slices
  loose   max_auc 0.99, no baseline, K = 2 references        → pushed; LiRA through run_fn references
  tfma    max_auc 0.99, TFMA's blessing (accuracy >= 0.999,  → NOT pushed although privacy passes
          which the model cannot reach) ANDed in

One pipeline run is shared by every assertion (the CI budget is tight). Expected values come from the
SavedModel's signature called directly and scikit-learn.
"""

import glob
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "pipelines", "examples"))

pytestmark = pytest.mark.slow

N_EXAMPLES = 1000
CUSTOM_CONFIG = {"epochs": 20, "batch_size": 32, "hidden_units": [256, 256], "checkpoint_every": 10, "seed": 0}
K = 2  # each example IN one reference and OUT of the other: enough for LiRA (fixed variance) at this size


def _artifacts(db, type_name):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = db
    return metadata_store.MetadataStore(cfg).get_artifacts_by_type(type_name)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import existing_tfx_pipeline as ex
    from tfx import v1 as tfx

    from privacy_audit.components import PrivacyReportGenerator

    root = tmp_path_factory.mktemp("existing_tfx")
    data = str(root / "data")
    ex.write_data(data, n=N_EXAMPLES, seed=0)
    team = ex.team_components(data, min_accuracy=0.999, custom_config=CUSTOM_CONFIG)
    tight = ex.add_privacy_audit(team, max_auc=0.55, baseline=False, name=".tight")
    loose = ex.add_privacy_audit(team, max_auc=0.99, baseline=False, reference_models=K,
                                 attacks=("threshold", "lira"), name=".loose")
    tfma = ex.add_privacy_audit(team, max_auc=0.99, baseline=True, name=".tfma")
    transformed = ex.add_privacy_audit(team, max_auc=0.99, baseline=False, name=".transformed",
                                       signature_name="transformed_examples", with_transform_graph=True)
    model = team["trainer"].outputs["model"]
    audits = {"tight": tight["audit.tight"], "loose": loose["audit.loose"], "tfma": tfma["audit.tfma"]}
    pushers = [ex.pusher(model, a.outputs["blessing"], str(root / "serving" / name), name="." + name)
               for name, a in audits.items()]
    report = PrivacyReportGenerator(attack_results=[audits["tight"].outputs["attack_results"],
                                                    audits["loose"].outputs["attack_results"]],
                                    blessings=[audits["tight"].outputs["blessing"],
                                               audits["loose"].outputs["blessing"]], title="team model")
    db = str(root / "metadata.sqlite")
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="existing-tfx-test", pipeline_root=str(root / "pipeline"),
        components=list(team.values()) + list(tight.values()) + list(loose.values()) + list(tfma.values())
        + list(transformed.values()) + pushers + [report],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(db),
        beam_pipeline_args=["--direct_running_mode=in_memory"])
    tfx.orchestration.LocalDagRunner().run(pipeline)
    return {"root": root, "db": db, "pipeline": root / "pipeline"}


def _one(pattern):
    found = glob.glob(str(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def _blessing(run, name):
    d = _one(run["pipeline"] / f"MembershipInferenceEvaluator.{name}" / "blessing" / "*")
    with open(os.path.join(d, "blessing.json")) as f:
        return d, json.load(f)


def _results(run, name):
    d = _one(run["pipeline"] / f"MembershipInferenceEvaluator.{name}" / "attack_results" / "*")
    with open(_one(os.path.join(d, "results", "*_final.json"))) as f:
        return d, json.load(f)


def _pushed(run, name):
    d = run["root"] / "serving" / name
    return sorted(os.listdir(d)) if d.is_dir() else []


def test_tight_gate_blocks_the_push_and_names_the_slices(run):
    d, blessing = _blessing(run, "tight")
    assert os.path.exists(os.path.join(d, "NOT_BLESSED")) and not blessing["blessed"]
    assert "entire_dataset" in blessing["failing_slices"]
    assert all(f["value"] > 0.55 for f in blessing["failures"])
    assert _pushed(run, "tight") == []


def test_loose_gate_pushes(run):
    d, blessing = _blessing(run, "loose")
    assert os.path.exists(os.path.join(d, "BLESSED")) and blessing["blessed"]
    assert len(_pushed(run, "loose")) == 1  # Pusher wrote one versioned model directory
    props = {a.uri: a.custom_properties for a in _artifacts(run["db"], "ModelBlessing")}
    assert props[d]["blessed"].int_value == 1
    model_uri = _one(run["pipeline"] / "Trainer" / "model" / "*")
    assert props[d]["current_model"].string_value == model_uri


def test_failing_tfma_baseline_blocks_the_push_even_when_privacy_passes(run):
    d, blessing = _blessing(run, "tfma")
    assert blessing["privacy_blessed"] is True and blessing["baseline"]["blessed"] is False
    assert not blessing["blessed"] and os.path.exists(os.path.join(d, "NOT_BLESSED"))
    assert _pushed(run, "tfma") == []


def _per_example(results_dir, key_glob="*_final"):
    """The evaluator's per-example records of the final model: {example_id: (is_member, score_threshold)}."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(f) for f in glob.glob(os.path.join(results_dir, "per_example", key_glob, "*.parquet"))]
    ids = np.concatenate([t.column("example_id").to_numpy() for t in tables])
    member = np.concatenate([t.column("is_member").to_numpy() for t in tables])
    score = np.concatenate([t.column("score_threshold").to_numpy() for t in tables])
    order = np.argsort(ids)
    return ids[order], member[order], score[order]


def test_probabilities_signature_threshold_auc_matches_sklearn(run):
    """The Trainer's signature outputs probabilities over raw examples (Transform inside it, the string
    feature through its vocabulary). The evaluator's threshold AUC and advantage equal sklearn's on the same
    predictions (its per-example records, 1e-9); those predictions are the signature's, called directly
    (minus the cross-entropy by hand, equal up to float32 batch effects)."""
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score, roc_curve

    from privacy_audit.components.common.examples import example_digest, ids_from_hashes, read_serialized

    d, results = _results(run, "loose")
    assert results["metadata"]["serving"]["outputs"] == "probabilities"
    ids, member, score = _per_example(d)
    entire = [r for r in results["results"] if r["slice"] == {"feature": "entire_dataset"}
              and r["attack"] == "threshold"][0]
    assert entire["auc"] == pytest.approx(roc_auc_score(member, score), abs=1e-9)
    fpr, tpr, _ = roc_curve(member, score)
    assert entire["attacker_advantage"] == pytest.approx(np.max(np.abs(tpr - fpr)), abs=1e-9)

    examples = _one(run["pipeline"] / "CsvExampleGen" / "examples" / "*")
    members = read_serialized(os.path.join(examples, "Split-train", "*"))
    serialized = members + read_serialized(os.path.join(examples, "Split-eval", "*"))
    labels = np.array([tf.train.Example.FromString(s).features.feature["label"].int64_list.value[0]
                       for s in serialized])
    fn = tf.saved_model.load(os.path.join(_one(run["pipeline"] / "Trainer" / "model" / "*"), "Format-Serving")
                             ).signatures["serving_default"]
    probs = np.concatenate([fn(examples=tf.constant(serialized[i:i + 256]))["probabilities"].numpy()
                            for i in range(0, len(serialized), 256)]).astype(np.float64)
    direct = np.log(probs[np.arange(len(labels)), labels])  # minus the cross-entropy loss
    direct_ids = ids_from_hashes([example_digest(s).hex() for s in serialized])
    order = np.argsort(direct_ids)
    np.testing.assert_array_equal(direct_ids[order], ids)
    np.testing.assert_array_equal((np.arange(len(labels)) < len(members))[order], member)
    np.testing.assert_allclose(direct[order], score, rtol=1e-4, atol=1e-5)
    writers = {r["slice"]["value"] for r in results["results"] if r["slice"].get("feature") == "writer"}
    assert writers == {"alice", "bob", "carol", "dave"}


def test_transform_graph_applied_by_the_evaluator_gives_the_same_audit(run):
    """The signature over transformed examples, with the Transform graph given to the evaluator (which then
    transforms the raw examples, string feature included, before the signature): same model, same
    per-example scores as through the serving signature that applies the graph itself (up to float32
    batch effects), so the same AUCs within a pair flip or two."""
    d_inside, inside = _results(run, "loose")
    d_before, before = _results(run, "transformed")
    assert before["metadata"]["serving"]["transform_mode"] == "before"
    ids_a, member_a, score_a = _per_example(d_inside)
    ids_b, member_b, score_b = _per_example(d_before)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(member_a, member_b)
    np.testing.assert_allclose(score_b, score_a, rtol=1e-4, atol=1e-5)
    a = {json.dumps(r["slice"]): r["auc"] for r in inside["results"] if r["attack"] == "threshold"}
    b = {json.dumps(r["slice"]): r["auc"] for r in before["results"]}
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=1e-4), key


def test_checkpoints_from_audit_checkpoints_are_audited(run):
    d, _ = _results(run, "loose")
    with open(os.path.join(d, "index.json")) as f:
        index = json.load(f)
    assert [(e["epoch"], e["is_final"]) for e in index["entries"]] == [(10, False), (20, False), (20, True)]


def test_lira_with_run_fn_references_beats_the_threshold_attack_at_low_fpr(run):
    _, results = _results(run, "loose")
    entire = {r["attack"]: r for r in results["results"] if r["slice"] == {"feature": "entire_dataset"}}
    refs = results["metadata"]["reference_models"]
    assert refs["k"] == K and refs["recipe"]["trainer"] == "tfx run_fn"
    assert entire["lira"]["tpr_at_fpr"]["0.01"] > entire["threshold"]["tpr_at_fpr"]["0.01"]


def test_report_reads_the_model_blessings(run):
    d = _one(run["pipeline"] / "PrivacyReportGenerator" / "report" / "*")
    with open(os.path.join(d, "summary.json")) as f:
        summary = json.load(f)
    blessed = {v["name"]: v["blessed"] for v in summary["variants"]}
    assert blessed == {"team_model.tight": False, "team_model.loose": True}


def test_transform_graph_that_does_not_match_the_examples_is_named(run):
    import tensorflow as tf

    from privacy_audit.components.common.examples import read_serialized
    from privacy_audit.components.membership_inference.serving_model import TransformGraph

    graph = TransformGraph(_one(run["pipeline"] / "Transform" / "transform_graph" / "*"))
    examples = _one(run["pipeline"] / "CsvExampleGen" / "examples" / "*")
    ex = tf.train.Example.FromString(read_serialized(os.path.join(examples, "Split-eval", "*"))[0])
    del ex.features.feature["writer"]
    with pytest.raises(ValueError, match=r"does not match the examples: its raw features \['writer'\] are not in them"):
        graph.check_examples([ex.SerializeToString()])
