"""The whole table1 DAG end to end on config/tiny.yaml and the real raw data, in a scratch directory.

- results/table1.csv matches the committed golden file: parameter counts exactly, scores within
  SCORE_TOLERANCE percentage points (equal at the CSV's 4 decimals; a different CPU or torch build can
  flip a near-tied answer of the random tiny model: regenerate with MEDMOE_UPDATE_GOLDEN=1 and review).
- Determinism: the table rule rerun on the same eval outputs gives a byte-identical table1.csv, and a
  second, complete run of a cheap subset from scratch (data, model, LoRA training, its evaluation)
  gives byte-identical eval outputs. (A second full run would double the test's time.)
- Failure: a failing rule leaves no output behind, and rerunning continues from the completed jobs.

About 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.workflow.helpers import GOLDEN, RAW_DATA, snakemake, workflow_copy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not RAW_DATA.is_dir(), reason=f"raw benchmark data not found at {RAW_DATA}"),
]
TINY = ("--configfile", "config/tiny.yaml", "--cores", "2")
SCORE_TOLERANCE = 0.01  # percentage points
PARAMETER_COLUMNS = ["Trainable params", "Active params"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = workflow_copy(tmp_path_factory.mktemp("tiny"))
    result = snakemake(workdir, "results/table1.csv", *TINY)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


def test_table1_matches_golden(tiny_run: Path) -> None:
    table = pd.read_csv(tiny_run / "results/table1.csv")
    if os.environ.get("MEDMOE_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        shutil.copyfile(tiny_run / "results/table1.csv", GOLDEN / "table1.csv")
    golden = pd.read_csv(GOLDEN / "table1.csv")
    assert list(table.columns) == list(golden.columns)
    assert list(table["run"]) == ["base", "lora", "multi_lora", "uniform_moe", "med_moe_lora"]
    pd.testing.assert_frame_equal(table[PARAMETER_COLUMNS], golden[PARAMETER_COLUMNS])
    scores = [column for column in table.columns if column not in ["run", *PARAMETER_COLUMNS]]
    pd.testing.assert_frame_equal(table[scores], golden[scores], check_exact=False, rtol=0, atol=SCORE_TOLERANCE)


def test_table_rule_is_byte_identical_on_rerun(tiny_run: Path) -> None:
    first = (tiny_run / "results/table1.csv").read_bytes()
    result = snakemake(tiny_run, "results/table1.csv", "--forcerun", "table1", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tiny_run / "results/table1.csv").read_bytes() == first


def test_second_run_from_scratch_is_identical(tiny_run: Path, tmp_path: Path) -> None:
    workdir = workflow_copy(tmp_path / "again")
    outputs = [f"results/eval/lora/{task}.json" for task in ("medqa", "pubmedqa", "gsm8k", "mmlu", "mmlu_medical")]
    result = snakemake(workdir, *outputs, *TINY)
    assert result.returncode == 0, result.stderr[-5000:]
    for output in [*outputs, "results/train/lora/adapter_model.safetensors", "results/eval/samples.json"]:
        assert (workdir / output).read_bytes() == (tiny_run / output).read_bytes(), output


def test_failed_rule_leaves_no_output_and_rerun_continues(tiny_run: Path) -> None:
    table1 = tiny_run / "results/table1.csv"
    expected = table1.read_bytes()
    score = tiny_run / "results/eval/lora/medqa.json"
    good, times = score.read_bytes(), os.stat(score)
    adapter_time = os.stat(tiny_run / "results/train/lora/adapter_model.safetensors").st_mtime_ns

    score.write_text("{not json")  # newer than table1.csv: the table rule reruns and fails
    failed = snakemake(tiny_run, "results/table1.csv", *TINY)
    assert failed.returncode != 0
    assert "table1" in failed.stdout + failed.stderr
    assert not table1.exists(), "a failed job must not leave its output"
    assert not list(table1.parent.glob(".table1.csv*")), "no temporary file either"

    score.write_bytes(good)
    os.utime(score, ns=(times.st_atime_ns, times.st_mtime_ns))
    resumed = snakemake(tiny_run, "results/table1.csv", *TINY)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "rule table1:" in log and "rule train:" not in log and "rule eval:" not in log, log
    assert os.stat(tiny_run / "results/train/lora/adapter_model.safetensors").st_mtime_ns == adapter_time
    assert table1.read_bytes() == expected
