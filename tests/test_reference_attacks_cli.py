"""LiRA / RMIA outside the pipeline: `privacy-audit attack` with reference signals in the .npz input, and the
pipeline/CLI wiring of reference models and the one-run audit (built, not run)."""

import json

import numpy as np
import pytest

from privacy_audit.components import reference_models as rm
from privacy_audit.components.membership_inference import attacks as sa


def _synthetic(tmp_path, n_m=300, n_n=400, k=6, c=5, seed=0):
    """Members then non-members; references whose logits carry a membership signal for their IN examples."""
    rng = np.random.default_rng(seed)
    m = n_m + n_n
    labels = rng.integers(0, c, m)
    base = rng.normal(size=(m, c))
    base[np.arange(m), labels] += rng.normal(1.0, 1.0, m)  # per-example difficulty
    in_mask = rm.inclusion_matrix(k, m, seed=seed)
    boost = np.zeros((m, c))
    boost[np.arange(m), labels] = 1.0
    ref_logits = base[None] + 0.3 * rng.normal(size=(k, m, c)) + 1.5 * in_mask[:, :, None] * boost[None]
    is_member = np.arange(m) < n_m
    target = base + 0.3 * rng.normal(size=(m, c)) + 1.5 * is_member[:, None] * boost
    path = tmp_path / "outputs.npz"
    np.savez(path, logits_train=target[:n_m], logits_test=target[n_m:], labels_train=labels[:n_m],
             labels_test=labels[n_m:], ref_logits=ref_logits, ref_in_mask=in_mask)
    return path, target, labels, is_member, ref_logits, in_mask


def test_attack_cli_runs_lira_and_rmia_from_reference_signals(tmp_path, capsys):
    from sklearn.metrics import roc_auc_score

    from privacy_audit.pipelines.cli import main

    path, target, labels, is_member, ref_logits, in_mask = _synthetic(tmp_path)
    out = tmp_path / "results.json"
    code = main(["attack", "--input", str(path), "--output", str(out), "--quiet", "--slicing", "by_class",
                 "--attacks", "threshold,lira,lira_offline,rmia,rmia_offline"])
    assert code == 0, capsys.readouterr().err
    obj = json.loads(out.read_text())
    entries = {(json.dumps(r["slice"], sort_keys=True), r["attack"]): r for r in obj["results"]}
    expected = {
        "lira": sa.score_with_references(target, labels, ref_logits, in_mask, "lira", fixed_variance=True),
        "lira_offline": sa.score_with_references(target, labels, ref_logits, in_mask, "lira", online=False,
                                                 fixed_variance=True),
        "rmia": sa.score_with_references(target, labels, ref_logits, in_mask, "rmia"),
        "rmia_offline": sa.score_with_references(target, labels, ref_logits, in_mask, "rmia", online=False),
    }
    for attack, scores in expected.items():
        for spec, sel in [({"feature": "entire_dataset"}, np.ones(len(labels), bool))] + [
                ({"feature": "class", "value": c}, labels == c) for c in range(5)]:
            r = entries[(json.dumps(spec, sort_keys=True), attack)]
            assert r["auc"] == pytest.approx(roc_auc_score(is_member[sel], scores[sel]), abs=1e-12)
    whole = {a: entries[(json.dumps({"feature": "entire_dataset"}), a)] for a in expected}
    threshold = entries[(json.dumps({"feature": "entire_dataset"}), "threshold")]
    # Per-example calibration: the reference attacks see through the examples' difficulty.
    assert whole["lira"]["auc"] > threshold["auc"] + 0.1
    assert obj["metadata"]["reference_models"]["k"] == 6
    assert obj["metadata"]["reference_models"]["attacks"]["lira"] == {"attack": "lira", "online": True,
                                                                     "fixed_variance": True}

    # Options: the per-example variance instead of the global one.
    out2 = tmp_path / "r2.json"
    assert main(["attack", "--input", str(path), "--output", str(out2), "--quiet", "--attacks", "lira",
                 "--reference-options", '{"lira": {"fixed_variance": false}}']) == 0
    r = json.loads(out2.read_text())["results"][0]
    own = sa.score_with_references(target, labels, ref_logits, in_mask, "lira", fixed_variance=False)
    assert r["auc"] == pytest.approx(roc_auc_score(is_member, own), abs=1e-12)


def test_attack_cli_reference_errors(tmp_path, capsys):
    from privacy_audit.pipelines.cli import main

    path, target, labels, *_ = _synthetic(tmp_path)
    plain = tmp_path / "plain.npz"
    np.savez(plain, logits_train=target[:300], logits_test=target[300:], labels_train=labels[:300],
             labels_test=labels[300:])
    assert main(["attack", "--input", str(plain), "--output", str(tmp_path / "x.json"), "--attacks", "lira"]) == 2
    assert "need reference models" in capsys.readouterr().err
    short = tmp_path / "short.npz"
    with np.load(path) as f:
        arrays = dict(f)
    arrays["ref_in_mask"] = arrays["ref_in_mask"][:, :10]
    np.savez(short, **arrays)
    assert main(["attack", "--input", str(short), "--output", str(tmp_path / "y.json"), "--attacks", "rmia"]) == 2
    assert "ref_in_mask must have shape" in capsys.readouterr().err
    arrays = dict(np.load(path))
    arrays["ref_logits"] = arrays["ref_logits"][:, :10]
    arrays["ref_in_mask"] = arrays["ref_in_mask"][:, :10]
    np.savez(short, **arrays)
    assert main(["attack", "--input", str(short), "--output", str(tmp_path / "y.json"), "--attacks", "rmia"]) == 2
    assert "members then the non-members" in capsys.readouterr().err
    assert main(["attack", "--input", str(path), "--output", str(tmp_path / "z.json"), "--attacks", "lira",
                 "--reference-options", '{"lira": {"fixed": 1}}']) == 2
    assert "unknown option" in capsys.readouterr().err


def test_attack_names_agree_between_the_registry_and_the_reference_library():
    from privacy_audit.components.membership_inference import attacks

    assert set(attacks.reference_attack_names(list(attacks.ATTACKS))) == set(sa.REFERENCE_ATTACKS)
    with pytest.raises(ValueError, match="need reference models: give the reference signals"):
        from privacy_audit.components.membership_inference.settings import AuditSettings

        AuditSettings(attacks=("threshold", "lira"))


def test_pipeline_adds_reference_trainers_and_audit_canaries(tmp_path):
    from privacy_audit.pipelines.pipeline import AuditSpec, create_pipeline, default_variants

    p = create_pipeline(pipeline_root=str(tmp_path / "root"), label_key="label", data_root=str(tmp_path),
                        audit=AuditSpec(reference_models=4, audit_canaries=100), variants=default_variants(5))
    ids = {c.id: c for c in p.components}
    names = [v.name for v in default_variants(5)]
    for v in names:
        refs = ids[f"ReferenceModelTrainer.{v}"]
        trainer = ids[f"DPTrainer.{v}"]
        assert refs.exec_properties["k"] == 4
        # The target's recipe (epochs, batch size, learning rate, optimizer, privacy, hparams, model, seed) as it is.
        assert refs.exec_properties["recipe"] == trainer.exec_properties["recipe"]
        for key in ("epochs", "target_epsilon", "label_key", "feature_keys", "module_file_sha256"):
            assert refs.exec_properties[key] == trainer.exec_properties[key], key
        evaluator = ids[f"MembershipInferenceEvaluator.{v}"]
        assert json.loads(evaluator.exec_properties["attacks"]) == [
            "threshold", "logistic_regression", "lira", "lira_offline", "rmia"]
        assert "reference_models" in evaluator.inputs
        recipe = json.loads(trainer.exec_properties["recipe"])
        assert recipe["audit_canaries"] == (100 if recipe["private"] else 0)
    off = create_pipeline(pipeline_root=str(tmp_path / "root"), label_key="label", data_root=str(tmp_path))
    assert not [c for c in off.components if c.id.startswith("ReferenceModelTrainer")]


def test_run_settings_for_reference_models_and_audit():
    import argparse

    from privacy_audit.pipelines import run

    def settings(**kw):
        ns = argparse.Namespace(**{k: None for k in run.DEFAULTS})
        ns.config = None
        for k, v in kw.items():
            setattr(ns, k, v)
        return run.resolve_settings(ns)

    demo = run.build_audit(settings(), demo=True)
    assert demo.reference_models == run.DEMO_REFERENCE_MODELS and demo.audit_canaries == run.DEMO_AUDIT_CANARIES
    own = run.build_audit(settings(), demo=False)
    assert own.reference_models == 0 and own.audit_canaries == 0  # opt in with your own data
    chosen = run.build_audit(settings(reference_models=8, audit_canaries=300), demo=False)
    assert chosen.reference_models == 8 and chosen.audit_canaries == 300
    assert "lira" in chosen.evaluator_attacks()
    with pytest.raises(ValueError, match="need reference models"):
        run.build_audit(settings(attacks="threshold,lira", reference_models=0), demo=True)
    with pytest.raises(ValueError, match="reference_models"):
        run.build_audit(settings(reference_models=1), demo=False)
    parser = argparse.ArgumentParser()
    run.add_run_arguments(parser)
    args = parser.parse_args(["--reference-models", "4", "--audit-canaries", "200"])
    assert (args.reference_models, args.audit_canaries) == (4, 200)
