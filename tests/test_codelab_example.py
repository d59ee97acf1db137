"""The codelab example (pipelines/examples/codelab.py) runs end to end on synthetic CIFAR-shaped data."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from privacy_audit import accounting
from privacy_audit.components.membership_inference.results import read_results

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "pipelines" / "examples" / "codelab.py"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_codelab_on_synthetic_data_writes_plots_and_report(tmp_path):
    run = subprocess.run([sys.executable, str(EXAMPLE), "--synthetic", "--n-train", "100", "--epochs", "2",
                          "--every", "2", "--batch-size", "50", "--dp-batch-size", "50", "--min-slice-size", "5",
                          "--verbose", "0", "--output-dir", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("epoch_plot.png", "privacy_vs_accuracy.png", "report/report.html"):
        assert (tmp_path / name).stat().st_size > 1000
    assert (tmp_path / "epoch_plot.png").read_bytes()[:8] == PNG

    results = {read_results(str(p))["metadata"]["model_variant"]: read_results(str(p))
               for p in sorted((tmp_path / "results").glob("*.json"))}
    assert sorted(results) == ["2 Layers", "3 Layers", "3 Layers DP-Adam"]
    dp = results["3 Layers DP-Adam"]
    # 2 epochs of ceil(100 / 50) Poisson steps at σ = 1.1, δ = the default for N = 100.
    expected = accounting.compute_epsilon(n_examples=100, batch_size=50, noise_multiplier=1.1, steps=4,
                                          delta=accounting.default_delta(100))
    assert dp["metadata"]["epsilon"] == pytest.approx(expected, rel=1e-12)
    assert results["2 Layers"]["metadata"]["epsilon"] is None
    assert {r["attack"] for r in dp["results"]} == {"threshold", "logistic_regression"}
    assert any(r["slice"].get("feature") == "class" for r in dp["results"])

    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert sorted(v["name"] for v in summary["variants"]) == sorted(results)
    ledger = json.loads((tmp_path / "ledger_3_Layers_DP-Adam.json").read_text())
    assert ledger["steps"] == 4 and ledger["noise_multiplier"] == 1.1 and ledger["l2_norm_clip"] == 1.0


@pytest.mark.medium
def test_codelab_without_cifar_asks_for_synthetic(tmp_path):
    run = subprocess.run([sys.executable, str(EXAMPLE), "--output-dir", str(tmp_path)], capture_output=True,
                         text=True, env={"KERAS_HOME": str(tmp_path / "empty"), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2 and "--synthetic" in run.stderr
