"""Figures that show a score or a change draw its 95% interval as an error bar."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.container import BarContainer

from medmoelora_eval import figures

FORGETTING = pd.DataFrame(
    {
        "run": ["lora", "med"],
        "GSM8K change": [-2.0, 1.0], "GSM8K change_lo": [-5.0, -1.0], "GSM8K change_hi": [0.5, 3.0],
        "MMLU-general change": [-4.0, 0.0], "MMLU-general change_lo": [-6.0, -2.0],
        "MMLU-general change_hi": [-1.0, 2.5],
        "General LM bits/byte change": [0.1, -0.02], "General LM bits/byte change_lo": [0.05, -0.04],
        "General LM bits/byte change_hi": [0.2, 0.01],
    }
)  # fmt: skip


def error_bar_ends(container: BarContainer) -> list[tuple[float, float]]:
    """(low, high) of each bar's vertical error bar, from the drawn line segments."""
    (segments,) = container.errorbar.lines[2]
    return [(float(min(s[:, 1])), float(max(s[:, 1]))) for s in segments.get_segments()]


def bars(ax) -> list[BarContainer]:
    return [container for container in ax.containers if isinstance(container, BarContainer)]


def test_forgetting_bars_draw_each_interval_in_a_panel_per_unit() -> None:
    fig = figures.forgetting_bars(FORGETTING)
    points, bits = fig.axes
    assert [c.get_label() for c in bars(points)] == ["GSM8K change", "MMLU-general change"]
    for container, column in zip(bars(points), ["GSM8K change", "MMLU-general change"], strict=True):
        assert [bar.get_height() for bar in container] == FORGETTING[column].tolist()
        assert error_bar_ends(container) == list(
            zip(FORGETTING[f"{column}_lo"], FORGETTING[f"{column}_hi"], strict=True)
        )
    (lm,) = bars(bits)
    assert np.allclose(error_bar_ends(lm), [(0.05, 0.2), (-0.04, 0.01)])
    assert bits.get_ylabel() == "change vs base (bits/byte)" and points.get_ylabel() == "change vs base (points)"


def test_forgetting_bars_need_interval_columns() -> None:
    with pytest.raises(figures.UserError, match="_lo / _hi"):
        figures.forgetting_bars(FORGETTING[["run", "GSM8K change"]])


def test_claims_plot_draws_each_primary_test_with_its_interval_and_the_papers_effect() -> None:
    claims = pd.DataFrame(
        {
            "claim": ["C1", "C1", "C2", "C2", "C8"], "row": ["claim", "primary", "primary", "secondary", "check"],
            "comparison": ["a vs b", "a vs b", "a vs c", "a vs c", "largest"],
            "scope": ["medical_average", "medical_average", "medqa", "medqa", "routing"],
            "metric": ["accuracy", "accuracy", "accuracy", "gold_logprob", "largest_expert_share"],
            "paper_effect": [np.nan, np.nan, 4.5, np.nan, np.nan], "difference": [2.0, 2.0, -1.0, 0.1, 0.6],
            "ci_lo": [0.5, 0.5, -3.0, 0.02, np.nan], "ci_hi": [3.5, 3.5, 1.0, 0.2, np.nan],
            "verdict": ["supported", "supported", "inconclusive", "consistent", "passed"],
        }
    )  # fmt: skip
    fig = figures.claims_plot(claims)
    (accuracy,) = fig.axes  # secondaries and C8's check are not drawn; the claim row repeats its primary
    errors = [c for c in accuracy.collections if isinstance(c, LineCollection)]
    spans = sorted((float(s[:, 0].min()), float(s[:, 0].max())) for c in errors for s in c.get_segments())
    assert spans == [(-3.0, 1.0), (0.5, 3.5)]
    crosses = [c for c in accuracy.collections if isinstance(c, PathCollection)]
    assert [c.get_offsets()[:, 0].tolist() for c in crosses] == [[4.5]]  # the paper's MedQA effect
    with pytest.raises(figures.UserError, match="no 'row' column"):
        figures.claims_plot(claims.drop(columns="row"))


def write_probe(path, history: list[tuple[int, float]] | None) -> None:
    path.parent.mkdir(parents=True)
    metrics = {} if history is None else {"general_probe": {"history": [{"step": s, "change": c} for s, c in history]}}
    path.write_text(json.dumps(metrics))


def test_probe_plot_draws_each_run_and_seed_over_steps(tmp_path) -> None:
    sources = []
    for run, seed, history in [
        ("lora", 0, [(0, 0.0), (10, 0.02), (20, 0.03)]),
        ("lora", 1, [(0, 0.0), (10, 0.01), (20, 0.02)]),
        ("med_moe_lora", 0, [(0, 0.0), (10, -0.01), (20, 0.005)]),
    ]:
        sources.append(tmp_path / run / f"seed{seed}" / "train_metrics.json")
        write_probe(sources[-1], history)
    checks = pd.concat([figures.read_probe(path) for path in sources], ignore_index=True)
    fig = figures.probe_plot(checks)
    ax = fig.axes[0]
    runs = [line for line in ax.get_lines() if len(line.get_xdata()) == 3]
    assert len(runs) == 3  # a line per run and seed
    assert list(runs[0].get_ydata()) == pytest.approx([0.0, 2.0, 3.0])  # percent
    assert runs[0].get_color() == runs[1].get_color() != runs[2].get_color()  # one colour per run
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["lora", "med_moe_lora", "1% threshold"]


def test_probe_figure_without_monitor_history_fails_in_one_line(tmp_path, capsys) -> None:
    path = tmp_path / "lora" / "seed0" / "train_metrics.json"
    write_probe(path, None)
    assert figures.main(["probe", str(path), "--out", str(tmp_path / "probe.png")]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "no general_probe history" in error[0] and str(path) in error[0]
    assert not (tmp_path / "probe.png").exists()
