"""Slicing: each slice's results use exactly that slice's examples; skipped slices are reported."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from privacy_audit.components.membership_inference import api, metrics as M
from privacy_audit.components.membership_inference.data import AttackInputs, cross_entropy_from_logits, synthetic_inputs
from privacy_audit.components.membership_inference.slicing import SlicingSpec, make_slices, slice_name


def synthetic(seed=0):
    inp = synthetic_inputs(800, 700, 4, seed=seed, noise_scale=1.5, true_class_mean=1.5, true_class_sd=1.0,
                           decimals=1)
    return inp.logits_members, inp.labels_members, inp.logits_nonmembers, inp.labels_nonmembers


def make_inputs(seed=0, **kw):
    lm, ym, ln, yn = synthetic(seed=seed)
    return AttackInputs(logits_members=lm, labels_members=ym, logits_nonmembers=ln, labels_nonmembers=yn, **kw)


def _check_result_on_subset(r, loss_m, loss_n, mask_m, mask_n):
    sm, sn = -loss_m[mask_m], -loss_n[mask_n]
    assert (r["n_members"], r["n_nonmembers"]) == (sm.size, sn.size)
    s = np.concatenate([sm, sn])
    y = np.concatenate([np.ones(sm.size, bool), np.zeros(sn.size, bool)])
    by_hand = M.attack_metrics(s, y)
    for key in ("auc", "attacker_advantage", "ppv", "tpr_at_fpr", "epsilon_lower_bound", "roc"):
        assert r[key] == by_hand[key], key
    fpr, tpr, _ = roc_curve(y, s)
    assert abs(r["auc"] - roc_auc_score(y, s)) < 1e-9
    assert abs(r["attacker_advantage"] - np.max(np.abs(tpr - fpr))) < 1e-9


def test_every_slice_uses_exactly_its_examples():
    inp = make_inputs()
    lm, ln = inp.logits_members, inp.logits_nonmembers
    ym, yn = inp.labels_members, inp.labels_nonmembers
    loss_m, loss_n = cross_entropy_from_logits(lm, ym), cross_entropy_from_logits(ln, yn)
    spec = SlicingSpec(by_class=True, by_percentiles=True, by_classification_correctness=True)
    out = api.run_attacks(inp, ["threshold"], spec)
    pooled = np.concatenate([loss_m, loss_n])
    edges = np.percentile(pooled, np.arange(0, 101, 10))
    seen = set()
    for r in out["results"]:
        s = r["slice"]
        seen.add(slice_name(s))
        if s["feature"] == "entire_dataset":
            mm, mn = np.ones(ym.size, bool), np.ones(yn.size, bool)
        elif s["feature"] == "class":
            mm, mn = ym == s["value"], yn == s["value"]
        elif s["feature"] == "correctly_classified":
            mm = (lm.argmax(1) == ym) == s["value"]
            mn = (ln.argmax(1) == yn) == s["value"]
        elif s["feature"] == "loss_percentile":
            lo_p, hi_p = (int(v) for v in s["value"].split("-"))
            lo, hi = edges[lo_p // 10], edges[hi_p // 10]
            last = hi_p == 100
            mm = (loss_m >= lo) & ((loss_m <= hi) if last else (loss_m < hi))
            mn = (loss_n >= lo) & ((loss_n <= hi) if last else (loss_n < hi))
        else:
            raise AssertionError(s)
        _check_result_on_subset(r, loss_m, loss_n, mm, mn)
    assert {"entire_dataset", "class=0", "class=3", "correctly_classified=true", "correctly_classified=false",
            "loss_percentile=0-10", "loss_percentile=90-100"} <= seen


def test_percentile_slices_partition_the_examples():
    inp = make_inputs()
    slices, skipped = make_slices(inp, SlicingSpec(entire_dataset=False, by_percentiles=True), min_slice_size=1)
    assert [s.spec["value"] for s in slices] == [f"{k}-{k + 10}" for k in range(0, 100, 10)]
    assert sum(s.n_members for s in slices) == inp.n_members
    assert sum(s.n_nonmembers for s in slices) == inp.n_nonmembers
    allm = np.concatenate([s.member_idx for s in slices])
    assert np.array_equal(np.sort(allm), np.arange(inp.n_members))


def test_small_slices_are_skipped_with_reason():
    lm, ym, ln, yn = synthetic()
    ym[:15] = 4  # class 4: only 15 members, no non-members (labels must stay < C: widen the logits)
    lm = np.concatenate([lm, np.zeros((lm.shape[0], 1))], axis=1)
    ln = np.concatenate([ln, np.zeros((ln.shape[0], 1))], axis=1)
    inp = AttackInputs(logits_members=lm, labels_members=ym, logits_nonmembers=ln, labels_nonmembers=yn)
    out = api.run_attacks(inp, ["threshold"], SlicingSpec(by_class=True), min_slice_size=20)
    (sk,) = out["skipped_slices"]
    assert sk["slice"] == {"feature": "class", "value": 4}
    assert sk["n_members"] == 15 and sk["n_nonmembers"] == 0
    assert "15 members" in sk["reason"] and "0 non-members" in sk["reason"] and "min_slice_size=20" in sk["reason"]
    assert {"feature": "class", "value": 4} not in [r["slice"] for r in out["results"]]
    out = api.run_attacks(inp, ["threshold"], SlicingSpec(by_class=True), min_slice_size=500)
    assert {s["slice"]["value"] for s in out["skipped_slices"] if "value" in s["slice"]} == {0, 1, 2, 3, 4}


def test_feature_and_custom_slices():
    inp0 = make_inputs()
    rng = np.random.default_rng(1)
    region_m = rng.choice([b"north", b"south"], inp0.n_members)
    region_n = rng.choice([b"north", b"south"], inp0.n_nonmembers)
    inp = make_inputs(features_members={"region": region_m}, features_nonmembers={"region": region_n})
    loss_m, loss_n = inp.loss("members"), inp.loss("nonmembers")
    custom_m = np.arange(0, inp.n_members, 3)
    custom_n = np.zeros(inp.n_nonmembers, bool)
    custom_n[::2] = True
    spec = SlicingSpec(entire_dataset=False, feature_keys=("region",),
                       custom={"every_third": (custom_m, custom_n)})
    out = api.run_attacks(inp, ["threshold"], spec)
    slices = [r["slice"] for r in out["results"]]
    assert slices == [{"feature": "region", "value": "north"}, {"feature": "region", "value": "south"},
                      {"feature": "custom", "value": "every_third"}]
    _check_result_on_subset(out["results"][0], loss_m, loss_n, region_m == b"north", region_n == b"north")
    mm = np.zeros(inp.n_members, bool)
    mm[custom_m] = True
    _check_result_on_subset(out["results"][2], loss_m, loss_n, mm, custom_n)
    with pytest.raises(ValueError, match=r"indices must be in \[0, 800\)"):
        make_slices(inp, SlicingSpec(custom={"bad": (np.array([900]), np.array([0]))}))
    with pytest.raises(ValueError, match="no such per-example feature"):
        make_slices(inp, SlicingSpec(feature_keys=("age",)))


def test_too_many_feature_values_are_skipped():
    ids_m = np.arange(800)
    inp = make_inputs(features_members={"id": ids_m}, features_nonmembers={"id": np.arange(700)})
    slices, skipped = make_slices(inp, SlicingSpec(feature_keys=("id",)))
    assert [s.spec for s in slices] == [{"feature": "entire_dataset"}]
    assert "distinct values" in skipped[0]["reason"]


def test_from_names_and_requirements():
    spec = SlicingSpec.from_names(["by_class", " by_percentiles", "feature:region", ""])
    assert spec.entire_dataset and spec.by_class and spec.by_percentiles and spec.feature_keys == ("region",)
    assert SlicingSpec.from_names(["correctly_classified"]).by_classification_correctness
    with pytest.raises(ValueError, match="unknown slicing 'by_colour'"):
        SlicingSpec.from_names(["by_colour"])
    loss_only = AttackInputs(loss_members=np.ones(30), loss_nonmembers=np.zeros(30))
    with pytest.raises(ValueError, match="needs labels"):
        make_slices(loss_only, SlicingSpec(by_class=True))
    with pytest.raises(ValueError, match="needs logits or probs"):
        make_slices(loss_only, SlicingSpec(by_classification_correctness=True))
    slices, _ = make_slices(loss_only, SlicingSpec(by_percentiles=True), min_slice_size=1)
    assert slices[0].spec == {"feature": "entire_dataset"}


def test_trained_attack_slice_sizes():
    inp = make_inputs()
    out = api.run_attacks(inp, ["logistic_regression"], SlicingSpec(by_class=True))
    for r in out["results"][1:]:
        c = r["slice"]["value"]
        assert r["n_members"] == int((inp.labels_members == c).sum())
        assert r["n_nonmembers"] == int((inp.labels_nonmembers == c).sum())


def test_tiny_slices_skip_trained_attacks_only():
    inp = AttackInputs(loss_members=np.r_[np.zeros(30), 5.0], loss_nonmembers=np.r_[np.ones(30), 6.0],
                       labels_members=np.r_[np.zeros(30, int), 1], labels_nonmembers=np.r_[np.zeros(30, int), 1])
    out = api.run_attacks(inp, ["threshold", "logistic_regression"], SlicingSpec(by_class=True),
                          min_slice_size=1)
    ran = [(slice_name(r["slice"]), r["attack"]) for r in out["results"]]
    assert ("class=1", "threshold") in ran and ("class=1", "logistic_regression") not in ran
    (sk,) = out["skipped_slices"]
    assert sk["attack"] == "logistic_regression" and sk["slice"] == {"feature": "class", "value": 1}
