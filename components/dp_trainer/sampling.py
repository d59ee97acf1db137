"""Batch samplers for DP-SGD: Poisson (default) and shuffled fixed-size batches.

Poisson sampling is what the privacy accountant assumes: at every step each of
the N examples joins the batch independently with probability
``q = expected_batch_size / N``, so batch sizes vary (Binomial(N, q)). To keep one
compiled graph, batches are padded to a fixed ``padded_batch_size`` with a mask;
a batch larger than the pad is split into several padded chunks whose clipped
sums are added before the noise (no sampled example is ever dropped).

Both samplers are deterministic functions of ``(seed, epoch_index)``. A Poisson batch costs O(B), not
O(N): its size is drawn from Binomial(N, q), then that many distinct indices uniformly (given its size, a
Poisson batch is a uniform subset), so a step on 5M examples does not draw 5M uniforms.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

DEFAULT_PAD_SIGMAS = 4.0


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int, or ValueError naming ``name`` if not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}; got {value!r}")
    return int(value)


def _check_sizes(n_examples, expected_batch_size):
    if isinstance(n_examples, (int, np.integer)) and not isinstance(n_examples, bool) \
            and n_examples == 0:
        raise ValueError("the training data is empty (n_examples=0)")
    check_int("n_examples", n_examples)
    check_int("expected_batch_size", expected_batch_size)
    if expected_batch_size > n_examples:
        raise ValueError(f"expected_batch_size ({expected_batch_size}) must not exceed the number "
                         f"of training examples ({n_examples})")


def default_padded_batch_size(n_examples: int, expected_batch_size: int,
                              sigmas: float = DEFAULT_PAD_SIGMAS) -> int:
    """Padded batch shape for Poisson batches: mean + ``sigmas`` binomial sd, rounded up to 8.

    With the default 4 sd a batch overflows the pad at roughly 1 step in 10^4-10^5;
    such a step runs as two chunks (exact, just slower), while every step pays for
    the padding, so a larger pad costs more than it saves. Capped at N.
    """
    _check_sizes(n_examples, expected_batch_size)
    q = expected_batch_size / n_examples
    sd = math.sqrt(n_examples * q * (1.0 - q))
    padded = int(math.ceil(expected_batch_size + sigmas * sd))
    padded = -(-padded // 8) * 8
    return max(1, min(padded, n_examples))


def poisson_draw(rng: np.random.Generator, n_examples: int, q: float) -> np.ndarray:
    """One Poisson batch: each of ``n_examples`` indices independently with probability ``q``, as a sorted
    int64 array. Drawn as a Binomial(N, q) size and a uniform subset of that size; numpy's ``choice``
    without replacement takes a set-based O(size) path when the subset is small against N."""
    k = int(rng.binomial(n_examples, q))
    idx = rng.choice(n_examples, size=k, replace=False).astype(np.int64, copy=False)
    idx.sort()
    return idx


def split_batch(indices: np.ndarray, padded_batch_size: int) -> list:
    """Splits a batch's indices into chunks of at most ``padded_batch_size`` (at least one)."""
    if len(indices) <= padded_batch_size:
        return [indices]
    return [indices[i:i + padded_batch_size] for i in range(0, len(indices), padded_batch_size)]


class _SamplerBase:
    """Sizes, seed and q shared by both samplers."""

    def __init__(self, n_examples: int, expected_batch_size: int, seed: int):
        _check_sizes(n_examples, expected_batch_size)
        self.n_examples = int(n_examples)
        self.expected_batch_size = int(expected_batch_size)
        self.seed = check_int("seed", seed, minimum=0)
        self.sampling_probability = self.expected_batch_size / self.n_examples


class PoissonSampler(_SamplerBase):
    """Poisson-sampled batches of example indices.

    Args:
      n_examples: N, the number of training examples.
      expected_batch_size: q * N; ``1 <= expected_batch_size <= N``.
      seed: non-negative int; epoch e's batches depend only on (seed, e).
      padded_batch_size: the fixed batch shape; default
        :func:`default_padded_batch_size`.

    Attributes:
      sampling_probability: q = expected_batch_size / N.
      steps_per_epoch: ``max(1, round(N / expected_batch_size))``.
      mode: "poisson".
    """

    mode = "poisson"

    def __init__(self, n_examples: int, expected_batch_size: int, seed: int = 0,
                 padded_batch_size: int | None = None):
        super().__init__(n_examples, expected_batch_size, seed)
        self.steps_per_epoch = max(1, round(self.n_examples / self.expected_batch_size))
        if padded_batch_size is None:
            padded_batch_size = default_padded_batch_size(self.n_examples, self.expected_batch_size)
        self.padded_batch_size = check_int("padded_batch_size", padded_batch_size)

    def epoch(self, epoch_index: int) -> Iterator[np.ndarray]:
        """Yields ``steps_per_epoch`` sorted int64 index arrays (sizes vary, may be empty)."""
        rng = np.random.default_rng([self.seed, int(epoch_index)])
        for _ in range(self.steps_per_epoch):
            yield poisson_draw(rng, self.n_examples, self.sampling_probability)

    def batch_at(self, epoch_index: int, step: int) -> np.ndarray:
        """The sorted int64 indices of step ``step`` of epoch ``epoch_index``, by random access.

        Each (seed, epoch, step) has its own generator, so a data loader that reads batches in any
        order, or twice (Keras peeks at batches to infer shapes), gets the same batch. It is a
        different stream from :meth:`epoch`; both are independent Poisson draws with rate q.
        """
        rng = np.random.default_rng([self.seed, int(epoch_index), int(step), 0x706F6973])
        return poisson_draw(rng, self.n_examples, self.sampling_probability)


class ShuffleSampler(_SamplerBase):
    """Fixed-size batches from a fresh permutation each epoch (every example once).

    Same interface as :class:`PoissonSampler`; ``steps_per_epoch`` is
    ``ceil(N / expected_batch_size)`` and the last batch of an epoch may be
    smaller (padded and masked). The Poisson privacy analysis does not apply
    to this mode.
    """

    mode = "shuffle"

    def __init__(self, n_examples: int, expected_batch_size: int, seed: int = 0,
                 padded_batch_size: int | None = None):
        super().__init__(n_examples, expected_batch_size, seed)
        self.steps_per_epoch = -(-self.n_examples // self.expected_batch_size)
        if padded_batch_size is None:
            padded_batch_size = self.expected_batch_size
        self.padded_batch_size = check_int("padded_batch_size", padded_batch_size,
                                           minimum=self.expected_batch_size)
        self._order = (None, None)  # (epoch, its permutation) for batch_at

    def epoch(self, epoch_index: int) -> Iterator[np.ndarray]:
        """Yields ``steps_per_epoch`` int64 index arrays covering a permutation of N."""
        rng = np.random.default_rng([self.seed, int(epoch_index)])
        order = rng.permutation(self.n_examples)
        for start in range(0, self.n_examples, self.expected_batch_size):
            yield order[start:start + self.expected_batch_size]

    def batch_at(self, epoch_index: int, step: int) -> np.ndarray:
        """Step ``step`` of epoch ``epoch_index`` (the same batches as :meth:`epoch`)."""
        if self._order[0] != int(epoch_index):  # one permutation per epoch, not per step
            self._order = (int(epoch_index), np.random.default_rng([self.seed, int(epoch_index)]).permutation(
                self.n_examples))
        start = int(step) * self.expected_batch_size
        return self._order[1][start:start + self.expected_batch_size]


def make_sampler(sampling: str, n_examples: int, expected_batch_size: int, seed: int = 0,
                 padded_batch_size: int | None = None):
    """``sampling`` is "poisson" or "shuffle"."""
    samplers = {"poisson": PoissonSampler, "shuffle": ShuffleSampler}
    if sampling not in samplers:
        raise ValueError(f"sampling must be 'poisson' or 'shuffle'; got {sampling!r}")
    return samplers[sampling](n_examples, expected_batch_size, seed, padded_batch_size)
