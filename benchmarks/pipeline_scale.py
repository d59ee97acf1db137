"""The whole pipeline at scale: ``.venv/bin/python benchmarks/pipeline_scale.py --rows 1000000``.

Generates a CSV of ``--rows`` rows, 20 float features and a 5-class ``label`` (numpy, seed 1; written in
chunks, not timed), then runs

    privacy-audit run --data <csv dir> --label-key label --epochs 3 --model mlp --reference-models 0

(the two default variants, non-private and DP, with the defaults a user gets) in a child process, and
samples the resident memory summed over that process and all its descendants (Beam workers included) every
0.2 s. Prints each component's seconds (from the run's own progress lines) and the peak RSS while it ran, then on the
last line
``pipeline_scale rows=<n> total_seconds=<s> peak_rss_mb=<mb>``. Goal (issue 16): at 1,000,000 rows total
< 600 s and peak < 3 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from rss import PeakRss  # noqa: E402  (benchmarks/rss.py: the one memory sampler)
ROOT = os.path.dirname(HERE)
N_FEATURES, N_CLASSES = 20, 5
DONE = re.compile(r"✓ (\S+) \((\d+)s\)")
STARTED = re.compile(r"▶ (\S+)")


def write_csv(path: str, rows: int, seed: int = 1, chunk: int = 200_000) -> None:
    """Gaussian features with a linear 5-class rule plus noise (Bayes accuracy ~0.9), written in chunks."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(N_FEATURES, N_CLASSES))
    header = ",".join([f"f{i:02d}" for i in range(N_FEATURES)] + ["label"])
    with open(path + ".tmp", "w") as f:
        f.write(header + "\n")
        for start in range(0, rows, chunk):
            m = min(chunk, rows - start)
            x = rng.normal(size=(m, N_FEATURES))
            y = (x @ w + 0.5 * rng.normal(size=(m, N_CLASSES))).argmax(1)
            block = np.column_stack([x, y])
            np.savetxt(f, block, fmt=["%.5f"] * N_FEATURES + ["%d"], delimiter=",")
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--work-dir", default=None, help="default: a temporary directory, removed at the end")
    p.add_argument("--keep", action="store_true", help="keep the data and the run's output")
    p.add_argument("extra", nargs="*", help="more `privacy-audit run` arguments (after --)")
    args = p.parse_args(argv)

    work = args.work_dir or tempfile.mkdtemp(prefix="pipeline_scale_")
    data = os.path.join(work, "csv")
    os.makedirs(data, exist_ok=True)
    csv = os.path.join(data, "data.csv")
    if not os.path.exists(csv):
        t = time.time()
        write_csv(csv, args.rows)
        print(f"generated {args.rows} rows in {time.time() - t:.0f}s ({os.path.getsize(csv) / 1e6:.0f} MB)",
              flush=True)
    out = os.path.join(work, "run")
    shutil.rmtree(out, ignore_errors=True)
    cli = os.path.join(os.path.dirname(sys.executable), "privacy-audit")
    cmd = [cli, "run", "--data", data, "--label-key", "label", "--epochs", str(args.epochs), "--model", "mlp",
           "--reference-models", "0", "--output-dir", out, "--no-cache", *args.extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    rss = PeakRss(proc.pid, interval=0.2)
    seconds = {}
    for line in proc.stdout:
        sys.stdout.write(line)
        started = STARTED.search(line)
        if started:
            rss.phase = started.group(1)
        m = DONE.search(line)
        if m:
            seconds[m.group(1)] = int(m.group(2))
    code = proc.wait()
    total = time.time() - t0
    peak = rss.stop()
    if not args.keep and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    if code != 0:
        print(f"privacy-audit run failed with exit status {code}", file=sys.stderr)
        return code
    for name, s in seconds.items():
        print(f"{name:45s} {s:6d} s   peak {rss.by_phase.get(name, 0) / 2**20:6.0f} MB")
    print(f"pipeline_scale rows={args.rows} total_seconds={total:.0f} peak_rss_mb={peak / 2**20:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
