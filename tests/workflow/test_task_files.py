"""lm-eval results -> results/eval/<run>/<task>.json (`results.score`): the derived MMLU groups, the general probes
and the continuous metrics, on hand-made lm-eval output whose numbers are known. (The tables, built from the
per-document results, are tested in tests/benchmark/test_tables.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medmoelora.tasks import EVAL_TASKS, MMLU_MEDICAL_SUBJECTS, MMLU_SUBJECTS
from medmoelora_eval.results import score

# Every MMLU subject's (documents, acc, gold_logprob, brier): the six medical ones alike, the other 51
# alike but for astronomy.
MMLU = {subject: (2, 0.5, -1.0, 0.6) if subject in MMLU_MEDICAL_SUBJECTS else (1, 0.25, -2.0, 0.8)
        for subject in MMLU_SUBJECTS} | {"astronomy": (3, 1 / 3, -1.5, 0.7)}  # fmt: skip


def choice(acc: float, logprob: float, brier: float, size: int) -> dict:
    return {"acc,none": acc, "acc_stderr,none": 0.1, "gold_logprob,none": logprob, "brier,none": brier,
            "sample_len": size}  # fmt: skip


def lm_eval_results(shift: float) -> dict:
    """A run's lm-eval results; ``shift`` moves every score so that runs differ."""
    subjects = {f"medmoe_mmlu_{name}": choice(acc, lp + shift, b, n) for name, (n, acc, lp, b) in MMLU.items()}
    total = sum(entry["sample_len"] for entry in subjects.values())
    group = {key: sum(e[key] * e["sample_len"] for e in subjects.values()) / total for key in choice(0, 0, 0, 0)}
    results = {
        "medmoe_medqa": choice(0.4, -1.2 + shift, 0.7, 10),
        "medmoe_pubmedqa": choice(0.6, -0.8 + shift, 0.5, 10),
        "medmoe_gsm8k": {"exact_match,strict-match": 0.0, "exact_match_stderr,strict-match": 0.0,
                         "exact_match,flexible-extract": 0.1, "sample_len": 3},
        "medmoe_general_lm": {"bits_per_byte,none": 1.0 - shift, "bits_per_byte_stderr,none": "N/A",
                              "byte_perplexity,none": 2.0, "word_perplexity,none": 30.0, "sample_len": 5},
        **subjects,
    }  # fmt: skip
    return {
        "config": {"model_args": "pretrained=m"},
        "results": results,
        "groups": {"medmoe_mmlu": {**group, "sample_len": total}},
        "group_subtasks": {"medmoe_mmlu": list(subjects)},
        "n-samples": {name: {"effective": 1} for name in results},
    }


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    eval_dir, train_dir = tmp_path / "eval", tmp_path / "train"
    for run, shift in (("base", 0.0), ("lora", -0.1), ("med", 0.2)):
        (eval_dir / run).mkdir(parents=True)
        results = lm_eval_results(shift)
        for task in EVAL_TASKS:  # <task>.json as `results split` writes it
            (eval_dir / run / f"{task}.json").write_text(json.dumps({"run": run, **score(results, task)}))
        if run != "base":
            (train_dir / run).mkdir(parents=True)
            metrics = {"trainable_params": 1000 + len(run), "active_params": 900, "tokens_per_second": 1.0,
                       "peak_memory_mb": 1.0, "wall_time_s": 1.0}  # fmt: skip
            (train_dir / run / "train_metrics.json").write_text(json.dumps(metrics))
    return eval_dir, train_dir


def test_task_files_carry_the_derived_mmlu_groups_and_every_metric(dirs: tuple[Path, Path]) -> None:
    eval_dir, _ = dirs
    general = json.loads((eval_dir / "base/mmlu_general.json").read_text())
    # the 51 non-medical subjects, weighted by size: astronomy (3 questions) and 50 of one question
    assert general["score"] == pytest.approx((50 * 0.25 + 3 * (1 / 3)) / 53)
    assert general["metrics"]["gold_logprob"] == pytest.approx((50 * -2.0 + 3 * -1.5) / 53)
    assert len(general["subtasks"]) == 51 and "medmoe_mmlu_virology" in general["subtasks"]
    medical = json.loads((eval_dir / "base/mmlu_medical.json").read_text())
    assert len(medical["subtasks"]) == 6 and medical["metrics"]["brier"] == pytest.approx(0.6)
    probe = json.loads((eval_dir / "base/general_lm.json").read_text())
    assert probe["score"] == probe["metrics"]["bits_per_byte"] == 1.0 and probe["metrics"]["word_perplexity"] == 30.0
    assert json.loads((eval_dir / "base/medqa.json").read_text())["metrics"] == {
        "acc": 0.4, "gold_logprob": -1.2, "brier": 0.7
    }  # fmt: skip
