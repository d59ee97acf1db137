"""Poisson and shuffle samplers; padded batches and overflow handling in training."""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from privacy_audit.components.dp_trainer import sampling, training  # noqa: E402


def _all_batches(sampler, epochs):
    return [b for e in range(epochs) for b in sampler.epoch(e)]


def test_poisson_rate_matches_q():
    n, b = 2000, 100
    sampler = sampling.PoissonSampler(n, b, seed=0)
    q = sampler.sampling_probability
    assert q == pytest.approx(0.05)
    batches = _all_batches(sampler, 5)
    steps = len(batches)
    assert steps == 5 * sampler.steps_per_epoch == 100
    total = sum(len(x) for x in batches)
    # Total inclusions ~ Binomial(n * steps, q): 5 binomial sd of slack.
    sd = math.sqrt(n * steps * q * (1 - q))
    assert abs(total - n * steps * q) < 5 * sd
    # Batch sizes ~ Binomial(n, q): their variance is n q (1 - q), not 0 (fixed
    # batches) and not n q (Poisson counts would be fine too, but not 0).
    sizes = np.array([len(x) for x in batches])
    assert sizes.var(ddof=1) == pytest.approx(n * q * (1 - q), rel=0.5)
    # Each example joins each step independently: per-example counts ~ Binomial(steps, q).
    counts = np.bincount(np.concatenate(batches), minlength=n)
    assert counts.mean() == pytest.approx(steps * q, abs=5 * sd / n)
    assert counts.var() == pytest.approx(steps * q * (1 - q), rel=0.15)
    for batch in batches:   # no example twice in a batch
        assert len(np.unique(batch)) == len(batch)


def test_poisson_seeds_are_reproducible_and_distinct():
    a = _all_batches(sampling.PoissonSampler(500, 20, seed=7), 2)
    b = _all_batches(sampling.PoissonSampler(500, 20, seed=7), 2)
    c = _all_batches(sampling.PoissonSampler(500, 20, seed=8), 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    s = sampling.PoissonSampler(500, 20, seed=7)
    assert not np.array_equal(next(iter(s.epoch(0))), next(iter(s.epoch(1))))
    # An epoch depends only on (seed, epoch): replaying epoch 1 alone gives the same batches.
    assert all(np.array_equal(x, y) for x, y in zip(list(s.epoch(1)), a[s.steps_per_epoch:]))


@pytest.mark.parametrize("n, b, steps", [(1000, 300, 3), (10, 10, 1), (1797, 64, 28), (100, 40, 2)])
def test_steps_per_epoch(n, b, steps):
    assert sampling.PoissonSampler(n, b).steps_per_epoch == steps == max(1, round(n / b))
    assert sampling.ShuffleSampler(n, b).steps_per_epoch == math.ceil(n / b)


def test_default_padded_batch_size_is_mean_plus_4_sd():
    n, b = 50000, 256
    sd = math.sqrt(n * (b / n) * (1 - b / n))
    padded = sampling.default_padded_batch_size(n, b)
    assert padded % 8 == 0 and b + 4 * sd <= padded < b + 4 * sd + 8
    assert sampling.default_padded_batch_size(20, 20) == 20   # q = 1: never above N
    assert sampling.default_padded_batch_size(30, 25) <= 30


def test_split_batch_never_drops():
    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 8, 9, 31):
        idx = np.sort(rng.choice(100, size, replace=False))
        chunks = sampling.split_batch(idx, 8)
        assert all(len(c) <= 8 for c in chunks) and len(chunks) >= 1
        np.testing.assert_array_equal(np.concatenate(chunks), idx)


def test_shuffle_covers_each_example_once_per_epoch():
    sampler = sampling.ShuffleSampler(103, 10, seed=1)
    for epoch in range(2):
        batches = list(sampler.epoch(epoch))
        assert [len(b) for b in batches] == [10] * 10 + [3]
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(103))


@pytest.mark.parametrize("args, message", [
    ((0, 1), "empty"), ((10, 0), "expected_batch_size"), ((10, 11), "must not exceed"),
    ((10, 2, -1), "seed"), ((10, 2, 0, 0), "padded_batch_size"),
])
def test_sampler_validation(args, message):
    with pytest.raises(ValueError, match=message):
        sampling.PoissonSampler(*args)


def _model():
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="relu"),
                             keras.layers.Dense(3)])


def _fit(padded, seed=0, noise=1.0, epochs=2):
    keras.utils.set_random_seed(99)
    model = _model()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    seen = []
    result = training.fit(model, x, y, epochs=epochs, expected_batch_size=16,
                          optimizer=keras.optimizers.SGD(0.3), l2_norm_clip=0.5,
                          noise_multiplier=noise, seed=seed, padded_batch_size=padded,
                          jit_compile=False, on_epoch_end=seen.append, verbose=False)
    return result, seen, [np.array(v) for v in model.trainable_variables]


@pytest.mark.medium
def test_overflowing_batches_are_chunked_not_dropped():
    small, small_epochs, w_small = _fit(padded=8)    # every batch (~16) overflows 8
    large, large_epochs, w_large = _fit(padded=64)   # never overflows
    assert small.overflow_steps > 0 and large.overflow_steps == 0
    assert small.padded_batch_size == 8
    # Same sampler stream, same noise per step: chunking changes nothing but the summation order.
    for a, b in zip(small_epochs, large_epochs):
        assert a.batch_sizes == b.batch_sizes
        assert a.examples_sampled == sum(a.batch_sizes) == b.examples_sampled
        assert a.mean_train_loss == pytest.approx(b.mean_train_loss, rel=1e-5)
    for a, b in zip(w_small, w_large):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # And the sizes are exactly what the sampler draws for this seed.
    sampler = sampling.PoissonSampler(64, 16, seed=0)
    assert [len(b) for b in _all_batches(sampler, 2)] == \
        list(small_epochs[0].batch_sizes + small_epochs[1].batch_sizes)


@pytest.mark.medium
def test_step_counts_are_what_ran_including_empty_batches():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).standard_normal((50, 5)).astype(np.float32)
    y = np.zeros(50, int)
    seen = []
    result = training.fit(_model(), x, y, epochs=2, expected_batch_size=1,
                          optimizer=keras.optimizers.SGD(0.1), l2_norm_clip=1.0,
                          noise_multiplier=1.0, jit_compile=False, on_epoch_end=seen.append,
                          verbose=False)
    assert result.steps == 100 == sum(e.steps_in_epoch for e in seen)
    assert [e.total_steps for e in seen] == [50, 100]
    assert 0 in seen[0].batch_sizes + seen[1].batch_sizes   # empty batches still step (noise only)


def test_poisson_draw_on_a_large_population_is_bernoulli_per_example():
    """The O(B) draw (binomial size, then a uniform subset: numpy's set-based path for a small subset)
    against the definition: sizes ~ Binomial(N, q), every index equally likely, no index twice."""
    n, q, steps = 200_000, 0.001, 400
    rng = np.random.default_rng(3)
    batches = [sampling.poisson_draw(rng, n, q) for _ in range(steps)]
    sizes = np.array([len(b) for b in batches])
    sd = math.sqrt(n * q * (1 - q))
    assert abs(sizes.mean() - n * q) < 5 * sd / math.sqrt(steps)
    assert sizes.var(ddof=1) == pytest.approx(n * q * (1 - q), rel=0.25)
    for b in batches:
        assert b.dtype == np.int64 and np.all(np.diff(b) > 0) and (len(b) == 0 or 0 <= b[0] <= b[-1] < n)
    # Uniform over the indices: 20 equal bins, chi-square with 19 dof well inside its 0.999 quantile (43.8).
    counts = np.bincount(np.concatenate(batches) * 20 // n, minlength=20)
    expected = counts.sum() / 20
    assert ((counts - expected) ** 2 / expected).sum() < 43.8


def test_shuffle_batch_at_equals_the_epoch_stream():
    s = sampling.ShuffleSampler(103, 10, seed=4)
    for epoch in (1, 0, 1):
        assert all(np.array_equal(a, s.batch_at(epoch, i)) for i, a in enumerate(s.epoch(epoch)))
