"""Synthetic per-document results in the eval step's layout, with effects planted through a run's skill.

Every document has a fixed difficulty (its choices' loglikelihood noise, shared by all runs); a run adds
its skill to the gold choice and a small run noise that depends only on the seed, so two runs with the
same skill and seeds produce identical results, and ``roll=True`` moves every result to the next
document: the same score, other documents (an exactly null effect that is not a copy).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from medmoelora.tasks import MMLU_MEDICAL_SUBJECTS

SIZES = {"medqa": 60, "pubmedqa": 45, "gsm8k": 40, "general_text": 30}
CHOICES = {"medqa": 4, "pubmedqa": 3, "mmlu": 4}
MMLU_PER_SUBJECT = 15
MMLU_GENERAL_SUBJECTS = ("astronomy", "philosophy")
RUN_NOISE = 0.3


def _documents(task: str) -> list[tuple[str, int]]:
    if task == "mmlu":
        subjects = (*MMLU_MEDICAL_SUBJECTS, *MMLU_GENERAL_SUBJECTS)
        return [(f"medmoe_mmlu_{subject}", i) for subject in subjects for i in range(MMLU_PER_SUBJECT)]
    return [(f"medmoe_{task}", i) for i in range(SIZES[task])]


def _records(task: str, medical: float, general: float, seed: int, roll: bool) -> list[dict]:
    documents = _documents(task)
    count = len(documents)
    fixed = np.random.default_rng(sum(map(ord, task)))  # the documents: the same for every run
    noise = np.random.default_rng([seed, sum(map(ord, task))])  # the trained model: the same for one seed
    order = np.arange(count)
    if roll:  # within each lm-eval task, so that every subject keeps its score
        names = np.array([name for name, _ in documents])
        for name in set(names):
            where = np.flatnonzero(names == name)
            order[where] = np.roll(where, 1)
    if task == "general_text":
        sizes = fixed.integers(100, 2000, count)
        bits_per_byte = 1.2 - 0.1 * general + 0.05 * fixed.normal(size=count) + 0.02 * noise.normal(size=count)
        return [
            {"task": "medmoe_general_text", "doc_id": i, "correct": 0, "bytes": int(sizes[i]),
             "loglikelihood": float(-bits_per_byte[j] * sizes[i] * math.log(2))}
            for i, j in enumerate(order)
        ]  # fmt: skip
    if task == "gsm8k":
        solved = fixed.normal(size=count) + 0.5 * general + RUN_NOISE * noise.normal(size=count) > 1.0
        return [
            {"task": "medmoe_gsm8k", "doc_id": i, "correct": int(solved[j]), "answer": "1", "target": "1"}
            for i, j in enumerate(order)
        ]
    gold = fixed.integers(0, CHOICES[task], count)
    loglikelihoods = fixed.normal(size=(count, CHOICES[task])) + RUN_NOISE * noise.normal(size=(count, CHOICES[task]))
    skills = [medical if not name.endswith(MMLU_GENERAL_SUBJECTS) else general for name, _ in documents]
    loglikelihoods[np.arange(count), gold] += skills
    return [
        {"task": documents[i][0], "doc_id": documents[i][1], "gold": int(gold[j]),
         "correct": int(loglikelihoods[j].argmax() == gold[j]), "loglikelihoods": loglikelihoods[j].tolist()}
        for i, j in enumerate(order)
    ]  # fmt: skip


def write_run(
    eval_dir: Path,
    run: str,
    medical: float,
    general: float,
    seeds: list[int] | None = None,
    roll: bool = False,
    tasks: tuple[str, ...] = ("medqa", "pubmedqa", "mmlu", "gsm8k", "general_text"),
) -> None:
    """``<eval_dir>/<run>/[seed<k>/]<task>.samples.jsonl`` for every task (and mmlu_medical from mmlu)."""
    for seed in seeds or [None]:
        out = eval_dir / run / (f"seed{seed}" if seed is not None else "")
        out.mkdir(parents=True, exist_ok=True)
        for task in tasks:
            records = _records(task, medical, general, seed or 0, roll)
            files = {task: records}
            if task == "mmlu":
                medical_subjects = {f"medmoe_mmlu_{subject}" for subject in MMLU_MEDICAL_SUBJECTS}
                files["mmlu_medical"] = [record for record in records if record["task"] in medical_subjects]
            for name, chosen in files.items():
                lines = "".join(json.dumps(record) + "\n" for record in chosen)
                (out / f"{name}.samples.jsonl").write_text(lines, encoding="utf-8")


def routing_stats(shares: dict[str, list[float]], routing: str = "soft") -> dict:
    """A routing_stats.json as training writes it, with the given mean gates per module."""
    modules = {
        path: {"layer": int(path.split(".")[2]), "routing": routing, "tokens": 100, "mean_gate": gates,
               "top1_share": gates}
        for path, gates in shares.items()
    }  # fmt: skip
    return {"by_task": {}, "overall": {"layers": {}, "modules": modules}}
