"""The workflow without running it: lint, snakefmt, dry runs of every shipped config and the SLURM profile, config
validation, and the one-line error for a missing raw-data directory. Seconds each."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.workflow.helpers import REPO, SNAKEMAKE, snakemake, workflow_copy

CONFIGS = ("config/config.yaml", "config/tiny.yaml", "config/paper.yaml")
# Trained runs per config: 4 methods + 5 ablations, + the 2 parameter-matched baselines outside tiny.yaml.
TRAINED_RUNS = {"config/config.yaml": 11, "config/tiny.yaml": 9, "config/paper.yaml": 11}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return workflow_copy(tmp_path_factory.mktemp("workflow"))


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty stand-in: dry runs only check that the directory exists."""
    return tmp_path_factory.mktemp("raw")


@pytest.mark.parametrize("configfile", CONFIGS)
def test_lint_is_clean(workdir: Path, raw_dir: Path, configfile: str) -> None:
    result = snakemake(workdir, "--lint", "--configfile", configfile, raw_data=raw_dir)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Lints for" not in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("configfile", CONFIGS)
def test_dry_run_plans_every_output(workdir: Path, raw_dir: Path, configfile: str) -> None:
    result = snakemake(workdir, "-n", "--cores", "8", "all", "--configfile", configfile, raw_data=raw_dir)
    assert result.returncode == 0, result.stderr + result.stdout
    for rule in ("prepare_data", "materialize_model", "train", "eval", "table1", "table5", "report"):
        assert f"rule {rule}:" in result.stdout, rule
    # The trained runs + the base model, each evaluated once on every task.
    runs = TRAINED_RUNS[configfile]
    assert re.search(rf"^train\s+{runs}$", result.stdout, re.M), result.stdout
    assert re.search(rf"^eval\s+{runs + 1}$", result.stdout, re.M), result.stdout


def test_paper_config_trains_with_accelerate_on_gpus(workdir: Path, raw_dir: Path) -> None:
    result = snakemake(workdir, "-n", "-p", "results/train/med_moe_lora/train_metrics.json", "--configfile", CONFIGS[2])
    assert result.returncode == 0, result.stderr
    assert "accelerate launch --multi_gpu --num_processes 4 -m medmoelora.cli train" in result.stdout
    assert "gpu=4" in result.stdout


def test_slurm_profile_dry_run(workdir: Path, raw_dir: Path) -> None:
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install snakemake-executor-plugin-slurm")
    result = snakemake(workdir, "--profile", "workflow/profiles/slurm", "-n", "results/table1.csv", raw_data=raw_dir)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "rule table1:" in result.stdout


def test_missing_raw_data_fails_in_one_line(workdir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    result = snakemake(workdir, "-n", "results/table1.csv", "--config", f"raw_data_dir={missing}", raw_data=None)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "raw_data_dir" in lines[0] and "MEDMOE_RAW_DATA" in lines[0] and str(missing) in lines[0]


def test_invalid_config_is_rejected(workdir: Path, raw_dir: Path) -> None:
    result = snakemake(
        workdir, "-n", "results/table1.csv", "--config", "runs={'x': {'method': 'lora2'}}", raw_data=raw_dir
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "runs.x.method" in output and "lora2" in output, output


def test_perf_target_runs_both_benchmarks_and_the_report(workdir: Path, raw_dir: Path) -> None:
    result = snakemake(workdir, "-n", "-p", "--cores", "8", "results/perf.csv", raw_data=raw_dir)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "python -m medmoelora_eval.perf_layer --out results/perf/layer.csv" in result.stdout
    assert "python -m medmoelora_eval.perf_model --model resources/models/smollm2-135m" in result.stdout
    assert "--figure results/figures/perf.png" in result.stdout


def test_snakefmt_check_is_clean() -> None:
    """The Snakefile and rules are formatted by snakefmt (settings: pyproject.toml), as the Snakemake
    workflow catalog requires beside --lint."""
    snakefmt = SNAKEMAKE.with_name("snakefmt")
    env = dict(os.environ, PATH=f"{SNAKEMAKE.parent}{os.pathsep}{os.environ.get('PATH', '')}")  # its shfmt
    result = subprocess.run(
        [str(snakefmt), "--check", "Snakefile", "workflow"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr + result.stdout
