"""Our lm-eval tasks against lm-eval 0.4.13's built-in ones, rendering the same records.

Each built-in task is built from its own YAML (prompt functions, Jinja templates, metrics untouched)
with only the data source swapped for our fixture records; both sides then go through lm-eval's own
`fewshot_context` and `construct_requests`, so the strings a model would see are compared.
"""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import datasets
import lm_eval.tasks
import numpy as np
import pytest
from lm_eval.api.metrics import brier_score
from lm_eval.api.task import ConfigurableTask
from lm_eval.config.task import TaskConfig
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml  # the loader lm-eval's TaskManager uses

from medmoelora.tasks import DATA_TASKS, get_prompt

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "processed"
BUILTIN = Path(lm_eval.tasks.__file__).resolve().parent
FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed

MEDICAL_SUBJECTS = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)
# Our task -> (built-in YAML, prepared-data task, training task id, few-shot count to render).
CASES = {
    "medmoe_medqa": ("medqa/medqa.yaml", "medqa", "medqa", 3),
    "medmoe_pubmedqa": ("pubmedqa/pubmedqa.yaml", "pubmedqa", "pubmedqa", 3),
    "medmoe_gsm8k": ("gsm8k/gsm8k.yaml", "gsm8k", "gsm8k", 5),
    **{
        f"medmoe_mmlu_{subject}": (f"mmlu/default/mmlu_{subject}.yaml", "mmlu", "mmlu", 2)
        for subject in (*MEDICAL_SUBJECTS, "abstract_algebra", "high_school_mathematics")
    },
}
# Config fields that differ by design: names, where the data comes from, prompt functions (callables
# here, strings there: compared by rendering), metadata (ours adds task_id), MedQA's validation
# split, which the prepared data does not have (lm-eval evaluates on test either way), and the
# multiple-choice tasks' metrics: the built-in's plus gold_logprob and brier, through process_results
# (both compared below).
DIFFERENT_BY_DESIGN = {
    "metric_list",
    "process_results",
    "task",
    "task_alias",
    "tag",
    "custom_dataset",
    "dataset_path",
    "dataset_name",
    "dataset_kwargs",
    "doc_to_text",
    "doc_to_target",
    "doc_to_choice",
    "metadata",
    "validation_split",
}


def read_fixture(data_task: str, split: str, subject: str | None) -> list[dict[str, Any]]:
    """Fixture records, read independently of the loader under test."""
    lines = (FIXTURES / data_task / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if subject is None or r["subject"] == subject]


def builtin_task(yaml_path: str, data_task: str, subject: str | None) -> ConfigurableTask:
    """lm-eval's built-in task from its own YAML, reading the fixture records instead of the Hub."""
    config = load_yaml(BUILTIN / yaml_path, resolve_func=True)
    splits = {config.get(key) for key in ("training_split", "test_split", "fewshot_split")} - {None}

    def fixture_dataset(**_: Any) -> datasets.DatasetDict:
        return datasets.DatasetDict(
            {split: datasets.Dataset.from_list(read_fixture(data_task, split, subject)) for split in splits}
        )

    return ConfigurableTask(config={**config, "custom_dataset": fixture_dataset})


@pytest.fixture(scope="module")
def task_pairs(task_manager: TaskManager) -> dict[str, tuple[ConfigurableTask, ConfigurableTask]]:
    """Task name -> (ours, built in), both with the few-shot sampler seeded alike."""
    ours = task_manager.load(list(CASES))["tasks"]
    pairs = {}
    for name, (yaml_path, data_task, _, _) in CASES.items():
        subject = name.removeprefix("medmoe_mmlu_") if data_task == "mmlu" else None
        pair = (ours[name], builtin_task(yaml_path, data_task, subject))
        for task in pair:
            task.set_fewshot_seed(FEWSHOT_SEED)
        pairs[name] = pair
    return pairs


@pytest.mark.parametrize("name", CASES)
def test_prompts_targets_choices_are_the_builtins(name: str, task_pairs) -> None:
    ours, builtin = task_pairs[name]
    num_fewshot = CASES[name][3]
    assert len(ours.eval_docs) == len(builtin.eval_docs) > 0
    for doc in ours.eval_docs:
        assert ours.doc_to_text(doc) == builtin.doc_to_text(doc)
        assert ours.doc_to_target(doc) == builtin.doc_to_target(doc)
        if builtin.config.doc_to_choice is not None:
            assert ours.doc_to_choice(doc) == builtin.doc_to_choice(doc)
        for shots in (0, num_fewshot):
            context = ours.fewshot_context(doc, shots)
            assert context == builtin.fewshot_context(doc, shots)
            requests = ours.construct_requests(doc, context, metadata=(name, 0, 1))
            expected = builtin.construct_requests(doc, context, metadata=(name, 0, 1))
            assert [r.arguments for r in _as_list(requests)] == [r.arguments for r in _as_list(expected)]


def _as_list(requests: Any) -> list[Any]:
    return requests if isinstance(requests, list) else [requests]


@pytest.mark.parametrize("name", CASES)
def test_config_equals_the_builtin_but_for_names_and_data(name: str, task_pairs) -> None:
    """generation_kwargs, filters, metrics, few-shot settings, delimiters, output type, ..."""
    ours, builtin = task_pairs[name]
    for field in fields(TaskConfig):
        if field.name not in DIFFERENT_BY_DESIGN:
            assert _comparable(getattr(ours.config, field.name)) == _comparable(getattr(builtin.config, field.name)), (
                field.name
            )


CONTINUOUS = [
    {"metric": "gold_logprob", "aggregation": "mean", "higher_is_better": True},
    {"metric": "brier", "aggregation": "mean", "higher_is_better": False},
]


@pytest.mark.parametrize("name", CASES)
def test_metrics_are_the_builtins_plus_the_continuous_ones(name: str, task_pairs) -> None:
    ours, builtin = task_pairs[name]
    if builtin.OUTPUT_TYPE != "multiple_choice":  # gsm8k: generation, metrics untouched
        assert ours.config.metric_list == builtin.config.metric_list
        assert ours.config.process_results is None
        return
    assert ours.config.metric_list == builtin.config.metric_list + CONTINUOUS


@pytest.mark.parametrize("name", [name for name in CASES if name != "medmoe_gsm8k"])
def test_process_results_gives_the_builtins_accuracy_and_the_gold_probability(name: str, task_pairs) -> None:
    """On random loglikelihoods (ties included), acc and acc_norm equal lm-eval's own multiple-choice
    path; gold_logprob and brier follow the formula; brier averages to lm-eval's brier_score."""
    ours, builtin = task_pairs[name]
    rng = np.random.default_rng(0)
    briers = []
    for doc in ours.eval_docs:
        choices = builtin.doc_to_choice(doc)
        for draw in range(20):
            lls = rng.normal(-5.0, 3.0, len(choices)).round(0 if draw % 4 == 0 else 6)  # some ties
            results = [(float(ll), False) for ll in lls]
            mine, theirs = ours.process_results(doc, results), builtin.process_results(doc, results)
            assert {key: mine[key] for key in theirs} == theirs
            target = builtin.doc_to_target(doc)
            gold = choices.index(target) if isinstance(target, str) else target  # PubMedQA: the choice's text
            probs = np.exp(lls) / np.exp(lls).sum()
            assert mine["gold_logprob"] == pytest.approx(np.log(probs[gold]), abs=1e-9)
            assert mine["brier"] == pytest.approx(((probs - np.eye(len(choices))[gold]) ** 2).sum(), abs=1e-12)
            briers.append((mine["brier"], (gold, probs)))
    assert np.mean([b for b, _ in briers]) == pytest.approx(brier_score([item for _, item in briers]))


def _comparable(value: Any) -> Any:
    """A resolved FewshotConfig without its copies of the prompt functions (compared by rendering)."""
    if is_dataclass(value):
        return {k: v for k, v in vars(value).items() if not k.startswith("doc_to_")}
    return value


@pytest.mark.parametrize("name", CASES)
def test_metadata_names_the_training_task(name: str, task_pairs) -> None:
    ours, _ = task_pairs[name]
    task_id = CASES[name][2]
    assert ours.config.metadata["task_id"] == task_id
    assert task_id in DATA_TASKS
    assert ours.config.metadata["version"] >= 1.0


def test_format_is_what_lm_eval_scores(task_pairs) -> None:
    """Training's `TaskPrompt.format` gives lm-eval's context and the continuation scored as correct."""
    ours, _ = task_pairs["medmoe_mmlu_anatomy"]
    prompt = get_prompt("mmlu")
    shots = list(ours.fewshot_docs())[:2]  # first_n sampler: the subject's first dev records
    for doc in ours.eval_docs:
        text, completion = prompt.format(doc, shots)
        assert text == ours.fewshot_context(doc, 2)
        gold = ours.construct_requests(doc, text, metadata=("t", 0, 1))[ours.doc_to_target(doc)]
        assert gold.arguments == (text, completion)
    gsm8k, _ = task_pairs["medmoe_gsm8k"]
    doc = gsm8k.eval_docs[0]
    assert get_prompt("gsm8k").format(doc) == (gsm8k.fewshot_context(doc, 0), " " + gsm8k.doc_to_target(doc))
