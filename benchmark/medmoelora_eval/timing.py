"""Paired timing: timers run side by side in each repetition, and a distribution-free interval for a median.

Every speed ratio the benchmarks report (perf_layer, perf_model) is the median over repetitions of a
ratio measured back to back within one repetition, so that load changing over the run moves both sides
of a pair alike; its interval is the one `median_interval` gives.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable

from medmoelora.errors import UserError


def paired(timers: dict[str, Callable[[], float]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Each timer's seconds per repetition: ``warmup`` untimed rounds, then ``repeats`` rounds of every timer."""
    for _ in range(warmup):
        for timer in timers.values():
            timer()
    samples: dict[str, list[float]] = {name: [] for name in timers}
    names = list(timers)
    for repetition in range(repeats):
        # Interleaved, so each repetition compares like with like; the order rotates between repetitions
        # so that load changing during one (a shared machine) does not always fall on the same timer.
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(timers[name]())
    return samples


def paired_ratios(samples: dict[str, list[float]], a: str, b: str) -> list[float]:
    """time(a) / time(b) of each repetition (each pair measured back to back)."""
    return [x / y for x, y in zip(samples[a], samples[b], strict=True)]


def median_ratio(samples: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(paired_ratios(samples, a, b))


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free interval for the median of ``values``: order statistics x_(k) and x_(n+1-k), with
    the largest k whose coverage 1 - 2 P(Binomial(n, 1/2) < k) is at least ``confidence`` (k = 1, the range,
    where no k reaches it: then the coverage is lower, and returned). Returns (low, high, coverage)."""
    ordered, n = sorted(values), len(values)

    def coverage(k: int) -> float:
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], coverage(k)


def pooled_median(each: list[list[float]]) -> tuple[float, float, float, float]:
    """One figure over several settings (shapes, ranks) of the same repetitions: per repetition, the median of
    its ratios across settings; then the median of those and its interval. ``each`` holds one list per setting,
    of one ratio per repetition. Returns (median, low, high, coverage)."""
    if len({len(ratios) for ratios in each}) != 1:
        raise ValueError("every setting needs the same number of repetitions to pool them")
    per_repetition = [statistics.median(ratios) for ratios in zip(*each, strict=True)]
    return (statistics.median(per_repetition), *median_interval(per_repetition))


def each_from_text(texts: Iterable[str | float]) -> list[list[float]]:
    """The per-repetition ratios of several settings, from the space-separated ``<ratio>_each`` CSV column
    (which pandas reads as numbers when each setting has one repetition)."""
    return [[float(ratio) for ratio in str(text).split()] for text in texts]


def require_counts(*counts: tuple[str, int, int]) -> None:
    """(flag, value, least) per command-line count: a value under its least is a one-line UserError."""
    for flag, value, least in counts:
        if value < least:
            raise UserError(f"{flag} {value}: give at least {least}")
