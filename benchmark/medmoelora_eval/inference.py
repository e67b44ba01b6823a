"""Tests for paired accuracy that stay valid when two runs rarely disagree, and Holm's step-down.

Two runs scored on the same n documents give a paired 2 x 2 table: ``b`` documents only run A gets
right, ``c`` only run B, the rest alike. The accuracy difference is delta = (b - c) / n.

- **Superiority** (H0: delta <= 0): the exact one-sided McNemar test, a binomial test of the b + c
  discordant documents at 1/2. Exact, so a handful of documents cannot reach a small p by accident.
- **Non-inferiority** (H0: delta <= -margin): Tango's (1998) score test. Its variance is that of the
  restricted maximum-likelihood table under H0, so a run pair with no or few discordant documents
  keeps a positive variance at the margin. A percentile bootstrap, or a sign-flip test shifted by the
  margin, has no such floor: with no losing document its bound is exactly 0 and "no worse" follows from
  a few tied documents. The bound from inverting this test is Tango's score interval.
- **Holm's step-down** adjusts a family of p-values for its family-wise error rate.

Reference: Tango T. (1998), Equivalence test and confidence interval for the difference in proportions
for the paired-sample design, Statistics in Medicine 17:891-908.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import brentq
from scipy.stats import binomtest, norm


def _check_table(discordant_a: int, discordant_b: int, documents: int) -> None:
    if min(discordant_a, discordant_b) < 0 or discordant_a + discordant_b > documents or documents < 1:
        raise ValueError(
            f"a paired table needs 0 <= b, c and b + c <= n >= 1; got b={discordant_a}, c={discordant_b}, n={documents}"
        )


def mcnemar_exact_p(discordant_a: int, discordant_b: int) -> float:
    """One-sided exact p of H0 delta <= 0 against delta > 0: P(Binomial(b + c, 1/2) >= b); 1 when b + c = 0."""
    if discordant_a + discordant_b == 0:
        return 1.0
    return float(binomtest(discordant_a, discordant_a + discordant_b, 0.5, alternative="greater").pvalue)


def tango_statistic(discordant_a: int, discordant_b: int, documents: int, null_difference: float) -> float:
    """Tango's score statistic of H0 delta = ``null_difference`` (a proportion in (-1, 1)): large when the
    observed difference lies above it."""
    _check_table(discordant_a, discordant_b, documents)
    b, c, n, delta = discordant_a, discordant_b, documents, null_difference
    # The restricted MLE of P(only B right) under p_b - p_c = delta: the root in [0, 1] of
    # 2n q^2 + w q - c delta (1 - delta) = 0.
    w = -b - c + (2 * n - b + c) * delta
    q = (math.sqrt(w * w + 8 * n * c * delta * (1 - delta)) - w) / (4 * n)
    variance = n * (2 * q + delta * (1 - delta))  # n Var((b - c) / n) under the restricted table
    difference = b - c - n * delta
    if variance <= 0:  # delta = 0 with no discordant document: nothing to test
        return 0.0 if difference == 0 else math.copysign(math.inf, difference)
    return difference / math.sqrt(variance)


def tango_p(discordant_a: int, discordant_b: int, documents: int, null_difference: float) -> float:
    """One-sided p of H0 delta <= ``null_difference`` against delta > it (normal approximation)."""
    return float(norm.sf(tango_statistic(discordant_a, discordant_b, documents, null_difference)))


def tango_lower_bound(discordant_a: int, discordant_b: int, documents: int, alpha: float = 0.025) -> float:
    """The one-sided (1 - alpha) lower confidence bound of delta: the smallest null difference the
    one-sided test does not reject at ``alpha``."""
    _check_table(discordant_a, discordant_b, documents)
    observed = (discordant_a - discordant_b) / documents
    low = -1 + 1e-12
    if tango_p(discordant_a, discordant_b, documents, low) >= alpha:
        return -1.0
    # p rises with the null difference, from ~0 far below the estimate to 1/2 at it
    return float(brentq(lambda d: tango_p(discordant_a, discordant_b, documents, d) - alpha, low, observed, xtol=1e-10))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values: a family-wise error rate at most alpha when each adjusted
    p < alpha is rejected. NaN entries (untested) are left out and stay NaN."""
    values = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(values, np.nan)
    tested = np.flatnonzero(~np.isnan(values))
    order = tested[np.argsort(values[tested], kind="stable")]
    count = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (count - rank) * values[index]))  # monotone in the ordered p
        adjusted[index] = running
    return adjusted
