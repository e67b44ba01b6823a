"""What a configuration can resolve before it runs: interval half-widths and detectable differences of
accuracy at given document counts, from the binomial variance.

    python -m medmoelora_eval.precision medqa=1273 pubmedqa=500 mmlu_medical=1089 gsm8k=1319 mmlu_general=12953

For an accuracy p over n documents the standard error is sqrt(p (1 - p) / n); a score over several tasks
that each count once (the medical average) has SE = sqrt(sum_t p (1 - p) / n_t) / T. The half-width of
a 95% interval is 1.96 SE. Two runs' difference, taken as independent binomials, has SE sqrt(2) times
that, and the smallest difference a two-sided test at 5% finds with 80% power is
`medmoelora_eval.stats.minimum_detectable_effect` of it (2.80 SE). p = 0.5 gives the widest values.
Pairing on the same documents narrows a difference by as much as the two runs agree: with ``--discordant
d`` (the share of documents one run gets right and the other wrong, either way) the difference's SE is
sqrt(d / n) per task instead. Several training seeds add their spread: the measured intervals and each
claim's own detectable effect are in the tables and the claims table of a run.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping

import pandas as pd
from scipy.stats import norm

from medmoelora.errors import UserError, command_main
from medmoelora.tasks import EVAL_MMLU, EVAL_TASKS, MMLU_MEDICAL_SUBJECTS
from medmoelora_eval.samples import MMLU_GENERAL, scope_tasks
from medmoelora_eval.stats import CONFIDENCE, minimum_detectable_effect
from medmoelora_eval.tables import general_columns, medical_columns


def standard_error(counts: Mapping[str, int], tasks: tuple[str, ...], variance: float) -> float:
    """SE in points of the mean over ``tasks`` (each counting once) of per-task means of a per-document
    value with this variance (p (1 - p) for an accuracy)."""
    return 100 * math.sqrt(sum(variance / counts[task] for task in tasks)) / len(tasks)


def expected_precision(counts: Mapping[str, int], p: float = 0.5, discordant: float | None = None) -> pd.DataFrame:
    """Per accuracy column of the tables whose tasks ``counts`` covers: documents, the 95% half-width of a
    score and the difference between two runs detectable with 80% power, in points (two independent
    binomials, or paired with a ``discordant`` share of documents on which the runs disagree)."""
    counts = dict(counts)
    medical_part = next(task.name for task in EVAL_TASKS.values() if set(task.subjects) == set(MMLU_MEDICAL_SUBJECTS))
    if MMLU_GENERAL not in counts and {EVAL_MMLU.name, medical_part} <= set(counts):
        counts[MMLU_GENERAL] = counts[EVAL_MMLU.name] - counts[medical_part]  # MMLU less its medical subjects
    z = norm.ppf((1 + CONFIDENCE) / 2)
    rows = []
    for column in (*medical_columns(), *general_columns()):
        if column.metric != "accuracy":
            continue
        tasks = scope_tasks(column.scope)
        if not set(tasks) <= set(counts):
            continue
        error = standard_error(counts, tasks, p * (1 - p))
        # var(a - b) per document: 2 p (1 - p) for independent runs; d for paired ones (a difference of
        # +-1 on a share d of the documents, 0 elsewhere, mean about 0)
        difference_error = standard_error(counts, tasks, 2 * p * (1 - p) if discordant is None else discordant)
        rows.append(
            {
                "score": column.label,
                "documents": sum(counts[task] for task in tasks),
                "half-width (95%)": round(z * error, 1),
                "detectable difference (80% power)": round(minimum_detectable_effect(difference_error), 1),
            }
        )
    return pd.DataFrame.from_records(rows)


def _parse(pairs: list[str]) -> dict[str, int]:
    counts = {}
    for pair in pairs:
        task, _, value = pair.partition("=")
        if not value.isdigit() or int(value) < 1:
            raise UserError(f"{pair!r}: expected TASK=N with N >= 1 documents, e.g. medqa=1273")
        counts[task] = int(value)
    return counts


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medmoelora_eval.precision", description=__doc__.split("\n")[0])
    parser.add_argument(
        "counts", nargs="+", metavar="TASK=N", help="documents per task file (medqa, mmlu_medical, ...)"
    )
    parser.add_argument("--p", type=float, default=0.5, help="the accuracy assumed (0.5: the widest intervals)")
    parser.add_argument("--discordant", type=float, help="paired: share of documents on which two runs disagree")
    args = parser.parse_args(argv)
    if not 0 < args.p < 1:
        raise UserError(f"--p {args.p}: an accuracy strictly between 0 and 1")
    if args.discordant is not None and not 0 < args.discordant <= 1:
        raise UserError(f"--discordant {args.discordant}: a share of documents in (0, 1]")
    table = expected_precision(_parse(args.counts), args.p, args.discordant)
    print(table.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
