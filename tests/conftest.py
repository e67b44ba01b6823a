"""Shared test fixtures: a tiny random Llama built from a config, fixed seeds, offline."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.tiny import SEED, TINY_VOCAB, make_tiny_llama


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(SEED)
    input_ids = torch.randint(0, TINY_VOCAB, (3, 10), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0  # one left-padded sequence
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The `tiny` spec (random tiny Llama, SmolLM2 tokenizer) materialised once per session: a plain HF directory."""
    from medmoelora.base_models import materialize

    return materialize("tiny", tmp_path_factory.mktemp("models") / "tiny").path
