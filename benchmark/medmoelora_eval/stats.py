"""Intervals, paired tests and detectable effects on per-document evaluation results.

    python -m medmoelora_eval.stats --eval-dir results/eval --runs base lora med_moe_lora --base base \
        --out results/intervals.csv

How the numbers are computed (the report cites this text):

- **Scores.** Every score is a ratio of per-document sums, sum(numerator) / sum(denominator) over a
  run's seeds and documents: accuracy (100 x correct over 1: percent), the mean of a per-document value
  (gold log-probability, Brier score: the value over 1), and bits per byte (-loglikelihood / ln 2 over
  the document's bytes: a ratio estimator, so a document weighs by its length, as lm-eval computes it).
  A score over several tasks (the medical average: MedQA, PubMedQA, MMLU-medical) is the unweighted
  mean of the task scores: each task counts once whatever its size, as in the tables' Medical avg.
- **Intervals.** 95% percentile bootstrap, 10,000 resamples, a numpy Generator seeded with 0 (both
  written into every output). Each resample draws documents with replacement within each task,
  independently per task (a stratified bootstrap: every task keeps its size and its weight in an
  average), and draws the run's training seeds with replacement, one seed draw shared by all tasks (a
  seed is one trained model evaluated on every task). Seeds and documents are crossed (every seed is
  evaluated on the same documents), so the two draws are independent: the two-way ("pigeonhole")
  bootstrap of Owen (2007), which is slightly conservative. Numerator and denominator are summed over
  the same resample, so bits per byte is resampled as a ratio.
- **Why seeds are resampled, not averaged away.** The paper's claims are about methods, not about one
  trained model, so the variation between training seeds belongs in the interval. Averaging the seeds
  first and bootstrapping documents alone would condition on the seeds drawn and give intervals too
  narrow for a claim about a method. With one seed the procedure is the ordinary document bootstrap;
  with 3 seeds the seed level takes only 10 distinct draws: the interval is coarse, not narrower.
- **Paired comparisons** (run A minus run B, same documents): every resample applies one document draw
  to both runs (the pairing) and draws each run's seeds independently (seed k of A and seed k of B are
  different models). The difference is score(A) - score(B) in the metric's units.
- **p-value.** Two-sided paired sign-flip permutation test (approximate randomisation; scipy's
  ``permutation_test``, exact when 2^n <= resamples): under "A and B are exchangeable" each document's
  two values (each averaged over its run's seeds) are swapped at random. Documents are its unit and it
  conditions on the trained seeds. ``null_difference`` shifts the tested value: each document's value
  of A is lowered by it times the document's denominator, which moves the score by exactly that. The
  claims are not tested here: their verdicts follow the analysis plan's tests
  (`medmoelora_eval.endpoints`), which stay valid when two runs rarely disagree.
- **Smallest detectable effect** at 80% power, two-sided alpha 0.05: (z_0.975 + z_0.8) x SE = 2.80 x SE,
  SE being the standard deviation of the bootstrap differences (with one seed and one task, the paired
  differences' standard error sd / sqrt(n)). A true effect of this size would be found with probability
  0.8; smaller ones would mostly be missed. Where no document differs between the two runs, the data
  say nothing about the variance and the detectable effect is left empty.

scipy's ``bootstrap`` resamples one level of independent observations; it has neither the stratified
nor the crossed seeds x documents draw, so the resampling here is numpy (vectorised draws of document
indices, multinomial counts of seeds).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm, permutation_test

from medmoelora import atomic
from medmoelora.errors import UserError, command_main
from medmoelora_eval.samples import METRICS, Stratum, available_scopes, has_metric, load_samples, strata

RESAMPLES = 10_000
SEED = 0
CONFIDENCE = 0.95
ALPHA = 0.05
POWER = 0.8
_CHUNK_CELLS = 1 << 22  # resampled document indices held at once (x 8 bytes): bounds memory on full test sets

INTERVAL_METHOD = (
    "95% percentile bootstrap ({resamples} resamples, numpy seed {seed}): documents "
    "are drawn with replacement within each task, and a run's training seeds are drawn with replacement too "
    "(seeds and documents crossed, Owen's two-way bootstrap), so they carry both the choice of test "
    "documents and the variation between trained models. A paired difference applies one document draw to "
    "both runs. The medical average is the unweighted mean of the MedQA, PubMedQA and MMLU-medical scores; "
    "bits per byte is a ratio of sums, resampled as a ratio. p-values: two-sided paired sign-flip "
    "permutation test over documents (each run's seeds averaged)."
)
BEATS = "beats"
AT_LEAST_AS_GOOD = "at least as good"
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"


def estimate(strata: Sequence[Stratum]) -> float:
    """The score: the mean over tasks of each task's sum(numerator) / sum(denominator)."""
    return float(np.mean([s.numerator.sum() / s.denominator.sum() for s in strata]))


def resample_counts(rng: np.random.Generator, units: int, resamples: int) -> np.ndarray:
    """(resamples, units): how often each unit is drawn when ``units`` units are drawn with replacement."""
    return rng.multinomial(units, np.full(units, 1.0 / units), size=resamples)


def resampled_scores(strata: Sequence[Stratum], seed_counts: np.ndarray, drawn: Sequence[np.ndarray]) -> np.ndarray:
    """The score of each resample: ``seed_counts`` (B, S) says how often each seed is drawn, ``drawn[t]``
    (B, D_t) which documents of task t are drawn (indices, with repeats)."""
    ratios = []
    for stratum, documents in zip(strata, drawn, strict=True):
        # each seed's sum over the drawn documents, weighted by how often the seed is drawn
        numerator = (seed_counts * _seed_sums(stratum.numerator, documents)).sum(axis=1)  # (B, S) -> (B,)
        denominator = (seed_counts * _seed_sums(stratum.denominator, documents)).sum(axis=1)  # the same draw
        ratios.append(numerator / denominator)
    return np.mean(ratios, axis=0)  # (T, B) -> (B,)


def _seed_sums(values: np.ndarray, documents: np.ndarray) -> np.ndarray:
    """(B, S): each seed's (S, D) values summed over each resample's drawn documents (B, D)."""
    return np.stack([row[documents].sum(axis=1) for row in values], axis=1)  # a gather from one row: fast


def bootstrap(
    strata_a: Sequence[Stratum],
    strata_b: Sequence[Stratum] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> np.ndarray:
    """(resamples,) bootstrap replicates of score(a), or of score(a) - score(b) on shared document draws."""
    check_paired(strata_a, strata_b)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(s.numerator.shape[1] for s in strata_a))
    replicates = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        seeds_a = resample_counts(rng, strata_a[0].seeds, size)
        seeds_b = None if strata_b is None else resample_counts(rng, strata_b[0].seeds, size)
        drawn = [rng.integers(0, s.numerator.shape[1], (size, s.numerator.shape[1])) for s in strata_a]
        scores = resampled_scores(strata_a, seeds_a, drawn)
        if strata_b is not None:
            scores = scores - resampled_scores(strata_b, seeds_b, drawn)  # the same documents: paired
        replicates.append(scores)
    return np.concatenate(replicates)


def check_paired(strata_a: Sequence[Stratum], strata_b: Sequence[Stratum] | None) -> None:
    """Two runs compared document by document must hold the same documents of every task."""
    if strata_b is None:
        return
    for a, b in zip(strata_a, strata_b, strict=True):
        if a.numerator.shape[1] != b.numerator.shape[1] or a.documents != b.documents:
            shared = len(set(a.documents) & set(b.documents))
            raise UserError(
                f"the two runs hold different {a.name} documents ({a.numerator.shape[1]} vs "
                f"{b.numerator.shape[1]}, {shared} shared); evaluate both on the same documents"
            )


def percentile_interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    low, high = np.quantile(replicates, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def minimum_detectable_effect(standard_error: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The true effect a two-sided test at ``alpha`` finds with probability ``power``: (z_(1-a/2) + z_power) SE."""
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * standard_error)


def sign_flip_p_value(
    strata_a: Sequence[Stratum],
    strata_b: Sequence[Stratum],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    null_difference: float = 0.0,
) -> float:
    """Two-sided paired permutation test of score(a) - score(b) = ``null_difference``, swapping each
    document's two values (each averaged over its run's seeds) at random."""
    check_paired(strata_a, strata_b)
    a = np.concatenate([s.numerator.mean(axis=0) for s in strata_a])  # (D,)
    b = np.concatenate([s.numerator.mean(axis=0) for s in strata_b])
    if len(a) < 2:  # one document: both sign flips give the same |difference|, so p = 1 (scipy needs two)
        return 1.0
    # bytes (or 1) per document: a property of the document, so the same for both runs
    denominators = [
        (sa.denominator.mean(axis=0) + sb.denominator.mean(axis=0)) / 2
        for sa, sb in zip(strata_a, strata_b, strict=True)
    ]
    # score(a) - score(b) = sum(weight * (a - b)), each task's documents weighing 1 / (tasks x its denominator sum)
    weights = np.concatenate([np.full_like(d, 1.0 / (len(denominators) * d.sum())) for d in denominators])
    # sum(weight * denominator) = 1, so subtracting null_difference x denominator shifts the score by it
    a = a - null_difference * np.concatenate(denominators)

    def weighted_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.sum(weights * (x - y), axis=axis)

    result = permutation_test(
        (a, b),
        weighted_difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=resamples,
        alternative="two-sided",
        batch=max(1, _CHUNK_CELLS // len(a)),  # unbatched, scipy builds every permutation at once: slow
        rng=np.random.default_rng(seed),
    )
    return float(min(1.0, result.pvalue))


@dataclass(frozen=True)
class Interval:
    """A score with its percentile bootstrap interval."""

    estimate: float
    lo: float
    hi: float
    standard_error: float
    n_documents: int
    n_seeds: int
    resamples: int
    seed: int


def score_interval(
    strata: Sequence[Stratum], confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED
) -> Interval:
    replicates = bootstrap(strata, resamples=resamples, seed=seed)
    return Interval(
        estimate(strata),
        *percentile_interval(replicates, confidence),
        standard_error=float(replicates.std(ddof=1)),
        n_documents=sum(s.numerator.shape[1] for s in strata),
        n_seeds=strata[0].seeds,
        resamples=resamples,
        seed=seed,
    )


@dataclass(frozen=True)
class Comparison:
    """score(a) - score(b) on the same documents: interval, p-value and smallest detectable effect."""

    difference: float
    lo: float
    hi: float
    standard_error: float
    p_value: float
    mde: float  # NaN when no document differs between the runs: nothing to estimate a variance from
    n_documents: int
    n_seeds_a: int
    n_seeds_b: int
    resamples: int
    seed: int


def paired_comparison(
    strata_a: Sequence[Stratum],
    strata_b: Sequence[Stratum],
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Comparison:
    replicates = bootstrap(strata_a, strata_b, resamples=resamples, seed=seed)
    standard_error = float(replicates.std(ddof=1))
    differs = any(
        not np.array_equal(a.numerator.mean(axis=0), b.numerator.mean(axis=0))
        for a, b in zip(strata_a, strata_b, strict=True)
    )
    return Comparison(
        estimate(strata_a) - estimate(strata_b),
        *percentile_interval(replicates, confidence),
        standard_error=standard_error,
        p_value=sign_flip_p_value(strata_a, strata_b, resamples, seed),
        mde=minimum_detectable_effect(standard_error) if differs else float("nan"),
        n_documents=sum(s.numerator.shape[1] for s in strata_a),
        n_seeds_a=strata_a[0].seeds,
        n_seeds_b=strata_b[0].seeds,
        resamples=resamples,
        seed=seed,
    )


def score_table(
    samples: pd.DataFrame,
    runs: Sequence[str],
    base: str | None = None,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    metrics: Sequence[str] = tuple(METRICS),
) -> pd.DataFrame:
    """Every (run, scope, metric) of ``metrics`` the results support: the score with its interval, and
    with ``base`` the change against it (paired, same documents) with its interval."""
    records = []
    for run in runs:
        for scope in available_scopes(samples):
            for metric in metrics:
                if not has_metric(samples, run, scope, metric):
                    continue
                own = strata(samples, run, scope, metric)
                score = score_interval(own, confidence, resamples, seed)
                record = {"run": run, "scope": scope, "metric": metric}
                record |= {"score": score.estimate, "score_lo": score.lo, "score_hi": score.hi}
                if base is not None and run != base and has_metric(samples, base, scope, metric):
                    change = paired_comparison(own, strata(samples, base, scope, metric), confidence, resamples, seed)
                    record |= {"change": change.difference, "change_lo": change.lo, "change_hi": change.hi}
                records.append(record | {"n_documents": score.n_documents, "n_seeds": score.n_seeds})
    return pd.DataFrame.from_records(records).assign(resamples=resamples, seed=seed)


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medmoelora_eval.stats", description=__doc__.split("\n")[0])
    parser.add_argument("--eval-dir", type=Path, default=Path("results/eval"))
    parser.add_argument("--runs", nargs="+", required=True, help="runs to score (directories under --eval-dir)")
    parser.add_argument("--base", help="the base model's run: adds the change against it")
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS), help="default: all")
    parser.add_argument("--resamples", type=int, default=RESAMPLES)
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the bootstrap and permutation draws")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    runs = list(dict.fromkeys([*args.runs, *([args.base] if args.base else [])]))
    samples = load_samples(args.eval_dir, runs)
    table = score_table(samples, args.runs, args.base, CONFIDENCE, args.resamples, args.seed, args.metrics)
    atomic.write_text(args.out, table.to_csv(index=False, lineterminator="\n", float_format="%.6g"))
    print(f"wrote {args.out} ({len(table)} scores)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
