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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
    """probs: (..., tokens, N) router probabilities -> (...) N * sum_i f_i * P_i: a scalar for one site's
    (tokens, N), one value per site for sites stacked as (sites, tokens, N)."""
    num_experts = probs.shape[-1]
    top1_share = F.one_hot(probs.argmax(-1), num_experts).to(probs.dtype).mean(-2)  # (..., N)
    mean_prob = probs.mean(-2)  # (..., N)
    return num_experts * (top1_share * mean_prob).sum(-1)


def preservation_loss(probs: torch.Tensor, domains: torch.Tensor, num_base_experts: int, delta: float) -> torch.Tensor:
    """probs: (..., tokens, N); domains: (tokens,) with 0 general, 1 medical -> (...) (see module doc): a
    scalar for one site, one value per site for stacked sites."""
    num_experts = probs.shape[-1]
    is_base = torch.arange(num_experts, device=probs.device) < num_base_experts  # (N,)
    row_losses = []
    for domain in (0, 1):
        selected = probs[..., domains == domain, :]  # (..., tokens_d, N)
        if selected.shape[-2] == 0:
            continue
        matched = is_base if domain == 0 else ~is_base  # (N,)
        coefficient = torch.where(matched, 1.0 + delta, 1.0 - delta).to(probs.dtype)  # (N,)
        z = selected.mean(-2) / coefficient  # (..., N)
        row_losses.append(z.var(dim=-1, correction=0) / z.mean(-1) ** 2)  # (...)
    if not row_losses:
        return probs.new_zeros(probs.shape[:-2])
    return torch.stack(row_losses).mean(0)


def base_l2_loss(layer: MoELoRALinear) -> torch.Tensor:
    return layer.base_B.pow(2).sum()


def aux_losses(
    layers: Iterable[MoELoRALinear],
    token_masks: Sequence[torch.Tensor | None],
    domain_labels: Sequence[torch.Tensor | None],
    delta: float,
) -> dict[str, torch.Tensor]:
    """Every aux loss, averaged over router sites (see module doc), over the real tokens of the forwards
    whose router probabilities the layers kept (``RoutingContext.keep_router_probs``): one forward of a
    batch, or one per sequence (`MoELoRAModel.forward_unpadded`); the tokens of all of them are pooled,
    in order, so the losses are those of the whole batch either way.

    Per forward: token_masks[f] (B, T) bool or None (every token real); domain_labels[f] (B,) long or None
    (then no preservation loss).
    """
    balance, preservation, base_l2 = [], [], []
    with_domains = all(domains is not None for domains in domain_labels)
    # Sites with the same expert count see the same tokens: stacked, each loss is a few batched ops for all
    # of them, where site by site it was some thirty small ops a site (a few percent of a training step).
    sites_by_shape: dict[tuple[int, int, torch.device], list[MoELoRALinear]] = {}
    for layer in layers:
        if layer.base_B is not None:
            base_l2.append(base_l2_loss(layer))
        if layer.kept_router_probs and layer.num_experts >= 2:
            shape = (layer.num_experts, layer.num_base_experts, layer.router.weight.device)
            sites_by_shape.setdefault(shape, []).append(layer)
    for (num_experts, num_base_experts, _), sites in sites_by_shape.items():
        kept, kept_domains = [], []
        # strict: a forward without its mask and labels (or one kept twice) is an error, not a silent mix-up
        per_forward = zip(*(site.kept_router_probs for site in sites), strict=True)
        for site_probs, mask, domains in zip(per_forward, token_masks, domain_labels, strict=True):
            probs = torch.stack(site_probs)  # (S, B, T, N)
            _, batch, length, _ = probs.shape
            keep = torch.ones(batch * length, dtype=torch.bool, device=probs.device)
            if mask is not None and mask.numel() == batch * length:  # not during cached decoding
                keep = mask.reshape(-1).to(device=probs.device, dtype=torch.bool)
            kept.append(probs.reshape(len(sites), batch * length, num_experts)[:, keep])  # (S, real tokens, N)
            if with_domains:
                token_domains = domains.to(probs.device).view(batch, 1).expand(batch, length).reshape(-1)  # (B*T,)
                kept_domains.append(token_domains[keep])
        flat = kept[0] if len(kept) == 1 else torch.cat(kept, dim=1)  # (S, tokens, N)
        balance.append(switch_balance_loss(flat))  # (S,)
        if with_domains and num_base_experts > 0:
            domains = kept_domains[0] if len(kept_domains) == 1 else torch.cat(kept_domains)  # (tokens,)
            preservation.append(preservation_loss(flat, domains, num_base_experts, delta))  # (S,)
    return {
        "balance": _mean(balance),
        "preservation": _mean(preservation),
        "base_l2": _mean(base_l2),
    }


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    """The mean over sites of per-site values, given as scalars or as one (S,) tensor per group of sites."""
    return torch.cat([value.reshape(-1) for value in values]).mean() if values else torch.zeros(())
