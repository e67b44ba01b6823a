"""Auxiliary losses of the mixture, computed per router site and averaged.

A *router site* is one adapted module with soft routing and more than one expert (its own router,
its own N: expert counts differ by layer). Every loss below is computed per site from that site's
router probabilities of the last forward, then **averaged over sites**, so its scale does not grow
with the number of layers or target modules and the weights (lambda) carry over between models.

- ``balance``: Switch-Transformer load balancing, ``N * sum_i f_i * P_i`` with f_i the share of
  tokens whose top-1 expert is i and P_i the mean router probability of expert i. Equals 1 when
  routing is uniform, N when one expert takes everything (the paper's expert collapse).
- ``preservation``: the Knowledge-Preservation Plugin, after LoRAMoE's localized balancing
  constraint. Q[d, i] is the mean router probability of expert i over tokens of domain d (general,
  medical); I[d, i] is 1 + delta where expert i matches domain d (base experts for general tokens,
  specialists for medical ones) and 1 - delta elsewhere; the loss is the squared coefficient of
  variation Var/Mean^2 of Z = Q / I, per domain row, averaged over the domains present. Its optimum
  is Q[d, i] proportional to I[d, i], i.e. matched experts get (1 + delta) / (1 - delta) times the
  weight. Two deliberate differences from LoRAMoE's printed formula Z = I * Q over the whole matrix:
  multiplying by I puts the optimum on *less* weight for matched experts, the opposite of the stated
  intent; and each row of Q sums to one by construction, so rows are balanced separately.
- ``base_l2``: squared Frobenius norm of the base experts' B, the pull toward zero that keeps base
  experts close to the base model (B = 0 is exactly the base model; A keeps its random projection).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from medmoelora.layer import MoELoRALinear


@dataclass
class LossWeights:
    """The weight (lambda) of each aux loss. Initialised from the adapter config; mutable, unlike the
    config, so that the general-skill monitor (`medmoelora.training.monitor`) can raise them mid-run."""

    balance: float = 0.0
    preservation: float = 0.0
    base_l2: float = 0.0

    def any(self) -> bool:
        return self.balance > 0 or self.preservation > 0 or self.base_l2 > 0

    def weighted_sum(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """lambda_bal * balance + lambda_kp * preservation + lambda_l2 * base_l2."""
        return (
            self.balance * terms["balance"]
            + self.preservation * terms["preservation"]
            + self.base_l2 * terms["base_l2"]
        )


def switch_balance_loss(probs: torch.Tensor) -> torch.Tensor:
    """probs: (tokens, N) router probabilities -> scalar N * sum_i f_i * P_i."""
    num_experts = probs.shape[-1]
    top1_share = torch.bincount(probs.argmax(-1), minlength=num_experts).to(probs.dtype) / probs.shape[0]  # (N,)
    mean_prob = probs.mean(0)  # (N,)
    return num_experts * (top1_share * mean_prob).sum()


def preservation_loss(probs: torch.Tensor, domains: torch.Tensor, num_base_experts: int, delta: float) -> torch.Tensor:
    """probs: (tokens, N); domains: (tokens,) with 0 general, 1 medical -> scalar (see module doc)."""
    num_experts = probs.shape[-1]
    is_base = torch.arange(num_experts, device=probs.device) < num_base_experts  # (N,)
    row_losses = []
    for domain in (0, 1):
        selected = probs[domains == domain]  # (tokens_d, N)
        if selected.shape[0] == 0:
            continue
        matched = is_base if domain == 0 else ~is_base  # (N,)
        coefficient = torch.where(matched, 1.0 + delta, 1.0 - delta).to(probs.dtype)  # (N,)
        z = selected.mean(0) / coefficient  # (N,)
        row_losses.append(z.var(correction=0) / z.mean() ** 2)
    if not row_losses:
        return probs.new_zeros(())
    return torch.stack(row_losses).mean()


def base_l2_loss(layer: MoELoRALinear) -> torch.Tensor:
    return layer.base_B.pow(2).sum()


def aux_losses(
    layers: Iterable[MoELoRALinear],
    token_mask: torch.Tensor | None,
    domain_labels: torch.Tensor | None,
    delta: float,
) -> dict[str, torch.Tensor]:
    """Every aux loss, averaged over router sites (see module doc). Needs the router probabilities
    that the last forward kept (``RoutingContext.keep_router_probs``).

    token_mask: (B, T) bool or None; domain_labels: (B,) long or None (then no preservation loss).
    """
    balance, preservation, base_l2 = [], [], []
    for layer in layers:
        if layer.base_B is not None:
            base_l2.append(base_l2_loss(layer))
        probs = layer.last_router_probs  # (B, T, N)
        if probs is None or layer.num_experts < 2:
            continue
        batch, length, num_experts = probs.shape
        flat = probs.reshape(-1, num_experts)  # (B*T, N)
        keep = torch.ones(batch * length, dtype=torch.bool, device=probs.device)
        if token_mask is not None and token_mask.numel() == batch * length:  # not during cached decoding
            keep = token_mask.reshape(-1).to(device=probs.device, dtype=torch.bool)
        balance.append(switch_balance_loss(flat[keep]))
        if domain_labels is not None and layer.num_base_experts > 0:
            token_domains = domain_labels.to(probs.device).view(batch, 1).expand(batch, length).reshape(-1)
            preservation.append(preservation_loss(flat[keep], token_domains[keep], layer.num_base_experts, delta))
    return {
        "balance": _mean(balance),
        "preservation": _mean(preservation),
        "base_l2": _mean(base_l2),
    }


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).mean() if values else torch.zeros(())
