"""`medmoelora.data.prompts` against lm-eval 0.4.13's own prompt functions and Jinja templates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lm_eval.tasks
import pytest
from lm_eval.tasks._yaml_loader import load_yaml  # the loader lm-eval's TaskManager uses
from lm_eval.tasks.medqa import preprocess_medqa
from lm_eval.tasks.pubmedqa import preprocess_pubmedqa
from lm_eval.utils import apply_template  # lm-eval's Jinja rendering of doc_to_* templates

from medmoelora.data import prompts
from medmoelora.errors import UserError
from medmoelora.tasks import get_prompt

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "processed"
BUILTIN = Path(lm_eval.tasks.__file__).resolve().parent


def records(task: str, split: str = "test") -> list[dict[str, Any]]:
    path = FIXTURES / task / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def builtin_yaml(relative: str) -> dict[str, Any]:
    return load_yaml(BUILTIN / relative, resolve_func=False)


@pytest.mark.parametrize("doc", records("medqa") + records("medqa", "train"), ids=lambda d: d["id"])
def test_medqa_matches_builtin_functions(doc: dict[str, Any]) -> None:
    assert prompts.medqa_doc_to_text(doc) == preprocess_medqa.doc_to_text(doc)
    assert prompts.medqa_doc_to_target(doc) == preprocess_medqa.doc_to_target(doc)
    assert get_prompt("medqa").doc_to_choice(doc) == builtin_yaml("medqa/medqa.yaml")["doc_to_choice"]


@pytest.mark.parametrize("doc", records("pubmedqa"), ids=lambda d: d["id"])
def test_pubmedqa_matches_builtin_functions(doc: dict[str, Any]) -> None:
    builtin = builtin_yaml("pubmedqa/pubmedqa.yaml")
    assert prompts.pubmedqa_doc_to_text(doc) == preprocess_pubmedqa.doc_to_text(doc)
    assert prompts.pubmedqa_doc_to_target(doc) == doc[builtin["doc_to_target"]]
    assert get_prompt("pubmedqa").doc_to_choice(doc) == builtin["doc_to_choice"]


@pytest.mark.parametrize("doc", records("gsm8k"), ids=lambda d: d["id"])
def test_gsm8k_matches_builtin_templates(doc: dict[str, Any]) -> None:
    builtin = builtin_yaml("gsm8k/gsm8k.yaml")
    assert prompts.gsm8k_doc_to_text(doc) == apply_template(builtin["doc_to_text"], doc)
    assert prompts.gsm8k_doc_to_target(doc) == apply_template(builtin["doc_to_target"], doc)


@pytest.mark.parametrize("doc", records("mmlu"), ids=lambda d: d["id"])
def test_mmlu_matches_builtin_templates(doc: dict[str, Any]) -> None:
    builtin = builtin_yaml(f"mmlu/default/mmlu_{doc['subject']}.yaml")
    assert prompts.mmlu_doc_to_text(doc) == apply_template(builtin["doc_to_text"], doc)
    assert prompts.mmlu_doc_to_target(doc) == doc[builtin["doc_to_target"]]
    assert get_prompt("mmlu").doc_to_choice(doc) == builtin["doc_to_choice"]
    assert prompts.mmlu_description(doc["subject"]) == builtin["description"]


def test_mmlu_strips_the_question_like_the_builtin() -> None:
    doc = records("mmlu")[0]
    assert doc["question"] != doc["question"].strip()  # the fixture keeps one padded question
    assert prompts.mmlu_doc_to_text(doc).startswith(doc["question"].strip() + "\nA. ")


def test_format_lays_out_description_shots_and_completion() -> None:
    mmlu = get_prompt("mmlu")
    doc, *shots = records("mmlu", "dev")[:3]
    prompt, completion = mmlu.format(doc, shots)
    shot_text = "".join(f"{mmlu.doc_to_text(s)} {prompts.LETTERS[s['answer']]}\n\n" for s in shots)
    assert prompt == prompts.mmlu_description(doc["subject"]) + shot_text + mmlu.doc_to_text(doc)
    assert completion == " " + prompts.LETTERS[doc["answer"]]
    gsm8k_doc = records("gsm8k")[0]
    assert get_prompt("gsm8k").format(gsm8k_doc) == (
        prompts.gsm8k_doc_to_text(gsm8k_doc),
        " " + gsm8k_doc["answer"],
    )


def test_medmcqa_trains_on_the_medqa_prompt() -> None:
    medmcqa_doc = {"question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 2}
    medqa_doc = {"sent1": "Q?", "ending0": "a", "ending1": "b", "ending2": "c", "ending3": "d", "label": 2}
    assert get_prompt("medmcqa").format(medmcqa_doc) == get_prompt("medqa").format(medqa_doc)


def test_generation_task_has_no_choices_and_unknown_ids_are_named() -> None:
    with pytest.raises(TypeError, match="gsm8k"):
        get_prompt("gsm8k").doc_to_choice({})
    with pytest.raises(UserError, match="Did you mean 'medqa'"):
        get_prompt("medqa4")


# stanford_alpaca's train.py PROMPT_DICT, verbatim: the reference for the general-domain training prompt.
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


@pytest.mark.parametrize("text_input", ["", "Night : Day :: Right : Left"])
def test_general_instructions_train_on_the_alpaca_template(text_input: str) -> None:
    doc = {"instruction": "What is the relation?", "input": text_input, "output": "Opposites."}
    template = ALPACA_PROMPT_INPUT if text_input else ALPACA_PROMPT_NO_INPUT
    prompt, completion = get_prompt("general_instruct").format(doc)
    assert prompt == template.format_map(doc)
    assert completion == "\nOpposites."  # the loss falls on these tokens only (training.data)
    assert get_prompt("general_instruct").choices is None  # a generation: training appends EOS


@pytest.mark.parametrize("doc", records("general_lm"), ids=lambda d: d["id"])
def test_general_lm_probe_is_plain_text(doc: dict[str, Any]) -> None:
    text = get_prompt("general_lm").doc_to_target(doc)
    parts = [doc["instruction"], doc["input"], doc["output"]] if doc["input"] else [doc["instruction"], doc["output"]]
    assert text == "\n\n".join(parts)
    assert "###" not in text and "Below is an instruction" not in text  # not the training template
    assert get_prompt("general_lm").doc_to_text(doc) == ""  # a rolling loglikelihood has no prompt
