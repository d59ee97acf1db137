"""LiRA and RMIA against hand computations, and the reference-model training/storage around them."""

import math
import statistics

import sys

import numpy as np
import pytest
from scipy import stats

from privacy_audit.components import reference_models as rm
from privacy_audit.components.membership_inference import attacks as sa
from privacy_audit.components.membership_inference.metrics import attack_metrics


# ---------------------------------------------------------------------------------------------------------
# Hand computations (plain Python loops, written from the papers' definitions)
# ---------------------------------------------------------------------------------------------------------

def _softmax_row(z):
    mx = max(z)
    e = [math.exp(v - mx) for v in z]
    s = sum(e)
    return [v / s for v in e]


def hand_lira(x, signals, in_mask, online, fixed, ddof=0):
    k, n = len(signals), len(x)
    ins = [[signals[j][i] for j in range(k) if in_mask[j][i]] for i in range(n)]
    outs = [[signals[j][i] for j in range(k) if not in_mask[j][i]] for i in range(n)]

    def pooled(groups):
        num = sum(sum((v - statistics.mean(g)) ** 2 for v in g) for g in groups if len(g) >= 2)
        den = sum(len(g) - ddof for g in groups if len(g) >= 2)
        return num / den

    pin, pout = pooled(ins), pooled(outs)
    sd = statistics.stdev if ddof == 1 else statistics.pstdev
    out = []
    for i in range(n):
        mu_out = statistics.mean(outs[i])
        sd_out = math.sqrt(pout) if fixed else sd(outs[i])
        if online:
            mu_in = statistics.mean(ins[i])
            sd_in = math.sqrt(pin) if fixed else sd(ins[i])
            out.append(stats.norm.logpdf(x[i], mu_in, sd_in) - stats.norm.logpdf(x[i], mu_out, sd_out))
        else:
            out.append(stats.norm.logcdf(x[i], mu_out, sd_out))
    return out


def hand_pr(ref_col, in_col, online, a):
    if online:
        return sum(ref_col) / len(ref_col)
    outs = [p for p, inc in zip(ref_col, in_col) if not inc]
    return (1 + a) / 2 * (sum(outs) / len(outs)) + (1 - a) / 2


def hand_rmia(px, ref, in_mask, pz, ref_z, in_z, gamma, a, online):
    k = len(ref)
    scores = []
    ratios_z = [pz[j] / hand_pr([ref_z[r][j] for r in range(k)], [in_z[r][j] for r in range(k)], online, a)
                for j in range(len(pz))]
    for i in range(len(px)):
        rx = px[i] / hand_pr([ref[r][i] for r in range(k)], [in_mask[r][i] for r in range(k)], online, a)
        scores.append(sum(1 for rz in ratios_z if rx / rz >= gamma) / len(ratios_z))
    return scores


# A small synthetic matrix: K = 6 references, N = 5 examples, every example with >= 2 IN and >= 2 OUT.
SIGNALS = np.array([[2.1, -0.3, 4.0, 0.5, 1.2],
                    [1.7, 0.4, 3.1, -0.2, 0.9],
                    [0.2, -1.1, 2.2, 0.8, 2.5],
                    [0.9, -0.6, 2.9, 1.9, 1.1],
                    [-0.4, 0.9, 1.4, 0.1, 0.3],
                    [0.6, -1.5, 2.6, 1.4, 1.8]])
IN_MASK = np.array([[1, 0, 1, 0, 1],
                    [1, 1, 0, 0, 0],
                    [0, 0, 1, 1, 1],
                    [1, 1, 0, 1, 0],
                    [0, 1, 1, 0, 0],
                    [0, 0, 0, 1, 1]], dtype=bool)
TARGET = np.array([1.9, -0.2, 3.5, 1.0, 0.2])


@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("ddof", [0, 1])
def test_lira_matches_hand_computation(online, fixed, ddof):
    got = sa.lira_scores(TARGET, SIGNALS, IN_MASK, online=online, fixed_variance=fixed, ddof=ddof)
    want = hand_lira(TARGET.tolist(), SIGNALS.tolist(), IN_MASK.tolist(), online, fixed, ddof)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    if not fixed and ddof == 0:  # the default is scipy's maximum-likelihood Gaussian fit per example
        for i in range(SIGNALS.shape[1]):
            mu_o, sd_o = stats.norm.fit(SIGNALS[~IN_MASK[:, i], i])
            mu_i, sd_i = stats.norm.fit(SIGNALS[IN_MASK[:, i], i])
            want_i = (stats.norm.logpdf(TARGET[i], mu_i, sd_i) - stats.norm.logpdf(TARGET[i], mu_o, sd_o)
                      if online else stats.norm.logcdf(TARGET[i], mu_o, sd_o))
            assert got[i] == pytest.approx(want_i, rel=1e-12)


def test_lira_fallbacks_for_examples_without_enough_references():
    # Example 0: 3 OUT references, no IN; example 1: one IN (no variance) and 2 OUT; example 2: 3 IN, no OUT.
    s = np.array([[1.0, 2.0, 5.0], [2.0, 0.0, 6.0], [0.0, 1.0, 4.0]])
    inn = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 1]], dtype=bool)
    x = np.array([1.5, 1.0, 5.5])
    got, fit = sa.lira_scores(x, s, inn, ddof=1, return_fit=True)
    # Only example 1 has both kinds: shift = mu_in - mu_out = 2 - mean(0, 1) = 1.5.
    shift = 2.0 - 0.5
    assert fit["shift"] == pytest.approx(shift)
    # Pooled variances (within-example, ddof 1): OUT from examples 0 (1,2,0) and 1 (0,1); IN from example 2.
    pooled_out = (((1 - 1) ** 2 + (2 - 1) ** 2 + (0 - 1) ** 2) + ((0 - .5) ** 2 + (1 - .5) ** 2)) / (2 + 1)
    pooled_in = ((5 - 5) ** 2 + (6 - 5) ** 2 + (4 - 5) ** 2) / 2
    mu_in = [1.0 + shift, 2.0, 5.0]
    mu_out = [1.0, 0.5, 5.0 - shift]
    sd_in = [math.sqrt(pooled_in), math.sqrt(pooled_in), 1.0]
    sd_out = [1.0, statistics.stdev([0.0, 1.0]), math.sqrt(pooled_out)]
    want = [stats.norm.logpdf(x[i], mu_in[i], sd_in[i]) - stats.norm.logpdf(x[i], mu_out[i], sd_out[i])
            for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(fit["mu_in"], mu_in)
    np.testing.assert_allclose(fit["sigma_out"], sd_out)


def test_lira_needs_the_right_references():
    with pytest.raises(ValueError, match="IN references"):
        sa.lira_scores(TARGET, SIGNALS, np.zeros_like(IN_MASK), online=True)
    # Offline needs OUT references only.
    out_only = sa.lira_scores(TARGET, SIGNALS, np.zeros_like(IN_MASK), online=False)
    want = [stats.norm.logcdf(TARGET[i], SIGNALS[:, i].mean(), SIGNALS[:, i].std()) for i in range(5)]
    np.testing.assert_allclose(out_only, want, rtol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        sa.lira_scores(TARGET[:4], SIGNALS, IN_MASK)
    with pytest.raises(ValueError, match="ref_in_mask"):
        sa.lira_scores(TARGET, SIGNALS, IN_MASK[:, :4])


PROBS = 1.0 / (1.0 + np.exp(-SIGNALS))
TARGET_P = 1.0 / (1.0 + np.exp(-TARGET))
POP_REF = np.array([[0.30, 0.80, 0.55, 0.10], [0.25, 0.70, 0.60, 0.20], [0.40, 0.90, 0.35, 0.15],
                    [0.20, 0.75, 0.50, 0.05], [0.35, 0.60, 0.45, 0.25], [0.30, 0.85, 0.65, 0.12]])
POP_TARGET = np.array([0.33, 0.71, 0.58, 0.09])
POP_IN = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1], [0, 1, 0, 0], [1, 0, 1, 1]],
                  dtype=bool)


@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize("gamma", [1.0, 1.3, 2.0])
def test_rmia_matches_hand_computation(online, gamma):
    a = 0.3
    got = sa.rmia_scores(TARGET_P, PROBS, IN_MASK, POP_TARGET, POP_REF, gamma=gamma, offline_a=a, online=online,
                         population_in_mask=POP_IN)
    want = hand_rmia(TARGET_P.tolist(), PROBS.tolist(), IN_MASK.tolist(), POP_TARGET.tolist(), POP_REF.tolist(),
                     POP_IN.tolist(), gamma, a, online)
    np.testing.assert_allclose(got, want, atol=0)
    if gamma == 1.0:
        assert len(set(np.round(got, 6))) > 1  # the hand case separates examples


def test_rmia_offline_default_treats_population_as_out_of_every_reference():
    got = sa.rmia_scores(TARGET_P, PROBS, IN_MASK, POP_TARGET, POP_REF, gamma=1.5, offline_a=0.5, online=False)
    no_in = [[False] * 4 for _ in range(6)]
    want = hand_rmia(TARGET_P.tolist(), PROBS.tolist(), IN_MASK.tolist(), POP_TARGET.tolist(), POP_REF.tolist(),
                     no_in, 1.5, 0.5, False)
    np.testing.assert_allclose(got, want)


def test_rmia_validates_arguments():
    with pytest.raises(ValueError, match="gamma"):
        sa.rmia_scores(TARGET_P, PROBS, IN_MASK, POP_TARGET, POP_REF, gamma=0.0)
    with pytest.raises(ValueError, match="offline_a"):
        sa.rmia_scores(TARGET_P, PROBS, IN_MASK, POP_TARGET, POP_REF, offline_a=1.5)
    with pytest.raises(ValueError, match="reference models"):
        sa.rmia_scores(TARGET_P, PROBS, IN_MASK, POP_TARGET, POP_REF[:3])
    with pytest.raises(ValueError, match="probabilities"):
        sa.rmia_scores(TARGET_P * 2, PROBS, IN_MASK, POP_TARGET, POP_REF)


def test_signals_from_logits_are_exact_and_stable():
    z = np.array([[2.0, -1.0, 0.5], [0.3, 0.3, 4.0], [1000.0, 0.0, -3.0]])
    y = np.array([0, 2, 0])
    for i in range(2):
        p = _softmax_row(z[i].tolist())[y[i]]
        assert sa.logit_scaled_confidence(z[i:i + 1], y[i:i + 1])[0] == pytest.approx(math.log(p / (1 - p)), rel=1e-12)
        assert sa.true_class_probability(z[i:i + 1], y[i:i + 1])[0] == pytest.approx(p, rel=1e-12)
    # p rounds to 1 in float64: phi = 1000 - log(e^0 + e^-3) stays exact.
    assert sa.logit_scaled_confidence(z[2:], y[2:])[0] == pytest.approx(1000.0 - math.log(1 + math.exp(-3)))
    # [K, N, C] with [N] labels; single-logit binary models.
    stacked = np.stack([z, z + 1.0])
    np.testing.assert_allclose(sa.logit_scaled_confidence(stacked, y)[1], sa.logit_scaled_confidence(z + 1.0, y))
    np.testing.assert_allclose(sa.logit_scaled_confidence(np.array([3.0, -2.0]), np.array([1, 0])), [3.0, 2.0])
    np.testing.assert_allclose(sa.logit_scaled_confidence(np.array([[[3.0], [-2.0]]]), np.array([1, 0])), [[3.0, 2.0]])
    with pytest.raises(ValueError, match="labels"):
        sa.logit_scaled_confidence(z, np.array([0, 3, 1]))


def _synthetic_population(n=600, k=8, seed=0):
    """Per-example difficulty d_i; a model's signal is d_i + 2.5 when trained on the example, else d_i,
    plus run noise. Members of the target: a random half."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.0, 2.0, n)
    in_mask = rm.inclusion_matrix(k, n, seed=seed)
    ref = difficulty + 2.5 * in_mask + rng.normal(0.0, 0.5, (k, n))
    member = rng.random(n) < 0.5
    target = difficulty + 2.5 * member + rng.normal(0.0, 0.5, n)
    return target, ref, in_mask, member


def test_clear_membership_signal_gives_auc_near_one():
    target, ref, in_mask, member = _synthetic_population()
    baseline = attack_metrics(target, member)["auc"]  # the target's confidence alone (no references)
    for online in (True, False):
        for fixed in (False, True):
            scores = sa.lira_scores(target, ref, in_mask, online=online, fixed_variance=fixed)
            auc = attack_metrics(scores, member)["auc"]
            assert auc > 0.97, (online, fixed, auc)
            assert auc > baseline + 0.15
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    nonmembers = ~member
    for online in (True, False):
        scores = sa.rmia_scores(sig(target), sig(ref), in_mask, sig(target[nonmembers]), sig(ref[:, nonmembers]),
                                online=online, population_in_mask=in_mask[:, nonmembers])
        auc = attack_metrics(scores, member)["auc"]
        assert auc > (0.95 if online else 0.9), (online, auc)  # offline: a = 0.3 is only approximate here
        assert auc > baseline + 0.1


def test_score_with_references_from_logits():
    rng = np.random.default_rng(1)
    k, m, c = 4, 30, 3
    ref_logits = rng.normal(size=(k, m, c)) * 2
    target_logits = rng.normal(size=(m, c)) * 2
    labels = rng.integers(0, c, m)
    mask = rm.inclusion_matrix(k, m, seed=3)
    got = sa.score_with_references(target_logits, labels, ref_logits, mask, "lira", online=False)
    want = sa.lira_scores(sa.logit_scaled_confidence(target_logits, labels),
                          np.stack([sa.logit_scaled_confidence(ref_logits[j], labels) for j in range(k)]), mask,
                          online=False)
    np.testing.assert_allclose(got, want)
    pop = np.arange(m) % 3 == 0
    got = sa.score_with_references(target_logits, labels, ref_logits, mask, "rmia", gamma=1.5, population_mask=pop)
    px = sa.true_class_probability(target_logits, labels)
    rp = sa.true_class_probability(ref_logits, labels)
    np.testing.assert_allclose(got, sa.rmia_scores(px, rp, mask, px[pop], rp[:, pop], gamma=1.5))
    # Single-logit binary outputs.
    b = sa.score_with_references(target_logits[:, 0], labels % 2, ref_logits[..., 0], mask, "lira")
    assert b.shape == (m,) and np.all(np.isfinite(b))
    with pytest.raises(ValueError, match="attack"):
        sa.score_with_references(target_logits, labels, ref_logits, mask, "loss")
    with pytest.raises(ValueError, match="ref_logits"):
        sa.score_with_references(target_logits, labels, ref_logits[:, :5], mask)


# ---------------------------------------------------------------------------------------------------------
# Reference models
# ---------------------------------------------------------------------------------------------------------

def test_inclusion_matrix_is_balanced_and_seeded():
    mask = rm.inclusion_matrix(4, 1000, seed=7)
    assert mask.shape == (4, 1000) and mask.dtype == bool
    assert np.all(mask.sum(axis=0) == 2)  # every example IN for exactly half the models
    assert np.all(np.abs(mask.sum(axis=1) - 500) < 80)
    np.testing.assert_array_equal(mask, rm.inclusion_matrix(4, 1000, seed=7))
    assert not np.array_equal(mask, rm.inclusion_matrix(4, 1000, seed=8))
    odd = rm.inclusion_matrix(5, 2000, seed=0)
    assert set(np.unique(odd.sum(axis=0))) <= {2, 3}
    assert abs(odd.sum(axis=0).mean() - 2.5) < 0.1
    with pytest.raises(ValueError, match="k"):
        rm.inclusion_matrix(0, 10)


def test_save_and_load_reference_signals(tmp_path):
    logits = np.random.default_rng(0).normal(size=(3, 7, 4)).astype(np.float32)
    mask = rm.inclusion_matrix(3, 7, seed=1)
    path = str(tmp_path / "refs.npz")
    rm.save_reference_signals(path, {"logits": logits}, mask, {"k": 3, "note": "x"})
    with np.load(path, allow_pickle=False) as f:  # no pickled object inside
        assert set(f.files) == {"signal_logits", "in_mask", "metadata_json"}
    signals, mask2, md = rm.load_reference_signals(path)
    np.testing.assert_array_equal(signals["logits"], logits)
    np.testing.assert_array_equal(mask2, mask)
    assert md == {"k": 3, "note": "x"}
    with pytest.raises(ValueError, match="first axes"):
        rm.save_reference_signals(path, {"logits": logits[:2]}, mask)


def _tiny_model():
    import keras

    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])


@pytest.mark.medium
def test_train_reference_models_shapes_cache_and_results(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    m = 90
    x = rng.normal(size=(m, 8)).astype(np.float32)
    y = rng.integers(0, 3, m)
    path = str(tmp_path / "refs.npz")
    kwargs = dict(k=2, epochs=2, batch_size=16, learning_rate=0.05, seed=3, cache_path=path)
    signals, mask = rm.train_reference_models(_tiny_model, x, y, **kwargs)
    assert signals["logits"].shape == (2, m, 3) and signals["logits"].dtype == np.float32
    assert np.all(mask.sum(axis=0) == 1)
    np.testing.assert_array_equal(mask, rm.inclusion_matrix(2, m, seed=3))
    _, _, md = rm.load_reference_signals(path)
    assert md["recipe"]["backend"] == "keras" and md["population_fingerprint"]

    def no_training(*_args, **_kw):
        raise AssertionError("the cached matrix should have been reused")
    monkeypatch.setattr(rm.training, "_worker_train", no_training)
    again, mask2 = rm.train_reference_models(_tiny_model, x, y, **kwargs)
    np.testing.assert_array_equal(again["logits"], signals["logits"])
    with pytest.raises(AssertionError, match="reused"):  # another recipe: the cache is not used
        rm.train_reference_models(_tiny_model, x, y, **{**kwargs, "epochs": 3})
    monkeypatch.undo()

    # One model of the design on its own (for fan-out over a distributed runner) gives the same row.
    recipe = rm.TrainingRecipe(epochs=2, batch_size=16, learning_rate=0.05, private=False)
    np.testing.assert_array_equal(rm.train_reference_model(1, _tiny_model, x, y, recipe, k=2, seed=3),
                                  signals["logits"][1])
    # Worker processes give the same matrix (up to float summation order with fewer threads). On the Python
    # 3.12 / TensorFlow 2.21 core environment a spawned worker dies while starting (known, open): the in-process
    # path above is what that environment supports; the pipeline's ReferenceModelTrainer runs on 3.10.
    if sys.version_info < (3, 11):
        par, par_mask = rm.train_reference_models(_tiny_model, x, y, k=2, epochs=2, batch_size=16,
                                                  learning_rate=0.05, seed=3, n_jobs=2)
        np.testing.assert_array_equal(par_mask, mask)
        np.testing.assert_allclose(par["logits"], signals["logits"], rtol=1e-4, atol=1e-4)

    # A private recipe trains through the project's DP-SGD loop.
    dp_signals, dp_mask = rm.train_reference_models(_tiny_model, x, y, k=2, epochs=1, batch_size=16,
                                                    learning_rate=0.05, seed=0, private=True,
                                                    noise_multiplier=1.0, l2_norm_clip=1.0)
    assert dp_signals["logits"].shape == (2, m, 3) and np.all(np.isfinite(dp_signals["logits"]))
    with pytest.raises(ValueError, match="noise_multiplier"):
        rm.train_reference_models(_tiny_model, x, y, k=2, epochs=1, batch_size=16, learning_rate=0.05, private=True)

    from privacy_audit.components.membership_inference import results

    member = rng.random(m) < 0.5
    target = signals["logits"][0] + rng.normal(size=(m, 3)).astype(np.float32)
    entries = sa.reference_attack_results(target, y, member, dp_signals["logits"], dp_mask,
                                          attack_options={"lira": {"online": False}}, by_class=True,
                                          min_slice_size=5)
    names = {(e["attack"], e["slice"]["feature"]) for e in entries}
    assert ("lira_offline", "entire_dataset") in names and ("rmia", "entire_dataset") in names
    assert ("rmia", "class") in names
    results.build_results(entries, {"model_variant": "t"})  # valid against the results schema
