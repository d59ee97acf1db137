#!/usr/bin/env python3
"""Render a privacy report (report.html) in headless Chromium: a PNG screenshot and/or the DOM.

    python scripts/screenshot_report.py OUT_DIR/report.html --output report.png
    python scripts/screenshot_report.py --demo /tmp/demo_report --output /tmp/demo_report/screenshot.png
    python scripts/screenshot_report.py OUT_DIR/report.html --dump-dom dom.html

--demo first writes a report from synthetic results (two variants, ten classes, epochs 2..20),
so the page can be checked without running the pipeline. Chromium: Debian package `chromium`
(`apt-get install -y chromium`), or pass --chromium PATH.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from statistics import NormalDist

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# No network, no background services, no first-run UI: the page must render from the file alone.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio")


def find_chromium(explicit: str | None = None) -> str | None:
    """Path of a Chromium/Chrome executable, or None."""
    if explicit:
        return explicit if os.path.exists(explicit) or shutil.which(explicit) else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run_chromium(chromium: str, args: list[str], html_path: str, timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args,
               pathlib.Path(html_path).resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return proc


def screenshot(html_path: str, png_path: str, *, width: int = 1280, height: int = 4000,
               chromium: str | None = None, timeout: float = 120) -> str:
    """Screenshot `html_path` into `png_path` (window width x height pixels). Returns png_path."""
    exe = find_chromium(chromium)
    if exe is None:
        raise FileNotFoundError("no chromium found: apt-get install -y chromium, or pass --chromium PATH")
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    _run_chromium(exe, [f"--screenshot={os.path.abspath(png_path)}", f"--window-size={width},{height}"],
                  html_path, timeout)
    if not os.path.exists(png_path):
        raise RuntimeError(f"chromium reported success but wrote no screenshot at {png_path}")
    return png_path


def dump_dom(html_path: str, *, chromium: str | None = None, timeout: float = 120) -> str:
    """The DOM of the rendered page, serialised by Chromium after loading (scripts, if any, have run)."""
    exe = find_chromium(chromium)
    if exe is None:
        raise FileNotFoundError("no chromium found: apt-get install -y chromium, or pass --chromium PATH")
    return _run_chromium(exe, ["--dump-dom"], html_path, timeout).stdout


# --------------------------------------------------------------------------- demo data


def _binormal_roc(auc: float, n_points: int = 60) -> dict:
    """A smooth ROC with the given AUC (equal-variance binormal model)."""
    normal = NormalDist()
    d = math.sqrt(2) * normal.inv_cdf(min(max(auc, 0.5001), 0.9999))
    fprs = [0.0] + [10 ** (-4 + 4 * i / (n_points - 1)) for i in range(n_points)]
    tprs = [0.0] + [normal.cdf(normal.inv_cdf(min(f, 1 - 1e-12)) + d) if f < 1 else 1.0 for f in fprs[1:]]
    return {"fpr": [round(f, 6) for f in fprs], "tpr": [round(t, 6) for t in tprs]}


def demo_inputs() -> tuple[list[dict], list[dict], list[dict]]:
    """Synthetic results, ledgers and history resembling the digits demo (two variants)."""
    results, ledgers, history = [], [], []
    epochs = list(range(2, 21, 2))
    for variant, growth, eps, acc in (("non_private", 0.012, None, 0.962), ("dp_eps3", 0.0015, 3.02, 0.913)):
        for epoch in epochs:
            entries = []
            for cls in [None] + list(range(10)):
                spec = {"feature": "entire_dataset"} if cls is None else {"feature": "class", "value": cls}
                for attack, bonus in (("threshold", 0.0), ("logistic_regression", 0.006), ("mlp", 0.004)):
                    slice_bonus = 0.0 if cls is None else 0.004 * ((cls * 7) % 10) / (1 + 9 * (eps is not None))
                    auc = min(0.5 + growth * epoch + bonus + slice_bonus, 0.99)
                    roc = _binormal_roc(auc)
                    tpr_at = {f: NormalDist().cdf(NormalDist().inv_cdf(f) + math.sqrt(2) * NormalDist().inv_cdf(auc))
                              for f in (0.01, 0.001)}
                    adv = 2 * NormalDist().cdf(math.sqrt(2) * NormalDist().inv_cdf(auc) / 2) - 1
                    entries.append({
                        "slice": spec, "attack": attack, "n_members": 900 if cls is None else 90,
                        "n_nonmembers": 897 if cls is None else 89, "auc": round(auc, 4),
                        "attacker_advantage": round(adv, 4), "ppv": round(0.5 + adv / 2, 4),
                        "tpr_at_fpr": {"0.01": round(tpr_at[0.01], 5), "0.001": round(tpr_at[0.001], 5)},
                        "epsilon_lower_bound": round(max(0.0, math.log(max(tpr_at[0.01], 1e-9) / 0.01)) * 0.5, 3),
                        "roc": roc})
            train_acc = min(0.999, acc + 0.003 * epoch) if eps is None else acc + 0.01
            results.append({"schema_version": 1, "metadata": {
                "model_variant": variant, "epoch": epoch, "accuracy_train": round(train_acc, 3),
                "accuracy_test": round(acc - 0.25 * math.exp(-epoch / 4), 4), "epsilon": eps,
                "is_final": epoch == epochs[-1]}, "results": entries})
        ledgers.append({"schema_version": 1, "model_variant": variant, "private": eps is not None,
                        "sampling": "poisson", "noise_multiplier": 1.1 if eps else None,
                        "l2_norm_clip": 1.0 if eps else None, "delta": 1e-5 if eps else None,
                        "accountant": "rdp", "events": [], "epochs": [], "steps": 560, "epsilon": eps})
        today = dt.date.today()
        for k in range(3):
            date = (today - dt.timedelta(days=7 * (3 - k))).isoformat()
            history.append({"run_id": f"weekly-{k + 1}", "date": date, "variant": variant,
                            "max_auc": 0.5 + growth * 20 * (0.9 + 0.04 * k),
                            "max_attacker_advantage": growth * 12 * (0.9 + 0.04 * k),
                            "epsilon_lower_bound": growth * 40 * (0.9 + 0.05 * k)})
    return results, ledgers, history


def write_demo_report(output_dir: str) -> str:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from privacy_audit.components.privacy_report.html_report import write_report

    results, ledgers, history = demo_inputs()
    blessings = {"non_private": {"blessed": False, "failures": [
        {"slice": {"feature": "entire_dataset"}, "attack": "logistic_regression", "metric": "auc",
         "value": 0.746, "threshold": 0.6}]}, "dp_eps3": {"blessed": True, "failures": []}}
    out = write_report(output_dir, results, ledgers, history, title="Privacy audit: digits demo",
                       blessings=blessings)
    return out.html_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", nargs="?", help="report.html to render")
    parser.add_argument("--demo", metavar="DIR", help="first write a synthetic demo report into DIR")
    parser.add_argument("--output", "-o", help="screenshot PNG path (default: beside the report)")
    parser.add_argument("--dump-dom", metavar="FILE", help="also write Chromium's rendered DOM to FILE")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--chromium", help="Chromium executable (default: found on PATH)")
    args = parser.parse_args(argv)
    if bool(args.report) == bool(args.demo):
        parser.error("give a report.html or --demo DIR")
    report = write_demo_report(args.demo) if args.demo else args.report
    if not os.path.isfile(report):
        parser.error(f"no such file: {report}")
    png = args.output or os.path.join(os.path.dirname(os.path.abspath(report)), "screenshot.png")
    screenshot(report, png, width=args.width, height=args.height, chromium=args.chromium)
    print(png)
    if args.dump_dom:
        pathlib.Path(args.dump_dom).write_text(dump_dom(report, chromium=args.chromium), encoding="utf-8")
        print(args.dump_dom)
    return 0


if __name__ == "__main__":
    sys.exit(main())
