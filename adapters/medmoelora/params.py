"""Parameter accounting from a config alone: the model is built on the meta device (no weights).

- trainable: every adapter parameter that trains (experts, routers, learnable temperatures).
- active: what one token uses. Soft routing without top-k uses every expert; with top-k, the k
  largest experts of each module (an upper bound over tokens when ranks differ) plus the router;
  task routing uses the largest single expert; LoRA its one expert.

`match_rank` sizes a baseline to another method's trainable count (the matched baselines of the tables):
with one rank r for every expert the count is affine in r, so two counts give the exact line.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig

from medmoelora.config import AdapterConfig
from medmoelora.layer import MoELoRALinear
from medmoelora.model import inject_adapter, trainable_parameter_count

# Llama-3-8B's architecture (meta-llama/Meta-Llama-3-8B config.json), built in code: no download.
LLAMA3_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
)
# SmolLM2-135M(-Instruct)'s architecture (HuggingFaceTB/SmolLM2-135M-Instruct config.json).
SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
)
KNOWN_ARCHITECTURES = {"llama3-8b": LLAMA3_8B, "smollm2-135m": SMOLLM2_135M}
PAPER_TRAINABLE = 88.4e6
PAPER_ACTIVE = 22.4e6


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    active: int
    base: int
    experts_per_layer: list[int]


def expert_size(layer: MoELoRALinear, rank: int) -> int:
    return rank * (layer.base_layer.in_features + layer.base_layer.out_features)


def active_parameters(layer: MoELoRALinear) -> int:
    """Adapter parameters one token uses in this module (see the module doc)."""
    sizes = sorted((expert_size(layer, rank) for rank in layer.ranks), reverse=True)
    router = 0 if layer.router is None else layer.router.weight.numel() + int(layer.learn_temperature)
    if layer.routing == "task":
        return sizes[0]
    if layer.routing == "soft" and layer.top_k is not None:
        return router + sum(sizes[: layer.top_k])
    return router + sum(sizes)


def count_parameters(config: AdapterConfig, model_config: PretrainedConfig) -> ParameterCount:
    """Trainable and active adapter parameters of ``config`` on a model of ``model_config``."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    base = sum(p.numel() for p in model.parameters())
    adapted = inject_adapter(model, config)
    active = sum(active_parameters(layer) for layer in adapted.adapter_layers().values())
    return ParameterCount(
        trainable=trainable_parameter_count(adapted),
        active=active,
        base=base,
        experts_per_layer=config.experts_per_layer(adapted.num_layers),
    )


@dataclass(frozen=True)
class RankMatch:
    rank: int  # the one rank of every expert
    trainable: int  # the baseline's trainable count at that rank
    target: int  # the count it was matched to

    @property
    def ratio(self) -> float:
        return self.trainable / self.target


def match_rank(config: AdapterConfig, target: int, model_config: PretrainedConfig) -> RankMatch:
    """The rank r (``ranks=[r]``: every expert the same) whose trainable count is nearest ``target``.

    trainable(r) = r * per_rank + fixed, where per_rank sums ``N * (d_in + d_out)`` over the adapted
    modules and fixed holds what does not depend on the rank (routers, learnable temperatures); the
    counts at r = 1 and r = 2 give both terms exactly.
    """
    at_one = count_parameters(config.replace(ranks=(1,), alphas=None), model_config).trainable
    per_rank = count_parameters(config.replace(ranks=(2,), alphas=None), model_config).trainable - at_one
    fixed = at_one - per_rank
    rank = max(1, round((target - fixed) / per_rank))  # the line is exact, so the nearest integer is best
    return RankMatch(rank=rank, trainable=fixed + rank * per_rank, target=target)


def architecture(name: str) -> LlamaConfig:
    from medmoelora.errors import unknown_name

    if name not in KNOWN_ARCHITECTURES:
        raise unknown_name("architecture", name, KNOWN_ARCHITECTURES)
    return LlamaConfig(**KNOWN_ARCHITECTURES[name])
