"""MoELoRALinear: the fused layer against a naive per-expert loop written from the formula."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medmoelora.layer import MoELoRALinear, RoutingContext
from medmoelora.serialization import load_layer_tensors

D_IN, D_OUT = 12, 10
RANKS = [2, 4, 3, 5]  # heterogeneous on purpose
ALPHAS = [4.0, 3.0, 6.0, 10.0]
BATCH, LENGTH = 3, 7


def naive_mixture(x, w0, bias, experts, router_weight, tau, routing, top_k=None, task_ids=None):
    """h = W0 x + sum_i g_i(x) * (alpha_i / r_i) * B_i A_i x, one expert at a time (docs/adapter-format.md)."""
    out = x @ w0.T + bias
    if routing == "soft":
        gates = torch.softmax((x @ router_weight.T) / tau, dim=-1)  # (B, T, N)
        if top_k is not None:
            kth = gates.topk(top_k, dim=-1).values[..., -1:]
            gates = torch.where(gates >= kth, gates, torch.zeros_like(gates))
            gates = gates / gates.sum(-1, keepdim=True)
    else:
        gates = torch.nn.functional.one_hot(task_ids, len(experts)).float()[:, None, :].expand(BATCH, LENGTH, -1)
    for i, (a, b, alpha) in enumerate(experts):
        rank = a.shape[0]
        out = out + gates[..., i : i + 1] * (alpha / rank) * (x @ a.T @ b.T)
    return out


def build(routing, top_k=None, num_base_experts=0, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(D_IN, D_OUT)
    context = RoutingContext()
    layer = MoELoRALinear(
        base,
        RANKS,
        ALPHAS,
        context,
        routing=routing,
        top_k=top_k,
        temperature=0.7,
        learn_temperature=True,
        num_base_experts=num_base_experts,
    )
    experts = [(torch.randn(r, D_IN), torch.randn(D_OUT, r), alpha) for r, alpha in zip(RANKS, ALPHAS, strict=True)]
    tensors = {}
    for i, (a, b, _) in enumerate(experts):
        tensors[f"experts.{i}.lora_A"], tensors[f"experts.{i}.lora_B"] = a, b
    if routing == "soft":
        tensors["router.weight"] = torch.randn(len(RANKS), D_IN)
        tensors["router.log_temperature"] = torch.tensor(math.log(0.7))
    load_layer_tensors(layer, tensors)
    return layer, context, experts, tensors


@pytest.mark.parametrize(("top_k", "num_base_experts"), [(None, 0), (None, 1), (2, 0), (1, 2)])
def test_soft_and_top_k_routing_equal_the_naive_loop(top_k, num_base_experts):
    layer, _, experts, tensors = build("soft", top_k=top_k, num_base_experts=num_base_experts)
    x = torch.randn(BATCH, LENGTH, D_IN)
    expected = naive_mixture(
        x, layer.base_layer.weight, layer.base_layer.bias, experts, tensors["router.weight"], 0.7, "soft", top_k
    )
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_task_routing_equals_the_naive_loop():
    layer, context, experts, _ = build("task")
    x = torch.randn(BATCH, LENGTH, D_IN)
    context.task_ids = torch.tensor([2, 0, 3])
    expected = naive_mixture(
        x, layer.base_layer.weight, layer.base_layer.bias, experts, None, None, "task", task_ids=context.task_ids
    )
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_task_routing_without_task_ids_fails_clearly():
    layer, _, _, _ = build("task")
    with pytest.raises(ValueError, match="no task ids"):
        layer(torch.randn(BATCH, LENGTH, D_IN))


def test_zero_initialised_layer_is_exactly_the_base_layer():
    torch.manual_seed(0)
    base = nn.Linear(D_IN, D_OUT)
    layer = MoELoRALinear(base, RANKS, ALPHAS, RoutingContext(), routing="soft", num_base_experts=1)
    x = torch.randn(BATCH, LENGTH, D_IN)
    assert torch.equal(layer(x), base(x))


def test_gradients_reach_every_expert_the_router_and_the_temperature():
    layer, _, _, _ = build("soft", num_base_experts=1)
    layer(torch.randn(BATCH, LENGTH, D_IN)).square().sum().backward()
    for name, parameter in layer.adapter_params().items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert layer.base_layer.weight.grad is not None  # the test built it trainable; injection freezes it


def test_router_runs_in_fp32_in_a_bf16_model():
    torch.manual_seed(0)
    base = nn.Linear(D_IN, D_OUT).to(torch.bfloat16)
    layer = MoELoRALinear(base, RANKS, ALPHAS, RoutingContext(), routing="soft")
    x = torch.randn(BATCH, LENGTH, D_IN, dtype=torch.bfloat16)
    assert layer.router.weight.dtype == torch.float32
    assert layer.router_probs(x).dtype == torch.float32
    assert layer(x).dtype == torch.bfloat16


@pytest.mark.parametrize("routing", ["soft", "task"])
def test_input_gradient_equals_the_naive_loops(routing):
    """The update is added into W0 x in place: autograd must still give the input both paths' gradient."""
    layer, context, experts, tensors = build(routing, num_base_experts=1 if routing == "soft" else 0)
    context.task_ids = torch.tensor([2, 0, 3])
    x = torch.randn(BATCH, LENGTH, D_IN, requires_grad=True)
    upstream = torch.randn(BATCH, LENGTH, D_OUT)
    (layer(x) * upstream).sum().backward()
    fused_grad, x.grad = x.grad, None
    router = tensors.get("router.weight")
    w0, bias = layer.base_layer.weight.detach(), layer.base_layer.bias.detach()
    (naive_mixture(x, w0, bias, experts, router, 0.7, routing, task_ids=context.task_ids) * upstream).sum().backward()
    torch.testing.assert_close(fused_grad, x.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("routing", ["none", "soft", "task"])
def test_update_is_written_into_the_base_layers_output(routing):
    """No second (B, T, d_out) output (on a CPU, fresh pages cost more than the low-rank GEMMs), and no
    in-place add into a view, which autograd would pay for with a copy of the output in backward."""
    torch.manual_seed(0)
    ranks = [4] if routing == "none" else RANKS
    layer = MoELoRALinear(nn.Linear(D_IN, D_OUT), ranks, ALPHAS[: len(ranks)], RoutingContext(), routing=routing)
    layer.context.task_ids = torch.tensor([2, 0, 3])
    base_outputs = []
    layer.base_layer.register_forward_hook(lambda module, args, output: base_outputs.append(output.data_ptr()))
    out = layer(torch.randn(BATCH, LENGTH, D_IN, requires_grad=True))
    assert out.data_ptr() == base_outputs[-1]
    nodes, seen = [out.grad_fn], set()
    while nodes:
        node = nodes.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        assert type(node).__name__ != "CopySlices"
        nodes.extend(next_node for next_node, _ in node.next_functions)
