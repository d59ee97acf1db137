"""Attack inputs (losses, entropies, validation, files) and the attacks themselves."""

import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from privacy_audit.components.membership_inference import api, attacks as A
from privacy_audit.components.membership_inference.data import (AttackInputs, InputValidationError, cross_entropy_from_logits,
                                                  cross_entropy_from_probs, modified_entropy,
                                                  modified_entropy_from_logits, softmax, synthetic_inputs)
from privacy_audit.components.membership_inference.slicing import SlicingSpec


def synthetic(n_m=600, n_n=500, c=5, gap=1.0, seed=0):
    inp = synthetic_inputs(n_m, n_n, c, gap=gap, seed=seed, noise_scale=1.5, true_class_mean=1.5,
                           true_class_sd=1.0)
    return inp.logits_members, inp.labels_members, inp.logits_nonmembers, inp.labels_nonmembers


def inputs_from(lm, ym, ln, yn, **kw):
    return AttackInputs(logits_members=lm, labels_members=ym, logits_nonmembers=ln, labels_nonmembers=yn, **kw)


# ------------------------------------------------------------------------------------------------ losses

def test_cross_entropy_from_logits_matches_naive_and_is_stable():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 4))
    y = rng.integers(0, 4, 50)
    naive = -np.log(np.exp(z)[np.arange(50), y] / np.exp(z).sum(1))
    assert np.allclose(cross_entropy_from_logits(z, y), naive, atol=1e-12)
    big = np.array([[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 0.0]])
    loss = cross_entropy_from_logits(big, np.array([0, 0]))
    assert np.all(np.isfinite(loss)) and loss[0] == 0.0 and loss[1] == pytest.approx(2000.0)


def test_binary_single_logit_and_probs():
    z = np.array([3.0, -2.0, 0.0, 40.0, -40.0])
    y = np.array([1, 1, 0, 0, 1])
    sig = 1 / (1 + np.exp(-z))
    bce = np.where(y == 1, np.logaddexp(0, -z), np.logaddexp(0, z))  # softplus: -log sigmoid(+-z)
    s3, y3 = sig[:3], y[:3]
    assert np.allclose(bce[:3], -(y3 * np.log(s3) + (1 - y3) * np.log(1 - s3)))
    assert np.allclose(cross_entropy_from_logits(z, y), bce, rtol=1e-10)
    assert np.allclose(cross_entropy_from_logits(z[:, None], y), bce, rtol=1e-10)
    p = np.array([0.9, 0.2, 0.5, 1.0, 0.0])
    expect = -np.log(np.clip(np.where(y == 1, p, 1 - p), 1e-30, None))
    assert np.allclose(cross_entropy_from_probs(p, y), expect)
    assert np.isfinite(cross_entropy_from_probs(p, y)).all()  # log 0 clipped
    assert np.allclose(softmax(z)[:, 1], sig)


def test_modified_entropy_matches_definition():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(40, 5)) * 3
    y = rng.integers(0, 5, 40)
    p = softmax(z)
    expected = np.empty(40)
    for i in range(40):
        t = -(1 - p[i, y[i]]) * np.log(p[i, y[i]])
        t -= sum(p[i, j] * np.log(1 - p[i, j]) for j in range(5) if j != y[i])
        expected[i] = t
    assert np.allclose(modified_entropy(p, y), expected, rtol=1e-9)
    assert np.allclose(modified_entropy_from_logits(z, y), expected, rtol=1e-9)
    # Confidently right -> ~0; confidently wrong -> large; always finite.
    e = modified_entropy_from_logits(np.array([[50.0, 0.0], [0.0, 50.0]]), np.array([0, 0]))
    assert e[0] < 1e-15 and e[1] > 40 and np.isfinite(e).all()


# ------------------------------------------------------------------------------------------ validation

@pytest.mark.parametrize("bad,match", [
    ("nan", r"logits_members contains 3 non-finite values \(3 NaN, 0 inf\)"),
    ("inf", r"logits_nonmembers contains 1 non-finite values \(0 NaN, 1 inf\)"),
    ("label_range", r"labels_members: 1 values outside \[0, 5\)"),
    ("negative_label", r"labels_nonmembers: 1 values outside \[0, 5\)"),
    ("length", r"length mismatch among the members' arrays"),
    ("classes", r"disagree on the number of classes"),
    ("empty_members", r"no members"),
    ("empty_nonmembers", r"no nonmembers"),
    ("one_side", r"labels_members is set but labels_nonmembers is not"),
    ("float_labels", r"must be integer class indices"),
    ("nothing", r"need logits_\*/probs_\* \(labels_\* optional\), or loss_"),
    ("both", r"logits or probs, not both"),
])
def test_bad_inputs(bad, match):
    lm, ym, ln, yn = synthetic(30, 30)
    kw = dict(logits_members=lm, labels_members=ym, logits_nonmembers=ln, labels_nonmembers=yn)
    if bad == "nan":
        lm[[1, 2, 3], 0] = np.nan
    elif bad == "inf":
        ln[4, 2] = -np.inf
    elif bad == "label_range":
        ym[0] = 5
    elif bad == "negative_label":
        yn[0] = -1
    elif bad == "length":
        kw["labels_members"] = ym[:-1]
    elif bad == "classes":
        kw["logits_nonmembers"] = ln[:, :4]
    elif bad == "empty_members":
        kw["logits_members"], kw["labels_members"] = lm[:0], ym[:0]
    elif bad == "empty_nonmembers":
        kw["logits_nonmembers"], kw["labels_nonmembers"] = ln[:0], yn[:0]
    elif bad == "one_side":
        kw["labels_nonmembers"] = None
    elif bad == "float_labels":
        kw["labels_members"] = ym + 0.5
    elif bad == "nothing":
        kw = dict(labels_members=ym, labels_nonmembers=yn)  # labels alone: nothing to attack
    elif bad == "both":
        kw["probs_members"], kw["probs_nonmembers"] = softmax(lm), softmax(ln)
    with pytest.raises(InputValidationError, match=match):
        AttackInputs(**kw)


def test_loss_only_inputs_and_nan_loss():
    inp = AttackInputs(loss_members=np.array([0.1, 0.2]), loss_nonmembers=np.array([1.0, 2.0, 3.0]))
    assert inp.n_members == 2 and inp.n_nonmembers == 3 and inp.num_classes is None
    with pytest.raises(InputValidationError, match="loss_nonmembers contains 1 non-finite"):
        AttackInputs(loss_members=np.array([0.1]), loss_nonmembers=np.array([np.nan, 1.0]))
    with pytest.raises(InputValidationError, match="probs_members: 1 values outside"):
        AttackInputs(probs_members=np.array([[0.5, 1.5]]), probs_nonmembers=np.array([[0.5, 0.5]]),
                     labels_members=np.array([0]), labels_nonmembers=np.array([1]))


def test_from_npz_names_and_errors(tmp_path):
    lm, ym, ln, yn = synthetic(40, 30)
    path = tmp_path / "ok.npz"
    np.savez(path, logits_train=lm, logits_test=ln, labels_train=ym, labels_test=yn)
    inp = AttackInputs.from_npz(str(path))
    assert inp.n_members == 40 and inp.n_nonmembers == 30 and inp.num_classes == 5
    lm[0, 0] = np.nan
    lm[5, 1] = np.inf
    bad = tmp_path / "nan.npz"
    np.savez(bad, logits_train=lm, logits_test=ln, labels_train=ym, labels_test=yn)
    with pytest.raises(InputValidationError, match=r"nan.npz: logits_train contains 2 non-finite values"):
        AttackInputs.from_npz(str(bad))
    typo = tmp_path / "typo.npz"
    np.savez(typo, logit_train=ln, logits_test=ln)
    with pytest.raises(InputValidationError, match="unrecognised keys"):
        AttackInputs.from_npz(str(typo))
    pick = tmp_path / "pickle.npz"
    np.savez(pick, loss_train=np.array([{"a": 1}], dtype=object), loss_test=np.array([1.0]))
    with pytest.raises(InputValidationError, match="pickled objects are refused"):
        AttackInputs.from_npz(str(pick))
    loss_only = tmp_path / "loss.npz"
    np.savez(loss_only, loss_train=np.array([0.1, 0.2]), loss_test=np.array([0.3]))
    assert AttackInputs.from_npz(str(loss_only)).n_nonmembers == 1
    with pytest.raises(FileNotFoundError):
        AttackInputs.from_npz(str(tmp_path / "missing.npz"))
    probs = tmp_path / "probs.npz"
    np.savez(probs, probs_train=softmax(ln), probs_test=softmax(ln[:10]), labels_train=yn, labels_test=yn[:10])
    inp = AttackInputs.from_npz(str(probs))
    assert np.allclose(inp.loss("members"), cross_entropy_from_logits(ln, yn))


def test_from_parquet_long_and_wide(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    lm, ym, ln, yn = synthetic(40, 30)
    logits = np.concatenate([lm, ln])
    table = pa.table({"logits": pa.array(list(logits), type=pa.list_(pa.float64())),
                      "label": np.concatenate([ym, yn]),
                      "is_member": np.concatenate([np.ones(40, bool), np.zeros(30, bool)]),
                      "region": ["a", "b"] * 35})
    pq.write_table(table, tmp_path / "long.parquet")
    inp = AttackInputs.from_parquet(str(tmp_path / "long.parquet"))
    assert inp.n_members == 40 and inp.n_nonmembers == 30
    assert np.allclose(inp.logits_members, lm) and list(inp.feature_keys) == ["region"]
    wide = pa.table({"loss_train": pa.array([0.1, 0.2, 0.3]), "loss_test": pa.array([1.0, 2.0, None])})
    pq.write_table(wide, tmp_path / "wide.parquet")
    inp = AttackInputs.from_parquet(str(tmp_path / "wide.parquet"))
    assert inp.n_members == 3 and inp.n_nonmembers == 2
    bad = pa.table({"loss_train": pa.array([0.1, float("nan")]), "loss_test": pa.array([1.0, 2.0])})
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(InputValidationError, match="loss_train contains 1 non-finite"):
        AttackInputs.from_parquet(str(tmp_path / "bad.parquet"))


# ------------------------------------------------------------------------------------------------- attacks

def test_threshold_attack_matches_sklearn_entire_and_per_class_with_ties():
    lm, ym, ln, yn = synthetic(1500, 1200, c=4)
    # Coarse logits -> many tied losses.
    lm, ln = np.round(lm), np.round(ln)
    inp = inputs_from(lm, ym, ln, yn)
    out = api.run_attacks(inp, ["threshold"], SlicingSpec(by_class=True), min_slice_size=5)
    loss_m, loss_n = cross_entropy_from_logits(lm, ym), cross_entropy_from_logits(ln, yn)
    assert len(np.unique(np.concatenate([loss_m, loss_n]))) < 0.2 * (1500 + 1200)  # heavy ties
    for r in out["results"]:
        if r["slice"]["feature"] == "entire_dataset":
            sm, sn = loss_m, loss_n
        else:
            c = r["slice"]["value"]
            sm, sn = loss_m[ym == c], loss_n[yn == c]
        y = np.concatenate([np.ones(sm.size), np.zeros(sn.size)])
        s = -np.concatenate([sm, sn])
        fpr, tpr, _ = roc_curve(y, s)
        assert (r["n_members"], r["n_nonmembers"]) == (sm.size, sn.size)
        assert abs(r["auc"] - roc_auc_score(y, s)) < 1e-9
        assert abs(r["attacker_advantage"] - np.max(np.abs(tpr - fpr))) < 1e-9
    assert len(out["results"]) == 5


def test_threshold_entropy_scores():
    lm, ym, ln, yn = synthetic(200, 200)
    p = A.PreparedInputs(inputs_from(lm, ym, ln, yn))
    sm, sn = A.attack_scores("threshold_entropy", p, np.arange(200), np.arange(200))
    assert np.allclose(sm, -modified_entropy_from_logits(lm, ym))
    assert np.allclose(sn, -modified_entropy_from_logits(ln, yn))


def test_known_separable_and_null_cases():
    rng = np.random.default_rng(3)
    sep = AttackInputs(loss_members=rng.uniform(0, 0.1, 300), loss_nonmembers=rng.uniform(1, 2, 300))
    out = api.run_attacks(sep, ["threshold", "logistic_regression"])
    for r in out["results"]:
        assert r["auc"] == 1.0 and r["attacker_advantage"] == 1.0
    lm, ym, ln, yn = synthetic(3000, 3000, gap=0.0, seed=4)
    out = api.run_attacks(inputs_from(lm, ym, ln, yn), ["threshold", "logistic_regression"])
    sigma = np.sqrt((6000 + 1) / (12 * 3000 * 3000))
    for r in out["results"]:
        assert abs(r["auc"] - 0.5) < 4 * sigma, r["attack"]


def test_cross_validation_scores_each_example_once_and_is_seeded():
    lm, ym, ln, yn = synthetic(500, 400, gap=1.5)
    p = A.PreparedInputs(inputs_from(lm, ym, ln, yn))
    im, inn = np.arange(500), np.arange(400)
    a = A.attack_scores("logistic_regression", p, im, inn, seed=1)
    b = A.attack_scores("logistic_regression", p, im, inn, seed=1)
    c = A.attack_scores("logistic_regression", p, im, inn, seed=2)
    assert a[0].shape == (500,) and a[1].shape == (400,)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # Out-of-fold: an attacker that memorises (1-NN) cannot look perfect on its own training data.
    x = np.random.default_rng(0).normal(size=(400, 3))
    y = np.r_[np.ones(200), np.zeros(200)]
    scores, params = A.cross_validated_scores(x, y, A.trained._make_knn, [{"n_neighbors": 1}],
                                              config=A.AttackConfig(), cap=10000, seed=0)
    assert not np.isnan(scores).any() and abs(roc_auc_score(y, scores) - 0.5) < 0.1
    assert params == {"n_neighbors": 1}


def test_balanced_training_and_cap():
    y = np.r_[np.ones(1000, int), np.zeros(100, int)]
    idx = A.trained._balanced_subsample(np.arange(1100), y, 150, np.random.default_rng(0))
    assert (y[idx] == 1).sum() == (y[idx] == 0).sum() == 75
    idx = A.trained._balanced_subsample(np.arange(1100), y, 10000, np.random.default_rng(0))
    assert (y[idx] == 1).sum() == (y[idx] == 0).sum() == 100


@pytest.mark.parametrize("name", ["logistic_regression", "mlp", "random_forest", "knn", "threshold",
                                  "threshold_entropy"])
@pytest.mark.medium
def test_every_attack_finds_a_strong_signal(name):
    lm, ym, ln, yn = synthetic(400, 400, gap=3.0, seed=5)
    out = api.run_attacks(inputs_from(lm, ym, ln, yn), [name], seed=0)
    (r,) = out["results"]
    assert r["attack"] == name and r["auc"] > 0.75


def test_attack_names_and_features():
    assert A.check_attack_names(["lr", "threshold", "threshold"]) == ["logistic_regression", "threshold"]
    with pytest.raises(ValueError, match="unknown attack 'lira2'"):
        A.check_attack_names(["lira2"])
    lm, ym, ln, yn = synthetic(50, 50, c=12)
    inp = inputs_from(lm, ym, ln, yn)
    f = A.attack_features(inp, "members", A.AttackConfig(top_k=10, include_label_one_hot=True))
    # probs, log-probs, logsumexp of the logits, loss + log loss, entropy, one-hot
    assert f.shape == (50, 10 + 3 + 1 + 2 + 1 + 12)
    assert np.all(np.diff(f[:, :10], axis=1) <= 0)  # sorted probabilities
    loss_only = AttackInputs(loss_members=np.array([0.1, 0.2]), loss_nonmembers=np.array([1.0, 2.0]))
    assert A.attack_features(loss_only, "nonmembers").shape == (2, 2)


def test_logistic_regression_is_fast_on_200k_examples():
    rng = np.random.default_rng(6)
    n = 100000
    lm, ym, ln, yn = synthetic(n, n, c=10, seed=6)
    p = A.PreparedInputs(inputs_from(lm, ym, ln, yn))
    p.features("members"), p.features("nonmembers")
    t0 = time.perf_counter()
    sm, sn = A.attack_scores("logistic_regression", p, np.arange(n), np.arange(n), seed=0)
    elapsed = time.perf_counter() - t0
    assert sm.size == n and sn.size == n and rng is not None
    assert elapsed < 8.0, elapsed  # typically ~0.3 s; generous for a shared machine


@pytest.mark.medium
def test_weighted_and_binary_inputs_run_end_to_end():
    rng = np.random.default_rng(7)
    n = 400
    z_m, z_n = rng.normal(1.0, 2, n), rng.normal(0.0, 2, n)
    y_m, y_n = (rng.random(n) < 0.6).astype(int), (rng.random(n) < 0.6).astype(int)
    w_m, w_n = rng.uniform(0.5, 2, n), rng.uniform(0.5, 2, n)
    inp = AttackInputs(logits_members=z_m, labels_members=y_m, logits_nonmembers=z_n, labels_nonmembers=y_n,
                       sample_weight_members=w_m, sample_weight_nonmembers=w_n)
    assert inp.num_classes == 2
    out = api.run_attacks(inp, ["threshold", "logistic_regression", "mlp"],
                          SlicingSpec(by_class=True, by_classification_correctness=True))
    thr = out["results"][0]
    s = -np.concatenate([cross_entropy_from_logits(z_m, y_m), cross_entropy_from_logits(z_n, y_n)])
    yy = np.r_[np.ones(n), np.zeros(n)]
    assert abs(thr["auc"] - roc_auc_score(yy, s, sample_weight=np.r_[w_m, w_n])) < 1e-9
    assert len(out["results"]) == 3 * 5
    probs = AttackInputs(probs_members=softmax(z_m)[:, 1], labels_members=y_m, probs_nonmembers=softmax(z_n)[:, 1],
                         labels_nonmembers=y_n)
    out_p = api.run_attacks(probs, ["threshold"])
    assert abs(out_p["results"][0]["auc"] - roc_auc_score(yy, s)) < 1e-9
