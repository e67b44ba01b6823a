"""Where the tasks read their data, and how they fail when it is not there."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from lm_eval.tasks import TaskManager

from medmoelora.errors import UserError

TASKS_DIR = Path(__file__).resolve().parents[2] / "benchmark" / "tasks"


def task_utils() -> ModuleType:
    """benchmark/tasks/utils.py, which lm-eval loads by path through `!function`."""
    spec = importlib.util.spec_from_file_location("medmoe_task_utils", TASKS_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    utils = task_utils()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDMOE_DATA_DIR")
    assert utils.resolve_data_dir() == tmp_path.resolve() / "data" / "processed"
    monkeypatch.setenv("MEDMOE_DATA_DIR", "/env/dir")
    assert utils.resolve_data_dir() == Path("/env/dir")
    assert utils.resolve_data_dir("/explicit") == Path("/explicit")


def test_missing_data_names_the_file_and_the_fix(
    task_manager: TaskManager, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MEDMOE_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError, match="medmoelora prepare-data") as error:
        task_manager.load(["medmoe_pubmedqa"])
    assert str(tmp_path / "pubmedqa" / "test.jsonl") in str(error.value)


def test_lm_eval_metadata_data_dir_wins_over_the_environment(tmp_path: Path) -> None:
    # lm_eval --metadata '{"data_dir": ...}' reaches the loader as a keyword argument.
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_dir": str(tmp_path)})
    with pytest.raises(UserError, match=str(tmp_path / "gsm8k" / "test.jsonl")):
        manager.load(["medmoe_gsm8k"])


def test_subject_without_records_fails(task_manager: TaskManager) -> None:
    with pytest.raises(UserError, match="no records with subject 'virology'"):
        task_manager.load(["medmoe_mmlu_virology"])
