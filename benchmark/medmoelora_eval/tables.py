"""The paper's tables from the workflow's results: eval scores, training metrics, learned temperatures.

    python -m medmoelora_eval.tables main --rows base=base lora=lora ... --base base --out results/table1.csv

Tables: ``main`` (table1: scores, forgetting vs base, parameters), ``allocation`` (table2),
``temperature`` (table3), ``forgetting`` (table4), ``cost`` (table5); every row of a trained run carries
its trainable parameter count. The score columns are the task registry's evaluation tasks
(`medmoelora.tasks`, those ``in_tables``), in its order: the medical ones and their mean (the medical
average: MedQA, PubMedQA and MMLU-medical), and the general ones (the forgetting probes, on data no
method trains on) with their change against the base model. Accuracies are percent and their changes
percentage points; the general LM probe is in bits per byte (lower is better), its change too. Beside
accuracy, from the same requests: the medical tasks' mean gold log-probability over the choices (nats,
higher is better) and Brier score (lower is better).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from medmoelora import atomic
from medmoelora.errors import command_main
from medmoelora.tasks import EVAL_MMLU_GENERAL, EVAL_TASKS, Domain
from medmoelora_eval.results import load_metric, load_score

MEDICAL_AVERAGE = "Medical avg"
# Continuous metrics of the medical tasks (medmoelora_eval.choice_metrics), averaged like accuracy.
CONTINUOUS_COLUMNS = {"gold_logprob": "Medical gold logprob", "brier": "Medical Brier"}
TRAINABLE = "Trainable params"


def score_columns(domain: Domain) -> dict[str, str]:
    """Evaluation task -> column heading, for the registry's tabulated tasks of one domain, in its order."""
    return {name: task.label for name, task in EVAL_TASKS.items() if task.domain == domain and task.in_tables}


def _scores(eval_dir: Path, run: str) -> dict[str, float]:
    scores = {name: load_score(eval_dir, run, task) for task, name in score_columns("medical").items()}
    scores[MEDICAL_AVERAGE] = sum(scores.values()) / len(scores)
    return scores


def _continuous(eval_dir: Path, run: str) -> dict[str, float]:
    """The medical tasks' mean gold log-probability and Brier score."""
    medical = score_columns("medical")
    return {
        column: sum(load_metric(eval_dir, run, task, metric) for task in medical) / len(medical)
        for metric, column in CONTINUOUS_COLUMNS.items()
    }


def _trainable(train_dir: Path, run: str) -> int:
    return _metrics(train_dir, run)["trainable_params"]


def _metrics(train_dir: Path, run: str) -> dict:
    return json.loads((train_dir / run / "train_metrics.json").read_text(encoding="utf-8"))


def _forgetting(eval_dir: Path, run: str, base: str) -> dict[str, float]:
    """Every general score, then every general score's change against the base model."""
    general = score_columns("general")
    scores = {name: load_score(eval_dir, run, task) for task, name in general.items()}
    changes = {f"{name} change": scores[name] - load_score(eval_dir, base, task) for task, name in general.items()}
    return {**scores, **changes}


def main_table(rows: dict[str, str], eval_dir: Path, train_dir: Path, base: str) -> pd.DataFrame:
    """Table 1: every method beside the base model."""
    records = []
    for label, run in rows.items():
        metrics = {"trainable_params": 0, "active_params": 0} if run == base else _metrics(train_dir, run)
        records.append(
            {
                "run": label,
                **_scores(eval_dir, run),
                **_continuous(eval_dir, run),
                **_forgetting(eval_dir, run, base),
                TRAINABLE: metrics["trainable_params"],
                "Active params": metrics["active_params"],
            }
        )
    return pd.DataFrame.from_records(records)


def allocation_table(rows: dict[str, str], eval_dir: Path, train_dir: Path) -> pd.DataFrame:
    """Table 2: expert allocation across layers (uniform, asymmetric, inverted)."""
    records = []
    for label, run in rows.items():
        counts = _experts_per_layer(train_dir / run / "adapter_config.json")
        records.append(
            {
                "allocation": label,
                "experts per layer": counts,
                **_scores(eval_dir, run),
                TRAINABLE: _trainable(train_dir, run),
            }
        )
    return pd.DataFrame.from_records(records)


def temperature_table(rows: dict[str, str], eval_dir: Path, train_dir: Path) -> pd.DataFrame:
    """Table 3: router temperature tau: the medical scores and the mean tau the adapter ends with (learned
    or fixed)."""
    from medmoelora_eval.figures import read_temperatures

    records = []
    for label, run in rows.items():
        taus = read_temperatures(train_dir / run / "adapter_model.safetensors")
        records.append(
            {
                "tau": label,
                **_scores(eval_dir, run),
                "final tau (mean)": float(taus["tau"].mean()),
                TRAINABLE: _trainable(train_dir, run),
            }
        )
    return pd.DataFrame.from_records(records)


def forgetting_table(rows: dict[str, str], eval_dir: Path, train_dir: Path, base: str) -> pd.DataFrame:
    """Table 4: general skills after medical adaptation, against the base model; MMLU-general's gold
    log-probability beside its accuracy."""
    logprob = f"{EVAL_MMLU_GENERAL.label} gold logprob"
    base_logprob = load_metric(eval_dir, base, EVAL_MMLU_GENERAL.name, "gold_logprob")
    records = []
    for label, run in rows.items():
        value = load_metric(eval_dir, run, EVAL_MMLU_GENERAL.name, "gold_logprob")
        records.append(
            {
                "run": label,
                **_forgetting(eval_dir, run, base),
                logprob: value,
                f"{logprob} change": value - base_logprob,
                TRAINABLE: _trainable(train_dir, run),
            }
        )
    return pd.DataFrame.from_records(records)


def cost_table(rows: dict[str, str], train_dir: Path) -> pd.DataFrame:
    """Table 5: parameters and training cost (timings vary between machines and runs)."""
    records = []
    for label, run in rows.items():
        metrics = _metrics(train_dir, run)
        records.append(
            {
                "run": label,
                TRAINABLE: metrics["trainable_params"],
                "Active params": metrics["active_params"],
                "Tokens/s": metrics["tokens_per_second"],
                "Peak memory MB": metrics["peak_memory_mb"],
                "Wall time s": metrics["wall_time_s"],
            }
        )
    return pd.DataFrame.from_records(records)


def _experts_per_layer(adapter_config: Path) -> str:
    """'2x20 + 8x10': the expert counts of consecutive layers, from the adapter's config."""
    modules = json.loads(adapter_config.read_text(encoding="utf-8"))["modules"].values()
    per_layer = {module["layer"]: module["num_experts"] for module in modules}
    runs: list[list[int]] = []
    for _, count in sorted(per_layer.items()):
        if runs and runs[-1][0] == count:
            runs[-1][1] += 1
        else:
            runs.append([count, 1])
    return " + ".join(f"{count}x{length}" for count, length in runs)


def write_csv(table: pd.DataFrame, out: Path) -> None:
    atomic.write_text(out, table.round(4).to_csv(index=False, lineterminator="\n"))


def _pairs(values: list[str]) -> dict[str, str]:
    rows = {}
    for value in values:
        label, _, run = value.partition("=")
        rows[label] = run or label
    return rows


BUILDERS: dict[str, Callable[[argparse.Namespace], pd.DataFrame]] = {
    "main": lambda a: main_table(_pairs(a.rows), a.eval_dir, a.train_dir, a.base),
    "allocation": lambda a: allocation_table(_pairs(a.rows), a.eval_dir, a.train_dir),
    "temperature": lambda a: temperature_table(_pairs(a.rows), a.eval_dir, a.train_dir),
    "forgetting": lambda a: forgetting_table(_pairs(a.rows), a.eval_dir, a.train_dir, a.base),
    "cost": lambda a: cost_table(_pairs(a.rows), a.train_dir),
}


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medmoelora_eval.tables", description=__doc__.split("\n")[0])
    parser.add_argument("table", choices=BUILDERS)
    parser.add_argument("--rows", nargs="+", required=True, metavar="LABEL=RUN", help="rows in order")
    parser.add_argument("--base", default="base", help="the base model's run (for change columns)")
    parser.add_argument("--eval-dir", type=Path, default=Path("results/eval"))
    parser.add_argument("--train-dir", type=Path, default=Path("results/train"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    table = BUILDERS[args.table](args)
    write_csv(table, args.out)
    print(f"wrote {args.out} ({len(table)} rows)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
