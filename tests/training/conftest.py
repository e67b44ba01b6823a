"""Prepared training data from the small raw fixtures of tests/data (every original format)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmoelora.cli import main

RAW_FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "raw"


@pytest.fixture(scope="session")
def prepared_data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "processed"
    assert main(["prepare-data", "--raw-dir", str(RAW_FIXTURES), "--out", str(out), "--pubmedqa-validation", "1"]) == 0
    return out
