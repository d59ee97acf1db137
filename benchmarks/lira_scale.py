"""Scale benchmark of LiRA and RMIA inside the Beam audit (membership_inference.beam.reference).

    .venv/bin/python benchmarks/lira_scale.py --n 1000000 --k 16

Generates (seeded, in chunks, not timed) a population of N examples with distinct integer ids, half of them
the target's members: the target's records as long-layout Parquet (``example_id``, ``is_member``, ``label``,
10-class float32 ``logits``) and K reference models' per-example signals as one Parquet file
(``reference_models.signals.SignalsParquetWriter``: LiRA's logit-scaled confidence and RMIA's true-class
probability per model, the K-bit inclusion mask), each reference trained on a seeded half. Then times
:func:`membership_inference.beam.audit_saved_outputs` with ``threshold`` and the reference attacks ``lira`` and
``rmia`` (entire data set and by class) on the DirectRunner (in-memory mode, one process; ``--workers 2``:
multi-processing mode, 2 worker processes): the records are joined with the signals by example id and scored
inside the pipeline.

Prints the seconds and the peak resident memory summed over this process and its children while the audit runs
(sampled with psutil every 0.1 s; at least this process's getrusage maxrss, the data being generated in a
child process that has exited by then), the load average, and on the last line
``lira_scale seconds=<s> peak_rss_mb=<m>``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rss import PeakRss  # noqa: E402  (benchmarks/rss.py: the one memory sampler)

N_CLASSES = 10


def generate(work: str, n: int, k: int, seed: int = 0, chunk: int = 250_000) -> str:
    """Writes the target's records under ``<work>/outputs/`` and the reference signals to
    ``<work>/reference_signals.parquet``; returns the latter's path. A per-example difficulty shared by the target
    and the references, and a boost of the true class for the examples a model trained on."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from privacy_audit.components.reference_models.signals import SIGNALS_PARQUET_FILE, SignalsParquetWriter

    out_dir = os.path.join(work, "outputs")
    os.makedirs(out_dir, exist_ok=True)
    signals_path = os.path.join(work, SIGNALS_PARQUET_FILE)
    with SignalsParquetWriter(signals_path, k, {"seed": seed, "fraction": 0.5, "synthetic": True}) as writer:
        for part, start in enumerate(range(0, n, chunk)):
            m = min(chunk, n - start)
            rng = np.random.default_rng([seed, part])
            ids = (np.arange(start, start + m, dtype=np.int64) * 2654435761 + 12345) % (1 << 62)
            labels = rng.integers(0, N_CLASSES, size=m)
            is_member = rng.random(m) < 0.5
            base = rng.normal(0.0, 1.0, size=(m, N_CLASSES)).astype(np.float32)
            base[np.arange(m), labels] += rng.normal(1.0, 1.0, size=m).astype(np.float32)
            rows = np.arange(m)
            target = base + np.float32(0.3) * rng.normal(size=(m, N_CLASSES)).astype(np.float32)
            target[rows, labels] += np.float32(1.0) * is_member
            pq.write_table(pa.table({
                "example_id": pa.array(ids), "is_member": pa.array(is_member), "label": pa.array(labels),
                "logits": pa.FixedSizeListArray.from_arrays(pa.array(target.reshape(-1)), N_CLASSES)}),
                os.path.join(out_dir, f"part-{part:05d}.parquet"), row_group_size=m)
            in_mask = rng.random((k, m)) < 0.5
            ref = np.empty((k, m, N_CLASSES), dtype=np.float32)
            for j in range(k):
                ref[j] = base + np.float32(0.3) * rng.normal(size=(m, N_CLASSES)).astype(np.float32)
                ref[j, rows, labels] += np.float32(1.0) * in_mask[j]
            writer.write(ref, in_mask, ids.astype(np.uint64), labels)
            del ref
    return signals_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="examples in the population (half members)")
    parser.add_argument("--k", type=int, default=16, help="reference models")
    parser.add_argument("--workers", type=int, default=1,
                        help="DirectRunner worker processes (multi-processing mode); 1: in-memory mode, one process")
    parser.add_argument("--batch-rows", type=int, default=131072, help="rows per record batch")
    parser.add_argument("--work-dir", default=None, help="where to put data and results (default: a temp dir)")
    parser.add_argument("--verbose", action="store_true", help="print each process's peak RSS")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    args = parser.parse_args(argv)

    import psutil

    from privacy_audit.components.membership_inference import beam as mi_beam
    from privacy_audit.components.membership_inference.slicing import SlicingSpec

    work = args.work_dir or tempfile.mkdtemp(prefix="lira_scale_")
    try:
        t0 = time.perf_counter()
        # In a child process: its memory (a chunk's K x n x C logits) is not the audit's, and getrusage's maxrss
        # of this process then covers the audit only.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            signals_path = pool.apply(generate, (work, args.n, args.k))
        print(f"generated {args.n} records and K={args.k} reference signals in {time.perf_counter() - t0:.1f}s "
              f"(rss now {psutil.Process().memory_info().rss / 2**20:.0f} MB)", flush=True)
        beam_args = (["--direct_running_mode=in_memory"] if args.workers <= 1 else
                     ["--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}"])
        with PeakRss() as rss:
            t0 = time.perf_counter()
            obj = mi_beam.audit_saved_outputs(
                os.path.join(work, "outputs"), os.path.join(work, "results.json"), ["threshold"],
                SlicingSpec(entire_dataset=True, by_class=True), seed=0, beam_pipeline_args=beam_args,
                batch_rows=args.batch_rows, reference_signals=signals_path, reference_attacks=["lira", "rmia"])
            seconds = time.perf_counter() - t0
        whole = {r["attack"]: r for r in obj["results"] if r["slice"] == {"feature": "entire_dataset"}}
        print(json.dumps({a: {"auc": round(r["auc"], 6), "attacker_advantage": round(r["attacker_advantage"], 6),
                              "n": r["n_members"] + r["n_nonmembers"], "approximation": r.get("approximation")}
                          for a, r in whole.items()}))
        print(json.dumps({"n_results": len(obj["results"]),
                          "join": obj["metadata"]["reference_models"]["join"],
                          "rmia_population": obj["metadata"]["reference_models"].get("rmia_population")}))
        peak_mb = rss.peak_mb(args.verbose)
        print(f"seconds={seconds:.2f} peak_rss_mb={peak_mb} load_average={os.getloadavg()} cpus={os.cpu_count()}")
        print(f"lira_scale seconds={seconds:.2f} peak_rss_mb={peak_mb}")
    finally:
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
