"""The ``python -m medmoelora_eval.*`` entry points share medmoelora's error convention: a bad input is one
line ``error: ...`` on stderr and exit status 2, with no traceback and no output file."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import medmoelora_eval
from medmoelora import cli

# tasks_path runs inside `$(...)` before every lm_eval call and keeps to the standard library (medmoelora
# imports torch): it prints its one error line itself (tests/packaging).
STANDARD_LIBRARY_ONLY = {"tasks_path"}


def entry_points() -> list[str]:
    """Every medmoelora_eval module that runs as ``python -m`` and may import medmoelora."""
    found = []
    # subpackages too (mechanisms.ablation); the prefix makes walk_packages import them from medmoelora_eval
    for module in pkgutil.walk_packages(medmoelora_eval.__path__, prefix="medmoelora_eval."):
        name = module.name.removeprefix("medmoelora_eval.")
        if name in STANDARD_LIBRARY_ONLY or module.ispkg:
            continue
        source = Path(medmoelora_eval.__path__[0], *name.split(".")).with_suffix(".py")
        if 'if __name__ == "__main__":' in source.read_text(encoding="utf-8"):
            found.append(name)
    return found


def test_every_entry_point_and_the_cli_use_the_shared_convention() -> None:
    names = entry_points()
    expected = {"claims", "figures", "perf_layer", "perf_model", "perf_report", "precision", "report", "results"}
    expected |= {"stats", "tables", "mechanisms.ablation", "mechanisms.routing", "mechanisms.subspace"}
    assert expected <= set(names)
    for name in names:
        main = importlib.import_module(f"medmoelora_eval.{name}").main
        assert main.__wrapped__, name  # decorated by medmoelora.errors.command_main
    assert cli.main.__wrapped__


def no_tensors_of_tau(tmp: Path) -> Path:
    path = tmp / "adapter_model.safetensors"
    save_file({"layers.0.q_proj.experts.0.lora_A": np.zeros((2, 4), dtype=np.float32)}, str(path))
    return path


def model_dir(tmp: Path) -> Path:
    (tmp / "config.json").write_text("{}")
    return tmp


REPORT_ARGUMENTS = ["--claims", "c.csv", "--reported", "x.csv", "--runs", "lora", "--model", "m"]
# (module, arguments given tmp_path, what the error line must name)
CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("results", lambda t: ["samples", "--data", str(t), "--limits", "medqa=1", "--out", str(t / "o")], "no limit for"),
    ("results", lambda t: ["samples", "--data", str(t), "--limits", "medqa=abc", "--out", str(t / "o")], "'medqa=abc'"),
    ("results", lambda t: ["samples", "--data", str(t), "--limits", "medq=1", "--out", str(t / "o")], "'medqa'"),
    ("results", lambda t: ["split", str(t), "--run", "lora", "--out", str(t / "o")], "results_*.json"),
    ("tables", lambda t: ["main", "--rows", "base", "--eval-dir", str(t), "--out", str(t / "o")], "run 'base'"),
    ("tables", lambda t: ["cost", "--rows", "lora", "--train-dir", str(t), "--out", str(t / "o")], "seed0"),
    ("figures", lambda t: ["routing", str(t / "routing_stats.json"), "--out", str(t / "o")], "routing_stats.json"),
    ("figures", lambda t: ["temperature", str(no_tensors_of_tau(t)), "--out", str(t / "o")], "log_temperature"),
    ("report", lambda t: [*REPORT_ARGUMENTS, "--tables", str(t / "table1.csv"), "--out", str(t / "o")], "table1"),
    ("precision", lambda t: ["medqa=0"], "'medqa=0'"),
    (
        "perf_report",
        lambda t: ["--layer", str(t / "l.csv"), "--model", "m", "--lm-eval", "e", "--out", "o", "--figure", "f"],
        "l.csv",
    ),
    (
        "perf_model",
        lambda t: ["--model", str(t), "--out", str(t / "o"), "--lm-eval-out", str(t / "o")],
        "not a model directory",
    ),
    ("perf_model", lambda t: ["--model", str(model_dir(t))], "nothing to measure"),
    ("perf_dag", lambda t: [str(t), "--out", str(t / "o")], "no benchmark files"),
]


@pytest.mark.parametrize(("module", "arguments", "culprit"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_bad_input_is_one_line_and_exit_2(module, arguments, culprit, tmp_path, capsys) -> None:
    main = importlib.import_module(f"medmoelora_eval.{module}").main
    assert main(arguments(tmp_path)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_python_dash_m_exits_2_without_a_traceback(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "medmoelora_eval.results", "split", str(tmp_path), "--run", "x", "--out", "o"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: expected one lm_eval results_*.json") and "Traceback" not in result.stderr
