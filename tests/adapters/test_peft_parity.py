"""The `lora` preset is PEFT's LoRA: same A and B give the same logits and gradients; the export loads."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from medmoelora import AdapterConfig, UserError, export_peft, inject_adapter
from tests.tiny import make_tiny_llama, randomize_adapter

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def lora_pair():
    config = AdapterConfig.from_preset("lora")
    ours = inject_adapter(make_tiny_llama(), config)
    randomize_adapter(ours)
    peft_config = LoraConfig(
        r=config.ranks[0],
        lora_alpha=config.expert_alphas(1)[0],
        target_modules=list(config.target_modules),
        lora_dropout=0.0,
        bias="none",
    )
    theirs = get_peft_model(make_tiny_llama(), peft_config)
    peft_modules = dict(theirs.base_model.model.named_modules())
    with torch.no_grad():
        for path, layer in ours.adapter_layers().items():
            peft_layer = peft_modules[path]
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
    return ours, theirs, peft_modules


def test_lora_preset_matches_peft_logits_and_gradients(batch):
    ours, theirs, peft_modules = lora_pair()
    labels = batch["input_ids"]
    our_out = ours(**batch, labels=labels)
    their_out = theirs(**batch, labels=labels)
    torch.testing.assert_close(our_out.logits, their_out.logits, **TOLERANCE)
    our_out.loss.backward()
    their_out.loss.backward()
    for path, layer in ours.adapter_layers().items():
        peft_layer = peft_modules[path]
        torch.testing.assert_close(layer.lora_A.grad, peft_layer.lora_A["default"].weight.grad, **TOLERANCE)
        torch.testing.assert_close(layer.lora_B.grad, peft_layer.lora_B["default"].weight.grad, **TOLERANCE)


def test_peft_export_loads_with_peft_and_gives_the_same_logits(batch, tmp_path):
    ours, _, _ = lora_pair()
    export_peft(ours, tmp_path / "peft")
    loaded = PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "peft").eval()
    torch.testing.assert_close(loaded(**batch).logits, ours(**batch).logits, **TOLERANCE)


def test_only_plain_lora_exports_to_peft(tmp_path):
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset("uniform_moe"))
    with pytest.raises(UserError, match="only a plain LoRA adapter"):
        export_peft(adapted, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()
