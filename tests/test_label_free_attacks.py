"""Label-free attacks: trained attacks and threshold_entropy on logits/probabilities without labels."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import entropy
from sklearn.metrics import roc_auc_score

from privacy_audit.attacks import AttackInputs, SlicingSpec, run_attacks, synthetic_inputs


def _unlabelled(n=300, seed=0):
    full = synthetic_inputs(n, gap=2.0, seed=seed)
    return full, AttackInputs(logits_members=full.logits_members, logits_nonmembers=full.logits_nonmembers)


def test_threshold_entropy_without_labels_is_shannon_entropy():
    full, inputs = _unlabelled()
    res = run_attacks(inputs, ["threshold_entropy"], seed=0)
    h = np.concatenate([entropy(softmax(full.logits_members, axis=1), axis=1),
                        entropy(softmax(full.logits_nonmembers, axis=1), axis=1)])
    labels = np.r_[np.ones(300), np.zeros(300)]
    assert res["results"][0]["auc"] == pytest.approx(roc_auc_score(labels, -h), abs=1e-9)
    assert res["metadata"]["accuracy_train"] is None


def test_trained_attacks_run_on_probabilities_without_labels():
    full, _ = _unlabelled()
    probs = AttackInputs(probs_members=softmax(full.logits_members, axis=1),
                         probs_nonmembers=softmax(full.logits_nonmembers, axis=1))
    res = run_attacks(probs, ["logistic_regression"], seed=0)
    # The gap (members' true-class logit +2) shows in the confidence alone: clearly above chance.
    assert res["results"][0]["auc"] > 0.6
    assert res["results"][0]["n_members"] == 300


def test_attacks_that_need_labels_say_so():
    _, inputs = _unlabelled()
    with pytest.raises(ValueError, match="needs labels: give labels_train/labels_test"):
        run_attacks(inputs, ["threshold"])
    with pytest.raises(ValueError, match="slicing by class needs labels"):
        run_attacks(inputs, ["logistic_regression"], SlicingSpec(by_class=True))


@pytest.mark.medium
def test_cli_accepts_logits_without_labels(tmp_path):
    full, _ = _unlabelled()
    path = tmp_path / "outputs.npz"
    np.savez(path, logits_train=full.logits_members, logits_test=full.logits_nonmembers)
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "-m", "privacy_audit.pipelines.cli", "attack", "--input", str(path),
                          "--output", str(out), "--attacks", "threshold_entropy,logistic_regression", "--quiet"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert [r["attack"] for r in json.loads(out.read_text())["results"]] == ["threshold_entropy",
                                                                             "logistic_regression"]
    bad = subprocess.run([sys.executable, "-m", "privacy_audit.pipelines.cli", "attack", "--input", str(path),
                          "--output", str(tmp_path / "r2.json"), "--attacks", "threshold", "--quiet"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "needs labels" in bad.stderr
    assert not (tmp_path / "r2.json").exists()
