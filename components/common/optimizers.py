"""The one optimizer factory of every training loop here (the DPTrainer, the reference models, the one-run
audit): a recipe's optimizer name and learning rate → a fresh Keras optimizer."""

OPTIMIZERS = ("adam", "sgd")


def make_optimizer(name: str, learning_rate: float):
    """``keras.optimizers.Adam`` or ``SGD`` (no momentum) with ``learning_rate``; ValueError for other names."""
    import keras

    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
