"""`MoELoRAModel.forward_unpadded` (each sequence on its real tokens, logits only where asked) against the
padded forward of the same batch: the same logits, aux losses and gradients, for every routing kind."""

from __future__ import annotations

import pytest
import torch

from medmoelora import AdapterConfig, inject_adapter
from medmoelora.errors import UserError
from medmoelora.training.data import IGNORE_INDEX
from medmoelora.training.objective import answer_nll, answer_nll_at, answer_positions
from tests.tiny import TINY_VOCAB, make_tiny_llama, randomize_adapter

LENGTHS = (9, 4, 12)  # one row at full length, two padded
TASK_IDS = torch.tensor([0, 2, 1])
DOMAINS = torch.tensor([1, 0, 1])


def right_padded() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(1, TINY_VOCAB, (len(LENGTHS), max(LENGTHS)), generator=generator)  # (B, T)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, length in enumerate(LENGTHS):
        attention_mask[row, :length] = 1
        input_ids[row, length:] = 0
        labels[row, length - 3 : length] = input_ids[row, length - 3 : length]  # a 3-token answer at the end
    labels[1, :] = IGNORE_INDEX
    labels[1, 3] = input_ids[1, 3]  # row 1: a 1-token answer, as multiple choice has
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def adapted_model(preset: str):
    torch.manual_seed(0)
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset(preset))
    randomize_adapter(adapted)
    adapted.train()
    return adapted


def padded_step(adapted, batch, averaging: str):
    output = adapted(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        task_ids=TASK_IDS,
        domain_labels=DOMAINS,
    )
    loss = answer_nll(output.logits, batch["labels"], averaging)
    aux = output.get("aux_losses")
    return output.logits, loss, aux


def unpadded_step(adapted, batch, averaging: str):
    positions = answer_positions(batch["labels"])
    logits, aux = adapted.forward_unpadded(
        batch["input_ids"], batch["attention_mask"], positions, task_ids=TASK_IDS, domain_labels=DOMAINS
    )
    return logits, positions, answer_nll_at(logits, batch["labels"], positions, averaging), aux


def gradients(adapted) -> dict[str, torch.Tensor]:
    found = {name: p.grad.clone() for name, p in adapted.named_parameters() if p.grad is not None}
    adapted.zero_grad(set_to_none=True)
    return found


@pytest.mark.parametrize("averaging", ["example", "token"])
@pytest.mark.parametrize("preset", ["lora", "multi_lora", "uniform_moe", "med_moe_lora"])
def test_unpadded_step_equals_the_padded_one(preset, averaging):
    adapted = adapted_model(preset)
    batch = right_padded()
    padded_logits, padded_loss, padded_aux = padded_step(adapted, batch, averaging)
    total = padded_loss + (adapted.weighted_aux_loss(padded_aux) if padded_aux is not None else 0.0)
    total.backward()
    padded_gradients = gradients(adapted)

    logits, positions, loss, aux = unpadded_step(adapted, batch, averaging)
    for row, (row_logits, row_positions) in enumerate(zip(logits, positions, strict=True)):
        assert row_logits.shape == (len(row_positions), padded_logits.shape[-1])  # only the answer positions
        torch.testing.assert_close(row_logits, padded_logits[row, row_positions], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, padded_loss, rtol=1e-6, atol=1e-6)
    assert (aux is None) == (padded_aux is None)
    if aux is not None:
        assert aux.keys() == padded_aux.keys()
        for name in aux:
            torch.testing.assert_close(aux[name], padded_aux[name], rtol=1e-5, atol=1e-6, msg=name)
    (loss + (adapted.weighted_aux_loss(aux) if aux is not None else 0.0)).backward()
    unpadded_gradients = gradients(adapted)
    assert unpadded_gradients.keys() == padded_gradients.keys() and padded_gradients
    for name, gradient in padded_gradients.items():
        torch.testing.assert_close(unpadded_gradients[name], gradient, rtol=1e-4, atol=1e-6, msg=name)
    assert all(not layer.kept_router_probs for layer in adapted.adapter_layers().values())


def test_the_aux_losses_pool_the_rows_tokens_not_average_per_row():
    # The balance loss is not linear in the tokens: the mean of per-row losses differs from the batch's.
    adapted = adapted_model("med_moe_lora")
    batch = right_padded()
    _, _, padded_aux = padded_step(adapted, batch, "example")
    per_row = [
        adapted(input_ids=batch["input_ids"][row : row + 1, :length], domain_labels=DOMAINS[row : row + 1])[
            "aux_losses"
        ]["balance"]
        for row, length in enumerate(LENGTHS)
    ]
    assert not torch.allclose(torch.stack(per_row).mean(), padded_aux["balance"], rtol=1e-4)
    _, _, _, aux = unpadded_step(adapted, batch, "example")
    torch.testing.assert_close(aux["balance"], padded_aux["balance"], rtol=1e-5, atol=1e-6)


def test_a_batch_of_truncated_answers_gives_zero_loss_with_a_graph():
    adapted = adapted_model("lora")
    batch = right_padded()
    batch["labels"][:] = IGNORE_INDEX
    _, _, loss, _ = unpadded_step(adapted, batch, "example")
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()  # nothing to learn, but no error either (as the padded path)


def test_left_padding_is_refused_in_one_line():
    adapted = adapted_model("lora")
    batch = right_padded()
    left = batch["attention_mask"].flip(1)
    with pytest.raises(UserError, match="right-padded"):
        adapted.forward_unpadded(batch["input_ids"], left, answer_positions(batch["labels"]))
