"""Subspace overlap: principal angles between the experts' updates B A."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medmoelora import AdapterConfig, inject_adapter, save_adapter
from medmoelora_eval.mechanisms.subspace import MODULE_COLUMNS, by_layer, main, principal_angles, update_subspaces
from tests.tiny import make_tiny_llama

D, RANK = 12, 3


def test_identical_subspaces_have_angles_zero_and_orthogonal_ones_pi_over_2() -> None:
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((D, RANK))
    mixed = basis @ rng.standard_normal((RANK, RANK))  # another basis of the same span
    np.testing.assert_allclose(principal_angles(basis, mixed), 0.0, atol=1e-6)
    q, _ = np.linalg.qr(rng.standard_normal((D, 2 * RANK)))
    np.testing.assert_allclose(principal_angles(q[:, :RANK], q[:, RANK:]), math.pi / 2, atol=1e-7)
    # One shared direction, the rest orthogonal: one angle 0, the others pi/2.
    shared = (
        np.concatenate([q[:, :1], q[:, 1:RANK]], axis=1),
        np.concatenate([q[:, :1], q[:, RANK : 2 * RANK - 1]], axis=1),
    )
    np.testing.assert_allclose(principal_angles(*shared), [0.0, math.pi / 2, math.pi / 2], atol=1e-7)


def test_update_subspaces_are_the_column_and_row_spaces_of_b_a() -> None:
    rng = np.random.default_rng(1)
    lora_a, lora_b = rng.standard_normal((RANK, D + 2)), rng.standard_normal((D, RANK))
    spaces = update_subspaces(lora_a, lora_b)
    assert spaces["output"].shape == (D, RANK) and spaces["input"].shape == (D + 2, RANK)
    np.testing.assert_allclose(principal_angles(spaces["output"], lora_b), 0.0, atol=1e-6)
    np.testing.assert_allclose(principal_angles(spaces["input"], lora_a.T), 0.0, atol=1e-6)
    lora_b[:, 0] = 0.0  # one rank direction dead: the update has rank 2
    assert update_subspaces(lora_a, lora_b)["output"].shape == (D, RANK - 1)
    assert update_subspaces(lora_a, np.zeros_like(lora_b))["output"].shape == (D, 0)  # untrained: no subspace


def test_a_saved_adapter_gives_per_layer_angles(tmp_path: Path) -> None:
    config = AdapterConfig.from_preset("med_moe_lora", target_modules=["q_proj"])
    adapted = inject_adapter(make_tiny_llama(), config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in adapted.adapter_layers().values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator))
            # The base expert writes into the first specialist's output subspace (same B): angle 0 there.
            layer.base_B.copy_(layer.lora_B[:, : layer.base_B.shape[1]])
    adapter = save_adapter(adapted, tmp_path / "adapter")
    assert main([str(adapter), str(adapter), "--out", str(tmp_path / "angles.csv")]) == 0  # two "seeds"
    modules = pd.read_csv(tmp_path / "angles.csv")
    assert list(modules.columns) == MODULE_COLUMNS and set(modules["seed"]) == {0, 1}
    assert len(modules) == 2 * (4 * 2 + 2 * 2 * 2)  # seeds x (4 two-expert layers x 2 sides + 2 layers x 2 kinds x 2)
    table = by_layer(modules)
    assert set(table["pair"]) == {"base-specialist", "specialist-specialist"}
    assert sorted(table["layer"].unique()) == list(range(6))
    layer_0 = table[(table["layer"] == 0) & (table["side"] == "output")].set_index("pair")
    # Layer 0 has 2 experts: base and one specialist sharing B, so every output angle is 0.
    assert layer_0.loc["base-specialist", "mean_angle"] == pytest.approx(0.0, abs=1e-6)
    assert layer_0.loc["base-specialist", "overlap"] == pytest.approx(1.0)
    assert "specialist-specialist" not in layer_0.index  # one specialist: no pair
    # Random specialists of a 32-wide layer sit near the chance angle.
    upper = table[(table["layer"] == 5) & (table["pair"] == "specialist-specialist")]
    assert (upper["mean_angle"] > 0.5).all() and (upper["chance_angle"] > 0.5).all()
    assert upper["pairs"].tolist() == [42, 42]  # 7 specialists: 21 pairs per side, in each of the 2 seeds
