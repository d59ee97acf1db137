"""Evaluator throughput, signature path vs Keras path: ``python benchmarks/evaluator_throughput.py --n 20000``.

One Keras model (64 inputs, MLP 256-256, 10 softmax classes, untrained: the speed does not depend on the
weights) is saved twice, as DPTrainer saves it (``keras/model.keras``, fed the parsed feature vector) and as
a standard TFX Trainer's run_fn exports it (``Format-Serving/``: a ``serving_default`` signature that parses
the serialized tf.Examples itself). N members + N non-members (64 float features + a label, GZIP TFRecord
Examples) go through the evaluator's Beam graph (``membership_inference.beam.audit_examples``: read, batched inference
with the model loaded once per worker, threshold attack on the entire data set) for each path, on the
DirectRunner in one process. Each path is timed ``--repeats`` times after one warm-up; the median counts.

Prints examples/second per path, then on the last line ``signature_over_keras=<ratio>`` (throughput of the
signature path / throughput of the Keras path; the goal is >= 1 / 1.5).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

FEATURES = [f"f{i:02d}" for i in range(64)]


def _write_split(root: str, split: str, x: np.ndarray, y: np.ndarray) -> str:
    import tensorflow as tf

    d = os.path.join(root, f"Split-{split}")
    os.makedirs(d)
    with tf.io.TFRecordWriter(os.path.join(d, "data.gz"), options="GZIP") as w:
        for row, label in zip(x, y):
            feats = {k: tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)])) for k, v in zip(FEATURES, row)}
            feats["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))
            w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    return os.path.join(d, "*")


def _save_models(root: str, seed: int):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((len(FEATURES),)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10, activation="softmax")])
    keras_path = os.path.join(root, "keras", "model.keras")
    os.makedirs(os.path.dirname(keras_path))
    model.save(keras_path)
    spec = {k: tf.io.FixedLenFeature([], tf.float32) for k in FEATURES}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        return {"probabilities": model(tf.stack([parsed[k] for k in FEATURES], axis=1))}

    serving_path = os.path.join(root, "Format-Serving")
    tf.saved_model.save(model, serving_path, signatures={"serving_default": serve})
    return keras_path, serving_path


def _run(members: str, nonmembers: str, model, tmp: str) -> float:
    from privacy_audit.components.membership_inference import beam as mi_beam
    from privacy_audit.components.membership_inference.slicing import SlicingSpec

    settings = mi_beam.AuditSettings(attacks=("threshold",), slicing=SlicingSpec(), seed=0)
    targets = {model.key: mi_beam.OutputTarget(os.path.join(tmp, f"{model.key}.json"), {"model_variant": "b"})}
    t0 = time.perf_counter()
    mi_beam.audit_examples(members, nonmembers, [model], targets, label_key="label",
                                 input_features=[] if model.serving else FEATURES, settings=settings,
                                 staging_dir=os.path.join(tmp, "staging"),
                                 beam_pipeline_args=["--direct_running_mode=in_memory"])
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="members (and as many non-members)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from privacy_audit.components.membership_inference import beam as mi_beam
    from privacy_audit.components.membership_inference.serving_model import ServingModel, read_probe

    tmp = tempfile.mkdtemp(prefix="evaluator_throughput_")
    try:
        rng = np.random.default_rng(args.seed)
        x = rng.random((2 * args.n, len(FEATURES)), dtype=np.float32)
        y = rng.integers(0, 10, 2 * args.n)
        members = _write_split(os.path.join(tmp, "examples"), "train", x[:args.n], y[:args.n])
        nonmembers = _write_split(os.path.join(tmp, "examples"), "eval", x[args.n:], y[args.n:])
        keras_path, serving_path = _save_models(os.path.join(tmp, "model"), args.seed)
        options = ServingModel(serving_path).resolve(read_probe(members))
        paths = {"keras": mi_beam.ModelToEvaluate("keras", keras_path),
                 "signature": mi_beam.ModelToEvaluate("signature", serving_path, options)}
        rates = {}
        for name, model in paths.items():
            _run(members, nonmembers, model, tmp)  # warm-up: model load, graph tracing
            seconds = statistics.median(_run(members, nonmembers, model, tmp) for _ in range(args.repeats))
            rates[name] = 2 * args.n / seconds
            print(f"{name}: {rates[name]:.0f} examples/s ({seconds:.2f} s for {2 * args.n} examples)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"signature_over_keras={rates['signature'] / rates['keras']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
