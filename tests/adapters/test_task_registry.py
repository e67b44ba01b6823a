"""The task registry (`medmoelora.tasks`): consistent with the lm-eval YAMLs, the one place that names a
task, and built so that a new evaluation task is one entry."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from lm_eval.tasks._yaml_loader import load_yaml  # the loader lm-eval's TaskManager uses

from medmoelora import AdapterConfig
from medmoelora.errors import UserError
from medmoelora.tasks import (
    DATA_TASKS,
    DEFAULT_EVAL_TASK_MAP,
    EVAL_TASKS,
    MMLU,
    MMLU_MEDICAL_SUBJECTS,
    MMLU_SUBJECTS,
    RUN_TASKS,
    TRAINING_TASKS,
    EvalTask,
    check_limits,
    groups_over,
    mmlu_subject_task,
    subject_limit_task,
)

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "benchmark" / "tasks"


def task_yamls() -> dict[str, dict]:
    """lm-eval task or group name -> its YAML (includes not resolved), for every YAML under benchmark/tasks."""
    found = {}
    for path in TASK_DIR.rglob("*.yaml"):
        config = load_yaml(path, resolve_func=False, recursive=False)
        name = config.get("group") or config.get("task")
        found[name] = config
    return found


def test_every_eval_task_has_its_yaml_with_its_metric_and_data_task() -> None:
    yamls = task_yamls()
    for task in EVAL_TASKS.values():
        config = yamls[task.lm_eval_task]
        metric = task.metric.split(",")[0]
        metrics = config.get("aggregate_metric_list") or config.get("metric_list")
        if metrics is None:  # a subject group's members carry the metric of the shared template
            metrics = load_yaml(TASK_DIR / "medmoe_mmlu" / "_default_template_yaml", resolve_func=False)["metric_list"]
        assert metric in [entry["metric"] for entry in metrics], task.name
        data_task = config.get("dataset_kwargs", {}).get("data_task") or config["metadata"]["task_id"]
        assert data_task == task.data_task.name, task.name
        if task.subjects:
            assert config["task"] == [mmlu_subject_task(subject) for subject in task.subjects]


def test_subject_groups_and_routing_are_consistent() -> None:
    assert len(MMLU_SUBJECTS) == 57 and set(MMLU_MEDICAL_SUBJECTS) < set(MMLU_SUBJECTS)
    for task in EVAL_TASKS.values():
        assert set(task.subjects) <= set(MMLU_SUBJECTS)
        assert not task.subjects or task.data_task is MMLU
        if task.part_of is not None:
            parent = EVAL_TASKS[task.part_of]
            assert parent in RUN_TASKS and task.subjects and set(task.subjects) <= set(parent.subjects)
        assert task.routing_task.name in TRAINING_TASKS  # the Multi-LoRA preset has an expert for it
    assert [task.name for task in RUN_TASKS] == ["medqa", "pubmedqa", "gsm8k", "mmlu", "general_lm"]
    preset = AdapterConfig.from_preset("multi_lora")
    assert preset.task_names == TRAINING_TASKS == ("medqa", "medmcqa", "pubmedqa", "general_instruct")
    assert preset.eval_task_map == DEFAULT_EVAL_TASK_MAP
    assert preset.eval_task_map["medmoe_mmlu_medical"] == "medqa"
    # Every general probe is answered by the expert trained on the general-domain instructions.
    for probe in ("medmoe_gsm8k", "medmoe_mmlu", "medmoe_mmlu_general", "medmoe_general_lm"):
        assert preset.eval_task_map[probe] == "general_instruct", probe
    assert {name for name, task in DATA_TASKS.items() if task.domain == "medical"} == {"medqa", "medmcqa", "pubmedqa"}
    # The general-domain training data is no forgetting probe's data.
    probes = {task.data_task.name for task in EVAL_TASKS.values() if task.domain == "general"}
    assert probes == {"gsm8k", "mmlu", "general_lm"} and not probes & set(TRAINING_TASKS)


def test_groups_over_a_subject_most_specific_first() -> None:
    assert groups_over("medmoe_mmlu_anatomy") == ["medmoe_mmlu_medical", "medmoe_mmlu"]
    assert groups_over("medmoe_mmlu_astronomy") == ["medmoe_mmlu_general", "medmoe_mmlu"]
    assert groups_over("medmoe_medqa") == [] and groups_over("medmoe_mmlu_not_a_subject") == []


def test_limits_name_every_run_task_and_nothing_else() -> None:
    check_limits({"medqa": 1, "pubmedqa": None, "gsm8k": 2, "mmlu": 1, "general_lm": 3})
    with pytest.raises(UserError, match="Did you mean 'pubmedqa'"):
        check_limits({"medqa": 1, "pubmedq": 1, "gsm8k": 2, "mmlu": 1, "general_lm": 3})
    with pytest.raises(UserError, match="no limit for gsm8k"):
        check_limits({"medqa": 1, "pubmedqa": 1, "mmlu": 1, "general_lm": 3})
    with pytest.raises(UserError, match=r"unknown task in config eval\.limits 'mmlu_medicine'"):
        limits = {"medqa": 1, "pubmedqa": 1, "gsm8k": 1, "mmlu": 1, "general_lm": 1, "mmlu_medicine": 1}
        check_limits(limits, "config eval.limits")


def test_a_subject_subset_may_override_its_groups_per_subject_limit() -> None:
    limits = {"medqa": 1, "pubmedqa": 1, "gsm8k": 1, "mmlu": 1, "general_lm": 1, "mmlu_medical": 5}
    check_limits(limits)
    assert subject_limit_task("anatomy", limits) == "mmlu_medical"
    assert subject_limit_task("astronomy", limits) is None  # mmlu's own limit applies
    assert subject_limit_task("anatomy", {**limits, "mmlu_medical": None} | {}) == "mmlu_medical"


# --- a new evaluation task is one registry entry ------------------------------------------------------

LAW_SUBJECTS = ("international_law", "jurisprudence", "professional_law")
MMLU_LAW = EvalTask(
    "mmlu_law",
    "MMLU-law",
    "medmoe_mmlu_law",
    "acc,none",
    "general",
    MMLU,
    DATA_TASKS["general_instruct"],
    subjects=LAW_SUBJECTS,
    part_of="mmlu",
)


@pytest.fixture
def with_mmlu_law(monkeypatch: pytest.MonkeyPatch) -> EvalTask:
    monkeypatch.setitem(EVAL_TASKS, MMLU_LAW.name, MMLU_LAW)
    return MMLU_LAW


def fake_lm_eval_results(subjects: dict[str, tuple[float, int]]) -> dict:
    """lm_eval's results JSON for one medmoe_mmlu run: subject -> (accuracy, documents)."""
    entries = {
        mmlu_subject_task(subject): {"acc,none": acc, "acc_stderr,none": 0.1, "sample_len": n}
        for subject, (acc, n) in subjects.items()
    }
    total = sum(n for _, n in subjects.values())
    mean = sum(acc * n for acc, n in subjects.values()) / total
    return {
        "results": entries,
        "groups": {"medmoe_mmlu": {"acc,none": mean, "acc_stderr,none": 0.05, "sample_len": total}},
        "group_subtasks": {"medmoe_mmlu": list(entries)},
        "config": {"model_args": "pretrained=x"},
    }


def test_a_subject_subset_entry_is_scored_routed_tabulated_and_generated(with_mmlu_law, tmp_path) -> None:
    from medmoelora_eval import results, tables
    from medmoelora_eval.task_routing import lookup_names
    from tests.eval.test_mmlu_configs import generator

    # Law subjects: jurisprudence 1 of 2, the other two 0 of 1; every other subject all right.
    outcomes = {subject: (0.0, 1) if subject in LAW_SUBJECTS else (1.0, 3) for subject in MMLU_SUBJECTS}
    run = fake_lm_eval_results({**outcomes, "jurisprudence": (0.5, 2)})
    entry = results.score(run, "mmlu_law")
    assert entry["n"] == 4 and entry["score"] == pytest.approx(1 / 4) and 0 < entry["stderr"] < 0.3
    assert entry["lm_eval_task"] == "medmoe_mmlu_law"
    assert lookup_names("medmoe_mmlu_jurisprudence") == [
        "medmoe_mmlu_jurisprudence", "medmoe_mmlu_law", "medmoe_mmlu_general", "medmoe_mmlu"
    ]  # fmt: skip
    assert [(c.label, c.scope) for c in tables.general_columns()] == [
        ("GSM8K", "gsm8k"), ("MMLU-general", "mmlu_general"), ("General LM bits/byte", "general_lm"),
        ("MMLU-law", "mmlu_law"),
    ]  # fmt: skip
    group = generator().render_configs()["_medmoe_mmlu_law.yaml"]
    assert "- medmoe_mmlu_jurisprudence\n" in group and "medmoe_mmlu_anatomy" not in group


# --- no task name outside the registry -----------------------------------------------------------------

# Where task names belong: the registry, the lm-eval task YAMLs (and their prompt glue), the tests, the
# user's workflow configs (per-task limits, checked against the registry at start) and the docs that tell
# users which tasks exist (README.md and docs/, whose task names are checked by tests/docs).
ALLOWED = ("adapters/medmoelora/tasks.py", "benchmark/tasks/", "tests/", "config/", "README.md", "docs/")


def git_grep(*args: str) -> list[str]:
    result = subprocess.run(
        ["git", "grep", "-n", "--untracked", *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode in (0, 1), result.stderr  # 1: no match
    return [line for line in result.stdout.splitlines() if not line.startswith(ALLOWED)]


def test_git_grep_finds_no_task_name_outside_the_registry() -> None:
    names = sorted({*DATA_TASKS, *EVAL_TASKS}, key=len, reverse=True)
    alternatives = "|".join(map(re.escape, names))
    # An lm-eval task name, anywhere (the suite's prefix is unique to them; _medmoe_template_yaml is a file).
    lm_eval_names = git_grep("-E", r"(^|[^_a-zA-Z])medmoe_[a-z0-9]")
    # A task name as a string literal in code: "medqa", 'mmlu_medical'.
    literals = git_grep("-E", rf"[\"']({alternatives})[\"']", "--", "*.py", "*.smk", "Snakefile")
    # A task name as a word in the workflow's other files (the schema, the profiles) and the build files.
    words = git_grep("-w", "-E", alternatives, "--", "workflow/*.yaml", "Makefile", "pyproject.toml")
    assert lm_eval_names + literals + words == []
