"""The evaluation contract of the workflow: the task registry's lm-eval task and metric make each score.

    python -m medmoelora_eval.results samples --data data/processed --limits medqa=40 mmlu=2 --out samples.json
    python -m medmoelora_eval.results split LM_EVAL_OUTPUT_DIR --run lora --out results/eval/lora

``samples`` turns per-task limits into one ``lm_eval --samples`` file (N documents of every task, per
subject for a group of MMLU subjects, drawn at random with a fixed seed), so that one lm_eval call evaluates every task
at its own limit; a subject subset (``mmlu_medical=5``) overrides its group's per-subject limit for its
subjects. A random draw, not lm_eval's ``--limit`` (the first N): the first 20 documents of PubMedQA's
test set are all "yes", so a first-N subset rewards a model that always says yes. The draw is stratified
by gold answer in the test set's proportions, so that a small draw cannot tilt the answer mix (an
unstratified 30 of PubMedQA's test set drew 9 yes / 11 no / 10 maybe against its 55% yes).
``split`` reads lm_eval's output directory (``--output_path``, written with ``--log_samples``) and
writes, for every task, ``<out>/<task>.json`` (score, lm-eval's standard error ``stderr``, the document
count ``n``, lm-eval's raw entries) and ``<out>/<task>.samples.jsonl``, plus the full results file as
``<out>/lm_eval_results.json``. A task that is ``part_of`` another in the registry (a subset of MMLU's
subjects) is computed from that task's subject results (lm_eval refuses two groups sharing subtasks in
one call), weighted by size as its group YAML does. ``<task>.json`` also has ``metrics``: the task's
metric and its ``extra_metrics`` by name (``acc``, ``gold_logprob``, ``brier``; ``bits_per_byte`` and the
perplexities for the general LM probe).

``<task>.samples.jsonl`` holds one line per evaluated document, sorted by lm-eval task and doc id, so
that two runs can be compared on the same documents::

    {"task": "<an MMLU subject's lm-eval task>", "doc_id": 12, "correct": 1,
     "gold": 2, "loglikelihoods": [-9.1, -8.7, -8.2, -9.0]}      # multiple choice
    {"task": "<GSM8K's lm-eval task>", "doc_id": 3, "correct": 0,
     "answer": null, "target": "18"}                              # generation
    {"task": "<the LM probe's lm-eval task>", "doc_id": 7, "correct": null,
     "loglikelihood": -812.4, "bytes": 431}                       # rolling loglikelihood

``correct`` is lm-eval's own per-document value of the task's metric (``acc``; ``exact_match`` under the
``strict-match`` filter for GSM8K), so its mean is the task's score. ``gold`` indexes the choices;
``answer`` is the strict-match extraction (null where it found no answer) and ``target`` the gold
answer after ``#### ``. A rolling-loglikelihood document has no ``correct`` (null); it has its
``loglikelihood`` and its UTF-8 ``bytes`` (lm-eval's, from which bits per byte is computed). ``stderr``
is null where lm-eval reports N/A (a task or subject of one document; a group with such a subject; bits
per byte, which has no closed-form standard error).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lm_eval.api.metrics import pooled_sample_stderr

from medmoelora import atomic
from medmoelora.data.prompts import TaskPrompt
from medmoelora.errors import UserError, command_main
from medmoelora.tasks import (
    EVAL_SPLIT,
    EVAL_TASKS,
    RUN_TASKS,
    check_limits,
    get_prompt,
    mmlu_subject_task,
    subject_limit_task,
)

FULL_RESULTS = "lm_eval_results.json"
SAMPLES_SUFFIX = ".samples.jsonl"
# lm-eval's --log_samples file per leaf task: samples_<task>_<date_id>.jsonl, date_id an ISO time with "-".
_SAMPLES_FILE = re.compile(r"samples_(?P<task>.+)_\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(\.\d+)?\.jsonl")
_NO_ANSWER = "[invalid]"  # what lm-eval's regex filter returns when the pattern does not match


def test_documents(data_dir: Path, limits: Mapping[str, int | None]) -> dict[str, tuple[str, list[str | None]]]:
    """``{lm-eval leaf task: (the task whose limit applies, each test document's gold answer)}`` from the
    prepared data, for every task lm_eval runs; a subject group's leaves are its subjects' tasks, and a
    subject takes the limit of the subset it belongs to where ``limits`` names one (mmlu_medical). The
    gold answer is None for a task without choices (generation, rolling loglikelihood)."""
    documents = {}
    for task in RUN_TASKS:
        with (data_dir / task.data_task.name / f"{EVAL_SPLIT}.jsonl").open(encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        prompt = get_prompt(task.data_task.name)
        golds = [_gold(prompt, record, data_dir / task.data_task.name, n) for n, record in enumerate(records, 1)]
        if task.subjects:
            for subject in sorted({record["subject"] for record in records}):
                limit_task = subject_limit_task(subject, limits) or task.name
                subject_golds = [g for g, r in zip(golds, records, strict=True) if r["subject"] == subject]
                documents[mmlu_subject_task(subject)] = (limit_task, subject_golds)
        else:
            documents[task.lm_eval_task] = (task.name, golds)
    return documents


def _gold(prompt: TaskPrompt, record: dict, data: Path, line: int) -> str | None:
    """A record's gold answer as text; None for a task without choices."""
    if prompt.choices is None:
        return None
    try:
        return prompt.answer(record)
    except (KeyError, IndexError, TypeError) as error:
        raise UserError(f"{data}/{EVAL_SPLIT}.jsonl:{line} has no gold answer ({error}); re-run prepare-data") from None


def stratified_draw(golds: Sequence[str | None], limit: int, key: str) -> list[int]:
    """``limit`` document indices drawn at random (``key`` seeds the draw), stratified by gold answer in
    the test set's proportions: each answer gets its share of ``limit`` rounded down, and the documents
    left over go to the answers with the largest remainders (ties: the more frequent answer, then the
    answer's text). Documents without a gold answer are one stratum: a plain random draw."""
    by_gold: dict[str, list[int]] = {}
    for index, gold in enumerate(golds):
        by_gold.setdefault("" if gold is None else str(gold), []).append(index)
    if len(by_gold) == 1:
        return sorted(random.Random(key).sample(range(len(golds)), limit))
    shares = {gold: limit * len(indices) / len(golds) for gold, indices in by_gold.items()}
    quotas = {gold: int(share) for gold, share in shares.items()}
    by_remainder = sorted(by_gold, key=lambda g: (-(shares[g] - quotas[g]), -len(by_gold[g]), g))
    for gold in by_remainder[: limit - sum(quotas.values())]:
        quotas[gold] += 1
    chosen = [i for gold, n in quotas.items() for i in random.Random(f"{key}-{gold}").sample(by_gold[gold], n)]
    return sorted(chosen)


def samples(data_dir: Path, limits: Mapping[str, int | None], seed: int = 0) -> dict[str, list[int]]:
    """``{lm-eval task: sorted document indices}``: N = the task's limit (per subject for a subject group)
    drawn with ``seed``, stratified by gold answer (`stratified_draw`), the same for every run; None =
    all documents."""
    out = {}
    for task, (name, golds) in test_documents(data_dir, limits).items():
        limit = limits[name]
        if limit is None or limit >= len(golds):
            out[task] = list(range(len(golds)))
        else:
            out[task] = stratified_draw(golds, limit, f"{seed}-{task}")
    return out


def leaf_tasks(results: dict[str, Any], task: str) -> list[str]:
    """The lm-eval tasks whose documents make up one of our tasks (a subject group's: its subjects')."""
    spec = EVAL_TASKS[task]
    if spec.part_of is not None:
        return [mmlu_subject_task(subject) for subject in spec.subjects]
    if spec.subjects:
        return list(results["group_subtasks"][spec.lm_eval_task])
    return [spec.lm_eval_task]


def score(results: dict[str, Any], task: str) -> dict[str, Any]:
    """One task's entry for ``<task>.json``: score (the metric; a fraction or as lm-eval reports it),
    lm-eval's standard error, every metric of the task by name, documents, and lm-eval's raw entries."""
    spec = EVAL_TASKS[task]
    name, metric = spec.lm_eval_task, spec.metric
    metric_name, _, filter_key = metric.partition(",")
    stderr_key = f"{metric_name}_stderr,{filter_key}"
    keys = (metric, *spec.extra_metrics)
    if spec.part_of is not None:
        subtasks = {leaf: results["results"][leaf] for leaf in leaf_tasks(results, task)}
        sizes = [entry["sample_len"] for entry in subtasks.values()]
        metrics = {
            key: sum(entry[key] * size for entry, size in zip(subtasks.values(), sizes, strict=True)) / sum(sizes)
            for key in keys
        }
        stderrs = [entry[stderr_key] for entry in subtasks.values()]
        # As lm-eval aggregates a size-weighted group: pooled, N/A when a subject's stderr is N/A.
        stderr = "N/A" if "N/A" in stderrs else float(pooled_sample_stderr(stderrs, sizes))
        parent = EVAL_TASKS[spec.part_of].lm_eval_task
        entry: dict[str, Any] = {"derived_from": f"{parent} subjects, weighted by size", "subtasks": subtasks}
    elif spec.subjects:
        group = results["groups"][name]
        subtasks = {sub: results["results"][sub] for sub in leaf_tasks(results, task)}
        metrics, sizes, stderr = {key: group[key] for key in keys}, [group["sample_len"]], group[stderr_key]
        entry = {"group": group, "subtasks": subtasks}
    else:
        metrics = {key: results["results"][name][key] for key in keys}
        sizes = [results["results"][name]["sample_len"]]
        stderr = results["results"][name][stderr_key]
        entry = {"results": results["results"][name], "n-samples": results["n-samples"][name]}
    return {
        "task": task,
        "lm_eval_task": name,
        "metric": metric,
        "score": metrics[metric],
        "stderr": None if stderr == "N/A" else stderr,
        "metrics": {key.removesuffix(",none"): value for key, value in metrics.items()},
        "documents": sum(sizes),
        "n": sum(sizes),
        **entry,
    }


def find_samples_files(raw_dir: Path) -> dict[str, Path]:
    """``{lm-eval task: its --log_samples file}`` under an lm_eval output directory."""
    found: dict[str, Path] = {}
    for path in sorted(raw_dir.rglob("samples_*.jsonl")):
        match = _SAMPLES_FILE.fullmatch(path.name)
        if match is None:
            continue
        if match["task"] in found:
            raise UserError(f"two samples files for {match['task']} under {raw_dir}: use one lm_eval run")
        found[match["task"]] = path
    return found


def compact_sample(record: dict[str, Any], task: str, metric: str, config: dict[str, Any]) -> dict[str, Any]:
    """One lm-eval --log_samples record as one line of ``<task>.samples.jsonl`` (see module doc)."""
    metric_name = metric.partition(",")[0]
    if config["output_type"] == "loglikelihood_rolling":
        # lm-eval logs each metric's (loglikelihood, count) pair: bits_per_byte's count is the bytes
        loglikelihood, size = record["bits_per_byte"]
        return {"task": task, "doc_id": int(record["doc_id"]), "correct": None,
                "loglikelihood": float(loglikelihood), "bytes": int(size)}  # fmt: skip
    correct = record[metric_name]
    if correct not in (0, 1):
        raise UserError(f"{task} doc {record['doc_id']}: {metric_name} = {correct!r} is not 0 or 1")
    compact: dict[str, Any] = {"task": task, "doc_id": int(record["doc_id"]), "correct": int(correct)}
    if config["output_type"] == "multiple_choice":
        # filtered_resps: one [loglikelihood, is_greedy] per choice, as strings (lm-eval's sanitize_list)
        loglikelihoods = [float(loglikelihood) for loglikelihood, _greedy in record["filtered_resps"]]
        prompt = get_prompt(config["metadata"]["task_id"])
        target = prompt.doc_to_target(record["doc"])
        gold = target if isinstance(target, int) else prompt.doc_to_choice(record["doc"]).index(target)
        # lm-eval's acc: argmax of the loglikelihoods (the first of ties) is the gold choice
        predicted = max(range(len(loglikelihoods)), key=loglikelihoods.__getitem__)
        if int(predicted == gold) != compact["correct"]:
            raise UserError(
                f"{task} doc {record['doc_id']}: {metric_name} = {correct} disagrees with the "
                f"loglikelihoods {loglikelihoods} and gold choice {gold}; is this lm-eval's samples format?"
            )
        compact.update(gold=gold, loglikelihoods=loglikelihoods)
    else:
        (answer,) = record["filtered_resps"]
        target = record["target"].rsplit("#### ", 1)[-1].strip()
        compact.update(answer=None if answer == _NO_ANSWER else answer, target=target)
    return compact


def task_samples(results: dict[str, Any], files: dict[str, Path], task: str) -> list[dict[str, Any]]:
    """Every document of one of our tasks, compacted, in lm-eval task and doc id order."""
    metric = EVAL_TASKS[task].metric
    filter_key = metric.partition(",")[2]
    compacted = []
    for leaf in sorted(leaf_tasks(results, task)):
        if leaf not in files:
            raise UserError(f"no lm_eval samples file for {leaf}: run lm_eval with --log_samples")
        with files[leaf].open(encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        chosen = [record for record in records if record["filter"] == filter_key]
        compacted += sorted(
            (compact_sample(record, leaf, metric, results["configs"][leaf]) for record in chosen),
            key=lambda sample: sample["doc_id"],
        )
    return compacted


def split(raw_dir: Path, run: str, out: Path) -> None:
    found = sorted(raw_dir.rglob("results_*.json"))
    if len(found) != 1:
        raise UserError(
            f"expected one lm_eval results_*.json under {raw_dir}, found {len(found)}; pass one run's --output_path"
        )
    text = found[0].read_text(encoding="utf-8")
    results = json.loads(text)
    files = find_samples_files(raw_dir)
    outputs = {}  # everything is read and checked before the first file is written
    for task in EVAL_TASKS:
        record = {"run": run, "model_args": results["config"]["model_args"], **score(results, task)}
        documents = task_samples(results, files, task)
        if len(documents) != record["n"]:
            raise UserError(f"{task}: {len(documents)} logged samples for {record['n']} documents")
        outputs[f"{task}{SAMPLES_SUFFIX}"] = "".join(json.dumps(doc, sort_keys=True) + "\n" for doc in documents)
        outputs[f"{task}.json"] = json.dumps(record, indent=1, sort_keys=True) + "\n"
    outputs[FULL_RESULTS] = text
    for name, content in outputs.items():
        atomic.write_text(out / name, content)


def load_metric(eval_dir: Path, run: str, task: str, metric: str) -> float:
    """A run's value of one metric on a task, as lm-eval computed it (``gold_logprob``, ``bits_per_byte``)."""
    path = eval_dir / run / f"{task}.json"
    if not path.is_file():
        raise UserError(f"{path} not found: evaluate run {run!r} first (`python -m medmoelora_eval.results split`)")
    return json.loads(path.read_text(encoding="utf-8"))["metrics"][metric]


def load_score(eval_dir: Path, run: str, task: str) -> float:
    """A run's score on a task: in percent for a fraction, else as lm-eval reports it."""
    path = eval_dir / run / f"{task}.json"
    if not path.is_file():
        raise UserError(f"{path} not found: evaluate run {run!r} first (`python -m medmoelora_eval.results split`)")
    value = json.loads(path.read_text(encoding="utf-8"))["score"]
    return 100.0 * value if EVAL_TASKS[task].percent else value


def _parse_limits(pairs: list[str]) -> dict[str, int | None]:
    limits: dict[str, int | None] = {}
    for pair in pairs:
        task, _, value = pair.partition("=")
        if value in ("None", "null", ""):
            limits[task] = None
        elif value.isdigit() and int(value) >= 1:
            limits[task] = int(value)
        else:
            raise UserError(f"--limits {pair!r}: N must be an integer >= 1, or null for every document")
    check_limits(limits)
    return limits


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medmoelora_eval.results", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("samples", help="per-task limits -> an lm_eval --samples file")
    make.add_argument("--data", type=Path, required=True, help="prepared data directory")
    make.add_argument("--limits", nargs="+", required=True, metavar="TASK=N", help="N per task (per subject: groups)")
    make.add_argument("--seed", type=int, default=0, help="seed of the per-task document draw")
    make.add_argument("--out", type=Path, required=True)
    cut = commands.add_parser("split", help="lm_eval output directory -> <out>/<task>.json, <task>.samples.jsonl")
    cut.add_argument("raw_dir", type=Path, help="lm_eval --output_path directory (run with --log_samples)")
    cut.add_argument("--run", required=True)
    cut.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "samples":
        chosen = samples(args.data, _parse_limits(args.limits), args.seed)
        atomic.write_text(args.out, json.dumps(chosen) + "\n")
        print(f"samples: {sum(map(len, chosen.values()))} documents in {len(chosen)} tasks", file=sys.stderr)
    else:
        split(args.raw_dir, args.run, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
