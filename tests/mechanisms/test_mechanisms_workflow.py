"""The mechanisms target in a dry run: the ablated evaluations per seed and the analyses' command lines."""

from __future__ import annotations

import re

import pytest

from tests.workflow.helpers import snakemake, workflow_copy


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    workdir = workflow_copy(tmp_path_factory.mktemp("workflow"))
    raw = tmp_path_factory.mktemp("raw")  # dry runs only check that it exists
    (workdir / "seeds.yaml").write_text("seeds: [0, 1]\n", encoding="utf-8")
    args = ("-n", "-p", "--cores", "8", "all", "--configfile", "config/tiny.yaml", "seeds.yaml")
    result = snakemake(workdir, *args, raw_data=raw)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def test_all_evaluates_each_seed_without_base_experts_and_without_specialists(dry_run: str) -> None:
    assert re.search(r"^eval_ablation\s+4$", dry_run, re.M)  # 2 ablations x 2 seeds
    adapter = "adapter=results/train/med_moe_lora/seed1,disable_experts=base "
    assert adapter in dry_run and "--samples results/eval/samples.json" in dry_run
    assert "--run without_specialists --out results/mechanisms/eval/without_specialists/seed1" in dry_run


def test_the_analyses_read_every_seed(dry_run: str) -> None:
    ablation = next(line for line in dry_run.splitlines() if "medmoelora_eval.mechanisms.ablation" in line)
    assert "--all-experts results/eval/med_moe_lora " in ablation and "--seeds 0 1 " in ablation
    routing = next(line for line in dry_run.splitlines() if "medmoelora_eval.mechanisms.routing" in line)
    assert "asymmetric=results/train/med_moe_lora/seed1/routing_stats.json" in routing
    assert "inverted=results/train/alloc_inverted/seed0/routing_stats.json" in routing
    subspace = next(line for line in dry_run.splitlines() if "medmoelora_eval.mechanisms.subspace" in line)
    assert "results/train/med_moe_lora/seed0 results/train/med_moe_lora/seed1 --out" in subspace
    report = next(line for line in dry_run.splitlines() if "medmoelora_eval.report" in line)
    assert "--mechanisms results/mechanisms" in report
