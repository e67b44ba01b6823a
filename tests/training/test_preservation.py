"""Knowledge preservation on the tiny model: general tokens go to the base experts, medical ones do not."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from medmoelora.routing_stats import base_expert_share
from medmoelora.training.config import build_run_config
from medmoelora.training.run import train
from tests.training.test_train import FAST

STEPS = 12  # fixed seed: a few steps of the FAST setting (lr 0.01, one batch of the fixture data)
MARGIN = 0.02  # general share minus medical share, in every layer, projection kind and expert count


@pytest.fixture(scope="module")
def preserved_run(tiny_model_dir, prepared_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("preserved")
    train(
        tiny_model_dir,
        prepared_data_dir,
        out,
        build_run_config("med_moe_lora", overrides=[*FAST, f"training.max_steps={STEPS}"]),
    )
    return out


def test_general_tokens_route_more_to_the_base_experts_than_medical_tokens_in_every_layer_type(preserved_run):
    stats = json.loads((preserved_run / "routing_stats.json").read_text())
    assert set(stats["by_domain"]) == {"general", "medical"}
    share = stats["base_expert_share"]
    assert set(share["num_experts"]) == {"2", "8"}  # both layer types of the asymmetric schedule
    assert set(share["kinds"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    for grouping in ("layers", "kinds", "num_experts"):
        for key, entry in share[grouping].items():
            assert entry["general"] > entry["medical"] + MARGIN, (grouping, key, entry)


def test_the_learnable_temperature_moves(preserved_run, tiny_model_dir, prepared_data_dir, tmp_path):
    learned = load_file(preserved_run / "adapter_model.safetensors")
    log_temperatures = [value for name, value in learned.items() if name.endswith("log_temperature")]
    assert log_temperatures and all(float(value) != 0.0 for value in log_temperatures)  # tau = 1 at the start
    overrides = [*FAST, "training.max_steps=2", "adapter.learn_temperature=false"]
    train(tiny_model_dir, prepared_data_dir, tmp_path, build_run_config("med_moe_lora", overrides=overrides))
    fixed = load_file(tmp_path / "adapter_model.safetensors")
    assert all(float(value) == 0.0 for name, value in fixed.items() if name.endswith("log_temperature"))


def test_base_expert_share_sums_the_base_experts_gates_and_averages_over_modules():
    def module(layer, gates, base_experts=1):
        return {"layer": layer, "mean_gate": gates, "base_experts": base_experts}

    by_domain = {
        "general": {
            "modules": {
                "model.layers.0.self_attn.q_proj": module(0, [0.7, 0.3]),
                "model.layers.0.mlp.down_proj": module(0, [0.5, 0.5]),
                "model.layers.1.self_attn.q_proj": module(1, [0.2, 0.1, 0.3, 0.4], base_experts=2),
            }
        },
        "medical": {
            "modules": {
                "model.layers.0.self_attn.q_proj": module(0, [0.1, 0.9]),
                "model.layers.0.mlp.down_proj": module(0, [0.3, 0.7]),
                "model.layers.1.self_attn.q_proj": module(1, [0.1, 0.1, 0.4, 0.4], base_experts=2),
            }
        },
    }
    share = base_expert_share(by_domain)
    assert share["modules"]["model.layers.1.self_attn.q_proj"]["general"] == pytest.approx(0.3)  # two base experts
    assert share["layers"][0] == pytest.approx({"general": 0.6, "medical": 0.2})
    assert share["kinds"]["q_proj"] == pytest.approx({"general": 0.5, "medical": 0.15})
    assert share["num_experts"][4] == pytest.approx({"general": 0.3, "medical": 0.2})
    no_base = {"general": {"modules": {"model.layers.0.mlp.up_proj": module(0, [0.5, 0.5], base_experts=0)}}}
    assert base_expert_share(no_base)["modules"] == {}
