"""Loading per-document results (with and without seed directories) and the per-document metric values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medmoelora.errors import UserError
from medmoelora_eval.samples import METRICS, available_scopes, load_samples, strata, task_rows
from tests.stats.synthetic import MMLU_GENERAL_SUBJECTS, MMLU_PER_SUBJECT, SIZES, write_run


def write_lines(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def test_loads_runs_with_and_without_seed_directories(tmp_path):
    write_run(tmp_path, "base", 0.0, 1.0, tasks=("medqa",))
    write_run(tmp_path, "lora", 1.0, 1.0, seeds=[3, 5], tasks=("medqa",))
    samples = load_samples(tmp_path, ["base", "lora"])
    assert samples.groupby("run")["seed"].unique().map(sorted).to_dict() == {"base": [0], "lora": [3, 5]}
    assert (samples["file"] == "medqa").all()
    assert len(samples) == 3 * SIZES["medqa"]
    seeded = strata(samples, "lora", "medqa", "accuracy")[0]
    assert seeded.numerator.shape == (2, SIZES["medqa"])


def test_a_run_dir_with_both_layouts_is_refused(tmp_path):
    write_run(tmp_path, "lora", 1.0, 1.0, tasks=("medqa",))
    write_run(tmp_path, "lora", 1.0, 1.0, seeds=[0], tasks=("medqa",))
    with pytest.raises(UserError, match=r"both directly and in seed<k>/"):
        load_samples(tmp_path, ["lora"])


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('{"task": "medmoe_medqa", "doc_id": 0, "correct": 1}\nnot json\n', r"medqa\.samples\.jsonl:2: not a JSON"),
        ('{"task": "medmoe_medqa", "doc_id": 0}\n', r":1: a per-document record needs task, doc_id, correct"),
        ("[1, 2]\n", r":1: a per-document record needs"),
        ("\n", r"holds no documents"),
        ('{"task": "t", "doc_id": 4, "correct": 1}\n' * 2, r"document t/4 appears twice"),
    ],
)
def test_bad_files_name_the_file_and_line(tmp_path, lines, message):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "medqa.samples.jsonl").write_text(lines, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_samples(tmp_path, ["base"])


def test_missing_results_say_what_to_do(tmp_path):
    with pytest.raises(UserError, match=r"no evaluation results for run 'lora'.*evaluate the run first"):
        load_samples(tmp_path, ["lora"])
    (tmp_path / "lora").mkdir()
    with pytest.raises(UserError, match=r"no per-document results \(\*\.samples\.jsonl\) under"):
        load_samples(tmp_path, ["lora"])


def test_a_seed_missing_a_task_is_refused(tmp_path):
    write_run(tmp_path, "lora", 1.0, 1.0, seeds=[0, 1], tasks=("medqa", "pubmedqa"))
    (tmp_path / "lora" / "seed1" / "pubmedqa.samples.jsonl").unlink()
    with pytest.raises(UserError, match=r"lora/seed1 lacks pubmedqa\.samples\.jsonl that other seeds have"):
        load_samples(tmp_path, ["lora"])


def test_seeds_with_different_documents_are_refused(tmp_path):
    write_lines(tmp_path / "lora" / "seed0" / "medqa.samples.jsonl", [{"task": "q", "doc_id": 0, "correct": 1}])
    write_lines(tmp_path / "lora" / "seed1" / "medqa.samples.jsonl", [{"task": "q", "doc_id": 1, "correct": 1}])
    with pytest.raises(UserError, match=r"seeds of run 'lora' hold different medqa documents"):
        strata(load_samples(tmp_path, ["lora"]), "lora", "medqa", "accuracy")


def test_gold_log_probability_and_brier_score_by_hand(tmp_path):
    records = [
        {"task": "q", "doc_id": 0, "correct": 1, "gold": 0, "loglikelihoods": [-1.0, -2.0, -3.0]},
        {"task": "q", "doc_id": 1, "correct": 0, "gold": 1, "loglikelihoods": [-0.5, -1.5]},  # fewer choices
    ]
    write_lines(tmp_path / "base" / "medqa.samples.jsonl", records)
    rows = task_rows(load_samples(tmp_path, ["base"]), "medqa")
    gold_logprob, ones = METRICS["gold_logprob"].values(rows)
    brier, _ = METRICS["brier"].values(rows)
    first = np.exp([-1.0, -2.0, -3.0]) / np.exp([-1.0, -2.0, -3.0]).sum()
    second = np.exp([-0.5, -1.5]) / np.exp([-0.5, -1.5]).sum()
    assert gold_logprob == pytest.approx([math.log(first[0]), math.log(second[1])])
    assert brier == pytest.approx([((first - [1, 0, 0]) ** 2).sum(), ((second - [0, 1]) ** 2).sum()])
    assert list(ones) == [1, 1]
    assert METRICS["accuracy"].values(rows)[0].tolist() == [100.0, 0.0]


def test_bits_per_byte_values(tmp_path):
    write_lines(
        tmp_path / "base" / "text.samples.jsonl",
        [{"task": "t", "doc_id": 0, "correct": 0, "loglikelihood": -2 * math.log(2) * 50, "bytes": 50}],
    )
    bits = strata(load_samples(tmp_path, ["base"]), "base", "text", "bits_per_byte")[0]
    assert bits.numerator[0, 0] == pytest.approx(100.0)  # -loglikelihood / ln 2
    assert bits.denominator.tolist() == [[50.0]]


def test_general_mmlu_falls_back_to_the_non_medical_subjects(tmp_path):
    write_run(tmp_path, "base", 0.0, 1.0, tasks=("mmlu",))
    samples = load_samples(tmp_path, ["base"])
    general = task_rows(samples, "mmlu_general")
    assert len(general) == len(MMLU_GENERAL_SUBJECTS) * MMLU_PER_SUBJECT
    assert set(general["task"]) == {f"medmoe_mmlu_{subject}" for subject in MMLU_GENERAL_SUBJECTS}
    assert available_scopes(samples) == ["mmlu_general", "mmlu", "mmlu_medical"]


def test_a_metric_without_its_fields_is_refused(tmp_path):
    write_run(tmp_path, "base", 0.0, 1.0, tasks=("gsm8k",))
    with pytest.raises(UserError, match=r"gold_logprob needs loglikelihoods, gold in every gsm8k record"):
        strata(load_samples(tmp_path, ["base"]), "base", "gsm8k", "gold_logprob")
