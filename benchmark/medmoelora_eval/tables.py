"""The paper's tables from the workflow's results: every score with its 95% interval, seeds pooled.

    python -m medmoelora_eval.tables main --rows base=base lora=lora ... --base base --seeds 0 1 2 \
        --out results/table1.csv

Tables: ``main`` (table1: scores, forgetting vs base, parameters), ``allocation`` (table2),
``temperature`` (table3), ``forgetting`` (table4), ``cost`` (table5). Every score is computed from the
per-document results (``results/eval/<run>/seed<k>/<task>.samples.jsonl``; the base model's in
``results/eval/<base>/``) with `medmoelora_eval.stats`: the point estimate pools the run's seeds and
documents, and its ``_lo`` / ``_hi`` columns are the 95% bootstrap interval over documents and seeds
(`medmoelora_eval.stats.INTERVAL_METHOD`). A "change" column is the run minus the base model on the same
documents (paired), with the interval of that difference.

The score columns are the task registry's (`medmoelora.tasks`): its medical tasks and their mean, the
medical average (each task counting once); beside accuracy, from the same requests, the gold answer's
log-probability over the choices (nats, higher is better) and the Brier score (lower is better) on the
medical average; and its general tasks as forgetting probes, each with its change against the base
model, except MMLU as a whole, which holds the medical subjects: MMLU-general (the other subjects) stands
for it. Accuracies are percent and their changes percentage points; a loss such as bits per byte is shown
as it is. A column whose fields the per-document results do not carry (gold log-probability without the
choices' loglikelihoods) is left out; one that only some runs carry is an error.
Training metrics (parameters, tau, cost) come from ``results/train/<run>/seed<k>/``: parameter counts
are the same for every seed; timings and tau are means over the seeds. In the workflow, table 5's wall
time and peak memory are the training jobs' own, from Snakemake's benchmark files (``--benchmarks``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medmoelora import atomic
from medmoelora.errors import UserError, command_main
from medmoelora.tasks import EVAL_TASKS, MMLU_MEDICAL_SUBJECTS, EvalTask
from medmoelora_eval.samples import (
    MEDICAL_AVERAGE,
    METRICS,
    MMLU_GENERAL,
    has_metric,
    load_samples,
    scope_label,
    strata,
)
from medmoelora_eval.stats import RESAMPLES, SEED, bootstrap, estimate, percentile_interval

LOW, HIGH = "_lo", "_hi"  # suffixes of a column's interval bounds in the CSVs
CHANGE = " change"
TRAINABLE = "Trainable params"
ACTIVE = "Active params"
MEDICAL_AVERAGE_LABEL = scope_label(MEDICAL_AVERAGE)


@dataclass(frozen=True)
class Column:
    """A score column: ``metric`` (`medmoelora_eval.samples.METRICS`) on ``scope`` (a task file or a
    composite such as the medical average)."""

    label: str
    scope: str
    metric: str = "accuracy"


def _score_metric(task: EvalTask) -> str:
    """The per-document metric behind a task's score: lm-eval's metric name where the samples module has
    it (bits_per_byte), else accuracy (acc, exact_match)."""
    name = task.metric.partition(",")[0]
    return name if name in METRICS else "accuracy"


def medical_columns() -> tuple[Column, ...]:
    """The registry's medical tasks, then their mean (the medical average)."""
    tasks = [task for task in EVAL_TASKS.values() if task.domain == "medical"]
    return (*(Column(task.label, task.name) for task in tasks), Column(MEDICAL_AVERAGE_LABEL, MEDICAL_AVERAGE))


MEDICAL_CONTINUOUS = (
    Column("Medical gold logprob", MEDICAL_AVERAGE, "gold_logprob"),
    Column("Medical Brier", MEDICAL_AVERAGE, "brier"),
)


def general_columns() -> tuple[Column, ...]:
    """The forgetting probes: the registry's general tasks except MMLU as a whole, whose medical subjects
    are medical tasks; its non-medical part, MMLU-general, is the probe (a registry task of its own, or
    derived from MMLU's results less the medical subjects)."""
    tasks = [
        task
        for task in EVAL_TASKS.values()
        if task.domain == "general" and not set(task.subjects) & set(MMLU_MEDICAL_SUBJECTS)
    ]
    columns = tuple(Column(task.label, task.name, _score_metric(task)) for task in tasks)
    if MMLU_GENERAL not in EVAL_TASKS:
        columns = (*columns, Column(scope_label(MMLU_GENERAL), MMLU_GENERAL))
    return columns


GENERAL_CONTINUOUS = (Column(f"{scope_label(MMLU_GENERAL)} gold logprob", MMLU_GENERAL, "gold_logprob"),)


def interval_columns(label: str) -> list[str]:
    return [label, label + LOW, label + HIGH]


class Results:
    """The per-document results of a table's runs, and each score with its interval (cached: the same
    run recurs in several columns and as the base of every change)."""

    def __init__(
        self, eval_dir: Path, runs: Sequence[str], seeds: Sequence[int] | None, resamples: int, seed: int
    ) -> None:
        self.samples = load_samples(eval_dir, runs, seeds)
        self.resamples, self.seed = resamples, seed
        self._strata = functools.cache(lambda run, scope, metric: strata(self.samples, run, scope, metric))

    def available(self, columns: Sequence[Column], runs: Sequence[str]) -> list[Column]:
        """The columns every run's results carry; a column that only some of them carry is an error."""
        chosen = []
        for column in columns:
            have = [has_metric(self.samples, run, column.scope, column.metric) for run in runs]
            if all(have):
                chosen.append(column)
            elif any(have):
                missing = [run for run, ok in zip(runs, have, strict=True) if not ok]
                raise UserError(
                    f"{column.label}: run {missing[0]!r} has no per-document {column.metric} results on "
                    f"{column.scope} that the other runs have; re-run its evaluation"
                )
        return chosen

    def score(self, run: str, column: Column) -> dict[str, float]:
        """``{label, label_lo, label_hi}``: the pooled score and its 95% bootstrap interval."""
        values = self._strata(run, column.scope, column.metric)
        lo, hi = percentile_interval(bootstrap(values, resamples=self.resamples, seed=self.seed))
        return dict(zip(interval_columns(column.label), (estimate(values), lo, hi), strict=True))

    def change(self, run: str, base: str, column: Column) -> dict[str, float]:
        """``{label change, _lo, _hi}``: run minus base on the same documents, with the paired interval."""
        values, base_values = (
            self._strata(run, column.scope, column.metric),
            self._strata(base, column.scope, column.metric),
        )
        difference = estimate(values) - estimate(base_values)
        replicates = bootstrap(values, base_values, resamples=self.resamples, seed=self.seed)
        lo, hi = percentile_interval(replicates)
        return dict(zip(interval_columns(column.label + CHANGE), (difference, lo, hi), strict=True))


def train_metrics(train_dir: Path, run: str, seeds: Sequence[int], name: str = "train_metrics.json") -> list[dict]:
    """Each seed's ``train_metrics.json`` of a trained run."""
    found = []
    for seed in seeds:
        path = train_dir / run / f"seed{seed}" / name
        try:
            found.append(json.loads(path.read_text(encoding="utf-8")))
        except OSError as error:
            raise UserError(f"{path}: {error.strerror}; train run {run!r} seed {seed} first") from None
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not JSON ({error.msg}); re-run that training") from None
    return found


def parameters(train_dir: Path, run: str, seeds: Sequence[int], base: str | None = None) -> dict[str, int]:
    """Trainable and active parameters (0 for the base model); every seed trains the same adapter."""
    if run == base:
        return {TRAINABLE: 0, ACTIVE: 0}
    counts = {(m["trainable_params"], m["active_params"]) for m in train_metrics(train_dir, run, seeds)}
    if len(counts) != 1:
        raise UserError(f"the seeds of run {run!r} trained adapters of different sizes {sorted(counts)}; re-train it")
    ((trainable, active),) = counts
    return {TRAINABLE: trainable, ACTIVE: active}


def main_table(
    results: Results, rows: dict[str, str], train_dir: Path, base: str, seeds: Sequence[int]
) -> pd.DataFrame:
    """Table 1: every method beside the base model; forgetting as each general score's change."""
    runs = list(rows.values())
    scores = results.available((*medical_columns(), *MEDICAL_CONTINUOUS, *general_columns()), [*runs, base])
    general = [column for column in scores if column in general_columns()]
    records = []
    for label, run in rows.items():
        record: dict = {"run": label}
        for column in scores:
            record |= results.score(run, column)
        for column in general:  # the base model's own row: exactly 0 [0, 0]
            record |= results.change(run, base, column)
        records.append(record | parameters(train_dir, run, seeds, base))
    return pd.DataFrame.from_records(records)


def allocation_table(results: Results, rows: dict[str, str], train_dir: Path, seeds: Sequence[int]) -> pd.DataFrame:
    """Table 2: expert allocation across layers (uniform, asymmetric, inverted)."""
    scores = results.available(medical_columns(), list(rows.values()))
    records = []
    for label, run in rows.items():
        record = {"allocation": label, "experts per layer": _experts_per_layer(train_dir / run / f"seed{seeds[0]}")}
        for column in scores:
            record |= results.score(run, column)
        records.append(record | {TRAINABLE: parameters(train_dir, run, seeds)[TRAINABLE]})
    return pd.DataFrame.from_records(records)


def temperature_table(results: Results, rows: dict[str, str], train_dir: Path, seeds: Sequence[int]) -> pd.DataFrame:
    """Table 3: router temperature tau: the medical scores and the mean tau the adapters end with (learned
    or fixed), over routers and seeds."""
    from medmoelora_eval.temperatures import read_temperatures

    scores = results.available(medical_columns(), list(rows.values()))
    records = []
    for label, run in rows.items():
        record: dict = {"tau": label}
        for column in scores:
            record |= results.score(run, column)
        taus = [read_temperatures(train_dir / run / f"seed{seed}" / "adapter_model.safetensors") for seed in seeds]
        record["final tau (mean)"] = float(pd.concat(taus)["tau"].mean())
        records.append(record | {TRAINABLE: parameters(train_dir, run, seeds)[TRAINABLE]})
    return pd.DataFrame.from_records(records)


def forgetting_table(
    results: Results, rows: dict[str, str], train_dir: Path, base: str, seeds: Sequence[int]
) -> pd.DataFrame:
    """Table 4: general skills after medical adaptation, each with its change against the base model."""
    columns = results.available((*general_columns(), *GENERAL_CONTINUOUS), [*rows.values(), base])
    records = []
    for label, run in rows.items():
        record: dict = {"run": label}
        for column in columns:
            record |= results.score(run, column)
        for column in columns:
            record |= results.change(run, base, column)
        records.append(record | {TRAINABLE: parameters(train_dir, run, seeds, base)[TRAINABLE]})
    return pd.DataFrame.from_records(records)


def cost_table(
    rows: dict[str, str], train_dir: Path, seeds: Sequence[int], benchmarks: Path | None = None
) -> pd.DataFrame:
    """Table 5: parameters and training cost, timings averaged over seeds (they vary between machines).

    With ``benchmarks`` (Snakemake's ``benchmark:`` files, ``<benchmarks>/train/<run>/seed<k>.tsv``), wall
    time and peak memory are the whole training job's as Snakemake measured them (seconds ``s``, resident
    set ``max_rss`` in MB); without, the training loop's own figures from ``train_metrics.json``."""
    records = []
    for label, run in rows.items():
        metrics = train_metrics(train_dir, run, seeds)
        if benchmarks is None:
            peak, wall = [m["peak_memory_mb"] for m in metrics], [m["wall_time_s"] for m in metrics]
        else:
            jobs = [snakemake_benchmark(benchmarks / "train" / run / f"seed{seed}.tsv") for seed in seeds]
            peak, wall = [job["max_rss"] for job in jobs], [job["s"] for job in jobs]
        records.append(
            {
                "run": label,
                **parameters(train_dir, run, seeds),
                "Tokens/s": float(np.mean([m["tokens_per_second"] for m in metrics])),
                "Peak memory MB": float(np.mean(peak)),
                "Wall time s": float(np.mean(wall)),
            }
        )
    return pd.DataFrame.from_records(records)


def snakemake_benchmark(path: Path) -> dict[str, float]:
    """A Snakemake ``benchmark:`` file's first measurement (``s``, ``max_rss`` in MB, ...); NA where the
    platform could not measure (NaN)."""
    try:
        table = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
    except OSError as error:
        raise UserError(f"{path}: {error.strerror}; run the job that writes this benchmark first") from None
    if table.empty or not {"s", "max_rss"} <= set(table.columns):
        raise UserError(f"{path} is not a Snakemake benchmark file (columns s, max_rss ...); re-run its job")
    return {name: float(value) for name, value in table.iloc[0].items() if name != "h:m:s"}


def _experts_per_layer(run_dir: Path) -> str:
    """'2x20 + 8x10': the expert counts of consecutive layers, from the adapter's config."""
    modules = json.loads((run_dir / "adapter_config.json").read_text(encoding="utf-8"))["modules"].values()
    per_layer = {module["layer"]: module["num_experts"] for module in modules}
    runs: list[list[int]] = []
    for _, count in sorted(per_layer.items()):
        if runs and runs[-1][0] == count:
            runs[-1][1] += 1
        else:
            runs.append([count, 1])
    return " + ".join(f"{count}x{length}" for count, length in runs)


def score_labels(table: pd.DataFrame) -> list[str]:
    """The columns of ``table`` that carry an interval (each has ``_lo`` and ``_hi`` beside it)."""
    return [c for c in table.columns if f"{c}{LOW}" in table.columns and f"{c}{HIGH}" in table.columns]


def decimals(label: str) -> int:
    """Accuracy (points) to 1 decimal; log-probabilities, Brier scores and bits per byte to 3."""
    continuous = ("logprob", "Brier", "bits")
    return 3 if any(word in label for word in continuous) else 1


def markdown_cells(table: pd.DataFrame) -> pd.DataFrame:
    """The table for reading: ``31.2 [27.0, 35.5]`` for a score with its interval, the bounds' columns
    folded in, parameter counts in millions, other numbers to four significant digits."""
    shown = table.drop(columns=[c + suffix for c in score_labels(table) for suffix in (LOW, HIGH)])
    for label in score_labels(table):
        places = decimals(label)
        shown[label] = [
            f"{value:.{places}f} [{lo:.{places}f}, {hi:.{places}f}]"
            for value, lo, hi in zip(table[label], table[label + LOW], table[label + HIGH], strict=True)
        ]
    for column in (TRAINABLE, ACTIVE):
        if column in shown.columns:
            shown[column] = [f"{value / 1e6:.2f}M" for value in table[column]]
    for column in shown.columns:  # other measurements (tau, timings): four significant digits
        if shown[column].dtype.kind == "f":
            shown[column] = [f"{value:.4g}" for value in shown[column]]
    return shown


def write_csv(table: pd.DataFrame, out: Path) -> None:
    atomic.write_text(out, table.round(4).to_csv(index=False, lineterminator="\n"))


def _pairs(values: list[str]) -> dict[str, str]:
    rows = {}
    for value in values:
        label, _, run = value.partition("=")
        rows[label] = run or label
    return rows


def _results(args: argparse.Namespace, runs: list[str]) -> Results:
    return Results(args.eval_dir, runs, args.seeds, args.resamples, args.seed)


BUILDERS: dict[str, Callable[[argparse.Namespace, dict[str, str]], pd.DataFrame]] = {
    "main": lambda a, rows: main_table(_results(a, [*rows.values(), a.base]), rows, a.train_dir, a.base, a.seeds),
    "allocation": lambda a, rows: allocation_table(_results(a, list(rows.values())), rows, a.train_dir, a.seeds),
    "temperature": lambda a, rows: temperature_table(_results(a, list(rows.values())), rows, a.train_dir, a.seeds),
    "forgetting": lambda a, rows: forgetting_table(
        _results(a, [*rows.values(), a.base]), rows, a.train_dir, a.base, a.seeds
    ),
    "cost": lambda a, rows: cost_table(rows, a.train_dir, a.seeds, a.benchmarks),
}


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medmoelora_eval.tables", description=__doc__.split("\n")[0])
    parser.add_argument("table", choices=BUILDERS)
    parser.add_argument("--rows", nargs="+", required=True, metavar="LABEL=RUN", help="rows in order")
    parser.add_argument("--base", default="base", help="the base model's run (for change columns)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds to pool (seed<k>/)")
    parser.add_argument("--eval-dir", type=Path, default=Path("results/eval"))
    parser.add_argument("--train-dir", type=Path, default=Path("results/train"))
    parser.add_argument("--benchmarks", type=Path, help="cost: Snakemake's benchmark files (results/benchmarks)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples per interval")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the bootstrap draws")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    table = BUILDERS[args.table](args, _pairs(args.rows))
    write_csv(table, args.out)
    print(f"wrote {args.out} ({len(table)} rows)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
