"""The language-modelling part of the training objective: how answer tokens are averaged.

The mixture's answers differ in length by two orders of magnitude: a multiple-choice answer (MedQA,
MedMCQA, PubMedQA) is one token, a GSM8K solution about 120 (SmolLM2's tokenizer, 500 examples per
task). A mean over all answer tokens of a batch (transformers' default, ``token``) therefore gives
GSM8K about 98% of the gradient, and the model learns to write worked solutions after ``Answer:``,
the very prompt ending the medical tasks are scored on. ``example`` (the default) averages each
sequence's answer tokens first and then the sequences, so every example weighs the same:

    token:    L = sum_b sum_t m_bt * nll_bt / sum_b sum_t m_bt
    example:  L = 1/B * sum_b (sum_t m_bt * nll_bt / sum_t m_bt)        m_bt = 1 on answer tokens
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medmoelora.training.data import IGNORE_INDEX


def answer_nll(logits: torch.Tensor, labels: torch.Tensor, averaging: str = "example") -> torch.Tensor:
    """logits: (B, T, V), labels: (B, T) with IGNORE_INDEX off the answer -> scalar mean NLL (see module doc)."""
    # token t predicts token t + 1: (B, T - 1, V) against (B, T - 1), in fp32 like transformers' loss
    shifted_labels = labels[:, 1:]
    nll = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), shifted_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B, T - 1), 0 where ignored
    mask = (shifted_labels != IGNORE_INDEX).to(nll.dtype)  # (B, T - 1)
    if averaging == "token":
        return nll.sum() / mask.sum().clamp(min=1)
    per_example = nll.sum(1) / mask.sum(1).clamp(min=1)  # (B,)
    has_answer = mask.sum(1) > 0  # (B,): a fully truncated answer has nothing to learn
    return per_example[has_answer].mean() if has_answer.any() else nll.sum() * 0


def answer_positions(labels: torch.Tensor) -> list[torch.Tensor]:
    """labels: (B, T) -> per row, the positions t whose logits predict an answer token (label t + 1): (n_b,)."""
    return [(row[1:] != IGNORE_INDEX).nonzero().squeeze(1) for row in labels]


def answer_nll_at(
    logits: list[torch.Tensor], labels: torch.Tensor, positions: list[torch.Tensor], averaging: str = "example"
) -> torch.Tensor:
    """`answer_nll` from each row's logits at its answer positions only (`MoELoRAModel.forward_unpadded`):
    logits[b] (n_b, V) at positions[b] (n_b,) of `answer_positions`, labels (B, T) -> the same scalar."""
    nll = [
        F.cross_entropy(row_logits.float(), row_labels[row_positions + 1], reduction="none")  # (n_b,)
        for row_logits, row_labels, row_positions in zip(logits, labels, positions, strict=True)
    ]
    answered = [row_nll for row_nll in nll if row_nll.numel() > 0]
    if not answered:  # every answer truncated away: zero, still attached to the graph
        return sum(row_logits.sum() for row_logits in logits) * 0
    if averaging == "token":
        every = torch.cat(answered)  # (sum_b n_b,)
        return every.sum() / every.numel()
    return torch.stack([row_nll.mean() for row_nll in answered]).mean()
