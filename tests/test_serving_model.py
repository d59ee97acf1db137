"""Models of TFX's standard Trainer: a SavedModel with a signature over serialized tf.Examples, read by the
evaluator's Beam path (no TFX pipeline here: the LocalDagRunner tests are in test_existing_tfx_pipeline.py).

The SavedModels are exported here the way a Trainer's run_fn exports them (``tf.saved_model.save`` with a
``serving_default`` signature that parses serialized examples); the expected metrics come from calling the
loaded signature directly and scikit-learn.
"""

import glob
import json
import os
import types

import numpy as np
import pytest
import tensorflow as tf

from privacy_audit.components.membership_inference import beam as mi_beam, evaluation, gate, serving_model as sm
from privacy_audit.components.membership_inference.slicing import SlicingSpec

FEATURES = [f"x{i}" for i in range(6)]


def _example(x, label, extra=None):
    feats = {k: tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)])) for k, v in zip(FEATURES, x)}
    feats["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))
    for k, v in (extra or {}).items():
        feats[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _write_split(root, split, records):
    d = os.path.join(root, f"Split-{split}")
    os.makedirs(d)
    with tf.io.TFRecordWriter(os.path.join(d, "data.gz"), options="GZIP") as w:
        for r in records:
            w.write(r)
    return os.path.join(d, "*")


def _export(model, path, *, outputs_fn=None, signature_inputs="serialized"):
    """Exports ``model`` (vector input) with a serving signature over serialized tf.Examples, as a run_fn does."""
    spec = {k: tf.io.FixedLenFeature([], tf.float32) for k in FEATURES}
    outputs_fn = outputs_fn or (lambda y: {"probabilities": y})
    if signature_inputs == "serialized":
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(serialized):
            parsed = tf.io.parse_example(serialized, spec)
            return outputs_fn(model(tf.stack([parsed[k] for k in FEATURES], axis=1)))
    else:
        @tf.function(input_signature=[tf.TensorSpec([None, len(FEATURES)], tf.float32, name="x")])
        def serve(x):
            return outputs_fn(model(x))
    tf.saved_model.save(model, path, signatures={"serving_default": serve})
    return path


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    """Members / non-members Examples, an overfitting softmax model and its SavedModel exports."""
    import keras

    root = tmp_path_factory.mktemp("serving")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, len(FEATURES))).astype(np.float32)
    y = (x[:, 0] + 0.8 * rng.normal(size=240) > 0).astype(np.int64) + (x[:, 1] > 0.5)  # 3 classes, noisy
    groups = np.array(["a", "b"])[rng.integers(0, 2, 240)]
    records = [_example(x[i], y[i], {"group": groups[i]}) for i in range(240)]
    members = _write_split(str(root / "examples"), "train", records[:120])
    nonmembers = _write_split(str(root / "examples"), "eval", records[120:])
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((len(FEATURES),)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x[:120], y[:120], epochs=60, verbose=0)
    probs_dir = _export(model, str(root / "model" / "Format-Serving"))
    logits_model = keras.Model(model.inputs, model.layers[-1].output)  # same graph; used only for errors
    return types.SimpleNamespace(root=root, members=members, nonmembers=nonmembers, records=records, y=y,
                                 model=model, probs_dir=probs_dir, logits_model=logits_model)


@pytest.mark.slow
def test_probabilities_signature_threshold_attack_matches_sklearn(fixture, tmp_path):
    from sklearn.metrics import roc_auc_score, roc_curve

    y = fixture.y
    options = evaluation.resolve_serving(fixture.probs_dir, sm.ServingOptions(), fixture.members)
    assert options.outputs == "probabilities" and options.output_key == "probabilities"
    models = [mi_beam.ModelToEvaluate("final", fixture.probs_dir, options)]
    targets = {"final": mi_beam.OutputTarget(str(tmp_path / "final.json"), {"model_variant": "t"})}
    settings = mi_beam.AuditSettings(attacks=("threshold",), slicing=SlicingSpec(feature_keys=("group",)),
                                           min_slice_size=5)
    results = mi_beam.audit_examples(fixture.members, fixture.nonmembers, models, targets, label_key="label",
                                           input_features=[], settings=settings,
                                           staging_dir=str(tmp_path / "staging"),
                                           per_example_dir=str(tmp_path / "per_example"))["final"]
    # Independent: the signature called directly and the loss by hand give the evaluator's per-example scores
    # (up to float32 batch effects); sklearn's ROC on those predictions gives its metrics (1e-9).
    import pyarrow.parquet as pq

    from privacy_audit.components.common.examples import example_digest, ids_from_hashes

    tables = [pq.read_table(f) for f in glob.glob(str(tmp_path / "per_example" / "final" / "*.parquet"))]
    ids = np.concatenate([t.column("example_id").to_numpy() for t in tables])
    got = dict(zip(ids.tolist(), np.concatenate([t.column("score_threshold").to_numpy() for t in tables])))
    record_ids = ids_from_hashes([example_digest(r).hex() for r in fixture.records]).tolist()
    score = np.array([got[i] for i in record_ids])
    fn = tf.saved_model.load(fixture.probs_dir).signatures["serving_default"]
    probs = fn(examples=tf.constant(fixture.records))["probabilities"].numpy().astype(np.float64)
    np.testing.assert_allclose(score, np.log(probs[np.arange(len(y)), y]), rtol=1e-4, atol=1e-6)
    member = np.arange(len(y)) < 120
    entire = [r for r in results["results"] if r["slice"] == {"feature": "entire_dataset"}][0]
    assert entire["auc"] == pytest.approx(roc_auc_score(member, score), abs=1e-9)
    fpr, tpr, _ = roc_curve(member, score)
    assert entire["attacker_advantage"] == pytest.approx(np.max(np.abs(tpr - fpr)), abs=1e-9)
    assert entire["auc"] > 0.6  # the model overfits its members
    groups = np.array([tf.train.Example.FromString(r).features.feature["group"].bytes_list.value[0].decode()
                       for r in fixture.records])
    by_group = {r["slice"]["value"]: r for r in results["results"] if r["slice"].get("feature") == "group"}
    for g in ("a", "b"):
        keep = groups == g
        assert by_group[g]["auc"] == pytest.approx(roc_auc_score(member[keep], score[keep]), abs=1e-9)


@pytest.mark.slow
def test_missing_signature_lists_the_signatures(fixture):
    with pytest.raises(ValueError, match=r"no signature 'predict'.*serving_default"):
        sm.ServingModel(fixture.probs_dir, sm.ServingOptions(signature_name="predict"))


@pytest.mark.slow
def test_output_key_not_among_outputs_lists_them(fixture):
    with pytest.raises(ValueError, match=r"output_key 'logits' is not an output.*probabilities"):
        sm.ServingModel(fixture.probs_dir, sm.ServingOptions(output_key="logits"))


@pytest.mark.slow
def test_outputs_not_batch_by_classes(fixture, tmp_path):
    path = _export(fixture.model, str(tmp_path / "flat"), outputs_fn=lambda y: {"score": tf.reduce_max(y, axis=1)})
    with pytest.raises(ValueError, match=r"\[batch, classes\]"):
        sm.ServingModel(path)


@pytest.mark.slow
def test_signature_not_over_serialized_examples_says_what_it_takes(fixture, tmp_path):
    path = _export(fixture.model, str(tmp_path / "dense"), signature_inputs="dense")
    with pytest.raises(ValueError, match=r"does not take serialized tf.Examples.*'x': 'float32\[None, 6\]'"):
        sm.ServingModel(path)


@pytest.mark.slow
def test_declared_probabilities_that_do_not_sum_to_one(fixture, tmp_path):
    path = _export(fixture.logits_model, str(tmp_path / "logits"), outputs_fn=lambda z: {"logits": z * 3.0 + 1.0})
    model = sm.ServingModel(path, sm.ServingOptions(outputs="probabilities"))
    with pytest.raises(ValueError, match=r"declared probabilities but \d+ of 64 rows do not sum to 1"):
        model.resolve(fixture.records[:64])
    auto = sm.ServingModel(path)
    assert auto.resolve(fixture.records[:64]).outputs == "logits"


@pytest.mark.slow
def test_several_outputs_need_output_key(fixture, tmp_path):
    path = _export(fixture.model, str(tmp_path / "two"), outputs_fn=lambda y: {"a": y, "b": y * 1.0})
    with pytest.raises(ValueError, match=r"several outputs.*set output_key"):
        sm.ServingModel(path)
    assert sm.ServingModel(path, sm.ServingOptions(output_key="b")).output_key == "b"


@pytest.mark.slow
def test_label_key_absent_is_named(fixture):
    with pytest.raises(ValueError, match=r"label key 'target' is not a feature"):
        sm.example_columns(fixture.records[:3], "target")


def test_model_artifact_without_either_layout(tmp_path):
    with pytest.raises(ValueError, match=r"neither keras/model.keras .* nor Format-Serving/saved_model.pb"):
        evaluation.model_format(str(tmp_path))


def test_baseline_blessing_of_another_model_is_refused():
    gate.check_baseline_model({"current_model": "/p/Trainer/model/7", "current_model_id": 7}, "/p/Trainer/model/7", 7)
    with pytest.raises(ValueError, match=r"blesses model id 3 .* not the audited model id 7"):
        gate.check_baseline_model({"current_model": "/p/Trainer/model/3", "current_model_id": 3, "uri": "b"},
                                      "/p/Trainer/model/7", 7)


def test_baseline_blessing_is_anded_in():
    privacy_ok = {"blessed": True, "reasons": [], "failures": []}
    assert gate.and_baseline(privacy_ok, {"blessed": True, "uri": "b"})["blessed"] is True
    failed = gate.and_baseline(privacy_ok, {"blessed": False, "uri": "b"})
    assert failed["blessed"] is False and failed["privacy_blessed"] is True and "NOT_BLESSED" in failed["reasons"][0]
    assert gate.and_baseline(privacy_ok, {"blessed": None, "uri": "b"})["blessed"] is False
    privacy_failed = {"blessed": False, "reasons": ["auc"], "failures": [{}]}
    assert gate.and_baseline(privacy_failed, {"blessed": True, "uri": "b"})["blessed"] is False


@pytest.mark.slow
def test_audit_checkpoints_layout_is_read_by_the_evaluator(fixture, tmp_path):
    """AuditCheckpoints in a run_fn: SavedModel checkpoints with the serving signature, indexed, then listed by
    the evaluator beside Format-Serving/ and evaluated through the same signature."""
    import keras

    from privacy_audit.components.common.audit_checkpoints import AuditCheckpoints

    model_dir = tmp_path / "model"
    fn_args = types.SimpleNamespace(serving_model_dir=str(model_dir / "Format-Serving"))
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((len(FEATURES),)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(1).normal(size=(32, len(FEATURES))).astype(np.float32)
    y = np.arange(32) % 3

    def signatures(m):
        spec = {k: tf.io.FixedLenFeature([], tf.float32) for k in FEATURES}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(serialized):
            parsed = tf.io.parse_example(serialized, spec)
            return {"probabilities": m(tf.stack([parsed[k] for k in FEATURES], axis=1))}
        return {"serving_default": serve}

    model.fit(x, y, epochs=3, verbose=0, callbacks=[AuditCheckpoints(fn_args, every_n_epochs=2, signatures=signatures)])
    tf.saved_model.save(model, fn_args.serving_model_dir, signatures=signatures(model))
    index = json.loads((model_dir / "checkpoints" / "index.json").read_text())
    assert [c["epoch"] for c in index["checkpoints"]] == [2, 3]  # every 2 epochs, and the last one
    assert all(c["format"] == "saved_model" for c in index["checkpoints"])
    assert evaluation.model_format(str(model_dir)) == "serving"
    options = sm.ServingOptions(outputs="probabilities")
    evaluated = evaluation.models_to_evaluate(str(model_dir), "v", {}, None, None, options)
    assert [(md["epoch"], md["is_final"]) for _, md in evaluated] == [(2, False), (3, False), (3, True)]
    assert all(m.serving == options for m, _ in evaluated)
    scores = sm.load_serving_model(evaluated[0][0].path, options)(fixture.records[:4])
    assert scores.shape == (4, 3) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)


def test_user_module_without_run_fn_is_refused_for_references(tmp_path):
    from tfx import types as tfx_types
    from tfx import v1 as tfx
    from tfx.types import standard_artifacts

    from privacy_audit.components import ReferenceModelTrainer

    module = tmp_path / "team_module.py"
    module.write_text("def trainer_fn(trainer_fn_args, schema):\n    return None\n")
    examples = tfx_types.Channel(type=standard_artifacts.Examples)
    trainer = tfx.components.Trainer(module_file=str(module), examples=examples,
                                     train_args=tfx.proto.TrainArgs(num_steps=1))
    with pytest.raises(ValueError, match=r"team_module.py has no function 'run_fn'"):
        ReferenceModelTrainer.for_tfx_trainer(trainer, examples, k=2)
