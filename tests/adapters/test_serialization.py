"""Save then load is bit-exact; the on-disk format is docs/adapter-format.md's; bad adapters fail in one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from medmoelora import AdapterConfig, UserError, inject_adapter, load_adapter, save_adapter
from tests.tiny import make_tiny_llama, randomize_adapter


@pytest.mark.parametrize("preset", ["lora", "multi_lora", "uniform_moe", "med_moe_lora"])
def test_save_then_load_is_bit_exact(preset, batch, tmp_path):
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset(preset))
    randomize_adapter(adapted)
    save_adapter(adapted, tmp_path)
    loaded = load_adapter(make_tiny_llama(), tmp_path)
    assert loaded.adapter_config == adapted.adapter_config
    original = dict(adapted.named_parameters())
    for name, parameter in loaded.named_parameters():
        assert torch.equal(parameter, original[name]), name
        assert parameter.requires_grad == original[name].requires_grad, name
    task_ids = torch.tensor([0, 1, 2]) if preset == "multi_lora" else None
    assert torch.equal(loaded(**batch, task_ids=task_ids).logits, adapted(**batch, task_ids=task_ids).logits)


def test_on_disk_format_is_per_expert(tmp_path):
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset("med_moe_lora"))
    save_adapter(adapted, tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    header = json.loads((tmp_path / "adapter_config.json").read_text())
    path = "model.layers.5.mlp.down_proj"  # a top layer: 8 experts, ranks 8, 16, 8, 16, ...
    spec = header["modules"][path]
    assert spec["num_experts"] == 8 and spec["ranks"] == [8, 16] * 4 and spec["base_experts"] == [0]
    assert spec["alphas"] == [16.0, 32.0] * 4
    assert tensors[f"{path}.experts.1.lora_A"].shape == (16, spec["in_features"])
    assert tensors[f"{path}.experts.1.lora_B"].shape == (spec["out_features"], 16)
    assert tensors[f"{path}.router.weight"].shape == (8, spec["in_features"])
    assert tensors[f"{path}.router.log_temperature"].shape == ()
    assert header["method"] == "med_moe_lora" and header["routing"] == "soft"
    assert len([key for key in tensors if key.startswith(f"{path}.experts.")]) == 16
    assert not any(name.endswith(".tmp") for name in (p.name for p in tmp_path.iterdir()))


def test_loading_onto_a_base_model_of_other_shapes_fails_with_one_line(tmp_path):
    save_adapter(inject_adapter(make_tiny_llama(), AdapterConfig.from_preset("lora")), tmp_path)
    with pytest.raises(UserError) as error:
        load_adapter(make_tiny_llama(hidden_size=64, intermediate_size=96), tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert "model.layers.0.self_attn.q_proj is 32->32 there but 64->64 here" in message
    with pytest.raises(UserError, match="6 decoder layers, but this base model has 2"):
        load_adapter(make_tiny_llama(num_hidden_layers=2), tmp_path)


def test_bad_adapter_directories_fail_clearly(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_adapter(make_tiny_llama(), tmp_path / "missing")
    with pytest.raises(UserError, match="is not a saved adapter"):
        load_adapter(make_tiny_llama(), tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="PeftModel"):
        load_adapter(make_tiny_llama(), tmp_path)
