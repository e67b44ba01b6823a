"""Fixtures of the bad-input tables: prepared data from the raw fixtures, and a fresh `Inputs` per case."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmoelora.cli import main
from tests.errors.helpers import RAW_FIXTURES, Inputs


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "processed"
    held_out = ["--pubmedqa-validation", "1", "--general-validation", "2"]  # what the fixtures allow
    assert main(["prepare-data", "--raw-dir", str(RAW_FIXTURES), "--out", str(out), *held_out]) == 0
    return out


@pytest.fixture
def inputs(tmp_path: Path, tiny_model_dir: Path, prepared_data: Path) -> Inputs:
    return Inputs(tmp_path, tiny_model_dir, prepared_data)
