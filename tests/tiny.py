"""The tiny random Llama that the tests build from a config: constants and factories."""

from __future__ import annotations

import torch

# Tiny sizes as named constants: big enough for GQA, several layers for the schedules, fast on a CPU.
TINY_VOCAB = 96
TINY_HIDDEN = 32
TINY_INTERMEDIATE = 48
TINY_LAYERS = 6
TINY_HEADS = 4
TINY_KV_HEADS = 2
SEED = 0


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=TINY_HIDDEN,
        intermediate_size=TINY_INTERMEDIATE,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        num_key_value_heads=TINY_KV_HEADS,
        max_position_embeddings=64,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def make_tiny_llama(seed: int = SEED, **overrides):
    """A random-init tiny Llama in fp32 and eval mode (dropout off)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**overrides))
    return model.eval()


def randomize_adapter(adapted, seed: int = SEED + 1, scale: float = 0.1) -> None:
    """Random non-zero expert B (and router) weights, so that tests see the adapter's effect."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapted.adapter_layers().values():
            for name, parameter in layer.adapter_params().items():
                if name != "log_temperature":
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
