"""Prepared training data from the small raw fixtures of tests/data (every original format), and two
runs of `tests.training.helpers.run_config`: one straight, one stopped after step 4 (as if killed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medmoelora.cli import main
from medmoelora.training.run import train
from tests.training.helpers import STOP, StopAfter, run_config

RAW_FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "raw"
SMALL = ("--pubmedqa-validation", "1", "--general-validation", "2")  # held-out draws the fixtures allow


@pytest.fixture(scope="session")
def prepared_data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "processed"
    assert main(["prepare-data", "--raw-dir", str(RAW_FIXTURES), "--out", str(out), *SMALL]) == 0
    return out


@pytest.fixture(scope="session")
def straight(tiny_model_dir, prepared_data_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("straight") / "run"
    return out, train(tiny_model_dir, prepared_data_dir, out, run_config())


@pytest.fixture(scope="session")
def stopped(tiny_model_dir, prepared_data_dir, tmp_path_factory) -> Path:
    """A run stopped after step 4, as if killed there: its last checkpoint is checkpoint-3."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    train(tiny_model_dir, prepared_data_dir, out, run_config(), callbacks=[StopAfter(STOP)])
    return out


@pytest.fixture
def stopped_copy(stopped, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    return out
