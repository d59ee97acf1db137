"""Per-example signals of the reference attacks (the logit-scaled true-class confidence of LiRA, the
true-class probability of RMIA) and the checks of their arrays. Pure numpy/scipy."""

from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import special

from privacy_audit.components.common.losses import cross_entropy_from_logits


#: Default floor on a fitted standard deviation (in logit-scaled-confidence units): a reference set whose
#: signals all agree (e.g. saturated float32 outputs) would otherwise give a zero variance and an
#: infinite score.
DEFAULT_MIN_STD = 1e-4


def _logits_and_labels(logits, labels) -> Tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim == 0:
        raise ValueError("logits must be an array of shape [..., C]")
    # Single-logit (sigmoid) binary outputs: [..., 1], or exactly the labels' shape.
    single = z.shape[-1] == 1 or z.shape == y.shape
    if z.shape[-1] == 1:
        z = z[..., 0]
    target_shape = z.shape if single else z.shape[:-1]
    try:
        y = np.broadcast_to(y, target_shape)
    except ValueError:
        raise ValueError(f"labels {np.shape(labels)} do not match logits {np.shape(logits)} (expected labels of "
                         f"shape {target_shape} or one that broadcasts to it)") from None
    if single:  # softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]
        z = np.stack([np.zeros_like(z), z], axis=-1)
    if z.shape[-1] < 2:
        raise ValueError(f"logits must have C >= 2 classes, got shape {np.shape(logits)}")
    if not np.issubdtype(y.dtype, np.integer):
        if y.dtype == np.bool_:
            y = y.astype(np.int64)
        elif not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or \
                not np.all(y == np.round(y)):
            raise ValueError("labels must be integer class indices")
    y = y.astype(np.int64)
    if (y < 0).any() or (y >= z.shape[-1]).any():
        raise ValueError(f"labels must be in [0, {z.shape[-1]})")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"logits contain {int((~np.isfinite(z)).sum())} non-finite values")
    return z, y


def logit_scaled_confidence(logits, labels) -> np.ndarray:
    """LiRA's signal phi = log(p_y / (1 - p_y)) of the true class, computed stably from logits.

    phi = z_y - logsumexp_{j != y} z_j (exact: p_y / (1 - p_y) = exp(z_y) / sum_{j != y} exp(z_j)), which
    stays finite and precise when p_y rounds to 1 (where log(1 - p_y) from probabilities would be -inf).

    Args:
      logits: [..., C] logits (e.g. [N, C] for one model, [K, N, C] for K models); or single logits of a
        sigmoid binary model, shaped [..., 1] or exactly like ``labels`` (label 1 = positive class).
      labels: [...] integer classes, or any shape that broadcasts to ``logits.shape[:-1]`` (e.g. [N] for
        [K, N, C] logits).
    Returns: [...] float64.
    """
    z, y = _logits_and_labels(logits, labels)
    z_y = np.take_along_axis(z, y[..., None], axis=-1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, y[..., None], -np.inf, axis=-1)
    return z_y - special.logsumexp(others, axis=-1)


def true_class_probability(logits, labels) -> np.ndarray:
    """p_y = softmax(logits)[y] (RMIA's Pr(x | theta)), shape ``logits.shape[:-1]``; same arguments as
    :func:`logit_scaled_confidence`. Computed as exp(-cross-entropy) with the project's stable loss."""
    z, y = _logits_and_labels(logits, labels)
    flat = cross_entropy_from_logits(z.reshape(-1, z.shape[-1]), y.reshape(-1))
    return np.exp(-flat).reshape(y.shape)


def _vector(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must have shape [N], got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains {int((~np.isfinite(arr)).sum())} non-finite values")
    return arr


def _matrix(x, name: str, n: int) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1 and n >= 1 and arr.shape[0] == n:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != n or arr.shape[0] < 1:
        raise ValueError(f"{name} must have shape [K, {n}] (K >= 1 reference models), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains {int((~np.isfinite(arr)).sum())} non-finite values")
    return arr


def _mask(x, name: str, shape: Tuple[int, int]) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 1 and shape[0] == 1:
        arr = arr[None, :]
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)} like the reference signals, got {arr.shape}")
    if arr.dtype != np.bool_:
        if not np.all(np.isin(arr, (0, 1))):
            raise ValueError(f"{name} must be boolean (or 0/1)")
        arr = arr.astype(bool)
    return arr
