"""Which expert of a Multi-LoRA adapter (routing 'task') answers an lm-eval request.

Every lm-eval request carries its task name (``Instance.task_name``). The adapter config maps lm-eval
task names to training tasks (``eval_task_map``); the expert is the training task's index in
``task_names``. A task that is not mapped itself is looked up, in this order, under the groups of the
task registry that contain it (an MMLU subject: its medical or general subset, then all of MMLU), then
by the training task id that every prepared record carries (the ``task_id`` of the task YAML's
metadata), then as the config's ``fallback_task``; failing all of these is an error that names the task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from medmoelora.config import AdapterConfig
from medmoelora.errors import UserError
from medmoelora.tasks import groups_over


class Request(Protocol):
    """The part of lm-eval's ``Instance`` that routing reads."""

    task_name: str | None
    doc: Any


def lookup_names(task_name: str) -> list[str]:
    """The task itself, then the groups that contain it, most specific first."""
    return [task_name, *groups_over(task_name)]


class TaskRouter:
    """Maps requests to expert indices for one adapter; each distinct task is resolved once."""

    def __init__(self, config: AdapterConfig, adapter: str) -> None:
        self.config = config
        self.adapter = adapter
        self._resolved: dict[tuple[str | None, str | None], int | None] = {}

    def training_task(self, task_name: str | None, doc_task_id: str | None = None) -> str | None:
        """The training task for an lm-eval task, or None when nothing maps it."""
        for name in lookup_names(task_name) if task_name else []:
            if name in self.config.eval_task_map:
                return self.config.eval_task_map[name]
        if doc_task_id in self.config.task_names:
            return doc_task_id
        return self.config.fallback_task

    def group(self, requests: Sequence[Request]) -> dict[int, list[int]]:
        """Expert index -> positions of its requests (in request order). Raises for unmapped tasks."""
        groups: dict[int, list[int]] = {}
        unmapped: set[str] = set()
        for position, request in enumerate(requests):
            doc = request.doc if isinstance(request.doc, Mapping) else {}
            key = (request.task_name, doc.get("task_id"))
            if key not in self._resolved:
                task = self.training_task(*key)
                self._resolved[key] = None if task is None else self.config.task_index(task)
            expert = self._resolved[key]
            if expert is None:
                unmapped.add(str(request.task_name))
            else:
                groups.setdefault(expert, []).append(position)
        if unmapped:
            raise self.unmapped_error(sorted(unmapped))
        return groups

    def unmapped_error(self, tasks: list[str]) -> UserError:
        mapped = ", ".join(f"{name} -> {task}" for name, task in sorted(self.config.eval_task_map.items()))
        return UserError(
            f"adapter {self.adapter} routes by task (Multi-LoRA) but has no expert for lm-eval task(s) "
            f"{', '.join(tasks)}; its eval_task_map maps {mapped or 'nothing'} (training tasks: "
            f"{', '.join(self.config.task_names)}); add the task to eval_task_map or set fallback_task "
            "in its adapter_config.json"
        )
