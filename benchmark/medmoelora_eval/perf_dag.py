"""Where the workflow's time goes: its jobs' Snakemake benchmark files summed by stage.

Every rule of the workflow writes ``results/benchmarks/<rule>/<job>.tsv`` (Snakemake's ``benchmark:``
directive: wall seconds ``s``, ``cpu_time``, resident set ``max_rss`` in MB). This sums them by stage:
data (prepare_data, eval_samples), model (materialize_model), training, evaluation, tables and report,
benchmarks (perf_*). An evaluation job is split further with lm-eval's own clock (``total_evaluation_time_seconds``
in ``results/eval/<model>/lm_eval_results.json``: from its tracker's start, after its imports, to the end
of the run): the rest of the job is "lm-eval start-up and result split" (Python and lm-eval imports,
argument handling, `medmoelora_eval.results split`).

    python -m medmoelora_eval.perf_dag results/benchmarks --eval-dir results/eval --out results/perf/dag.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from medmoelora import atomic
from medmoelora.errors import UserError, command_main
from medmoelora_eval.results import FULL_RESULTS
from medmoelora_eval.tables import snakemake_benchmark

STAGES = {
    "prepare_data": "data",
    "eval_samples": "data",
    "materialize_model": "model",
    "heldout_start": "training",  # the held-out losses at the start, measured once for every training job
    "train": "training",
    "eval": "evaluation",
    "eval_ablation": "evaluation",  # results/mechanisms: the same lm-eval command, experts removed
}
STARTUP = "lm-eval start-up and result split"
BENCHMARKS = "benchmarks (perf)"
OTHER = "tables and report"
ORDER = ("data", "model", "training", STARTUP, "evaluation", OTHER, BENCHMARKS)


def stage_of(rule: str) -> str:
    return STAGES.get(rule, BENCHMARKS if rule.startswith("perf") else OTHER)


def job_rows(benchmarks: Path, eval_dir: Path) -> list[dict[str, object]]:
    """One row per (job, stage): an evaluation job gives two, lm-eval's own time and the rest."""
    rows = []
    for path in sorted(benchmarks.rglob("*.tsv")):
        rule, *rest = path.relative_to(benchmarks).with_suffix("").parts  # <rule>/<job>.tsv
        job = "/".join(rest)
        measured = snakemake_benchmark(path)
        row = {"rule": rule, "job": job, "cpu_s": measured.get("cpu_time"), "max_rss_mb": measured["max_rss"]}
        inside = lm_eval_seconds(eval_dir / job / FULL_RESULTS) if rule == "eval" else None
        if inside is None:
            rows.append({**row, "stage": stage_of(rule), "wall_s": measured["s"]})
            continue
        inside = min(inside, measured["s"])
        rows.append({**row, "stage": "evaluation", "wall_s": inside})
        rows.append({**row, "stage": STARTUP, "wall_s": measured["s"] - inside, "cpu_s": None})
    return rows


def lm_eval_seconds(path: Path) -> float | None:
    """lm-eval's own ``total_evaluation_time_seconds`` of a run, if its results file holds one."""
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["total_evaluation_time_seconds"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def breakdown(rows: list[dict[str, object]]) -> pd.DataFrame:
    """Per stage: jobs, wall seconds (summed: the time of a one-job-at-a-time run), share, peak memory."""
    jobs = pd.DataFrame(rows, columns=["rule", "job", "stage", "wall_s", "cpu_s", "max_rss_mb"])
    table = jobs.groupby("stage").agg(
        jobs=("job", "size"), wall_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"), max_rss_mb=("max_rss_mb", "max")
    )
    table = table.reindex([stage for stage in ORDER if stage in table.index]).reset_index()
    total = table.wall_s.sum()
    table["share"] = table.wall_s / total if total > 0 else 0.0
    return table[["stage", "jobs", "wall_s", "share", "cpu_s", "max_rss_mb"]]


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmarks", type=Path, help="the workflow's benchmark directory (results/benchmarks)")
    parser.add_argument("--eval-dir", type=Path, default=Path("results/eval"))
    parser.add_argument("--out", type=Path, required=True, help="CSV to write: one row per stage")
    args = parser.parse_args(argv)
    rows = job_rows(args.benchmarks, args.eval_dir) if args.benchmarks.is_dir() else []
    if not rows:
        raise UserError(f"no benchmark files under {args.benchmarks}; run the workflow first (make table1 writes them)")
    table = breakdown(rows)
    atomic.write_text(args.out, table.to_csv(index=False, float_format="%.3f"))
    print(table.to_markdown(index=False, floatfmt=".2f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
