"""The evaluation subset: a seeded draw per task, the same for every run, not the first N documents."""

from __future__ import annotations

import json
from pathlib import Path

from medmoelora_eval.results import samples


def write_task(data: Path, task: str, split: str, records: list[dict]) -> None:
    (data / task).mkdir(parents=True, exist_ok=True)
    (data / task / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_samples_are_a_seeded_draw_per_task(tmp_path):
    write_task(tmp_path, "medqa", "test", [{"id": i} for i in range(50)])
    write_task(tmp_path, "pubmedqa", "test", [{"id": i} for i in range(30)])
    write_task(tmp_path, "gsm8k", "test", [{"id": i} for i in range(5)])
    write_task(tmp_path, "mmlu", "test", [{"subject": s} for s in ["anatomy"] * 9 + ["virology"] * 4])
    limits = {"medqa": 10, "pubmedqa": 10, "gsm8k": 8, "mmlu": 3}
    chosen = samples(tmp_path, limits, seed=0)
    assert chosen == samples(tmp_path, limits, seed=0)  # every run gets the same documents
    assert chosen != samples(tmp_path, limits, seed=1)
    assert len(chosen["medmoe_medqa"]) == 10 and chosen["medmoe_medqa"] == sorted(set(chosen["medmoe_medqa"]))
    assert chosen["medmoe_medqa"] != list(range(10))  # not lm_eval's --limit (the first N)
    assert all(0 <= i < 50 for i in chosen["medmoe_medqa"])
    assert chosen["medmoe_gsm8k"] == list(range(5))  # a limit above the count takes every document
    assert len(chosen["medmoe_mmlu_anatomy"]) == 3 and len(chosen["medmoe_mmlu_virology"]) == 3
    assert samples(tmp_path, {**limits, "medqa": None})["medmoe_medqa"] == list(range(50))
