"""The workflow without running it: lint, snakefmt, dry runs of every shipped config and the SLURM profile, config
validation, and the one-line error for a missing raw-data directory. Seconds each."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.workflow.helpers import REPO, SNAKEMAKE, snakemake, workflow_copy

CONFIGS = ("config/config.yaml", "config/tiny.yaml", "config/paper.yaml", "config/gpu.yaml")


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
    for rule in ("prepare_data", "materialize_model", "train", "eval", "table1", "table5", "claims", "report"):
        assert f"rule {rule}:" in result.stdout, rule
    # every trained run once per seed, the base model once
    config = yaml.safe_load((workdir / configfile).read_text(encoding="utf-8"))
    trained = len(config["runs"]) * len(config["seeds"])
    assert re.search(rf"^train\s+{trained}$", result.stdout, re.M), result.stdout
    assert re.search(rf"^eval\s+{trained + 1}$", result.stdout, re.M), result.stdout


def test_make_perf_plans_table1_before_and_after_on_its_fixed_config(workdir: Path, raw_dir: Path) -> None:
    result = snakemake(workdir, "-n", "-p", "--cores", "2", "results/perf.csv", raw_data=raw_dir)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "rule perf_table1:" in result.stdout
    assert "perf_table1 --before 3abc728 --after HEAD --config config/perf_table1.yaml --cores 2" in result.stdout
    assert "--table1-wall results/perf/table1_wall.csv" in result.stdout
    # the fixed config's table 1: its three runs (config.yaml's other runs are defined but not trained)
    table1 = snakemake(workdir, "-n", "results/table1.csv", "--configfile", "config/perf_table1.yaml", raw_data=raw_dir)
    assert table1.returncode == 0, table1.stderr + table1.stdout
    assert re.search(r"^train\s+3$", table1.stdout, re.M) and re.search(r"^eval\s+4$", table1.stdout, re.M)


def test_paper_config_trains_with_accelerate_on_gpus(workdir: Path, raw_dir: Path) -> None:
    result = snakemake(
        workdir, "-n", "-p", "results/train/med_moe_lora/seed0/train_metrics.json", "--configfile", CONFIGS[2]
    )
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


def test_every_run_is_trained_and_evaluated_per_seed(workdir: Path, raw_dir: Path, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.yaml"
    seeds.write_text("seeds: [0, 1]\n", encoding="utf-8")
    args = ("-n", "-p", "--cores", "8", "all", "--configfile", "config/tiny.yaml", str(seeds))
    result = snakemake(workdir, *args, raw_data=raw_dir)
    assert result.returncode == 0, result.stderr + result.stdout
    assert re.search(r"^train\s+18$", result.stdout, re.M) and re.search(r"^eval\s+19$", result.stdout, re.M)
    out = result.stdout
    assert "--out results/train/tau_2/seed1 " in out and "training.seed=1 " in out
    assert "adapter=results/train/tau_2/seed1 " in out and "--run tau_2/seed1 --out results/eval/tau_2/seed1" in out
    assert "--model hf --model_args pretrained=resources/models/tiny" in out  # the base model: once, unseeded
    assert "--run base --out results/eval/base " in out and "results/eval/base/seed" not in out
    assert (
        "medmoelora_eval.tables main --rows base=base lora=lora" in out
        and "--seeds 0 1 --out results/table1.csv" in out
    )
    claims = next(line for line in out.splitlines() if "medmoelora_eval.claims" in line)
    assert "--seeds 0 1" in claims and "results/train/med_moe_lora/seed1/routing_stats.json" in claims
    assert "tau_learnable=med_moe_lora" in claims and "base=base" in claims
    assert "--learned-tau results/train/med_moe_lora/seed0/adapter_model.safetensors" in claims


def test_claim_roles_map_to_configured_runs(workdir: Path, raw_dir: Path, tmp_path: Path) -> None:
    mapped = tmp_path / "claims.yaml"
    mapped.write_text("claims:\n  runs: {lora: uniform_moe}\n", encoding="utf-8")
    result = snakemake(workdir, "-n", "-p", "results/claims.csv", "--configfile", "config/tiny.yaml", str(mapped))
    assert result.returncode == 0, result.stderr + result.stdout
    claims = next(line for line in result.stdout.splitlines() if "medmoelora_eval.claims" in line)
    assert " lora=uniform_moe " in claims and " multi_lora=multi_lora " in claims
    assert "--margins accuracy=1.0 " in claims  # config/tiny.yaml's margins


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("claims:\n  runs: {loar: lora}\n", "config claims.runs: unknown role 'loar'"),
        ("claims:\n  margins: {accuracy: 0}\n", "claims.margins.accuracy"),
        ("claims:\n  runs: {lora: nothing}\n", "config claims.runs names run 'nothing'"),
        ("training:\n  seed: 3\n", "config training.seed: the training seed comes from the top-level `seeds:` list"),
    ],
)
def test_bad_claims_and_seed_settings_fail_in_one_line(
    workdir: Path, raw_dir: Path, tmp_path: Path, extra, message
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(extra, encoding="utf-8")
    result = snakemake(workdir, "-n", "all", "--configfile", "config/tiny.yaml", str(bad), raw_data=raw_dir)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_gpu_profile_trains_and_evaluates_on_one_gpu(workdir: Path, raw_dir: Path) -> None:
    command = (
        (config := (workdir / CONFIGS[3]).read_text(encoding="utf-8")).split("#   snakemake ", 1)[1].split("\n")[0]
    )
    assert command == "--cores 16 all --resources gpu=1 --configfile config/gpu.yaml", command  # as the config says
    result = snakemake(workdir, "-n", "-p", *command.split(), raw_data=raw_dir)
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "materialize-model Qwen/Qwen2.5-1.5B-Instruct --out resources/models/qwen2.5-1.5b-instruct" in out
    assert "medmoelora train --model resources/models/qwen2.5-1.5b-instruct" in out  # one process, no accelerate
    assert "gpu=1" in out and "--batch_size auto" in out and "dtype=bfloat16" in out
    assert "--seeds 0 1 2" in out and "seeds: [0, 1, 2]" in config
    # every test document: the default config's mmlu_medical limit must not leak into the merged config
    assert "--limits medqa=None pubmedqa=None gsm8k=None mmlu=None mmlu_medical=None general_lm=None" in out
