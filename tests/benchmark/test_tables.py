"""The tables from per-document results: every score and change with its interval, seeds pooled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmoelora.errors import UserError
from medmoelora_eval import tables
from tests.benchmark.synthetic_runs import write_eval, write_train

RESAMPLES = 400
SEEDS = [0, 1]
SKILLS = {"base": (0.0, 2.0), "lora": (0.5, 0.5), "med": (2.0, 1.8)}  # run -> (medical, general) skill
MAIN_COLUMNS = [
    "MedQA", "PubMedQA", "MMLU-medical", "Medical avg", "Medical gold logprob", "Medical Brier",
    "GSM8K", "MMLU-general", "General LM bits/byte",
    "GSM8K change", "MMLU-general change", "General LM bits/byte change",
]  # fmt: skip


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("results")
    eval_dir, train_dir = root / "eval", root / "train"
    for run, (medical, general) in SKILLS.items():
        write_eval(eval_dir, run, medical, general, None if run == "base" else SEEDS)
        if run != "base":
            write_train(train_dir, run, SEEDS, trainable=1000 + len(run))
    return eval_dir, train_dir


def results(eval_dir: Path, runs: list[str], seeds: list[int] | None = SEEDS) -> tables.Results:
    return tables.Results(eval_dir, runs, seeds, RESAMPLES, 0)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_main_table_has_every_score_and_change_with_its_interval(dirs: tuple[Path, Path]) -> None:
    eval_dir, train_dir = dirs
    rows = {"base": "base", "lora": "lora", "med": "med"}
    table = tables.main_table(results(eval_dir, list(rows)), rows, train_dir, "base", SEEDS)
    expected = ["run"] + [name for label in MAIN_COLUMNS for name in tables.interval_columns(label)]
    assert list(table.columns) == [*expected, "Trainable params", "Active params"]
    for label in MAIN_COLUMNS:
        assert (table[label + "_lo"] <= table[label]).all() and (table[label] <= table[label + "_hi"]).all(), label
    table = table.set_index("run")
    # the base model against itself: exactly no change
    assert table.loc["base", ["GSM8K change", "GSM8K change_lo", "GSM8K change_hi"]].tolist() == [0, 0, 0]
    assert table.at["med", "MMLU-general change"] == pytest.approx(
        table.at["med", "MMLU-general"] - table.at["base", "MMLU-general"]
    )
    assert table.at["lora", "MMLU-general change_hi"] < 0  # lora's planted loss of general skill
    assert table.at["med", "Medical avg_lo"] > table.at["base", "Medical avg_hi"]  # med's planted medical gain
    assert table.at["base", "Trainable params"] == 0 and table.at["med", "Trainable params"] == 1003


def test_a_score_pools_seeds_and_documents(dirs: tuple[Path, Path]) -> None:
    eval_dir, train_dir = dirs
    table = tables.main_table(results(eval_dir, ["med", "base"]), {"med": "med"}, train_dir, "base", SEEDS)
    per_seed = [np.mean([d["correct"] for d in read(eval_dir / f"med/seed{s}/medqa.samples.jsonl")]) for s in SEEDS]
    assert table.at[0, "MedQA"] == pytest.approx(100 * np.mean(per_seed))
    medical = ["medqa", "pubmedqa", "mmlu_medical"]
    average = np.mean(
        [
            np.mean([d["correct"] for s in SEEDS for d in read(eval_dir / f"med/seed{s}/{t}.samples.jsonl")])
            for t in medical
        ]
    )
    assert table.at[0, "Medical avg"] == pytest.approx(100 * average)


def test_a_stale_seed_directory_is_left_out(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    eval_dir, train_dir = dirs
    copy = tmp_path / "eval"
    shutil.copytree(eval_dir, copy)
    shutil.copytree(copy / "med/seed0", copy / "med/seed7")  # from an earlier config with other seeds
    (copy / "med/seed7/medqa.samples.jsonl").write_text(
        "".join(json.dumps({**d, "correct": 1}) + "\n" for d in read(copy / "med/seed7/medqa.samples.jsonl"))
    )
    rows = {"med": "med"}
    pooled = tables.main_table(results(copy, ["med", "base"]), rows, train_dir, "base", SEEDS)
    original = tables.main_table(results(eval_dir, ["med", "base"]), rows, train_dir, "base", SEEDS)
    pd.testing.assert_frame_equal(pooled, original)


def test_forgetting_allocation_temperature_and_cost_tables(dirs: tuple[Path, Path]) -> None:
    eval_dir, train_dir = dirs
    rows = {"lora": "lora", "med": "med"}
    forgetting = tables.forgetting_table(results(eval_dir, [*rows.values(), "base"]), rows, train_dir, "base", SEEDS)
    for label in ("GSM8K", "MMLU-general", "MMLU-general gold logprob"):
        for name in (label, f"{label} change"):
            assert {name, name + "_lo", name + "_hi"} <= set(forgetting.columns)
            assert (forgetting[name + "_lo"] <= forgetting[name]).all() and (
                forgetting[name] <= forgetting[name + "_hi"]
            ).all()
    assert list(forgetting["Trainable params"]) == [1004, 1003]

    allocation = tables.allocation_table(results(eval_dir, list(rows.values())), rows, train_dir, SEEDS)
    assert list(allocation["experts per layer"]) == ["2x1 + 4x1 + 6x1"] * 2
    assert {"Medical avg", "Medical avg_lo", "Medical avg_hi"} <= set(allocation.columns)

    temperature = tables.temperature_table(results(eval_dir, list(rows.values())), rows, train_dir, SEEDS)
    # taus 1 and 2 in seed 0, twice that in seed 1: mean 2.25
    assert list(temperature["final tau (mean)"]) == pytest.approx([2.25, 2.25])

    cost = tables.cost_table(rows, train_dir, SEEDS)
    assert list(cost["Wall time s"]) == [90.0, 90.0] and list(cost["Active params"]) == [502, 501]


def test_columns_the_results_do_not_carry_are_left_out(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    eval_dir, train_dir = dirs
    copy = tmp_path / "eval"
    shutil.copytree(eval_dir, copy)
    for path in copy.rglob("*.samples.jsonl"):  # results without the choices' loglikelihoods
        path.write_text("".join(json.dumps({**d, "loglikelihoods": None}) + "\n" for d in read(path)))
    table = tables.main_table(results(copy, ["lora", "base"]), {"lora": "lora"}, train_dir, "base", SEEDS)
    assert "MedQA" in table.columns and not [c for c in table.columns if "logprob" in c or "Brier" in c]
    (copy / "lora/seed0/gsm8k.samples.jsonl").unlink()  # one seed without a task: an error, not a silent gap
    with pytest.raises(UserError, match="lacks gsm8k"):
        tables.main_table(results(copy, ["lora", "base"]), {"lora": "lora"}, train_dir, "base", SEEDS)


def test_markdown_cells_show_the_interval_in_brackets() -> None:
    table = pd.DataFrame(
        {"run": ["a"], "MedQA": [31.23], "MedQA_lo": [27.0], "MedQA_hi": [35.49], "Medical Brier": [0.61234],
         "Medical Brier_lo": [0.5], "Medical Brier_hi": [0.7], "Trainable params": [15_250_000],
         "final tau (mean)": [1.001123]}
    )  # fmt: skip
    shown = tables.markdown_cells(table)
    assert list(shown.columns) == ["run", "MedQA", "Medical Brier", "Trainable params", "final tau (mean)"]
    assert shown.iloc[0].tolist() == ["a", "31.2 [27.0, 35.5]", "0.612 [0.500, 0.700]", "15.25M", "1.001"]


def test_cli_writes_interval_columns_and_fails_in_one_line(dirs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    eval_dir, train_dir = dirs
    out = tmp_path / "table1.csv"
    common = ["--eval-dir", str(eval_dir), "--train-dir", str(train_dir), "--resamples", "100"]
    argv = ["main", "--rows", "base", "lora", "--base", "base", "--seeds", "0", "1", *common, "--out", str(out)]
    assert tables.main(argv) == 0
    written = pd.read_csv(out)
    assert {"MedQA_lo", "MedQA_hi", "GSM8K change_lo"} <= set(written.columns) and len(written) == 2
    capsys.readouterr()
    missing = tmp_path / "none.csv"
    argv = ["main", "--rows", "lora", "--seeds", "0", "5", *common, "--out", str(missing)]
    assert tables.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "seed5" in err[0]
    assert not missing.exists()


def test_cost_takes_wall_time_and_peak_memory_from_snakemakes_benchmark_files(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    _, train_dir = dirs
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for seed, (seconds, rss) in zip(SEEDS, [(100.0, 2000.0), (300.0, 3000.0)], strict=True):
        path = tmp_path / "train" / "lora" / f"seed{seed}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:01:40\t{rss}\t1\t1\t1\t0\t0\t50\t{seconds}\n")
    cost = tables.cost_table({"lora": "lora"}, train_dir, SEEDS, benchmarks=tmp_path)
    assert list(cost["Wall time s"]) == [200.0] and list(cost["Peak memory MB"]) == [2500.0]
    assert list(cost["Tokens/s"]) == list(tables.cost_table({"lora": "lora"}, train_dir, SEEDS)["Tokens/s"])
    (tmp_path / "train" / "lora" / "seed1.tsv").write_text("not\ta benchmark\n")
    with pytest.raises(UserError, match=r"seed1.tsv is not a Snakemake benchmark file"):
        tables.cost_table({"lora": "lora"}, train_dir, SEEDS, benchmarks=tmp_path)
    with pytest.raises(UserError, match=r"med/seed0.tsv: No such file"):
        tables.cost_table({"med": "med"}, train_dir, SEEDS, benchmarks=tmp_path)
