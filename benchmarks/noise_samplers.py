"""Cost of DP-SGD's Gaussian noise: every exact standard-normal sampler at hand, on one step's worth of weights.

    python benchmarks/noise_samplers.py [--n 669706] [--steps 20] [--repeats 5]

A DP step draws one N(0, 1) value per trainable weight (669,706 for the MLP 784-512-512-10 of
``dp_overhead.py``), every step, fresh. This times each sampler available to the DP step on this machine, in
interleaved blocks (median of ``--repeats`` blocks of ``--steps`` draws; wall and process CPU time per draw):

- ``dpstep_box_muller``: what :class:`DPStep` uses (:func:`dp_step.gaussian_noise`: Box-Muller on TF's
  stateless Philox uniforms, as element-wise multi-threaded ops);
- ``tf_stateless_normal``, ``tf_generator_normal``: TensorFlow's own normal samplers (Philox);
- ``numpy_ziggurat_pcg64``, ``numpy_ziggurat_sfc64``: numpy's float32 ziggurat (one core);
- ``numpy_uniform_tf_box_muller``: numpy's PCG64 float32 uniforms (the cheapest random bits here) turned
  into normals by the same Box-Muller ops in TF.

The last line is ``fastest_noise_ms=<wall ms> (<sampler>, <cpu ms> CPU)``. Compare it with Keras's step
(``dp_overhead.py --floor`` prints both and the resulting floor of ``dp_over_keras``).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from privacy_audit.components.dp_trainer.dp_step import box_muller, gaussian_noise, noise_key  # noqa: E402


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def samplers(n: int) -> dict:
    key = tf.constant(noise_key(0))
    pcg = np.random.Generator(np.random.PCG64(0))
    sfc = np.random.Generator(np.random.SFC64(0))
    generator = tf.random.Generator.from_seed(0, alg="philox")
    half = (n + 1) // 2
    transform = tf.function(lambda u: box_muller(u, n))

    return {
        "dpstep_box_muller": tf.function(lambda: gaussian_noise([n], key)),
        "tf_stateless_normal": tf.function(lambda: tf.random.stateless_normal([n], key)),
        "tf_generator_normal": tf.function(lambda: generator.normal([n])),
        "numpy_ziggurat_pcg64": lambda: pcg.standard_normal(n, dtype=np.float32),
        "numpy_ziggurat_sfc64": lambda: sfc.standard_normal(n, dtype=np.float32),
        "numpy_uniform_tf_box_muller": lambda: transform(tf.constant(pcg.random(2 * half, dtype=np.float32))),
    }


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=669_706, help="normal values per draw (the weights of a model)")
    parser.add_argument("--steps", type=int, default=20, help="draws per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per sampler")
    args = parser.parse_args(argv)
    if args.n < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--n, --steps and --repeats must be positive")

    fns = samplers(args.n)
    for fn in fns.values():  # tracing and first calls
        fn()
        fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), _cpu_seconds()
            for _ in range(args.steps):
                fn()
            wall[name].append((time.perf_counter() - start) / args.steps * 1e3)
            cpu[name].append((_cpu_seconds() - start_cpu) / args.steps * 1e3)
    print(f"n={args.n:,} normal values per draw; median of {args.repeats} blocks of {args.steps} draws")
    for name in fns:
        print(f"{name:28s} wall {statistics.median(wall[name]):6.2f} ms   cpu {statistics.median(cpu[name]):6.2f} ms")
    best = min(fns, key=lambda name: statistics.median(wall[name]))
    best_ms = statistics.median(wall[best])
    print(f"fastest_noise_ms={best_ms:.2f} ({best}, {statistics.median(cpu[best]):.2f} ms CPU)")
    return best_ms


if __name__ == "__main__":
    main()
