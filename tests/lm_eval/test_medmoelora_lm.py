"""`MedMoELoRALM` in process: task-routed groups, order restoration, and HFLM's batching options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from medmoelora.errors import UserError
from medmoelora_eval.lm_model import MedMoELoRALM
from tests.lm_eval.helpers import request

PROMPT = ("Question: Is aspirin an anticoagulant?\nAnswer:", " yes")
# The same prompt under every task, so that a result can only differ by the expert that produced it.
MIXED = ["medmoe_pubmedqa", "medmoe_gsm8k", "medmoe_medqa", "medmoe_pubmedqa", "medmoe_mmlu_anatomy", "medmoe_gsm8k",
         "medmoe_mmlu_astronomy"]  # fmt: skip
EXPERT = {"medmoe_pubmedqa": "pubmedqa", "medmoe_gsm8k": "general_instruct", "medmoe_medqa": "medqa"}
EXPERT["medmoe_mmlu_anatomy"] = "medqa"  # via the preset's medmoe_mmlu_medical
EXPERT["medmoe_mmlu_astronomy"] = "general_instruct"  # via the preset's medmoe_mmlu_general


def expert_answers(
    reference: tuple[Any, Any], kind: str, arguments: tuple[object, ...], tasks: list[str] | None = None
) -> dict[str, Any]:
    """Each expert's answer to one request, computed directly (stock HFLM, one task id for every forward)."""
    adapted, lm = reference
    answers = {}
    for index, task in enumerate(adapted.adapter_config.task_names):
        if tasks is not None and task not in {EXPERT[name] for name in tasks}:
            continue
        with adapted.routing(task_ids=[index]):
            (answers[task],) = getattr(lm, kind)([request("medmoe_pubmedqa", arguments, kind)])
    return answers


def test_mixed_tasks_route_per_task_and_keep_their_order(multi_lora_lm: Any, multi_lora_reference: Any) -> None:
    experts = expert_answers(multi_lora_reference, "loglikelihood", PROMPT)
    assert len({round(loglikelihood, 4) for loglikelihood, _ in experts.values()}) == len(experts)
    results = multi_lora_lm.loglikelihood([request(task, PROMPT, doc_id=i) for i, task in enumerate(MIXED)])
    expected = [experts[EXPERT[task]][0] for task in MIXED]
    torch.testing.assert_close(torch.tensor([value for value, _ in results]), torch.tensor(expected))


def test_generation_routes_per_task(multi_lora_lm: Any, multi_lora_reference: Any) -> None:
    arguments = (PROMPT[0], {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False})
    tasks = ["medmoe_gsm8k", "medmoe_pubmedqa", "medmoe_gsm8k"]
    experts = expert_answers(multi_lora_reference, "generate_until", arguments, tasks)
    results = multi_lora_lm.generate_until([request(task, arguments, "generate_until") for task in tasks])
    assert results == [experts[EXPERT[task]] for task in tasks]


def test_rolling_loglikelihood_routes_per_task(multi_lora_lm: Any, multi_lora_reference: Any) -> None:
    text = (PROMPT[0] + PROMPT[1],)
    tasks = ["medmoe_medqa", "medmoe_gsm8k", "medmoe_medqa"]
    experts = expert_answers(multi_lora_reference, "loglikelihood_rolling", text, tasks)
    results = multi_lora_lm.loglikelihood_rolling([request(task, text, "loglikelihood_rolling") for task in tasks])
    torch.testing.assert_close(torch.tensor(results), torch.tensor([experts[EXPERT[task]] for task in tasks]))


def test_unmapped_task_fails_naming_it(multi_lora_lm: Any) -> None:
    with pytest.raises(UserError, match=r"no expert for lm-eval task\(s\) my_task; its eval_task_map maps medmoe_"):
        multi_lora_lm.loglikelihood([request("medmoe_pubmedqa", PROMPT), request("my_task", PROMPT)])


def test_auto_batch_size_detects_inside_the_task_group(tiny_model_dir: Path, adapters: dict[str, Path]) -> None:
    lm = MedMoELoRALM(
        pretrained=str(tiny_model_dir),
        adapter=str(adapters["multi_lora"]),
        device="cpu",
        batch_size="auto",
        max_batch_size=2,
    )
    assert len(lm.loglikelihood([request("medmoe_pubmedqa", PROMPT)])) == 1
    assert lm.batch_sizes == {0: 2}  # detection ran (its forwards need the group's task id set)


def test_soft_routing_needs_no_task(tiny_model_dir: Path, adapters: dict[str, Path]) -> None:
    lm = MedMoELoRALM(pretrained=str(tiny_model_dir), adapter=str(adapters["med_moe_lora"]), device="cpu")
    (pubmedqa, _), (unknown, _) = lm.loglikelihood([request("medmoe_pubmedqa", PROMPT), request("any_task", PROMPT)])
    assert lm.task_router is None and pubmedqa == pytest.approx(unknown, abs=1e-5)


def test_adapter_argument_is_required(tiny_model_dir: Path) -> None:
    with pytest.raises(UserError, match="needs the adapter"):
        MedMoELoRALM(pretrained=str(tiny_model_dir), device="cpu")


@pytest.mark.parametrize("preset", ["lora", "multi_lora"])
def test_merged_evaluation_equals_the_unmerged_path_and_restores_the_weights(
    tiny_model_dir: Path, adapters: dict[str, Path], preset: str
) -> None:
    def lm(merge: bool) -> MedMoELoRALM:
        return MedMoELoRALM(pretrained=str(tiny_model_dir), adapter=str(adapters[preset]), device="cpu", merge=merge)

    merged, unmerged = lm(True), lm(False)
    before = {name: tensor.clone() for name, tensor in merged.model.state_dict().items()}
    requests = [request(task, PROMPT, doc_id=i) for i, task in enumerate(MIXED)]
    expected = [value for value, _ in unmerged.loglikelihood(requests)]
    assert merged.merge and not unmerged.merge
    results = [value for value, _ in merged.loglikelihood(requests)]
    torch.testing.assert_close(torch.tensor(results), torch.tensor(expected))
    weight = merged.adapted.model.model.layers[0].self_attn.q_proj.base_layer.weight
    held = weight.data_ptr()
    assert not torch.equal(weight, before["model.layers.0.self_attn.q_proj.base_layer.weight"])  # merged
    merged.loglikelihood(requests[:1] if preset == "lora" else requests[-1:])  # the same expert again
    assert weight.data_ptr() == held  # still merged from the first call: no second merge
    merged.unmerge()
    after = merged.model.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())
