"""The general-skill monitor the paper asks for: watch general skills while training, react when they drop.

The paper's advice: monitor general skills during training and strengthen the base experts'
regularisation when they drop by more than about 1%. The probe here is cheap and has signal at any
model size: the mean negative log-likelihood per token (language modelling, prompt and answer alike)
of ``monitor_examples`` general-domain records of ``<data>/<monitor_task>/<monitor_split>.jsonl``
(default: MMLU's validation split, its non-medical subjects). Records that a training task's pool holds
are dropped, so the probe is never trained on; a fixed seed draws the same records for every run.

`GeneralSkillMonitor` measures the probe at step 0 (adapters disabled: exactly the base model, also
on a resumed run) and every ``monitor_steps`` optimizer steps, and

- logs ``general_probe_loss`` and ``general_probe_change`` (relative to step 0) as columns of
  train_log.csv, and to TensorBoard when it is on (a check forces a log row at its step);
- logs one warning line when the change exceeds ``monitor_threshold`` (0.01: 1% above the base model);
- with ``monitor_adapt``, at every check over the threshold also multiplies the base-expert L2 weight
  and the knowledge-preservation weight by ``ADAPT_FACTOR`` (2), each capped at ``ADAPT_CAP`` (16) times
  its configured value, i.e. at most four raises. A weight of 0 stays 0: a method without base experts
  has nothing to strengthen. The weights in force are logged too (``preservation_weight``,
  ``base_l2_weight``), and a resumed run takes them back from the checkpoint's log history.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from medmoelora.config import AdapterConfig
from medmoelora.errors import UserError
from medmoelora.model import MoELoRAModel
from medmoelora.tasks import EVAL_TASKS, get_prompt
from medmoelora.training.data import Example, read_task_records
from medmoelora.training.heldout import mean_token_nll

logger = logging.getLogger(__name__)

ADAPT_FACTOR = 2.0  # each check over the threshold doubles both weights ...
ADAPT_CAP = 16.0  # ... up to 16 times their configured values
PROBE_COLUMNS = ("general_probe_loss", "general_probe_change")
WEIGHT_COLUMNS = ("preservation_weight", "base_l2_weight")
PROBE_SEED = "general-probe"


def probe_records(
    data_dir: str | Path, task: str, split: str, size: int, training_tasks: Sequence[str]
) -> list[dict[str, Any]]:
    """``size`` general-domain records of ``<data>/<task>/<split>.jsonl`` that no training pool holds."""
    data_dir = Path(data_dir)
    path = data_dir / task / f"{split}.jsonl"
    turn_off = "or training.monitor_steps=0 to turn the monitor off"
    if not path.is_file():
        raise UserError(
            f"general probe data {path} not found; set training.monitor_task / training.monitor_split to a "
            f"prepared split of general-domain text, {turn_off}"
        )
    trained = {record["id"] for name in training_tasks for record in read_task_records(data_dir, name)}
    kept = [r for r in read_task_records(data_dir, task, split) if r["domain"] == "general" and r["id"] not in trained]
    if not kept:
        raise UserError(
            f"general probe data {path} has no general-domain record outside the training data; choose "
            f"another training.monitor_task / training.monitor_split, {turn_off}"
        )
    if size < len(kept):
        kept = random.Random(f"{PROBE_SEED}-{task}-{split}").sample(kept, size)
    return kept


def probe_task_id(adapter: AdapterConfig, task: str) -> int:
    """The expert a Multi-LoRA adapter uses for the probe: the task's own, else the one its general
    lm-eval task maps to (``eval_task_map``), else ``fallback_task``, as at evaluation. Soft routing
    ignores it."""
    if adapter.routing != "task":
        return 0
    evaluated = [e.lm_eval_task for e in EVAL_TASKS.values() if e.data_task.name == task and e.domain == "general"]
    mapped = next((adapter.eval_task_map[name] for name in evaluated if name in adapter.eval_task_map), None)
    mapped = task if task in adapter.task_names else mapped or adapter.fallback_task
    if mapped is None:
        raise UserError(
            f"Multi-LoRA adapter has no expert for the general probe {task!r}: map its lm-eval task in "
            "adapter.eval_task_map or set adapter.fallback_task"
        )
    return adapter.task_index(mapped)


def probe_examples(records: Sequence[dict[str, Any]], tokenizer: Any, max_length: int, task_id: int) -> list[Example]:
    """Prompt and answer as one text, every token labelled (language modelling), the start kept."""
    examples = []
    for record in records:
        prompt, completion = get_prompt(record["task_id"]).format(record)
        input_ids = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"][:max_length]
        examples.append(Example(input_ids, list(input_ids), record["task_id"], task_id, 0))
    return examples


class GeneralSkillMonitor(TrainerCallback):
    """Measures the general probe every ``every`` steps, warns past ``threshold``, adapts when asked
    (the rule is in the module doc)."""

    def __init__(
        self,
        adapted: MoELoRAModel,
        examples: list[Example],
        every: int,
        threshold: float = 0.01,
        adapt: bool = False,
    ) -> None:
        self.adapted = adapted
        self.examples = examples
        self.every = every
        self.threshold = threshold
        self.adapt = adapt
        self.initial = dataclasses.replace(adapted.loss_weights)
        self.reference: float | None = None
        self.tokens = 0
        self.history: list[dict[str, float]] = []  # {"step", "loss", "change"}, step 0 first
        self.warned_steps: list[int] = []
        self.pending: dict[str, float] = {}

    @property
    def columns(self) -> tuple[str, ...]:
        """The train_log.csv columns this monitor fills."""
        return PROBE_COLUMNS + (WEIGHT_COLUMNS if self.adapt else ())

    def measure(self) -> float:
        """The probe loss of the model as it is now (routing statistics untouched)."""
        tracking, self.adapted.context.track_stats = self.adapted.context.track_stats, False
        try:
            result = mean_token_nll(self.adapted, self.examples)
        finally:
            self.adapted.context.track_stats = tracking
        self.tokens = result["tokens"]
        return result["loss"]

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        with self.adapted.disable_adapters():
            self.reference = self.measure()
        self.history = [{"step": 0, "loss": self.reference, "change": 0.0}]
        self._restore(state.log_history)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step
        if step % self.every:
            return
        loss = self.measure()
        change = loss / self.reference - 1.0
        self.history.append({"step": step, "loss": loss, "change": change})
        if change > self.threshold:
            self.warned_steps.append(step)
            message = (
                f"general-skill monitor: probe loss {loss:.4f} at step {step} is {change:+.2%} against step 0 "
                f"({self.reference:.4f}), past the {self.threshold:.2%} threshold"
            )
            if self.adapt:
                message += "; " + self._raise_weights()
            if state.is_world_process_zero:
                logger.warning(message)
        self.pending = {"general_probe_loss": loss, "general_probe_change": change}
        if self.adapt:
            weights = self.adapted.loss_weights
            self.pending.update(preservation_weight=weights.preservation, base_l2_weight=weights.base_l2)
        control.should_log = True

    def _raise_weights(self) -> str:
        """ADAPT_FACTOR times both weights, each capped at ADAPT_CAP times its configured value."""
        weights = self.adapted.loss_weights
        weights.preservation = min(weights.preservation * ADAPT_FACTOR, self.initial.preservation * ADAPT_CAP)
        weights.base_l2 = min(weights.base_l2 * ADAPT_FACTOR, self.initial.base_l2 * ADAPT_CAP)
        return f"preservation_weight now {weights.preservation:g}, base_l2_weight now {weights.base_l2:g}"

    def _restore(self, log_history: list[dict[str, Any]]) -> None:
        """A resumed run: earlier checks and the weights in force at the checkpoint, from its log history."""
        for row in log_history:
            if "general_probe_loss" in row:
                self.history.append(
                    {"step": row["step"], "loss": row["general_probe_loss"], "change": row["general_probe_change"]}
                )
                if row["general_probe_change"] > self.threshold:
                    self.warned_steps.append(row["step"])
            if "preservation_weight" in row:
                self.adapted.loss_weights.preservation = row["preservation_weight"]
                self.adapted.loss_weights.base_l2 = row["base_l2_weight"]

    def pop_log_values(self) -> dict[str, float]:
        """Values for the next log row (the trainer merges them into its logs)."""
        values, self.pending = self.pending, {}
        return values

    def summary(self) -> dict[str, Any]:
        """For train_metrics.json."""
        return {
            "examples": len(self.examples),
            "tokens": self.tokens,
            "every_steps": self.every,
            "threshold": self.threshold,
            "adapt": self.adapt,
            "reference_loss": self.reference,
            "history": self.history,
            "warned_steps": self.warned_steps,
            "initial_weights": dataclasses.asdict(self.initial),
            "final_weights": dataclasses.asdict(self.adapted.loss_weights),
        }


def load_probe(data_dir: str | Path, training: Any) -> list[dict[str, Any]] | None:
    """The probe records ``training`` (a TrainConfig) asks for, or None when monitor_steps is 0; read
    before the model is loaded, so that a missing probe split fails at once."""
    if not training.monitor_steps:
        return None
    return probe_records(
        data_dir, training.monitor_task, training.monitor_split, training.monitor_examples, training.tasks
    )


def build_monitor(
    adapted: MoELoRAModel, records: list[dict[str, Any]] | None, training: Any, tokenizer: Any
) -> GeneralSkillMonitor | None:
    """The monitor of ``training`` (a TrainConfig) on the probe ``records``; None when there are none."""
    if records is None:
        return None
    task_id = probe_task_id(adapted.adapter_config, training.monitor_task)
    examples = probe_examples(records, tokenizer, training.max_length, task_id)
    return GeneralSkillMonitor(
        adapted,
        examples,
        every=training.monitor_steps,
        threshold=training.monitor_threshold,
        adapt=training.monitor_adapt,
    )
