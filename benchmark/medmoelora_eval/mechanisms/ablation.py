"""The expert-ablation table and the dual-path test, from per-document results of one trained run evaluated
with all experts, without its base experts and without its specialists (lm-eval ``disable_experts=``).

    python -m medmoelora_eval.mechanisms.ablation --all-experts results/eval/med_moe_lora \
        --without-base results/mechanisms/eval/without_base \
        --without-specialists results/mechanisms/eval/without_specialists \
        --seeds 0 --out results/mechanisms/ablation.csv --dual-path results/mechanisms/dual_path.csv

Each directory holds one run's ``<task>.samples.jsonl`` (directly, or in ``seed<k>/`` per training seed).
A domain's score (scope ``average``) is the unweighted mean over its tasks that have the metric (medical:
MedQA, PubMedQA, MMLU-medical; general: GSM8K, MMLU-general, the general LM probe), scored as
`medmoelora_eval.stats` scores (ratios of per-document sums, `medmoelora_eval.samples.METRICS`); where
several tasks have the metric, each task has its own rows too (scope: the task).

Intervals: `medmoelora_eval.stats`'s percentile bootstrap, with one difference: the three variants are the
same trained models with experts switched off, so one resample draws the seeds once for all of them (and,
as for any paired comparison, the documents of each task once for all of them). A change is the ablated
score minus the all-experts score on the same documents and seeds, with the sign-flip permutation p-value
of `medmoelora_eval.stats.sign_flip_p_value`.

The dual-path prediction: removing the base experts harms general scores more than medical ones, and
removing the specialists harms medical scores more than general ones. ``harm`` is a change oriented so
that positive is worse (-change where higher is better). Per ablation and metric scored in both domains,
the test statistic is harm(predicted domain) - harm(other domain), with its interval from the same joint
bootstrap. `DUAL_PATH_RULE` turns it into a verdict.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medmoelora import atomic
from medmoelora.errors import UserError, command_main
from medmoelora.tasks import EVAL_TASKS
from medmoelora_eval.samples import METRICS, Stratum, has_metric, load_samples, strata
from medmoelora_eval.stats import (
    ALPHA,
    CONFIDENCE,
    CONTRADICTED,
    INCONCLUSIVE,
    RESAMPLES,
    SEED,
    SUPPORTED,
    estimate,
    percentile_interval,
    resample_counts,
    resampled_scores,
    sign_flip_p_value,
)

ALL_EXPERTS = "all_experts"
ABLATIONS = {"without_base": "base", "without_specialists": "specialists"}  # variant -> disable_experts spec
VARIANTS = (ALL_EXPERTS, *ABLATIONS)
PREDICTED = {"without_base": "general", "without_specialists": "medical"}  # the domain each should harm more
DOMAINS = {
    domain: tuple(name for name, task in EVAL_TASKS.items() if task.domain == domain and task.in_tables)
    for domain in ("medical", "general")
}
AVERAGE = "average"  # a domain's scope over all its tasks; the other scopes are single tasks
COLUMNS = ["variant", "domain", "scope", "metric", "tasks", "score", "score_lo", "score_hi", "change", "change_lo"]
COLUMNS += ["change_hi", "p_value", "n_documents", "n_seeds", "resamples", "seed"]
DUAL_PATH_COLUMNS = ["ablation", "metric", "predicted_domain", "harm_predicted", "harm_other", "difference"]
DUAL_PATH_COLUMNS += ["difference_lo", "difference_hi", "p_value_predicted", "p_value_other", "verdict"]
DUAL_PATH_RULE = (
    "Dual path, per ablation and metric: the difference harm(predicted domain) - harm(other domain), where harm "
    "is the score's change oriented so that positive is worse. Supported when its 95% interval lies above 0 "
    "and the predicted domain's own change is a harm with p < 0.05 (paired sign-flip test); contradicted when "
    "the interval lies below 0 and the other domain's change is a harm with p < 0.05; otherwise inconclusive. "
    "The mechanism as a whole is judged on accuracy, the paper's metric: supported when both ablations are, "
    "contradicted when either is, otherwise inconclusive; the continuous metrics are shown beside it."
)
_CHUNK_CELLS = 1 << 22  # resampled document indices held at once


def load_variants(directories: Mapping[str, Path], seeds: Sequence[int] | None = None) -> pd.DataFrame:
    """Per-document results of every variant (variant -> a run's directory), as one frame with run = variant;
    ``seeds``: only these ``seed<k>/`` directories (`medmoelora_eval.samples.load_samples`)."""
    frames = [
        load_samples(path.parent, [path.name], seeds).assign(run=variant) for variant, path in directories.items()
    ]
    return pd.concat(frames, ignore_index=True)


def scope_strata(samples: pd.DataFrame, metric: str) -> dict[tuple[str, str], dict[str, list[Stratum]]]:
    """(domain, scope) -> variant -> strata, for the domain's tasks that have ``metric`` in every variant:
    scope ``average`` (all of them, each task counting once) and, where there are several, each task."""
    found: dict[tuple[str, str], dict[str, list[Stratum]]] = {}
    for domain, tasks in DOMAINS.items():
        usable = [task for task in tasks if all(has_metric(samples, variant, task, metric) for variant in VARIANTS)]
        scopes = {AVERAGE: usable, **({task: [task] for task in usable} if len(usable) > 1 else {})}
        for scope, chosen in scopes.items():
            if chosen:
                found[(domain, scope)] = {
                    variant: [stratum for task in chosen for stratum in strata(samples, variant, task, metric)]
                    for variant in VARIANTS
                }
    return found


def joint_replicates(
    groups: Mapping[Hashable, Mapping[str, Sequence[Stratum]]], resamples: int = RESAMPLES, seed: int = SEED
) -> dict[tuple[Hashable, str], np.ndarray]:
    """(group, variant) -> (resamples,) bootstrap scores, every resample drawing the seeds once for all
    groups (the variants are the same trained models) and each group's documents once for all variants."""
    first = next(iter(next(iter(groups.values())).values()))
    seeds = first[0].seeds
    for variants in groups.values():
        for variant, chosen in variants.items():
            if any(stratum.seeds != seeds for stratum in chosen):
                raise UserError(f"{variant} has {chosen[0].seeds} seeds on {chosen[0].name}, {ALL_EXPERTS} {seeds}")
    widest = max(s.numerator.shape[1] for variants in groups.values() for s in variants[ALL_EXPERTS])
    chunk = max(1, _CHUNK_CELLS // widest)
    rng = np.random.default_rng(seed)
    found: dict[tuple[Hashable, str], list[np.ndarray]] = {
        (g, v): [] for g, variants in groups.items() for v in variants
    }
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        seed_counts = resample_counts(rng, seeds, size)  # (size, S): shared by every group
        for group, variants in groups.items():
            reference = variants[ALL_EXPERTS]
            drawn = [rng.integers(0, s.numerator.shape[1], (size, s.numerator.shape[1])) for s in reference]
            for variant, chosen in variants.items():
                _check_same_documents(reference, chosen, variant)
                found[(group, variant)].append(resampled_scores(chosen, seed_counts, drawn))
    return {key: np.concatenate(parts) for key, parts in found.items()}


def _check_same_documents(reference: Sequence[Stratum], chosen: Sequence[Stratum], variant: str) -> None:
    for a, b in zip(reference, chosen, strict=True):
        if a.documents != b.documents:
            raise UserError(
                f"{variant} and {ALL_EXPERTS} hold different {a.name} documents; evaluate both on the same "
                "documents (the same eval samples file)"
            )


def harm(change: np.ndarray | float, metric: str) -> np.ndarray | float:
    """A change oriented so that positive is worse."""
    return -change if METRICS[metric].higher_is_better else change


def ablation_tables(
    samples: pd.DataFrame, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the ablation table: every variant x domain x scope x metric, the dual-path table: every ablation x
    metric scored in both domains, on the domains' averages)."""
    rows, dual = [], []
    for metric in METRICS:
        groups = scope_strata(samples, metric)
        if not groups:
            continue
        replicates = joint_replicates(groups, resamples, seed)
        p_values = {}
        for (domain, scope), variants in groups.items():
            reference = variants[ALL_EXPERTS]
            for variant, chosen in variants.items():
                score, own = estimate(chosen), replicates[((domain, scope), variant)]
                lo, hi = _interval(own)
                row = {"variant": variant, "domain": domain, "scope": scope, "metric": metric}
                row |= {"tasks": " ".join(s.name for s in chosen), "score": score, "score_lo": lo, "score_hi": hi}
                if variant != ALL_EXPERTS:
                    change = own - replicates[((domain, scope), ALL_EXPERTS)]
                    p_values[(domain, scope, variant)] = sign_flip_p_value(chosen, reference, resamples, seed)
                    row |= {"change": score - estimate(reference), "p_value": p_values[(domain, scope, variant)]}
                    row |= dict(zip(("change_lo", "change_hi"), _interval(change), strict=True))
                row |= {"n_documents": sum(s.numerator.shape[1] for s in chosen), "n_seeds": chosen[0].seeds}
                rows.append(row)
        if all((domain, AVERAGE) in groups for domain in DOMAINS):
            dual += [_dual_path(groups, replicates, p_values, ablation, metric) for ablation in ABLATIONS]
    table = pd.DataFrame.from_records(rows).reindex(columns=COLUMNS).assign(resamples=resamples, seed=seed)
    return table, pd.DataFrame.from_records(dual, columns=DUAL_PATH_COLUMNS)


def _dual_path(
    groups: Mapping[tuple[str, str], Mapping[str, Sequence[Stratum]]],
    replicates: Mapping[tuple[Hashable, str], np.ndarray],
    p_values: Mapping[tuple[str, str, str], float],
    ablation: str,
    metric: str,
) -> dict[str, object]:
    predicted = PREDICTED[ablation]
    other = next(domain for domain in DOMAINS if domain != predicted)

    def harms(domain: str) -> tuple[float, np.ndarray]:
        variants, key = groups[(domain, AVERAGE)], (domain, AVERAGE)
        point = estimate(variants[ablation]) - estimate(variants[ALL_EXPERTS])
        return harm(point, metric), harm(replicates[(key, ablation)] - replicates[(key, ALL_EXPERTS)], metric)

    (harm_predicted, draws_predicted), (harm_other, draws_other) = harms(predicted), harms(other)
    lo, hi = _interval(draws_predicted - draws_other)
    predicted_p, other_p = p_values[(predicted, AVERAGE, ablation)], p_values[(other, AVERAGE, ablation)]
    if lo > 0 and harm_predicted > 0 and predicted_p < ALPHA:
        verdict = SUPPORTED
    elif hi < 0 and harm_other > 0 and other_p < ALPHA:
        verdict = CONTRADICTED
    else:
        verdict = INCONCLUSIVE
    return {
        "ablation": ablation,
        "metric": metric,
        "predicted_domain": predicted,
        "harm_predicted": harm_predicted,
        "harm_other": harm_other,
        "difference": harm_predicted - harm_other,
        "difference_lo": lo,
        "difference_hi": hi,
        "p_value_predicted": predicted_p,
        "p_value_other": other_p,
        "verdict": verdict,
    }


def overall_verdict(dual_path: pd.DataFrame, metric: str = "accuracy") -> str:
    """`DUAL_PATH_RULE`'s verdict on the mechanism as a whole, from the rows of ``metric``."""
    verdicts = set(dual_path.loc[dual_path["metric"] == metric, "verdict"])
    if verdicts == {SUPPORTED} and len(dual_path[dual_path["metric"] == metric]) == len(ABLATIONS):
        return SUPPORTED
    return CONTRADICTED if CONTRADICTED in verdicts else INCONCLUSIVE


def _interval(replicates: np.ndarray) -> tuple[float, float]:
    return percentile_interval(replicates, CONFIDENCE)


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all-experts", type=Path, required=True, help="the run's eval directory, unablated")
    parser.add_argument("--without-base", type=Path, required=True, help="its eval with disable_experts=base")
    parser.add_argument("--without-specialists", type=Path, required=True, help="... disable_experts=specialists")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (seed<k>/); default: every one found")
    parser.add_argument("--resamples", type=int, default=RESAMPLES)
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the bootstrap and permutation draws")
    parser.add_argument("--out", type=Path, required=True, help="the ablation table (CSV)")
    parser.add_argument("--dual-path", type=Path, required=True, help="the dual-path test per ablation (CSV)")
    args = parser.parse_args(argv)
    directories = dict(zip(VARIANTS, (args.all_experts, args.without_base, args.without_specialists), strict=True))
    table, dual_path = ablation_tables(load_variants(directories, args.seeds), args.resamples, args.seed)
    atomic.write_text(args.out, table.to_csv(index=False, lineterminator="\n", float_format="%.6g"))
    atomic.write_text(args.dual_path, dual_path.to_csv(index=False, lineterminator="\n", float_format="%.6g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
