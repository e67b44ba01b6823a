"""Bootstrap intervals, the paired permutation test and the detectable effect, on known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from medmoelora.errors import UserError
from medmoelora_eval.samples import Stratum
from medmoelora_eval.stats import (
    bootstrap,
    estimate,
    minimum_detectable_effect,
    paired_comparison,
    resampled_scores,
    score_interval,
    sign_flip_p_value,
)

SEED = 7
RESAMPLES = 2000


def stratum(values, denominator=None, name: str = "task") -> Stratum:
    """A stratum from (D,) values (one seed) or (S, D) values."""
    numerator = np.atleast_2d(np.asarray(values, dtype=float))
    denominator = np.ones_like(numerator) if denominator is None else np.atleast_2d(np.asarray(denominator, float))
    return Stratum(name, numerator, denominator, tuple(range(numerator.shape[1])))


def test_bernoulli_interval_covers_p_with_the_normal_approximations_width():
    n, p = 4000, 0.3
    correct = np.random.default_rng(SEED).random(n) < p
    interval = score_interval([stratum(100.0 * correct)], resamples=RESAMPLES)
    normal_width = 2 * 1.96 * math.sqrt(p * (1 - p) / n) * 100
    assert interval.lo < 100 * p < interval.hi
    assert interval.hi - interval.lo == pytest.approx(normal_width, rel=0.08)
    assert interval.estimate == pytest.approx(100 * correct.mean())
    assert interval.standard_error == pytest.approx(100 * math.sqrt(p * (1 - p) / n), rel=0.08)


def test_one_seed_one_task_interval_matches_scipys_percentile_bootstrap():
    values = np.random.default_rng(SEED).normal(size=300)
    ours = score_interval([stratum(values)], resamples=RESAMPLES)
    reference = scipy_stats.bootstrap(
        (values,), np.mean, method="percentile", n_resamples=RESAMPLES, rng=np.random.default_rng(1)
    ).confidence_interval
    width = reference.high - reference.low
    assert ours.lo == pytest.approx(reference.low, abs=0.05 * width)
    assert ours.hi == pytest.approx(reference.high, abs=0.05 * width)


def test_bootstrap_is_reproducible_from_its_seed():
    values = [stratum(np.random.default_rng(SEED).random(50))]
    assert np.array_equal(bootstrap(values, resamples=500, seed=3), bootstrap(values, resamples=500, seed=3))
    assert not np.array_equal(bootstrap(values, resamples=500, seed=3), bootstrap(values, resamples=500, seed=4))


def test_a_task_average_resamples_documents_within_each_task():
    # Two tasks of constant scores and very different sizes: resampling within each task keeps both
    # task means, so the unweighted average cannot move; pooling the documents would.
    tasks = [stratum(np.full(10, 100.0), name="small"), stratum(np.zeros(1000), name="large")]
    interval = score_interval(tasks, resamples=500)
    assert (interval.estimate, interval.lo, interval.hi) == (50.0, 50.0, 50.0)


def test_seed_variation_widens_the_interval():
    documents = np.random.default_rng(SEED).normal(size=400)
    seed_offsets = np.array([[-0.3], [0.0], [0.3]])  # three trained models, one uniformly better than another
    two_level = score_interval([stratum(documents + seed_offsets)], resamples=RESAMPLES)
    seeds_averaged = score_interval([stratum((documents + seed_offsets).mean(axis=0))], resamples=RESAMPLES)
    assert two_level.estimate == pytest.approx(seeds_averaged.estimate)
    assert two_level.hi - two_level.lo > 1.5 * (seeds_averaged.hi - seeds_averaged.lo)
    assert two_level.n_seeds == 3


def test_bits_per_byte_is_a_ratio_of_sums_resampled_as_a_ratio():
    nats = np.array([100.0, 30.0, 500.0])  # -loglikelihood per document
    size = np.array([200.0, 10.0, 400.0])  # bytes
    bits = stratum(nats / math.log(2), size)
    assert estimate([bits]) == pytest.approx(nats.sum() / (math.log(2) * size.sum()))
    # one resample drawing document 0 twice and document 2 once: both sums from that same draw
    drawn = np.array([[0, 0, 2]])
    replicate = resampled_scores([bits], np.ones((1, 1)), [drawn])
    assert replicate[0] == pytest.approx((2 * 100 + 500) / (math.log(2) * (2 * 200 + 400)))


def test_bits_per_byte_interval_weighs_documents_by_their_bytes():
    rng = np.random.default_rng(SEED)
    size = np.where(np.arange(200) < 100, 1000.0, 10.0)  # long documents at ~1 bit per byte, short ones at ~3
    per_byte = np.where(size > 100, 1.0, 3.0) + 0.05 * rng.normal(size=200)
    interval = score_interval([stratum(per_byte * size, size)], resamples=RESAMPLES)
    assert interval.lo < (per_byte * size).sum() / size.sum() < interval.hi
    assert interval.hi < per_byte.mean()  # the mean of per-document ratios is not the estimator


def _paired_runs(planted: float, seed: int = SEED, n: int = 300) -> tuple[Stratum, Stratum]:
    """Run b answers each document right with probability 0.5; run a fixes a ``planted`` share of b's
    errors or, for the null (planted 0), turns 15% of b's right answers wrong and as many wrong ones right."""
    rng = np.random.default_rng(seed)
    b = rng.random(n) < 0.5
    a = b | (~b & (rng.random(n) < planted))
    if planted == 0:  # the same accuracy on other documents
        swaps = int(0.15 * b.sum())
        a = b.copy()
        a[rng.choice(np.flatnonzero(b), swaps, replace=False)] = False
        a[rng.choice(np.flatnonzero(~b), swaps, replace=False)] = True
    return stratum(100.0 * a), stratum(100.0 * b)


def test_paired_test_finds_a_planted_difference():
    a, b = _paired_runs(planted=0.3)
    result = paired_comparison([a], [b], resamples=RESAMPLES)
    assert result.difference == pytest.approx(estimate([a]) - estimate([b]))
    assert result.difference > 10
    assert result.lo > 0
    assert result.p_value < 0.001


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_paired_test_does_not_find_a_null_difference(seed):
    a, b = _paired_runs(planted=0.0, seed=seed)
    result = paired_comparison([a], [b], resamples=RESAMPLES)
    assert result.difference == 0
    assert result.lo < 0 < result.hi
    assert result.p_value > 0.05


def test_p_value_rejects_about_5_percent_of_null_datasets():
    rng = np.random.default_rng(SEED)
    p_values = []
    for _ in range(200):
        b = rng.random(60) < 0.5
        a = np.where(rng.random(60) < 0.3, rng.random(60) < 0.5, b)  # re-answered at random: no effect
        p_values.append(sign_flip_p_value([stratum(a)], [stratum(b)], resamples=500, seed=0))
    assert 0.01 <= np.mean(np.array(p_values) < 0.05) <= 0.10


def test_paired_comparison_needs_the_same_documents():
    with pytest.raises(UserError, match=r"different task documents \(3 vs 4, 3 shared\)"):
        paired_comparison([stratum([1, 2, 3])], [stratum([1, 2, 3, 4])], resamples=10)


def test_minimum_detectable_effect_formula():
    assert minimum_detectable_effect(1.0) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    assert minimum_detectable_effect(2.0, alpha=0.1, power=0.9) == pytest.approx(2 * (1.644854 + 1.281552), abs=1e-5)


def test_detectable_effect_of_a_paired_mean_is_2_8_standard_errors_of_the_differences():
    rng = np.random.default_rng(SEED)
    b = rng.normal(size=500)
    a = b + 0.1 + rng.normal(size=500)
    result = paired_comparison([stratum(a)], [stratum(b)], resamples=RESAMPLES)
    standard_error = np.std(a - b, ddof=1) / math.sqrt(500)
    assert result.mde == pytest.approx(2.8016 * standard_error, rel=0.05)


def test_detectable_effect_is_empty_when_no_document_differs():
    same = stratum(np.zeros(40))
    result = paired_comparison([same], [same], resamples=200)
    assert math.isnan(result.mde)
    assert result.p_value == 1.0


def test_two_documents_that_favour_one_run_are_not_enough():
    # Every bootstrap resample of two positive differences is positive: the interval excludes zero,
    # but the exact sign-flip test of 2 documents cannot go below p = 0.5.
    result = paired_comparison([stratum([1.0, 0.6])], [stratum([0.2, 0.1])], resamples=RESAMPLES)
    assert result.lo > 0
    assert result.p_value == pytest.approx(0.5)


def test_one_document_gives_p_1():
    # the exact test of one document: its two sign flips are equally extreme (scipy refuses one observation)
    result = paired_comparison([stratum([1.0])], [stratum([0.0])], resamples=RESAMPLES)
    assert result.p_value == 1.0 and result.difference == 1.0


def test_shifted_test_is_the_test_of_the_tolerance():
    rng = np.random.default_rng(SEED)
    b = rng.normal(size=400)
    a = b - 0.05 + 0.1 * rng.normal(size=400)  # slightly worse, far less than the tolerance 0.5 allows
    runs = [stratum(a)], [stratum(b)]
    assert sign_flip_p_value(*runs, resamples=RESAMPLES, null_difference=-0.5) < 0.001
    assert sign_flip_p_value(*runs, resamples=RESAMPLES, null_difference=float(np.mean(a - b))) > 0.9
    # bits per byte: the shift is per byte, so the score moves by exactly null_difference
    size = rng.integers(10, 1000, 400).astype(float)
    bits_a, bits_b = stratum((1.0 + 0.01 * rng.normal(size=400)) * size, size), stratum(1.2 * size, size)
    observed = estimate([bits_a]) - estimate([bits_b])
    assert observed == pytest.approx(-0.2, abs=0.01)
    assert sign_flip_p_value([bits_a], [bits_b], resamples=RESAMPLES, null_difference=observed) > 0.9
