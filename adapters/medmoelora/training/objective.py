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
