"""Every score with its interval and its change against the base model, as the tables use them."""

from __future__ import annotations

import pandas as pd
import pytest

from medmoelora_eval import stats
from medmoelora_eval.samples import load_samples, strata
from tests.stats.synthetic import write_run

TASKS = ("medqa", "pubmedqa", "mmlu")


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_run(root, "base", 0.0, 1.0, tasks=TASKS)
    write_run(root, "lora", 1.5, 1.0, seeds=[0, 1], tasks=TASKS)
    return root


def test_scores_and_changes_of_every_scope_and_metric(eval_dir):
    samples = load_samples(eval_dir, ["base", "lora"])
    table = stats.score_table(samples, ["base", "lora"], "base", resamples=300, metrics=["accuracy", "brier"])
    scopes = ["medical_average", "mmlu_general", "medqa", "mmlu", "mmlu_medical", "pubmedqa"]
    assert list(table.loc[table["run"] == "lora", "scope"].unique()) == scopes
    assert set(table["metric"]) == {"accuracy", "brier"}
    row = table.set_index(["run", "scope", "metric"]).loc[("lora", "medical_average", "accuracy")]
    lora = stats.estimate(strata(samples, "lora", "medical_average", "accuracy"))
    base = stats.estimate(strata(samples, "base", "medical_average", "accuracy"))
    assert row["score"] == pytest.approx(lora)
    assert row["score_lo"] < row["score"] < row["score_hi"]
    assert row["change"] == pytest.approx(lora - base)
    assert row["change_lo"] > 0  # a planted gain
    assert row["n_seeds"] == 2
    assert table.loc[table["run"] == "base", "change"].isna().all()


def test_cli_writes_the_scores(eval_dir, tmp_path):
    out = tmp_path / "intervals.csv"
    argv = ["--eval-dir", str(eval_dir), "--runs", "lora", "--base", "base", "--resamples", "50"]
    argv += ["--metrics", "accuracy", "--out", str(out)]
    assert stats.main(argv) == 0
    written = pd.read_csv(out)
    assert {"score_lo", "score_hi", "change_lo", "change_hi", "resamples", "seed"} <= set(written.columns)
    assert set(written["run"]) == {"lora"}
    assert set(written["metric"]) == {"accuracy"}


def test_cli_bad_run_is_one_line(eval_dir, tmp_path, capsys):
    out = tmp_path / "intervals.csv"
    assert stats.main(["--eval-dir", str(eval_dir), "--runs", "nothing", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: no evaluation results for run 'nothing'")
    assert not out.exists()
