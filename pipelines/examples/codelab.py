"""The TF Privacy codelab "Assess privacy risks with the TF Privacy Report", on privacy_audit.

Trains small CNNs on CIFAR-10 (2 and 3 conv layers, plain Adam, and the 3-layer CNN with DP-Adam at
l2_norm_clip 1.0, noise_multiplier 1.1), runs the threshold and logistic-regression membership-inference
attacks over the whole data set and per class every 2 epochs from a Keras callback, then draws attack
AUC / advantage by epoch and privacy against accuracy, and writes the HTML report.

    python pipelines/examples/codelab.py --output-dir codelab_output            # CIFAR-10 (if downloaded)
    python pipelines/examples/codelab.py --synthetic --epochs 4 --output-dir out # small generated data

CIFAR-10 is read through ``keras.datasets.cifar10`` when it is already in the Keras cache
(``~/.keras/datasets``); nothing is downloaded. ``--synthetic`` generates CIFAR-shaped data instead:
10 classes of 32x32x3 images, each a fixed random pattern per class plus strong per-image noise.
Outputs: ``results/*.json`` (one per variant and audited epoch, the evaluator's schema),
``ledger_*.json``, ``epoch_plot.png``, ``privacy_vs_accuracy.png`` and ``report/report.html``.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import privacy_audit.keras as pak  # noqa: E402
from privacy_audit import report  # noqa: E402

NUM_CLASSES = 10


def small_cnn(input_shape, num_classes: int = NUM_CLASSES, num_conv: int = 3,
              activation: str = "relu") -> keras.Model:
    """The codelab's CNN: ``num_conv`` x [Conv2D(32, 3) + MaxPool2D], Flatten, Dense(64), Dense(classes)."""
    layers = [keras.Input(input_shape)]
    for _ in range(num_conv):
        layers += [keras.layers.Conv2D(32, (3, 3), activation=activation), keras.layers.MaxPooling2D()]
    layers += [keras.layers.Flatten(), keras.layers.Dense(64, activation=activation),
               keras.layers.Dense(num_classes)]
    return keras.Sequential(layers, name=f"cnn_{num_conv}_layers")


def synthetic_cifar(n_train: int, n_test: int, seed: int = 0):
    """CIFAR-shaped data: ((x_train [n, 32, 32, 3] float32 in [0, 1], y_train [n]), (x_test, y_test))."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(0.0, 1.0, (NUM_CLASSES, 32, 32, 3))

    def draw(n):
        y = rng.integers(0, NUM_CLASSES, n)
        x = 0.35 * patterns[y] + 0.65 * rng.uniform(0.0, 1.0, (n, 32, 32, 3))
        return x.astype(np.float32), y.astype(np.int64)

    return draw(n_train), draw(n_test)


def cifar10_if_present():
    """CIFAR-10 scaled to [0, 1] from the Keras cache, or None when it has not been downloaded."""
    cache = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "datasets")
    if not glob.glob(os.path.join(cache, "cifar-10-batches-py*")):
        return None
    (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    return ((x_train.astype(np.float32) / 255.0, y_train[:, 0].astype(np.int64)),
            (x_test.astype(np.float32) / 255.0, y_test[:, 0].astype(np.int64)))


def _compile(model, lr: float):
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def train_variant(name: str, num_conv: int, private: bool, data, args) -> dict:
    """Trains one variant with the PrivacyMetrics callback; returns its results paths (and ledger)."""
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(args.seed)
    model = _compile(small_cnn(x_train.shape[1:], num_conv=num_conv), args.lr) if not private else None
    audit = pak.PrivacyMetrics(x_train, y_train, x_test, y_test, every_n_epochs=args.every,
                               output_dir=os.path.join(args.output_dir, "results"), model_variant=name,
                               attacks=["threshold", "logistic_regression"], slicing=["by_class"],
                               seed=args.seed, min_slice_size=args.min_slice_size)
    print(f"--- {name}", flush=True)
    if not private:
        model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                  validation_data=(x_test, y_test), callbacks=[audit], shuffle=True, verbose=args.verbose)
        return {"results": audit.paths, "ledger": None}
    # The DP example: DP-Adam with l2_norm_clip 1.0 and noise_multiplier 1.1 (DPKerasAdamOptimizer).
    model = pak.make_private(small_cnn(x_train.shape[1:], num_conv=num_conv), l2_norm_clip=1.0,
                             noise_multiplier=1.1, seed=args.seed, model_variant=name)
    _compile(model, args.lr)
    history = model.fit(pak.poisson_batches(x_train, y_train, expected_batch_size=args.dp_batch_size,
                                            seed=args.seed),
                        epochs=args.epochs, validation_data=(x_test, y_test), callbacks=[audit],
                        verbose=args.verbose)
    ledger_path = os.path.join(args.output_dir, f"ledger_{name.replace(' ', '_')}.json")
    pak.privacy_ledger(model).write(ledger_path)
    print(f"{name}: epsilon after each epoch {np.round(history.history['epsilon'], 3).tolist()}", flush=True)
    return {"results": audit.paths, "ledger": ledger_path}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="codelab_output")
    parser.add_argument("--synthetic", action="store_true", help="generated CIFAR-shaped data")
    parser.add_argument("--n-train", type=int, default=2000, help="synthetic training (= test) examples")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--every", type=int, default=2, help="attack every N epochs")
    parser.add_argument("--batch-size", type=int, default=50, help="non-private batch size (codelab: 50)")
    parser.add_argument("--dp-batch-size", type=int, default=250, help="expected Poisson batch of DP-Adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-slice-size", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2)
    args = parser.parse_args(argv)

    data = synthetic_cifar(args.n_train, args.n_train, args.seed) if args.synthetic else cifar10_if_present()
    if data is None:
        print("codelab: error: CIFAR-10 is not in the Keras cache (~/.keras/datasets) and is not downloaded "
              "here; run with --synthetic", file=sys.stderr)
        return 2
    variants = [("2 Layers", 2, False), ("3 Layers", 3, False), ("3 Layers DP-Adam", 3, True)]
    runs = [train_variant(name, conv, private, data, args) for name, conv, private in variants]
    results = [p for run in runs for p in run["results"]]
    ledgers = [run["ledger"] for run in runs if run["ledger"]]

    for plot in (report.plot_by_epoch(results), report.plot_privacy_vs_accuracy(results)):
        print("wrote", report.save_plot(plot, os.path.join(args.output_dir, f"{plot.name}.png")))
    out = report.write_report(os.path.join(args.output_dir, "report"), results, ledgers,
                              title="Codelab: privacy risks of small CNNs")
    print("wrote", out.html_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
