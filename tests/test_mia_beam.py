"""The Beam path of the membership-inference audit: same results as the in-memory path (api.run_attacks)
on the DirectRunner (multi-processing) and on Beam's Dask runner with a local dask.distributed cluster;
mergeable combiners; clear errors on bad inputs."""

import json
import os
import pickle
import warnings

import numpy as np
import pytest

from privacy_audit.components.membership_inference import api, beam as bp, combiners
from privacy_audit.components.membership_inference import attacks as attacks_mod
from privacy_audit.components.membership_inference import metrics
from privacy_audit.components.membership_inference.data import AttackInputs, InputValidationError
from privacy_audit.components.membership_inference.slicing import SlicingSpec

MULTI = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
METRIC_KEYS = ("auc", "attacker_advantage", "ppv", "epsilon_lower_bound")


def _outputs(seed=0, n_m=700, n_n=600, c=4):
    rng = np.random.default_rng(seed)
    lm = rng.normal(size=(n_m, c)).astype(np.float32)
    ln = rng.normal(size=(n_n, c)).astype(np.float32)
    ym, yn = rng.integers(0, c, n_m), rng.integers(0, c, n_n)
    lm[np.arange(n_m), ym] += 1.2
    ln[np.arange(n_n), yn] += 0.8
    lm[:40] = np.round(lm[:40], 1)  # some tied scores
    ln[:40] = np.round(ln[:40], 1)
    return {"logits_train": lm, "logits_test": ln, "labels_train": ym, "labels_test": yn,
            "region_train": rng.choice(["north", "south", "east"], n_m),
            "region_test": rng.choice(["north", "south", "east"], n_n)}


def _write_long_parquet(path, arrays, row_group_size=250, nonfinite=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    logits = np.concatenate([arrays["logits_train"], arrays["logits_test"]])
    if nonfinite:
        for (i, j), v in nonfinite.items():
            logits[i, j] = v
    member = np.r_[np.ones(len(arrays["labels_train"]), bool), np.zeros(len(arrays["labels_test"]), bool)]
    table = pa.table({
        "is_member": member,
        "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), logits.shape[1]),
        "label": np.concatenate([arrays["labels_train"], arrays["labels_test"]]),
        "region": np.concatenate([arrays["region_train"], arrays["region_test"]]),
    })
    pq.write_table(table, path, row_group_size=row_group_size)


def _inputs(arrays):
    return AttackInputs(logits_members=arrays["logits_train"], logits_nonmembers=arrays["logits_test"],
                        labels_members=arrays["labels_train"], labels_nonmembers=arrays["labels_test"],
                        features_members={"region": arrays["region_train"]},
                        features_nonmembers={"region": arrays["region_test"]})


SPEC = SlicingSpec(entire_dataset=True, by_class=True, by_percentiles=True, by_classification_correctness=True,
                   feature_keys=("region",))
ATTACKS = ["threshold", "threshold_entropy", "logistic_regression"]


def _assert_same(ref, got, tol=1e-9):
    assert [(r["slice"], r["attack"]) for r in ref["results"]] == [(r["slice"], r["attack"]) for r in got["results"]]
    for a, b in zip(ref["results"], got["results"]):
        assert (a["n_members"], a["n_nonmembers"]) == (b["n_members"], b["n_nonmembers"])
        for k in METRIC_KEYS:
            assert abs(a[k] - b[k]) <= tol, (a["slice"], a["attack"], k, a[k], b[k])
        assert a["tpr_at_fpr_unresolved"] == b["tpr_at_fpr_unresolved"]
        for k in a["tpr_at_fpr"]:
            if a["tpr_at_fpr"][k] is None or b["tpr_at_fpr"][k] is None:  # unresolvable: null on both paths
                assert a["tpr_at_fpr"][k] is b["tpr_at_fpr"][k] is None
                continue
            assert abs(a["tpr_at_fpr"][k] - b["tpr_at_fpr"][k]) <= tol
        assert np.allclose(a["roc"]["fpr"], b["roc"]["fpr"], atol=tol, rtol=0)
        assert np.allclose(a["roc"]["tpr"], b["roc"]["tpr"], atol=tol, rtol=0)
    assert ref["skipped_slices"] == got["skipped_slices"]
    for k in ("accuracy_train", "accuracy_test", "n_members", "n_nonmembers"):
        assert ref["metadata"][k] == pytest.approx(got["metadata"][k], abs=1e-12)


@pytest.fixture(scope="module")
def long_parquet(tmp_path_factory):
    d = tmp_path_factory.mktemp("beam_inputs")
    arrays = _outputs()
    path = str(d / "outputs.parquet")
    _write_long_parquet(path, arrays)
    ref = api.run_attacks(_inputs(arrays), ATTACKS, SPEC, seed=5, min_slice_size=20)
    return {"path": path, "arrays": arrays, "ref": ref, "dir": d}


# ---------------------------------------------------------------------------------------------------------
# Beam path == in-memory path
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.medium
def test_direct_runner_multiprocessing_matches_in_memory(long_parquet, tmp_path):
    out = str(tmp_path / "results.json")
    got = bp.audit_saved_outputs(long_parquet["path"], out, ATTACKS, SPEC, seed=5, min_slice_size=20,
                                 beam_pipeline_args=MULTI, batch_rows=100,
                                 per_example_dir=str(tmp_path / "per_example"))
    ref = long_parquet["ref"]
    # Every slice kind is there: entire, classes, deciles, correctness, feature values; some skipped.
    assert {r["slice"]["feature"] for r in got["results"]} == {
        "entire_dataset", "class", "loss_percentile", "correctly_classified", "region"}
    _assert_same(ref, got)
    for r in got["results"]:  # small slices: exact counts, and the trained attack saw the whole slice
        assert "approximation" not in r and "sample" not in r
    with open(out) as f:
        assert json.load(f) == got
    import pyarrow.parquet as pq

    table = pq.read_table(str(tmp_path / "per_example" / "model"))
    assert table.num_rows == 1300
    assert sorted(table.column("example_id").to_numpy().tolist()) == list(range(1300))
    assert {"score_threshold", "score_threshold_entropy", "loss", "region", "correct"} <= set(table.column_names)


@pytest.mark.medium
def test_npz_input_matches_in_memory(tmp_path):
    arrays = _outputs(seed=1, n_m=300, n_n=250, c=3)
    path = str(tmp_path / "outputs.npz")
    np.savez(path, **{k: v for k, v in arrays.items() if not k.startswith("region")})
    spec = SlicingSpec(by_class=True)
    ref = api.run_attacks(AttackInputs.from_npz(path), ["threshold", "knn"], spec, seed=2)
    got = bp.audit_saved_outputs(path, str(tmp_path / "r.json"), ["threshold", "knn"], spec, seed=2,
                                 batch_rows=64)
    _assert_same(ref, got)


@pytest.mark.medium
def test_trained_attack_on_a_sample_equals_in_memory_attack_on_the_same_sample(long_parquet, tmp_path):
    k = 150
    got = bp.audit_saved_outputs(long_parquet["path"], str(tmp_path / "r.json"), ["logistic_regression"],
                                 SlicingSpec(by_class=True), seed=5, sample_size=k, batch_rows=128)
    arrays = long_parquet["arrays"]
    inputs = _inputs(arrays)
    ids_m = np.arange(inputs.n_members, dtype=np.uint64)  # row numbers: members first in the file
    ids_n = np.arange(inputs.n_members, inputs.n_members + inputs.n_nonmembers, dtype=np.uint64)
    checked = 0
    for r in got["results"]:
        sel_m = np.ones(inputs.n_members, bool)
        sel_n = np.ones(inputs.n_nonmembers, bool)
        if r["slice"]["feature"] == "class":
            sel_m = arrays["labels_train"] == r["slice"]["value"]
            sel_n = arrays["labels_test"] == r["slice"]["value"]
        im, inn = np.flatnonzero(sel_m), np.flatnonzero(sel_n)
        im = im[combiners.sample_indices(ids_m[im], 5, k)]
        inn = inn[combiners.sample_indices(ids_n[inn], 5, k)]
        assert (r["n_members"], r["n_nonmembers"]) == (im.size, inn.size) == (min(k, sel_m.sum()), min(k, sel_n.sum()))
        assert r["sample"]["slice_n_members"] == sel_m.sum() and r["sample"]["slice_n_nonmembers"] == sel_n.sum()
        sub = inputs.subset(im, inn)
        prepared = attacks_mod.PreparedInputs(sub, attacks_mod.AttackConfig())
        sm, sn = attacks_mod.attack_scores("logistic_regression", prepared, np.arange(im.size), np.arange(inn.size),
                                           api._derived_seed(5, r["slice"], "logistic_regression"))
        m = metrics.attack_metrics(np.r_[sm, sn], np.r_[np.ones(im.size, bool), np.zeros(inn.size, bool)])
        for key in METRIC_KEYS:
            assert r[key] == m[key]
        checked += 1
    assert checked == 5


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("dask.distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    yield cluster
    cluster.close()


@pytest.mark.medium
def test_dask_runner_on_local_cluster_matches_in_memory(long_parquet, dask_cluster, tmp_path):
    args = ["--runner=DaskRunner", f"--dask_client_address={dask_cluster.scheduler_address}"]
    got = bp.audit_saved_outputs(long_parquet["path"], str(tmp_path / "r.json"), ATTACKS, SPEC, seed=5,
                                 min_slice_size=20, beam_pipeline_args=args, batch_rows=100,
                                 per_example_dir=str(tmp_path / "per_example"))
    _assert_same(long_parquet["ref"], got)
    import pyarrow.parquet as pq

    assert pq.read_table(str(tmp_path / "per_example" / "model")).num_rows == 1300


# ---------------------------------------------------------------------------------------------------------
# Combiners
# ---------------------------------------------------------------------------------------------------------

def _combine(fn, elements, splits):
    """Combines ``elements`` as Beam might: partial accumulators over the given split points, pickled
    (sent between workers), merged in reverse order."""
    accs = []
    for part in np.split(np.arange(len(elements)), splits):
        acc = fn.create_accumulator()
        for i in part:
            acc = fn.add_input(acc, elements[i])
        accs.append(pickle.loads(pickle.dumps(fn.compact(acc))))
    return fn.extract_output(fn.merge_accumulators(accs[::-1]))


def test_score_counts_exact_and_merge_invariant():
    rng = np.random.default_rng(0)
    scores = np.r_[np.round(rng.normal(size=3000), 2), -0.0, 0.0, 1e300, -1e300]
    member = rng.random(scores.size) < 0.5
    batches = [(scores[i:i + 100], member[i:i + 100]) for i in range(0, scores.size, 100)]
    fn = combiners.ScoreCountsCombineFn()
    ref = metrics.histogram_from_scores(scores, member)
    for splits in ([], [3], [1, 7, 20]):
        h = _combine(fn, batches, splits)
        assert h.exact
        assert np.array_equal(h.scores_desc, ref[0])
        assert np.array_equal(h.member_counts, ref[1]) and np.array_equal(h.nonmember_counts, ref[2])
    assert h.metrics()["auc"] == metrics.attack_metrics(scores, member)["auc"]


def test_score_counts_collapse_to_bounded_histogram():
    rng = np.random.default_rng(1)
    n = 60000
    member = rng.random(n) < 0.5
    scores = -np.abs(rng.normal(size=n)) * np.where(member, 0.9, 1.0)
    batches = [(scores[i:i + 5000], member[i:i + 5000]) for i in range(0, n, 5000)]
    fn = combiners.ScoreCountsCombineFn(max_distinct_scores=4096)
    h1 = _combine(fn, batches, [])
    h2 = _combine(fn, batches, [2, 5, 9])
    assert not h1.exact and h1.scores_desc.size <= 4096
    assert h1.shift == h2.shift and np.array_equal(h1.scores_desc, h2.scores_desc)
    assert np.array_equal(h1.member_counts, h2.member_counts)
    assert h1.n_members == member.sum() and h1.n_nonmembers == n - member.sum()
    exact = metrics.attack_metrics(scores, member)
    approx = h1.metrics()
    assert abs(approx["auc"] - exact["auc"]) <= h1.auc_error_bound + 1e-12
    assert h1.auc_error_bound < 1e-3
    assert approx["attacker_advantage"] <= exact["attacker_advantage"] + 1e-12
    info = h1.approximation()
    assert info["relative_bin_width"] == 2.0 ** (h1.shift - 52) and info["n_bins"] == h1.scores_desc.size


def test_priority_sample_is_seeded_mergeable_and_reproducible_in_memory():
    rng = np.random.default_rng(2)
    n = 5000
    ids = rng.permutation(n).astype(np.uint64) * np.uint64(7919)
    member = rng.random(n) < 0.4
    loss = rng.random(n)
    batches = [{"id": ids[i:i + 300], "is_member": member[i:i + 300], "loss": loss[i:i + 300]}
               for i in range(0, n, 300)]
    fn = combiners.PrioritySampleCombineFn(sample_size=200, seed=11)
    a = _combine(fn, batches, [])
    b = _combine(fn, batches, [4, 5, 12])
    for side, mask in ((a.members, member), (a.nonmembers, ~member)):
        idx = np.flatnonzero(mask)[combiners.sample_indices(ids[mask], 11, 200)]
        assert np.array_equal(side.columns["id"], ids[idx]) and np.array_equal(side.columns["loss"], loss[idx])
        assert side.n_seen == mask.sum() and side.size == 200
        assert np.all(np.diff(side.columns["id"].astype(np.int64)) > 0)  # ordered by id
    assert np.array_equal(a.members.columns["id"], b.members.columns["id"])
    c = _combine(combiners.PrioritySampleCombineFn(sample_size=200, seed=12), batches, [])
    assert not np.array_equal(a.members.columns["id"], c.members.columns["id"])


# ---------------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.medium
def test_nonfinite_logits_are_counted(tmp_path):
    arrays = _outputs(seed=3, n_m=200, n_n=150)
    path = str(tmp_path / "bad.parquet")
    _write_long_parquet(path, arrays, row_group_size=64,
                        nonfinite={(3, 0): np.nan, (3, 1): np.inf, (100, 2): np.nan, (250, 0): -np.inf})
    with pytest.raises(InputValidationError) as e:
        bp.audit_saved_outputs(path, str(tmp_path / "r.json"), ["threshold"], seed=0, batch_rows=50)
    msg = str(e.value)
    assert "logits of members (logits_train) contains 3 non-finite values (2 NaN, 1 inf) in 2 examples" in msg
    assert "logits of nonmembers (logits_test) contains 1 non-finite values (0 NaN, 1 inf) in 1 examples" in msg
    assert not os.path.exists(tmp_path / "r.json")


@pytest.mark.medium
def test_empty_split_is_an_error(tmp_path):
    arrays = _outputs(seed=4, n_m=100, n_n=1)
    arrays = {**arrays, "logits_test": arrays["logits_test"][:0], "labels_test": arrays["labels_test"][:0],
              "region_test": arrays["region_test"][:0]}
    path = str(tmp_path / "no_nonmembers.parquet")
    _write_long_parquet(path, arrays)
    with pytest.raises(InputValidationError, match="no non-members"):
        bp.audit_saved_outputs(path, str(tmp_path / "r.json"), ["threshold"], seed=0)


def test_feature_key_absent_from_outputs_is_named(long_parquet, tmp_path):
    with pytest.raises(ValueError, match="'altitude'"):
        bp.audit_saved_outputs(long_parquet["path"], str(tmp_path / "r.json"), ["threshold"],
                               SlicingSpec(feature_keys=("altitude",)))


# ---------------------------------------------------------------------------------------------------------
# From TFX Examples and a Keras model
# ---------------------------------------------------------------------------------------------------------

def _write_examples(split_dir, x, y, extra=()):
    import tensorflow as tf

    os.makedirs(split_dir, exist_ok=True)
    serialized = []
    for xi, yi in zip(x, y):
        feats = {f"pixel_{j:02d}": tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))
                 for j, v in enumerate(xi)}
        feats["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(yi)]))
        feats["parity"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"even" if yi % 2 == 0 else b"odd"]))
        serialized.append(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    serialized += list(extra)
    with tf.io.TFRecordWriter(os.path.join(split_dir, "data.gz"), options="GZIP") as w:
        for s in serialized:
            w.write(s)
    return serialized


@pytest.fixture(scope="module")
def examples_and_model(tmp_path_factory):
    import keras
    from sklearn.datasets import load_digits

    d = tmp_path_factory.mktemp("examples")
    digits = load_digits()
    x = (digits.data[:600] / 16.0).astype(np.float32)
    y = digits.target[:600]
    train = _write_examples(str(d / "Split-train"), x[:350], y[:350])
    # Three training examples are also in the eval split: counted and warned about.
    _write_examples(str(d / "Split-eval"), x[350:], y[350:], extra=train[:3])
    _write_examples(str(d / "Split-empty"), x[:0], y[:0])
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:350], y[:350], epochs=30, verbose=0)
    path = str(d / "model.keras")
    model.save(path)
    return {"uri": str(d), "model": path, "features": [f"pixel_{j:02d}" for j in range(64)]}


def _examples_run(env, tmp_path, settings, members="train", nonmembers="eval", beam_args=None):
    targets = {"m": bp.OutputTarget(str(tmp_path / "m.json"), {"model_variant": "m"})}
    return bp.audit_examples(os.path.join(env["uri"], f"Split-{members}", "*"),
                             os.path.join(env["uri"], f"Split-{nonmembers}", "*"),
                             [bp.ModelToEvaluate("m", env["model"])], targets, label_key="label",
                             input_features=env["features"], settings=settings,
                             staging_dir=str(tmp_path / "staging"), per_example_dir=str(tmp_path / "pe"),
                             split_names=(members, nonmembers), batch_size=64, beam_pipeline_args=beam_args)



def _padded_logits(model, x, rows=256):
    """Logits by hand in zero-padded batches of exactly ``rows`` (the evaluator's fixed inference batch shape:
    float32 kernels pick their blocking by batch size, so a different shape shifts logits by ~1e-6)."""
    pad = (-len(x)) % rows
    xp = np.concatenate([x, np.zeros((pad,) + x.shape[1:], dtype=x.dtype)])
    return np.concatenate([np.asarray(model.predict_on_batch(xp[i:i + rows]))
                           for i in range(0, len(xp), rows)])[:len(x)]

@pytest.mark.medium
def test_examples_and_keras_model_match_in_memory(examples_and_model, tmp_path):
    import keras

    from privacy_audit.components.common import examples as examples_lib

    env = examples_and_model
    settings = bp.AuditSettings(attacks=("threshold",), slicing=SlicingSpec(by_class=True,
                                                                            feature_keys=("parity",)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _examples_run(env, tmp_path, settings)["m"]
    assert any(issubclass(w.category, bp.DuplicateExamplesWarning) and "3 examples" in str(w.message)
               for w in caught)
    assert got["metadata"]["n_duplicate_examples"] == 3
    model = keras.saving.load_model(env["model"])
    tr = examples_lib.load_examples(os.path.join(env["uri"], "Split-train", "*"), "label", env["features"])
    ev = examples_lib.load_examples(os.path.join(env["uri"], "Split-eval", "*"), "label", env["features"])
    inputs = AttackInputs(logits_members=_padded_logits(model, tr.x), logits_nonmembers=_padded_logits(model, ev.x),
                          labels_members=tr.y, labels_nonmembers=ev.y,
                          features_members={"parity": tr.features["parity"]},
                          features_nonmembers={"parity": ev.features["parity"]})
    ref = api.run_attacks(inputs, ["threshold"], settings.slicing)
    _assert_same(ref, got, tol=1e-6)
    assert {r["slice"]["feature"] for r in got["results"]} == {"entire_dataset", "class", "parity"}


def test_examples_feature_key_absent_is_named(examples_and_model, tmp_path):
    settings = bp.AuditSettings(attacks=("threshold",), slicing=SlicingSpec(feature_keys=("colour",)))
    with pytest.raises(ValueError, match="slicing feature key 'colour' is not a feature of the examples"):
        _examples_run(examples_and_model, tmp_path, settings)


def test_examples_empty_split_is_an_error(examples_and_model, tmp_path):
    with pytest.raises(ValueError, match="non-members split 'empty' has no examples"):
        _examples_run(examples_and_model, tmp_path, bp.AuditSettings(attacks=("threshold",)),
                      nonmembers="empty")


@pytest.mark.medium
def test_examples_path_on_dask_runner_matches_direct_runner(examples_and_model, dask_cluster, tmp_path):
    """The model path is runner-agnostic too: on the Dask runner (file-reader batching, models cached per
    worker process) the results, trained attacks included, equal the multi-processing DirectRunner's."""
    env = examples_and_model
    settings = bp.AuditSettings(attacks=("threshold", "logistic_regression"), slicing=SlicingSpec(by_class=True))
    with pytest.warns(bp.DuplicateExamplesWarning):
        direct = _examples_run(env, tmp_path / "direct", settings, beam_args=MULTI)["m"]
    targets = {"m": bp.OutputTarget(str(tmp_path / "dask" / "m.json"), {"model_variant": "m"})}
    with pytest.warns(bp.DuplicateExamplesWarning):
        dask = bp.audit_examples(
            os.path.join(env["uri"], "Split-train", "*"), os.path.join(env["uri"], "Split-eval", "*"),
            [bp.ModelToEvaluate("m", env["model"])], targets, label_key="label", input_features=env["features"],
            settings=settings, staging_dir=str(tmp_path / "dask" / "staging"), batch_size=64,
            beam_pipeline_args=["--runner=DaskRunner", f"--dask_client_address={dask_cluster.scheduler_address}"])["m"]
    assert len(direct["results"]) == 22
    _assert_same(direct, dask, tol=0.0)
