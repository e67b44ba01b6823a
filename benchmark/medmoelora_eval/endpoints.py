"""The test of a claim's primary endpoint: accuracy of run A against run B on the same documents.

The analysis plan (docs/analysis-plan.md) fixes the method by the number of training seeds:

- **One seed per run**: the verdict is about these two trained models. Each document is a pair of
  correct / wrong answers; ``b`` documents only A gets right, ``c`` only B. Superiority (H0: delta <= 0)
  is the exact one-sided McNemar test; non-inferiority (H0: delta <= -margin) is Tango's score test
  (`medmoelora_eval.inference`). The interval is Tango's 95% score interval.
- **Two or more seeds per run**: the verdict is about the methods. A random-effects (two-way crossed,
  seeds x documents) t: the difference of the grand means, its variance the sum of each run's
  between-seed variance over its seed count and the variance of the per-document differences (each
  averaged over seeds) over the document count, on Satterthwaite's degrees of freedom. Each term also
  holds the seed x document residual, so the variance counts it twice: conservative, as Owen's two-way
  bootstrap is. With S seeds per run the degrees of freedom are at least S - 1 (one seed term dominating).

Both are one-sided at ``ALPHA`` (0.025) per direction: "supported" tests the claim's direction,
"contradicted" the opposite one. A pair of runs with no document that differs is not tested: the data
carry no variance. The smallest detectable effect is given only when at least ``MIN_DISCORDANT``
documents differ (fewer make the normal approximation behind it meaningless); a non-inferiority test
gives its power at the margin instead (the chance of "supported" if the runs were truly equal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t

from medmoelora_eval.inference import mcnemar_exact_p, tango_lower_bound, tango_p
from medmoelora_eval.samples import Stratum

ALPHA = 0.025  # one-sided, per direction: a two-sided 0.05 split between "supported" and "contradicted"
POWER = 0.8
MIN_DISCORDANT = 10  # documents that must differ before an MDE or a power figure is stated
DOCUMENT_TESTS = "exact McNemar (superiority), Tango score test (non-inferiority); one seed"
SEED_TEST = "random-effects t over seeds and documents, Satterthwaite df"


@dataclass(frozen=True)
class EndpointTest:
    """Run A - run B in accuracy points with its 95% interval and one-sided p-values.

    ``p_support`` tests the claim's direction (A better; or A no worse than ``margin`` below B),
    ``p_contradict`` the opposite (B better; or A worse than B by more than ``margin``). Either is NaN
    where the comparison is not tested (``why_untested`` says why).
    """

    difference: float
    lo: float
    hi: float
    p_support: float
    p_contradict: float
    method: str
    n_documents: int
    n_discordant: int
    n_seeds: str
    mde: float = float("nan")  # superiority: the effect found with probability POWER at ALPHA
    power_at_margin: float = float("nan")  # non-inferiority: P(supported) if the runs were equal
    why_untested: str = ""


def pooled(strata: Sequence[Stratum]) -> Stratum:
    """One stratum holding every task's documents: a document-weighted score (the analysis plan's medical
    average; with equal task sizes it equals the mean of the task scores)."""
    if len(strata) == 1:
        return strata[0]
    return Stratum(
        name="+".join(s.name for s in strata),
        numerator=np.concatenate([s.numerator for s in strata], axis=1),
        denominator=np.concatenate([s.denominator for s in strata], axis=1),
        documents=tuple((s.name, *doc) for s in strata for doc in s.documents),
    )


def accuracy_test(a: Stratum, b: Stratum, margin: float | None = None, alpha: float = ALPHA) -> EndpointTest:
    """The primary test of accuracy (points, 0/100 per document and seed) of A against B.

    ``margin`` None tests superiority; a margin (points, > 0) tests non-inferiority.
    """
    if a.documents != b.documents:
        raise ValueError(f"runs hold different {a.name} documents; evaluate both on the same documents")
    x, y = a.numerator / 100.0, b.numerator / 100.0  # (S_a, D), (S_b, D): 1 correct, 0 wrong
    if not (np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()):
        raise ValueError("accuracy_test needs per-document accuracy of 0 or 100 points")
    seeds = f"{a.seeds}/{b.seeds}"
    documents = x.shape[1]
    mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)  # (D,) each document's accuracy over seeds
    discordant = int(np.count_nonzero(mean_x != mean_y))
    difference = 100.0 * float(mean_x.mean() - mean_y.mean())
    if discordant == 0:
        return _untested(difference, documents, seeds, "no document differs between the runs: no variance")
    if a.seeds == 1 and b.seeds == 1:
        return _document_test(x[0], y[0], margin, alpha, seeds)
    if a.seeds == 1 or b.seeds == 1:
        return _untested(
            difference,
            documents,
            seeds,
            f"one run has {a.seeds} seeds, the other {b.seeds}: train both with the same number of seeds",
            discordant,
        )
    return _seed_test(x, y, margin, alpha, discordant)


def _untested(difference: float, documents: int, seeds: str, why: str, discordant: int = 0) -> EndpointTest:
    nan = float("nan")
    return EndpointTest(difference, nan, nan, nan, nan, "", documents, discordant, seeds, why_untested=why)


def _document_test(x: np.ndarray, y: np.ndarray, margin: float | None, alpha: float, seeds: str) -> EndpointTest:
    """One seed each: McNemar / Tango on the paired 2 x 2 table."""
    n = len(x)
    only_a, only_b = int(np.sum((x == 1) & (y == 0))), int(np.sum((x == 0) & (y == 1)))
    lo = 100.0 * tango_lower_bound(only_a, only_b, n, alpha)
    hi = -100.0 * tango_lower_bound(only_b, only_a, n, alpha)  # the upper bound: B - A's lower bound, negated
    discordance = (only_a + only_b) / n
    mde = power = float("nan")
    if margin is None:
        p_support, p_contradict = mcnemar_exact_p(only_a, only_b), mcnemar_exact_p(only_b, only_a)
        method = "exact McNemar"
        if only_a + only_b >= MIN_DISCORDANT:
            mde = 100.0 * (norm.ppf(1 - alpha) + norm.ppf(POWER)) * math.sqrt(discordance / n)
    else:
        m = margin / 100.0
        p_support = tango_p(only_a, only_b, n, -m)  # H0: delta <= -m
        p_contradict = tango_p(only_b, only_a, n, m)  # H0: B - A <= m, i.e. delta >= -m
        method = "Tango score test"
        if only_a + only_b >= MIN_DISCORDANT:  # normal approximation at the observed discordance
            power = float(norm.cdf(m / math.sqrt(discordance / n) - norm.ppf(1 - alpha)))
    return EndpointTest(
        100.0 * (only_a - only_b) / n,
        lo,
        hi,
        p_support,
        p_contradict,
        method,
        n,
        only_a + only_b,
        seeds,
        mde=mde,
        power_at_margin=power,
    )


def seed_level_standard_error(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(SE, Satterthwaite df) of mean(x) - mean(y) for (S_a, D) and (S_b, D) values on the same documents:
    between-seed variance of each run over its seeds, plus the per-document differences' variance over
    the documents (see the module docstring)."""
    terms = [  # (variance of the mean, degrees of freedom)
        (x.mean(axis=1).var(ddof=1) / x.shape[0], x.shape[0] - 1),
        (y.mean(axis=1).var(ddof=1) / y.shape[0], y.shape[0] - 1),
        ((x.mean(axis=0) - y.mean(axis=0)).var(ddof=1) / x.shape[1], x.shape[1] - 1),
    ]
    variance = sum(v for v, _ in terms)
    df = variance**2 / sum(v**2 / d for v, d in terms if v > 0)
    return math.sqrt(variance), df


def _seed_test(x: np.ndarray, y: np.ndarray, margin: float | None, alpha: float, discordant: int) -> EndpointTest:
    """Two or more seeds each: the random-effects t."""
    difference = float(x.mean() - y.mean())  # a proportion
    se, df = seed_level_standard_error(x, y)
    half = student_t.ppf(1 - alpha, df) * se
    shift = 0.0 if margin is None else margin / 100.0
    p_support = float(student_t.sf((difference + shift) / se, df))
    p_contradict = float(student_t.cdf((difference + shift) / se, df))
    mde = power = float("nan")
    if discordant >= MIN_DISCORDANT:
        if margin is None:
            mde = 100.0 * (student_t.ppf(1 - alpha, df) + student_t.ppf(POWER, df)) * se
        else:
            power = float(student_t.sf(student_t.ppf(1 - alpha, df) - shift / se, df))
    return EndpointTest(
        100.0 * difference,
        100.0 * (difference - half),
        100.0 * (difference + half),
        p_support,
        p_contradict,
        f"{SEED_TEST} ({df:.1f})",
        x.shape[1],
        discordant,
        f"{x.shape[0]}/{y.shape[0]}",
        mde=mde,
        power_at_margin=power,
    )
