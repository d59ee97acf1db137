"""Reference-model design: which population examples each of the K reference models trains on (a balanced,
seeded inclusion matrix), the models' seeds, and fingerprints that decide when stored signals can be reused.

The population is every example the audit is about: the target's members and non-members
(``x_population`` [M, ...], ``y_population`` [M]). K reference models are trained with the target's recipe
(architecture, optimizer, learning rate, epochs, batch size and, for a DP target, clipping and noise),
each on a seeded random subset of the population. Inclusion is *balanced* per example
(:func:`inclusion_matrix`): every example is in exactly ``fraction * K`` of the models when that is an
integer (K/2 for the default half), so even with K = 2 or 4 every example has IN and OUT references
and online LiRA needs no fallback; each model sees about ``fraction * M`` examples.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Callable, List, Optional, Tuple

import numpy as np


#: How each reference model is initialised: "target" = the target's own initialisation (the hparams seed of
#: its recipe; each reference still differs by its training subset, batches and noise), "independent" = a
#: fresh seed per model.
INIT_MODES = ("target", "independent")


#: n_jobs = 0 (automatic): one worker process per this many models (each pays TensorFlow's start-up).
MODELS_PER_WORKER = 4


def inclusion_matrix(k: int, m: int, seed: int = 0, fraction: float = 0.5) -> np.ndarray:
    """[k, m] bool: which of the m population examples each of the k reference models trains on.

    Balanced design: for each example, the models are put in a uniformly random order and the example is
    included in the first floor(fraction * k) of them, plus the next one with probability equal to the
    fractional part of fraction * k. So every example is IN for exactly fraction * k models when that is
    an integer, and each model trains on fraction * m examples in expectation. Seeded by ``seed``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (the number of reference models) must be a positive integer, got {k!r}")
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m (the population size) must be a positive integer, got {m!r}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1A]))
    ranks = np.argsort(rng.random((k, m)), axis=0).argsort(axis=0)  # a random permutation per column
    whole = int(math.floor(fraction * k))
    part = fraction * k - whole
    mask = ranks < whole
    if part > 0:
        mask |= (ranks == whole) & (rng.random(m) < part)[None, :]
    return mask


def subset_fraction(n_target: int, m: int, k: int, fraction: Optional[float]) -> Tuple[float, float]:
    """``(wanted, used)`` share of the population per reference: the target's share by default, kept within
    [1/K, (K-1)/K] so that every example has an IN and an OUT model (with few models the subsets are made
    slightly larger or smaller than asked rather than leave examples uncovered)."""
    wanted = n_target / m if fraction is None else float(fraction)
    if not 0.0 < wanted < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {wanted}")
    return wanted, min(max(wanted, 1.0 / k), (k - 1.0) / k)


def model_seeds(seed: int, k: int) -> List[int]:
    return [int(s) for s in np.random.SeedSequence([int(seed), 0x2B]).generate_state(k) % (2 ** 31 - 1)]


def auto_n_jobs(k: int) -> int:
    """Worker processes for K models: one per :data:`MODELS_PER_WORKER` models, at most one per CPU core
    (1: in this process). See the ReferenceModelTrainer's doc for the measurements behind it."""
    return max(1, min(os.cpu_count() or 1, k // MODELS_PER_WORKER))


def population_fingerprint(x_population: np.ndarray, y_population: np.ndarray) -> str:
    """sha256 (first 16 hex digits) of the population's arrays (shape, dtype and bytes)."""
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(x_population), np.ascontiguousarray(y_population)):
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _without_names(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_names(v) for k, v in obj.items() if k != "name"}
    if isinstance(obj, (list, tuple)):
        return [_without_names(v) for v in obj]
    return obj


def architecture_fingerprint(build_model_fn: Callable[[], Any]) -> str:
    """Hash of the model's layer types, configurations and weight shapes; layer names are left out (Keras
    numbers them with a process-wide counter, so they differ between two builds of one architecture)."""
    import keras

    keras.utils.set_random_seed(0)
    model = build_model_fn()
    layers = [{"class": type(layer).__name__, "config": _without_names(layer.get_config()),
               "weights": [list(w.shape) for w in layer.weights]} for layer in model.layers]
    text = json.dumps(layers, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
