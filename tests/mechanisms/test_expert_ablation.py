"""Expert ablation: the spec, the renormalised mixture, and its two ends (nothing removed, everything removed)."""

from __future__ import annotations

import pytest
import torch

from medmoelora import AdapterConfig, UserError, inject_adapter
from medmoelora.ablation import parse_disabled_experts
from medmoelora.layer import MoELoRALinear, RoutingContext
from tests.tiny import TINY_LAYERS, make_tiny_llama, randomize_adapter

D_IN, D_OUT = 8, 6
RANKS = [2, 3, 4]  # expert 0 is the base expert
MED_COUNTS = {layer: 2 if layer < 4 else 8 for layer in range(TINY_LAYERS)}  # the step schedule on 6 layers


def _logits(adapted, batch, **routing) -> torch.Tensor:
    with torch.no_grad():
        return adapted(**batch, **routing).logits


def _adapted(preset: str, **overrides):
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset(preset, **overrides))
    randomize_adapter(adapted, scale=0.3)
    return adapted.eval()


# ---- the spec -----------------------------------------------------------------------------------------------
def test_spec_terms_name_the_experts_they_remove() -> None:
    assert parse_disabled_experts("none", MED_COUNTS, 1) == {}
    assert parse_disabled_experts("base", MED_COUNTS, 1) == {layer: {0} for layer in range(TINY_LAYERS)}
    specialists = parse_disabled_experts("specialists", MED_COUNTS, 1)
    assert specialists == {layer: set(range(1, MED_COUNTS[layer])) for layer in range(TINY_LAYERS)}
    assert parse_disabled_experts("4-5:2+0:1+5:7", MED_COUNTS, 1) == {0: {1}, 4: {2}, 5: {2, 7}}
    assert parse_disabled_experts("*:0-1", MED_COUNTS, 1) == {layer: {0, 1} for layer in range(TINY_LAYERS)}
    every = parse_disabled_experts("*:*", MED_COUNTS, 1)
    assert every == parse_disabled_experts("base+specialists", MED_COUNTS, 1)
    assert every == {layer: set(range(count)) for layer, count in MED_COUNTS.items()}
    # Without base experts every expert is a specialist.
    assert parse_disabled_experts("specialists", {0: 4}, 0) == {0: {0, 1, 2, 3}}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", r"disable_experts= is empty"),
        ("bse", r"disable_experts=bse: cannot read 'bse'; give none, base, specialists"),
        ("3", r"cannot read '3'"),
        ("6:0", r"disable_experts=6:0: 6 is out of range; decoder layers are 0-5"),
        ("0:2", r"disable_experts=0:2: 2 is out of range; the experts of layer 0 are 0-1"),
        ("*:3-9", r"9 is out of range; the experts of layer 0 are 0-1"),
        ("5-3:0", r"the range 5-3 runs backwards; write 3-5"),
    ],
)
def test_bad_specs_fail_naming_the_argument(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_disabled_experts(spec, MED_COUNTS, 1)


def test_base_needs_base_experts() -> None:
    with pytest.raises(UserError, match=r"disable_experts=base: this adapter has no base experts"):
        parse_disabled_experts("base", {0: 4}, 0)


# ---- the layer: removed gates are zero, the rest renormalised ------------------------------------------------
def _layer(top_k: int | None = None) -> tuple[MoELoRALinear, torch.Tensor]:
    torch.manual_seed(0)
    layer = MoELoRALinear(
        torch.nn.Linear(D_IN, D_OUT), RANKS, [2.0 * r for r in RANKS], RoutingContext(), top_k=top_k, num_base_experts=1
    )
    with torch.no_grad():
        for parameter in (layer.base_B, layer.lora_B, layer.router.weight):
            parameter.normal_()
    return layer, torch.randn(2, 5, D_IN)


def _mixture(layer: MoELoRALinear, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """W0 x + sum_i g_i (alpha_i / r_i) B_i A_i x, one expert at a time (the reference)."""
    lora_A, lora_B = layer.fused_weights()
    out, start = layer.base_layer(x), 0
    for i, (rank, alpha) in enumerate(zip(layer.ranks, layer.alphas, strict=True)):
        a, b = lora_A[start : start + rank], lora_B[:, start : start + rank]
        out = out + gates[..., i : i + 1] * (alpha / rank) * (x @ a.T @ b.T)
        start += rank
    return out


@pytest.mark.parametrize(("removed", "kept"), [({0}, [1, 2]), ({1, 2}, [0]), ({1}, [0, 2])])
def test_removed_experts_leave_a_mixture_renormalised_over_the_rest(removed: set[int], kept: list[int]) -> None:
    layer, x = _layer()
    with torch.no_grad():
        probs = layer.router_probs(x)  # (B, T, N)
        expected_gates = torch.zeros_like(probs)
        expected_gates[..., kept] = probs[..., kept] / probs[..., kept].sum(-1, keepdim=True)
        layer.expert_keep = torch.tensor([0.0 if i in removed else 1.0 for i in range(len(RANKS))])
        torch.testing.assert_close(layer(x), _mixture(layer, x, expected_gates))
        assert not torch.allclose(layer(x), _mixture(layer, x, probs))  # the removal changed something


@pytest.mark.parametrize("grouped", [False, True])
def test_top_k_keeps_the_routers_choice_and_drops_the_removed_from_it(grouped: bool) -> None:
    layer, x = _layer(top_k=2)
    layer.use_grouped_top_k(grouped)  # the dense fused path and the path that computes only chosen experts
    with torch.no_grad():
        probs = layer.router_probs(x)
        chosen = torch.zeros_like(probs).scatter(-1, probs.topk(2, dim=-1).indices, 1.0)
        chosen[..., 0] = 0.0  # base expert removed
        weights = probs * chosen
        layer.expert_keep = torch.tensor([0.0, 1.0, 1.0])
        torch.testing.assert_close(layer(x), _mixture(layer, x, weights / weights.sum(-1, keepdim=True)))


# ---- the model: the two ends are exact ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("preset", "overrides"),
    [("med_moe_lora", {}), ("uniform_moe", {}), ("lora", {}), ("med_moe_lora", {"top_k": 2})],
)
def test_removing_every_expert_gives_the_base_model_exactly(preset: str, overrides: dict, batch) -> None:
    adapted = _adapted(preset, **overrides)
    with adapted.disable_adapters():
        base = _logits(adapted, batch)
    adapted_logits = _logits(adapted, batch)
    assert not torch.allclose(adapted_logits, base)
    adapted.disable_experts("*:*")
    assert torch.equal(_logits(adapted, batch), base)


def test_removing_a_task_routed_tokens_own_expert_gives_the_base_model(batch) -> None:
    adapted = _adapted("multi_lora")
    task_1, task_0 = torch.tensor([1, 1, 1]), torch.tensor([0, 0, 0])
    with adapted.disable_adapters():
        base = _logits(adapted, batch, task_ids=task_1)
    adapted.disable_experts("*:1")
    assert torch.equal(_logits(adapted, batch, task_ids=task_1), base)
    assert not torch.allclose(_logits(adapted, batch, task_ids=task_0), base)


def test_removing_nothing_leaves_the_adapter_exactly_as_it_was(batch) -> None:
    adapted = _adapted("med_moe_lora")
    before = _logits(adapted, batch)
    assert adapted.disable_experts("none") == {}
    assert torch.equal(_logits(adapted, batch), before)
    adapted.disable_experts("base")
    assert not torch.allclose(_logits(adapted, batch), before)
    adapted.disable_experts(None)  # every expert back
    assert torch.equal(_logits(adapted, batch), before)


def test_layer_terms_touch_only_their_layers(batch) -> None:
    adapted = _adapted("med_moe_lora")
    adapted.disable_experts("4-5:1+0:0")
    keeps = {path: layer.expert_keep for path, layer in adapted.adapter_layers().items()}
    for path, keep in keeps.items():
        layer = adapted.layer_index[path]
        if layer in (1, 2, 3):
            assert keep is None  # untouched layers are not renormalised at all
        else:
            removed = {0} if layer == 0 else {1}
            assert [i for i, value in enumerate(keep.tolist()) if value == 0] == sorted(removed)


def test_merging_refuses_an_ablated_adapter_and_ablation_a_merged_one(batch) -> None:
    adapted = _adapted("lora")
    adapted.disable_experts("*:*")
    with (
        pytest.raises(UserError, match=r"experts are disabled \(disable_experts\); evaluate unmerged"),
        adapted.merged(),
    ):
        pass
    adapted.disable_experts(None)
    with adapted.merged(), pytest.raises(UserError, match=r"disable experts outside `merged\(\)`"):
        adapted.disable_experts("base")
