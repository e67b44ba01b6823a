"""What a rerun into an existing --out does: start afresh, resume from a checkpoint, or nothing.

`plan_run` looks at --out (under its lock) and decides, without changing anything:

- a plain run starts in an --out that holds no training run (stale files of a run killed before its
  first checkpoint are cleared); anything else needs --resume or --overwrite;
- --overwrite clears the run's own files (never other files in --out) and starts afresh;
- --resume continues from the last complete checkpoint; it refuses in one line a setting that differs
  from the checkpoint's unless the setting is in APPLIED_ON_RESUME, and on a finished run it does nothing;
- --resume-if-possible (the workflow's) resumes when a complete, readable checkpoint was made with
  exactly these settings, else starts afresh, saying why.

A resumed run's train_config.json records each resume that changed a setting (`resumes`: step and the
old and new values), so it never claims that the new value trained the steps before the resume. It
also records digests of the base model and the training data (`inputs`): a resume onto another model
or other data is refused like any other change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmoelora.errors import UserError
from medmoelora.serialization import CONFIG_FILE, WEIGHTS_FILE
from medmoelora.training.checkpoints import (
    CHECKPOINTS,
    STAGING,
    TRAIN_CONFIG,
    TRAIN_LOG,
    check_readable,
    complete_checkpoints,
    incomplete_checkpoints,
    missing_files,
    read_json,
    step_of,
)

METRICS_FILE = "train_metrics.json"  # written last: its presence marks a finished run
ROUTING_FILE = "routing_stats.json"
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, ROUTING_FILE, METRICS_FILE, TRAIN_CONFIG, TRAIN_LOG)

# Settings that --resume applies from the checkpoint's step on. Every other setting fixes the data
# order (tasks, sampling, lengths, batch, seed), the learning-rate schedule (max_steps, warmup, scheduler),
# the numerics (precision) or the adapter's shape, so a change to it is refused.
APPLIED_ON_RESUME = frozenset(
    {
        "training.learning_rate",  # the optimizer's rates are rescaled; the schedule keeps its shape
        "training.weight_decay",
        "training.logging_steps",
        "training.save_steps",
        "training.save_total_limit",
        "training.gradient_checkpointing",  # same arithmetic, other memory/compute trade-off
        "training.padding",  # the same loss over the same tokens, other compute
        "training.loggers",
        "training.routing_stats_examples",  # statistics after training
    }
)


class AlreadyFinished(Exception):  # not an error: the command exits 0
    """--resume on a run that has already trained all its steps with these settings: nothing to do."""


@dataclass
class Plan:
    """What `train` does in --out: clear it first (``fresh``) and/or resume from ``checkpoint``."""

    fresh: bool
    checkpoint: Path | None = None
    resumes: list[dict[str, Any]] = field(default_factory=list)  # the history train_config.json records


def plan_run(out: Path, config: dict[str, Any], resume: bool, overwrite: bool, resume_if_possible: bool) -> Plan:
    """``config`` is the run's train_config.json content (`to_dict` of the RunConfig, JSON-normalised)."""
    root = out / CHECKPOINTS
    if overwrite:
        return Plan(fresh=True)
    finished = _finished(out)
    if resume or resume_if_possible:
        if finished is not None:
            steps, stored = finished
            changed = differences(stored, config)
            if not changed:
                raise AlreadyFinished(f"{out} already holds this run, trained for all its {steps} steps; nothing to do")
            if resume_if_possible:
                return _afresh(f"{out} holds a finished run with other settings ({_describe(changed)})")
            raise UserError(
                f"--resume: {out} holds a finished run ({steps} steps) trained with other settings "
                f"({_describe(changed)}); start afresh with --overwrite"
            )
        if resume_if_possible:
            return _resume_if_possible(root, config)
        return _resume(root, config)
    if finished is not None or complete_checkpoints(root) or (out / CONFIG_FILE).exists():
        raise UserError(f"--out {out} already holds a training run; pass --resume to continue it or --overwrite")
    return Plan(fresh=True)  # at most the remains of a run killed before its first checkpoint


def _resume(root: Path, config: dict[str, Any]) -> Plan:
    _report_incomplete(root)
    complete = complete_checkpoints(root)
    if not complete:
        raise UserError(f"--resume: no complete checkpoint under {root} to resume from; drop --resume to start afresh")
    checkpoint = complete[-1]
    check_readable(checkpoint)
    stored = _stored_config(checkpoint)
    changed = differences(stored, config)
    refused = {key: values for key, values in changed.items() if key not in APPLIED_ON_RESUME}
    if refused:
        raise UserError(
            f"--resume: {checkpoint} was trained with other settings or inputs ({_describe(refused)}); resuming "
            "cannot change them (they fix the data, the learning-rate schedule or the adapter): set them back, "
            "or start afresh with --overwrite"
        )
    resumes = list(stored.get("resumes", []))
    if changed:
        resumes.append({"step": step_of(checkpoint), "changed": changed})
    say(f"resuming from {checkpoint}" + (f" with {_describe(changed)}" if changed else ""))
    return Plan(fresh=False, checkpoint=checkpoint, resumes=resumes)


def _resume_if_possible(root: Path, config: dict[str, Any]) -> Plan:
    _report_incomplete(root)
    complete = complete_checkpoints(root)
    if not complete:
        return _afresh(f"no complete checkpoint under {root}")
    checkpoint = complete[-1]
    try:
        check_readable(checkpoint)
    except UserError as error:
        return _afresh(str(error).split(";")[0])
    stored = _stored_config(checkpoint)
    changed = differences(stored, config)
    if changed:
        return _afresh(f"{checkpoint} was made with other settings ({_describe(changed)})")
    say(f"resuming from {checkpoint}")
    return Plan(fresh=False, checkpoint=checkpoint, resumes=list(stored.get("resumes", [])))


def _afresh(reason: str) -> Plan:
    say(f"starting afresh: {reason}")
    return Plan(fresh=True)


def _report_incomplete(root: Path) -> None:
    """One line per checkpoint that cannot be resumed from (an interrupted save); `prepare` removes them."""
    for path in incomplete_checkpoints(root):
        missing = ", ".join(missing_files(path)) if path.parent == root else "its save was interrupted"
        say(f"skipping incomplete checkpoint {path} ({missing})")


def prepare(out: Path, plan: Plan) -> None:
    """Apply a plan to --out: clear the run's files, or drop incomplete checkpoints and restore the log."""
    root = out / CHECKPOINTS
    if plan.fresh:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        return
    for path in incomplete_checkpoints(root):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(root / STAGING, ignore_errors=True)
    assert plan.checkpoint is not None
    saved_log = plan.checkpoint / TRAIN_LOG
    if saved_log.is_file():  # the log as it was at the checkpoint: no rows of the steps redone now
        shutil.copyfile(saved_log, out / TRAIN_LOG)
    else:
        (out / TRAIN_LOG).unlink(missing_ok=True)


def differences(stored: dict[str, Any], config: dict[str, Any]) -> dict[str, list[Any]]:
    """``{"training.learning_rate": [old, new], ...}`` for every setting or input that differs."""
    changed = {}
    for section in ("adapter", "training", "inputs"):
        old, new = stored.get(section) or {}, config.get(section) or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                changed[f"{section}.{key}"] = [old.get(key), new.get(key)]
    return changed


def normalised(config: dict[str, Any]) -> dict[str, Any]:
    """As it reads back from JSON (tuples become lists), so that stored and new configs compare equal."""
    return json.loads(json.dumps(config))


def input_digests(model_dir: Path, data_dir: Path, tasks: Sequence[str]) -> dict[str, str]:
    """Digests of the base model directory and the tasks' training files (what a run reads)."""
    model = [path for path in sorted(model_dir.iterdir()) if path.is_file()]
    data = [data_dir / task / "train.jsonl" for task in tasks]
    data = [path for path in data if path.is_file()]  # a missing one is build_examples' error to report
    return {"model": _digest(model_dir, model), "data": _digest(data_dir, data)}


_SAMPLE = 1 << 20  # bytes


def _digest(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root)}:{size}\n".encode())
        with path.open("rb") as handle:
            if size <= 4 * _SAMPLE:
                digest.update(handle.read())
            else:  # model weights: reading gigabytes at each start is too slow; a re-made model differs here
                digest.update(handle.read(_SAMPLE))
                handle.seek(-_SAMPLE, os.SEEK_END)
                digest.update(handle.read(_SAMPLE))
    return digest.hexdigest()[:16]


def say(message: str) -> None:
    if is_main_process():
        print(f"note: {message}", file=sys.stderr, flush=True)


def is_main_process() -> bool:
    """The first process of an `accelerate launch` (torchrun sets RANK), or the only one."""
    return int(os.environ.get("RANK", "0")) == 0


def _finished(out: Path) -> tuple[int, dict[str, Any]] | None:
    """(steps, stored train_config) when --out holds a run that trained all its steps, else None."""
    metrics_path, config_path = out / METRICS_FILE, out / TRAIN_CONFIG
    if not (metrics_path.is_file() and config_path.is_file()):
        return None
    try:
        steps = int(read_json(metrics_path)["steps"])
        stored = read_json(config_path)
        max_steps = int(stored["training"]["max_steps"])
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{out} holds an unreadable {METRICS_FILE} or {TRAIN_CONFIG} ({type(error).__name__}); "
            "start afresh with --overwrite"
        ) from None
    return (steps, stored) if steps >= max_steps else None  # a run stopped early can continue


def _stored_config(checkpoint: Path) -> dict[str, Any]:
    stored = read_json(checkpoint / TRAIN_CONFIG)  # check_readable has parsed it
    if not isinstance(stored, dict) or not isinstance(stored.get("training"), dict):
        raise UserError(
            f"{checkpoint / TRAIN_CONFIG} has no `training:` section; delete {checkpoint} to resume from an earlier "
            "checkpoint, or start afresh with --overwrite"
        )
    return stored


def _describe(changed: dict[str, list[Any]]) -> str:
    return ", ".join(f"{key} {json.dumps(old)} -> {json.dumps(new)}" for key, (old, new) in changed.items())
