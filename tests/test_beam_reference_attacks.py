"""LiRA / RMIA inside the Beam audit (membership_inference.beam.reference): the target's records joined by
example id with the reference models' per-example Parquet signals give the same per-example scores and the
same results entries as the in-driver path (attacks.reference.score_with_references, api.run_attacks);
ids on one side only are counted and reported. DirectRunner, in process, small N."""

import json

import numpy as np
import pytest

from privacy_audit.components import reference_models as rm
from privacy_audit.components.membership_inference import attacks as sa
from privacy_audit.components.reference_models import signals as signals_lib

ATTACKS = ["lira", "lira_offline", "rmia", "rmia_offline"]
C = 4


def _synthetic(n_m=120, n_n=150, k=6, seed=3):
    """Members then non-members with distinct random ids; references carrying a membership signal."""
    rng = np.random.default_rng(seed)
    m = n_m + n_n
    ids = rng.choice(1 << 40, size=m, replace=False).astype(np.uint64)
    labels = rng.integers(0, C, m)
    base = rng.normal(size=(m, C))
    base[np.arange(m), labels] += rng.normal(1.0, 1.0, m)
    in_mask = rm.inclusion_matrix(k, m, seed=seed)
    boost = np.zeros((m, C))
    boost[np.arange(m), labels] = 1.0
    ref_logits = (base[None] + 0.3 * rng.normal(size=(k, m, C)) + 1.5 * in_mask[:, :, None] * boost[None]
                  ).astype(np.float32)
    is_member = np.arange(m) < n_m
    target = (base + 0.3 * rng.normal(size=(m, C)) + 1.5 * is_member[:, None] * boost).astype(np.float32)
    return {"ids": ids, "labels": labels, "in_mask": in_mask, "ref_logits": ref_logits, "target": target,
            "is_member": is_member, "n_m": n_m}


def _write_outputs(tmp_path, d, rows=None):
    """The target's saved outputs (.npz with example ids) for the Beam ``privacy-audit attack``."""
    n_m = d["n_m"]
    path = tmp_path / "outputs.npz"
    np.savez(path, logits_train=d["target"][:n_m], logits_test=d["target"][n_m:], labels_train=d["labels"][:n_m],
             labels_test=d["labels"][n_m:], example_ids_train=d["ids"][:n_m].astype(np.int64),
             example_ids_test=d["ids"][n_m:].astype(np.int64))
    return str(path)


def _run_beam(tmp_path, outputs, signals_path, options=None):
    from privacy_audit.components.membership_inference.beam import driver
    from privacy_audit.components.membership_inference.beam.reference import read_scores
    from privacy_audit.components.membership_inference.slicing import SlicingSpec

    per_example = tmp_path / "per_example"
    obj = driver.audit_saved_outputs(
        outputs, str(tmp_path / "results.json"), attacks=["threshold"], slicing=SlicingSpec(by_class=True),
        min_slice_size=10, per_example_dir=str(per_example), reference_signals=signals_path,
        reference_attacks=ATTACKS, reference_options=options, beam_pipeline_args=["--direct_running_mode=in_memory"])
    return obj, read_scores(str(per_example / "reference"))


def _in_driver(d, sel=None, options=None):
    """The in-driver path on the examples ``sel`` in the evaluator's order (members then non-members, by id):
    per-example scores and the results of api.run_attacks."""
    from privacy_audit.components.membership_inference import api
    from privacy_audit.components.membership_inference.data import AttackInputs
    from privacy_audit.components.membership_inference.slicing import SlicingSpec

    sel = np.ones(len(d["ids"]), bool) if sel is None else sel
    idx = np.flatnonzero(sel)
    idx = idx[np.lexsort((d["ids"][idx], ~d["is_member"][idx]))]
    target, labels, member = d["target"][idx], d["labels"][idx], d["is_member"][idx]
    refs = rm.ReferenceSignals(d["ref_logits"][:, idx], d["in_mask"][:, idx])
    inputs = AttackInputs(logits_members=target[member], logits_nonmembers=target[~member],
                          labels_members=labels[member], labels_nonmembers=labels[~member])
    obj = api.run_attacks(inputs, ATTACKS, SlicingSpec(by_class=True), min_slice_size=10, references=refs,
                          reference_options=options)
    scores = {}
    for name in ATTACKS:
        opts = sa.resolve_attack_options(name, refs.k, options)
        kwargs = {k: v for k, v in opts.items() if k != "attack" and not (opts["attack"] == "rmia" and
                                                                          k == "fixed_variance")}
        scores[name] = sa.score_with_references(target, labels, d["ref_logits"][:, idx], d["in_mask"][:, idx],
                                                opts["attack"], **kwargs)
    return d["ids"][idx], member, scores, obj


def _entries(obj):
    return {(json.dumps(r["slice"], sort_keys=True), r["attack"]): r for r in obj["results"]}


@pytest.mark.parametrize("options", [None, {"lira": {"fixed_variance": False, "ddof": 1}, "rmia": {"gamma": 2.0}}])
def test_beam_scores_and_results_equal_the_in_driver_path(tmp_path, options):
    d = _synthetic()
    signals_path = str(tmp_path / signals_lib.SIGNALS_PARQUET_FILE)
    # Small row groups: the references arrive in many pieces, as on a large population.
    signals_lib.write_signals_parquet(signals_path, d["ref_logits"], d["in_mask"], d["ids"], d["labels"],
                                      {"seed": 3, "fraction": 0.5}, row_group_rows=64)
    obj, beam_scores = _run_beam(tmp_path, _write_outputs(tmp_path, d), signals_path, options)
    ids, member, scores, expected = _in_driver(d, options=options)

    np.testing.assert_array_equal(beam_scores["example_id"], ids)
    np.testing.assert_array_equal(beam_scores["is_member"], member)
    for name in ATTACKS:
        np.testing.assert_allclose(beam_scores[f"score_{name}"], scores[name], rtol=1e-6, atol=0, err_msg=name)
    got, want = _entries(obj), _entries(expected)
    reference_rows = [key for key in want if key[1] in ATTACKS]
    assert len(reference_rows) == 4 * (1 + C)  # the entire data set and every class
    for key in reference_rows:
        assert got[key]["n_members"] == want[key]["n_members"]
        assert got[key]["n_nonmembers"] == want[key]["n_nonmembers"]
        for metric in ("auc", "attacker_advantage", "ppv"):
            assert got[key][metric] == pytest.approx(want[key][metric], abs=1e-12), (key, metric)
        assert got[key]["tpr_at_fpr"] == pytest.approx(want[key]["tpr_at_fpr"], abs=1e-12)
    # Same place in the results as the in-driver merge: after each slice's other attacks.
    order = [(json.dumps(r["slice"], sort_keys=True), r["attack"]) for r in obj["results"]]
    assert order[:5] == [(json.dumps({"feature": "entire_dataset"}), a) for a in ["threshold"] + ATTACKS]
    md = obj["metadata"]
    assert md["attacks"] == ["threshold"] + ATTACKS
    info = md["reference_models"]
    assert info["attacks"] == expected["metadata"]["reference_models"]["attacks"]
    assert (info["k"], info["m"], info["seed"], info["fraction"]) == (6, len(ids), 3, 0.5)
    assert info["join"] == {"n_targets_without_references": 0, "n_references_without_target": 0,
                            "n_label_mismatches": 0, "n_duplicate_reference_ids": 0}
    assert info["rmia_population"]["size"] == len(ids) and not info["rmia_population"]["sampled"]


def test_ids_on_one_side_only_are_counted_and_reported(tmp_path, caplog):
    d = _synthetic(seed=4)
    m = len(d["ids"])
    rng = np.random.default_rng(0)
    dropped = rng.choice(m, size=17, replace=False)
    keep = np.ones(m, bool)
    keep[dropped] = False
    extra_ids = np.arange(1, 6, dtype=np.uint64) + np.uint64(1 << 41)  # references of examples not audited
    k = d["in_mask"].shape[0]
    signals_path = str(tmp_path / "signals.parquet")
    signals_lib.write_signals_parquet(
        signals_path, np.concatenate([d["ref_logits"][:, keep], d["ref_logits"][:, :5]], axis=1),
        np.concatenate([d["in_mask"][:, keep], d["in_mask"][:, :5]], axis=1),
        np.concatenate([d["ids"][keep], extra_ids]), np.concatenate([d["labels"][keep], d["labels"][:5]]),
        row_group_rows=50)
    assert k == 6
    with caplog.at_level("WARNING"):
        obj, beam_scores = _run_beam(tmp_path, _write_outputs(tmp_path, d), signals_path)
    info = obj["metadata"]["reference_models"]
    assert info["join"]["n_targets_without_references"] == 17
    assert info["join"]["n_references_without_target"] == 5
    assert info["m"] == m - 17
    assert "17 audited examples have no reference signals" in caplog.text
    # The examples with signals are scored as the in-driver path scores that population.
    ids, _, scores, expected = _in_driver(d, sel=keep)
    np.testing.assert_array_equal(beam_scores["example_id"], ids)
    for name in ATTACKS:
        np.testing.assert_allclose(beam_scores[f"score_{name}"], scores[name], rtol=1e-6, atol=0)
    got, want = _entries(obj), _entries(expected)
    whole = (json.dumps({"feature": "entire_dataset"}), "lira")
    assert got[whole]["n_members"] + got[whole]["n_nonmembers"] == m - 17
    assert got[whole]["auc"] == pytest.approx(want[whole]["auc"], abs=1e-12)
    # The other attacks still see every audited example.
    threshold = got[(json.dumps({"feature": "entire_dataset"}), "threshold")]
    assert threshold["n_members"] + threshold["n_nonmembers"] == m


def test_signals_parquet_holds_the_in_driver_signals_per_example(tmp_path):
    d = _synthetic(n_m=40, n_n=50, k=4)
    npz = str(tmp_path / "reference_signals.npz")
    rm.save_reference_signals(npz, {"logits": d["ref_logits"]}, d["in_mask"], {"seed": 1},
                              {"id": d["ids"], "label": d["labels"]})
    path = str(tmp_path / "signals.parquet")
    assert signals_lib.signals_parquet_from_file(npz, path) == 90
    info = signals_lib.read_signals_parquet_info(path)
    assert (info.k, info.n_rows, info.metadata) == (4, 90, {"seed": 1})
    rows = signals_lib.read_signals_row_group(path, 0)
    np.testing.assert_array_equal(rows["id"], d["ids"])
    np.testing.assert_array_equal(rows["in_mask"], d["in_mask"])
    np.testing.assert_array_equal(rows["lira"], sa.logit_scaled_confidence(d["ref_logits"], d["labels"]))
    np.testing.assert_array_equal(rows["rmia"], sa.true_class_probability(d["ref_logits"], d["labels"]))
    with pytest.raises(ValueError, match="not a reference-signals Parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": [1]}), str(tmp_path / "plain.parquet"))
        signals_lib.read_signals_parquet_info(str(tmp_path / "plain.parquet"))


def test_rmia_population_beyond_its_cap_is_a_seeded_sample():
    from privacy_audit.components.membership_inference import combiners
    from privacy_audit.components.membership_inference.beam.reference import PopulationCombineFn

    rng = np.random.default_rng(1)
    ids = rng.choice(1 << 40, size=500, replace=False).astype(np.uint64)
    member = rng.random(500) < 0.5
    logr = rng.normal(size=500)
    batches = [{"id": ids[i:i + 100], "is_member": member[i:i + 100], "n_in": np.ones(100, np.int64),
                "logr:1": logr[i:i + 100]} for i in range(0, 500, 100)]
    fn = PopulationCombineFn(None, [True], population_size=120, seed=9)
    accs = [fn.add_input(fn.create_accumulator(), b) for b in batches]
    out = fn.extract_output(fn.merge_accumulators(accs[::-1]))
    keep = combiners.sample_indices(ids, 9, 120)
    np.testing.assert_array_equal(out["rmia:1"], np.sort(logr[keep]))
    assert out["population"] == {"size": 120, "n_scored": 500, "sampled": True, "seed": 9}


def test_the_evaluator_fallback_for_npz_only_artifacts_gives_the_same_results(tmp_path):
    """Reference artifacts without the Parquet signals are scored in the driver (evaluation.reference_attack_results)
    from the .npz: same entries, same place, same metadata as the Beam path."""
    from privacy_audit.components.membership_inference import evaluation
    from privacy_audit.components.membership_inference.beam import driver
    from privacy_audit.components.membership_inference.settings import AuditSettings
    from privacy_audit.components.membership_inference.slicing import SlicingSpec

    d = _synthetic(seed=5)
    signals_path = str(tmp_path / "signals.parquet")
    signals_lib.write_signals_parquet(signals_path, d["ref_logits"], d["in_mask"], d["ids"], d["labels"], {"seed": 5})
    outputs = _write_outputs(tmp_path, d)
    beam_obj, _ = _run_beam(tmp_path, outputs, signals_path)

    npz = str(tmp_path / "reference_signals.npz")
    rm.save_reference_signals(npz, {"logits": d["ref_logits"]}, d["in_mask"], {"seed": 5},
                              {"id": d["ids"], "label": d["labels"]})
    final = driver.audit_saved_outputs(outputs, str(tmp_path / "plain.json"), attacks=["threshold"],
                                       slicing=SlicingSpec(by_class=True), min_slice_size=10,
                                       beam_pipeline_args=["--direct_running_mode=in_memory"])
    order = np.lexsort((d["ids"], ~d["is_member"]))
    records = {"id": d["ids"][order], "is_member": d["is_member"][order], "label": d["labels"][order],
               "logits": d["target"][order]}
    settings = AuditSettings(attacks=("threshold",), slicing=SlicingSpec(by_class=True), min_slice_size=10)
    driver_obj = evaluation.reference_attack_results(final, records=records, references_path=npz, attacks=ATTACKS,
                                                     settings=settings, reference_options={})
    got, want = _entries(beam_obj), _entries(driver_obj)
    assert list(got) == list(want)
    for key, r in want.items():
        for metric in ("n_members", "n_nonmembers", "auc", "attacker_advantage"):
            assert got[key][metric] == pytest.approx(r[metric], abs=1e-12), (key, metric)
    assert beam_obj["metadata"]["attacks"] == driver_obj["metadata"]["attacks"]
    assert beam_obj["metadata"]["reference_models"]["attacks"] == driver_obj["metadata"]["reference_models"]["attacks"]
