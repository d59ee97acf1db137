"""Issue 12 layout: the per-slice tables fit a 1280-px-wide page, measured in headless Chromium, and the banner
says "no privacy gate configured" when no threshold was set."""

from __future__ import annotations

import html
import importlib.util
import json
import pathlib
import re

import numpy as np
import pytest

from privacy_audit.components.membership_inference import metrics as M
from privacy_audit.components.privacy_report.html_report import write_report

ROOT = pathlib.Path(__file__).resolve().parents[1]
ATTACKS = ("threshold", "threshold_entropy", "logistic_regression", "random_forest", "lira", "lira_offline",
           "rmia", "rmia_offline")
# Measures, after layout, how far each table reaches and whether its scroll box overflows.
_MEASURE = """<script>
const out = [];
for (const t of document.querySelectorAll('table')) {
  const box = t.parentElement;
  out.push({cls: t.className, right: t.getBoundingClientRect().right, width: window.innerWidth,
            overflow: box.scrollWidth - box.clientWidth});
}
const pre = document.createElement('pre');
pre.id = 'layout';
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>"""


def _docs():
    rng = np.random.default_rng(0)
    results = []
    for cls in [None] + list(range(10)):
        spec = {"feature": "entire_dataset"} if cls is None else {"feature": "class", "value": cls}
        n = 900 if cls is None else 90
        for attack in ATTACKS:
            scores = np.r_[rng.normal(0.2, 1, n), rng.normal(0, 1, n)]
            entry = M.attack_metrics(scores, np.r_[np.ones(n), np.zeros(n)].astype(bool),
                                     fpr_targets=(0.01, 0.001, 0.0001))
            results.append({"slice": spec, "attack": attack, **entry})
    return [{"schema_version": 1, "results": results,
             "metadata": {"model_variant": "a_rather_long_variant_name_dp_eps1", "epoch": 40, "is_final": True,
                          "epsilon": None, "accuracy_train": 0.9, "accuracy_test": 0.88}}]


@pytest.fixture(scope="module")
def chromium():
    spec = importlib.util.spec_from_file_location("screenshot_report", ROOT / "scripts" / "screenshot_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module.find_chromium() is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium); cannot measure the layout")
    return module


def measure_tables(chromium, html_path: str, tmp_path, width: int = 1280) -> list[dict]:
    """Renders a copy of the report (CSP lifted so the measuring script runs) in a `width`-px window."""
    page = pathlib.Path(html_path).read_text(encoding="utf-8")
    page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page)
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
    exe = chromium.find_chromium()
    dom = chromium._run_chromium(exe, ["--dump-dom", f"--window-size={width},3000"], str(probe), 120).stdout
    return json.loads(html.unescape(re.search(r'<pre id="layout">(.*?)</pre>', dom, re.S).group(1)))


@pytest.mark.medium
def test_per_slice_tables_fit_1280_px_and_banner_is_truthful(tmp_path, chromium):
    out = write_report(tmp_path / "out", _docs())
    page = pathlib.Path(out.html_path).read_text(encoding="utf-8")
    assert "No privacy gate configured" in page and "passed the privacy gate" not in page
    tables = measure_tables(chromium, out.html_path, tmp_path)
    compact = [t for t in tables if "compact" in t["cls"]]
    assert len(compact) == 2  # the per-slice table and the all-results table
    for t in tables:  # the per-slice tables, and every other table of the page too
        assert t["width"] == 1280
        assert t["overflow"] <= 0 and t["right"] <= t["width"], t
