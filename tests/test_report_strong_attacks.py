"""The report's parts for strong audits: ROC curves of every attack, TPR at 1% / 0.1% / 0.01% FPR (the last
only when resolvable), and the one-run audit's ε lower bound beside the accountant's ε."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from privacy_audit.components.privacy_report import load, plots
from privacy_audit.components.privacy_report.html_report import write_report

try:
    from test_report_plots import make_entry, make_ledger_docs, make_results_docs, write_json
except ImportError:  # tests/ imported as a package
    from tests.test_report_plots import make_entry, make_ledger_docs, make_results_docs, write_json

AUDIT = {"epsilon_lower_bound": 0.41, "accountant_epsilon": 3.6, "ledger_epsilon": 2.5, "confidence": 0.95,
         "delta": 5e-5, "violated": False, "n_canaries": 200, "n_included": 97,
         "message": "consistent: audit lower bound ε >= 0.410 does not exceed the accountant's ε = 3.600"}


def _docs_with_reference_attacks(n_nonmembers=90):
    docs = make_results_docs()
    for d in docs:
        if d["metadata"]["is_final"]:
            extra = [make_entry(d["metadata"]["model_variant"], 6, {"feature": "entire_dataset"}, "threshold")
                     for _ in range(2)]
            for e, name in zip(extra, ("lira", "rmia")):
                e["attack"] = name
                e["auc"] = min(1.0, e["auc"] + 0.1)
                e["tpr_at_fpr"]["0.0001"] = 0.005
            d["results"] += extra
            for e in d["results"]:
                e["n_nonmembers"] = n_nonmembers
    return docs


def _ledgers(audit=AUDIT):
    ledgers = [load.read_ledger(doc) for doc in make_ledger_docs()]
    return [dataclasses.replace(l, one_run_audit=dict(audit)) if l.private else l for l in ledgers]


def test_roc_plot_draws_every_attack_of_the_entire_data_set():
    variants = load.group_by_variant(_docs_with_reference_attacks())
    data = plots.plot_roc(variants)
    assert set(data.panels["by_attack"]) == {(v, a) for v in ("non_private", "dp")
                                             for a in ("threshold", "logistic_regression", "lira", "rmia")}
    lira = next(r for r in variants["dp"].final.results if r.attack == "lira")
    assert data.panels["by_attack"][("dp", "lira")] == (list(lira.roc_fpr), list(lira.roc_tpr))
    assert data.meta["by_attack"]["dp"]["lira"]["auc"] == lira.auc
    assert len(data.figure.axes) == 3  # most vulnerable slice, then one panel per variant
    for ax in data.figure.axes:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = [line.get_label() for line in data.figure.axes[2].get_lines()]
    assert any(label.startswith("rmia (AUC") for label in labels)
    assert data.meta["selected"]["dp"]["attack"] in ("lira", "rmia")  # the most vulnerable is still found


@pytest.mark.parametrize("n_nonmembers, shown", [(90, False), (12000, True)])
@pytest.mark.medium
def test_tpr_at_low_fpr_per_attack_and_0_01pct_only_when_resolvable(tmp_path, n_nonmembers, shown):
    out = write_report(tmp_path / "out", _docs_with_reference_attacks(n_nonmembers), _ledgers())
    rows = {r["name"]: r for r in out.summary["variants"]}
    attacks = {a["attack"]: a for a in rows["dp"]["attacks"]}
    assert set(attacks) == {"threshold", "logistic_regression", "lira", "rmia"}
    final = load.group_by_variant(_docs_with_reference_attacks(n_nonmembers))["dp"].final
    lira = next(r for r in final.results if r.attack == "lira")
    # 90 non-members resolve neither 1% nor 0.1% FPR (fewer than 1/FPR of them): null, never a number.
    assert attacks["lira"]["tpr_at_fpr_0.01"] == (lira.tpr_at(0.01) if shown else None)
    assert attacks["lira"]["tpr_at_fpr_0.001"] == (lira.tpr_at(0.001) if shown else None)
    assert attacks["lira"]["tpr_at_fpr_0.0001"] == (0.005 if shown else None)
    assert attacks["lira"]["tpr_at_fpr_unresolved"] == ([] if shown else ["0.01", "0.001", "0.0001"])
    assert rows["dp"]["max_tpr_at_fpr_0.01"] == (max(r.tpr_at(0.01) for r in final.results) if shown else None)
    page = pathlib.Path(out.html_path).read_text(encoding="utf-8")
    assert "TPR @ 0.01% FPR" in page and "Every attack, entire data set" in page
    assert ("0.0050" in page) is shown


@pytest.mark.medium
def test_summary_and_page_put_the_one_run_audit_beside_epsilon(tmp_path):
    out = write_report(tmp_path / "out", make_results_docs(), _ledgers())
    rows = {r["name"]: r for r in out.summary["variants"]}
    assert rows["dp"]["one_run_audit_epsilon_lower_bound"] == 0.41
    assert rows["dp"]["one_run_audit"]["accountant_epsilon"] == 3.6
    assert rows["non_private"]["one_run_audit_epsilon_lower_bound"] is None
    saved = json.loads(pathlib.Path(out.summary_path).read_text())
    assert saved["variants"][1]["one_run_audit_epsilon_lower_bound"] == 0.41
    page = pathlib.Path(out.html_path).read_text(encoding="utf-8")
    assert "<th class=num>One-run audit ε ≥</th>" in page and "vs ε = 3.60" in page and "200 canaries" in page
    assert "exceeds ε" not in page
    eps = out.plots["epsilon_comparison"].panels["epsilon"]
    assert eps["one_run_audit_epsilon_lower_bound"] == (["non_private", "dp"], [None, 0.41])
    # Without any audit the column is left out.
    plain = write_report(tmp_path / "plain", make_results_docs(), make_ledger_docs())
    assert "<th class=num>One-run audit ε ≥</th>" not in pathlib.Path(plain.html_path).read_text(encoding="utf-8")


@pytest.mark.medium
def test_violated_audit_is_flagged_with_its_reason(tmp_path):
    broken = dict(AUDIT, epsilon_lower_bound=2.4, accountant_epsilon=1.2, violated=True,
                  message="the DP training is broken: the one-run audit proves ε >= 2.400")
    failure = {"slice": None, "slice_name": "one_run_audit", "attack": "one_run_audit",
               "metric": "one_run_audit_epsilon_lower_bound", "value": 2.4, "threshold": 1.2,
               "reason": broken["message"]}
    blessing = write_json(tmp_path / "b" / "blessing.json",
                          {"blessed": False, "failures": [failure], "model_variant": "dp"})
    out = write_report(tmp_path / "out", make_results_docs(), _ledgers(broken), blessings=[blessing])
    rows = {r["name"]: r for r in out.summary["variants"]}
    assert rows["dp"]["blessed"] is False and rows["dp"]["one_run_audit"]["violated"] is True
    page = pathlib.Path(out.html_path).read_text(encoding="utf-8")
    assert "exceeds ε: DP broken" in page and "the DP training is broken" in page


def test_one_run_audit_reader_checks_fields(tmp_path):
    path = write_json(tmp_path / "a.json", dict(AUDIT, violated="no"))
    with pytest.raises(load.ReportInputError, match="violated"):
        load.read_one_run_audit(path)
    assert load.read_one_run_audit(write_json(tmp_path / "b.json", AUDIT))["epsilon_lower_bound"] == 0.41


@pytest.mark.medium
def test_auc_null_sd_matches_permutation_spread_and_reaches_the_page(tmp_path):
    """The no-leakage AUC band: the closed-form null sd of the Mann-Whitney AUC against the spread of
    sklearn's AUC over random member labels (continuous scores, no ties)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from privacy_audit.components.privacy_report.summary import auc_null_sd

    rng = np.random.default_rng(0)
    n1, n0 = 40, 70
    scores = rng.normal(size=n1 + n0)
    labels = np.arange(n1 + n0) < n1
    aucs = [roc_auc_score(rng.permutation(labels), scores) for _ in range(4000)]
    assert auc_null_sd(n1, n0) == pytest.approx(np.std(aucs), rel=0.05)
    assert auc_null_sd(n1, n0) == pytest.approx(((n1 + n0 + 1) / (12 * n1 * n0)) ** 0.5)
    assert auc_null_sd(0, 10) is None and auc_null_sd(None, 10) is None

    out = write_report(tmp_path / "out", _docs_with_reference_attacks(), _ledgers())
    rows = {r["name"]: r for r in out.summary["variants"]}
    lira = next(a for a in rows["dp"]["attacks"] if a["attack"] == "lira")
    sd = auc_null_sd(lira["n_members"], lira["n_nonmembers"])
    assert lira["auc_null_sd"] == pytest.approx(sd)
    page = pathlib.Path(out.html_path).read_text(encoding="utf-8")
    assert "AUC without leakage" in page and f"{0.5 - 2 * sd:.3f}–{0.5 + 2 * sd:.3f}" in page


@pytest.mark.medium
def test_most_vulnerable_slice_carries_its_no_leakage_band(tmp_path):
    from privacy_audit.components.privacy_report.summary import auc_null_sd

    out = write_report(tmp_path / "out", _docs_with_reference_attacks(), _ledgers())
    for row in out.summary["variants"]:
        worst = row["most_vulnerable"]
        assert worst["auc"] == row["max_auc"]
        assert worst["auc_null_sd"] == pytest.approx(auc_null_sd(worst["n_members"], worst["n_nonmembers"]))
        page = pathlib.Path(out.html_path).read_text(encoding="utf-8")
        assert f"without leakage ≤ {0.5 + 2 * worst['auc_null_sd']:.3f}" in page
