"""The stock `lm_eval` command line runs our tasks from `--include_path benchmark/tasks`, offline.

lm-eval's `dummy` model answers at random and needs no weights or tokenizer, so this checks the wiring
(task discovery, data loading, few-shot, filters, metrics, group aggregation), not the scores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LM_EVAL = Path(sys.executable).with_name("lm_eval")
TASKS = ["medmoe_medqa", "medmoe_pubmedqa", "medmoe_gsm8k", "medmoe_mmlu_medical", "medmoe_general_lm"]
TASK_IDS = {"medmoe_medqa": "medqa", "medmoe_pubmedqa": "pubmedqa", "medmoe_gsm8k": "gsm8k",
            "medmoe_general_lm": "general_lm"}  # fmt: skip


@pytest.mark.slow
def test_lm_eval_cli_runs_our_tasks(fixture_data_dir: Path, tmp_path: Path) -> None:
    command = [str(LM_EVAL), "--model", "dummy", "--include_path", "benchmark/tasks"]
    command += ["--tasks", ",".join(TASKS), "--limit", "2", "--output_path", str(tmp_path)]
    env = {**os.environ, "MEDMOE_DATA_DIR": str(fixture_data_dir), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    (results_file,) = tmp_path.glob("*/results_*.json")
    results = json.loads(results_file.read_text(encoding="utf-8"))
    assert set(results["groups"]) == {"medmoe_mmlu_medical"}
    group = results["groups"]["medmoe_mmlu_medical"]
    assert {"acc,none", "gold_logprob,none", "brier,none", "gold_logprob_stderr,none"} <= set(group)
    medqa = results["results"]["medmoe_medqa"]
    assert {"acc_norm,none", "gold_logprob,none", "brier,none", "brier_stderr,none"} <= set(medqa)
    assert results["results"]["medmoe_general_lm"]["bits_per_byte,none"] > 0  # dummy loglikelihoods are < 0
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(results["results"]["medmoe_gsm8k"])
    assert results["n-shot"]["medmoe_gsm8k"] == 5
    for task, task_id in TASK_IDS.items():
        assert results["configs"][task]["metadata"]["task_id"] == task_id
