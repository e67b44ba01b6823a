"""Held-out loss per training task: the evidence that a run learned.

Every training task gets a fixed held-out set that training never sees:

- ``<data>/<task>/validation.jsonl`` when prepare-data wrote one that shares no record with the
  task's training pool (PubMedQA's seeded validation draw);
- otherwise a seeded slice of ``<data>/<task>/train.jsonl`` (``heldout_examples`` records, at most half
  of the pool), removed from the training pool before the per-task sample is drawn (MedQA, MedMCQA and
  GSM8K have no validation split; MMLU's is part of its training pool when MMLU is the general task).

The draws use a fixed seed, not ``training.seed``, so that every method and every seed is scored on the
same records. The loss is the training objective's: mean negative log-likelihood per answer token, with
the labels exactly as in training (`medmoelora.training.data.tokenize_example`). A falling loss can be
the answer format alone (mass moving onto " A".." D" from the rest of the vocabulary), so the
multiple-choice tasks also get what lm-eval's accuracy sees: the loss and accuracy of the gold option
among the options. Everything is measured at the start and at the end of a run; the start is the model
with its adapters disabled, which is exactly the model at step 0 (every expert starts as a zero update,
B = 0) and stays the base model on a resumed run.

The start is therefore the same for every run that shares the base model and the held-out examples:
`medmoelora heldout-start` measures it once on the plain base model and writes it to a file that
``medmoelora train --heldout-start FILE`` reads instead of measuring it again (the workflow's
``heldout_start`` rule). The file names what the measurement depended on (`start_key`: the base
model's digest, dtype and device kind; a digest of every held-out example's tokens, labels and answer
options, and the batch size); a run whose key differs measures its own start and says why.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medmoelora.config import DOMAINS, AdapterConfig
from medmoelora.errors import UserError
from medmoelora.model import MoELoRAModel
from medmoelora.tasks import get_prompt
from medmoelora.training.data import (
    IGNORE_INDEX,
    Example,
    read_task_records,
    tokenize_example,
    training_task_id,
)
from medmoelora.training.objective import answer_positions

HELDOUT_SEED = "heldout"  # fixed: the same held-out records for every method, seed and config
START_FORMAT = "medmoelora-heldout-start/1"  # the `format` field of a held-out start file


@dataclass(frozen=True)
class HeldOutSet:
    """One training task's held-out records and where they come from."""

    task: str
    source: str  # "validation" (the prepared split) or "train" (a slice excluded from training)
    records: tuple[dict[str, Any], ...]

    @property
    def excluded_ids(self) -> frozenset[str]:
        """Record ids training must leave out: the slice, when it was carved from the training pool."""
        return frozenset(record["id"] for record in self.records) if self.source == "train" else frozenset()


def held_out_set(data_dir: str | Path, task: str, size: int) -> HeldOutSet:
    """The task's held-out records (see module doc); empty when the pool is too small to spare one."""
    data_dir = Path(data_dir)
    pool = read_task_records(data_dir, task)
    pool_ids = {record["id"] for record in pool}
    if (data_dir / task / "validation.jsonl").is_file():
        validation = read_task_records(data_dir, task, "validation")
        if not any(record["id"] in pool_ids for record in validation):
            return HeldOutSet(task, "validation", _draw(validation, size, task))
    return HeldOutSet(task, "train", _draw(pool, min(size, len(pool) // 2), task))


def held_out_sets(data_dir: str | Path, tasks: Sequence[str], size: int) -> dict[str, HeldOutSet]:
    return {task: held_out_set(data_dir, task, size) for task in tasks}


def _draw(records: list[dict[str, Any]], size: int, task: str) -> tuple[dict[str, Any], ...]:
    if size >= len(records):
        return tuple(records)
    return tuple(random.Random(f"{HELDOUT_SEED}-{task}").sample(records, size))


def held_out_examples(
    held_out: HeldOutSet, tokenizer: Any, adapter: AdapterConfig, tasks: Sequence[str], max_length: int
) -> list[Example]:
    """The held-out records tokenized exactly as training examples (loss on the answer tokens)."""
    task_id = training_task_id(adapter, tasks, held_out.task)
    examples = []
    for record in held_out.records:
        input_ids, labels = tokenize_example(tokenizer, record, max_length)
        examples.append(Example(input_ids, labels, held_out.task, task_id, DOMAINS.index(record["domain"])))
    return examples


def choice_token_ids(tokenizer: Any, record: dict[str, Any]) -> list[int] | None:
    """The token of each answer option after the record's prompt (lm-eval's context/continuation split),
    or None for a generation task or where an option takes more than one token."""
    prompt_format = get_prompt(record["task_id"])
    if prompt_format.choices is None:
        return None
    prompt, _ = prompt_format.format(record)
    prompt_length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    ids = []
    for choice in prompt_format.doc_to_choice(record):
        whole = tokenizer(prompt + prompt_format.target_delimiter + choice, add_special_tokens=False)["input_ids"]
        if len(whole) - prompt_length != 1:
            return None
        ids.append(whole[-1])
    return ids


@torch.no_grad()
def mean_token_nll(
    model: torch.nn.Module,
    examples: Sequence[Example],
    choices: Sequence[list[int] | None] | None = None,
) -> dict[str, float]:
    """``{"loss": mean NLL per labelled token, "tokens": labelled tokens}`` of ``model`` (a plain causal
    LM or a `MoELoRAModel`, which also gets the task ids) on ``examples``, in evaluation mode.

    One example at a time on its own tokens, with logits only at its answer positions: no padding and no
    LM head where nothing is scored. Summed over tokens in fp64, then divided once. With ``choices`` (per
    example, the token of each answer option, or None) it also returns what lm-eval's accuracy sees:
    ``choice_loss``, the mean -log p(gold | options) with p renormalised over the options, and
    ``choice_accuracy``, how often the gold option scores highest.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = torch.zeros((), dtype=torch.float64, device=device), 0
    choice_nll, correct, scored = 0.0, 0, 0
    try:
        for index, example in enumerate(examples):
            labels = torch.tensor(example.labels, device=device)  # (T,)
            positions = answer_positions(labels[None])[0]  # (n,): token t predicts label t + 1
            if positions.numel() == 0:
                continue
            routing = {}
            if isinstance(model, MoELoRAModel):
                routing = {"task_ids": torch.tensor([example.task_id]), "domain_labels": torch.tensor([example.domain])}
            input_ids = torch.tensor([example.input_ids], device=device)  # (1, T)
            logits = model(input_ids=input_ids, logits_to_keep=positions, **routing)["logits"][0].float()  # (n, V)
            total += F.cross_entropy(logits, labels[positions + 1], reduction="sum").double()
            tokens += positions.numel()
            options = choices[index] if choices is not None else None
            if options is None:
                continue
            answer_at = next(t for t, label in enumerate(example.labels) if label != IGNORE_INDEX)
            if answer_at == 0 or example.labels[answer_at] not in options:  # no prompt left to score from
                continue
            log_probs = torch.log_softmax(logits[0, options], dim=-1)  # (options,)
            gold = options.index(example.labels[answer_at])
            choice_nll -= float(log_probs[gold])
            correct += int(log_probs.argmax()) == gold
            scored += 1
    finally:
        model.train(was_training)
    result = {"loss": float(total) / tokens if tokens else float("nan"), "tokens": tokens}
    if scored:
        result.update(choice_loss=choice_nll / scored, choice_accuracy=correct / scored)
    return result


class HeldOutEvaluator:
    """Held-out loss of every training task, at the start (adapters disabled: the base model) and the end."""

    def __init__(
        self,
        examples: dict[str, list[Example]],
        sources: dict[str, str],
        choices: dict[str, list[list[int] | None]] | None = None,
    ) -> None:
        self.examples = {task: chosen for task, chosen in examples.items() if chosen}
        self.sources = sources
        self.choices = choices or {}
        self.start: dict[str, dict[str, float]] = {}

    def examples_or(self, training_examples: Sequence[Example], per_task: int) -> list[Example]:
        """Up to ``per_task`` examples of every task: held-out ones, else (no held-out set) training ones."""
        chosen: dict[str, list[Example]] = {task: list(examples[:per_task]) for task, examples in self.examples.items()}
        for example in training_examples:
            if example.task not in self.examples and len(chosen.setdefault(example.task, [])) < per_task:
                chosen[example.task].append(example)
        return [example for examples in chosen.values() for example in examples]

    def evaluate(self, model: torch.nn.Module) -> dict[str, dict[str, float]]:
        return {task: mean_token_nll(model, chosen, self.choices.get(task)) for task, chosen in self.examples.items()}

    def measure_start(self, adapted: MoELoRAModel) -> None:
        with adapted.disable_adapters():
            self.start = self.evaluate(adapted)

    def examples_digest(self) -> str:
        """sha256 of what the losses depend on besides the model: per task, every example's tokens and labels
        and its answer options (scored one example at a time: no batch size). Not the task ids: the start
        runs the base model, which routes nothing."""
        digest = hashlib.sha256(b"one example per forward\n")
        for task, examples in self.examples.items():
            options = self.choices.get(task) or [None] * len(examples)
            for example, choices in zip(examples, options, strict=True):
                digest.update(json.dumps([task, example.input_ids, example.labels, choices]).encode() + b"\n")
        return digest.hexdigest()[:16]

    def report(self, adapted: MoELoRAModel) -> dict[str, dict[str, Any]]:
        """Per task: source, examples, answer tokens, the loss at start and end and its change; for
        multiple-choice tasks also the choice loss and accuracy (what lm-eval scores) at start and end."""
        end = self.evaluate(adapted)
        report = {}
        for task in self.examples:
            entry = {"source": self.sources[task], "examples": len(self.examples[task]), "tokens": end[task]["tokens"]}
            for name in ("loss", "choice_loss", "choice_accuracy"):
                if name in end[task]:
                    entry[f"{name}_start"] = self.start[task][name]
                    entry[f"{name}_end"] = end[task][name]
            entry["loss_change"] = entry["loss_end"] - entry["loss_start"]
            report[task] = entry
        return report


def start_key(evaluator: HeldOutEvaluator, model_digest: str, dtype: torch.dtype, device: torch.device) -> dict:
    """What a start measurement depends on; two runs with equal keys measure equal start losses (the
    device kind is part of it: kernels of another device round differently)."""
    return {
        "model": model_digest,
        "dtype": str(dtype).removeprefix("torch."),
        "device": torch.device(device).type,
        "examples": evaluator.examples_digest(),
    }


def start_record(evaluator: HeldOutEvaluator, key: dict) -> dict[str, Any]:
    """The content of a held-out start file: its format, its key and the start losses per task."""
    return {"format": START_FORMAT, "key": key, "start": evaluator.start}


def load_start_file(path: str | Path) -> dict[str, Any]:
    """A held-out start file's content; a file that is not one raises a one-line `UserError` naming it."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--heldout-start {path} not found; write it with `medmoelora heldout-start`") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"--heldout-start {path} is not JSON; write it again with `medmoelora heldout-start`") from None
    if (
        not isinstance(record, dict)
        or record.get("format") != START_FORMAT
        or not isinstance(record.get("start"), dict)
    ):
        raise UserError(
            f"--heldout-start {path} is not a held-out start file ({START_FORMAT}); "
            "write it with `medmoelora heldout-start`"
        )
    return record


def read_start(path: str | Path, key: dict) -> tuple[dict[str, dict[str, float]] | None, str]:
    """The start losses in the held-out start file ``path`` when its key is ``key``, else (None, why)."""
    record = load_start_file(path)
    recorded = record.get("key") or {}
    differs = [
        f"{name} {recorded.get(name)!r}, not {value!r}" for name, value in key.items() if recorded.get(name) != value
    ]
    if differs:
        return None, f"{path} was measured for other settings ({'; '.join(differs)})"
    return record["start"], ""


def build_heldout(
    data_dir: str | Path, training: Any, tokenizer: Any, adapter: AdapterConfig
) -> tuple[HeldOutEvaluator, frozenset[str]]:
    """The evaluator of every training task's held-out set (``training``: a TrainConfig), and the record
    ids training must leave out."""
    tasks, size = training.tasks, training.heldout_examples
    sets = held_out_sets(data_dir, tasks, size) if size else {}
    examples = {task: held_out_examples(s, tokenizer, adapter, tasks, training.max_length) for task, s in sets.items()}
    choices = {task: [choice_token_ids(tokenizer, record) for record in s.records] for task, s in sets.items()}
    excluded = frozenset().union(*(s.excluded_ids for s in sets.values()))
    sources = {task: s.source for task, s in sets.items()}
    return HeldOutEvaluator(examples, sources, choices), excluded
