"""`medmoelora train`: train one method on the prepared multi-task data.

Runs on one CPU, one GPU, or several processes / GPUs with the same command under
``accelerate launch -m medmoelora.cli train ...`` (Accelerate underneath transformers' Trainer).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from medmoelora.config import METHODS, yaml_problem
from medmoelora.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train lora, multi_lora, uniform_moe or med_moe_lora on data/processed",
        description="Train one method (its preset, then --config, then --set) and write the adapter, "
        "routing_stats.json and train_metrics.json into --out.",
    )
    parser.add_argument("--model", required=True, help="a transformers model directory (materialize-model)")
    parser.add_argument("--data", default="data/processed", help="prepared data directory (prepare-data)")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--out", required=True, help="output directory for the adapter, statistics, checkpoints")
    parser.add_argument("--config", help="YAML file with `adapter:` and `training:` sections")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting, value in YAML (e.g. --set training.max_steps=10 --set adapter.top_k=2)",
    )
    parser.add_argument(
        "--heldout-start",
        metavar="FILE",
        help="held-out losses at the start, from `medmoelora heldout-start` (the same for every run on this "
        "base model); used when measured for this model and these held-out examples, else measured here",
    )
    rerun = parser.add_mutually_exclusive_group()
    rerun.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last complete checkpoint in --out (a finished run: nothing to do)",
    )
    rerun.add_argument(
        "--overwrite", action="store_true", help="start afresh even if --out holds a run (clears the run's files)"
    )
    rerun.add_argument(
        "--resume-if-possible",
        action="store_true",
        help="resume when --out has a complete checkpoint made with these exact settings, else start afresh "
        "(the workflow's: a preempted job continues where it stopped)",
    )
    parser.set_defaults(func=run)


def read_config_file(path: str | None) -> dict:
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--config {path} does not exist")
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"--config {path} is not a UTF-8 text file; give a YAML file") from None
    except yaml.YAMLError as error:
        raise UserError(f"--config {path} is not valid YAML: {yaml_problem(error)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"--config {path} must be a mapping with `adapter:` and/or `training:` sections")
    return loaded


def run(args: argparse.Namespace) -> int:
    from medmoelora.base_models import check_model_dir
    from medmoelora.training.config import build_run_config
    from medmoelora.training.heldout import load_start_file
    from medmoelora.training.resume import AlreadyFinished, is_main_process
    from medmoelora.training.run import train

    config = build_run_config(args.method, read_config_file(args.config), args.overrides)
    if args.heldout_start is not None:
        load_start_file(args.heldout_start)  # a bad file fails now, before the model is loaded
    check_model_dir(Path(args.model), "--model ")  # unreadable model files fail now, in one line naming the file
    try:
        metrics = train(
            args.model,
            args.data,
            args.out,
            config,
            resume=args.resume,
            overwrite=args.overwrite,
            resume_if_possible=args.resume_if_possible,
            heldout_start=args.heldout_start,
        )
    except AlreadyFinished as finished:
        if is_main_process():  # once, not once per process of an `accelerate launch`
            print(finished)
        return 0
    if metrics:
        print(
            f"trained {args.method}: {metrics['steps']} steps, {metrics['tokens_per_second']:.0f} tokens/s, "
            f"peak memory {metrics['peak_memory_mb']:.0f} MiB, final loss {metrics['final_loss']:.4f}; wrote {args.out}"
        )
    return 0
