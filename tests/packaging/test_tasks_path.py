"""`python -m medmoelora_eval.tasks_path` names the task folder for `lm_eval --include_path`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medmoelora_eval import tasks_path

REPO = Path(__file__).resolve().parents[2]


def test_a_checkout_gives_benchmark_tasks(tmp_path):
    assert tasks_path.tasks_dir() == REPO / "benchmark" / "tasks"
    printed = subprocess.run(
        [sys.executable, "-m", "medmoelora_eval.tasks_path"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert printed.stdout.strip() == str(REPO / "benchmark" / "tasks")


def test_an_installed_copy_prefers_the_packaged_folder(tmp_path, monkeypatch):
    packaged = tmp_path / "medmoelora_eval" / "tasks"
    shutil.copytree(REPO / "benchmark" / "tasks", packaged)
    monkeypatch.setattr(tasks_path, "PACKAGED", packaged)
    assert tasks_path.tasks_dir() == packaged


def test_a_folder_without_our_template_is_not_taken_for_ours(tmp_path, monkeypatch, capsys):
    (tmp_path / "tasks").mkdir()  # e.g. some other package's "tasks" folder in site-packages
    monkeypatch.setattr(tasks_path, "PACKAGED", tmp_path / "missing")
    monkeypatch.setattr(tasks_path, "SOURCE_TREE", tmp_path / "tasks")
    with pytest.raises(FileNotFoundError, match="reinstall medmoelora"):
        tasks_path.tasks_dir()
    assert tasks_path.main() == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: the medmoe_* task YAMLs are in neither")
