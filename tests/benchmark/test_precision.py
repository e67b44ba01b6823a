"""Expected interval half-widths and detectable differences from the binomial variance."""

from __future__ import annotations

import math

import pytest

from medmoelora_eval import precision


def test_half_width_and_detectable_difference_follow_the_binomial_formula() -> None:
    table = precision.expected_precision({"medqa": 100, "pubmedqa": 100, "mmlu": 400, "mmlu_medical": 100}).set_index(
        "score"
    )
    # one task, n = 100, p = 0.5: SE = 5 points, half-width 1.96 SE, MDE 2.80 x sqrt(2) SE
    assert table.at["MedQA", "half-width (95%)"] == pytest.approx(9.8)
    assert table.at["MedQA", "detectable difference (80% power)"] == pytest.approx(19.8)
    # the medical average of three tasks of 100 counting once: SE = 5 / sqrt(3)
    assert table.at["Medical avg", "half-width (95%)"] == pytest.approx(round(1.96 * 5 / math.sqrt(3), 1))
    assert table.at["Medical avg", "documents"] == 300
    assert table.at["MMLU-general", "documents"] == 300  # MMLU less its medical subjects
    assert "GSM8K" not in table.index  # no count given


def test_cli_prints_the_table_and_rejects_bad_counts(capsys) -> None:
    assert precision.main(["medqa=25", "--p", "0.3"]) == 0
    assert "| MedQA" in capsys.readouterr().out
    assert precision.main(["medqa=0"]) == 2
    assert capsys.readouterr().err.strip() == "error: 'medqa=0': expected TASK=N with N >= 1 documents, e.g. medqa=1273"


def test_paired_runs_that_disagree_on_few_documents_detect_smaller_differences() -> None:
    independent = precision.expected_precision({"medqa": 1000}).iloc[0]
    paired = precision.expected_precision({"medqa": 1000}, discordant=0.1).iloc[0]
    # SE of a paired difference: sqrt(d / n) = 1 point; MDE 2.80 points
    assert paired["detectable difference (80% power)"] == pytest.approx(2.8)
    assert paired["half-width (95%)"] == independent["half-width (95%)"]  # one run's score is unchanged
