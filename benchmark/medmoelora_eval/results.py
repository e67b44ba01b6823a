"""The evaluation contract of the workflow: which lm-eval task and metric make each of our five scores.

    python -m medmoelora_eval.results samples --data data/processed --limits medqa=40 mmlu=2 --out samples.json
    python -m medmoelora_eval.results split LM_EVAL_OUTPUT_DIR --run lora --out results/eval/lora

``samples`` turns per-task limits into one ``lm_eval --samples`` file (N documents of every task, per
MMLU subject for mmlu, drawn at random with a fixed seed), so that one lm_eval call evaluates every task
at its own limit. A random draw, not lm_eval's ``--limit`` (the first N): the first 20 documents of
PubMedQA's test set are all "yes", so a first-N subset rewards a model that always says yes.
``split`` reads lm_eval's results JSON and writes ``<out>/<task>.json`` for every task plus the full
file as ``<out>/lm_eval_results.json``. ``mmlu_medical`` is computed from the ``medmoe_mmlu`` subjects
(lm_eval refuses two groups sharing subtasks in one call), weighted by size as the group YAML does.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from medmoelora.data.sources import MMLU_MEDICAL_SUBJECTS

# Our task name -> (lm-eval task or group, metric key in lm-eval's results). Scores are fractions.
TASKS: dict[str, tuple[str, str]] = {
    "medqa": ("medmoe_medqa", "acc,none"),
    "pubmedqa": ("medmoe_pubmedqa", "acc,none"),
    "gsm8k": ("medmoe_gsm8k", "exact_match,strict-match"),  # lm-eval's headline filter for gsm8k
    "mmlu": ("medmoe_mmlu", "acc,none"),
    "mmlu_medical": ("medmoe_mmlu_medical", "acc,none"),
}
LEAF_TASKS = ("medqa", "pubmedqa", "gsm8k")  # one lm-eval task each; mmlu is one task per subject
FULL_RESULTS = "lm_eval_results.json"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling, so a failure leaves no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def count_documents(data_dir: Path) -> dict[str, int]:
    """Test documents per lm-eval leaf task, from the prepared data."""
    counts = {}
    for task in LEAF_TASKS:
        with (data_dir / task / "test.jsonl").open(encoding="utf-8") as handle:
            counts[TASKS[task][0]] = sum(1 for line in handle if line.strip())
    with (data_dir / "mmlu" / "test.jsonl").open(encoding="utf-8") as handle:
        subjects = Counter(json.loads(line)["subject"] for line in handle if line.strip())
    counts.update({f"medmoe_mmlu_{subject}": count for subject, count in sorted(subjects.items())})
    return counts


def samples(data_dir: Path, limits: dict[str, int | None], seed: int = 0) -> dict[str, list[int]]:
    """``{lm-eval task: sorted document indices}``: N = the task's limit (per subject for mmlu) drawn with
    ``seed``, the same for every run; None = all documents."""
    out = {}
    for task, count in count_documents(data_dir).items():
        limit = limits["mmlu" if task.startswith("medmoe_mmlu_") else task.removeprefix("medmoe_")]
        if limit is None or limit >= count:
            out[task] = list(range(count))
        else:
            out[task] = sorted(random.Random(f"{seed}-{task}").sample(range(count), limit))
    return out


def score(results: dict[str, Any], task: str) -> dict[str, Any]:
    """One task's entry for ``<task>.json``: score (fraction), documents, and lm-eval's raw entries."""
    name, metric = TASKS[task]
    if task == "mmlu_medical":
        subtasks = {
            f"medmoe_mmlu_{subject}": results["results"][f"medmoe_mmlu_{subject}"] for subject in MMLU_MEDICAL_SUBJECTS
        }
        sizes = [entry["sample_len"] for entry in subtasks.values()]
        value = sum(entry[metric] * size for entry, size in zip(subtasks.values(), sizes, strict=True)) / sum(sizes)
        entry: dict[str, Any] = {"derived_from": "medmoe_mmlu subjects, weighted by size", "subtasks": subtasks}
    elif task == "mmlu":
        group = results["groups"][name]
        subtasks = {sub: results["results"][sub] for sub in results["group_subtasks"][name]}
        value, sizes = group[metric], [group["sample_len"]]
        entry = {"group": group, "subtasks": subtasks}
    else:
        value, sizes = results["results"][name][metric], [results["results"][name]["sample_len"]]
        entry = {"results": results["results"][name], "n-samples": results["n-samples"][name]}
    return {"task": task, "lm_eval_task": name, "metric": metric, "score": value, "documents": sum(sizes), **entry}


def split(raw_dir: Path, run: str, out: Path) -> None:
    found = sorted(raw_dir.rglob("results_*.json"))
    if len(found) != 1:
        raise SystemExit(f"error: expected one lm_eval results_*.json under {raw_dir}, found {len(found)}")
    text = found[0].read_text(encoding="utf-8")
    results = json.loads(text)
    for task in TASKS:
        record = {"run": run, "model_args": results["config"]["model_args"], **score(results, task)}
        write_atomic(out / f"{task}.json", json.dumps(record, indent=1, sort_keys=True) + "\n")
    write_atomic(out / FULL_RESULTS, text)


def load_score(eval_dir: Path, run: str, task: str) -> float:
    """A run's score on a task in percent."""
    return 100.0 * json.loads((eval_dir / run / f"{task}.json").read_text(encoding="utf-8"))["score"]


def _parse_limits(pairs: list[str]) -> dict[str, int | None]:
    limits: dict[str, int | None] = {}
    for pair in pairs:
        task, _, value = pair.partition("=")
        if task not in TASKS or task == "mmlu_medical":
            raise SystemExit(f"error: --limits {pair!r}: task must be one of medqa, pubmedqa, gsm8k, mmlu")
        limits[task] = None if value in ("None", "null", "") else int(value)
    missing = {"medqa", "pubmedqa", "gsm8k", "mmlu"} - set(limits)
    if missing:
        raise SystemExit(f"error: --limits misses {sorted(missing)} (use TASK=null for every document)")
    return limits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medmoelora_eval.results", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("samples", help="per-task limits -> an lm_eval --samples file")
    make.add_argument("--data", type=Path, required=True, help="prepared data directory")
    make.add_argument("--limits", nargs="+", required=True, metavar="TASK=N", help="N per task (per subject: mmlu)")
    make.add_argument("--seed", type=int, default=0, help="seed of the per-task document draw")
    make.add_argument("--out", type=Path, required=True)
    cut = commands.add_parser("split", help="lm_eval output directory -> <out>/<task>.json")
    cut.add_argument("raw_dir", type=Path, help="lm_eval --output_path directory")
    cut.add_argument("--run", required=True)
    cut.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "samples":
        chosen = samples(args.data, _parse_limits(args.limits), args.seed)
        write_atomic(args.out, json.dumps(chosen) + "\n")
        print(f"samples: {sum(map(len, chosen.values()))} documents in {len(chosen)} tasks", file=sys.stderr)
    else:
        split(args.raw_dir, args.run, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
