"""`medmoelora heldout-start`: the base model's held-out loss per training task, measured once.

Every run starts as the base model (every expert's B is 0), so the held-out losses at the start of a
run (`medmoelora.training.heldout`) are the same for every run that shares the base model and the
training settings that choose and tokenize the held-out examples. This command measures them on the
plain base model and writes them with their key; ``medmoelora train --heldout-start FILE`` then reads
them instead of measuring them again (the workflow's ``heldout_start`` rule, shared by every training
job). The values equal what a training run measures itself, bit for bit: the adapted model with its
adapters disabled computes exactly the base model's layers (tests/training/test_heldout_start.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "heldout-start",
        help="measure the base model's held-out loss per training task once, for every training run",
        description="Score the base model on every training task's held-out set, as `train` does at its "
        "start, and write the losses to --out for `train --heldout-start`.",
    )
    parser.add_argument("--model", required=True, help="a transformers model directory (materialize-model)")
    parser.add_argument("--data", default="data/processed", help="prepared data directory (prepare-data)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--config", help="YAML file with a `training:` section, as for `train`")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="training.KEY=VALUE",
        help="override one training setting, as for `train` (tasks, heldout_examples, max_length, batch_size, ...)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medmoelora import atomic
    from medmoelora.base_models import check_model_dir
    from medmoelora.commands.train import read_config_file
    from medmoelora.training.config import build_run_config
    from medmoelora.training.heldout import build_heldout, start_key, start_record
    from medmoelora.training.resume import input_digests
    from medmoelora.training.run import check_paths, use_bf16

    # Held-out examples do not depend on the method (the start routes nothing): LoRA's preset builds them.
    config = build_run_config("lora", read_config_file(args.config), args.overrides)
    model_dir, data_dir = Path(args.model), Path(args.data)
    check_paths(model_dir, data_dir)
    check_model_dir(model_dir, "--model ")
    training = config.training
    dtype = torch.bfloat16 if use_bf16(training.precision) else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    heldout, _ = build_heldout(data_dir, training, tokenizer, config.adapter)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # where `train` puts it (Trainer's device)
    heldout.start = heldout.evaluate(model)
    parameter = next(model.parameters())
    digest = input_digests(model_dir, data_dir, training.tasks)["model"]
    key = start_key(heldout, digest, parameter.dtype, parameter.device)
    atomic.write_json(Path(args.out), start_record(heldout, key), indent=1)
    losses = ", ".join(f"{task} {entry['loss']:.4f}" for task, entry in heldout.start.items())
    print(f"held-out loss of the base model: {losses}; wrote {args.out}")
    return 0
