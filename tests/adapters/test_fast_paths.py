"""The evaluation fast paths: merging a token-independent update into W0, the cached fused weights, and
the router's rows in A's GEMM, each against the plain computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medmoelora import AdapterConfig, inject_adapter
from medmoelora.errors import UserError
from medmoelora.layer import MoELoRALinear, RoutingContext
from tests.adapters.test_layer import ALPHAS, BATCH, D_IN, LENGTH, RANKS, build, naive_mixture
from tests.tiny import make_tiny_llama, randomize_adapter

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


# ---- merge / unmerge: one layer -------------------------------------------------------------------------
@pytest.mark.parametrize(("routing", "expert"), [("none", 0), ("task", 0), ("task", 2)])
def test_merged_layer_equals_the_unmerged_path_and_unmerge_restores_w0_bit_for_bit(routing, expert):
    torch.manual_seed(0)
    ranks, alphas = (RANKS, ALPHAS) if routing == "task" else ([4], [8.0])
    context = RoutingContext(task_ids=torch.tensor([expert]))
    layer = MoELoRALinear(nn.Linear(D_IN, 10), ranks, alphas, context, routing=routing)
    for parameter in layer.adapter_params().values():
        nn.init.normal_(parameter)
    x = torch.randn(BATCH, LENGTH, D_IN)
    original = layer.base_layer.weight.detach().clone()
    unmerged = layer(x)
    layer.merge(expert)
    assert not torch.equal(layer.base_layer.weight, original)  # the update really is in W0 now
    torch.testing.assert_close(layer(x), unmerged, **TOLERANCE)
    layer.unmerge()
    assert torch.equal(layer.base_layer.weight, original) and layer.merged_expert is None
    assert torch.equal(layer(x), unmerged)


def test_merge_into_a_bf16_base_rounds_once_and_restores_exactly():
    torch.manual_seed(0)
    layer = MoELoRALinear(nn.Linear(D_IN, 10).to(torch.bfloat16), [4], [8.0], RoutingContext(), routing="none")
    nn.init.normal_(layer.lora_B)
    x = torch.randn(BATCH, LENGTH, D_IN, dtype=torch.bfloat16)
    original = layer.base_layer.weight.detach().clone()
    unmerged = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), unmerged, rtol=2e-2, atol=5e-2)  # bf16 W0: one rounding of W0 + sBA
    layer.unmerge()
    assert torch.equal(layer.base_layer.weight, original)


def test_soft_routing_cannot_be_merged():
    layer, _, _, _ = build("soft")
    with pytest.raises(UserError, match="cannot be merged"):
        layer.merge()


# ---- merged(): the whole model --------------------------------------------------------------------------
def _adapted(preset: str):
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset(preset))
    randomize_adapter(adapted, scale=0.2)
    return adapted.eval()


def _weights(adapted) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in adapted.model.state_dict().items()}


def test_merged_lora_model_gives_the_unmerged_logits_and_restores_every_weight(batch):
    adapted = _adapted("lora")
    before = _weights(adapted)
    with torch.no_grad():
        unmerged = adapted(**batch).logits
        with adapted.merged():
            merged = adapted(**batch).logits
    torch.testing.assert_close(merged, unmerged, **TOLERANCE)
    after = adapted.model.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())


def test_merged_multi_lora_expert_equals_routing_every_sequence_to_it(batch):
    adapted = _adapted("multi_lora")
    before = _weights(adapted)
    for expert in range(len(adapted.adapter_config.task_names)):
        with torch.no_grad():
            routed = adapted(**batch, task_ids=torch.full((3,), expert)).logits
            with adapted.merged(expert):
                merged = adapted(**batch).logits  # no task ids needed: the expert is in the weights
        torch.testing.assert_close(merged, routed, **TOLERANCE)
    after = adapted.model.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())


def test_merged_restores_the_weights_when_the_block_raises(batch):
    adapted = _adapted("lora")
    before = _weights(adapted)
    with pytest.raises(RuntimeError, match="inside"), adapted.merged():
        raise RuntimeError("inside")
    after = adapted.model.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())


@pytest.mark.parametrize(
    ("preset", "expert", "message"),
    [
        ("med_moe_lora", None, "only 'none' and 'task' routing can be merged"),
        ("multi_lora", None, r"merges one expert at a time"),
        ("lora", 1, r"one expert \(0\), got expert=1"),
    ],
)
def test_merged_refuses_what_it_cannot_merge(preset, expert, message):
    adapted = _adapted(preset)
    with pytest.raises(UserError, match=message), adapted.merged(expert):
        pass


def test_disable_adapters_inside_merged_fails_instead_of_running_the_merged_weights():
    adapted = _adapted("lora")
    with adapted.merged(), pytest.raises(UserError, match="merged into the base weights"), adapted.disable_adapters():
        pass


# ---- the cached fused weights and the router in A's GEMM ------------------------------------------------
@pytest.mark.parametrize(("top_k", "num_base_experts"), [(None, 0), (None, 1), (2, 1)])
def test_evaluation_without_grad_equals_the_naive_loop(top_k, num_base_experts):
    layer, _, experts, tensors = build("soft", top_k=top_k, num_base_experts=num_base_experts)
    x = torch.randn(BATCH, LENGTH, D_IN)
    expected = naive_mixture(
        x, layer.base_layer.weight, layer.base_layer.bias, experts, tensors["router.weight"], 0.7, "soft", top_k
    )
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, **TOLERANCE)
        torch.testing.assert_close(layer(x), expected, **TOLERANCE)  # second forward: from the cache


def test_cached_weights_are_reused_and_rebuilt_after_a_parameter_changes():
    layer, _, _, _ = build("soft", num_base_experts=1)
    layer.cache_weights = True  # what MoELoRAModel.cache_fused_weights sets
    x = torch.randn(BATCH, LENGTH, D_IN)
    with torch.no_grad():
        first = layer.forward_weights()
        assert layer.forward_weights()[0] is first[0]  # built once
        layer.lora_B.mul_(2.0)  # what an optimizer step or load_state_dict does: in place
        rebuilt = layer.forward_weights()
        assert rebuilt[1] is not first[1]
        cached_output = layer(x)
    torch.testing.assert_close(cached_output, layer(x), rtol=0, atol=0)  # with grad: concatenated afresh


def test_without_the_cache_no_grad_forwards_see_every_fused_optimizer_step():
    # A fused AdamW step (transformers' default optimizer) updates in place without advancing the version
    # counters: a cache keyed by them served the first no-grad forward's weights to the held-out losses,
    # the general probe and the routing statistics of every later step of a training run.
    layer, _, _, _ = build("soft", num_base_experts=1)
    x = torch.randn(BATCH, LENGTH, D_IN)
    optimizer = torch.optim.AdamW(layer.adapter_params().values(), lr=0.1, fused=True)
    with torch.no_grad():
        layer(x)  # e.g. the held-out loss at the start
    for _ in range(2):
        versions = [p._version for p in layer.adapter_params().values()]
        layer(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        assert [p._version for p in layer.adapter_params().values()] == versions  # the trap this guards
        with torch.no_grad():
            after_step = layer(x)
        torch.testing.assert_close(after_step, layer(x).detach(), rtol=0, atol=0)  # = the concatenated afresh


def test_cache_fused_weights_turns_the_cache_on_for_every_layer_and_off_again():
    adapted = _adapted("med_moe_lora")
    batch = {"input_ids": torch.randint(0, 100, (2, 6))}
    with torch.no_grad():
        plain = adapted(**batch).logits
        adapted.cache_fused_weights()
        layers = list(adapted.adapter_layers().values())
        assert all(layer.cache_weights for layer in layers)
        torch.testing.assert_close(adapted(**batch).logits, plain, rtol=0, atol=0)
        assert all(layer._weight_cache is not None for layer in layers)
        adapted.cache_fused_weights(False)
        assert not any(layer.cache_weights or layer._weight_cache is not None for layer in layers)


def test_router_shares_a_gemm_only_where_it_sees_the_same_input():
    def router_rows(dropout: float, dtype: torch.dtype = torch.float32) -> int:
        base = nn.Linear(D_IN, 10).to(dtype)
        layer = MoELoRALinear(base, RANKS, ALPHAS, RoutingContext(), dropout=dropout, adapter_dtype=dtype)
        with torch.no_grad():
            return layer.forward_weights()[0].shape[0] - sum(RANKS)

    assert router_rows(0.0) == len(RANKS)  # A and W_g in one GEMM
    assert router_rows(0.1) == 0  # dropout on A's input only: the router needs the clean x
    assert router_rows(0.0, torch.float64) == 0  # router in fp32, experts in fp64


# ---- top-k: tokens grouped by expert ----------------------------------------------------------------------
@pytest.mark.parametrize(("top_k", "num_base_experts"), [(1, 0), (2, 0), (2, 1)])
def test_grouped_top_k_equals_the_naive_loop_and_the_dense_path_gradients(top_k, num_base_experts):
    layer, _, experts, tensors = build("soft", top_k=top_k, num_base_experts=num_base_experts)
    x = torch.randn(BATCH, LENGTH, D_IN, requires_grad=True)
    expected = naive_mixture(
        x, layer.base_layer.weight, layer.base_layer.bias, experts, tensors["router.weight"], 0.7, "soft", top_k
    )
    layer.use_grouped_top_k(False)
    dense = layer(x)
    dense_grads = torch.autograd.grad(dense.square().sum(), [x, *layer.adapter_params().values()], allow_unused=True)
    layer.use_grouped_top_k(True)
    assert not layer.router_in_a_gemm
    grouped = layer(x)
    torch.testing.assert_close(grouped, expected, **TOLERANCE)
    grouped_grads = torch.autograd.grad(
        grouped.square().sum(), [x, *layer.adapter_params().values()], allow_unused=True
    )
    scale = max(float(grad.abs().max()) for grad in dense_grads if grad is not None)
    for name, want, got in zip(["x", *layer.adapter_params()], dense_grads, grouped_grads, strict=True):
        if want is None:  # a fixed temperature
            assert got is None, name
            continue
        # Gradients reach 1e3 (a squared-output loss); top-1's router gradient is 0 up to rounding.
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * scale, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, **TOLERANCE)


def test_grouped_path_needs_top_k():
    layer, _, _, _ = build("soft")
    with pytest.raises(UserError, match="has no top_k"):
        layer.use_grouped_top_k(True)


@pytest.mark.parametrize(
    ("num_experts", "top_k", "rank", "grouped"),
    [
        (8, 1, 32, True),  # 224 skipped slots: grouped measured 1.32x faster
        (16, 2, 32, True),  # 448: 1.42x
        (8, 2, 32, True),  # 192: 1.10x [1.05, 1.27] and 1.12x [1.05, 1.14] in the last two runs
        (16, 1, 8, False),  # 120: 1.01x, then 1.05x [1.02, 1.09] in one run
        (4, 1, 32, False),  # 96: 1.01x
    ],
)
def test_top_k_takes_the_path_measured_faster_for_its_shape(num_experts, top_k, rank, grouped):
    def layer(top_k: int | None = top_k) -> MoELoRALinear:
        ranks, alphas = [rank] * num_experts, [2.0 * rank] * num_experts
        return MoELoRALinear(nn.Linear(D_IN, 12), ranks, alphas, RoutingContext(), top_k=top_k)

    chosen = layer()
    assert chosen.grouped_top_k is grouped
    assert chosen.router_in_a_gemm is not grouped  # the router joins A's GEMM on the dense path only
    assert layer().to("meta").grouped_top_k is False  # moved off the CPU: chosen again, dense where unmeasured
    by_hand = layer()
    by_hand.use_grouped_top_k(not grouped)
    assert by_hand.to(torch.float64).grouped_top_k is (not grouped)  # kept through a move
    assert layer(top_k=None).grouped_top_k is False  # soft routing without top-k: nothing to group
