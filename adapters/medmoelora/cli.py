"""The `medmoelora` command line: one subcommand per job, each registered by the module that does it.

Every subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func=run`` where ``run(args) -> int``. A `UserError` becomes one line on stderr and exit status 2
(`medmoelora.errors.command_main`, shared with the ``python -m medmoelora_eval.*`` entry points).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from medmoelora.errors import command_main

# Imported lazily so that `medmoelora --help` does not pay for torch/transformers imports.
SUBCOMMAND_MODULES = (
    "medmoelora.commands.materialize_model",
    "medmoelora.commands.count_params",
    "medmoelora.commands.prepare_data",
    "medmoelora.commands.train",
    "medmoelora.commands.heldout_start",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medmoelora",
        description="Med-MoE-LoRA reproducibility suite: adapters, data, training and accounting.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


@command_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
