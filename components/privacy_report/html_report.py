"""The privacy report: one self-contained HTML page, its plots as PNG files, and summary.json.

The page has no external reference at all (plots are base64 data URIs, CSS is inline, and a
Content-Security-Policy forbids scripts and network loads), so it can be archived or mailed as
one file. Every value that comes from the data is escaped with `html.escape`: a slice or variant
named "<script>…" shows as text.

Outputs are written to temporary names in the output directory and renamed only when all of them are
complete (common.io.write_files, on any scheme), so a crash never leaves a half-written file and an
earlier run's report stays intact until the new one is ready.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from privacy_audit.components.common import io
from privacy_audit.components.membership_inference.results import to_jsonable
from privacy_audit.components.privacy_report import plots as plots_lib
from privacy_audit.components.privacy_report.load import (
    HEADLINE_FPR,
    Blessing,
    Ledger,
    PathOrDict,
    ReportInputError,
    ResultsFile,
    VariantResults,
    group_by_variant,
    index_ledgers,
    read_blessing,
    slice_label,
)
from privacy_audit.components.privacy_report.summary import (
    AUDIT_KEY,
    TPR_KEY,
    build_summary,
    format_epsilon,
    format_number,
    resolved_tpr,
)

from privacy_audit.components.common.layout import REPORT_FILE, SUMMARY_FILE  # noqa: E402,F401
# Every PNG the report can write; a stale one from an earlier run is removed after a new report.
PLOT_NAMES = ("epsilon_comparison", "epoch_plot", "privacy_vs_accuracy", "roc_curves", "slice_heatmap", "trend")

METRIC_EXPLANATIONS = (
    ("DP ε (δ)", "The formal differential-privacy guarantee of training, computed by the privacy accountant "
                 "for the given δ: smaller is more private, and ∞ means the model was trained without DP and "
                 "has no formal guarantee."),
    ("Attack AUC", "Area under the ROC curve of a membership-inference attack that tries to tell training "
                   "examples (members) from unseen ones (non-members): 0.5 is random guessing, 1.0 is perfect "
                   "inference. With few examples, a model that leaks nothing still shows AUCs around 0.5 "
                   "(“without leakage”: 0.5 ± 2 standard deviations for the slice's size); the maximum over "
                   "many small slices and attacks lands near the top of that band by chance."),
    ("Attacker advantage", "The largest gap |TPR − FPR| over all attack thresholds, i.e. how much better than "
                           "chance the attacker separates members from non-members (0 = no leakage, 1 = total)."),
    ("TPR @ 0.1% FPR", "The share of training members the attacker identifies while wrongly flagging only 0.1% "
                       "of non-members: the confident, low-false-alarm regime that matters for a real attack."),
    ("Empirical ε lower bound", "The smallest ε consistent with the attack's measured true- and false-positive "
                                "rates; it can never exceed a correct DP ε, so a larger value points to a bug."),
    ("One-run audit ε ≥", "The privacy audit with one training run (Steinke, Nasr, Jagielski 2023): canaries "
                          "(training examples with a wrong label) each included with probability 1/2 in one more "
                          "training run of the same recipe; the correct membership guesses prove ε at least this "
                          "large at the stated confidence. Above the accountant's ε, the DP training is broken and "
                          "the model is not blessed."),
    ("f-DP one-run audit", "The same canaries analysed with the f-DP audit of Mahloujifar, Melis and Chaudhuri "
                           "(2024): it tests the claim that training is as private as a Gaussian mechanism with the "
                           "stated (ε, δ), whose trade-off curve is tighter than the worst case (ε, δ) mechanism "
                           "Steinke et al.'s analysis assumes, so it proves larger lower bounds from the same guesses."),
    ("DP region", "For a private variant, the part of the ROC plane its guarantee allows (shaded boundary on the "
                  "ROC plots): TPR ≤ min over δ of e^ε(δ)·FPR + δ, and the mirror bound, with ε(δ) the accountant's "
                  "privacy profile. A variant is DP-consistent when every resolvable measured point, with its "
                  "interval (simultaneous over all points), stays inside; outside means the training leaks more "
                  "than its ε allows."),
    ("Intervals, unresolved", "95% intervals: DeLong for AUCs, Clopper–Pearson for TPRs (of the chosen threshold). "
                              "A TPR at an FPR below 1 / (number of non-members) is “unresolved” and never a "
                              "number. “Above no-leakage band” marks a maximum that stays significant after Holm's "
                              "correction over all slices × attacks (5% family-wise error); “within noise” one that "
                              "does not."),
    ("LiRA, RMIA", "Attacks with reference models, each trained with the same recipe on a random subset of the "
                   "members and non-members as large as the training set: "
                   "they compare each example's output with how models that did and did not train on it behave "
                   "(LiRA: Carlini et al. 2022; RMIA: Zarifzadeh et al. 2024), and are much stronger than the "
                   "threshold attack at low false-positive rates."),
    ("PPV", "Positive predictive value: the fraction of examples the attacker calls members that really are."),
    ("Blessed", "Whether the final model passed the privacy thresholds of the evaluator's gate "
                "(“no gate” when no thresholds were configured)."),
)

_CSS = """
:root { --ink:#1d2330; --muted:#5b6475; --line:#dfe3ea; --bg:#f6f7f9; --accent:#1f5fbf;
        --ok:#1e7d3a; --ok-bg:#e3f4e8; --bad:#b3261e; --bad-bg:#fbe6e4; --warn-bg:#fff4d6; }
* { box-sizing: border-box; }
body { margin:0; font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "DejaVu Sans", sans-serif;
       color:var(--ink); background:var(--bg); font-size:15px; line-height:1.45; }
header { background:#17233a; color:#fff; padding:28px 40px 22px; }
header h1 { margin:0 0 6px; font-size:26px; font-weight:600; overflow-wrap:break-word; }
header .meta { color:#c5cedd; margin:0; font-size:14px; }
main { max-width:1280px; margin:0 auto; padding:8px 40px 40px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; margin:22px 0; padding:20px 24px; }
h2 { font-size:19px; margin:0 0 10px; color:#17233a; }
h3 { font-size:16px; margin:22px 0 8px; overflow-wrap:break-word; }
p.lead { color:var(--muted); margin:0 0 12px; }
.verdict { display:inline-block; margin-top:14px; padding:6px 14px; border-radius:999px; font-weight:600; font-size:14px; }
.verdict.none { background:#eceff3; color:#333a48; }
.verdict.ok { background:var(--ok-bg); color:var(--ok); } .verdict.bad { background:var(--bad-bg); color:var(--bad); }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; width:100%; font-size:14px; }
th, td { padding:7px 9px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:#eef1f6; font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.name { overflow-wrap:anywhere; font-weight:600; min-width:110px; max-width:240px; }
.badge { display:inline-block; padding:2px 9px; border-radius:999px; font-size:12.5px; font-weight:600; white-space:nowrap; }
.badge.ok { background:var(--ok-bg); color:var(--ok); } .badge.bad { background:var(--bad-bg); color:var(--bad); }
.badge.none { background:#eceff3; color:var(--muted); }
.badge.dp { background:#e4eefc; color:var(--accent); } .badge.nodp { background:#fdeee0; color:#a04a00; }
dl.metrics { display:grid; grid-template-columns: 220px 1fr; gap:8px 18px; margin:0; }
dl.metrics dt { font-weight:600; } dl.metrics dd { margin:0; color:#333a48; }
figure { margin:6px 0 0; } figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; }
figcaption { color:var(--muted); font-size:13.5px; margin-top:6px; }
.warnings { background:var(--warn-bg); }
.side { display:flex; gap:24px; align-items:flex-start; flex-wrap:wrap; }
.side > div:first-child { flex: 0 1 620px; } .side > div:last-child { flex: 1 1 300px; min-width: 0; }
.side h3 { margin-top:4px; }
.small { font-size:13px; color:var(--muted); }
details summary { cursor:pointer; color:var(--accent); margin:10px 0 6px; font-size:14px; }
code { font-family: "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size:12.5px; overflow-wrap:anywhere; }
table.dense { font-size:13px; } table.dense th, table.dense td { padding:5px 6px; }
table.dense th { white-space:normal; font-size:12.5px; }
table.dense td.name { min-width:80px; max-width:170px; }
table.compact { font-size:13px; table-layout:fixed; }
table.compact th, table.compact td { padding:5px 6px; }
table.compact th { overflow-wrap:anywhere; white-space:normal; font-size:12.5px; }
table.compact td.num { white-space:nowrap; overflow:hidden; text-overflow:ellipsis; }
table.compact td.slice { overflow-wrap:anywhere; }
.ci { display:block; font-size:11.5px; color:var(--muted); font-weight:normal; }
.unres { color:var(--muted); font-size:12px; font-style:italic; }
.dpnote { margin:6px 0; } .dpnote .badge { margin-right:6px; }
footer { color:var(--muted); font-size:12.5px; max-width:1240px; margin:0 auto; padding:0 40px 30px; }
"""


@dataclasses.dataclass
class ReportOutputs:
    """Paths written by `write_report`, the summary object and the plotted data."""

    output_dir: str
    html_path: str
    summary_path: str
    plot_paths: dict[str, str]
    summary: dict[str, Any]
    plots: dict[str, plots_lib.PlotData]


def _e(value: Any) -> str:
    """HTML-escape any value taken from data."""
    return html.escape(str(value), quote=True)


def normalize_blessings(
    blessings: Mapping[str, Any] | Iterable[PathOrDict | Blessing] | None,
) -> dict[str, Blessing]:
    """Blessings keyed by variant.

    Accepts {variant: Blessing | bool | blessing dict | path} or an iterable of Blessing / blessing
    dicts / paths that name their "model_variant".
    """
    if not blessings:
        return {}
    out: dict[str, Blessing] = {}
    if isinstance(blessings, Mapping):
        for variant, value in blessings.items():
            if isinstance(value, bool):
                value = Blessing(source="<argument>", blessed=value, failures=(), thresholds={},
                                 model_variant=variant)
            out[str(variant)] = read_blessing(value, model_variant=str(variant))
        return out
    for value in blessings:
        blessing = read_blessing(value)
        if blessing.model_variant is None:
            raise ReportInputError(blessing.source, "model_variant",
                                   "missing: cannot tell which model variant this blessing is for")
        out[blessing.model_variant] = blessing
    return out


# --------------------------------------------------------------------------- HTML pieces


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _figure(png: bytes | None, alt: str, caption: str) -> str:
    if png is None:
        return ""
    return f"<figure>{_img(png, alt)}<figcaption>{caption}</figcaption></figure>"


def _gate_badge(row: Mapping[str, Any]) -> str:
    if not row.get("gate_configured", row.get("gate_evaluated")):
        return '<span class="badge none">no gate</span>'
    if row.get("blessed"):
        return '<span class="badge ok">blessed</span>'
    return '<span class="badge bad">not blessed</span>'


def _lower_bound_text(row: Mapping[str, Any]) -> str:
    if row.get("epsilon_lower_bound_infinite"):
        return "∞"
    return format_number(row.get("epsilon_lower_bound"), 2)


def _epsilon_cell(row: Mapping[str, Any]) -> str:
    text = _e(format_epsilon(row.get("epsilon"), row.get("private")))
    if row.get("delta") is not None:
        delta = format(row["delta"], ".2g")
        text += f'<br><span class="small">δ = {_e(delta)}</span>'
    return text


def _audit_cell(row: Mapping[str, Any]) -> str:
    """The one-run audit's bound, with the claim it was tested against (the accountant's ε of the audit
    run at the audit's δ, which may be smaller than the ledger's)."""
    audit = row.get("one_run_audit")
    if not audit:
        return "–"
    text = _e(format_number(audit.get("epsilon_lower_bound"), 2))
    if audit.get("fdp_epsilon_lower_bound") is not None:
        text += (f'<span class="ci">Steinke et al.; f-DP (Mahloujifar et al.): '
                 f'{_e(format_number(audit["fdp_epsilon_lower_bound"], 2))}</span>')
    details = []
    if audit.get("accountant_epsilon") is not None:
        details.append(f"vs ε = {format_number(audit['accountant_epsilon'], 2)}")
    if audit.get("delta") is not None:
        details.append(f"δ = {format(audit['delta'], '.1g')}")
    if audit.get("confidence") is not None:
        details.append(f"{format(audit['confidence'], '.0%')} conf.")
    if audit.get("n_canaries") is not None:
        details.append(f"{audit['n_canaries']} canaries")
    if details:
        text += f'<br><span class="small">{_e(", ".join(details))}</span>'
    if audit.get("violated"):
        text += '<br><span class="badge bad">exceeds ε: DP broken</span>'
    return text


def _interval_text(interval: Sequence[float] | None, digits: int = 3) -> str:
    if not interval:
        return ""
    return f'<span class="ci">[{_e(format_number(interval[0], digits))}, {_e(format_number(interval[1], digits))}]</span>'


def _value_with_interval(value: float | None, interval: Sequence[float] | None, unresolved: bool = False,
                         digits: int = 3) -> str:
    """A number with its 95% interval below it; "unresolved" (never a number) when the slice's
    non-members cannot resolve the FPR."""
    if unresolved:
        return '<span class="unres">unresolved</span>'
    return _e(format_number(value, digits)) + _interval_text(interval, digits)


def _headline_cells(row: Mapping[str, Any]) -> str:
    """The entire data set's best attack: AUC and TPR at 1% / 0.1% FPR with 95% intervals."""
    h = row.get("entire_dataset")
    if not h:
        return "<td>–</td><td class=num>–</td><td class=num>–</td><td class=num>–</td>"
    unresolved = set(h.get("tpr_at_fpr_unresolved") or [])
    return (f"<td>{_e(h['attack'])}</td>"
            f"<td class=num>{_value_with_interval(h.get('auc'), h.get('auc_interval'))}</td>"
            f"<td class=num>{_value_with_interval(h.get('tpr_at_fpr_0.01'), h.get('tpr_at_fpr_0.01_interval'), '0.01' in unresolved)}</td>"
            f"<td class=num>{_value_with_interval(h.get('tpr_at_fpr_0.001'), h.get('tpr_at_fpr_0.001_interval'), '0.001' in unresolved)}</td>")


def _significance_note(flag: Any) -> str:
    if flag is None:
        return ""
    text = "above no-leakage band" if flag else "within noise"
    return f'<span class="ci">{text}</span>'


def _dp_cell(row: Mapping[str, Any]) -> str:
    if not row.get("private"):
        return "–"
    flag = row.get("dp_consistent")
    if flag is None:
        return '<span class="badge none">no ledger</span>'
    return '<span class="badge ok">inside</span>' if flag else '<span class="badge bad">outside: DP broken</span>'


def _dp_region_notes(rows: Sequence[Mapping[str, Any]]) -> str:
    """One plain sentence per private variant: inside its DP region or not, and why not."""
    notes = []
    for r in rows:
        if not r.get("private"):
            continue
        info = r.get("dp_consistency") or {}
        name = _e(r["name"])
        if r.get("dp_consistent") is None:
            notes.append(f'<p class="dpnote"><span class="badge none">?</span>{name}: no privacy ledger with '
                         "DP events, so its DP region cannot be drawn.</p>")
        elif r["dp_consistent"]:
            checked = (info.get("region") or {}).get("points_checked", 0)
            inside = (info.get("region") or {}).get("intervals_inside", 0)
            notes.append(f'<p class="dpnote"><span class="badge ok">DP-consistent</span>{name}: none of its '
                         f"{checked} resolvable attack points lies outside the region its DP guarantee allows "
                         f"beyond its interval (simultaneous 95%; {inside} of them have their whole interval "
                         "inside), and no empirical ε lower bound exceeds the accountant's ε.</p>")
        else:
            reasons = "; ".join(_e(x) for x in info.get("reasons", [])[:5])
            more = len(info.get("reasons", [])) - 5
            notes.append(f'<p class="dpnote"><span class="badge bad">NOT DP-consistent</span>{name}: the run leaks '
                         f"more than its DP guarantee allows, so the DP training or its accounting is broken: "
                         f"{reasons}{f' (and {more} more)' if more > 0 else ''}.</p>")
    return "".join(notes)


def _summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    # The one-run audit column only when some variant ran the audit (DPTrainer audit_canaries).
    audited = any(r.get("one_run_audit") for r in rows)
    head = ("<tr><th>Variant</th><th class=num>DP ε</th>"
            + ("<th class=num>One-run audit ε ≥</th>" if audited else "")
            + "<th class=num>Test accuracy</th>"
            "<th>Entire data set: best attack</th><th class=num>AUC [95% CI]</th>"
            "<th class=num>TPR @ 1% FPR</th><th class=num>TPR @ 0.1% FPR</th>"
            "<th class=num>Max AUC over slices</th><th class=num>Max advantage</th>"
            "<th class=num>ε lower bound</th><th>DP region</th><th>Most vulnerable slice</th><th>Blessed</th></tr>")
    body = []
    for r in rows:
        training = ('<span class="badge dp">DP-SGD</span>' if r.get("private")
                    else '<span class="badge nodp">non-private</span>')
        worst = r.get("most_vulnerable")
        worst_text = "–" if not worst else (f"{_e(worst['slice_label'])}<br>"
                                            f"<span class=small>{_e(worst['attack'])}{_noise_note(worst)}</span>")
        body.append(
            f"<tr><td class=name>{_e(r['name'])}<br>{training}</td>"
            f"<td class=num>{_epsilon_cell(r)}</td>"
            + (f"<td class=num>{_audit_cell(r)}</td>" if audited else "")
            + f"<td class=num>{_e(format_number(r.get('test_accuracy')))}</td>"
            + _headline_cells(r)
            + f"<td class=num>{_e(format_number(r.get('max_auc')))}{_significance_note(r.get('max_auc_significant'))}</td>"
            f"<td class=num>{_e(format_number(r.get('max_attacker_advantage')))}</td>"
            f"<td class=num>{_e(_lower_bound_text(r))}</td>"
            f"<td>{_dp_cell(r)}</td>"
            f"<td>{worst_text}</td><td>{_gate_badge(r)}</td></tr>")
    return f'<div class="scroll"><table class="dense">{head}{"".join(body)}</table></div>'


def _metrics_list() -> str:
    items = "".join(f"<dt>{name}</dt><dd>{text}</dd>" for name, text in METRIC_EXPLANATIONS)
    return f'<dl class="metrics">{items}</dl>'


def _auc_cell(value: float | None, worst: bool) -> str:
    if value is None:
        return "<td class=num>–</td>"
    # Shade from white (0.5, random guessing) to red (1.0, perfect inference); a number, not data text.
    alpha = min(max((value - 0.5) / 0.5, 0.0), 1.0) * 0.75
    style = f' style="background:rgba(214,39,40,{alpha:.2f})"'
    text = _e(format_number(value))
    return f"<td class=num{style}>{'<b>' + text + '</b>' if worst else text}</td>"


def _slice_table(final: ResultsFile) -> str:
    """Per-slice table of one model: AUC per attack, then the slice's worst other metrics."""
    slices, attacks, matrix = plots_lib.slice_matrix(final, "auc")
    by_slice: dict[str, list] = {}
    for r in final.results:
        by_slice.setdefault(r.slice_label, []).append(r)
    worst = max((v for row in matrix for v in row if v is not None), default=None)
    head = ("<tr><th style=\"width:11%\">Slice</th><th class=num>Members</th><th class=num>Non-members</th>"
            + "".join(f"<th class=num>AUC: {_e(a)}</th>" for a in attacks)
            + "<th class=num>Max advantage</th><th class=num>Max TPR @ 0.1% FPR</th>"
              "<th class=num>Max ε lower bound</th></tr>")
    body = []
    for label, row in zip(slices, matrix):
        rs = by_slice[label]
        members = next((r.n_members for r in rs if r.n_members is not None), None)
        nonmembers = next((r.n_nonmembers for r in rs if r.n_nonmembers is not None), None)
        bounds = [r.epsilon_lower_bound for r in rs if r.epsilon_lower_bound is not None]
        lb = max(bounds) if bounds else None
        tprs = [t for t in (resolved_tpr(r, HEADLINE_FPR) for r in rs) if t is not None]
        unresolved = all(r.tpr_unresolved(HEADLINE_FPR) for r in rs)
        body.append(
            f"<tr><td class=slice>{_e(label)}</td>"
            f"<td class=num>{_e('–' if members is None else members)}</td>"
            f"<td class=num>{_e('–' if nonmembers is None else nonmembers)}</td>"
            + "".join(_auc_cell(v, v is not None and v == worst) for v in row)
            + f"<td class=num>{_e(format_number(max(r.attacker_advantage for r in rs)))}</td>"
              f"<td class=num>{_value_with_interval(max(tprs) if tprs else None, None, unresolved)}</td>"
              f"<td class=num>{_e('∞' if lb is not None and math.isinf(lb) else format_number(lb, 2))}</td></tr>")
    return f'<div class="scroll"><table class="compact">{head}{"".join(body)}</table></div>'


def _skipped_note(final: ResultsFile) -> str:
    if not final.skipped_slices:
        return ""
    items = []
    for s in final.skipped_slices:
        spec = s.get("slice")
        label = slice_label(spec) if isinstance(spec, Mapping) else str(spec)
        items.append(f"{_e(label)} ({_e(s.get('reason', 'no reason given'))})")
    return f'<p class="small">Slices not attacked: {"; ".join(items)}.</p>'


def _results_table(final: ResultsFile) -> str:
    """Every (slice, attack) result of one model, most vulnerable first."""
    head = ("<tr><th>Slice</th><th>Attack</th><th class=num>Members</th><th class=num>Non-members</th>"
            "<th class=num>AUC</th><th class=num>Advantage</th><th class=num>PPV</th>"
            "<th class=num>TPR @ 1% FPR</th><th class=num>TPR @ 0.1% FPR</th><th class=num>ε lower bound</th></tr>")
    ordered = sorted(final.results, key=lambda r: (-r.auc, -r.attacker_advantage, r.slice_label, r.attack))
    body = []
    for r in ordered:
        lb = r.epsilon_lower_bound
        lb_text = "∞" if lb is not None and math.isinf(lb) else format_number(lb, 2)
        body.append(
            f"<tr><td>{_e(r.slice_label)}</td><td>{_e(r.attack)}</td>"
            f"<td class=num>{_e('–' if r.n_members is None else r.n_members)}</td>"
            f"<td class=num>{_e('–' if r.n_nonmembers is None else r.n_nonmembers)}</td>"
            f"<td class=num>{_value_with_interval(r.auc, r.auc_interval)}</td>"
            f"<td class=num>{_e(format_number(r.attacker_advantage))}</td>"
            f"<td class=num>{_e(format_number(r.ppv))}</td>"
            f"<td class=num>{_value_with_interval(r.tpr_at(0.01), r.tpr_interval(0.01), r.tpr_unresolved(0.01))}</td>"
            f"<td class=num>{_value_with_interval(r.tpr_at(HEADLINE_FPR), r.tpr_interval(HEADLINE_FPR), r.tpr_unresolved(HEADLINE_FPR))}</td>"
            f"<td class=num>{_e(lb_text)}</td></tr>")
    return (f"<details><summary>All {len(ordered)} results (slice × attack), most vulnerable first</summary>"
            f'<div class="scroll"><table class="compact">{head}{"".join(body)}</table></div></details>')


def _vulnerable_table(variants: Mapping[str, VariantResults]) -> str:
    """Beside the ROC plot: which slice and attack each curve is, and its low-FPR numbers."""
    body = []
    for name, variant in variants.items():
        r = plots_lib.most_vulnerable(variant.final.results, require_roc=True)
        if r is None:
            continue
        body.append(
            f"<tr><td class=name>{_e(name)}</td><td>{_e(r.slice_label)}</td><td>{_e(r.attack)}</td>"
            f"<td class=num>{_value_with_interval(r.auc, r.auc_interval)}</td>"
            f"<td class=num>{_value_with_interval(r.tpr_at(HEADLINE_FPR), r.tpr_interval(HEADLINE_FPR), r.tpr_unresolved(HEADLINE_FPR))}</td></tr>")
    head = ("<tr><th>Variant</th><th>Slice</th><th>Attack</th><th class=num>AUC</th>"
            "<th class=num>TPR @ 0.1% FPR</th></tr>")
    return f'<div class="scroll"><table>{head}{"".join(body)}</table></div>'


def _noise_note(worst: Mapping[str, Any]) -> str:
    """"; without leakage ≤ 0.586": the top of the no-leakage AUC band (0.5 + 2 null sd) of the most
    vulnerable slice: a max AUC below it is not evidence of leakage (small slices, many attacks)."""
    sd = worst.get("auc_null_sd")
    return "" if sd is None else f"; without leakage ≤ {_e(format_number(0.5 + 2 * sd))}"


def _attacks_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per variant and attack, the final model's entire-data-set AUC and TPR at 1%, 0.1% and 0.01% FPR (the
    last only with >= 10,000 non-members, where it is resolvable)."""
    body = []
    for r in rows:
        for a in r.get("attacks") or []:
            t4 = a.get("tpr_at_fpr_0.0001")
            sd = a.get("auc_null_sd")
            noise = f"{format_number(0.5 - 2 * sd)}–{format_number(0.5 + 2 * sd)}" if sd is not None else "–"
            unres = set(a.get("tpr_at_fpr_unresolved") or [])
            iv = a.get("tpr_at_fpr_interval") or {}
            body.append(
                f"<tr><td class=name>{_e(r['name'])}</td><td>{_e(a['attack'])}</td>"
                f"<td class=num>{_value_with_interval(a.get('auc'), a.get('auc_interval'))}</td><td class=num>{_e(noise)}</td>"
                f"<td class=num>{_value_with_interval(a.get('tpr_at_fpr_0.01'), iv.get('0.01'), '0.01' in unres)}</td>"
                f"<td class=num>{_value_with_interval(a.get('tpr_at_fpr_0.001'), iv.get('0.001'), '0.001' in unres)}</td>"
                f"<td class=num>{_e(format_number(t4, 4) if t4 is not None else '–')}</td></tr>")
    if not body:
        return ""
    head = ("<tr><th>Variant</th><th>Attack</th><th class=num>AUC</th><th class=num>AUC without leakage</th>"
            "<th class=num>TPR @ 1% FPR</th><th class=num>TPR @ 0.1% FPR</th><th class=num>TPR @ 0.01% FPR</th></tr>")
    return (f'<div class="scroll"><table>{head}{"".join(body)}</table></div>'
            '<p class="small">Entire data set, final model. “AUC without leakage”: 0.5 ± 2 standard deviations '
            "of the AUC of an attack that learns nothing, with this many members and non-members — an AUC "
            "inside it is not evidence of leakage. Brackets: 95% intervals (DeLong for the AUC, Clopper–Pearson "
            "for the TPR of the chosen threshold). A TPR at an FPR below 1 / (number of non-members) is "
            "“unresolved”: there, FPR ≤ target means no false positive at all. TPR @ 0.01% FPR needs at least "
            "10,000 non-members to be resolved (fewer: “–”).</p>")


def _pretty_time(value: Any) -> str:
    """"2024-06-01T12:00:00+00:00" -> "2024-06-01 12:00 UTC"; a bare date stays a date."""
    text = str(value)
    try:
        parsed = plots_lib.parse_date(text)
    except ValueError:
        return text
    return parsed.strftime("%Y-%m-%d %H:%M %Z").strip() if "T" in text or " " in text.strip() else text


def _trend_table(trend: Sequence[Mapping[str, Any]]) -> str:
    head = ("<tr><th>Run</th><th>Date</th><th>Variant</th><th class=num>Max AUC</th>"
            "<th class=num>Max advantage</th><th class=num>ε lower bound</th></tr>")
    ordered = sorted(trend, key=lambda t: (plots_lib.parse_date(str(t["date"])), str(t["variant"])))
    body = "".join(
        f"<tr><td><code>{_e(t.get('run_id'))}</code></td><td>{_e(_pretty_time(t.get('date')))}</td><td>{_e(t.get('variant'))}</td>"
        f"<td class=num>{_e(format_number(t.get('max_auc')))}</td>"
        f"<td class=num>{_e(format_number(t.get('max_attacker_advantage')))}</td>"
        f"<td class=num>{_e(format_number(t.get('epsilon_lower_bound'), 2))}</td></tr>"
        for t in ordered)
    return f"<table>{head}{body}</table>"


def _failures_table(rows: Sequence[Mapping[str, Any]]) -> str:
    body = []
    for r in rows:
        for f in r.get("gate_failures", []):
            spec = f.get("slice")
            where = slice_label(spec) if isinstance(spec, Mapping) else ("–" if spec is None else spec)
            value, threshold = f.get("value"), f.get("threshold")
            body.append(
                f"<tr><td class=name>{_e(r['name'])}</td><td>{_e(where)}</td><td>{_e(f.get('attack', '–'))}</td>"
                f"<td>{_e(f.get('metric', '–'))}"
                + (f'<br><span class="small">{_e(f["reason"])}</span>' if f.get("reason") else "") + "</td>"
                f"<td class=num>{_e(format_number(value) if isinstance(value, (int, float)) else value)}</td>"
                f"<td class=num>{_e(format_number(threshold) if isinstance(threshold, (int, float)) else threshold)}"
                f"</td></tr>")
    if not body:
        return ""
    head = ("<tr><th>Variant</th><th>Slice</th><th>Attack</th><th>Metric</th><th class=num>Value</th>"
            "<th class=num>Threshold</th></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def render_html(
    summary: Mapping[str, Any], variants: Mapping[str, VariantResults], pngs: Mapping[str, bytes]
) -> str:
    """The report page (a str), from the summary, the grouped results and the plots' PNG bytes."""
    rows = summary["variants"]
    title = summary.get("title", "Privacy audit report")
    gated = [r for r in rows if r.get("gate_configured", r.get("gate_evaluated"))]
    failed = sum(1 for r in gated if not r["blessed"])
    ungated = f" ({len(rows) - len(gated)} without a gate)" if len(gated) < len(rows) else ""
    if not gated:
        verdict = ('<div class="verdict none">No privacy gate configured: no thresholds were set, so no '
                   "variant was checked</div>")
    elif failed:
        verdict = f'<div class="verdict bad">{failed} of {len(gated)} gated variant(s) failed the privacy gate{ungated}</div>'
    else:
        verdict = f'<div class="verdict ok">All {len(gated)} gated variant(s) passed the privacy gate{ungated}</div>'

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Defence in depth beside escaping: no script, no network, only inline CSS and data: images.
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>",
        f'<p class="meta">Generated {_e(_pretty_time(summary.get("generated_at", "")))} · {len(rows)} model variant(s) · '
        f"membership-inference audit of the final models and of checkpoints during training</p>{verdict}</header>",
        "<main>",
        '<section id="summary"><h2>Summary of final models</h2>',
        '<p class="lead">Each row is one model variant. It leads with the entire data set: the attack with the '
        "highest AUC there, with 95% intervals. Then the maxima over every slice and attack of the final model "
        "(TPRs over resolvable slices only; “above no-leakage band” only when still significant after Holm's "
        "correction over all slices × attacks). ε is the accountant's final value from the training ledger.</p>",
        _summary_table(rows), _dp_region_notes(rows), "</section>",
        '<section id="metrics"><h2>What the metrics mean</h2>', _metrics_list(), "</section>",
    ]
    sections = (
        ("epsilon_comparison", "Privacy guarantee vs measured leakage",
         "Left: the DP ε each variant was trained with (hatched = no DP, ε = ∞) beside the empirical ε lower "
         "bound the attacks prove. Right: the final model's worst-case attack metrics."),
        ("epoch_plot", "Vulnerability during training",
         "Attack AUC and attacker advantage at each evaluated epoch, the maximum over slices, one line per "
         "variant and attack: leakage usually grows as the model fits its training data."),
        ("privacy_vs_accuracy", "Privacy vs utility",
         "The same worst-case metrics against test accuracy, one line per variant through its evaluated "
         "checkpoints (star = final model): a steep line means accuracy gains cost much privacy."),
        ("roc_curves", "ROC curves of the most vulnerable slices and of every attack",
         "Left: ROC curve of each variant's most vulnerable (slice, attack) on the final model. Then, one panel "
         "per variant: every attack on the entire data set. Log-log axes show the low false-positive region; "
         "the dashed diagonal is random guessing. On a private variant's panel the grey area is what its DP "
         "guarantee forbids (from the accountant's privacy profile), and the dots with bars are the reported "
         "TPRs at 1% / 0.1% FPR with their 95% intervals."),
        ("slice_heatmap", "Per-slice vulnerability",
         "Attack AUC for every slice (rows) and attack (columns) of each variant's final model."),
    )
    for name, heading, caption in sections:
        if name in pngs:
            parts.append(f'<section id="{name}"><h2>{heading}</h2>')
            if name == "roc_curves":
                parts.append(_figure(pngs[name], heading, caption))
                parts.append(f'<div class="side"><div><h3>Every attack, entire data set</h3>{_attacks_table(rows)}'
                             f"</div><div><h3>Most vulnerable slice per variant</h3>"
                             f"{_vulnerable_table(variants)}</div></div>")
            else:
                parts.append(_figure(pngs[name], heading, caption))
            if name == "slice_heatmap":
                for vname, variant in variants.items():
                    epoch = variant.final.epoch
                    sub = f" (final model, epoch {_e(epoch)})" if epoch is not None else " (final model)"
                    parts += [f"<h3>{_e(vname)}{sub}</h3>", _slice_table(variant.final),
                              _skipped_note(variant.final), _results_table(variant.final)]
            parts.append("</section>")
    if summary.get("has_history") and "trend" in pngs:
        parts += ['<section id="trend"><h2>Trend across audit runs</h2>',
                  _figure(pngs["trend"], "Trend across audit runs",
                          "Headline metrics of the final models at each audit run, one line per variant."),
                  _trend_table(summary.get("trend", [])), "</section>"]
    failures = _failures_table(rows)
    if failures:
        parts += ['<section id="gate"><h2>Privacy gate failures</h2>',
                  '<p class="lead">Thresholds of the evaluator\'s gate that the final model exceeded.</p>',
                  failures, "</section>"]
    if summary.get("warnings"):
        items = "".join(f"<li>{_e(w)}</li>" for w in summary["warnings"])
        parts += [f'<section id="warnings" class="warnings"><h2>Warnings</h2><ul>{items}</ul></section>']
    inputs = summary.get("inputs", {})
    sources = "".join(f"<li><code>{_e(s)}</code></li>" for s in inputs.get("results", []) + inputs.get("ledgers", []))
    parts += ["</main>",
              f"<footer><details><summary>Input files</summary><ul>{sources}</ul></details>"
              "<p>privacy-audit · PrivacyReportGenerator</p></footer>",
              "</body></html>"]
    return "\n".join(parts)


# --------------------------------------------------------------------------- writing


def write_report(
    output_dir: str | os.PathLike,
    results: Iterable[PathOrDict | ResultsFile],
    ledgers: Iterable[PathOrDict | Ledger] = (),
    history: Sequence[Mapping[str, Any]] | None = None,
    title: str = "Privacy audit report",
    *,
    blessings: Mapping[str, Any] | Iterable[PathOrDict | Blessing] | None = None,
    generated_at: str | None = None,
    run_id: str = "current",
    max_auc_increase: float | None = None,
    history_warnings: Sequence[str] = (),
) -> ReportOutputs:
    """Write report.html, one PNG per plot and summary.json into `output_dir`.

    Args:
      output_dir: created if missing.
      results: attack results files (paths, parsed dicts or load.ResultsFile), any number of
        variants and epochs; variants are told apart by metadata.model_variant.
      ledgers: privacy ledgers (paths, dicts or load.Ledger), matched by model_variant.
      history: trend entries of earlier runs, {"run_id", "date" (ISO), "variant", "max_auc",
        "max_attacker_advantage", "epsilon_lower_bound", ...}; the trend plot appears when given.
      title: page title.
      blessings: gate results, {variant: Blessing | bool | blessing dict | path} or an iterable of
        blessings naming their model_variant; variants without one are "no gate" (blessed true).
      generated_at: ISO time stamp of this run (default: now, UTC).
      run_id: this run's id in the trend.
      max_auc_increase, history_warnings: the drift gate and skipped history files (summary.build_summary).

    Returns:
      ReportOutputs with the written paths, the summary dict and the PlotData of every plot.

    Raises:
      ReportInputError: an input is missing or malformed (names the file and field).
    """
    out = os.fspath(output_dir)
    variants = group_by_variant(results)
    summary = build_summary(variants, index_ledgers(ledgers), normalize_blessings(blessings), history,
                            title=title, generated_at=generated_at, run_id=run_id,
                            max_auc_increase=max_auc_increase, history_warnings=history_warnings)
    # Strict JSON: a non-finite number (an infinite ε lower bound) becomes null.
    summary = to_jsonable(summary)

    plots = [
        plots_lib.plot_epsilon_comparison(summary["variants"]),
        plots_lib.plot_by_epoch(variants),
        plots_lib.plot_privacy_vs_accuracy(variants),
        plots_lib.plot_roc(variants, {r["name"]: [tuple(x) for x in r["dp_consistency"]["profile"]]
                                      for r in summary["variants"] if r.get("dp_consistency")}),
        plots_lib.plot_slice_heatmap(variants),
    ]
    if summary["has_history"]:
        plots.append(plots_lib.plot_trend(summary["trend"]))
    pngs = {p.name: p.png_bytes() for p in plots}
    page = render_html(summary, variants, pngs)
    summary_bytes = json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False).encode("utf-8")

    # Plots first, then summary.json, and report.html last: it is the entry point readers open.
    files = [(io.join(out, f"{name}.png"), data) for name, data in pngs.items()]
    files += [(io.join(out, SUMMARY_FILE), summary_bytes), (io.join(out, REPORT_FILE), page.encode("utf-8"))]
    io.write_files(files)
    for name in PLOT_NAMES:
        if name not in pngs:
            io.remove(io.join(out, f"{name}.png"))
    return ReportOutputs(
        output_dir=out,
        html_path=io.join(out, REPORT_FILE),
        summary_path=io.join(out, SUMMARY_FILE),
        plot_paths={name: io.join(out, f"{name}.png") for name in pngs},
        summary=summary,
        plots={p.name: p for p in plots},
    )
