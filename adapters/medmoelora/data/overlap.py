"""Train/eval contamination check: no training question may reappear in an evaluation set.

Two keys per question: the exact text, and a normalised text (Unicode NFKC, lowercase, punctuation
stripped to spaces, whitespace collapsed) that also catches copies differing only in case, quotes or spacing.
An instruction record (a task with a ``context_field``) has two questions: its instruction with its
input, and its input alone, so that an evaluation question pasted as the input of an instruction is caught.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from medmoelora.tasks import data_task

Record = dict[str, Any]

METHOD = (
    "a training record is dropped if its question text equals an evaluation question exactly, or after "
    "normalisation (Unicode NFKC, lowercase, every Unicode punctuation character replaced by a space, "
    "whitespace collapsed); an instruction record's questions are its instruction plus input, and its "
    "input alone"
)
_SPACE = re.compile(r"\s+")


def questions(record: Record) -> tuple[str, ...]:
    """The question texts of a record of any task (one, except for instruction records with an input)."""
    task = data_task(record["task_id"])
    question = record[task.question_field]
    context = record[task.context_field] if task.context_field else ""
    return (f"{question}\n{context}", context) if context else (question,)


def normalize(text: str) -> str:
    """NFKC, lowercase, Unicode punctuation -> space (so "risk-factor" == "risk factor"), collapse spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return _SPACE.sub(" ", text).strip()


@dataclass
class EvalIndex:
    """The evaluation questions by exact and by normalised text, each mapped to one evaluation id."""

    exact: dict[str, str] = field(default_factory=dict)
    normalized: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, eval_records: list[Record]) -> EvalIndex:
        index = cls()
        for record in eval_records:
            for text in questions(record):
                index.exact.setdefault(text, record["id"])
                if key := normalize(text):  # an all-punctuation question must not match everything
                    index.normalized.setdefault(key, record["id"])
        return index

    def match(self, record: Record) -> tuple[str, str] | None:
        """(kind, evaluation id) of the first hit, kind 'exact' or 'normalized'; None if clean."""
        texts = questions(record)
        for text in texts:
            if text in self.exact:
                return "exact", self.exact[text]
        for text in texts:
            key = normalize(text)
            if key and key in self.normalized:
                return "normalized", self.normalized[key]
        return None


def drop_overlap(records: list[Record], index: EvalIndex) -> tuple[list[Record], dict[str, Any]]:
    """Keep the records whose question is in no evaluation set; report what was dropped and why."""
    kept, dropped = [], []
    counts = {"exact": 0, "normalized": 0}
    for record in records:
        hit = index.match(record)
        if hit is None:
            kept.append(record)
            continue
        counts[hit[0]] += 1
        dropped.append({"id": record["id"], "match": hit[0], "eval_id": hit[1]})
    report = {"before": len(records), "dropped": len(dropped), **counts, "after": len(kept),
              "dropped_records": dropped}  # fmt: skip
    return kept, report


def count_overlap(records: list[Record], index: EvalIndex) -> int:
    """How many records still collide with the evaluation sets (must be 0 after `drop_overlap`)."""
    return sum(index.match(record) is not None for record in records)
