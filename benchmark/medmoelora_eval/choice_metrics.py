"""Per-document metrics of a multiple-choice task that keep their signal where accuracy has none.

A 135M model sits near chance on MedQA and MMLU, so accuracy moves in steps of one document and cannot
separate the methods. The same requests (one loglikelihood per choice) also give how much probability
the model puts on the gold answer, which moves with every document. With ``ll_c`` the loglikelihood of
choice ``c`` and ``g`` the gold index:

    p = softmax(ll)                                    the choices' probabilities, renormalised over the choices
    gold_logprob = log p_g = ll_g - logsumexp(ll)      <= 0, higher is better (0: all mass on the gold answer)
    brier = sum_c (p_c - [c == g])^2                   in [0, 2], lower is better (lm-eval's brier_score, per document)

The suite's multiple-choice tasks return these beside lm-eval's own ``acc`` (and ``acc_norm``) through
``process_results: !function utils.process_results``; both aggregate by ``mean``, so lm-eval reports a
standard error for each and ``--log_samples`` keeps the per-document values. ``acc`` and ``acc_norm``
are computed exactly as lm-eval's built-in multiple-choice path does (``tests/eval`` compares them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# metric -> higher_is_better, for the task YAMLs' metric_list and the tables.
CONTINUOUS_METRICS = {"gold_logprob": True, "brier": False}


def gold_index(target: int | str, choices: Sequence[str]) -> int:
    """The gold choice's index from ``doc_to_target`` (an index, or a choice's text as PubMedQA's)."""
    return choices.index(target) if isinstance(target, str) else int(target)


def choice_metrics(
    results: Sequence[tuple[float, bool]], choices: Sequence[str], target: int | str, acc_norm: bool = False
) -> dict[str, float]:
    """``acc`` (``acc_norm``), ``gold_logprob`` and ``brier`` of one document from lm-eval's results.

    ``results`` holds one ``(loglikelihood, is_greedy)`` per choice, in the order of ``choices``.
    """
    loglikelihoods = np.array([loglikelihood for loglikelihood, _ in results], dtype=np.float64)  # (C,)
    gold = gold_index(target, choices)
    log_probs = loglikelihoods - np.logaddexp.reduce(loglikelihoods)  # (C,) log softmax over the choices
    one_hot = np.eye(len(choices))[gold]  # (C,)
    metrics = {"acc": float(np.argmax(loglikelihoods) == gold)}
    if acc_norm:  # lm-eval: the loglikelihood per character of the choice's text
        lengths = np.array([float(len(choice)) for choice in choices])
        metrics["acc_norm"] = float(np.argmax(loglikelihoods / lengths) == gold)
    metrics["gold_logprob"] = float(log_probs[gold])
    metrics["brier"] = float(np.sum((np.exp(log_probs) - one_hot) ** 2))
    return metrics
