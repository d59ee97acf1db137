"""Plots of the privacy report. Each function returns a `PlotData`: the numbers it drew and the figure.

Tests check the numbers (`PlotData.panels`), the report embeds the figure. Figures are built on
matplotlib's object API with the Agg canvas (no pyplot, no global state, no display needed).

Panels map a series key to (x list, y list). Series keys are the variant name, or
(variant, attack) in the by-epoch plot. Missing values are None in the data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from privacy_audit.components.privacy_report import dp_region
from privacy_audit.components.privacy_report.load import (
    HEADLINE_FPR,
    AttackResult,
    ResultsFile,
    VariantResults,
    slice_sort_key,
)

METRICS = ("auc", "attacker_advantage")
METRIC_LABELS = {
    "auc": "Attack AUC",
    "attacker_advantage": "Attacker advantage",
    "max_auc": "Max attack AUC",
    "max_attacker_advantage": "Max attacker advantage",
    "max_tpr_at_fpr_0.001": "TPR at 0.1% FPR",
    "epsilon_lower_bound": "Empirical ε lower bound",
}
TREND_METRICS = ("max_auc", "max_attacker_advantage", "epsilon_lower_bound")

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728", "#17becf", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22")
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")

Series = dict[Hashable, tuple[list, list]]


@dataclasses.dataclass
class PlotData:
    """What a plot shows.

    Attributes:
      name: file stem of the PNG ("epoch_plot", ...).
      title: figure title.
      panels: panel name (usually a metric) -> series key -> (x values, y values).
      figure: the matplotlib Figure (Agg canvas).
      meta: plot-specific facts, e.g. which slice the ROC plot chose per variant.
    """

    name: str
    title: str
    panels: dict[str, Series]
    figure: Figure
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def png_bytes(self, dpi: int = 110) -> bytes:
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        return buf.getvalue()


# --------------------------------------------------------------------------- helpers


def mpl_text(text: Any) -> str:
    """Make a data string safe for matplotlib: '$' would start mathtext, a leading '_' hides a legend entry."""
    s = str(text).replace("$", r"\$")
    return " " + s if s.startswith("_") else s


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _variant_colors(names: Sequence[str]) -> dict[str, str]:
    return {name: _COLORS[i % len(_COLORS)] for i, name in enumerate(names)}


def _metric(result: AttackResult, metric: str) -> float | None:
    if metric == "tpr_at_fpr_0.001":
        return result.tpr_at(HEADLINE_FPR)
    return getattr(result, metric)


def _max_or_none(values) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _files_by_epoch(variant: VariantResults) -> dict[int, list[ResultsFile]]:
    by_epoch: dict[int, list[ResultsFile]] = {}
    for f in variant.files:
        if f.epoch is not None:
            by_epoch.setdefault(f.epoch, []).append(f)
    return dict(sorted(by_epoch.items()))


def most_vulnerable(results: Sequence[AttackResult], require_roc: bool = False) -> AttackResult | None:
    """The result with the highest AUC (ties: higher advantage, then slice order, then attack name)."""
    candidates = [r for r in results if r.roc_fpr or not require_roc]
    if not candidates:
        return None
    return min(candidates, key=lambda r: (-r.auc, -r.attacker_advantage, slice_sort_key(r.slice), r.attack))


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#666666")
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------- (1) by epoch


def epoch_series(variants: Mapping[str, VariantResults], metric: str) -> Series:
    """(variant, attack) -> (epochs ascending, max of `metric` over slices at that epoch).

    Files with no epoch (e.g. a one-off attack on saved outputs) are left out. Several files at
    one epoch (an epoch file and the final file) are pooled.
    """
    series: Series = {}
    for name, variant in variants.items():
        attacks = sorted({r.attack for f in variant.files for r in f.results})
        by_epoch = _files_by_epoch(variant)
        for attack in attacks:
            xs, ys = [], []
            for epoch, files in by_epoch.items():
                value = _max_or_none(_metric(r, metric) for f in files for r in f.results if r.attack == attack)
                if value is not None:
                    xs.append(epoch)
                    ys.append(value)
            if xs:
                series[(name, attack)] = (xs, ys)
    return series


def plot_by_epoch(variants: Mapping[str, VariantResults], metrics: Sequence[str] = METRICS) -> PlotData:
    """Attack AUC and attacker advantage by epoch, one line per (variant, attack), max over slices.

    The plot of the TF Privacy codelab's `privacy_report.plot_by_epochs`.
    """
    panels = {m: epoch_series(variants, m) for m in metrics}
    colors = _variant_colors(list(variants))
    attacks = sorted({k[1] for s in panels.values() for k in s})
    styles = {a: i for i, a in enumerate(attacks)}
    fig = _new_figure(5.2 * len(metrics), 4.0)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        series = panels[metric]
        for (variant, attack), (xs, ys) in series.items():
            i = styles[attack]
            ax.plot(xs, ys, color=colors[variant], linestyle=_LINESTYLES[i % len(_LINESTYLES)],
                    marker=_MARKERS[i % len(_MARKERS)], markersize=4,
                    label=mpl_text(f"{variant} · {attack}"))
        ax.set_title(METRIC_LABELS.get(metric, metric))
        ax.set_xlabel("Epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (max over slices)")
        ax.grid(True, alpha=0.3)
        if not series:
            _no_data(ax, "no per-epoch results")
        elif metric == metrics[-1]:
            ax.legend(fontsize=8, loc="best")
    title = "Membership-inference vulnerability by training epoch"
    fig.suptitle(title)
    return PlotData("epoch_plot", title, panels, fig)


# --------------------------------------------------------------------------- (2) privacy vs utility


def privacy_vs_accuracy_series(variants: Mapping[str, VariantResults], metric: str) -> Series:
    """variant -> (test accuracy, max of `metric` over slices and attacks), one point per evaluated model.

    Points are sorted by test accuracy (then epoch), as in TF Privacy's `plot_privacy_vs_accuracy`.
    Models without a recorded test accuracy are left out.
    """
    series: Series = {}
    for name, variant in variants.items():
        # One point per evaluated model: files at the same epoch are one model.
        models: dict[Any, list[ResultsFile]] = {}
        for f in variant.files:
            models.setdefault(f.epoch if f.epoch is not None else ("file", f.source), []).append(f)
        points = []
        for key, files in models.items():
            accuracy = next((f.accuracy_test for f in reversed(files) if f.accuracy_test is not None), None)
            value = _max_or_none(_metric(r, metric) for f in files for r in f.results)
            if accuracy is not None and value is not None:
                epoch = key if isinstance(key, int) else -1
                points.append((accuracy, epoch, value))
        points.sort()
        if points:
            series[name] = ([p[0] for p in points], [p[2] for p in points])
    return series


def plot_privacy_vs_accuracy(
    variants: Mapping[str, VariantResults], metrics: Sequence[str] = METRICS
) -> PlotData:
    """Privacy against utility: max attack AUC / advantage against test accuracy, one line per variant."""
    panels = {m: privacy_vs_accuracy_series(variants, m) for m in metrics}
    colors = _variant_colors(list(variants))
    fig = _new_figure(5.2 * len(metrics), 4.0)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        series = panels[metric]
        for variant, (xs, ys) in series.items():
            ax.plot(xs, ys, color=colors[variant], marker="o", markersize=4, label=mpl_text(variant))
            final = variants[variant].final
            if final.accuracy_test is not None:
                value = _max_or_none(_metric(r, metric) for r in final.results)
                ax.plot([final.accuracy_test], [value], color=colors[variant], marker="*", markersize=13,
                        linestyle="none")
        ax.set_title(f"{METRIC_LABELS.get(metric, metric)} vs test accuracy")
        ax.set_xlabel("Test accuracy")
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (max over slices and attacks)")
        ax.grid(True, alpha=0.3)
        if not series:
            _no_data(ax, "no test accuracy recorded")
        elif metric == metrics[-1]:
            handles, labels = ax.get_legend_handles_labels()
            handles.append(Line2D([], [], color="#444444", marker="*", markersize=11, linestyle="none"))
            labels.append("final model")
            ax.legend(handles, labels, fontsize=8, loc="best")
    title = "Privacy vs utility"
    fig.suptitle(title)
    return PlotData("privacy_vs_accuracy", title, panels, fig)


# --------------------------------------------------------------------------- (3) ROC


def _entire_dataset_rocs(variant: VariantResults) -> dict[str, AttackResult]:
    """attack -> the final model's entire-data-set result with a ROC curve."""
    return {r.attack: r for r in variant.final.results
            if r.slice.get("feature") == "entire_dataset" and r.roc_fpr}


def _log_roc_axes(ax, floor: float) -> None:
    ax.plot([floor, 1], [floor, 1], color="#888888", linestyle="--", linewidth=1, label="random guess")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.grid(True, which="both", alpha=0.25)


def _draw_dp_region(ax, profile, floor: float) -> dict[str, list[float]]:
    """Shades what the variant's DP guarantee forbids (above tpr_max) and draws its edge."""
    grid = np.geomspace(floor, 1.0, 240)
    upper = dp_region.max_tpr(grid, profile)
    ax.fill_between(grid, np.maximum(upper, floor), 1.0, color="#7f7f7f", alpha=0.18, linewidth=0,
                    label="forbidden by its DP guarantee")
    ax.plot(grid, np.maximum(upper, floor), color="#333333", linewidth=1.0)
    return {"fpr": grid.tolist(), "tpr_max": upper.tolist()}


def _draw_points(ax, results, floor: float, colors: Mapping[str, str]) -> list[dict[str, Any]]:
    """The resolvable reported points (TPR at each FPR target) with their 95% TPR intervals."""
    drawn = []
    for r in results:
        for key, tpr in r.tpr_at_fpr.items():
            interval = r.tpr_interval(float(key))
            if tpr is None or interval is None or r.tpr_unresolved(float(key)):
                continue
            x = max(r.tpr_at_fpr_achieved_fpr.get(key, float(key)), floor)
            lo, hi = max(interval[0], floor), max(interval[1], floor)
            ax.errorbar([x], [max(tpr, floor)], yerr=[[max(tpr, floor) - lo], [hi - max(tpr, floor)]], fmt="o",
                        markersize=3.5, capsize=2, color=colors.get(r.attack, "#000000"), linewidth=1)
            drawn.append({"attack": r.attack, "fpr": x, "tpr": tpr, "interval": list(interval)})
    return drawn


def plot_roc(variants: Mapping[str, VariantResults],
             dp_profiles: Mapping[str, Sequence[tuple[float, float]]] | None = None) -> PlotData:
    """ROC curves on log-log axes of the final models: first the most vulnerable slice of each variant, then
    one panel per variant with every attack on the entire data set.

    The most vulnerable slice is the (slice, attack) with the highest AUC among results with a
    ROC curve. Log-log axes show the low-FPR region, where a membership inference is trustworthy.
    `meta["selected"][variant]` = {"slice", "attack", "auc", "epoch"}; `panels["by_attack"]` =
    {(variant, attack): (fpr, tpr)} and `meta["by_attack"][variant][attack]` = {"auc", "tpr_at_fpr"}.
    `dp_profiles`: variant -> the accountant's [(ε, δ)] (dp_region.privacy_profile); each such variant's
    panel shades what its DP guarantee forbids (`meta["dp_region"][variant]` = {"fpr", "tpr_max"}) and draws
    the reported TPR-at-FPR points with their intervals (`meta["points"][variant]`).
    """
    series: Series = {}
    selected = {}
    by_attack: Series = {}
    by_attack_meta: dict[str, dict[str, Any]] = {}
    for name, variant in variants.items():
        best = most_vulnerable(variant.final.results, require_roc=True)
        if best is not None:
            series[name] = (list(best.roc_fpr), list(best.roc_tpr))
            selected[name] = {"slice": best.slice_label, "attack": best.attack, "auc": best.auc,
                              "epoch": variant.final.epoch}
        rocs = _entire_dataset_rocs(variant)
        by_attack_meta[name] = {}
        for attack in sorted(rocs):
            r = rocs[attack]
            by_attack[(name, attack)] = (list(r.roc_fpr), list(r.roc_tpr))
            by_attack_meta[name][attack] = {"auc": r.auc, "tpr_at_fpr": dict(r.tpr_at_fpr)}
    colors = _variant_colors(list(variants))
    attacks = sorted({a for _, a in by_attack})
    attack_colors = {a: _COLORS[i % len(_COLORS)] for i, a in enumerate(attacks)}
    n_panels = 1 + len(variants)
    fig = _new_figure(5.2 * n_panels, 4.6)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    positive = [v for fpr, tpr in list(series.values()) + list(by_attack.values())
                for v in list(fpr) + list(tpr) if v > 0]
    floor = min(min(positive, default=1e-3), 1e-3) / 2
    ax = axes[0]
    _log_roc_axes(ax, floor)
    for name, (fpr, tpr) in series.items():
        s = selected[name]
        # Log axes cannot show 0: clamp to the floor so the curve starts at the axis edge.
        ax.plot([max(v, floor) for v in fpr], [max(v, floor) for v in tpr], color=colors[name],
                label=mpl_text(f"{name}: {s['slice']} · {s['attack']} (AUC {s['auc']:.3f})"))
    if not series:
        _no_data(ax, "no ROC curves recorded")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Most vulnerable slice (final model)", fontsize=10)
    dp_meta: dict[str, Any] = {}
    points_meta: dict[str, Any] = {}
    for ax, name in zip(axes[1:], variants):
        _log_roc_axes(ax, floor)
        if dp_profiles and dp_profiles.get(name):
            dp_meta[name] = _draw_dp_region(ax, dp_profiles[name], floor)
            points_meta[name] = _draw_points(ax, _entire_dataset_rocs(variants[name]).values(), floor,
                                             attack_colors)
        for attack, meta in by_attack_meta[name].items():
            fpr, tpr = by_attack[(name, attack)]
            t1 = meta["tpr_at_fpr"].get("0.01")
            label = f"{attack} (AUC {meta['auc']:.3f}" + (f", TPR@1% {t1:.3f})" if t1 is not None else ")")
            ax.plot([max(v, floor) for v in fpr], [max(v, floor) for v in tpr], color=attack_colors[attack],
                    label=mpl_text(label))
        if not by_attack_meta[name]:
            _no_data(ax, "no entire-data-set ROC")
        ax.legend(fontsize=7.5, loc="lower right")
        ax.set_title(mpl_text(f"{name}: every attack, entire data set"), fontsize=10)
    title = "ROC curves of the final models (log-log)"
    fig.suptitle(title)
    return PlotData("roc_curves", title, {"roc": series, "by_attack": by_attack}, fig,
                    {"selected": selected, "by_attack": by_attack_meta, "dp_region": dp_meta, "points": points_meta})


# --------------------------------------------------------------------------- (4) per-slice heat map


def slice_matrix(final: ResultsFile, metric: str = "auc") -> tuple[list[str], list[str], list[list]]:
    """(slice labels, attacks, values[slice][attack]) for one model; max if a pair repeats, None if absent."""
    slices: dict[str, Mapping] = {}
    for r in final.results:
        slices.setdefault(r.slice_label, r.slice)
    slice_labels = sorted(slices, key=lambda label: slice_sort_key(slices[label]))
    attacks = sorted({r.attack for r in final.results})
    cells: dict[tuple[str, str], float] = {}
    for r in final.results:
        value = _metric(r, metric)
        if value is None:
            continue
        key = (r.slice_label, r.attack)
        cells[key] = max(value, cells.get(key, value))
    matrix = [[cells.get((s, a)) for a in attacks] for s in slice_labels]
    return slice_labels, attacks, matrix


def plot_slice_heatmap(variants: Mapping[str, VariantResults], metric: str = "auc") -> PlotData:
    """Heat map of `metric` per slice (rows) and attack (columns) on each variant's final model.

    panels[variant][attack] = (slice labels, values); meta[variant] = {"slices", "attacks", "values"}.
    """
    panels: dict[str, Series] = {}
    meta: dict[str, Any] = {}
    for name, variant in variants.items():
        slices, attacks, matrix = slice_matrix(variant.final, metric)
        panels[name] = {a: (list(slices), [row[j] for row in matrix]) for j, a in enumerate(attacks)}
        meta[name] = {"slices": slices, "attacks": attacks, "values": matrix}
    n_rows = max((len(m["slices"]) for m in meta.values()), default=1)
    n_cols = max((len(m["attacks"]) for m in meta.values()), default=1)
    width = max(3.2, 1.0 + 1.1 * n_cols) * len(variants)
    fig = _new_figure(max(width, 5.0), max(2.5, 1.2 + 0.32 * n_rows))
    axes = fig.subplots(1, max(len(variants), 1), squeeze=False)[0]
    image = None
    for ax, name in zip(axes, variants):
        m = meta[name]
        values = [[math.nan if v is None else v for v in row] for row in m["values"]]
        image = ax.imshow(values, cmap="YlOrRd", vmin=0.5, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(m["attacks"])), [mpl_text(a) for a in m["attacks"]], rotation=30,
                      ha="right", fontsize=8)
        ax.set_yticks(range(len(m["slices"])), [mpl_text(s) for s in m["slices"]], fontsize=8)
        if len(m["slices"]) * len(m["attacks"]) <= 400:
            for i, row in enumerate(m["values"]):
                for j, v in enumerate(row):
                    text = "–" if v is None else f"{v:.2f}"
                    dark = v is not None and v > 0.8
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
        epoch = variants[name].final.epoch
        ax.set_title(mpl_text(name if epoch is None else f"{name} (epoch {epoch})"), fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label=METRIC_LABELS.get(metric, metric))
    title = f"{METRIC_LABELS.get(metric, metric)} per slice and attack (final model)"
    fig.suptitle(title)
    return PlotData("slice_heatmap", title, panels, fig, meta)


# --------------------------------------------------------------------------- (5) DP ε vs empirical


def plot_epsilon_comparison(variant_rows: Sequence[Mapping[str, Any]]) -> PlotData:
    """DP ε of each variant (accountant's upper bound) beside its empirical leakage.

    Args:
      variant_rows: summary.json "variants" entries (see summary.build_summary): name, private,
        epsilon, max_auc, max_attacker_advantage, "max_tpr_at_fpr_0.001", epsilon_lower_bound.
    panels["epsilon"] = {"dp_epsilon": (names, ε or inf), "epsilon_lower_bound": (names, values)};
    panels["empirical"] = {metric: (names, values)}.
    """
    names = [row["name"] for row in variant_rows]
    dp_eps = [math.inf if row.get("epsilon") is None else row["epsilon"] for row in variant_rows]
    lower = [row.get("epsilon_lower_bound") for row in variant_rows]
    audit = [row.get("one_run_audit_epsilon_lower_bound") for row in variant_rows]
    empirical_keys = ("max_auc", "max_attacker_advantage", "max_tpr_at_fpr_0.001")
    panels = {
        "epsilon": {"dp_epsilon": (names, dp_eps), "epsilon_lower_bound": (names, lower),
                    "one_run_audit_epsilon_lower_bound": (names, audit)},
        "empirical": {k: (names, [row.get(k) for row in variant_rows]) for k in empirical_keys},
    }
    fig = _new_figure(11.0, 4.0)
    ax_eps, ax_emp = fig.subplots(1, 2)
    xs = list(range(len(names)))
    has_audit = any(v is not None for v in audit)
    width = 0.27 if has_audit else 0.38
    offsets = (-width, 0.0, width) if has_audit else (-width / 2, width / 2)
    finite = [v for v in dp_eps + lower + audit if v is not None and math.isfinite(v)]
    top = max(finite, default=1.0) * 1.25 or 1.0
    for i, (eps, lb, au) in enumerate(zip(dp_eps, lower, audit)):
        if math.isinf(eps):
            why = "(no noise)" if variant_rows[i].get("private") else "(non-private)"
            ax_eps.bar(i + offsets[0], top, width, color="white", edgecolor="#d62728", hatch="//")
            ax_eps.text(i + offsets[0], top * 0.55, f"ε = ∞\n{why}", ha="center", va="center",
                        fontsize=10, fontweight="bold", color="#b3261e",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 2})
        else:
            ax_eps.bar(i + offsets[0], eps, width, color="#1f77b4")
            ax_eps.text(i + offsets[0], eps, f"{eps:.3g}", ha="center", va="bottom", fontsize=8)
        for value, x, color in ((lb, i + offsets[1], "#ff7f0e"),
                                (au if has_audit else None, i + offsets[-1], "#2ca02c")):
            if value is not None:
                shown = min(value, top)
                ax_eps.bar(x, shown, width, color=color)
                ax_eps.text(x, shown, f"{value:.3g}", ha="center", va="bottom", fontsize=8)
    ax_eps.set_ylim(0, top * 1.08)
    ax_eps.set_xticks(xs, [mpl_text(n) for n in names], fontsize=9)
    ax_eps.set_ylabel("ε")
    ax_eps.set_title("DP ε (accountant, upper bound) vs empirical ε lower bound", fontsize=10)
    handles = [Line2D([], [], color="#1f77b4", linewidth=8, label="DP ε (upper bound)"),
               Line2D([], [], color="#ff7f0e", linewidth=8, label="empirical ε lower bound (attacks)")]
    if has_audit:
        handles.append(Line2D([], [], color="#2ca02c", linewidth=8, label="one-run audit ε lower bound"))
    ax_eps.legend(handles=handles, fontsize=8, loc="upper right")
    bar_w = 0.8 / len(empirical_keys)
    emp_colors = ("#9467bd", "#2ca02c", "#8c564b")
    for k, key in enumerate(empirical_keys):
        values = panels["empirical"][key][1]
        offsets = [i - 0.4 + bar_w * (k + 0.5) for i in xs]
        ax_emp.bar(offsets, [v or 0.0 for v in values], bar_w, color=emp_colors[k],
                   label=METRIC_LABELS[key])
        for x, v in zip(offsets, values):
            ax_emp.text(x, v or 0.0, "–" if v is None else f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax_emp.set_ylim(0, 1.1)
    ax_emp.set_xticks(xs, [mpl_text(n) for n in names], fontsize=9)
    ax_emp.set_title("Empirical leakage of the final model (max over slices and attacks)", fontsize=10)
    ax_emp.legend(fontsize=8, loc="upper right")
    for ax in (ax_eps, ax_emp):
        ax.grid(True, axis="y", alpha=0.3)
    title = "Differential privacy guarantee vs measured leakage"
    fig.suptitle(title)
    return PlotData("epsilon_comparison", title, panels, fig)


# --------------------------------------------------------------------------- (6) trend over runs


def parse_date(value: str) -> dt.datetime:
    """ISO date or datetime -> aware datetime (naive values are taken as UTC; 'Z' accepted)."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed


def trend_series(history: Sequence[Mapping[str, Any]], metric: str) -> Series:
    """variant -> (dates ascending as given, metric values) from trend entries.

    An entry is {"run_id", "date" (ISO), "variant", <metric>: f} (metrics may also sit under
    "metrics"). Entries without the metric are left out.
    """
    points: dict[str, list] = {}
    for entry in history:
        metrics = entry.get("metrics", entry)
        value = metrics.get(metric)
        if value is None:
            continue
        points.setdefault(str(entry["variant"]), []).append((parse_date(str(entry["date"])), entry["date"], value))
    return {v: ([p[1] for p in sorted(ps, key=lambda p: p[0])], [p[2] for p in sorted(ps, key=lambda p: p[0])])
            for v, ps in points.items()}


def plot_trend(history: Sequence[Mapping[str, Any]], metrics: Sequence[str] = TREND_METRICS) -> PlotData:
    """Headline metrics over run dates, one line per variant (scheduled retraining audits)."""
    panels = {m: trend_series(history, m) for m in metrics}
    names = list(dict.fromkeys(str(e["variant"]) for e in history))
    colors = _variant_colors(names)
    fig = _new_figure(4.0 * len(metrics), 3.6)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    all_dates = [parse_date(d) for series in panels.values() for dates, _ in series.values() for d in dates]
    for ax, metric in zip(axes, metrics):
        for variant, (dates, ys) in panels[metric].items():
            ax.plot([parse_date(d) for d in dates], ys, color=colors[variant], marker="o", markersize=4,
                    label=mpl_text(variant))
        if all_dates and max(all_dates) - min(all_dates) < dt.timedelta(seconds=2):
            # Date locators cannot tick a zero-width range: widen it to a day.
            ax.set_xlim(min(all_dates) - dt.timedelta(hours=12), max(all_dates) + dt.timedelta(hours=12))
        ax.set_title(METRIC_LABELS.get(metric, metric))
        ax.set_xlabel("Run date")
        ax.grid(True, alpha=0.3)
        locator = mdates.AutoDateLocator(maxticks=6)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.tick_params(axis="x", labelsize=8)
        if not panels[metric]:
            _no_data(ax, "no earlier runs")
        elif metric == metrics[0]:
            ax.legend(fontsize=8, loc="best")
    title = "Trend across audit runs"
    fig.suptitle(title)
    return PlotData("trend", title, panels, fig)
