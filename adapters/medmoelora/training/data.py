"""Training examples: the evaluation prompts, tokenized, with the loss on the answer tokens only.

Each record of ``<data>/<task>/train.jsonl`` becomes ``prompt + completion`` exactly as lm-eval scores
it (`medmoelora.data.prompts`), tokenized the way lm-eval's HFLM splits context and continuation (the
whole string is encoded once and the prompt's tokens are masked), so the model is trained on the
very token sequences it is evaluated on. Generation tasks (GSM8K) also learn to stop: EOS is appended.
"""

from __future__ import annotations

import json
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medmoelora.config import DOMAINS, AdapterConfig
from medmoelora.errors import UserError
from medmoelora.tasks import get_prompt

IGNORE_INDEX = -100  # label of tokens without loss (prompt, padding): torch's cross-entropy default


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    task: str
    task_id: int
    domain: int


def read_task_records(data_dir: Path, task: str, split: str = "train") -> list[dict[str, Any]]:
    path = data_dir / task / f"{split}.jsonl"
    if not path.is_file():
        raise UserError(f"training data {path} not found; run `medmoelora prepare-data --out {data_dir}` first")
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{number}: not valid JSON ({error.msg}); re-run prepare-data") from None
            _check_record(record, path, number)
            records.append(record)
    if not records:
        raise UserError(f"{path} has no records; re-run prepare-data")
    return records


REQUIRED_FIELDS = ("id", "task_id", "domain")  # what training reads of every prepared record


def _check_record(record: object, path: Path, number: int) -> None:
    """A prepared record names its id, task and domain (one of `DOMAINS`): one line naming the file if not."""
    if not isinstance(record, dict):
        raise UserError(f"{path}:{number}: not a JSON object; re-run prepare-data")
    missing = [field for field in REQUIRED_FIELDS if field not in record]
    if missing:
        raise UserError(
            f"{path}:{number}: the record has no {', '.join(repr(f) for f in missing)} (prepared records carry "
            f"{', '.join(REQUIRED_FIELDS)}); re-run prepare-data"
        )
    if record["domain"] not in DOMAINS:
        raise UserError(
            f"{path}:{number}: domain {record['domain']!r} is not one of {', '.join(DOMAINS)}; re-run prepare-data"
        )


def tokenize_example(tokenizer: Any, record: dict[str, Any], max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with labels = IGNORE_INDEX on the prompt.

    Too long: the prompt loses its start (a short answer is always whole); an answer longer than half of
    ``max_length`` loses its end instead, so that at least the prompt's last ``max_length // 2`` tokens
    stay and the model never learns a response without its instruction.
    """
    prompt_format = get_prompt(record["task_id"])
    prompt, completion = prompt_format.format(record)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole_ids = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    # lm-eval's split: the continuation is what the whole encoding adds after the prompt's encoding.
    answer_ids = whole_ids[len(prompt_ids) :]
    if prompt_format.choices is None and tokenizer.eos_token_id is not None:
        answer_ids = [*answer_ids, tokenizer.eos_token_id]
    answer_ids = answer_ids[: max_length - min(len(prompt_ids), max_length // 2)]
    prompt_ids = prompt_ids[len(prompt_ids) - (max_length - len(answer_ids)) :] if max_length > len(answer_ids) else []
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def build_examples(
    data_dir: str | Path,
    tasks: Sequence[str],
    tokenizer: Any,
    adapter: AdapterConfig,
    max_length: int,
    max_examples_per_task: int | None,
    seed: int,
    exclude_ids: Collection[str] = frozenset(),
) -> list[Example]:
    """Every training example of the mixture, each with its task id and domain label; records whose
    ``id`` is in ``exclude_ids`` (the held-out slices, `medmoelora.training.heldout`) are left out
    before the per-task sample is drawn."""
    data_dir = Path(data_dir)
    if adapter.routing == "task":
        missing = [task for task in tasks if task not in adapter.task_names]
        if missing:
            raise UserError(
                f"training tasks {missing} have no expert in this Multi-LoRA adapter (task_names "
                f"{list(adapter.task_names)}); set adapter.task_names to the training tasks"
            )
    examples = []
    for task in tasks:
        records = [record for record in read_task_records(data_dir, task) if record["id"] not in exclude_ids]
        if max_examples_per_task is not None and len(records) > max_examples_per_task:
            records = random.Random(f"{seed}-{task}").sample(records, max_examples_per_task)
        task_id = training_task_id(adapter, tasks, task)
        for record in records:
            input_ids, labels = tokenize_example(tokenizer, record, max_length)
            examples.append(Example(input_ids, labels, task, task_id, DOMAINS.index(record["domain"])))
    return examples


def training_task_id(adapter: AdapterConfig, tasks: Sequence[str], task: str) -> int:
    """The task id a training task's batches carry: its expert under task routing, else its position."""
    return adapter.task_index(task) if adapter.routing == "task" else list(tasks).index(task)


class ExampleDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]


@dataclass
class Collator:
    """Right-pads a batch; carries task ids and domain labels for routing and the aux losses."""

    pad_token_id: int

    def __call__(self, batch: list[Example]) -> dict[str, torch.Tensor]:
        length = max(len(example.input_ids) for example in batch)
        input_ids = torch.full((len(batch), length), self.pad_token_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)  # (B, T)
        for row, example in enumerate(batch):
            size = len(example.input_ids)
            input_ids[row, :size] = torch.tensor(example.input_ids)
            labels[row, :size] = torch.tensor(example.labels)
            attention_mask[row, :size] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "task_ids": torch.tensor([example.task_id for example in batch]),  # (B,)
            "domain_labels": torch.tensor([example.domain for example in batch]),  # (B,)
        }
