"""Injection into a tiny random Llama: exactness at init, freezing, routing inputs, helpers."""

from __future__ import annotations

import pytest
import torch

from medmoelora import AdapterConfig, MoELoRALinear, inject_adapter
from tests.tiny import TINY_LAYERS, make_tiny_llama, randomize_adapter


@pytest.mark.parametrize("preset", ["lora", "multi_lora", "uniform_moe", "med_moe_lora", "paper"])
def test_adapted_logits_equal_the_base_model_exactly_at_init(preset, batch):
    base_logits = make_tiny_llama()(**batch).logits
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset(preset))
    task_ids = torch.tensor([0, 1, 3]) if preset == "multi_lora" else None
    assert torch.equal(adapted(**batch, task_ids=task_ids).logits, base_logits)


def test_schedule_decides_each_layers_expert_count(tiny_llama):
    adapted = inject_adapter(tiny_llama, AdapterConfig.from_preset("med_moe_lora"))
    layers = adapted.adapter_layers()
    assert len(layers) == 7 * TINY_LAYERS
    # 6 layers, split at 2/3: layers 0-3 get 2 experts, 4-5 get 8.
    for path, layer in layers.items():
        assert layer.num_experts == (2 if adapted.layer_index[path] < 4 else 8), path
        assert layer.ranks == [8, 16] * (layer.num_experts // 2)


def test_only_adapter_parameters_train(tiny_llama):
    adapted = inject_adapter(tiny_llama, AdapterConfig.from_preset("uniform_moe"))
    trainable = {name for name, p in adapted.named_parameters() if p.requires_grad}
    assert trainable
    assert all(("lora_" in name or ".router." in name) for name in trainable), trainable
    # a fixed temperature (uniform_moe: tau = 1) stays fixed
    assert not any(name.endswith("log_temperature") for name in trainable)


def test_learnable_temperature_trains(tiny_llama):
    adapted = inject_adapter(tiny_llama, AdapterConfig.from_preset("med_moe_lora"))
    assert all(layer.log_temperature.requires_grad for layer in adapted.adapter_layers().values())


def test_disable_adapters_gives_the_base_model(batch):
    base_logits = make_tiny_llama()(**batch).logits
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset("med_moe_lora"))
    randomize_adapter(adapted)
    assert not torch.allclose(adapted(**batch).logits, base_logits)
    with adapted.disable_adapters():
        assert torch.equal(adapted(**batch).logits, base_logits)


def test_task_ids_route_each_sequence_to_its_expert(batch):
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset("multi_lora"))
    randomize_adapter(adapted)
    mixed = adapted(**batch, task_ids=torch.tensor([0, 3, 1])).logits
    for row, task in enumerate([0, 3, 1]):
        single = {key: value[row : row + 1] for key, value in batch.items()}
        alone = adapted(**single, task_ids=torch.tensor([task])).logits
        torch.testing.assert_close(mixed[row : row + 1], alone, rtol=1e-5, atol=1e-5)
    with adapted.routing(task_ids=[0, 3, 1]):  # the context manager form (for generate())
        torch.testing.assert_close(adapted.model(**batch).logits, mixed)
    assert adapted.context.task_ids is None  # cleared after the block


def test_training_forward_adds_weighted_aux_losses(batch):
    config = AdapterConfig.from_preset("med_moe_lora")
    adapted = inject_adapter(make_tiny_llama(), config)
    randomize_adapter(adapted)
    adapted.train()
    domains = torch.tensor([0, 1, 1])
    out = adapted(**batch, labels=batch["input_ids"], domain_labels=domains)
    terms = out["aux_losses"]
    assert set(terms) == {"balance", "preservation", "base_l2"}
    assert all(value > 0 for value in terms.values())
    expected = out["lm_loss"] + (
        config.balance_weight * terms["balance"]
        + config.preservation_weight * terms["preservation"]
        + config.base_l2_weight * terms["base_l2"]
    )
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    router_grads = [layer.router.weight.grad for layer in adapted.adapter_layers().values()]
    assert all(grad is not None and grad.abs().sum() > 0 for grad in router_grads)
    # evaluation mode: the plain model loss, no router probabilities kept
    adapted.eval()
    assert "aux_losses" not in adapted(**batch, labels=batch["input_ids"])
    assert all(not layer.kept_router_probs for layer in adapted.adapter_layers().values())


def test_parameter_groups_scale_the_base_experts_learning_rate(tiny_llama):
    adapted = inject_adapter(tiny_llama, AdapterConfig.from_preset("med_moe_lora", base_lr_scale=0.25))
    groups = {group["name"]: group for group in adapted.parameter_groups(1e-3, weight_decay=0.1)}
    assert groups["base"]["lr"] == pytest.approx(2.5e-4)
    assert groups["experts"]["lr"] == pytest.approx(1e-3)
    assert groups["router"]["weight_decay"] == 0.0
    grouped = sum(p.numel() for group in groups.values() for p in group["params"])
    assert grouped == sum(p.numel() for p in adapted.parameters() if p.requires_grad)


def test_missing_target_module_fails_clearly():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(ValueError, match=r"target module\(s\) .* not found"):
        inject_adapter(model, AdapterConfig.from_preset("lora"))


def test_layers_are_moelora_linears(tiny_llama):
    adapted = inject_adapter(tiny_llama, AdapterConfig.from_preset("lora"))
    assert isinstance(adapted.model.model.layers[0].self_attn.q_proj, MoELoRALinear)
