"""lm-eval's loglikelihood with the LM head and the log-softmax only where a continuation is scored.

HFLM's ``_loglikelihood_tokens`` asks the model for logits over the whole vocabulary at every position of
every padded sequence, takes their log-softmax, and keeps the continuation's few positions. For a batch
of 8 multiple-choice prompts of 1,000 tokens with a one-token answer, that is a ``[batch, length, vocab]``
tensor of 8 x 1,000 x 49,152 floats (1.6 GB for SmolLM2's vocabulary) of which one row per sequence is
read, and the LM head is a fifth of SmolLM2-135M's forward FLOPs.

`ScoredLogitsLM._loglikelihood_tokens` is the same request loop (the same order, batching, one-token
continuation cache, left truncation and results), with one difference: it passes transformers'
``logits_to_keep`` the positions that some sequence of the batch scores, so the model applies its LM head
there alone (``hidden[:, kept]``), and the log-softmax runs on those rows. A position's log-probabilities are
the same numbers either way, up to float rounding of a matrix product of another height (tested against
HFLM to 1e-5). Seq2seq models, and models whose forward has no ``logits_to_keep``, take HFLM's own loop.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from lm_eval.models.utils_hf import pad_and_concat
from tqdm import tqdm

log = logging.getLogger(__name__)

# (string pair for the cache hook, context tokens, continuation tokens), as lm-eval passes requests on.
TokenRequest = tuple[tuple[str, str] | None, list[int], list[int]]


def longest_first(request: TokenRequest) -> tuple[int, tuple[int, ...]]:
    """HFLM's sort key: longest sequence first, so a batch's first sequence sets its padded length."""
    tokens = request[1] + request[2]
    return -len(tokens), tuple(tokens)


def one_token_group(request: TokenRequest) -> list[int]:
    """HFLM's key for sharing one forward between continuations that differ in their last token only."""
    return request[1] + request[2][:-1]


class ScoredLogitsLM(HFLM):
    """HFLM whose loglikelihood computes logits only at the positions it scores (see the module docstring)."""

    def __init__(self, *args: Any, scored_logits_only: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scored_logits_only = bool(scored_logits_only)

    def _keeps_scored_logits(self) -> bool:
        """Whether this model can take the scored-positions path: causal, with ``logits_to_keep``."""
        if not self.scored_logits_only or self.backend != "causal":
            return False
        return "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def _scored_logits(self, inputs: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """Logits at positions ``kept`` of every sequence: [batch, len(kept), vocab] (HFLM's ``_model_call``
        with ``logits_to_keep``)."""
        autocast = torch.autocast(
            device_type=self.device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        )
        with torch.no_grad(), autocast:
            return self.model(inputs, logits_to_keep=kept).logits

    def _input_tokens(self, context: list[int], continuation: list[int]) -> list[int]:
        """The model's input for one request: context + continuation minus its last token, cut from the left
        to the model's length (HFLM's rule and warning)."""
        total = len(context) + len(continuation)
        if total > self.max_length + 1:
            log.warning(
                "Combined length of context (%d) and continuation (%d) exceeds the model's maximum length (%d); "
                "truncating %d tokens from the left.",
                len(context), len(continuation), self.max_length, total - self.max_length + 1,
            )  # fmt: skip
        return (context + continuation)[-(self.max_length + 1) :][:-1]

    def _loglikelihood_tokens(
        self, requests: list[TokenRequest], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        if not self._keeps_scored_logits():
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        ordered = Collator(
            requests,
            sort_fn=longest_first,
            group_by="contexts" if self.logits_cache else None,
            group_fn=one_token_group,
        )
        batch_size = self.batch_size if self.batch_size != "auto" else (override_bs or 0)
        batch_fn = None
        if self.batch_size == "auto" and len(ordered) > 0 and not override_bs:
            self.batch_sizes = {}  # detect again for these requests, as HFLM does
            batch_fn = self._batch_scheduler
        results: list[tuple[float, bool]] = []
        progress = tqdm(
            total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests"
        )
        for chunk in ordered.get_batched(n=batch_size, batch_fn=batch_fn):
            rows = [self._input_tokens(context, continuation) for _, context, continuation in chunk]
            # Where each sequence's continuation is predicted: the last len(continuation) input positions.
            spans = [
                range(len(row) - len(continuation), len(row))
                for row, (_, _, continuation) in zip(rows, chunk, strict=True)
            ]
            kept = torch.tensor(sorted({position for span in spans for position in span}), device=self.device)
            inputs = pad_and_concat(
                max(map(len, rows)),
                [torch.tensor(row, dtype=torch.long, device=self.device) for row in rows],
                padding_side="right",
            )  # [batch, longest]
            logprobs = F.log_softmax(self._scored_logits(inputs, kept), dim=-1, dtype=self.softmax_dtype)
            # logprobs: [batch, len(kept), vocab]
            for (strings_key, context, continuation), row_logprobs, span in zip(chunk, logprobs, spans, strict=True):
                span_rows = torch.searchsorted(kept, torch.tensor(list(span), device=self.device))
                continuation_logprobs = row_logprobs[span_rows].unsqueeze(0)  # [1, len(continuation), vocab]
                greedy = continuation_logprobs.argmax(dim=-1)  # [1, len(continuation)]
                # Continuations sharing this forward (one-token cache): each gets its own answer.
                for strings, tokens, shared_logprobs in ordered.get_cache(
                    req_str=strings_key, cxt_toks=context, cont_toks=continuation, logits=continuation_logprobs
                ):
                    targets = torch.tensor(tokens, dtype=torch.long, device=self.device).unsqueeze(0)  # [1, len]
                    exact = bool((greedy[:, -targets.shape[1] :] == targets).all())
                    logprob = torch.gather(shared_logprobs, 2, targets.unsqueeze(-1)).squeeze(-1)  # [1, len]
                    answer = (float(logprob.sum()), exact)
                    results.append(answer)
                    if strings is not None:  # rolling windows have no cache key (HFLM caches them per document)
                        self.cache_hook.add_partial("loglikelihood", strings, answer)
                    progress.update(1)
        progress.close()
        return ordered.get_original(results)
