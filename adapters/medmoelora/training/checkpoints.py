"""Checkpoints on disk: which are complete, which are readable, and the files a run adds to Trainer's.

A checkpoint is written into ``checkpoints/.incomplete/checkpoint-N`` and renamed to
``checkpoints/checkpoint-N`` once every file is in it (`MoELoRATrainer._save_checkpoint`), so a kill or
a full disk during a save never leaves a partial ``checkpoint-N``. Besides Trainer's files (the adapter,
optimizer, scheduler, RNG and trainer state) each checkpoint holds the run's own:

    train_config.json      the settings that trained up to this step (and the resumes that changed them)
    train_progress.json    {"step": N, "loss_sum": sum of the per-step training losses up to N}
    train_log.csv          train_log.csv as it was at step N (restored on resume: no duplicated rows)
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from transformers import TrainerState

from medmoelora.errors import UserError
from medmoelora.serialization import CONFIG_FILE, WEIGHTS_FILE, read_adapter_config

CHECKPOINTS = "checkpoints"  # under --out
STAGING = ".incomplete"  # under checkpoints/: saves in progress, renamed into place when complete
TRAIN_CONFIG = "train_config.json"
TRAIN_PROGRESS = "train_progress.json"
TRAIN_LOG = "train_log.csv"
TRAINER_STATE = "trainer_state.json"
TORCH_FILES = ("optimizer.pt", "scheduler.pt")  # plus rng_state.pth (rng_state_<rank>.pth with several processes)
REQUIRED = (CONFIG_FILE, WEIGHTS_FILE, TRAINER_STATE, *TORCH_FILES, TRAIN_CONFIG, TRAIN_PROGRESS)
_NAME = re.compile(r"^checkpoint-(\d+)$")


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[-1])


def checkpoint_dirs(root: Path) -> list[Path]:
    """Every ``checkpoint-N`` directory under ``root``, by step."""
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if path.is_dir() and _NAME.match(path.name)]
    return sorted(found, key=step_of)


def missing_files(checkpoint: Path) -> list[str]:
    missing = [name for name in REQUIRED if not (checkpoint / name).is_file()]
    if not any(checkpoint.glob("rng_state*.pth")):
        missing.append("rng_state.pth")
    return missing


def complete_checkpoints(root: Path) -> list[Path]:
    return [path for path in checkpoint_dirs(root) if not missing_files(path)]


def incomplete_checkpoints(root: Path) -> list[Path]:
    """Interrupted saves (under .incomplete/) and ``checkpoint-N`` directories that lack a file."""
    staged = checkpoint_dirs(root / STAGING)
    return staged + [path for path in checkpoint_dirs(root) if missing_files(path)]


def remove_incomplete(root: Path) -> list[Path]:
    """Delete what `incomplete_checkpoints` finds (they cannot be resumed from); returns them."""
    removed = incomplete_checkpoints(root)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(root / STAGING, ignore_errors=True)
    return removed


def check_readable(checkpoint: Path) -> None:
    """Fail in one line naming the first file of a complete checkpoint that cannot be read back.

    Cheap checks that catch truncation and garbage without loading the tensors twice: JSON parses,
    the safetensors header covers the file, every zip member of a torch file has its CRC.
    """
    advice = f"delete {checkpoint} to resume from an earlier checkpoint, or start afresh with --overwrite"
    for name in (TRAINER_STATE, TRAIN_CONFIG, TRAIN_PROGRESS):
        path = checkpoint / name
        try:
            if name == TRAINER_STATE:
                TrainerState.load_from_json(str(path))
            else:
                json.loads(path.read_text())
        except (ValueError, TypeError) as error:  # JSONDecodeError, UnicodeDecodeError, unknown keys
            raise UserError(f"{path} is not a valid {name} ({type(error).__name__}); {advice}") from None
    try:
        read_adapter_config(checkpoint)
    except UserError as error:
        raise UserError(f"{error}; {advice}") from None
    weights = checkpoint / WEIGHTS_FILE
    try:
        with safe_open(str(weights), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                handle.get_slice(name)
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{weights} is corrupt or truncated ({_first_line(error)}); {advice}") from None
    for path in [*(checkpoint / name for name in TORCH_FILES), *sorted(checkpoint.glob("rng_state*.pth"))]:
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise UserError(f"{path} is corrupt or truncated ({_first_line(error)}); {advice}") from None
        if bad is not None:
            raise UserError(f"{path} is corrupt (member {bad} fails its checksum); {advice}")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
