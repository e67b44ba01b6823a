"""Aux losses against hand-computed cases, and their averaging over router sites."""

from __future__ import annotations

import pytest
import torch

from medmoelora import AdapterConfig, inject_adapter
from medmoelora.losses import aux_losses, preservation_loss, switch_balance_loss
from tests.tiny import make_tiny_llama, randomize_adapter


def test_switch_balance_hand_computed():
    # top-1 shares f = [2/3, 1/3], mean probabilities P = [0.5, 0.5]: 2 * (2/3 * 0.5 + 1/3 * 0.5) = 1.0
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    assert switch_balance_loss(probs).item() == pytest.approx(1.0)
    # collapse onto expert 0: f = [1, 0], P = [0.85, 0.15]: 2 * 0.85 = 1.7
    assert switch_balance_loss(torch.tensor([[0.9, 0.1], [0.8, 0.2]])).item() == pytest.approx(1.7)


def test_preservation_hand_computed():
    # 3 experts, expert 0 is the base expert, delta = 0.5 (I = 1.5 where matched, 0.5 elsewhere).
    probs = torch.tensor([[0.6, 0.2, 0.2], [0.4, 0.4, 0.2], [0.1, 0.5, 0.4]])
    domains = torch.tensor([0, 0, 1])  # two general tokens, one medical token
    # general: Q = [0.5, 0.3, 0.2], I = [1.5, 0.5, 0.5], Z = [1/3, 0.6, 0.4], mean 4/9,
    #          Var = (1/81 + 49/2025 + 4/2025) / 3 = 26/2025, CV^2 = (26/2025) / (16/81) = 0.065
    # medical: Q = [0.1, 0.5, 0.4], I = [0.5, 1.5, 1.5], Z = [0.2, 1/3, 4/15], mean 4/15,
    #          Var = (1/225 + 1/225 + 0) / 3 = 2/675, CV^2 = (2/675) / (16/225) = 1/24
    expected = (0.065 + 1 / 24) / 2
    assert preservation_loss(probs, domains, num_base_experts=1, delta=0.5).item() == pytest.approx(expected)


def test_preservation_is_zero_when_routing_follows_the_coefficients():
    # general tokens: base gets (1 + delta) / (1 - delta) = 3 times each specialist's weight
    probs = torch.tensor([[0.6, 0.2, 0.2], [0.2 / 1.4, 0.6 / 1.4, 0.6 / 1.4]])
    loss = preservation_loss(probs, torch.tensor([0, 1]), num_base_experts=1, delta=0.5)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_aux_losses_average_over_router_sites_and_skip_padding(batch):
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset("med_moe_lora"))
    randomize_adapter(adapted)
    adapted.train()
    domains = torch.tensor([0, 1, 1])
    with adapted.routing(domain_labels=domains, token_mask=batch["attention_mask"], free_router_probs=False):
        adapted.model(**batch)
    layers = list(adapted.adapter_layers().values())
    terms = aux_losses(layers, [batch["attention_mask"]], [domains], delta=0.5)
    mask = batch["attention_mask"].reshape(-1).bool()
    token_domains = domains[:, None].expand_as(batch["attention_mask"]).reshape(-1)[mask]
    per_site_balance, per_site_preservation = [], []
    for layer in layers:
        flat = layer.kept_router_probs[0].reshape(-1, layer.num_experts)[mask]
        per_site_balance.append(switch_balance_loss(flat))
        per_site_preservation.append(preservation_loss(flat, token_domains, 1, 0.5))
    torch.testing.assert_close(terms["balance"], torch.stack(per_site_balance).mean())
    torch.testing.assert_close(terms["preservation"], torch.stack(per_site_preservation).mean())
    expected_l2 = torch.stack([layer.base_B.pow(2).sum() for layer in layers]).mean()
    torch.testing.assert_close(terms["base_l2"], expected_l2)


def test_gradients_of_the_aux_losses_reach_router_and_temperature(batch):
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset("med_moe_lora"))
    randomize_adapter(adapted)
    adapted.train()
    out = adapted(**batch, domain_labels=torch.tensor([0, 1, 0]))
    (out["aux_losses"]["balance"] + out["aux_losses"]["preservation"]).backward()
    for layer in adapted.adapter_layers().values():
        assert layer.router.weight.grad.abs().sum() > 0
        assert layer.log_temperature.grad is not None and layer.log_temperature.grad != 0


def test_stacked_sites_give_each_sites_own_losses():
    """aux_losses stacks the sites of one expert count: (sites, tokens, N) gives one value per site."""
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(5, 11, 4, generator=generator), dim=-1)  # 5 sites, 11 tokens, 4 experts
    domains = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0])
    balance, preservation = switch_balance_loss(probs), preservation_loss(probs, domains, 1, 0.3)
    assert balance.shape == preservation.shape == (5,)
    for site in range(5):
        torch.testing.assert_close(balance[site], switch_balance_loss(probs[site]))
        torch.testing.assert_close(preservation[site], preservation_loss(probs[site], domains, 1, 0.3))
        assert switch_balance_loss(probs[site]).shape == ()
