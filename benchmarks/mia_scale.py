"""Scale benchmark of the Beam membership-inference path on saved model outputs.

    .venv/bin/python benchmarks/mia_scale.py --n 10000000

Generates N members and N non-members (10-class logits, float32; seeded, in chunks) as long-layout
Parquet (``is_member``, ``logits``, ``label``), then times the threshold attack on the entire data set and
by class through :func:`membership_inference.beam.audit_saved_outputs` on the DirectRunner in multi-processing mode
(2 workers). Generation is not timed. The last lines are ``seconds=<float>`` and ``peak_rss_mb=<int>``:
the peak, while the audit runs, of the resident memory summed over this process and all its children
(sampled with psutil every 0.1 s; at least this process's getrusage maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rss import PeakRss  # noqa: E402  (benchmarks/rss.py: the one memory sampler)

N_CLASSES = 10


def generate(out_dir: str, n: int, seed: int = 0, chunk: int = 1_000_000) -> int:
    """Writes ``n`` members then ``n`` non-members in files of ``chunk`` rows (one row group each).
    Members' true-class logit gets a slightly larger boost, so the attack has something to find."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(out_dir, exist_ok=True)
    files = 0
    for is_member in (True, False):
        done = 0
        while done < n:
            m = min(chunk, n - done)
            rng = np.random.default_rng([seed, int(is_member), files])
            logits = rng.normal(0.0, 1.0, size=(m, N_CLASSES)).astype(np.float32)
            labels = rng.integers(0, N_CLASSES, size=m)
            logits[np.arange(m), labels] += np.float32(2.2 if is_member else 2.0)
            table = pa.table({
                "is_member": pa.array(np.full(m, is_member)),
                "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), N_CLASSES),
                "label": pa.array(labels.astype(np.int64)),
            })
            pq.write_table(table, os.path.join(out_dir, f"part-{files:05d}.parquet"), row_group_size=m)
            files += 1
            done += m
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="members (and as many non-members)")
    parser.add_argument("--workers", type=int, default=2, help="DirectRunner worker processes")
    parser.add_argument("--batch-rows", type=int, default=131072, help="rows per record batch")
    parser.add_argument("--chunk", type=int, default=1_000_000, help="rows per generated file / row group")
    parser.add_argument("--per-example", action="store_true", help="also write per-example Parquet")
    parser.add_argument("--work-dir", default=None, help="where to put data and results (default: a temp dir)")
    parser.add_argument("--verbose", action="store_true", help="print each process's peak RSS")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    args = parser.parse_args(argv)

    from privacy_audit.components.membership_inference import beam as mi_beam
    from privacy_audit.components.membership_inference.slicing import SlicingSpec

    work = args.work_dir or tempfile.mkdtemp(prefix="mia_scale_")
    data_dir = os.path.join(work, "outputs")
    t0 = time.perf_counter()
    files = generate(data_dir, args.n, chunk=args.chunk)
    import psutil

    print(f"generated {2 * args.n} rows in {files} files in {time.perf_counter() - t0:.1f}s "
          f"(rss now {psutil.Process().memory_info().rss / 2**20:.0f} MB)", flush=True)

    out = os.path.join(work, "results.json")
    beam_args = ["--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}"]
    try:
        with PeakRss() as rss:
            t0 = time.perf_counter()
            obj = mi_beam.audit_saved_outputs(
                data_dir, out, ["threshold"], SlicingSpec(entire_dataset=True, by_class=True), seed=0,
                beam_pipeline_args=beam_args, batch_rows=args.batch_rows,
                per_example_dir=os.path.join(work, "per_example") if args.per_example else None)
            seconds = time.perf_counter() - t0
        entire = obj["results"][0]
        print(json.dumps({"n_members": entire["n_members"], "n_nonmembers": entire["n_nonmembers"],
                          "auc": round(entire["auc"], 6), "attacker_advantage": round(entire["attacker_advantage"], 6),
                          "approximation": entire.get("approximation"), "n_results": len(obj["results"])}))
        print(f"seconds={seconds:.2f}")
        print(f"peak_rss_mb={rss.peak_mb(args.verbose)}")
    finally:
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
