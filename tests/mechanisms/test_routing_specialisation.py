"""Routing specialisation: mutual information between task and expert choice, and routing entropy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmoelora_eval.mechanisms.routing import MODULE_COLUMNS, by_layer, entropy, main, module_table, mutual_information

N = 4


def _stats(shares_by_task: dict[str, dict[int, list[float]]], tokens: dict[str, int] | None = None) -> dict:
    """A routing_stats.json ``by_task`` with one q_proj module per layer (keys as JSON writes them)."""
    by_task = {}
    for task, per_layer in shares_by_task.items():
        modules = {
            f"model.layers.{layer}.self_attn.q_proj": {
                "layer": layer,
                "routing": "soft",
                "base_experts": 1,
                "tokens": (tokens or {}).get(task, 100),
                "mean_gate": shares,
                "top1_share": shares,
            }
            for layer, shares in per_layer.items()
        }
        by_task[task] = {"layers": {}, "modules": modules}
    return json.loads(json.dumps({"by_task": by_task}))


def test_routing_independent_of_task_has_no_mutual_information() -> None:
    choice = np.array([0.1, 0.2, 0.3, 0.4])
    assert mutual_information(np.array([5.0, 1.0, 3.0]), np.tile(choice, (3, 1))) == pytest.approx(0.0, abs=1e-12)


def test_a_one_to_one_map_of_tasks_to_experts_has_log_n() -> None:
    assert mutual_information(np.ones(N), np.eye(N)) == pytest.approx(math.log(N))
    # With unequal task sizes the expert choice still tells the task exactly: I = H(T).
    sizes = np.array([1.0, 2.0, 3.0, 4.0])
    assert mutual_information(sizes, np.eye(N)) == pytest.approx(entropy(sizes / sizes.sum()))


def test_mutual_information_against_the_formula() -> None:
    p_task = np.array([0.25, 0.75])
    given = np.array([[0.5, 0.5], [1.0, 0.0]])
    p_choice = p_task @ given  # (0.875, 0.125)
    expected = sum(
        p_task[t] * given[t, e] * math.log(given[t, e] / p_choice[e])
        for t in range(2)
        for e in range(2)
        if given[t, e] > 0
    )
    assert mutual_information(p_task, given) == pytest.approx(expected)


def test_layers_rank_by_specialisation_and_entropy() -> None:
    one_hot = {f"task{t}": {0: [0.25] * N, 1: list(np.eye(N)[t])} for t in range(N)}
    table = module_table(_stats(one_hot)).set_index("layer")
    assert table.loc[0, "mutual_information"] == pytest.approx(0.0, abs=1e-12)
    assert table.loc[1, "mutual_information"] == pytest.approx(math.log(N))
    # Both layers use every expert equally overall: maximal routing entropy.
    assert table["routing_entropy"].tolist() == pytest.approx([math.log(N)] * 2)
    assert table["max_entropy"].tolist() == pytest.approx([math.log(N)] * 2)
    # 4 tasks of 100 tokens, 4 experts: chance level (4 - 1)(4 - 1) / (2 * 400)
    assert table["chance_information"].tolist() == pytest.approx([9 / 800] * 2)
    assert table["tokens"].tolist() == [400, 400]
    collapsed = {"a": {0: [1.0, 0, 0, 0]}, "b": {0: [1.0, 0, 0, 0]}}
    assert module_table(_stats(collapsed))["routing_entropy"].tolist() == [0.0]


def test_the_command_writes_every_module_and_seeds_average_by_layer(tmp_path: Path) -> None:
    files = {}
    for label, layers, seed in (("asymmetric", 2, 0), ("asymmetric", 2, 1), ("inverted", 3, 0)):
        # seed 0: each task to its own expert; seed 1: every task alike
        shares = {
            f"task{t}": {layer: list(np.eye(N)[t if seed == 0 else 0]) for layer in range(layers)} for t in range(2)
        }
        files[(label, seed)] = tmp_path / f"{label}{seed}.json"
        files[(label, seed)].write_text(json.dumps(_stats(shares)))
    out = tmp_path / "routing.csv"
    assert main([*(f"{label}={path}" for (label, _), path in files.items()), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == MODULE_COLUMNS
    assert len(table) == 2 + 2 + 3
    assert table.groupby("allocation")["seed"].unique().map(list).to_dict() == {"asymmetric": [0, 1], "inverted": [0]}
    layers = by_layer(table).set_index(["allocation", "layer"])
    assert layers.loc[("asymmetric", 1), "mutual_information"] == pytest.approx(math.log(2) / 2)
    assert layers.loc[("inverted", 2), "mutual_information"] == pytest.approx(math.log(2))


def test_a_run_without_soft_routing_fails_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "lora.json").write_text(json.dumps({"by_task": {}, "overall": {"layers": {}, "modules": {}}}))
    assert main([f"lora={tmp_path / 'lora.json'}", "--out", str(tmp_path / "out.csv")]) == 2
    assert "no soft-routed module with routing statistics by task" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()
