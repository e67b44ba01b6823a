"""Gradient checkpointing recomputes the decoder layers in backward: routing, losses, gradients and
routing statistics must come out exactly as without it, for every method."""

from __future__ import annotations

import pytest
import torch

from medmoelora import AdapterConfig, MoELoRALinear, UserError, inject_adapter, routing_stats, track_routing
from tests.tiny import make_tiny_llama, randomize_adapter

METHODS = ["lora", "multi_lora", "uniform_moe", "med_moe_lora"]
TASK_IDS = torch.tensor([0, 3, 1])  # Multi-LoRA: one training task per sequence
DOMAIN_LABELS = torch.tensor([0, 1, 1])  # general, medical, medical: the preservation loss sees both


def adapted_in_training(preset: str, checkpointing: str | None, **overrides: object):
    """Tiny model + adapter in training mode; checkpointing None, "adapted" (the wrapper's method) or
    "base" (enabled on the transformers model before injection, as plain transformers code does)."""
    model = make_tiny_llama()
    if checkpointing == "base":
        model.activation_checkpointing_enable({"use_reentrant": False})
    adapted = inject_adapter(model, AdapterConfig.from_preset(preset, **overrides))
    randomize_adapter(adapted)  # non-zero B: every expert and router gets a gradient
    adapted.train()
    if checkpointing == "adapted":
        adapted.activation_checkpointing_enable()
    return adapted


def count_layer_forwards(adapted) -> list[int]:
    calls = [0]

    def count(*_: object) -> None:
        calls[0] += 1

    for layer in adapted.adapter_layers().values():
        layer.register_forward_hook(count)
    return calls


def one_step(adapted, batch, preset: str, batches: int = 1) -> dict[str, object]:
    """``batches`` forwards (task ids rotated between them), one backward of their summed loss."""
    calls = count_layer_forwards(adapted)
    torch.manual_seed(0)  # adapter dropout, when on, draws the same masks in both runs
    with track_routing(adapted):
        losses = []
        for shift in range(batches):
            task_ids = TASK_IDS.roll(shift) if preset == "multi_lora" else None
            output = adapted(**batch, labels=batch["input_ids"], task_ids=task_ids, domain_labels=DOMAIN_LABELS)
            losses.append(output.loss)
        total = torch.stack(losses).sum()
        total.backward()
    gradients = {name: p.grad.clone() for name, p in adapted.named_parameters() if p.grad is not None}
    kept_probs = [layer.kept_router_probs for layer in adapted.adapter_layers().values()]
    return {
        "loss": total.detach(),
        "gradients": gradients,
        "stats": routing_stats(adapted),
        "forwards": calls[0],
        "kept_probs": kept_probs,
    }


def assert_same_step(checkpointed: dict, plain: dict) -> None:
    torch.testing.assert_close(checkpointed["loss"], plain["loss"], rtol=1e-6, atol=1e-6)
    assert checkpointed["gradients"].keys() == plain["gradients"].keys()
    assert plain["gradients"], "no adapter parameter got a gradient"
    for name, gradient in plain["gradients"].items():
        torch.testing.assert_close(checkpointed["gradients"][name], gradient, rtol=1e-5, atol=1e-7, msg=name)
    assert checkpointed["stats"]["modules"].keys() == plain["stats"]["modules"].keys()
    for path, entry in plain["stats"]["modules"].items():
        other = checkpointed["stats"]["modules"][path]
        assert other["tokens"] == entry["tokens"], path  # counted once per real forward, real tokens only
        assert other["mean_gate"] == pytest.approx(entry["mean_gate"], abs=1e-9), path
        assert other["top1_share"] == pytest.approx(entry["top1_share"], abs=1e-9), path
    assert all(not probs for probs in checkpointed["kept_probs"]), "a recomputation kept router probabilities"
    # the test means something only if backward really re-ran the layers
    assert checkpointed["forwards"] > plain["forwards"]


@pytest.mark.parametrize("preset", METHODS)
def test_checkpointing_gives_the_same_loss_gradients_and_routing_stats(preset, batch):
    plain = one_step(adapted_in_training(preset, None), batch, preset)
    checkpointed = one_step(adapted_in_training(preset, "adapted"), batch, preset)
    assert_same_step(checkpointed, plain)
    if preset != "lora":
        assert plain["stats"]["modules"], "nothing was routed"


@pytest.mark.parametrize("preset", ["multi_lora", "med_moe_lora"])
def test_two_forwards_before_one_backward_recompute_each_with_its_own_routing_inputs(preset, batch):
    # Each recomputation must replay the inputs of the forward it repeats, not the latest ones.
    plain = one_step(adapted_in_training(preset, None), batch, preset, batches=2)
    checkpointed = one_step(adapted_in_training(preset, "adapted"), batch, preset, batches=2)
    assert_same_step(checkpointed, plain)


def test_checkpointing_keeps_dropout_masks(batch):
    plain = one_step(adapted_in_training("med_moe_lora", None, dropout=0.2), batch, "med_moe_lora")
    checkpointed = one_step(adapted_in_training("med_moe_lora", "adapted", dropout=0.2), batch, "med_moe_lora")
    assert_same_step(checkpointed, plain)


@pytest.mark.parametrize("preset", ["lora", "uniform_moe", "med_moe_lora"])
def test_checkpointing_enabled_on_the_base_model_still_counts_statistics_once(preset, batch):
    # Soft routing needs no inputs beyond the hidden states; only the bookkeeping must not run twice.
    plain = one_step(adapted_in_training(preset, None), batch, preset)
    checkpointed = one_step(adapted_in_training(preset, "base"), batch, preset)
    assert_same_step(checkpointed, plain)


def test_task_routing_under_base_model_checkpointing_fails_in_one_line_naming_the_fix(batch):
    adapted = adapted_in_training("multi_lora", "base")
    output = adapted(**batch, labels=batch["input_ids"], task_ids=TASK_IDS)
    with pytest.raises(UserError) as error:
        output.loss.backward()
    message = str(error.value)
    assert "\n" not in message and "adapted.activation_checkpointing_enable()" in message


def test_reentrant_checkpointing_is_refused(batch):
    adapted = adapted_in_training("multi_lora", None)
    with pytest.raises(UserError, match="use_reentrant"):
        adapted.activation_checkpointing_enable({"use_reentrant": True})


def test_a_callers_context_fn_still_runs(batch):
    entered = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def __enter__(self) -> None:
            entered.append(self.name)

        def __exit__(self, *_: object) -> None:
            return None

    adapted = adapted_in_training("multi_lora", None)
    adapted.activation_checkpointing_enable({"context_fn": lambda: (Recorder("forward"), Recorder("recompute"))})
    adapted(**batch, labels=batch["input_ids"], task_ids=TASK_IDS).loss.backward()
    assert "forward" in entered and "recompute" in entered


def test_layers_see_the_original_routing_inputs_during_recomputation(batch):
    adapted = adapted_in_training("multi_lora", "adapted")
    seen: list[tuple[torch.Tensor | None, torch.Tensor | None, bool]] = []
    layer = next(iter(adapted.adapter_layers().values()))
    assert isinstance(layer, MoELoRALinear)
    layer.register_forward_pre_hook(
        lambda module, _: seen.append((module.context.task_ids, module.context.token_mask, module.context.recomputing))
    )
    adapted(**batch, labels=batch["input_ids"], task_ids=TASK_IDS).loss.backward()
    (task_ids, mask, recomputing), (again_task_ids, again_mask, again_recomputing) = seen
    assert not recomputing and again_recomputing
    assert torch.equal(again_task_ids, task_ids) and torch.equal(again_mask, mask)
    assert adapted.context.task_ids is None and not adapted.context.recomputing  # cleared after backward


def test_the_older_method_name_enables_the_same_checkpointing(batch):
    plain = one_step(adapted_in_training("multi_lora", None), batch, "multi_lora")
    adapted = adapted_in_training("multi_lora", None)
    adapted.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert_same_step(one_step(adapted, batch, "multi_lora"), plain)
    adapted.gradient_checkpointing_disable()
    assert one_step(adapted, batch, "multi_lora")["forwards"] == plain["forwards"]
