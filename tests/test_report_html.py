"""PrivacyReportGenerator core: report.html, summary.json, atomic writes, escaping, Chromium rendering."""

from __future__ import annotations

import html.parser
import importlib.util
import json
import os
import pathlib

import pytest

from privacy_audit.components.privacy_report import html_report
from privacy_audit.components.privacy_report.html_report import write_report
from privacy_audit.components.privacy_report.load import ReportInputError
from privacy_audit.components.privacy_report.summary import text_summary

try:
    from test_report_plots import make_ledger_docs, make_results_doc, make_results_docs, write_json
except ImportError:  # tests/ imported as a package
    from tests.test_report_plots import make_ledger_docs, make_results_doc, make_results_docs, write_json

ROOT = pathlib.Path(__file__).resolve().parents[1]
PLOTS = {"epsilon_comparison", "epoch_plot", "privacy_vs_accuracy", "roc_curves", "slice_heatmap"}


def _load_screenshot_script():
    spec = importlib.util.spec_from_file_location("screenshot_report", ROOT / "scripts" / "screenshot_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_inputs(tmp_path, docs=None, ledgers=None):
    docs = make_results_docs() if docs is None else docs
    ledgers = make_ledger_docs() if ledgers is None else ledgers
    results = [write_json(tmp_path / "in" / f"r{i}.json", d) for i, d in enumerate(docs)]
    ledger_paths = [write_json(tmp_path / "in" / f"ledger_{d['model_variant']}.json", d) for d in ledgers]
    return results, ledger_paths


@pytest.mark.medium
def test_report_files_and_summary_values(tmp_path):
    results, ledgers = _write_inputs(tmp_path)
    out = write_report(tmp_path / "out", results, ledgers, title="Audit", generated_at="2024-06-01T12:00:00+00:00")
    names = set(os.listdir(tmp_path / "out"))
    assert names == {"report.html", "summary.json"} | {f"{p}.png" for p in PLOTS}
    for p in PLOTS:
        assert (tmp_path / "out" / f"{p}.png").read_bytes()[:4] == b"\x89PNG"

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary == out.summary
    rows = {r["name"]: r for r in summary["variants"]}
    assert list(rows) == ["non_private", "dp"]
    np_row, dp_row = rows["non_private"], rows["dp"]
    # Final model = epoch 6; maxima over slices and attacks (hand-computed from the fixture formula).
    assert np_row["max_auc"] == pytest.approx(0.65) and dp_row["max_auc"] == pytest.approx(0.57)
    assert np_row["max_attacker_advantage"] == pytest.approx(1.6 * 0.15)
    # 90 non-members per slice cannot resolve 0.1% FPR: the headline TPR is null, not the fixture's 0.016.
    assert np_row["max_tpr_at_fpr_0.001"] is None and np_row["max_tpr_at_fpr_0.001_significant"] is None
    assert np_row["test_accuracy"] == 0.88 and dp_row["test_accuracy"] == 0.79
    assert np_row["final_epoch"] == 6 and np_row["epsilon_lower_bound"] == pytest.approx(1.5)
    assert np_row["most_vulnerable"]["slice_label"] == "class=1"
    # No gate configured: blessed.
    assert np_row["blessed"] is True and np_row["gate_evaluated"] is False
    # ε and δ are the ledgers' final values; non-private ε is null (infinite).
    for row in (np_row, dp_row):
        ledger = json.loads(pathlib.Path(ledgers[[ "non_private", "dp"].index(row["name"])]).read_text())
        assert row["epsilon"] == ledger["epsilon"] and row["delta"] == ledger["delta"]
        assert row["private"] is ledger["private"]
    assert dp_row["epsilon"] == 2.5 and np_row["epsilon"] is None
    assert summary["generated_at"] == "2024-06-01T12:00:00+00:00" and summary["title"] == "Audit"
    assert summary["warnings"] == []

    text = text_summary(summary)
    assert "non_private: ε=∞ (non-private)" in text and "dp: ε=2.5, δ=1e-05" in text and "max AUC 0.650" in text


@pytest.mark.medium
def test_page_is_self_contained_and_complete(tmp_path):
    results, ledgers = _write_inputs(tmp_path)
    out = write_report(tmp_path / "out", results, ledgers)
    page = pathlib.Path(out.html_path).read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == len(PLOTS)
    for bad in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert bad not in page
    srcs = [part.split('"', 1)[0] for part in page.split('src="')[1:]]
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for heading in ("Summary of final models", "What the metrics mean", "Vulnerability during training",
                    "Privacy vs utility", "ROC curves", "Per-slice vulnerability"):
        assert heading in page
    assert "∞ (non-private)" in page and "TPR @ 0.1% FPR" in page and "no gate" in page


@pytest.mark.medium
def test_blessings_and_gate_failures(tmp_path):
    results, ledgers = _write_inputs(tmp_path)
    failure = {"slice": {"feature": "class", "value": 1}, "attack": "threshold", "metric": "auc",
               "value": 0.64, "threshold": 0.6}
    blessing_path = write_json(tmp_path / "b" / "blessing.json", {"blessed": False, "failures": [failure]})
    out = write_report(tmp_path / "out", results, ledgers,
                       blessings={"non_private": blessing_path, "dp": True})
    rows = {r["name"]: r for r in out.summary["variants"]}
    assert rows["non_private"]["blessed"] is False and rows["non_private"]["gate_failures"] == [failure]
    assert rows["dp"]["blessed"] is True and out.summary["all_blessed"] is False
    page = pathlib.Path(out.html_path).read_text(encoding="utf-8")
    assert "not blessed" in page and "Privacy gate failures" in page and "1 of 2 gated variant(s) failed" in page

    # An iterable of blessings must name their variant.
    with pytest.raises(ReportInputError, match="model_variant"):
        write_report(tmp_path / "out2", results, ledgers, blessings=[{"blessed": True}])


@pytest.mark.medium
def test_data_values_are_escaped(tmp_path):
    evil_variant = "<script>alert(1)</script>"
    evil_feature = '<img src=x onerror="alert(2)">'
    docs = make_results_docs(("dp",))
    for d in docs:
        d["metadata"]["model_variant"] = evil_variant
        d["results"][0]["slice"] = {"feature": evil_feature, "value": "<b>&'\"</b>"}
        d["results"][0]["attack"] = "<i>attack</i>"
    ledgers = make_ledger_docs(("dp",))
    ledgers[0]["model_variant"] = evil_variant
    out = write_report(tmp_path / "out", docs, ledgers, title="<em>title</em>",
                       blessings={evil_variant: {"blessed": False, "failures": [
                           {"slice": {"feature": evil_feature}, "attack": "<u>x</u>", "metric": "<s>m</s>",
                            "value": 0.9, "threshold": "<q>t</q>"}]}})
    page = pathlib.Path(out.html_path).read_text(encoding="utf-8")
    for raw in (evil_variant, evil_feature, "<b>&'\"</b>", "<i>attack</i>", "<em>title</em>", "<u>x</u>",
                "<s>m</s>", "<q>t</q>"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page
    assert "<title>&lt;em&gt;title&lt;/em&gt;</title>" in page
    assert out.summary["variants"][0]["name"] == evil_variant  # JSON keeps the data as is


def test_bad_input_names_file_and_writes_nothing(tmp_path):
    docs = make_results_docs()
    docs[1]["results"][2]["attacker_advantage"] = 1.5
    results, ledgers = _write_inputs(tmp_path, docs)
    with pytest.raises(ReportInputError) as err:
        write_report(tmp_path / "out", results, ledgers)
    assert results[1] in str(err.value) and "results[2].attacker_advantage" in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.medium
def test_failed_write_keeps_previous_report(tmp_path, monkeypatch):
    results, ledgers = _write_inputs(tmp_path)
    out_dir = tmp_path / "out"
    write_report(out_dir, results, ledgers, generated_at="2024-01-01T00:00:00+00:00")
    before = {name: (out_dir / name).read_bytes() for name in os.listdir(out_dir)}

    from privacy_audit.components.common import io as io_lib

    real_write_plain = io_lib._write_plain
    calls = []

    def failing_write_plain(path, data):
        # The I/O layer writes every file of the report to a temporary name first; fail on summary.json's.
        calls.append(os.path.basename(path))
        if "summary.json" in os.path.basename(path):
            raise OSError("disk full")
        return real_write_plain(path, data)

    monkeypatch.setattr(io_lib, "_write_plain", failing_write_plain)
    with pytest.raises(OSError, match="disk full"):
        write_report(out_dir, results, ledgers, generated_at="2025-01-01T00:00:00+00:00")
    assert len(calls) > 1
    after = {name: (out_dir / name).read_bytes() for name in os.listdir(out_dir)}
    assert after == before  # nothing replaced, no temporary file left behind


@pytest.mark.medium
def test_trend_plot_with_history_and_stale_png_removed(tmp_path):
    results, ledgers = _write_inputs(tmp_path)
    history = [{"run_id": "run-1", "date": "2024-05-01T00:00:00+00:00", "variant": "dp",
                "max_auc": 0.55, "max_attacker_advantage": 0.08, "epsilon_lower_bound": 0.5},
               {"run_id": "run-1", "date": "2024-05-01T00:00:00+00:00", "variant": "non_private",
                "max_auc": 0.6, "max_attacker_advantage": 0.16, "epsilon_lower_bound": 1.0}]
    out = write_report(tmp_path / "out", results, ledgers, history,
                       generated_at="2024-06-01T00:00:00+00:00", run_id="run-2")
    assert (tmp_path / "out" / "trend.png").exists()
    trend = out.plots["trend"].panels["max_auc"]
    assert trend["dp"] == (["2024-05-01T00:00:00+00:00", "2024-06-01T00:00:00+00:00"],
                           [0.55, pytest.approx(0.57)])
    assert out.summary["trend"][-1]["run_id"] == "run-2"
    assert "Trend across audit runs" in pathlib.Path(out.html_path).read_text(encoding="utf-8")

    # Next run without history: the old trend.png would contradict the new report, so it goes.
    write_report(tmp_path / "out", results, ledgers)
    assert not (tmp_path / "out" / "trend.png").exists()


@pytest.mark.medium
def test_variant_without_ledger_warns_and_uses_metadata(tmp_path):
    out = write_report(tmp_path / "out", make_results_docs(), make_ledger_docs(("non_private",)))
    rows = {r["name"]: r for r in out.summary["variants"]}
    assert rows["dp"]["epsilon"] == 2.5 and rows["dp"]["private"] is True
    assert any("no privacy ledger" in w for w in out.summary["warnings"])
    assert "Warnings" in pathlib.Path(out.html_path).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- Chromium


class _DomText(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_title:
            self.title += data


@pytest.fixture(scope="module")
def chromium():
    script = _load_screenshot_script()
    exe = script.find_chromium()
    if exe is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium); cannot render the report")
    return script


@pytest.mark.medium
def test_chromium_renders_script_names_as_text(tmp_path, chromium):
    payload = "<script>document.title='pwned'</script>"
    docs = make_results_docs(("dp",))
    for d in docs:
        d["metadata"]["model_variant"] = payload
        d["results"][0]["slice"] = {"feature": payload, "value": 1}
    ledgers = make_ledger_docs(("dp",))
    ledgers[0]["model_variant"] = payload
    out = write_report(tmp_path / "out", docs, ledgers, title="XSS check")

    dom = chromium.dump_dom(out.html_path)
    parsed = _DomText()
    parsed.feed(dom)
    assert parsed.title == "XSS check"  # the injected script did not run
    assert "script" not in parsed.tags and "img" in parsed.tags
    text = "".join(parsed.text)
    assert payload in text  # shown as text, literally
    assert f"{payload}=1" in text  # the slice label too

    png = chromium.screenshot(out.html_path, str(tmp_path / "shot.png"), width=1280, height=2000)
    data = pathlib.Path(png).read_bytes()
    assert data[:4] == b"\x89PNG" and len(data) > 20_000


@pytest.mark.medium
def test_screenshot_script_demo(tmp_path, chromium):
    shot = tmp_path / "demo.png"
    assert chromium.main(["--demo", str(tmp_path / "demo"), "--output", str(shot), "--height", "1500"]) == 0
    assert shot.read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert {r["name"] for r in summary["variants"]} == {"non_private", "dp_eps3"}


def test_results_doc_helper_is_valid():
    # Guards the shared fixture against drifting from the results schema.
    from privacy_audit.components.membership_inference.results import validate_results

    validate_results(make_results_doc("dp", 2, is_final=False))
