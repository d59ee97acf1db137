"""The one optimizer factory of every training loop here (the DPTrainer, the reference models, the one-run
audit): a recipe's optimizer name, learning rate and schedule → a fresh Keras optimizer."""

OPTIMIZERS = ("adam", "sgd")


def make_optimizer(name: str, learning_rate: float, schedule: str = "constant", total_steps: int = 0):
    """``keras.optimizers.Adam`` or ``SGD`` (no momentum) with ``learning_rate``; ValueError for other names.

    ``schedule="cosine"``: the rate decays from ``learning_rate`` to 0 along a half cosine over ``total_steps``
    optimizer steps (the planned steps of the run). With DP-Adam it keeps the loss falling once the model has
    fit: Adam normalises the noisy gradient, so a constant rate keeps moving the weights by about the rate per
    step in the noise's direction, and the loss climbs back (README, "Choosing DP settings")."""
    import keras

    if schedule == "cosine":
        if total_steps < 1:
            raise ValueError(f"a cosine learning-rate schedule needs the planned steps, got {total_steps}")
        rate = keras.optimizers.schedules.CosineDecay(float(learning_rate), decay_steps=int(total_steps),
                                                      alpha=0.0)
    elif schedule == "constant":
        rate = learning_rate
    else:
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {schedule!r}")
    if name == "adam":
        return keras.optimizers.Adam(rate)
    if name == "sgd":
        return keras.optimizers.SGD(rate)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def recipe_optimizer(recipe, steps_per_epoch: int):
    """The optimizer of a TrainingRecipe for a run of ``recipe.epochs`` x ``steps_per_epoch`` steps."""
    return make_optimizer(recipe.optimizer, recipe.learning_rate, getattr(recipe, "lr_schedule", "constant"),
                          recipe.epochs * steps_per_epoch)
