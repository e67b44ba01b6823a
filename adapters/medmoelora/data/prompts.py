"""Prompt formatting for every task of the suite: the one place it lives.

Each task of the registry (`medmoelora.tasks`) holds its `TaskPrompt`, built from these functions.
The suite's lm-eval tasks (``benchmark/tasks``) call them through ``!function utils.*``, and training
formats its examples with `TaskPrompt.format`, so a model is trained on exactly the prompts it is
evaluated on. Each task reproduces lm-eval 0.4.13's built-in task character for character
(``tests/eval`` renders the same records through both and compares):

    medqa     medqa_4options    lm_eval/tasks/medqa/preprocess_medqa.py
    pubmedqa  pubmedqa          lm_eval/tasks/pubmedqa/preprocess_pubmedqa.py
    gsm8k     gsm8k             lm_eval/tasks/gsm8k/gsm8k.yaml (Jinja doc_to_text / doc_to_target)
    mmlu      mmlu_<subject>    lm_eval/tasks/mmlu/default/_default_template_yaml (Jinja) + description
    medmcqa   (training only)   rendered in the MedQA format, so that it teaches the MedQA prompt
    general-domain instructions (training only): the Alpaca template (tatsu-lab/stanford_alpaca)
    the general LM probe: plain text (instruction, input, response), scored by a rolling loglikelihood

A record ("doc") is one line of ``<data_dir>/<task>/<split>.jsonl`` with the fields of the Hugging Face
dataset that the built-in task reads (see `medmoelora prepare-data`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Doc = Mapping[str, Any]

LETTERS = ("A", "B", "C", "D")
PUBMEDQA_CHOICES = ("yes", "no", "maybe")


def _options_block(options: Sequence[str]) -> str:
    """``A. <option>\\n`` per option, the layout shared by MedQA and MMLU."""
    return "".join(f"{letter}. {option}\n" for letter, option in zip(LETTERS, options, strict=True))


def medqa_doc_to_text(doc: Doc) -> str:
    """``Question: ...\\nA. ...\\nD. ...\\nAnswer:`` (lm-eval ``preprocess_medqa.doc_to_text``)."""
    options = [doc["ending0"], doc["ending1"], doc["ending2"], doc["ending3"]]
    return f"Question: {doc['sent1']}\n{_options_block(options)}Answer:"


def medqa_doc_to_target(doc: Doc) -> int:
    """Index of the correct option."""
    return doc["label"]


def medmcqa_doc_to_text(doc: Doc) -> str:
    """A MedMCQA record in the MedQA prompt (training only: MedMCQA has no evaluation task here)."""
    options = [doc["opa"], doc["opb"], doc["opc"], doc["opd"]]
    return f"Question: {doc['question']}\n{_options_block(options)}Answer:"


def medmcqa_doc_to_target(doc: Doc) -> int:
    """Index of the correct option (``cop``, 0-3)."""
    return doc["cop"]


def pubmedqa_doc_to_text(doc: Doc) -> str:
    """``Abstract: <contexts, one a line>\\nQuestion: ...\\nAnswer:`` (``preprocess_pubmedqa``)."""
    contexts = "\n".join(doc["CONTEXTS"])
    return f"Abstract: {contexts}\nQuestion: {doc['QUESTION']}\nAnswer:"


def pubmedqa_doc_to_target(doc: Doc) -> str:
    """``yes`` / ``no`` / ``maybe``: lm-eval's ``doc_to_target: final_decision``, a choice's text."""
    return doc["final_decision"]


def gsm8k_doc_to_text(doc: Doc) -> str:
    """``Question: ...\\nAnswer:`` (lm-eval: ``"Question: {{question}}\\nAnswer:"``)."""
    return f"Question: {doc['question']}\nAnswer:"


def gsm8k_doc_to_target(doc: Doc) -> str:
    """The whole worked solution, ending in ``#### <number>`` (the few-shot answers show the reasoning)."""
    return doc["answer"]


def mmlu_doc_to_text(doc: Doc) -> str:
    """The stripped question, the four options, ``Answer:`` (lm-eval's MMLU default template)."""
    return f"{doc['question'].strip()}\n{_options_block(doc['choices'])}Answer:"


def mmlu_doc_to_target(doc: Doc) -> int:
    """Index of the correct option."""
    return doc["answer"]


# tatsu-lab/stanford_alpaca's PROMPT_DICT (train.py): the template its 52k instructions were tuned with.
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
ALPACA_PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)


def instruction_doc_to_text(doc: Doc) -> str:
    """The Alpaca template up to ``### Response:``; the response follows after a newline."""
    if doc["input"]:
        return (
            f"{ALPACA_PREAMBLE_INPUT}\n\n### Instruction:\n{doc['instruction']}\n\n"
            f"### Input:\n{doc['input']}\n\n### Response:"
        )
    return f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{doc['instruction']}\n\n### Response:"


def instruction_doc_to_target(doc: Doc) -> str:
    """The reference response."""
    return doc["output"]


def instruction_plain_text(doc: Doc) -> str:
    """An instruction record as plain text: instruction, input (if any) and response, a blank line apart
    (the general LM probe's documents).

    No template: the probe measures general language modelling, not whether a model learned the
    training template (which only the runs trained on the general-domain instructions saw).
    """
    return "\n\n".join(part for part in (doc["instruction"], doc["input"], doc["output"]) if part)


def mmlu_description(subject: str) -> str:
    """The per-subject preamble lm-eval puts before the (few-shot) prompt."""
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def _no_description(doc: Doc) -> str:
    return ""


@dataclass(frozen=True)
class TaskPrompt:
    """How one task turns a record into a prompt and an answer, in lm-eval's terms.

    ``doc_to_target`` returns an index into ``choices`` for a multiple-choice task, the answer text
    otherwise; ``choices`` is None for a generation task (GSM8K).
    """

    task_id: str
    doc_to_text: Callable[[Doc], str]
    doc_to_target: Callable[[Doc], int | str]
    choices: tuple[str, ...] | None = None
    description: Callable[[Doc], str] = _no_description
    # lm-eval's defaults; none of the reproduced built-in tasks changes them.
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"

    def doc_to_choice(self, doc: Doc) -> list[str]:
        """The answer options (the same for every record of a task)."""
        if self.choices is None:
            raise TypeError(f"task {self.task_id!r} generates its answer; it has no choices")
        return list(self.choices)

    def answer(self, doc: Doc) -> str:
        """The correct answer as text: a choice (``"B"``, ``"maybe"``) or the GSM8K solution."""
        target = self.doc_to_target(doc)
        return self.choices[target] if self.choices is not None and isinstance(target, int) else str(target)

    def format(self, doc: Doc, shots: Sequence[Doc] = ()) -> tuple[str, str]:
        """``(prompt, completion)`` exactly as lm-eval scores them without a chat template.

        The prompt is lm-eval's plain-text ``fewshot_context``: description, then each shot as
        ``text + target_delimiter + answer + fewshot_delimiter``, then the record's text; the
        completion is ``target_delimiter + answer`` (the continuation lm-eval scores as correct).
        """
        shot_text = "".join(
            f"{self.doc_to_text(shot)}{self.target_delimiter}{self.answer(shot)}{self.fewshot_delimiter}"
            for shot in shots
        )
        prompt = f"{self.description(doc)}{shot_text}{self.doc_to_text(doc)}"
        return prompt, f"{self.target_delimiter}{self.answer(doc)}"
