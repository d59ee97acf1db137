"""Decoding speed of TFX Examples: the per-record reader (tests/test_examples_decoding.py's reference) against
the columnar decoder (examples.parse_examples).

    python benchmarks/examples_decoding.py --rows 1000000

Generates a seeded table (20 float features, 5 classes) as GZIP TFRecords of tf.Example (not timed), reads it
back (read_serialized, timed apart), then times both decoders on the same records and prints examples/s by
wall clock and by this process's CPU time (the machine may be shared). The last line is
``examples_per_second=<new, wall clock>``.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time

import numpy as np


def float_records(n: int, d: int, seed: int = 0, classes: int = 5):
    """``n`` serialized tf.Examples with float features f00.. and an int64 ``label`` in 0..classes-1, built
    from one template by writing the values into its bytes (fast; same bytes as protobuf's deterministic
    serialization)."""
    import tensorflow as tf

    names = [f"f{j:02d}" for j in range(d)]
    sentinel = struct.unpack("<f", b"\x11\x22\x33\x44")[0]

    def example(values, label):
        feats = {k: tf.train.Feature(float_list=tf.train.FloatList(value=[v])) for k, v in zip(names, values)}
        feats["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
        return np.frombuffer(tf.train.Example(features=tf.train.Features(feature=feats))
                             .SerializeToString(deterministic=True), np.uint8)

    base = example([0.0] * d, 1)
    offsets = []
    for j in range(d):
        diff = np.nonzero(example([sentinel if i == j else 0.0 for i in range(d)], 1) != base)[0]
        assert len(diff) == 4 and diff[-1] - diff[0] == 3
        offsets.append(int(diff[0]))
    label_at = int(np.nonzero(example([0.0] * d, 2) != base)[0][0])
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        mat = np.tile(base, (m, 1))
        x = rng.normal(size=(m, d)).astype("<f4")
        for j, off in enumerate(offsets):
            mat[:, off:off + 4] = x[:, j:j + 1].view(np.uint8)
        mat[:, label_at] = rng.integers(0, classes, m)
        flat = mat.tobytes()
        w = mat.shape[1]
        out.extend(flat[i * w:(i + 1) * w] for i in range(m))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "tests"))
    import tensorflow as tf

    from privacy_audit.components.common import examples
    from test_examples_decoding import _reference_parse_examples

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.gz")
        with tf.io.TFRecordWriter(path, options="GZIP") as w:
            for r in float_records(args.rows, args.features, args.seed):
                w.write(r)
        t, c = time.perf_counter(), time.process_time()
        records = examples.read_serialized(path)
        print(f"read_serialized: {len(records)} records in {time.perf_counter() - t:.2f} s "
              f"(cpu {time.process_time() - c:.2f} s)")

    def timed(name, fn):
        t, c = time.perf_counter(), time.process_time()
        data = fn(records, "label")
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        print(f"{name}: {len(records) / wall:,.0f} examples/s wall ({wall:.2f} s), "
              f"{len(records) / cpu:,.0f} examples/s cpu ({cpu:.2f} s)")
        return data, len(records) / wall

    old, _ = timed("per-record reader (old)", _reference_parse_examples)
    new, rate = timed("columnar decoder (new)", examples.parse_examples)
    same = (np.array_equal(old.x, new.x) and np.array_equal(old.y, new.y)
            and old.example_hashes == new.example_hashes)
    print(f"identical x, y and ids: {same}")
    print(f"examples_per_second={rate:.0f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
