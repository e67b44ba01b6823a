"""The `medmoelora` command line: one subcommand per job, each registered by the module that does it.

Every subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func=run`` where ``run(args) -> int``. A `UserError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from medmoelora.errors import UserError

# Imported lazily so that `medmoelora --help` does not pay for torch/transformers imports.
SUBCOMMAND_MODULES = (
    "medmoelora.commands.materialize_model",
    "medmoelora.commands.count_params",
    "medmoelora.commands.prepare_data",
    "medmoelora.commands.train",
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
