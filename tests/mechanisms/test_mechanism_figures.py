"""The depth figures draw from the per-layer tables, and a wrong table fails in one line."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medmoelora_eval.mechanisms.figures import main, routing_by_depth, subspace_by_depth


def test_routing_figure_has_a_line_per_allocation_in_both_panels() -> None:
    table = pd.DataFrame(
        [
            {"allocation": name, "seed": 0, "layer": layer, "module": f"{layer}.{kind}", "num_experts": 2,
             "mutual_information": 0.1 * layer + (0.1 if kind == "q" else -0.1), "chance_information": 0.01,
             "routing_entropy": 0.5, "max_entropy": 0.69, "tasks": 3, "tokens": 100}
            for name in ("asymmetric", "uniform", "inverted")
            for layer in range(4)
            for kind in ("q", "v")
        ]
    )  # fmt: skip
    mi_ax, entropy_ax = routing_by_depth(table).axes
    assert [line.get_label() for line in mi_ax.get_lines()][::2] == ["asymmetric", "uniform", "inverted"]
    assert list(mi_ax.get_lines()[1].get_ydata()) == pytest.approx([0.01] * 4)  # chance, dotted
    assert list(mi_ax.get_lines()[0].get_ydata()) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert list(entropy_ax.get_lines()[1].get_ydata()) == pytest.approx([0.5 / 0.69] * 4)


def test_subspace_figure_plots_degrees_beside_the_chance_angle(tmp_path: Path) -> None:
    table = pd.DataFrame(
        [
            {"seed": 0, "layer": layer, "module": "q", "pair": pair, "side": side, "mean_angle": 1.5707963,
             "overlap": 0.0, "chance_angle": 1.0, "pairs": 1}
            for layer in range(3)
            for pair in ("base-specialist", "specialist-specialist")
            for side in ("output", "input")
        ]
    )  # fmt: skip
    output_ax, _input_ax = subspace_by_depth(table).axes
    angles, chance = output_ax.get_lines()[:2]
    assert list(angles.get_ydata()) == pytest.approx([90.0] * 3, abs=1e-4)
    assert list(chance.get_ydata()) == pytest.approx([57.29578] * 3)
    path = tmp_path / "table.csv"
    table.to_csv(path, index=False)
    assert main(["subspace", str(path), "--out", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"


def test_a_table_of_the_wrong_analysis_fails_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "table.csv"
    pd.DataFrame({"layer": [0]}).to_csv(path, index=False)
    assert main(["routing", str(path), "--out", str(tmp_path / "fig.png")]) == 2
    assert "lacks the column(s) allocation, seed, module, num_experts, mutual_information" in capsys.readouterr().err
    assert not (tmp_path / "fig.png").exists()
