"""The adapter on a non-Llama decoder: Qwen2 (config/gpu.yaml's Qwen2.5-1.5B-Instruct), whose q/k/v
projections carry a bias. Injection finds every projection, the adapted model starts as the base model,
and an adapter round-trips through save and load."""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from medmoelora import AdapterConfig, inject_adapter, load_adapter, save_adapter
from tests.tiny import (
    SEED,
    TINY_HEADS,
    TINY_HIDDEN,
    TINY_INTERMEDIATE,
    TINY_KV_HEADS,
    TINY_LAYERS,
    TINY_VOCAB,
    randomize_adapter,
)


def tiny_qwen2() -> Qwen2ForCausalLM:
    torch.manual_seed(SEED)
    config = Qwen2Config(
        vocab_size=TINY_VOCAB, hidden_size=TINY_HIDDEN, intermediate_size=TINY_INTERMEDIATE,
        num_hidden_layers=TINY_LAYERS, num_attention_heads=TINY_HEADS, num_key_value_heads=TINY_KV_HEADS,
        max_position_embeddings=64,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).eval()


def test_med_moe_lora_on_qwen2_starts_as_the_base_model_and_round_trips(tmp_path) -> None:
    ids = torch.randint(0, TINY_VOCAB, (2, 7), generator=torch.Generator().manual_seed(SEED))
    base = tiny_qwen2()
    assert base.model.layers[0].self_attn.q_proj.bias is not None  # what sets Qwen2 apart from Llama here
    expected = base(input_ids=ids).logits
    adapted = inject_adapter(tiny_qwen2(), AdapterConfig.from_preset("med_moe_lora"))
    assert len(adapted.adapter_layers()) == 7 * TINY_LAYERS  # q, k, v, o, gate, up, down in every layer
    torch.testing.assert_close(adapted(input_ids=ids).logits, expected)  # every expert's B starts at zero
    randomize_adapter(adapted)
    changed = adapted(input_ids=ids).logits
    assert not torch.allclose(changed, expected)
    save_adapter(adapted, tmp_path)
    torch.testing.assert_close(load_adapter(tiny_qwen2(), tmp_path)(input_ids=ids).logits, changed)
