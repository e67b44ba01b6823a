"""The parameter-matched baselines of the shipped configs train within 5% of Med-MoE-LoRA's parameters,
on each config's own architecture (SmolLM2-135M for the default, Llama-3-8B for the paper's), and at the
rank the parameter accounting gives (`medmoelora count-params --match`), not one chosen by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medmoelora.config import AdapterConfig
from medmoelora.params import architecture, count_parameters, match_rank
from medmoelora.training.config import build_run_config

REPO = Path(__file__).resolve().parents[2]
# config file -> the architecture its model has (count-params builds it on the meta device)
CONFIGS = {"config/config.yaml": "smollm2-135m", "config/paper.yaml": "llama3-8b"}
MATCHED = {"lora_matched": "lora", "uniform_moe_matched": "uniform_moe"}
TOLERANCE = 0.05


def run_adapter(config: dict, run: str) -> AdapterConfig:
    """The adapter config the workflow trains for ``run``: preset, then config `adapter:`, then the run's."""
    spec = config["runs"][run]
    adapter = {**(config.get("adapter") or {}), **spec.get("adapter", {})}
    return build_run_config(spec["method"], {"adapter": adapter}).adapter


@pytest.mark.parametrize("configfile", CONFIGS)
def test_matched_runs_are_within_5_percent_of_med_moe_lora(configfile: str) -> None:
    config = yaml.safe_load((REPO / configfile).read_text(encoding="utf-8"))
    model_config = architecture(CONFIGS[configfile])
    target = count_parameters(run_adapter(config, "med_moe_lora"), model_config).trainable
    for run, method in MATCHED.items():
        adapter = run_adapter(config, run)
        assert adapter.method == method
        trainable = count_parameters(adapter, model_config).trainable
        assert abs(trainable / target - 1) <= TOLERANCE, (configfile, run, trainable, target)
        unmatched = count_parameters(run_adapter(config, method), model_config).trainable
        assert trainable > 1.4 * unmatched  # the plain baseline is much smaller: matching changed something
        preset = AdapterConfig.from_preset(method)
        assert adapter.ranks == (match_rank(preset, target, model_config).rank,), run
        assert run in config["tables"]["main"]
