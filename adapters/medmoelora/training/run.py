"""The training entry point: setup (model, adapter, data, Trainer), train, cleanup (adapter, statistics).

Outputs in ``out``: the adapter (adapter_config.json, adapter_model.safetensors), routing_stats.json
(per layer and expert, overall, by training task and by domain, and the base experts' share of general
vs medical tokens; on the held-out sets), train_config.json, train_log.csv, checkpoints/ for --resume,
and train_metrics.json (parameters, tokens/s, peak memory, wall time, held-out loss per task at start
and end, the general probe), written last: its presence marks a finished run. One run at a time writes
into ``out`` (`medmoelora.training.lock`); what a rerun into an existing ``out`` does is
`medmoelora.training.resume`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import resource
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    ProgressCallback,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from medmoelora import atomic
from medmoelora.config import DOMAINS
from medmoelora.errors import UserError
from medmoelora.model import MoELoRAModel, inject_adapter, trainable_parameter_count
from medmoelora.params import active_parameters
from medmoelora.routing_stats import (
    base_expert_share,
    merge_routing_stats,
    routing_stats,
    track_routing,
    warn_on_collapse,
)
from medmoelora.serialization import save_adapter
from medmoelora.training.checkpoints import CHECKPOINTS, TRAIN_CONFIG, TRAIN_LOG, complete_checkpoints, step_of
from medmoelora.training.config import RunConfig, to_dict
from medmoelora.training.data import Collator, Example, ExampleDataset, build_examples
from medmoelora.training.heldout import HeldOutEvaluator, build_heldout, read_start, start_key
from medmoelora.training.lock import output_lock
from medmoelora.training.monitor import GeneralSkillMonitor, build_monitor, load_probe
from medmoelora.training.resume import (
    METRICS_FILE,
    ROUTING_FILE,
    Plan,
    input_digests,
    is_main_process,
    normalised,
    plan_run,
    prepare,
    say,
)
from medmoelora.training.trainer import CsvLogger, MoELoRATrainer, RoutingTracker


def train(
    model_dir: str | Path,
    data_dir: str | Path,
    out: str | Path,
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
    resume_if_possible: bool = False,
    heldout_start: str | Path | None = None,
) -> dict[str, Any]:
    """Train one method and write its outputs into ``out``; returns train_metrics. ``heldout_start``: a
    file of `medmoelora heldout-start` with the held-out losses at the start (the base model's), used
    when it was measured for this model and these held-out examples, else measured here.

    Raises `medmoelora.training.resume.AlreadyFinished` when resuming a run that has nothing left to do.
    """
    out = Path(out)
    check_paths(Path(model_dir), Path(data_dir))
    main = is_main_process()  # under `accelerate launch` every process runs this; the first owns --out
    try:
        created = _make_output_dir(out)
        with output_lock(out) if main else contextlib.nullcontext():
            try:
                return _plan_and_train(
                    Path(model_dir),
                    Path(data_dir),
                    out,
                    config,
                    resume,
                    overwrite,
                    resume_if_possible,
                    callbacks,
                    Path(heldout_start) if heldout_start is not None else None,
                )
            except BaseException:
                if main and created is not None and not complete_checkpoints(out / CHECKPOINTS):
                    shutil.rmtree(created, ignore_errors=True)  # nothing worth keeping: leave no partial output
                raise
    except OSError as error:  # a full disk, a directory that is not writable: one line, not a traceback
        raise UserError(_os_error_message(error, out)) from None


def _plan_and_train(
    model_dir: Path,
    data_dir: Path,
    out: Path,
    config: RunConfig,
    resume: bool,
    overwrite: bool,
    resume_if_possible: bool,
    callbacks: Sequence[TrainerCallback],
    heldout_start: Path | None,
) -> dict[str, Any]:
    run_config = normalised({**to_dict(config), "inputs": input_digests(model_dir, data_dir, config.training.tasks)})
    plan = plan_run(out, run_config, resume, overwrite, resume_if_possible)  # changes nothing yet
    training = config.training
    probe = load_probe(data_dir, training)
    set_seed(training.seed)
    bf16 = use_bf16(training.precision)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if bf16 else torch.float32)
    adapted = inject_adapter(model, config.adapter)
    if training.gradient_checkpointing:  # through the adapter, which replays the routing inputs in backward
        adapted.activation_checkpointing_enable()
        model.config.use_cache = False
    heldout, heldout_ids = build_heldout(data_dir, training, tokenizer, config.adapter)
    examples = build_examples(
        data_dir,
        training.tasks,
        tokenizer,
        config.adapter,
        training.max_length,
        training.max_examples_per_task,
        training.seed,
        exclude_ids=heldout_ids,
    )
    monitor = build_monitor(adapted, probe, training, tokenizer)
    callbacks = [*callbacks, *([monitor] if monitor else [])]
    if is_main_process():
        prepare(out, plan)  # only now, with model and data loaded, is --out cleared or rewound
    return _train_and_write(
        adapted, examples, tokenizer, out, config, bf16, plan, run_config, callbacks, heldout, heldout_start
    )


def _start_from_file(heldout: HeldOutEvaluator, path: Path, model_digest: str, adapted: MoELoRAModel) -> bool:
    """Sets ``heldout.start`` from a `medmoelora heldout-start` file measured for this model, dtype, device
    and these held-out examples; otherwise says why and returns False (the run measures its own)."""
    parameter = next(adapted.parameters())
    start, why = read_start(path, start_key(heldout, model_digest, parameter.dtype, parameter.device))
    if start is None:
        say(f"{why}: measuring the held-out start in this run")
        return False
    heldout.start = start
    return True


def _train_and_write(
    adapted: MoELoRAModel,
    examples: list[Example],
    tokenizer: Any,
    out: Path,
    config: RunConfig,
    bf16: bool,
    plan: Plan,
    run_config: dict[str, Any],
    callbacks: Sequence[TrainerCallback],
    heldout: HeldOutEvaluator,
    heldout_start: Path | None,
) -> dict[str, Any]:
    training = config.training
    # What trained this run: its settings and input digests, and each resume that changed a setting.
    recorded = {**run_config, "resumes": plan.resumes}

    def add_run_files(checkpoint: Path) -> None:
        (checkpoint / TRAIN_CONFIG).write_text(json.dumps(recorded, indent=1) + "\n")
        if (out / TRAIN_LOG).is_file():
            shutil.copyfile(out / TRAIN_LOG, checkpoint / TRAIN_LOG)

    extra_columns = tuple(column for callback in callbacks for column in getattr(callback, "columns", ()))
    arguments = _training_arguments(config, out / CHECKPOINTS, bf16)
    unpadded = use_unpadded(training.padding, arguments)
    trainer = MoELoRATrainer(
        model=adapted,
        args=arguments,
        train_dataset=ExampleDataset(examples),
        data_collator=Collator(tokenizer.pad_token_id),
        callbacks=[RoutingTracker(adapted), CsvLogger(out / TRAIN_LOG, extra_columns), *callbacks],
        on_checkpoint=add_run_files,
        loss_averaging=training.loss_averaging,
        unpadded=unpadded,
    )
    model_digest = run_config["inputs"]["model"]
    if heldout.examples and not (heldout_start and _start_from_file(heldout, heldout_start, model_digest, adapted)):
        heldout.measure_start(adapted)  # the base model: every expert starts at B = 0

    tokens_before = trainer.state.num_input_tokens_seen
    started = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(plan.checkpoint) if plan.checkpoint else None)
    except BaseException:
        _close_progress_bar(trainer)  # so that an error message starts on a line of its own
        raise
    wall_time = time.perf_counter() - started

    if not trainer.is_world_process_zero():
        return {}
    steps = trainer.state.global_step
    steps_now = steps - (step_of(plan.checkpoint) if plan.checkpoint else 0)
    adapted.eval()
    stats = {"by_task": {}, "overall": {"layers": {}, "modules": {}}}  # LoRA: one expert, nothing routed
    if config.adapter.routing != "none":
        chosen = heldout.examples_or(examples, training.routing_stats_examples)  # held-out where there is one
        stats = _routing_stats_by_group(adapted, chosen)
        warn_on_collapse(stats["overall"])
    tokens = int(trainer.state.num_input_tokens_seen) - int(tokens_before)
    metrics = {
        "method": config.adapter.method,
        "trainable_params": trainable_parameter_count(adapted),
        "active_params": sum(active_parameters(layer) for layer in adapted.adapter_layers().values()),
        "steps": steps,
        "examples": len(examples),
        "train_tokens": tokens,
        "tokens_per_second": tokens / result.metrics["train_runtime"],
        "train_runtime_s": result.metrics["train_runtime"],
        "wall_time_s": wall_time,
        "peak_memory_mb": _peak_memory_mb(),
        "peak_memory_kind": "cuda_max_allocated" if torch.cuda.is_available() else "process_max_rss",
        # the mean loss of every step, also those before a resume (Trainer's covers this call's only)
        "final_loss": (trainer.resumed_loss_sum + result.training_loss * steps_now) / max(steps, 1),
        "precision": "bf16" if bf16 else "fp32",
        "padding": "none" if unpadded else "batch",  # training.padding as resolved
        "processes": trainer.args.world_size,
        "device": str(trainer.args.device),
        "heldout": heldout.report(adapted),  # per training task: loss at start (base model) and end
        "loss_weights": dataclasses.asdict(adapted.loss_weights),  # at the end (the monitor may raise them)
    }
    monitors = [callback for callback in callbacks if isinstance(callback, GeneralSkillMonitor)]
    if monitors:
        metrics["general_probe"] = monitors[0].summary()
    try:
        save_adapter(adapted, out)
        atomic.write_json(out / ROUTING_FILE, stats, indent=1)
        atomic.write_json(out / TRAIN_CONFIG, recorded, indent=1)
        atomic.write_json(out / METRICS_FILE, metrics, indent=1)  # last: marks the run finished
    except SafetensorError as error:
        raise UserError(
            f"could not write the adapter into {out}: {error}; free disk space, then rerun with --resume"
        ) from None
    return metrics


def _close_progress_bar(trainer: MoELoRATrainer) -> None:
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
            callback.training_bar.close()


def _make_output_dir(out: Path) -> Path | None:
    """Create ``out`` (and missing parents); returns the topmost directory created, None if it existed."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory; choose a directory path")
    created = None
    for directory in [out, *out.parents]:
        if directory.exists():
            break
        created = directory
    out.mkdir(parents=True, exist_ok=True)
    return created


def _os_error_message(error: OSError, out: Path) -> str:
    culprit = error.filename or out
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        kept = complete_checkpoints(out / CHECKPOINTS)
        then = f"continue from {kept[-1]} with --resume" if kept else "rerun"
        return f"{culprit}: {reason}; free disk space or choose another --out, then {then}"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{culprit}: {reason}; choose an --out you can write to"
    return f"{culprit}: {reason}"


def check_paths(model_dir: Path, data_dir: Path) -> None:
    if not (model_dir / "config.json").is_file():
        raise UserError(
            f"--model {model_dir} is not a transformers model directory (no config.json); "
            "make one with `medmoelora materialize-model`"
        )
    if not data_dir.is_dir():
        raise UserError(f"--data {data_dir} does not exist; run `medmoelora prepare-data --out {data_dir}` first")


def use_bf16(precision: str) -> bool:
    if precision == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "bf16" and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        raise UserError("training.precision bf16 needs a GPU with bf16 support; use auto or fp32 here")
    return precision == "bf16"


def use_unpadded(padding: str, arguments: TrainingArguments) -> bool:
    """training.padding resolved: True runs each sequence of a batch on its own (`forward_unpadded`). auto:
    on a CPU in one process, where the padded batch's extra tokens cost their full compute; elsewhere the
    padded batch (a GPU runs it in one launch; several processes need the distributed wrapper's forward)."""
    if padding == "auto":
        return arguments.device.type == "cpu" and arguments.world_size == 1
    return padding == "none"  # with several processes MoELoRATrainer refuses it in one line


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
def _routing_stats_by_group(adapted: MoELoRAModel, examples: list[Example]) -> dict[str, Any]:
    """Routing statistics of ``examples``: overall, by task, by domain, and the base experts' share of
    general vs medical tokens (adapters with base experts). One example per forward, on its own tokens (no
    padding to mask) and with the LM head at its last position only: the statistics need the layers alone."""
    device = next(p for p in adapted.parameters() if p.requires_grad).device
    groups: dict[tuple[str, int], list[Example]] = {}
    for example in examples:
        groups.setdefault((example.task, example.domain), []).append(example)
    stats: dict[tuple[str, int], dict[str, Any]] = {}
    for group, chosen in groups.items():
        with track_routing(adapted):
            for example in chosen:
                adapted(
                    input_ids=torch.tensor([example.input_ids], device=device),  # (1, T)
                    task_ids=torch.tensor([example.task_id], device=device),
                    domain_labels=torch.tensor([example.domain], device=device),
                    logits_to_keep=1,
                )
        stats[group] = routing_stats(adapted)
    by_task = {task: merge_routing_stats([v for (t, _), v in stats.items() if t == task]) for task, _ in stats}
    by_domain = {
        DOMAINS[domain]: merge_routing_stats([v for (_, d), v in stats.items() if d == domain]) for _, domain in stats
    }
    result = {"by_task": by_task, "by_domain": by_domain, "overall": merge_routing_stats(list(stats.values()))}
    if adapted.adapter_config.num_base_experts:
        result["base_expert_share"] = base_expert_share(by_domain)
    return result


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
