"""Time a DP-SGD step against a non-private step of the same model.

Both steps are :class:`privacy_audit.components.dp_trainer.dp_step.DPStep` objects on the same
model object (same weights at the start), the same optimizer type, the same
fixed batch of data of shape ``[batch_size, ...]`` and the same XLA setting for
the gradient computation (``--jit auto`` resolves identically for both: off for
the CNN, whose XLA CPU convolutions are ~4x slower, on for the MLP);
compilation and warm-up steps are excluded. The two are timed in alternating
blocks of ``--steps`` steps, ``--repeats`` times; each block's mean step time is
one sample and the ratio of the medians is reported.

Usage:
    python benchmarks/dp_overhead.py --model cnn --batch-size 256 [--steps 20]
    python benchmarks/dp_overhead.py --api keras-fit --model cnn --batch-size 256

Then the same architecture's Keras ``train_on_batch`` is timed with XLA on and off (Keras's own best
non-private step on this machine), and the last line printed is ``dp_over_keras=<DP step / Keras's best>``
(``dp_over_nondp=<ratio>`` with ``--no-keras``). ``--model transformer``: a small text classifier
(Embedding 10k x 128, 2 attention blocks, sequence 64, 2 classes). With ``--api keras-fit`` it times what a notebook
user runs instead: ``make_private`` + ``model.fit(poisson_batches(x, y, B))`` against plain
``model.fit(x, y, batch_size=B)`` on the same model, one epoch of ``--steps`` steps per sample (the
private batches are padded to B + 4 sd, as in training), and prints ``keras_fit_dp_over_plain=<ratio>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from privacy_audit.components.dp_trainer.dp_step import DPStep  # noqa: E402


def cnn() -> keras.Model:
    """The codelab CNN: 3 x [Conv2D(32, 3, relu) + MaxPool2D], Dense(64, relu), Dense(10)."""
    layers = [keras.Input((32, 32, 3))]
    for _ in range(3):
        layers += [keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
                   keras.layers.MaxPooling2D()]
    layers += [keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
               keras.layers.Dense(10)]
    return keras.Sequential(layers, name="codelab_cnn")


def mlp() -> keras.Model:
    """784-512-512-10 with ReLU."""
    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(512, activation="relu"),
                             keras.layers.Dense(512, activation="relu"), keras.layers.Dense(10)],
                            name="mlp")


def transformer() -> keras.Model:
    """A small text classifier: Embedding 10k x 128 over 64 tokens, 2 blocks of MultiHeadAttention(4 heads,
    key_dim 32) + residual + LayerNorm and a Dense FFN (256 relu, 128) + residual + LayerNorm, mean pooling,
    Dense(2)."""
    tokens = keras.Input((64,), dtype="int32")
    h = keras.layers.Embedding(10_000, 128)(tokens)
    for _ in range(2):
        a = keras.layers.MultiHeadAttention(num_heads=4, key_dim=32)(h, h)
        h = keras.layers.LayerNormalization()(h + a)
        f = keras.layers.Dense(128)(keras.layers.Dense(256, activation="relu")(h))
        h = keras.layers.LayerNormalization()(h + f)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(h))
    return keras.Model(tokens, out, name="transformer")


# name -> (builder, input shape, classes, integer inputs below this bound or None for floats)
MODELS = {"cnn": (cnn, (32, 32, 3), 10, None), "mlp": (mlp, (784,), 10, None),
          "transformer": (transformer, (64,), 2, 10_000)}


def _data(model: str, n: int, rng) -> tuple:
    _, shape, classes, vocab = MODELS[model]
    x = (rng.integers(0, vocab, (n,) + shape).astype(np.int32) if vocab
         else rng.standard_normal((n,) + shape).astype(np.float32))
    return x, rng.integers(0, classes, n)


def keras_best_step_ms(args, batch) -> dict:
    """Keras's own fastest non-private step on this machine: ``train_on_batch`` of the same architecture
    (same seed) compiled with XLA on and off, median of ``--repeats`` blocks each; ``{"xla_on": ms, ...}``."""
    out = {}
    for jit in (True, False):
        keras.utils.set_random_seed(0)
        model = MODELS[args.model][0]()
        model.compile(optimizer=OPTIMIZERS[args.optimizer](), jit_compile=jit,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x, y = batch[0], batch[1]
        for _ in range(args.warmup):
            model.train_on_batch(x, y)
        blocks = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch(x, y)
            blocks.append((time.perf_counter() - start) / args.steps)
        out["xla_on" if jit else "xla_off"] = statistics.median(blocks) * 1e3
    return out


def noise_floor_ms(args, batch, jit: bool) -> dict:
    """What any DP step of this model must at least do on this machine: Keras's own non-private step plus the
    Gaussian noise for every trainable weight, drawn as :class:`DPStep` draws it, in blocks interleaved with
    Keras's step alone (``keras``: the same machine state for both). ``noise``: the noise alone; ``serial``:
    ``train_on_batch`` then the noise; ``concurrent``: the noise drawn on another thread while ``train_on_batch``
    runs (the best case: it hides the noise in whatever CPU time the step leaves idle); ``concurrent_numpy``:
    the same with numpy's SFC64 ziggurat, the sampler of least CPU time in
    ``noise_samplers.py``. Each the median of ``--repeats`` blocks of ``--steps`` steps, in ms."""
    from concurrent.futures import ThreadPoolExecutor

    import tensorflow as tf

    from privacy_audit.components.dp_trainer.dp_step import noise_key, step_noise

    keras.utils.set_random_seed(0)
    model = MODELS[args.model][0]()
    model.compile(optimizer=OPTIMIZERS[args.optimizer](), jit_compile=jit,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    key, step = tf.constant(noise_key(0)), tf.constant(0, tf.int64)
    draw_noise = tf.function(lambda: step_noise(key, step, shapes))

    x, y = batch[0], batch[1]
    with ThreadPoolExecutor(1) as pool:
        def concurrent(draw):
            pending = pool.submit(draw)
            model.train_on_batch(x, y)
            pending.result()

        sfc64 = np.random.Generator(np.random.SFC64(0))
        modes = {"keras": lambda: model.train_on_batch(x, y),
                 "noise": draw_noise,
                 "serial": lambda: (model.train_on_batch(x, y), draw_noise()),
                 "concurrent": lambda: concurrent(draw_noise),
                 "concurrent_numpy": lambda: concurrent(
                     lambda: [sfc64.standard_normal(s, dtype=np.float32) for s in shapes])}
        for fn in modes.values():
            for _ in range(args.warmup):
                fn()
        blocks = {name: [] for name in modes}
        for _ in range(args.repeats):
            for name, fn in modes.items():
                blocks[name].append(_time_block(fn, (), args.steps) * 1e3)
    return {name: statistics.median(b) for name, b in blocks.items()}


OPTIMIZERS = {"sgd": lambda: keras.optimizers.SGD(0.01),
              "adam": lambda: keras.optimizers.Adam(1e-3)}


def _time_block(step, batch, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step(*batch)
    return (time.perf_counter() - start) / steps


class _EpochTimer(keras.callbacks.Callback):
    """Time from the start of an epoch to the end of its last step: the steps only, not the
    once-per-epoch work after them (ε of the ledger, metrics)."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(self._last - self._start)


def keras_fit(args) -> float:
    """make_private + fit against plain fit: the ratio of median step times."""
    import privacy_audit.keras as pak

    build = MODELS[args.model][0]
    n = args.batch_size * args.steps
    x, y = _data(args.model, n, np.random.default_rng(0))
    models = {}
    for mode in ("dp", "plain"):
        keras.utils.set_random_seed(0)
        model = build()
        if mode == "dp":
            pak.make_private(model, l2_norm_clip=1.0, noise_multiplier=1.1, delta=1e-5, seed=0)
        model.compile(optimizer=OPTIMIZERS[args.optimizer](),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        models[mode] = model
    data = pak.poisson_batches(x, y, expected_batch_size=args.batch_size, seed=0)

    def one_epoch(mode) -> float:
        timer = _EpochTimer()
        if mode == "dp":
            models[mode].fit(data, epochs=1, verbose=0, callbacks=[timer])
        else:
            models[mode].fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0, callbacks=[timer])
        return timer.seconds[0] / args.steps

    for mode in models:  # tracing, XLA compilation, first steps
        one_epoch(mode)
    times = {"dp": [], "plain": []}
    for r in range(args.repeats):
        for mode in (("dp", "plain") if r % 2 == 0 else ("plain", "dp")):
            times[mode].append(one_epoch(mode))
    dp_ms, plain_ms = (statistics.median(times[m]) * 1e3 for m in ("dp", "plain"))
    print(f"api=keras-fit model={args.model} batch_size={args.batch_size} padded={data.padded_batch_size} "
          f"optimizer={args.optimizer} steps_per_epoch={args.steps} repeats={args.repeats}")
    print("dp_fit_step_ms=" + ",".join(f"{t * 1e3:.1f}" for t in times["dp"]))
    print("plain_fit_step_ms=" + ",".join(f"{t * 1e3:.1f}" for t in times["plain"]))
    print(f"median_dp_fit_step_ms={dp_ms:.2f} median_plain_fit_step_ms={plain_ms:.2f}")
    ratio = dp_ms / plain_ms
    print(f"keras_fit_dp_over_plain={ratio:.3f}")
    return ratio


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per mode")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd")
    parser.add_argument("--jit", choices=["auto", "on", "off"], default="auto",
                        help="XLA for the gradient computation of both steps (auto: off for CNNs)")
    parser.add_argument("--norm-method", default="auto", choices=["auto", "ghost", "explicit"])
    parser.add_argument("--vectorised", action="store_true",
                        help="DP step uses whole-model vectorised per-example gradients")
    parser.add_argument("--no-keras", action="store_true",
                        help="skip the Keras train_on_batch reference (dp_over_nondp is then the last line)")
    parser.add_argument("--floor", action="store_true",
                        help="also time Keras's step plus the DP noise alone (the floor of any DP step's ratio)")
    parser.add_argument("--api", choices=["dpstep", "keras-fit"], default="dpstep",
                        help="dpstep: DPStep objects directly; keras-fit: make_private + model.fit")
    args = parser.parse_args(argv)
    if args.api == "keras-fit":
        return keras_fit(args)

    keras.utils.set_random_seed(0)
    model = MODELS[args.model][0]()
    batch = _data(args.model, args.batch_size, np.random.default_rng(0)) + (np.ones(args.batch_size, np.float32),)
    jit = {"auto": "auto", "on": True, "off": False}[args.jit]
    common = dict(expected_batch_size=args.batch_size, padded_batch_size=args.batch_size,
                  jit_compile=jit, seed=0)
    dp = DPStep(model, OPTIMIZERS[args.optimizer](), l2_norm_clip=1.0, noise_multiplier=1.1,
                private=True, fast_clipping=not args.vectorised, norm_method=args.norm_method,
                **common)
    nondp = DPStep(model, OPTIMIZERS[args.optimizer](), private=False, **common)

    for step in (dp, nondp):
        for _ in range(args.warmup):
            step(*batch)

    times = {"dp": [], "nondp": []}
    for r in range(args.repeats):
        order = ("dp", "nondp") if r % 2 == 0 else ("nondp", "dp")
        for mode in order:
            times[mode].append(_time_block(dp if mode == "dp" else nondp, batch, args.steps))

    dp_ms = statistics.median(times["dp"]) * 1e3
    nondp_ms = statistics.median(times["nondp"]) * 1e3
    ratio = dp_ms / nondp_ms
    print(f"model={args.model} batch_size={args.batch_size} optimizer={args.optimizer} "
          f"xla={dp.jit_compile}/{nondp.jit_compile} clipping={dp.clipping_path} "
          f"norm_method={args.norm_method} "
          f"steps_per_block={args.steps} repeats={args.repeats}")
    print("dp_step_ms=" + ",".join(f"{t * 1e3:.1f}" for t in times["dp"]))
    print("nondp_step_ms=" + ",".join(f"{t * 1e3:.1f}" for t in times["nondp"]))
    print(f"median_dp_step_ms={dp_ms:.2f} median_nondp_step_ms={nondp_ms:.2f}")
    print(f"dp_over_nondp={ratio:.3f}")
    if args.no_keras:
        return ratio
    keras_ms = keras_best_step_ms(args, batch)
    best = min(keras_ms.values())
    print("keras_train_on_batch_ms=" + ",".join(f"{k}:{v:.2f}" for k, v in keras_ms.items()))
    if args.floor:
        floor = noise_floor_ms(args, batch, jit=min(keras_ms, key=keras_ms.get) == "xla_on")
        n_weights = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        print(f"noise_floor: {n_weights:,} weights; Keras step {floor['keras']:.2f} ms; noise alone "
              f"{floor['noise']:.2f} ms; Keras step + noise "
              f"{floor['serial']:.2f} ms serial, {floor['concurrent']:.2f} ms with the noise on another thread "
              f"({floor['concurrent_numpy']:.2f} ms with numpy's ziggurat there)")
        lowest = min(floor[m] for m in ("serial", "concurrent", "concurrent_numpy"))
        print(f"floor_over_keras={lowest / floor['keras']:.3f} (Keras's step plus the noise alone, at best "
              "overlapped, over Keras's step in the same blocks: the floor of dp_over_keras with these samplers)")
    print(f"dp_over_keras={dp_ms / best:.3f}")
    return dp_ms / best


if __name__ == "__main__":
    main()
