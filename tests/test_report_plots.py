"""PrivacyReportGenerator core: readers and plotted data checked against inputs with known values.

`make_results_docs` / `make_ledger_docs` build fixtures used by test_report_html.py and
test_report_component.py too.
"""

from __future__ import annotations

import json
import math

import pytest

from privacy_audit.components.privacy_report import load, plots
from privacy_audit.components.privacy_report.load import ReportInputError

VARIANTS = ("non_private", "dp")
SLICES = ({"feature": "entire_dataset"}, {"feature": "class", "value": 0}, {"feature": "class", "value": 1})
ATTACKS = ("threshold", "logistic_regression")
EPOCHS = (2, 4, 6)  # 6 is the final model
ACCURACY_TEST = {"non_private": {2: 0.80, 4: 0.90, 6: 0.88}, "dp": {2: 0.70, 4: 0.76, 6: 0.79}}
EPSILON = {"non_private": None, "dp": 2.5}
# AUC = 0.5 + per-epoch growth + slice bonus + attack bonus: the most vulnerable slice differs per variant.
GROWTH = {"non_private": 0.03, "dp": 0.01}
SLICE_BONUS = {"non_private": {"entire_dataset": 0.0, "class=0": 0.01, "class=1": 0.05},
               "dp": {"entire_dataset": 0.0, "class=0": 0.03, "class=1": 0.005}}
ATTACK_BONUS = {"threshold": 0.0, "logistic_regression": 0.01}


def known_auc(variant: str, epoch: int, slice_label: str, attack: str) -> float:
    return round(0.5 + GROWTH[variant] * epoch / 2 + SLICE_BONUS[variant][slice_label] + ATTACK_BONUS[attack], 6)


def known_advantage(auc: float) -> float:
    return round(1.6 * (auc - 0.5), 6)


def known_roc(auc: float) -> dict:
    lift = auc - 0.5
    return {"fpr": [0.0, 0.001, 0.01, 0.1, 1.0],
            "tpr": [0.0, round(0.001 + lift / 10, 6), round(0.01 + lift / 2, 6), round(0.1 + lift, 6), 1.0]}


def make_entry(variant: str, epoch: int, spec: dict, attack: str) -> dict:
    label = load.slice_label(spec)
    auc = known_auc(variant, epoch, label, attack)
    roc = known_roc(auc)
    return {"slice": spec, "attack": attack, "n_members": 100, "n_nonmembers": 90,
            "auc": auc, "attacker_advantage": known_advantage(auc), "ppv": round(0.5 + (auc - 0.5) / 2, 6),
            "tpr_at_fpr": {"0.01": roc["tpr"][2], "0.001": roc["tpr"][1]},
            "epsilon_lower_bound": round(10 * (auc - 0.5), 6), "roc": roc}


def make_results_doc(variant: str, epoch: int, *, is_final: bool, slices=SLICES, attacks=ATTACKS) -> dict:
    return {"schema_version": 1,
            "metadata": {"model_variant": variant, "epoch": epoch, "accuracy_train": 0.99,
                         "accuracy_test": ACCURACY_TEST[variant][epoch], "epsilon": EPSILON[variant],
                         "is_final": is_final},
            "results": [make_entry(variant, epoch, s, a) for s in slices for a in attacks]}


def make_results_docs(variants=VARIANTS) -> list[dict]:
    """Per variant: epoch files for 2 and 4, the final file at epoch 6, deliberately out of order."""
    docs = []
    for v in variants:
        docs.append(make_results_doc(v, EPOCHS[-1], is_final=True))
        docs += [make_results_doc(v, e, is_final=False) for e in reversed(EPOCHS[:-1])]
    return docs


def make_ledger_doc(variant: str) -> dict:
    private = EPSILON[variant] is not None
    return {"schema_version": 1, "model_variant": variant, "private": private, "sampling": "poisson",
            "poisson_guarantee_holds": True, "n_examples": 900, "expected_batch_size": 64,
            "sampling_probability": 64 / 900, "noise_multiplier": 1.1 if private else None,
            "l2_norm_clip": 1.0 if private else None, "delta": 1e-5 if private else None, "accountant": "rdp",
            "events": [], "epochs": [{"epoch": e, "steps": 14 * e, "epsilon": EPSILON[variant] * e / 6
                                      if private else None, "train_loss": 0.5, "train_accuracy": 0.9}
                                     for e in range(1, 7)],
            "steps": 84, "epsilon": EPSILON[variant]}


def make_ledger_docs(variants=VARIANTS) -> list[dict]:
    return [make_ledger_doc(v) for v in variants]


def write_json(path, doc) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.fixture
def variants():
    return load.group_by_variant(make_results_docs())


# --------------------------------------------------------------------------- readers


def test_group_by_variant_orders_epochs_and_finds_final(variants):
    assert list(variants) == list(VARIANTS)
    for v in VARIANTS:
        assert [f.epoch for f in variants[v].files] == [2, 4, 6]
        assert variants[v].final.epoch == 6 and variants[v].final.is_final


def test_final_defaults_to_latest_epoch_when_unmarked():
    docs = [make_results_doc("dp", e, is_final=False) for e in (4, 6, 2)]
    for d in docs:
        del d["metadata"]["is_final"]
    assert load.group_by_variant(docs)["dp"].final.epoch == 6


def test_results_reader_names_file_and_field(tmp_path):
    doc = make_results_doc("dp", 2, is_final=False)
    doc["results"][3]["auc"] = "high"
    path = write_json(tmp_path / "bad.json", doc)
    with pytest.raises(ReportInputError) as err:
        load.read_results(path)
    assert str(path) in str(err.value) and "results[3].auc" in str(err.value)

    doc = make_results_doc("dp", 2, is_final=False)
    del doc["metadata"]["model_variant"]
    with pytest.raises(ReportInputError, match="metadata.model_variant"):
        load.read_results(write_json(tmp_path / "novariant.json", doc))

    doc = make_results_doc("dp", 2, is_final=False)
    doc["results"][0]["roc"]["tpr"].pop()
    with pytest.raises(ReportInputError, match=r"results\[0\].roc"):
        load.read_results(doc)

    with pytest.raises(ReportInputError, match="schema_version"):
        load.read_results({"schema_version": 2, "metadata": {}, "results": []})
    with pytest.raises(ReportInputError, match="not found"):
        load.read_results(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ReportInputError, match="not valid JSON"):
        load.read_results(tmp_path / "broken.json")


def test_ledger_reader(tmp_path):
    ledger = load.read_ledger(write_json(tmp_path / "ledger.json", make_ledger_doc("dp")))
    assert ledger.private and ledger.epsilon == 2.5 and ledger.delta == 1e-5
    assert load.read_ledger(make_ledger_doc("non_private")).epsilon is None

    no_noise = make_ledger_doc("dp")
    no_noise["epsilon"] = None  # the ledger's way to write an unbounded ε (noise multiplier 0)
    assert load.read_ledger(no_noise).epsilon is None and load.read_ledger(no_noise).private
    bad = make_ledger_doc("dp")
    del bad["epsilon"]
    with pytest.raises(ReportInputError, match="'epsilon'"):
        load.read_ledger(bad)
    bad = make_ledger_doc("dp")
    bad["delta"] = None
    with pytest.raises(ReportInputError, match="'delta'.*private=true"):
        load.read_ledger(bad)
    bad = make_ledger_doc("dp")
    bad["epochs"][2]["epoch"] = -1
    with pytest.raises(ReportInputError, match=r"epochs\[2\].epoch"):
        load.read_ledger(bad)
    with pytest.raises(ReportInputError, match="second ledger"):
        load.index_ledgers([make_ledger_doc("dp"), make_ledger_doc("dp")])


def test_ledger_reader_reads_the_trainers_ledger(tmp_path):
    accounting = pytest.importorskip("privacy_audit.components.dp_trainer.accounting")
    ledger = accounting.PrivacyLedger(model_variant="dp", private=True, n_examples=1000, expected_batch_size=50,
                                      noise_multiplier=1.1, l2_norm_clip=1.0, delta=1e-5)
    for epoch in (1, 2):
        ledger.record_steps(20)
        ledger.end_epoch(epoch, train_loss=0.5, train_accuracy=0.8)
    path = tmp_path / "ledger.json"
    ledger.write(str(path))
    read = load.read_ledger(path)
    assert read.private and read.epsilon == pytest.approx(ledger.epsilon()) and read.delta == 1e-5
    assert read.epsilon == json.loads(path.read_text())["epsilon"]


def test_tpr_at_matches_keys_by_value():
    r = load.read_results(make_results_doc("dp", 2, is_final=False)).results[0]
    assert r.tpr_at(0.001) == r.tpr_at_fpr["0.001"]
    assert r.tpr_at(0.05) is None


# --------------------------------------------------------------------------- plotted data


def test_epoch_plot_is_max_over_slices_per_epoch_in_epoch_order(variants):
    data = plots.plot_by_epoch(variants)
    assert set(data.panels) == {"auc", "attacker_advantage"}
    auc = data.panels["auc"]
    assert set(auc) == {(v, a) for v in VARIANTS for a in ATTACKS}
    # Hand-computed: non_private's worst slice is class=1 (+0.05), dp's is class=0 (+0.03).
    assert auc[("non_private", "threshold")] == ([2, 4, 6], [pytest.approx(0.58), pytest.approx(0.61),
                                                              pytest.approx(0.64)])
    assert auc[("dp", "logistic_regression")] == ([2, 4, 6], [pytest.approx(0.55), pytest.approx(0.56),
                                                               pytest.approx(0.57)])
    for (v, a), (xs, ys) in auc.items():
        assert xs == sorted(xs)
        expected = [max(known_auc(v, e, load.slice_label(s), a) for s in SLICES) for e in xs]
        assert ys == pytest.approx(expected)
    adv = data.panels["attacker_advantage"][("non_private", "logistic_regression")]
    assert adv[1] == pytest.approx([known_advantage(known_auc("non_private", e, "class=1", "logistic_regression"))
                                    for e in EPOCHS])
    assert len(data.figure.axes) == 2
    assert data.png_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_epoch_plot_pools_files_of_one_epoch():
    docs = make_results_docs(("dp",))
    # A second file for epoch 4 with a stronger attack on one slice: pooled into the max.
    extra = make_results_doc("dp", 4, is_final=False, slices=SLICES[:1], attacks=("threshold",))
    extra["results"][0]["auc"] = 0.9
    data = plots.plot_by_epoch(load.group_by_variant(docs + [extra]))
    xs, ys = data.panels["auc"][("dp", "threshold")]
    assert xs == [2, 4, 6] and ys[1] == pytest.approx(0.9)


def test_privacy_vs_accuracy_points(variants):
    data = plots.plot_privacy_vs_accuracy(variants)
    auc = data.panels["auc"]
    assert set(auc) == set(VARIANTS)
    # One point per evaluated model; max over slices AND attacks; sorted by test accuracy.
    xs, ys = auc["non_private"]
    assert xs == [0.80, 0.88, 0.90]  # epochs 2, 6, 4
    assert ys == pytest.approx([0.59, 0.65, 0.62])
    xs, ys = auc["dp"]
    assert xs == [0.70, 0.76, 0.79]
    assert ys == pytest.approx([0.55, 0.56, 0.57])
    adv_x, adv_y = data.panels["attacker_advantage"]["dp"]
    assert adv_y == pytest.approx([known_advantage(v) for v in (0.55, 0.56, 0.57)])


def test_roc_uses_most_vulnerable_slice_of_final_model(variants):
    data = plots.plot_roc(variants)
    sel = data.meta["selected"]
    assert sel["non_private"] == {"slice": "class=1", "attack": "logistic_regression",
                                  "auc": pytest.approx(0.65), "epoch": 6}
    assert sel["dp"]["slice"] == "class=0" and sel["dp"]["attack"] == "logistic_regression"
    fpr, tpr = data.panels["roc"]["non_private"]
    expected = known_roc(known_auc("non_private", 6, "class=1", "logistic_regression"))
    assert fpr == expected["fpr"] and tpr == expected["tpr"]
    ax = data.figure.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    # The diagonal (random guess) is drawn.
    assert any(line.get_label() == "random guess" for line in ax.get_lines())


def test_slice_heatmap_matrix(variants):
    data = plots.plot_slice_heatmap(variants)
    m = data.meta["non_private"]
    assert m["slices"] == ["entire_dataset", "class=0", "class=1"]
    assert m["attacks"] == ["logistic_regression", "threshold"]
    for i, s in enumerate(m["slices"]):
        for j, a in enumerate(m["attacks"]):
            assert m["values"][i][j] == pytest.approx(known_auc("non_private", 6, s, a))
    assert data.panels["dp"]["threshold"] == (m["slices"], [pytest.approx(known_auc("dp", 6, s, "threshold"))
                                                            for s in m["slices"]])


def test_heatmap_marks_missing_cells_none():
    doc = make_results_doc("dp", 6, is_final=True)
    doc["results"] = [r for r in doc["results"]
                      if not (r["attack"] == "threshold" and r["slice"].get("value") == 1)]
    data = plots.plot_slice_heatmap(load.group_by_variant([doc]))
    m = data.meta["dp"]
    assert m["values"][2][m["attacks"].index("threshold")] is None


def test_epsilon_comparison_marks_non_private_infinite():
    rows = [{"name": "non_private", "private": False, "epsilon": None, "max_auc": 0.65,
             "max_attacker_advantage": 0.24, "max_tpr_at_fpr_0.001": 0.016, "epsilon_lower_bound": 1.5},
            {"name": "dp", "private": True, "epsilon": 2.5, "max_auc": 0.57,
             "max_attacker_advantage": 0.11, "max_tpr_at_fpr_0.001": 0.008, "epsilon_lower_bound": 0.7}]
    data = plots.plot_epsilon_comparison(rows)
    names, eps = data.panels["epsilon"]["dp_epsilon"]
    assert names == ["non_private", "dp"] and math.isinf(eps[0]) and eps[1] == 2.5
    assert data.panels["epsilon"]["epsilon_lower_bound"][1] == [1.5, 0.7]
    assert data.panels["empirical"]["max_auc"][1] == [0.65, 0.57]
    texts = [t.get_text() for t in data.figure.axes[0].texts]
    assert any("non-private" in t and "∞" in t for t in texts)


def test_trend_sorted_by_date_per_variant():
    history = [
        {"run_id": "r2", "date": "2024-03-01T00:00:00Z", "variant": "dp", "max_auc": 0.56},
        {"run_id": "r1", "date": "2024-02-01", "variant": "dp", "metrics": {"max_auc": 0.55}},
        {"run_id": "r1", "date": "2024-02-01", "variant": "non_private", "max_auc": 0.7,
         "max_attacker_advantage": 0.3},
    ]
    data = plots.plot_trend(history)
    assert data.panels["max_auc"]["dp"] == (["2024-02-01", "2024-03-01T00:00:00Z"], [0.55, 0.56])
    assert data.panels["max_attacker_advantage"] == {"non_private": (["2024-02-01"], [0.3])}
    assert data.panels["epsilon_lower_bound"] == {}


def test_matplotlib_text_is_not_interpreted():
    assert plots.mpl_text("a$b$c") == r"a\$b\$c"
    assert plots.mpl_text("_hidden") == " _hidden"
    docs = make_results_docs(("dp",))
    for d in docs:
        d["metadata"]["model_variant"] = "$\\alpha$_x"
    data = plots.plot_by_epoch(load.group_by_variant(docs))
    data.png_bytes()  # mathtext would have rendered or failed on a bare '$'
