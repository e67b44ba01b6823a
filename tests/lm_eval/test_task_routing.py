"""Which Multi-LoRA expert answers which lm-eval task (`medmoelora_eval.task_routing`), without a model."""

from __future__ import annotations

import pytest

from medmoelora import AdapterConfig
from medmoelora.errors import UserError
from medmoelora_eval.task_routing import TaskRouter, lookup_names
from tests.lm_eval.helpers import request


def router(**overrides: object) -> TaskRouter:
    return TaskRouter(AdapterConfig.from_preset("multi_lora", **overrides), "runs/multi_lora/adapter")


def test_mmlu_subtasks_fall_back_to_their_groups_most_specific_first() -> None:
    assert lookup_names("medmoe_mmlu_anatomy") == ["medmoe_mmlu_anatomy", "medmoe_mmlu_medical", "medmoe_mmlu"]
    assert lookup_names("medmoe_mmlu_astronomy") == ["medmoe_mmlu_astronomy", "medmoe_mmlu_general", "medmoe_mmlu"]
    assert lookup_names("medmoe_mmlu_general") == ["medmoe_mmlu_general"]
    assert lookup_names("medmoe_pubmedqa") == ["medmoe_pubmedqa"]
    preset = router()  # medmoe_mmlu_general -> general_instruct, medmoe_mmlu_medical -> medqa
    assert preset.training_task("medmoe_mmlu_anatomy", "mmlu") == "medqa"
    assert preset.training_task("medmoe_mmlu_astronomy", "mmlu") == "general_instruct"
    # Only the subject's own group counts: a general subject never reaches the medical mapping.
    medical_only = router(eval_task_map={"medmoe_mmlu_medical": "medqa", "medmoe_mmlu": "pubmedqa"})
    assert medical_only.training_task("medmoe_mmlu_astronomy", "mmlu") == "pubmedqa"


def test_every_general_probe_goes_to_the_general_expert() -> None:
    """Multi-LoRA's general-domain expert (trained on general instructions) answers the forgetting probes."""
    preset = router()
    for task in ("medmoe_gsm8k", "medmoe_mmlu_general", "medmoe_mmlu_astronomy", "medmoe_general_lm"):
        assert preset.training_task(task, None) == "general_instruct", task
    assert "gsm8k" not in preset.config.task_names


def test_own_mapping_wins_then_the_records_task_id_then_the_fallback() -> None:
    mapped = router(eval_task_map={"medmoe_pubmedqa": "medqa"})
    assert mapped.training_task("medmoe_pubmedqa", "pubmedqa") == "medqa"
    assert mapped.training_task("my_pubmedqa_variant", "pubmedqa") == "pubmedqa"
    assert mapped.training_task("my_task", "not_a_training_task") is None
    assert router(fallback_task="medmcqa").training_task("my_task", None) == "medmcqa"


def test_groups_keep_request_positions_per_expert() -> None:
    tasks = ["medmoe_gsm8k", "medmoe_pubmedqa", "medmoe_gsm8k", "medmoe_mmlu_anatomy"]
    groups = router().group([request(task, ("q", " a")) for task in tasks])
    assert groups == {3: [0, 2], 2: [1], 0: [3]}  # task_names: medqa, medmcqa, pubmedqa, general_instruct


def test_unmapped_task_names_the_task_and_the_mapping() -> None:
    two_tasks = router(
        task_names=["medqa", "pubmedqa"],
        expert_schedule={"num_experts": 2},
        eval_task_map={"medmoe_pubmedqa": "pubmedqa"},
    )
    with pytest.raises(UserError) as error:
        two_tasks.group([request("medmoe_pubmedqa", ("q", " a")), request("medmoe_gsm8k", ("q", " a"))])
    message = str(error.value)
    assert "no expert for lm-eval task(s) medmoe_gsm8k;" in message
    assert "medmoe_pubmedqa -> pubmedqa" in message and "fallback_task" in message
    assert "\n" not in message
