"""The training config: one validated dataclass, read from a YAML file's `training:` section."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medmoelora.config import AdapterConfig, _build, parse_override
from medmoelora.errors import ConfigError, UserError, unknown_name
from medmoelora.tasks import TRAINING_TASKS

PRECISIONS = ("auto", "fp32", "bf16")
LOGGERS = ("csv", "tensorboard")


@dataclass(frozen=True)
class TrainConfig:
    """How one method is trained. Every method of a comparison should share these values."""

    tasks: tuple[str, ...] = TRAINING_TASKS  # <data>/<task>/train.jsonl
    max_examples_per_task: int | None = None  # cap each task (a seeded sample): small runs, laptops
    max_length: int = 512  # tokens; longer prompts lose their beginning, never the answer
    max_steps: int = 200  # optimizer steps
    batch_size: int = 8  # sequences per device per step
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_scheduler: str = "cosine"
    seed: int = 0
    logging_steps: int = 10
    save_steps: int = 50  # checkpoint every N steps (resume with --resume)
    save_total_limit: int = 2
    gradient_checkpointing: bool = False  # less activation memory, about a third more compute
    precision: str = "auto"  # auto: bf16 on a GPU that supports it, else fp32
    loggers: tuple[str, ...] = ("csv",)  # csv (always cheap) and/or tensorboard
    routing_stats_examples: int = 16  # per task, for routing_stats.json after training (a forward pass each)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "loggers", tuple(self.loggers))
        if not self.tasks:
            raise ConfigError("training.tasks", self.tasks, "name at least one training task")
        positive = ("max_length", "max_steps", "batch_size", "gradient_accumulation_steps")
        for name in (*positive, "logging_steps", "save_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"training.{name}", value, "must be an integer >= 1")
        if self.max_examples_per_task is not None and self.max_examples_per_task < 1:
            raise ConfigError("training.max_examples_per_task", self.max_examples_per_task, "must be >= 1 or null")
        if not self.learning_rate > 0:
            raise ConfigError("training.learning_rate", self.learning_rate, "must be > 0")
        if self.precision not in PRECISIONS:
            raise unknown_name("training.precision", self.precision, PRECISIONS)
        for logger in self.loggers:
            if logger not in LOGGERS:
                raise unknown_name("training.loggers entry", logger, LOGGERS)


@dataclass(frozen=True)
class RunConfig:
    adapter: AdapterConfig
    training: TrainConfig


def build_run_config(
    method: str, file_config: Mapping[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """The method's preset, then the YAML file's `adapter:` / `training:` sections, then `--set` overrides
    (``adapter.top_k=2``, ``training.max_steps=10``)."""
    file_config = dict(file_config or {})
    unknown = set(file_config) - {"adapter", "training"}
    if unknown:
        raise UserError(f"config file has unknown section(s) {sorted(unknown)}; use `adapter:` and `training:`")
    sections: dict[str, dict[str, Any]] = {
        "adapter": dict(file_config.get("adapter") or {}),
        "training": dict(file_config.get("training") or {}),
    }
    for text in overrides:
        key, value = parse_override(text)
        section, _, field = key.partition(".")
        if section not in sections or not field:
            raise UserError(f"override {text!r} must start with adapter. or training. (e.g. training.max_steps=10)")
        sections[section][field] = value
    adapter = AdapterConfig.from_preset(method, **sections["adapter"])
    training = _build(TrainConfig, sections["training"])
    return RunConfig(adapter=adapter, training=training)


def to_dict(config: RunConfig) -> dict[str, Any]:
    return {"adapter": config.adapter.to_dict(), "training": dataclasses.asdict(config.training)}
