"""`medmoelora prepare-data`: raw release files or the Hugging Face Hub -> data/processed/."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from medmoelora.data.prepare import Options, check_out, prepare
from medmoelora.data.sources import read_hub, read_raw
from medmoelora.errors import UserError
from medmoelora.tasks import DEFAULT_GENERAL_TRAINING, GENERAL_TRAINING_CHOICES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `prepare-data` parser."""
    parser = subparsers.add_parser(
        "prepare-data",
        help="normalise MedQA, PubMedQA, GSM8K, MMLU, MedMCQA and the general-domain data into "
        "OUT/<task>/<split>.jsonl",
        description=(
            "Read the benchmark data (raw release files, or the Hugging Face Hub), write one normalised "
            "record a line to OUT/<task>/<split>.jsonl, drop training questions that appear in an "
            "evaluation set, and write OUT/manifest.json. OUT is replaced only when everything succeeded."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--raw-dir", type=Path, help="directory of the raw release files (shared/data/raw)")
    source.add_argument(
        "--from-hub",
        action="store_true",
        help="load from the Hugging Face Hub (MedQA and MedMCQA train splits replace their dev sets; "
        "Alpaca's 52k instructions replace AlpacaEval's 805 as the general-domain set)",
    )
    parser.add_argument("--out", type=Path, default=Path("data/processed"), help="output directory")
    parser.add_argument(
        "--general-task",
        choices=GENERAL_TRAINING_CHOICES,
        default=DEFAULT_GENERAL_TRAINING,
        help="general-domain knowledge-preservation training set: instructions with responses (AlpacaEval "
        "from --raw-dir, Alpaca with --from-hub; written as <task>/train and <task>/validation), or none "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--general-validation",
        type=int,
        default=50,
        metavar="N",
        help="general-domain instructions held out as validation (default: 50)",
    )
    parser.add_argument(
        "--pubmedqa-validation",
        type=int,
        default=50,
        metavar="N",
        help="non-test PubMedQA questions held out as pubmedqa/validation (default: 50)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation draws")
    parser.add_argument(
        "--pubmedqa-test-ids",
        type=Path,
        metavar="FILE",
        help="with --from-hub: a local PubMedQA test_ground_truth.json (default: the pinned GitHub copy)",
    )
    parser.set_defaults(func=run)


def _progress(items: Iterable, desc: str) -> Iterator:
    """A tqdm bar on stderr; `disable=None` hides it when stderr is not a terminal (logs, CI)."""
    from tqdm import tqdm

    return iter(tqdm(items, desc=desc, unit="file", leave=False, disable=None, file=sys.stderr))


def _read_hub(pubmedqa_test_ids: Path | None):
    """`read_hub`, with an offline or unreachable Hub as one line instead of a datasets traceback."""
    from medmoelora.base_models import hub_offline

    if hub_offline():
        raise UserError("--from-hub, but the Hub is offline (HF_HUB_OFFLINE); unset it, or read --raw-dir instead")
    try:
        return read_hub(pubmedqa_test_ids, progress=lambda xs: _progress(xs, "hub datasets"))
    except ConnectionError as error:  # datasets' "Couldn't reach ... on the Hub"
        raise UserError(f"--from-hub: {error}; check the network, or read --raw-dir instead") from None


def run(args: argparse.Namespace) -> int:
    """Read, split, decontaminate and write; print a count summary."""
    check_out(args.out)  # fail before minutes of Hub downloads, not after
    if args.from_hub:
        sources = _read_hub(args.pubmedqa_test_ids)
    else:
        print(f"prepare-data: reading {args.raw_dir}", file=sys.stderr)
        sources = read_raw(args.raw_dir, progress=lambda xs: _progress(xs, "mmlu csv"))
    options = Options(
        source="hub" if args.from_hub else "raw",
        raw_dir=None if args.from_hub else str(args.raw_dir),
        general_task=args.general_task,
        pubmedqa_validation=args.pubmedqa_validation,
        seed=args.seed,
        general_validation=args.general_validation,
    )
    manifest = prepare(sources, args.out, options, progress=lambda xs: _progress(xs, "writing"))
    for name, entry in manifest["files"].items():
        print(f"prepare-data: {name:<26} {entry['records']:>7} records", file=sys.stderr)
    check = manifest["overlap_check"]
    print(
        f"prepare-data: dropped {check['dropped_total']} contaminated training records "
        f"{check['dropped']}; final overlap {check['final_overlap']}",
        file=sys.stderr,
    )
    print(f"wrote {args.out}")
    return 0
