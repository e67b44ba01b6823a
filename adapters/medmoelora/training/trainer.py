"""transformers' Trainer, taught three things: our objective, our optimizer groups, our checkpoints.

- the loss is `MoELoRAModel.forward`'s (LM loss + weighted aux losses); its parts, the mean router
  temperature and the largest expert share are averaged between log steps and logged with it;
- the optimizer gets `MoELoRAModel.parameter_groups` (base experts at their own learning rate);
- a checkpoint holds the adapter alone in ARCHITECTURE.md's format (not the frozen base model),
  plus Trainer's optimizer, scheduler, RNG and state files, so that --resume continues exactly;
- a NaN or infinite loss stops the run with an error naming the step and the last checkpoint.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from medmoelora.errors import UserError
from medmoelora.model import MoELoRAModel
from medmoelora.routing_stats import collapsed_modules, routing_stats
from medmoelora.serialization import load_adapter_weights, save_adapter


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class MoELoRATrainer(Trainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0

    @property
    def adapted(self) -> MoELoRAModel:
        return self.accelerator.unwrap_model(self.model)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.adapted)
            groups = self.adapted.parameter_groups(self.args.learning_rate, self.args.weight_decay)
            self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        outputs = model(**inputs)
        loss = outputs["loss"]
        if not torch.isfinite(loss).all():
            raise TrainingDiverged(
                f"loss became {loss.item()} at step {self.state.global_step + 1}; the last checkpoint "
                f"({_last_checkpoint(self.args.output_dir)}) is kept: lower training.learning_rate and resume "
                "from it with --resume, or start again"
            )
        if model.training:
            self._accumulate(outputs)
        return (loss, outputs) if return_outputs else loss

    def _accumulate(self, outputs: Any) -> None:
        self._count += 1
        parts = {"lm_loss": outputs.get("lm_loss")}
        parts.update({f"aux_{name}": value for name, value in (outputs.get("aux_losses") or {}).items()})
        for name, value in parts.items():
            if value is not None:
                self._sums[name] += float(value.detach())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._count:
            logs.update({name: total / self._count for name, total in self._sums.items()})
            self._sums.clear()
            self._count = 0
            logs.update(_routing_summary(self.adapted))
        super().log(logs, start_time)

    # ---- checkpoints: the adapter only ----------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.args.should_save:
            save_adapter(self.adapted, output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        load_adapter_weights(self.adapted, resume_from_checkpoint)


def _routing_summary(adapted: MoELoRAModel) -> dict[str, float]:
    """Mean learned temperature and the largest mean gate of any expert (from tracked statistics)."""
    summary = {}
    temperatures = [layer.temperature for layer in adapted.adapter_layers().values() if layer.temperature is not None]
    if temperatures:
        summary["temperature_mean"] = float(torch.stack(temperatures).detach().mean())
    stats = routing_stats(adapted)
    shares = [max(entry["mean_gate"]) for entry in stats["modules"].values() if entry["routing"] == "soft"]
    if shares:
        summary["max_expert_share"] = max(shares)
        summary["collapsed_modules"] = len(collapsed_modules(stats))
    return summary


def _last_checkpoint(output_dir: str) -> str:
    checkpoints = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[-1]))
    return str(checkpoints[-1]) if checkpoints else "none saved yet"


class RoutingTracker(TrainerCallback):
    """Tracks routing statistics on the steps that end in a log, so the cost is paid once per log."""

    def __init__(self, adapted: MoELoRAModel) -> None:
        self.adapted = adapted

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        tracking = (state.global_step + 1) % args.logging_steps == 0
        if tracking:
            for layer in self.adapted.adapter_layers().values():
                layer.reset_stats()
        self.adapted.context.track_stats = tracking

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.adapted.context.track_stats = False


class CsvLogger(TrainerCallback):
    """Appends every training log (loss, aux losses, learning rate, temperature, routing) to a CSV."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        row = {"step": state.global_step, **{k: v for k, v in logs.items() if _is_number(v)}}
        if self.columns is None:
            if self.path.is_file() and self.path.stat().st_size > 0:  # a resumed run keeps its columns
                with self.path.open(newline="") as handle:
                    self.columns = next(csv.reader(handle))
            else:
                self.columns = list(row)
                with self.path.open("w", newline="") as handle:
                    csv.writer(handle).writerow(self.columns)
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, self.columns, extrasaction="ignore").writerow(row)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
