"""Routing statistics per layer and expert, and the collapse warning."""

from __future__ import annotations

import pytest
import torch

from medmoelora import AdapterConfig, inject_adapter, routing_stats, track_routing, warn_on_collapse
from tests.tiny import make_tiny_llama


def test_uniform_routers_give_equal_mean_gates_over_real_tokens_only(batch):
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset("med_moe_lora"))
    with torch.no_grad():
        for layer in adapted.adapter_layers().values():
            layer.router.weight.zero_()  # every token routed uniformly
    with track_routing(adapted), torch.no_grad():
        adapted(**batch)
        adapted(**batch)
    stats = routing_stats(adapted)
    real_tokens = int(batch["attention_mask"].sum()) * 2
    assert sorted(stats["layers"]) == list(range(6))
    for entry in stats["modules"].values():
        assert entry["tokens"] == real_tokens
        n = len(entry["mean_gate"])
        assert entry["mean_gate"] == pytest.approx([1 / n] * n)
        assert sum(entry["top1_share"]) == pytest.approx(1.0)
    assert stats["layers"][5]["num_experts"] == 8
    assert warn_on_collapse(stats) == []


def test_task_routing_statistics_follow_the_task_ids(batch):
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset("multi_lora"))
    with track_routing(adapted), torch.no_grad():
        adapted(**batch, task_ids=torch.tensor([2, 2, 2]))
    stats = routing_stats(adapted)
    assert stats["layers"][0]["mean_gate"] == pytest.approx([0, 0, 1, 0])
    assert warn_on_collapse(stats) == []  # one task per batch is not a collapse


def test_collapse_over_90_percent_warns():
    stats = {
        "modules": {
            "model.layers.3.mlp.up_proj": {"routing": "soft", "mean_gate": [0.95, 0.03, 0.02]},
            "model.layers.3.mlp.down_proj": {"routing": "soft", "mean_gate": [0.5, 0.3, 0.2]},
        }
    }
    with pytest.warns(RuntimeWarning, match=r"expert collapse .*mlp\.up_proj: expert 0 takes 95\.0%"):
        found = warn_on_collapse(stats)
    assert len(found) == 1
