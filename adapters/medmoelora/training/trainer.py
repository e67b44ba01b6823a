"""transformers' Trainer, taught three things: our objective, our optimizer groups, our checkpoints.

- the loss is the LM loss on the answer tokens, averaged per example or per token
  (`medmoelora.training.objective`), plus `MoELoRAModel`'s weighted aux losses; its parts, the mean router
  temperature and the largest expert share are averaged between log steps and logged with it;
- the optimizer gets `MoELoRAModel.parameter_groups` (base experts at their own learning rate); on
  resume the run's learning rate and weight decay replace the checkpoint's (Trainer would keep the old);
- a checkpoint holds the adapter alone (docs/adapter-format.md; not the frozen base model), plus Trainer's
  optimizer, scheduler, RNG and state files, so that --resume continues exactly; it is written into a temporary
  sibling and renamed into place when complete (`medmoelora.training.checkpoints`);
- a NaN or infinite loss, or non-finite weights at a save, stop the run with an error naming the step
  and the checkpoint kept: the checkpoint saved right after the update that diverged is removed.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import rotate_checkpoints

from medmoelora.errors import UserError
from medmoelora.model import MoELoRAModel
from medmoelora.routing_stats import collapsed_modules, routing_stats
from medmoelora.serialization import load_adapter_weights, save_adapter
from medmoelora.training.checkpoints import STAGING, TRAIN_PROGRESS, complete_checkpoints, read_json
from medmoelora.training.objective import answer_nll, answer_nll_at, answer_positions


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class MoELoRATrainer(Trainer):
    """``on_checkpoint(directory)`` adds the run's own files to a checkpoint before it is renamed into place;
    ``loss_averaging`` says how answer tokens are averaged (`medmoelora.training.objective`)."""

    def __init__(
        self,
        *args: Any,
        on_checkpoint: Callable[[Path], None] | None = None,
        loss_averaging: str = "example",
        unpadded: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss_averaging = loss_averaging
        # Each training batch one sequence at a time, without padding (`MoELoRAModel.forward_unpadded`); one
        # process only: the per-row forwards go past the distributed wrapper, which would not sync them.
        if unpadded and self.args.world_size > 1:
            raise UserError("unpadded training steps run in one process; use training.padding: batch with several")
        self.unpadded = unpadded
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0
        self.on_checkpoint = on_checkpoint
        self._staging: Path | None = None
        # The sum of the per-step losses before this train() call (a resumed run's), so that the run's
        # mean loss covers every step, not only the resumed ones.
        self.resumed_loss_sum = 0.0

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
        if self.unpadded and model.training:
            outputs = self._unpadded_outputs(inputs)
        else:
            outputs = model(**{name: value for name, value in inputs.items() if name != "labels"})
            outputs["lm_loss"] = answer_nll(outputs["logits"], inputs["labels"], self.loss_averaging)
        aux = outputs.get("aux_losses")  # training mode, aux losses on: weighted by the model's current weights
        loss = outputs["lm_loss"] + (self.adapted.weighted_aux_loss(aux) if aux is not None else 0.0)
        outputs["loss"] = loss
        if not torch.isfinite(loss).all():
            # These weights came out of the last update: the checkpoint of that step holds them too.
            raise self._diverged(f"loss became {loss.item()} at step {self.state.global_step + 1}")
        if model.training:
            self._accumulate(outputs)
        return (loss, outputs) if return_outputs else loss

    def _unpadded_outputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The padded forward's loss, each sequence run on its own real tokens with logits at its answer
        positions only: ``lm_loss``, ``aux_losses`` (or None) and each row's answer ``logits``."""
        labels = inputs["labels"]  # (B, T)
        positions = answer_positions(labels)  # per row (n_b,)
        logits, aux = self.adapted.forward_unpadded(
            inputs["input_ids"],
            inputs["attention_mask"],
            positions,
            task_ids=inputs.get("task_ids"),
            domain_labels=inputs.get("domain_labels"),
        )
        lm_loss = answer_nll_at(logits, labels, positions, self.loss_averaging)
        return {"logits": logits, "lm_loss": lm_loss, "aux_losses": aux}

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
        if "loss" in logs:  # callbacks with values for this row (the general-skill monitor)
            for callback in self.callback_handler.callbacks:
                logs.update(getattr(callback, "pop_log_values", dict)())
        super().log(logs, start_time)

    # ---- checkpoints: the adapter only, written atomically, never with non-finite weights ---------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.args.should_save:
            save_adapter(self.adapted, output_dir or self.args.output_dir)

    def _get_output_dir(self, trial: Any) -> str:
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """Trainer's save, redirected into checkpoints/.incomplete/ and renamed into place when complete."""
        step = self.state.global_step
        root = Path(self.args.output_dir)
        final = root / f"checkpoint-{step}"
        if not all(
            torch.isfinite(parameter).all() for parameter in self.adapted.parameters() if parameter.requires_grad
        ):
            raise self._diverged(f"the adapter's weights became non-finite at step {step}")
        self._staging = root / STAGING
        staged = self._staging / final.name
        try:
            super()._save_checkpoint(model, trial)  # rotates nothing: the staging directory holds only this one
            if self.args.should_save:
                progress = {"step": step, "loss_sum": self._loss_sum()}
                (staged / TRAIN_PROGRESS).write_text(json.dumps(progress) + "\n")
                if self.on_checkpoint is not None:
                    self.on_checkpoint(staged)
        # torch.save reports a full disk as a RuntimeError, safetensors as a SafetensorError
        except (OSError, RuntimeError, SafetensorError) as error:
            shutil.rmtree(staged, ignore_errors=True)
            _remove_if_empty(staged.parent)
            kept = complete_checkpoints(root)
            then = f"resume from {kept[-1]} with --resume" if kept else "rerun"
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(
                f"could not save checkpoint {final}: {reason}; free disk space or choose a writable --out, then {then}"
            ) from None
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # every process has written its RNG state
        if self.args.should_save:
            if final.exists():  # an incomplete leftover of an earlier attempt at this step
                shutil.rmtree(final)
            os.replace(staged, final)
            _remove_if_empty(staged.parent)
            rotate_checkpoints(str(root), self.args.save_total_limit, use_mtime=False)

    def _loss_sum(self) -> float:
        """Sum of the per-step training losses so far (Trainer's own accumulators, plus a resumed run's)."""
        return self.resumed_loss_sum + self._total_loss_scalar + float(self._tr_loss.item())

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        load_adapter_weights(self.adapted, resume_from_checkpoint)
        self.resumed_loss_sum = float(read_json(Path(resume_from_checkpoint) / TRAIN_PROGRESS)["loss_sum"])

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Trainer's load, then this run's learning rates and weight decay (the loaded state holds the old)."""
        wanted = [
            (group.get("initial_lr", group["lr"]), group["weight_decay"]) for group in self.optimizer.param_groups
        ]
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        scheduler = self.lr_scheduler
        groups = self.optimizer.param_groups  # new dicts: load_state_dict replaces them
        for index, (group, (learning_rate, weight_decay)) in enumerate(zip(groups, wanted, strict=True)):
            group["weight_decay"] = weight_decay
            loaded = group.get("initial_lr", learning_rate)
            if learning_rate != loaded:  # the schedule multiplies its base rate: rescale, keep the shape
                group["lr"] *= learning_rate / loaded
                group["initial_lr"] = learning_rate
                if hasattr(scheduler, "base_lrs"):
                    scheduler.base_lrs[index] = learning_rate
                    scheduler._last_lr[index] = group["lr"]

    def _init_training_state(self, max_steps: int, *args: Any, **kwargs: Any) -> tuple[int, int]:
        """Trainer's, then this run's logging and save intervals (a loaded state would keep the checkpoint's)."""
        trained = super()._init_training_state(max_steps, *args, **kwargs)
        self.state.compute_steps(self.args, max_steps)
        return trained

    def _diverged(self, what: str) -> TrainingDiverged:
        """Remove the checkpoint of the current step (its weights are the ones that diverged) and say what is kept."""
        root = Path(self.args.output_dir)
        removed = root / f"checkpoint-{self.state.global_step}"
        note = ""
        if self.args.should_save and removed.is_dir():
            shutil.rmtree(removed)
            note = f"removed {removed.name}, saved after the update that diverged; "
        kept = complete_checkpoints(root)
        if kept:
            advice = f"kept {kept[-1]}: lower training.learning_rate and resume from it with --resume, or start again"
        else:
            advice = "no checkpoint with finite weights is kept: lower training.learning_rate and start again"
        return TrainingDiverged(f"{what}; {note}{advice} with --overwrite")


def _remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (another process's save), or already gone
        directory.rmdir()


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

    def __init__(self, path: Path, extra_columns: tuple[str, ...] = ()) -> None:
        self.path = path
        self.extra_columns = extra_columns  # filled on some rows only (empty elsewhere)
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
                self.columns = [*row, *(column for column in self.extra_columns if column not in row)]
                with self.path.open("w", newline="") as handle:
                    csv.writer(handle).writerow(self.columns)
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, self.columns, extrasaction="ignore").writerow(row)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
