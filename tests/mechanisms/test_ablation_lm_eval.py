"""``lm_eval --model medmoelora --model_args ...,disable_experts=SPEC``: the ablated adapter as lm-eval scores it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medmoelora_eval.lm_model import MedMoELoRALM
from tests.lm_eval.helpers import load_base, reference_lm, request, save_random_adapter

# Nats. An adapter with every expert disabled computes W0 x through its own layer, not the base model's:
# on one CPU the two agree bit for bit, but CI's CPU rounded them apart, so equality is to float32 rounding
# of a loglikelihood of about -11 (its spacing there is 1e-6), far below what any expert moves (asserted).
TOLERANCE = 1e-5

REQUESTS = [
    request("medmoe_pubmedqa", ("Question: Is aspirin an anticoagulant?\nAnswer:", " yes")),
    request("medmoe_medqa", ("Question: Which organ makes insulin?\nAnswer:", " the pancreas"), doc_id=1),
]


@pytest.fixture(scope="module")
def med_moe_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_adapter(load_base(tiny_model_dir), tmp_path_factory.mktemp("ablation") / "med", "med_moe_lora")


def _loglikelihoods(lm) -> torch.Tensor:
    return torch.tensor([value for value, _greedy in lm.loglikelihood(REQUESTS)], dtype=torch.float64)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=0.0, atol=TOLERANCE)


def _lm(tiny_model_dir: Path, adapter: Path, spec: str | None) -> MedMoELoRALM:
    return MedMoELoRALM(
        pretrained=str(tiny_model_dir), adapter=str(adapter), disable_experts=spec, device="cpu", batch_size=1
    )


def test_every_expert_removed_scores_as_the_base_model_and_none_as_the_adapter(
    tiny_model_dir: Path, med_moe_adapter: Path
) -> None:
    base = _loglikelihoods(reference_lm(load_base(tiny_model_dir), tiny_model_dir))
    unablated = _loglikelihoods(_lm(tiny_model_dir, med_moe_adapter, None))
    assert (unablated - base).abs().max() > 100 * TOLERANCE  # the experts move it far beyond the tolerance
    assert _same(_loglikelihoods(_lm(tiny_model_dir, med_moe_adapter, "*:*")), base)
    assert _same(_loglikelihoods(_lm(tiny_model_dir, med_moe_adapter, "base+specialists")), base)
    assert torch.equal(_loglikelihoods(_lm(tiny_model_dir, med_moe_adapter, "none")), unablated)  # one code path
    without_base = _lm(tiny_model_dir, med_moe_adapter, "base")
    assert (_loglikelihoods(without_base) - unablated).abs().max() > 100 * TOLERANCE
    assert without_base.get_model_info()["disable_experts"] == "base"
    assert set(without_base.disabled_experts) == set(range(without_base.adapted.num_layers))


def test_an_ablated_lora_adapter_is_evaluated_unmerged(tiny_model_dir: Path, tmp_path: Path) -> None:
    """LoRA evaluates merged into W0 by default; a merged weight would ignore the ablation."""
    lora = save_random_adapter(load_base(tiny_model_dir), tmp_path / "lora", "lora")
    base = _loglikelihoods(reference_lm(load_base(tiny_model_dir), tiny_model_dir))
    assert _lm(tiny_model_dir, lora, None).merge
    ablated = _lm(tiny_model_dir, lora, "*:*")
    assert not ablated.merge and ablated.get_model_info()["merged"] is False
    assert (_loglikelihoods(_lm(tiny_model_dir, lora, None)) - base).abs().max() > 100 * TOLERANCE
    assert _same(_loglikelihoods(ablated), base)
