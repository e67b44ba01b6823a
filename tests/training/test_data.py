"""Training examples: prompt masked, and what an over-long example keeps."""

from __future__ import annotations

from medmoelora.tasks import get_prompt
from medmoelora.training.data import IGNORE_INDEX, tokenize_example


class CharTokenizer:
    """One token per character (id = code point), EOS 0: lengths are easy to reason about."""

    eos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(ch) for ch in text]}


def instruction(output: str) -> dict:
    return {"task_id": "general_instruct", "instruction": "Say it.", "input": "", "output": output}


def split(record: dict, max_length: int) -> tuple[str, str]:
    """(kept prompt text, kept answer text, EOS as '|')."""
    input_ids, labels = tokenize_example(CharTokenizer(), record, max_length)
    assert len(input_ids) == len(labels) <= max_length
    prompt = "".join(chr(i) for i, label in zip(input_ids, labels, strict=True) if label == IGNORE_INDEX)
    answer = "".join(chr(label) if label else "|" for label in labels if label != IGNORE_INDEX)
    return prompt, answer


def test_a_fitting_example_is_whole_with_the_loss_on_the_answer_and_eos() -> None:
    prompt, completion = get_prompt("general_instruct").format(instruction("Yes."))
    assert split(instruction("Yes."), 1000) == (prompt, completion + "|")


def test_a_long_prompt_loses_its_start_and_keeps_a_short_answer_whole() -> None:
    prompt, completion = get_prompt("general_instruct").format(instruction("Yes."))
    kept_prompt, answer = split(instruction("Yes."), 40)
    assert answer == completion + "|" and kept_prompt == prompt[-(40 - len(answer)) :]


def test_a_long_answer_loses_its_end_and_keeps_half_the_length_for_the_prompt() -> None:
    record = instruction("word " * 100)
    prompt, completion = get_prompt("general_instruct").format(record)
    kept_prompt, answer = split(record, 64)
    assert kept_prompt == prompt[-32:] and kept_prompt.endswith("### Response:")
    assert answer == completion[:32]  # no EOS: the answer did not end here
    medqa = {"task_id": "medqa", "sent1": "Q? " * 50, "ending0": "a", "ending1": "b", "ending2": "c",
             "ending3": "d", "label": 2}  # fmt: skip
    kept_prompt, answer = split(medqa, 16)
    assert answer == " C" and len(kept_prompt) == 14  # a one-letter answer: the prompt takes the rest
