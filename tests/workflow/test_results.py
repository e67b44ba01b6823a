"""medmoelora_eval.results: the evaluation subset (a seeded draw per task, the same for every run, not the
first N documents), and `split`, which turns one lm_eval output directory into our per-task files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy.special import log_softmax

from medmoelora.data.prompts import instruction_plain_text
from medmoelora.errors import UserError
from medmoelora.tasks import EVAL_TASKS as TASKS
from medmoelora.tasks import MMLU_MEDICAL_SUBJECTS
from medmoelora_eval.results import main as results_main
from medmoelora_eval.results import samples, split, stratified_draw

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "eval" / "fixtures" / "processed"
MMLU_TASKS = REPO / "benchmark" / "tasks" / "medmoe_mmlu"
LM_EVAL = Path(sys.executable).with_name("lm_eval")
EVAL_TASKS = "medmoe_medqa,medmoe_pubmedqa,medmoe_gsm8k,medmoe_mmlu,medmoe_general_lm"  # as the eval rule asks
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def write_task(data: Path, task: str, split: str, records: list[dict]) -> None:
    (data / task).mkdir(parents=True, exist_ok=True)
    (data / task / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_samples_are_a_seeded_draw_per_task(tmp_path):
    write_task(tmp_path, "medqa", "test", [{"id": i, "label": i % 4} for i in range(50)])
    write_task(tmp_path, "pubmedqa", "test", [{"id": i, "final_decision": "yes"} for i in range(30)])
    write_task(tmp_path, "gsm8k", "test", [{"id": i} for i in range(5)])
    subjects = ["anatomy"] * 9 + ["virology"] * 4
    write_task(tmp_path, "mmlu", "test", [{"subject": s, "answer": i % 4} for i, s in enumerate(subjects)])
    write_task(tmp_path, "general_lm", "test", [{"id": i} for i in range(20)])
    limits = {"medqa": 10, "pubmedqa": 10, "gsm8k": 8, "mmlu": 3, "general_lm": 6}
    chosen = samples(tmp_path, limits, seed=0)
    assert chosen == samples(tmp_path, limits, seed=0)  # every run gets the same documents
    assert chosen != samples(tmp_path, limits, seed=1)
    assert len(chosen["medmoe_medqa"]) == 10 and chosen["medmoe_medqa"] == sorted(set(chosen["medmoe_medqa"]))
    assert chosen["medmoe_medqa"] != list(range(10))  # not lm_eval's --limit (the first N)
    assert all(0 <= i < 50 for i in chosen["medmoe_medqa"])
    assert chosen["medmoe_gsm8k"] == list(range(5))  # a limit above the count takes every document
    assert len(chosen["medmoe_mmlu_anatomy"]) == 3 and len(chosen["medmoe_mmlu_virology"]) == 3
    assert len(chosen["medmoe_general_lm"]) == 6 and chosen["medmoe_general_lm"] != list(range(6))
    assert samples(tmp_path, {**limits, "medqa": None})["medmoe_medqa"] == list(range(50))


def test_draws_are_stratified_by_gold_answer_in_the_test_sets_proportions(tmp_path):
    # 55% yes, 34% no, 11% maybe, sorted so that an unstratified first-N or a lucky draw would tilt it
    answers = ["yes"] * 275 + ["no"] * 170 + ["maybe"] * 55
    write_task(tmp_path, "medqa", "test", [{"label": i % 4} for i in range(40)])
    write_task(tmp_path, "pubmedqa", "test", [{"final_decision": answer} for answer in answers])
    write_task(tmp_path, "gsm8k", "test", [{"answer": f"#### {i}"} for i in range(5)])
    write_task(tmp_path, "mmlu", "test", [{"subject": s, "answer": i % 4} for i, s in enumerate(["anatomy"] * 12)])
    write_task(tmp_path, "general_lm", "test", [{"instruction": str(i)} for i in range(20)])
    limits = {"medqa": 8, "pubmedqa": 30, "gsm8k": 2, "mmlu": 2, "general_lm": 3}
    for seed in range(5):
        chosen = samples(tmp_path, limits, seed=seed)
        drawn = Counter(answers[i] for i in chosen["medmoe_pubmedqa"])
        assert drawn == {"yes": 17, "no": 10, "maybe": 3}  # 16.5 / 10.2 / 3.3, largest remainders
        assert Counter(i % 4 for i in chosen["medmoe_medqa"]) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert samples(tmp_path, limits, seed=0) != samples(tmp_path, limits, seed=1)
    assert stratified_draw(["a", "a", "b"], 2, "k") == stratified_draw(["a", "a", "b"], 2, "k")
    assert len(stratified_draw([None] * 9, 4, "k")) == 4  # no gold answer: one stratum


def test_a_subject_subset_takes_its_own_per_subject_limit(tmp_path):
    write_task(tmp_path, "medqa", "test", [{"label": 0}] * 5)
    write_task(tmp_path, "pubmedqa", "test", [{"final_decision": "yes"}] * 5)
    write_task(tmp_path, "gsm8k", "test", [{"answer": "#### 1"}] * 5)
    subjects = ["anatomy"] * 9 + ["virology"] * 9
    write_task(tmp_path, "mmlu", "test", [{"subject": s, "answer": i % 4} for i, s in enumerate(subjects)])
    write_task(tmp_path, "general_lm", "test", [{"instruction": "x"}] * 5)
    limits = {"medqa": 2, "pubmedqa": 2, "gsm8k": 1, "mmlu": 1, "general_lm": 1, "mmlu_medical": 5}
    chosen = samples(tmp_path, limits)
    assert len(chosen["medmoe_mmlu_anatomy"]) == 5 and len(chosen["medmoe_mmlu_virology"]) == 1


def test_a_document_without_its_gold_answer_is_one_line(tmp_path):
    for task in ("medqa", "pubmedqa", "gsm8k", "general_lm"):
        write_task(tmp_path, task, "test", [{"label": 0, "final_decision": "no"}])
    write_task(tmp_path, "mmlu", "test", [{"subject": "anatomy"}])
    with pytest.raises(UserError, match=r"mmlu/test\.jsonl:1 has no gold answer \('answer'\)"):
        samples(tmp_path, {"medqa": 1, "pubmedqa": 1, "gsm8k": 1, "mmlu": 1, "general_lm": 1})


# ---- split: lm_eval's per-document output, compacted ----------------------------------------------------------
LIMITS = ["medqa=2", "pubmedqa=3", "gsm8k=2", "mmlu=2", "general_lm=2"]
PUBMEDQA_CHOICES = ["yes", "no", "maybe"]


def every_subject_data(fixtures: Path, out: Path) -> Path:
    """The fixture records, with two test records (copies of the first) for each MMLU subject they lack:
    medmoe_mmlu is a group of all 57 subjects and needs documents in each."""
    shutil.copytree(fixtures, out)
    subjects = sorted(path.stem.removeprefix("medmoe_mmlu_") for path in MMLU_TASKS.glob("medmoe_mmlu_*.yaml"))
    for part in ("test", "dev"):
        path = out / "mmlu" / f"{part}.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        present = {record["subject"] for record in records}
        records += [{**records[0], "subject": s} for s in subjects if s not in present for _ in range(2)]
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return out


@pytest.fixture(scope="module")
def dummy_eval(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(prepared data, lm_eval output) of lm-eval's `dummy` model (random loglikelihoods, answers "lol") on
    every task, run as the eval rule runs it (a --samples draw, --log_samples)."""
    root = tmp_path_factory.mktemp("split")
    data = every_subject_data(FIXTURES, root / "data")
    results_main(["samples", "--data", str(data), "--limits", *LIMITS, "--out", str(root / "samples.json")])
    command = [str(LM_EVAL), "--model", "dummy", "--include_path", "benchmark/tasks", "--tasks", EVAL_TASKS]
    command += ["--samples", str(root / "samples.json"), "--metadata", json.dumps({"data_dir": str(data)})]
    command += ["--seed", "0", "--output_path", str(root / "raw"), "--log_samples"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=OFFLINE)
    assert run.returncode == 0, run.stderr[-3000:]
    return data, root / "raw"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_split_writes_every_document_as_lm_eval_scored_it(dummy_eval: tuple[Path, Path], tmp_path: Path) -> None:
    data, raw = dummy_eval
    split(raw, "dummy", tmp_path)
    (results_file,) = raw.glob("*/results_*.json")
    lm = json.loads(results_file.read_text(encoding="utf-8"))
    drawn = json.loads((data.parent / "samples.json").read_text())
    for task in (name for name in TASKS if name != "general_lm"):  # the probe: below
        record = json.loads((tmp_path / f"{task}.json").read_text())
        documents = read_jsonl(tmp_path / f"{task}.samples.jsonl")
        assert record["n"] == record["documents"] == len(documents)
        assert sum(doc["correct"] for doc in documents) / len(documents) == pytest.approx(record["score"], abs=1e-12)
        if "gold" in documents[0]:  # lm-eval's gold_logprob and brier are those of the logged loglikelihoods
            log_probs = [log_softmax(doc["loglikelihoods"]) for doc in documents]
            gold = [lp[doc["gold"]] for lp, doc in zip(log_probs, documents, strict=True)]
            brier = [
                ((np.exp(lp) - np.eye(len(lp))[doc["gold"]]) ** 2).sum()
                for lp, doc in zip(log_probs, documents, strict=True)
            ]
            assert record["metrics"]["gold_logprob"] == pytest.approx(np.mean(gold), abs=1e-9)
            assert record["metrics"]["brier"] == pytest.approx(np.mean(brier), abs=1e-9)
        by_leaf: dict[str, list[dict]] = {}
        for doc in documents:
            by_leaf.setdefault(doc["task"], []).append(doc)
        for leaf, docs in by_leaf.items():
            assert [doc["doc_id"] for doc in docs] == drawn[leaf]  # the drawn documents, in order
            assert sum(doc["correct"] for doc in docs) / len(docs) == pytest.approx(
                lm["results"][leaf][TASKS[task].metric]
            )
    # lm-eval's stderr: of the task, of the group; mmlu_medical pools its subjects as lm-eval pools a group
    stderr = {task: json.loads((tmp_path / f"{task}.json").read_text())["stderr"] for task in TASKS}
    assert stderr["medqa"] == lm["results"]["medmoe_medqa"]["acc_stderr,none"]
    assert stderr["mmlu"] == lm["groups"]["medmoe_mmlu"]["acc_stderr,none"]
    medical = read_jsonl(tmp_path / "mmlu_medical.samples.jsonl")
    assert {doc["task"] for doc in medical} == {f"medmoe_mmlu_{s}" for s in MMLU_MEDICAL_SUBJECTS}
    sizes = [lm["results"][f"medmoe_mmlu_{s}"]["sample_len"] for s in MMLU_MEDICAL_SUBJECTS]
    accs = [lm["results"][f"medmoe_mmlu_{s}"]["acc,none"] for s in MMLU_MEDICAL_SUBJECTS]
    weighted = sum(a * n for a, n in zip(accs, sizes, strict=True)) / sum(sizes)
    assert sum(doc["correct"] for doc in medical) / len(medical) == pytest.approx(weighted, abs=1e-12)
    assert stderr["mmlu_medical"] == pytest.approx(pooled_stderr(medical))
    general = read_jsonl(tmp_path / "mmlu_general.samples.jsonl")
    assert len({doc["task"] for doc in general}) == 51 and not {doc["task"] for doc in general} & {
        d["task"] for d in medical
    }
    # the general LM probe: no correctness; bits per byte from each document's loglikelihood and bytes
    probe, texts = read_jsonl(tmp_path / "general_lm.samples.jsonl"), read_jsonl(data / "general_lm" / "test.jsonl")
    assert [doc["doc_id"] for doc in probe] == drawn["medmoe_general_lm"] and stderr["general_lm"] is None
    assert all(doc["correct"] is None for doc in probe)
    sizes = [len(instruction_plain_text(texts[doc["doc_id"]]).encode()) for doc in probe]
    assert [doc["bytes"] for doc in probe] == sizes
    bits = -sum(doc["loglikelihood"] for doc in probe) / sum(doc["bytes"] for doc in probe) / np.log(2)
    score = json.loads((tmp_path / "general_lm.json").read_text())
    assert score["score"] == score["metrics"]["bits_per_byte"] == pytest.approx(bits, rel=1e-12)


def pooled_stderr(documents: list[dict]) -> float:
    """lm-eval's stderr of a size-weighted group, from the documents: the pooled within-subject variance."""
    by_subject: dict[str, list[int]] = {}
    for doc in documents:
        by_subject.setdefault(doc["task"], []).append(doc["correct"])
    squares = sum(sum((x - sum(xs) / len(xs)) ** 2 for x in xs) for xs in by_subject.values())
    total = sum(len(xs) for xs in by_subject.values())
    return (squares / (total - len(by_subject)) / total) ** 0.5


@pytest.mark.slow
def test_split_keeps_choices_gold_and_answers(dummy_eval: tuple[Path, Path], tmp_path: Path) -> None:
    data, raw = dummy_eval
    split(raw, "dummy", tmp_path)
    medqa = read_jsonl(data / "medqa" / "test.jsonl")
    logged = {record["doc_id"]: record for record in read_jsonl(next(raw.glob("*/samples_medmoe_medqa_*.jsonl")))}
    for doc in read_jsonl(tmp_path / "medqa.samples.jsonl"):
        assert doc["loglikelihoods"] == [float(ll) for ll, _ in logged[doc["doc_id"]]["filtered_resps"]]
        assert len(doc["loglikelihoods"]) == 4 and doc["gold"] == medqa[doc["doc_id"]]["label"]
        assert doc["correct"] == int(max(range(4), key=doc["loglikelihoods"].__getitem__) == doc["gold"])
    pubmedqa = read_jsonl(data / "pubmedqa" / "test.jsonl")
    for doc in read_jsonl(tmp_path / "pubmedqa.samples.jsonl"):
        assert doc["gold"] == PUBMEDQA_CHOICES.index(pubmedqa[doc["doc_id"]]["final_decision"])
        assert len(doc["loglikelihoods"]) == 3
    gsm8k = read_jsonl(data / "gsm8k" / "test.jsonl")
    for doc in read_jsonl(tmp_path / "gsm8k.samples.jsonl"):
        assert doc["answer"] is None and doc["correct"] == 0  # "lol": strict-match finds no "#### <number>"
        assert doc["target"] == gsm8k[doc["doc_id"]]["answer"].split("#### ")[-1]
        assert "loglikelihoods" not in doc


@pytest.mark.slow
def test_split_without_log_samples_fails_in_one_line_and_writes_nothing(
    dummy_eval: tuple[Path, Path], tmp_path: Path
) -> None:
    _, raw = dummy_eval
    results_only = tmp_path / "raw"
    (results_file,) = raw.glob("*/results_*.json")
    (results_only / "model").mkdir(parents=True)
    shutil.copy(results_file, results_only / "model" / results_file.name)
    with pytest.raises(UserError, match=r"^no lm_eval samples file for .* --log_samples$"):
        split(results_only, "dummy", tmp_path / "out")
    assert not (tmp_path / "out").exists()
