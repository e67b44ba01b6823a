"""Fixtures shared by the evaluation tests: the fixture data directory and a TaskManager over our tasks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lm_eval.tasks import TaskManager

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "processed"


@pytest.fixture(scope="session", autouse=True)
def fixture_data_dir() -> Iterator[Path]:
    """Point every medmoe_* task at the fixture records (tests/eval/fixtures/processed) for the session."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDMOE_DATA_DIR", str(FIXTURES))
        yield FIXTURES


@pytest.fixture(scope="session")
def task_manager() -> TaskManager:
    """lm-eval's TaskManager over benchmark/tasks, as `lm_eval --include_path benchmark/tasks` builds it."""
    # include_defaults=False: indexing lm-eval's ~14k built-in tasks costs ~10 s, and ours stand alone.
    return TaskManager(include_path=str(REPO / "benchmark" / "tasks"), include_defaults=False)
