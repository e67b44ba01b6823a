"""The performance benchmarks compute what they claim: same function, right FLOPs, right verdicts."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from medmoelora import AdapterConfig, inject_adapter
from medmoelora.serialization import load_layer_tensors
from medmoelora_eval import perf_layer, perf_model, perf_report
from tests.tiny import TINY_LAYERS, make_tiny_llama

PER_RANK_TINY = 464  # sum of (d_in + d_out) over the 7 projections of the tiny Llama (tests/adapters/test_params.py)


def test_per_expert_loop_computes_the_same_mixture_as_the_fused_layer():
    torch.manual_seed(0)
    loop = perf_layer.PerExpertLoop(torch.nn.Linear(12, 10, bias=False), num_experts=4, rank=3, alpha=6.0)
    fused = perf_layer.build("fused", 12, 10, 4, 3)
    fused.base_layer.weight.data.copy_(loop.base_layer.weight)
    tensors = {"router.weight": loop.router.weight, "router.log_temperature": torch.tensor(0.0)}
    for i, (a, b) in enumerate(zip(loop.lora_A, loop.lora_B, strict=True)):
        torch.nn.init.normal_(b.weight)
        tensors[f"experts.{i}.lora_A"], tensors[f"experts.{i}.lora_B"] = a.weight, b.weight
    load_layer_tensors(fused, {k: v.detach() for k, v in tensors.items()})
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(fused(x), loop(x), rtol=1e-5, atol=1e-5)


def test_peft_reference_has_the_total_rank():
    layer = perf_layer.build("peft", 12, 10, num_experts=4, rank=3)
    assert layer.lora_A["default"].weight.shape == (12, 12)  # 4 experts x rank 3


def test_adapter_flops_follow_the_shapes():
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset("lora"))
    assert perf_model.adapter_flops_per_token(adapted) == 2 * 16 * PER_RANK_TINY * TINY_LAYERS
    base = make_tiny_llama()
    linear = sum(m.weight.numel() for m in base.modules() if isinstance(m, torch.nn.Linear))
    assert perf_model.linear_flops_per_token(base) == 2 * linear


def test_layer_benchmark_writes_paired_ratios(monkeypatch, tmp_path):
    monkeypatch.setattr(perf_layer, "SHAPES", ((16, 24),))
    monkeypatch.setattr(perf_layer, "NUM_EXPERTS", (1, 8))
    monkeypatch.setattr(perf_layer, "RANKS", (4,))
    monkeypatch.setattr(perf_layer, "TOKENS", 32)
    assert perf_layer.main(["--out", str(tmp_path / "layer.csv"), "--repeats", "2", "--warmup", "0"]) == 0
    table = pd.read_csv(tmp_path / "layer.csv")
    assert list(table.num_experts) == [1, 8]
    assert (table[["base_ms", "fused_ms", "loop_ms", "peft_ms", "loop_over_fused"]] > 0).all().all()


@pytest.mark.parametrize(("train_ratio", "met"), [(1.2, True), (1.4, False)])
def test_report_checks_each_target(train_ratio, met):
    layer = pd.DataFrame({"num_experts": [8, 8], "loop_over_fused": [2.5, 3.0], "adapter_loop_over_fused": [4, 5]})
    model = pd.DataFrame(
        {
            "method": ["lora", "med_moe_lora"],
            "train_step_over_lora": [1.0, train_ratio],
            "eval_throughput_over_base": [0.95, 0.9],
            "measured_over_predicted": [1.1, 1.2],
        }
    )
    targets = perf_report.summarize(layer, model).set_index("target")
    assert targets.loc["fused layer vs per-expert loop at N = 8 (speed-up)", "measured"] == 2.75
    assert bool(targets.loc["med_moe_lora training step / lora's", "met"]) is met
    assert targets["met"].sum() == 4 + met
