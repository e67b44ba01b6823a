"""The training entry point: setup (model, adapter, data, Trainer), train, cleanup (adapter, statistics).

Outputs in ``out``: the adapter (adapter_config.json, adapter_model.safetensors), routing_stats.json
(per layer and expert, overall and by training task), train_metrics.json (parameters, tokens/s, peak
memory, wall time), train_config.json, train_log.csv, and checkpoints/ for --resume.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainingArguments, set_seed

from medmoelora.errors import UserError
from medmoelora.model import MoELoRAModel, inject_adapter, trainable_parameter_count
from medmoelora.params import active_parameters
from medmoelora.routing_stats import merge_routing_stats, routing_stats, track_routing, warn_on_collapse
from medmoelora.serialization import CONFIG_FILE, save_adapter
from medmoelora.training.config import RunConfig, to_dict
from medmoelora.training.data import Collator, Example, ExampleDataset, build_examples
from medmoelora.training.trainer import CsvLogger, MoELoRATrainer, RoutingTracker

CHECKPOINTS = "checkpoints"


def train(
    model_dir: str | Path,
    data_dir: str | Path,
    out: str | Path,
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """Train one method and write its outputs into ``out``; returns train_metrics."""
    out = Path(out)
    _check_paths(Path(model_dir), Path(data_dir), out, resume, overwrite)
    training = config.training
    set_seed(training.seed)
    bf16 = _use_bf16(training.precision)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if bf16 else torch.float32)
    adapted = inject_adapter(model, config.adapter)
    if training.gradient_checkpointing:  # through the adapter, which replays the routing inputs in backward
        adapted.activation_checkpointing_enable()
        model.config.use_cache = False
    examples = build_examples(
        data_dir,
        training.tasks,
        tokenizer,
        config.adapter,
        training.max_length,
        training.max_examples_per_task,
        training.seed,
    )
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _train_and_write(adapted, examples, tokenizer, out, config, bf16, resume, callbacks)
    except BaseException:
        if created and not any((out / CHECKPOINTS).glob("checkpoint-*")):
            shutil.rmtree(out, ignore_errors=True)  # nothing worth keeping: leave no partial output
        raise


def _train_and_write(
    adapted: MoELoRAModel,
    examples: list[Example],
    tokenizer: Any,
    out: Path,
    config: RunConfig,
    bf16: bool,
    resume: bool,
    callbacks: Sequence[TrainerCallback],
) -> dict[str, Any]:
    training = config.training
    trainer = MoELoRATrainer(
        model=adapted,
        args=_training_arguments(config, out / CHECKPOINTS, bf16),
        train_dataset=ExampleDataset(examples),
        data_collator=Collator(tokenizer.pad_token_id),
        callbacks=[RoutingTracker(adapted), CsvLogger(out / "train_log.csv"), *callbacks],
    )

    tokens_before = trainer.state.num_input_tokens_seen
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    wall_time = time.perf_counter() - started

    if not trainer.is_world_process_zero():
        return {}
    adapted.eval()
    save_adapter(adapted, out)
    stats = {"by_task": {}, "overall": {"layers": {}, "modules": {}}}  # LoRA: one expert, nothing routed
    if config.adapter.routing != "none":
        stats = _routing_stats_by_task(adapted, examples, training.routing_stats_examples, training.batch_size)
        warn_on_collapse(stats["overall"])
    (out / "routing_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    tokens = int(trainer.state.num_input_tokens_seen) - int(tokens_before)
    metrics = {
        "method": config.adapter.method,
        "trainable_params": trainable_parameter_count(adapted),
        "active_params": sum(active_parameters(layer) for layer in adapted.adapter_layers().values()),
        "steps": trainer.state.global_step,
        "examples": len(examples),
        "train_tokens": tokens,
        "tokens_per_second": tokens / result.metrics["train_runtime"],
        "train_runtime_s": result.metrics["train_runtime"],
        "wall_time_s": wall_time,
        "peak_memory_mb": _peak_memory_mb(),
        "peak_memory_kind": "cuda_max_allocated" if torch.cuda.is_available() else "process_max_rss",
        "final_loss": result.training_loss,
        "precision": "bf16" if bf16 else "fp32",
        "processes": trainer.args.world_size,
        "device": str(trainer.args.device),
    }
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (out / "train_config.json").write_text(json.dumps(to_dict(config), indent=1) + "\n")
    return metrics


def _check_paths(model_dir: Path, data_dir: Path, out: Path, resume: bool, overwrite: bool) -> None:
    if not (model_dir / "config.json").is_file():
        raise UserError(
            f"--model {model_dir} is not a transformers model directory (no config.json); "
            "make one with `medmoelora materialize-model`"
        )
    if not data_dir.is_dir():
        raise UserError(f"--data {data_dir} does not exist; run `medmoelora prepare-data --out {data_dir}` first")
    checkpoints = out / CHECKPOINTS
    if resume and not any(checkpoints.glob("checkpoint-*")):
        raise UserError(f"--resume: no checkpoint under {checkpoints} to resume from; drop --resume to start afresh")
    if not resume and not overwrite and ((out / CONFIG_FILE).exists() or checkpoints.exists()):
        raise UserError(f"--out {out} already holds a training run; pass --resume to continue it or --overwrite")


def _use_bf16(precision: str) -> bool:
    if precision == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "bf16" and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        raise UserError("training.precision bf16 needs a GPU with bf16 support; use auto or fp32 here")
    return precision == "bf16"


def _training_arguments(config: RunConfig, output_dir: Path, bf16: bool) -> TrainingArguments:
    training = config.training
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=training.max_steps,
        per_device_train_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=training.learning_rate,
        weight_decay=training.weight_decay,
        warmup_steps=training.warmup_steps,
        lr_scheduler_type=training.lr_scheduler,
        logging_steps=training.logging_steps,
        save_steps=training.save_steps,
        save_total_limit=training.save_total_limit,
        seed=training.seed,
        data_seed=training.seed,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        report_to=["tensorboard"] if "tensorboard" in training.loggers else [],
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
        label_names=["labels"],
        dataloader_num_workers=0,
    )


@torch.no_grad()
def _routing_stats_by_task(
    adapted: MoELoRAModel, examples: list[Example], per_task: int, batch_size: int
) -> dict[str, Any]:
    """Routing statistics on the first ``per_task`` examples of each task, overall and by task."""
    device = next(p for p in adapted.parameters() if p.requires_grad).device
    collate = Collator(pad_token_id=0)
    by_task: dict[str, list[Example]] = {}
    for example in examples:
        chosen = by_task.setdefault(example.task, [])
        if len(chosen) < per_task:
            chosen.append(example)
    result: dict[str, Any] = {"by_task": {}}
    for task, chosen in by_task.items():
        with track_routing(adapted):
            for start in range(0, len(chosen), batch_size):
                batch = {k: v.to(device) for k, v in collate(chosen[start : start + batch_size]).items()}
                batch.pop("labels")
                adapted(**batch)
        result["by_task"][task] = routing_stats(adapted)
    result["overall"] = merge_routing_stats(list(result["by_task"].values()))
    return result


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
