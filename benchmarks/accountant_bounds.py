"""Time and peak memory of `privacy-audit epsilon` with each accountant on the inputs that hung or ran out of
memory in issue 15, and on ordinary ones.

Every case runs the real command in its own process (`python -m privacy_audit.pipelines.cli epsilon ...`);
its wall time and peak resident memory (ru_maxrss from os.wait4) are measured. The bound the code enforces is
a rule on sizes (accounting.PLD_MAX_WORK), never a timer: this measures that the rule keeps every answer (or
refusal) within 10 s and 2 GB. The machine's load is printed with the figures, since the time scales with it.

Usage:
    python benchmarks/accountant_bounds.py [--cases all|issue] [--limit-seconds 10] [--limit-mb 2048]

The last line printed is ``accountant_bounds: max_cpu_seconds=<s> max_wall_seconds=<s> max_rss_mb=<mb> cases=<n>
within_bounds=<bool>`` (the bounds are checked on CPU time, which a loaded machine does not inflate).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ISSUE_CASES = [  # issue 15, defect 3 (the PLD runs), each with both accountants
    "--n 1000 --batch-size 100 --epochs 1 --noise-multiplier 0.05",
    "--n 1000 --batch-size 100 --epochs 1e9 --noise-multiplier 1",
    "--n 1000 --batch-size 100 --epochs 1 --noise-multiplier 1e-6",
    "--n 1000 --batch-size 100 --epochs 1 --target-epsilon 1e-6",
]
MORE_CASES = [
    "--n 60000 --batch-size 256 --epochs 60 --noise-multiplier 1.1 --delta 1e-5",   # published MNIST figures
    "--n 60000 --batch-size 256 --epochs 60 --target-epsilon 3 --delta 1e-5",
    "--n 924 --batch-size 128 --epochs 40 --target-epsilon 1",                    # the demo's DP variant
    "--n 100 --batch-size 10 --epochs 1 --target-epsilon 5",                      # large q: slow RDP orders
    "--n 1000 --batch-size 1000 --epochs 100 --noise-multiplier 0.8",             # full batch
    "--n 1000 --batch-size 100 --epochs 1 --target-epsilon 1e6",
    "--n 10 --batch-size 10 --steps 1000000000 --noise-multiplier 1e-3",
    "--n 1000000000 --batch-size 1 --epochs 1e6 --noise-multiplier 100",
]


def run_case(args: str, accountant: str):
    """(wall seconds, CPU seconds, peak RSS in MB, exit status, last stderr line) of one command."""
    cmd = [sys.executable, "-m", "privacy_audit.pipelines.cli", "epsilon", *args.split(), "--accountant", accountant]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace").strip().splitlines()
    proc.stdout.close()
    proc.stderr.close()
    cpu = usage.ru_utime + usage.ru_stime
    return seconds, cpu, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), (err[-1] if err else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", choices=["all", "issue"], default="all")
    p.add_argument("--limit-seconds", type=float, default=10.0)
    p.add_argument("--limit-mb", type=float, default=2048.0)
    a = p.parse_args()
    cases = ISSUE_CASES + (MORE_CASES if a.cases == "all" else [])
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    worst_s = worst_cpu = worst_mb = 0.0
    n = 0
    for case in cases:
        for accountant in ("rdp", "pld"):
            s, cpu, mb, rc, last = run_case(case, accountant)
            n += 1
            worst_s, worst_cpu, worst_mb = max(worst_s, s), max(worst_cpu, cpu), max(worst_mb, mb)
            print(f"{s:6.2f}s wall {cpu:6.2f}s cpu {mb:7.1f}MB rc={rc} {accountant}: {case}"
                  + (f"  | {last[:100]}" if last else ""), flush=True)
    # On a shared machine wall time measures the neighbours; CPU time is the command's own work, and equals
    # its wall time on an idle core.
    ok = worst_cpu <= a.limit_seconds and worst_mb <= a.limit_mb
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"accountant_bounds: max_cpu_seconds={worst_cpu:.2f} max_wall_seconds={worst_s:.2f} "
          f"max_rss_mb={worst_mb:.0f} cases={n} within_bounds={ok}")


if __name__ == "__main__":
    main()
