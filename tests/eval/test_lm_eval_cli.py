"""The stock `lm_eval` command line runs our tasks from `--include_path benchmark/tasks`, offline.

lm-eval's `dummy` model answers at random and needs no weights or tokenizer, so this checks the wiring
(task discovery, data loading, few-shot, filters, metrics, group aggregation), not the scores.
"""

from __future__ import annotations

import json
import os
import re
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


def _without_run_details(results: dict) -> dict:
    """A results file with what differs between two identical runs removed: the clock and object addresses."""
    kept = {key: value for key, value in results.items() if key not in ("date", "total_evaluation_time_seconds")}
    return json.loads(re.sub(r" at 0x[0-9a-f]+", "", json.dumps(kept)))


@pytest.mark.slow
def test_the_workflows_entry_point_writes_what_the_stock_cli_writes(fixture_data_dir: Path, tmp_path: Path) -> None:
    # `python -m medmoelora_eval.lm_eval_cli` (the eval rule's command) runs lm-eval's own CLI without its
    # index of the built-in tasks: the same arguments must give the same results and per-document samples.
    arguments = ["--model", "dummy", "--include_path", "benchmark/tasks", "--tasks", ",".join(TASKS)]
    arguments += ["--limit", "2", "--seed", "0", "--log_samples"]
    env = {**os.environ, "MEDMOE_DATA_DIR": str(fixture_data_dir), "HF_HUB_OFFLINE": "1"}
    outputs = {}
    for name, command in (("stock", [str(LM_EVAL)]), ("ours", [sys.executable, "-m", "medmoelora_eval.lm_eval_cli"])):
        out = tmp_path / name
        run = subprocess.run(
            [*command, *arguments, "--output_path", str(out)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        (results_file,) = out.glob("*/results_*.json")
        samples = {path.name.rsplit("_", 1)[0]: path.read_text(encoding="utf-8") for path in out.glob("*/samples_*")}
        outputs[name] = (_without_run_details(json.loads(results_file.read_text(encoding="utf-8"))), samples)
    assert outputs["ours"][0] == outputs["stock"][0]
    assert len(outputs["ours"][1]) == 10 and outputs["ours"][1] == outputs["stock"][1]


def test_the_workflows_entry_point_indexes_the_include_path_alone() -> None:
    from lm_eval import tasks

    from medmoelora_eval.lm_eval_cli import included_tasks_only

    stock = tasks.TaskManager
    with included_tasks_only():
        manager = tasks.TaskManager(include_path=str(REPO / "benchmark" / "tasks"))
    assert tasks.TaskManager is stock  # put back on leaving the block
    assert "medmoe_medqa" in manager.all_tasks
    assert all(name.startswith("medmoe_") for name in manager.all_subtasks)  # none of lm-eval's own, e.g. arc_easy


def test_the_workflows_entry_point_without_an_include_path_says_what_to_add(capsys: pytest.CaptureFixture[str]) -> None:
    from medmoelora_eval.lm_eval_cli import main

    assert main(["--model", "dummy", "--tasks", "arc_easy"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "--include_path benchmark/tasks" in error and "`lm_eval` itself" in error


def test_the_workflows_entry_point_names_an_unknown_task_in_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "medmoelora_eval.lm_eval_cli", "--model", "dummy"]
    command += ["--include_path", "benchmark/tasks", "--tasks", "medmoe_medqaa", "--output_path", str(tmp_path / "out")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --tasks: Tasks not found: medmoe_medqaa under --include_path")
    assert "medmoe_medqa," in last and not (tmp_path / "out").exists()
