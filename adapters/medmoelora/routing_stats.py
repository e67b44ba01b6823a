"""Routing statistics: how much each expert of each layer is used, and the paper's collapse signature.

Per layer and expert: the mean gate weight over real tokens, and the share of tokens whose top-1
expert it is (averaged over the layer's adapted modules). The paper's warning sign of expert
collapse is one expert taking more than 90% of the routing weight.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from medmoelora.model import MoELoRAModel

COLLAPSE_THRESHOLD = 0.9
GROUPINGS = ("layers", "kinds", "num_experts")  # how base_expert_share groups modules


@contextmanager
def track_routing(adapted: MoELoRAModel) -> Iterator[None]:
    """Accumulate routing statistics over every forward inside the block (counters reset on entry)."""
    for layer in adapted.adapter_layers().values():
        layer.reset_stats()
    adapted.context.track_stats = True
    try:
        yield
    finally:
        adapted.context.track_stats = False


def routing_stats(adapted: MoELoRAModel) -> dict[str, Any]:
    """``{"layers": {l: {"num_experts", "mean_gate": [...], "top1_share": [...]}}, "modules": {...}}``."""
    modules: dict[str, dict[str, Any]] = {}
    for path, layer in adapted.adapter_layers().items():
        if layer.stat_tokens == 0:
            continue
        modules[path] = {
            "layer": adapted.layer_index[path],
            "routing": layer.routing,
            "base_experts": layer.num_base_experts,
            "tokens": layer.stat_tokens,
            "mean_gate": (layer.stat_gate_sum / layer.stat_token_count).tolist(),
            "top1_share": (layer.stat_top1_count / layer.stat_token_count).tolist(),
        }
    return {"layers": summarize_layers(modules), "modules": modules}


def summarize_layers(modules: dict[str, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per decoder layer: each expert's mean gate and top-1 share, averaged over the layer's modules."""
    by_layer: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for entry in modules.values():
        by_layer[entry["layer"]].append(entry)
    return {
        index: {
            "num_experts": len(entries[0]["mean_gate"]),
            "mean_gate": _mean_lists([e["mean_gate"] for e in entries], [1] * len(entries)),
            "top1_share": _mean_lists([e["top1_share"] for e in entries], [1] * len(entries)),
        }
        for index, entries in sorted(by_layer.items())
    }


def merge_routing_stats(all_stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Token-weighted merge of several `routing_stats` results of one adapter (e.g. one per task)."""
    modules: dict[str, dict[str, Any]] = {}
    for path in all_stats[0]["modules"] if all_stats else ():
        entries = [stats["modules"][path] for stats in all_stats]
        weights = [entry["tokens"] for entry in entries]
        modules[path] = dict(
            entries[0],
            tokens=sum(weights),
            mean_gate=_mean_lists([e["mean_gate"] for e in entries], weights),
            top1_share=_mean_lists([e["top1_share"] for e in entries], weights),
        )
    return {"layers": summarize_layers(modules), "modules": modules}


def base_expert_share(by_domain: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The share of the routing weight that the base experts get, for each domain's tokens.

    ``by_domain`` maps a domain (general, medical) to the `routing_stats` of its tokens. Returns
    ``{"modules": {path: {domain: share}}, "layers": {l: ...}, "kinds": {"q_proj": ...}, "num_experts":
    {2: ..., 8: ...}}``: a decoder layer, a projection kind, or the layers with N experts (the layer
    types of an asymmetric schedule), each the mean over its modules. Modules without base experts are
    left out. Knowledge preservation works where the general share exceeds the medical one.
    """
    modules: dict[str, dict[str, Any]] = {}
    for domain, stats in by_domain.items():
        for path, entry in stats["modules"].items():
            if entry.get("base_experts"):
                shares = modules.setdefault(path, {"layer": entry["layer"], "num_experts": len(entry["mean_gate"])})
                shares[domain] = sum(entry["mean_gate"][: entry["base_experts"]])
    groups: dict[str, dict[Any, list[dict[str, Any]]]] = {name: defaultdict(list) for name in GROUPINGS}
    for path, shares in modules.items():
        groups["layers"][shares["layer"]].append(shares)
        groups["kinds"][path.rsplit(".", 1)[-1]].append(shares)
        groups["num_experts"][shares["num_experts"]].append(shares)
    result: dict[str, Any] = {"modules": modules}
    for name, grouped in groups.items():
        result[name] = {key: _mean_shares(entries, list(by_domain)) for key, entries in sorted(grouped.items())}
    return result


def _mean_shares(entries: list[dict[str, Any]], domains: list[str]) -> dict[str, float]:
    return {domain: sum(e[domain] for e in entries) / len(entries) for domain in domains if domain in entries[0]}


def _mean_lists(lists: list[list[float]], weights: list[float]) -> list[float]:
    total = sum(weights)
    return [sum(w * values[i] for values, w in zip(lists, weights, strict=True)) / total for i in range(len(lists[0]))]


def collapsed_modules(stats: dict[str, Any], threshold: float = COLLAPSE_THRESHOLD) -> list[str]:
    """Soft-routed modules (more than one expert) where one expert has more than ``threshold`` of the
    weight. Task routing is left out: one task per batch is its design, not a collapse."""
    found = []
    for path, entry in stats["modules"].items():
        gates = entry["mean_gate"]
        if entry["routing"] == "soft" and len(gates) > 1 and max(gates) > threshold:
            expert = gates.index(max(gates))
            found.append(f"{path}: expert {expert} takes {max(gates):.1%} of the routing weight")
    return found


def warn_on_collapse(stats: dict[str, Any], threshold: float = COLLAPSE_THRESHOLD) -> list[str]:
    """Warn (once, listing every collapsed module) and return the messages."""
    found = collapsed_modules(stats, threshold)
    if found:
        shown = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
        warnings.warn(
            f"expert collapse (one expert > {threshold:.0%} of the routing weight) in {len(found)} module(s): "
            f"{shown}. Raise balance_weight or the router temperature.",
            RuntimeWarning,
            stacklevel=2,
        )
    return found
