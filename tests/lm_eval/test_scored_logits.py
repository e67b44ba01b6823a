"""`ScoredLogitsLM`: HFLM's loglikelihood results with the LM head only at the scored positions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lm_eval.models.huggingface import HFLM

from medmoelora_eval.lm_model import MedMoELoRALM
from medmoelora_eval.scored_logits import ScoredLogitsLM
from tests.lm_eval.helpers import request

CONTEXT = "Question: A 45-year-old man has chest pain radiating to the left arm after exercise. Which test first?"
REQUESTS = [
    (CONTEXT + "\nAnswer:", " A"),  # four one-token choices on one context: one forward (lm-eval's cache)
    (CONTEXT + "\nAnswer:", " B"),
    (CONTEXT + "\nAnswer:", " C"),
    (CONTEXT + "\nAnswer:", " D"),
    ("Is aspirin an anticoagulant?\nAnswer:", " yes"),
    ("Is aspirin an anticoagulant?\nAnswer:", " no, it is an antiplatelet drug"),  # several tokens
    ("Q:", " maybe"),  # short beside long ones in one padded batch
    (CONTEXT * 3 + "\nAnswer:", " an electrocardiogram"),  # longer than max_length: cut from the left
]
MAX_LENGTH = 48


def lm_head_rows(lm: Any, requests: list[Any]) -> tuple[list[tuple[float, bool]], int]:
    """The results of ``lm.loglikelihood`` and how many positions went through the LM head."""
    rows = []
    hook = lm.model.lm_head.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[:-1].numel()))
    try:
        return lm.loglikelihood(requests), sum(rows)
    finally:
        hook.remove()


def assert_same_results(results: list[tuple[float, bool]], expected: list[tuple[float, bool]]) -> None:
    torch.testing.assert_close(torch.tensor([v for v, _ in results]), torch.tensor([v for v, _ in expected]))
    assert [greedy for _, greedy in results] == [greedy for _, greedy in expected]


@pytest.fixture(scope="module")
def requests() -> list[Any]:
    return [request("medmoe_medqa", arguments, doc_id=i) for i, arguments in enumerate(REQUESTS)]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_same_loglikelihoods_as_hflm_with_the_lm_head_at_scored_positions_only(
    tiny_model_dir: Path, requests: list[Any], batch_size: int
) -> None:
    options = {"pretrained": str(tiny_model_dir), "device": "cpu", "batch_size": batch_size, "max_length": MAX_LENGTH}
    expected, hf_rows = lm_head_rows(HFLM(**options), requests)
    results, scored_rows = lm_head_rows(ScoredLogitsLM(**options), requests)
    assert_same_results(results, expected)
    # HFLM: every position of every padded sequence; here the scored ones (the union over a batch's rows).
    assert scored_rows < hf_rows / 3


def test_rolling_loglikelihood_and_full_vocabulary_fallback_match_hflm(tiny_model_dir: Path) -> None:
    options = {"pretrained": str(tiny_model_dir), "device": "cpu", "batch_size": 2, "max_length": 16}
    text = [request("medmoe_general_lm", (CONTEXT,), "loglikelihood_rolling")]
    hf, scored = HFLM(**options), ScoredLogitsLM(**options)
    torch.testing.assert_close(
        torch.tensor(scored.loglikelihood_rolling(text)), torch.tensor(hf.loglikelihood_rolling(text))
    )
    off = ScoredLogitsLM(scored_logits_only=False, **options)
    requests = [request("medmoe_medqa", arguments) for arguments in REQUESTS[:4]]
    (expected, hf_rows), (results, off_rows) = lm_head_rows(hf, requests), lm_head_rows(off, requests)
    assert_same_results(results, expected)
    assert off_rows == hf_rows  # scored_logits_only=False is HFLM's own loop


def test_soft_routing_adapter_scores_the_same_on_both_paths(
    tiny_model_dir: Path, adapters: dict[str, Path], requests: list[Any]
) -> None:
    def lm(scored_logits_only: bool) -> MedMoELoRALM:
        return MedMoELoRALM(
            pretrained=str(tiny_model_dir),
            adapter=str(adapters["med_moe_lora"]),
            device="cpu",
            batch_size=3,
            max_length=MAX_LENGTH,
            scored_logits_only=scored_logits_only,
        )

    scored, full = lm(True), lm(False)
    (results, scored_rows), (expected, full_rows) = lm_head_rows(scored, requests), lm_head_rows(full, requests)
    assert_same_results(results, expected)
    assert scored_rows < full_rows / 3
    assert scored.get_model_info()["scored_logits_only"] is True


def test_greedy_match_flags_follow_the_model(tiny_model_dir: Path) -> None:
    """Continuations built from the model's own argmax: exact-match True where greedy, False elsewhere."""
    options = {"pretrained": str(tiny_model_dir), "device": "cpu", "batch_size": 2}
    hf, scored = HFLM(**options), ScoredLogitsLM(**options)
    context = torch.randint(1, hf.model.config.vocab_size, (12,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        first = int(hf.model(torch.tensor([context])).logits[0, -1].argmax())
        second = int(hf.model(torch.tensor([[*context, first]])).logits[0, -1].argmax())
        worst = int(hf.model(torch.tensor([context])).logits[0, -1].argmin())
    token_requests = [(None, context, [first]), (None, context, [worst]), (None, context, [first, second])]
    token_requests.append((None, context[:5], [first, worst]))
    expected = hf._loglikelihood_tokens(token_requests)
    results = scored._loglikelihood_tokens(token_requests)
    assert_same_results(results, expected)
    assert [greedy for _, greedy in results][:3] == [True, False, True]


def test_a_model_without_logits_to_keep_takes_hflms_loop(tiny_model_dir: Path, requests: list[Any]) -> None:
    options = {"pretrained": str(tiny_model_dir), "device": "cpu", "batch_size": 3, "max_length": MAX_LENGTH}
    hf, scored = HFLM(**options), ScoredLogitsLM(**options)
    forward = scored.model.forward

    def forward_without_logits_to_keep(input_ids: torch.Tensor, attention_mask: Any = None) -> Any:
        return forward(input_ids, attention_mask=attention_mask)

    scored.model.forward = forward_without_logits_to_keep  # a model class that predates logits_to_keep
    (expected, hf_rows), (results, scored_rows) = lm_head_rows(hf, requests), lm_head_rows(scored, requests)
    assert_same_results(results, expected)
    assert scored_rows == hf_rows
