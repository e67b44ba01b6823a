"""The training config: one validated dataclass, read from a YAML file's `training:` section.

Every field is coerced to its type hint and checked against the range the hint carries on creation
(`medmoelora.validation`), so a bad value fails before any model is loaded, not after training ran.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from medmoelora.config import AdapterConfig, parse_override
from medmoelora.errors import ConfigError, UserError, unknown_name
from medmoelora.tasks import MMLU, TRAINING_TASKS
from medmoelora.validation import (
    NonNegativeFloat,
    NonNegativeInt,
    OneOf,
    PositiveFloat,
    PositiveInt,
    Range,
    build,
    coerce_fields,
)

Precision = Literal["auto", "fp32", "bf16"]
Logger = Literal["csv", "tensorboard"]
LossAveraging = Literal["example", "token"]  # how answer tokens are averaged (training/objective.py)
# How a training batch runs: `batch` right-pads it to its longest sequence (one forward), `none` runs each
# sequence on its own real tokens with logits at its answer tokens only (MoELoRAModel.forward_unpadded),
# `auto` picks none on a CPU in one process (measured faster there: README, Performance), batch elsewhere.
Padding = Literal["auto", "batch", "none"]
# transformers' `SchedulerType` names that need nothing but warmup and step counts: training passes no
# evaluation strategy and no lr_scheduler_kwargs. Spelt out because importing transformers.trainer_utils
# takes seconds (at every workflow start); a test keeps the list in step with SchedulerType.
LrScheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
]
PRECISIONS: tuple[str, ...] = get_args(Precision)
LOGGERS: tuple[str, ...] = get_args(Logger)
LR_SCHEDULERS: tuple[str, ...] = get_args(LrScheduler)


def data_tasks() -> list[str]:
    """Task ids that prepare-data writes (``<data>/<task>/``)."""
    from medmoelora.tasks import DATA_TASKS

    return list(DATA_TASKS)


def training_tasks() -> list[str]:
    """Task ids with a train split (``<data>/<task>/train.jsonl`` as prepare-data writes it)."""
    from medmoelora.tasks import DATA_TASKS

    return [name for name, task in DATA_TASKS.items() if task.trainable]


# The loss predicts each answer token from the tokens before it: a 1-token sequence has no answer token
# to learn from (its loss is NaN, 0/0).
MaxLength = Annotated[int, Range(ge=2, why="no answer token fits in 1 token: each is predicted from the ones before")]


@dataclass(frozen=True)
class TrainConfig:
    """How one method is trained. Every method of a comparison should share these values."""

    tasks: tuple[Annotated[str, OneOf(training_tasks)], ...] = TRAINING_TASKS
    max_examples_per_task: PositiveInt | None = None  # cap each task (a seeded sample): small runs, laptops
    max_length: MaxLength = 512  # tokens; longer prompts lose their beginning, never the answer
    max_steps: PositiveInt = 200  # optimizer steps
    batch_size: PositiveInt = 8  # sequences per device per step
    gradient_accumulation_steps: PositiveInt = 1
    learning_rate: PositiveFloat = 2e-4
    # example: every sequence's answer weighs the same; token: every answer token does, and GSM8K's long
    # solutions then take ~98% of the gradient from the one-token medical answers (training/objective.py)
    loss_averaging: LossAveraging = "example"
    weight_decay: NonNegativeFloat = 0.0
    warmup_steps: NonNegativeInt = 0
    lr_scheduler: LrScheduler = "cosine"
    seed: Annotated[int, Range(ge=0, le=2**32 - 1)] = 0  # numpy's seed range
    logging_steps: PositiveInt = 10
    save_steps: PositiveInt = 50  # checkpoint every N steps (resume with --resume)
    save_total_limit: PositiveInt | None = 2  # checkpoints kept; null keeps all
    gradient_checkpointing: bool = False  # less activation memory, about a third more compute
    padding: Padding = "auto"  # batch | none (each sequence on its real tokens) | auto; the same loss either way
    precision: Precision = "auto"  # auto: bf16 on a GPU that supports it, else fp32
    loggers: tuple[Logger, ...] = ("csv",)  # csv (always cheap) and/or tensorboard
    routing_stats_examples: PositiveInt = 16  # per task, for routing_stats.json after training (a forward pass each)
    # Held-out loss per training task at the start and the end (train_metrics.json); see training/heldout.py.
    heldout_examples: NonNegativeInt = 32  # per task; 0 turns it off. Two forward passes each (start, end)
    # The general-skill monitor (training/monitor.py): held-out general-domain LM loss every N steps.
    monitor_steps: NonNegativeInt = 10  # 0 turns it off; each check is a forward pass over monitor_examples
    monitor_examples: PositiveInt = 16  # records of the probe set (general-domain records only)
    monitor_task: Annotated[str, OneOf(data_tasks)] = MMLU.name  # probe data: <data>/<task>/<split>.jsonl
    monitor_split: str = "validation"  # records that a training task's pool holds are dropped from the probe
    monitor_threshold: PositiveFloat = 0.01  # warn when the probe loss rises more than this (relative) above step 0
    monitor_adapt: bool = False  # on a warning, double base_l2_weight and preservation_weight (capped)

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="training.")  # types and ranges, from the hints above
        if not self.tasks:
            raise ConfigError("training.tasks", self.tasks, "name at least one training task")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError("training.tasks", self.tasks, "name each training task once")


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
    for name in file_config:
        if name not in ("adapter", "training"):
            raise unknown_name("config file section", str(name), ("adapter", "training"))
    sections = {name: _section(name, file_config.get(name)) for name in ("adapter", "training")}
    for text in overrides:
        key, value = parse_override(text)
        section, _, field = key.partition(".")
        if section not in sections or not field:
            raise UserError(f"override {text!r} must start with adapter. or training. (e.g. training.max_steps=10)")
        sections[section][field] = value
    adapter = AdapterConfig.from_preset(method, **sections["adapter"])
    training = build(TrainConfig, sections["training"])
    if adapter.routing == "task":
        unrouted = [task for task in training.tasks if task not in adapter.task_names]
        if unrouted:
            raise ConfigError(
                "training.tasks",
                list(training.tasks),
                f"{unrouted} have no expert in this Multi-LoRA adapter (adapter.task_names "
                f"{list(adapter.task_names)}); train only those tasks or name one expert per task",
            )
    return RunConfig(adapter=adapter, training=training)


def _section(name: str, values: Any) -> dict[str, Any]:
    """A config section as a dict of field names; empty when absent."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise UserError(f"config section `{name}:` must be a mapping of field: value, not {values!r}")
    for key in values:
        if not isinstance(key, str):
            raise UserError(f"config section `{name}:` has the key {key!r}; field names are strings")
    return dict(values)


def to_dict(config: RunConfig) -> dict[str, Any]:
    return {"adapter": config.adapter.to_dict(), "training": dataclasses.asdict(config.training)}
