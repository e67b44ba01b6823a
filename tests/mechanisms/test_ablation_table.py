"""The ablation table and the dual-path verdict, on synthetic per-document results with planted effects."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medmoelora_eval.mechanisms.ablation import (
    COLUMNS,
    DUAL_PATH_COLUMNS,
    ablation_tables,
    load_variants,
    main,
    overall_verdict,
)
from medmoelora_eval.stats import CONTRADICTED, INCONCLUSIVE, SUPPORTED
from tests.stats.synthetic import write_run

RESAMPLES = 2000
SEEDS = [0, 1]
STRONG, WEAK = 2.0, -1.0


def _variants(root: Path, without_base: tuple[float, float], without_specialists: tuple[float, float]) -> dict:
    """(medical skill, general skill) of each ablated variant; all experts are strong in both domains."""
    write_run(root / "eval", "med_moe_lora", STRONG, STRONG, seeds=SEEDS)
    write_run(root / "ablated", "without_base", *without_base, seeds=SEEDS)
    write_run(root / "ablated", "without_specialists", *without_specialists, seeds=SEEDS)
    return {
        "all_experts": root / "eval" / "med_moe_lora",
        "without_base": root / "ablated" / "without_base",
        "without_specialists": root / "ablated" / "without_specialists",
    }


def test_a_planted_dual_path_is_supported(tmp_path: Path) -> None:
    directories = _variants(tmp_path, without_base=(STRONG, WEAK), without_specialists=(WEAK, STRONG))
    table, dual = ablation_tables(load_variants(directories), resamples=RESAMPLES)
    assert list(table.columns) == COLUMNS and list(dual.columns) == DUAL_PATH_COLUMNS
    accuracy = table[(table["metric"] == "accuracy") & (table["scope"] == "average")].set_index(["variant", "domain"])
    assert set(accuracy.index) == {(v, d) for v in directories for d in ("medical", "general")}
    assert accuracy.loc[("without_base", "general"), "change_hi"] < 0  # base experts removed: general drops
    assert accuracy.loc[("without_base", "medical"), "change"] == pytest.approx(0.0)  # medical untouched
    assert accuracy.loc[("without_specialists", "medical"), "change_hi"] < 0
    assert pd.isna(accuracy.loc[("all_experts", "medical"), "change"])
    assert (table["score_lo"] <= table["score"]).all() and (table["score"] <= table["score_hi"]).all()
    assert accuracy.loc[("all_experts", "general"), "tasks"] == "gsm8k mmlu_general"
    assert set(table["metric"]) == {"accuracy", "gold_logprob", "brier"}
    # Each task of a domain with several has its own rows; the average is the mean of the tasks' scores.
    tasks = table[
        (table["metric"] == "accuracy") & (table["variant"] == "without_base") & (table["domain"] == "general")
    ]
    assert tasks["scope"].tolist() == ["average", "gsm8k", "mmlu_general"]
    assert tasks["score"].iloc[0] == pytest.approx(tasks["score"].iloc[1:].mean())
    assert (tasks["change_hi"] < 0).all()  # both general tasks lose their base experts' skill
    assert set(table["n_seeds"]) == {2}
    assert set(dual["verdict"]) == {SUPPORTED} and len(dual) == 2 * 3  # two ablations x three metrics
    assert overall_verdict(dual) == SUPPORTED


def test_the_reverse_is_contradicted_and_no_effect_inconclusive(tmp_path: Path) -> None:
    reverse = _variants(tmp_path / "reverse", without_base=(WEAK, STRONG), without_specialists=(STRONG, WEAK))
    _, dual = ablation_tables(load_variants(reverse), resamples=RESAMPLES)
    assert set(dual["verdict"]) == {CONTRADICTED}
    assert overall_verdict(dual) == CONTRADICTED
    same = _variants(tmp_path / "same", without_base=(STRONG, STRONG), without_specialists=(STRONG, STRONG))
    table, dual = ablation_tables(load_variants(same), resamples=RESAMPLES)
    assert set(dual["verdict"]) == {INCONCLUSIVE} and overall_verdict(dual) == INCONCLUSIVE
    changes = table.dropna(subset=["change"])
    assert set(changes["scope"]) == {"average", "medqa", "pubmedqa", "mmlu_medical", "gsm8k", "mmlu_general"}
    assert (changes["change"] == 0).all() and (changes["p_value"] == 1).all()


def test_the_command_writes_both_tables_and_fails_in_one_line(tmp_path: Path, capsys) -> None:
    directories = _variants(tmp_path, without_base=(STRONG, WEAK), without_specialists=(WEAK, STRONG))
    out, dual = tmp_path / "ablation.csv", tmp_path / "dual_path.csv"
    flags = ["--all-experts", "--without-base", "--without-specialists"]
    arguments = [word for flag, path in zip(flags, directories.values(), strict=True) for word in (flag, str(path))]
    assert main([*arguments, "--resamples", "200", "--out", str(out), "--dual-path", str(dual)]) == 0
    assert pd.read_csv(out)["resamples"].eq(200).all()
    assert set(pd.read_csv(dual)["ablation"]) == {"without_base", "without_specialists"}
    arguments[3] = str(tmp_path / "absent")
    assert main([*arguments, "--out", str(tmp_path / "x.csv"), "--dual-path", str(tmp_path / "y.csv")]) == 2
    assert "no evaluation results for run 'absent'" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
