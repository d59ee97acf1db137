"""Plots and the HTML report from attack results JSON (the evaluator's, or PrivacyMetrics').

    from privacy_audit import report
    plot = report.plot_by_epoch(report.find_results("results/"))
    report.save_plot(plot, "epoch_plot.png")
    report.write_report("report/", report.find_results("results/"), ledgers=[...])

``results`` everywhere: paths of results JSON files, parsed results dicts, or a mix; variants are
told apart by ``metadata.model_variant``. Each plot returns a ``PlotData`` whose ``panels`` hold the
numbers drawn.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, List, Sequence

from privacy_audit.components.privacy_report import plots as _plots
from privacy_audit.components.privacy_report.html_report import ReportOutputs, write_report  # noqa: F401
from privacy_audit.components.privacy_report.load import group_by_variant, read_ledger  # noqa: F401
from privacy_audit.components.privacy_report.plots import METRICS, PlotData  # noqa: F401


def find_results(directory: str) -> List[str]:
    """Sorted paths of the results JSON files (``*.json``) directly in ``directory``."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"results directory not found: {directory}")
    return sorted(os.path.join(directory, n) for n in os.listdir(directory)
                  if n.endswith(".json") and not n.startswith("."))


def plot_by_epoch(results: Iterable[Any], metrics: Sequence[str] = METRICS) -> PlotData:
    """Attack AUC and attacker advantage by epoch, one line per (variant, attack), max over slices
    (TF Privacy's ``privacy_report.plot_by_epochs``)."""
    return _plots.plot_by_epoch(group_by_variant(results), metrics)


def plot_privacy_vs_accuracy(results: Iterable[Any], metrics: Sequence[str] = METRICS) -> PlotData:
    """Max attack AUC / advantage against test accuracy, one line per variant
    (TF Privacy's ``privacy_report.plot_privacy_vs_accuracy``)."""
    return _plots.plot_privacy_vs_accuracy(group_by_variant(results), metrics)


def save_plot(plot: PlotData, path: str, dpi: int = 110) -> str:
    """Writes ``plot`` as PNG to ``path`` (temporary name, then rename); returns ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(plot.png_bytes(dpi=dpi))
    os.replace(tmp, path)
    return path


__all__ = ["PlotData", "ReportOutputs", "find_results", "plot_by_epoch", "plot_privacy_vs_accuracy",
           "read_ledger", "save_plot", "write_report"]
