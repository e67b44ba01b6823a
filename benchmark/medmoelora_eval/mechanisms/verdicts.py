"""Verdicts on the depth and subspace mechanisms, from the per-module tables of `routing` and `subspace`.

Both compare two groups of modules by the difference of their means, with a 95% percentile bootstrap
interval that redraws the modules of each group with replacement (seed and resample count of
`medmoelora_eval.stats`). The unit is the module: modules of one layer share its input, so the interval is
somewhat optimistic, and the routing statistics come from a few examples per task; a verdict here is
evidence from this run's weights, not a test across trained models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medmoelora_eval.stats import (
    CONFIDENCE,
    CONTRADICTED,
    INCONCLUSIVE,
    RESAMPLES,
    SEED,
    SUPPORTED,
    percentile_interval,
)

DEPTH_RULE = (
    "Depth: in the asymmetric allocation, the mutual information between task and top-1 expert above its "
    "chance level ((T - 1)(N - 1) / 2n, which grows with N) of the modules in the upper layers (those with "
    "the most experts) minus that of the lower layers; supported when its 95% interval (modules resampled) "
    "lies above 0, contradicted when below 0, otherwise inconclusive."
)
SEPARATION_RULE = (
    "Separation: the mean principal angle between the output subspaces of a base expert and a specialist "
    "minus that between two specialists, over modules; supported when its 95% interval (modules resampled) "
    "lies above 0 (general and domain updates are further apart than the specialists among themselves), "
    "contradicted when below 0, otherwise inconclusive."
)


def difference_of_means(
    first: np.ndarray, second: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float, float]:
    """mean(first) - mean(second) and its bootstrap interval, each group's values redrawn with replacement."""
    rng = np.random.default_rng(seed)
    draws_first = first[rng.integers(0, len(first), (resamples, len(first)))].mean(axis=1)
    draws_second = second[rng.integers(0, len(second), (resamples, len(second)))].mean(axis=1)
    return (float(first.mean() - second.mean()), *percentile_interval(draws_first - draws_second, CONFIDENCE))


def interval_verdict(lo: float, hi: float) -> str:
    return SUPPORTED if lo > 0 else CONTRADICTED if hi < 0 else INCONCLUSIVE


def depth_verdict(routing: pd.DataFrame, allocation: str = "asymmetric") -> dict[str, object]:
    """`DEPTH_RULE` on the per-module routing table (one allocation's rows)."""
    rows = routing[routing["allocation"] == allocation]
    excess = rows["mutual_information"] - rows["chance_information"]
    most = rows["num_experts"].max()
    upper = excess[rows["num_experts"] == most].to_numpy(dtype=float)
    lower = excess[rows["num_experts"] < most].to_numpy(dtype=float)
    if rows.empty or not len(lower):
        return {"verdict": INCONCLUSIVE, "note": f"no {allocation} layers with fewer experts than others to compare"}
    difference, lo, hi = difference_of_means(upper, lower)
    return {
        "verdict": interval_verdict(lo, hi),
        "upper": float(upper.mean()),
        "lower": float(lower.mean()),
        "difference": difference,
        "lo": lo,
        "hi": hi,
        "upper_experts": int(most),
        "lower_experts": sorted(int(n) for n in rows.loc[rows["num_experts"] < most, "num_experts"].unique()),
    }


def separation_verdict(angles: pd.DataFrame, side: str = "output") -> dict[str, object]:
    """`SEPARATION_RULE` on the per-module subspace table."""
    rows = angles[angles["side"] == side]
    base = rows.loc[rows["pair"] == "base-specialist", "mean_angle"].to_numpy(dtype=float)
    among = rows.loc[rows["pair"] == "specialist-specialist", "mean_angle"].to_numpy(dtype=float)
    if not len(base) or not len(among):
        return {"verdict": INCONCLUSIVE, "note": "no module with both a base expert and two specialists"}
    difference, lo, hi = difference_of_means(base, among)
    return {
        "verdict": interval_verdict(lo, hi),
        "base_specialist": float(base.mean()),
        "specialist_specialist": float(among.mean()),
        "chance": float(rows["chance_angle"].mean()),
        "difference": difference,
        "lo": lo,
        "hi": hi,
    }
