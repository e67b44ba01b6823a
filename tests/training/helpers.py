"""Shared by the resume and bad-input tests: one small run configuration, its command line, and checks."""

from __future__ import annotations

import csv
from pathlib import Path

from medmoelora.training.config import build_run_config
from tests.training.test_train import FAST, StopAfter

__all__ = ["FAST", "StopAfter"]

METHOD = "med_moe_lora"
MAX_STEPS = 6  # FAST saves every 3 steps: checkpoint-3, checkpoint-6
STOP = 4  # a run stopped here has checkpoint-3 and train_log rows 1-4


def run_config(*overrides: str):
    return build_run_config(METHOD, overrides=[*FAST, f"training.max_steps={MAX_STEPS}", *overrides])


def cli(model: Path, data: Path, out: Path, *arguments: str) -> list[str]:
    sets = [f"--set={item}" for item in [*FAST, f"training.max_steps={MAX_STEPS}"]]
    return [
        "train",
        "--model",
        str(model),
        "--data",
        str(data),
        "--method",
        METHOD,
        "--out",
        str(out),
        *sets,
        *arguments,
    ]


def log_rows(out: Path) -> list[dict[str, str]]:
    with (out / "train_log.csv").open() as handle:
        return list(csv.DictReader(handle))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime: equal snapshots mean nothing was written."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    return lines[0]


def checkpoints(out: Path) -> list[str]:
    return sorted(path.name for path in (out / "checkpoints").iterdir() if path.name != "runs")
