"""`medmoelora count-params`: trainable and active adapter parameters from a config alone."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medmoelora.config import PRESETS, AdapterConfig, parse_override
from medmoelora.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "count-params",
        help="trainable and active adapter parameters of a preset on a model architecture (no weights loaded)",
        description="Count trainable and active (top-k aware) adapter parameters on the meta device.",
    )
    parser.add_argument("--preset", default="med_moe_lora", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument(
        "--architecture",
        default=None,
        help="llama3-8b, smollm2-135m, or a model directory with a config.json "
        "(default: llama3-8b for --preset paper, else smollm2-135m)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, value in YAML (e.g. --set top_k=2 --set ranks=[8,16]); "
        "the `adapter.` prefix of `train --set` may be kept",
    )
    parser.add_argument(
        "--match",
        metavar="PRESET",
        help="also find the one rank (ranks=[r] for every expert) at which --preset's trainable count is "
        "nearest PRESET's on the same architecture: the rank of a parameter-matched baseline",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    parser.set_defaults(func=run)


def load_architecture(spec: str):
    from medmoelora.base_models import check_model_dir
    from medmoelora.params import KNOWN_ARCHITECTURES, architecture

    if spec in KNOWN_ARCHITECTURES:
        return architecture(spec)
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise UserError(
            f"--architecture {spec!r} is neither {' nor '.join(KNOWN_ARCHITECTURES)} nor a directory with config.json"
        )
    return check_model_dir(path, "--architecture ", weights=False)  # only the config is read


def adapter_overrides(texts: list[str]) -> dict:
    """`--set KEY=VALUE` as AdapterConfig fields; `adapter.KEY` (as `train --set` spells it) means KEY."""
    pairs = (parse_override(text) for text in texts)
    return {key.removeprefix("adapter."): value for key, value in pairs}


def run(args: argparse.Namespace) -> int:
    from medmoelora.params import PAPER_ACTIVE, PAPER_TRAINABLE, count_parameters, match_rank

    config = AdapterConfig.from_preset(args.preset, **adapter_overrides(args.overrides))
    target_config = AdapterConfig.from_preset(args.match) if args.match else None  # unknown names fail now
    arch_name = args.architecture or ("llama3-8b" if args.preset == "paper" else "smollm2-135m")
    model_config = load_architecture(arch_name)
    count = count_parameters(config, model_config)
    match = None
    if target_config is not None:
        match = match_rank(config, count_parameters(target_config, model_config).trainable, model_config)
    paper = arch_name == "llama3-8b" and args.preset == "paper"
    if args.json:
        report = {
            "preset": args.preset,
            "architecture": arch_name,
            "trainable": count.trainable,
            "active": count.active,
            "base": count.base,
            "experts_per_layer": count.experts_per_layer,
        }
        if paper:
            report.update(paper_trainable=PAPER_TRAINABLE, paper_active=PAPER_ACTIVE)
        if match is not None:
            report["match"] = {"preset": args.match, "target_trainable": match.target, "rank": match.rank,
                               "trainable": match.trainable, "ratio": match.ratio}  # fmt: skip
        print(json.dumps(report))
        return 0
    print(f"preset {args.preset} on {arch_name} ({count.base / 1e6:,.1f}M base parameters)")
    print(f"experts per layer: {_runs(count.experts_per_layer)}")
    print(
        f"ranks {list(config.ranks)}, routing {config.routing}, top_k {config.top_k}, "
        f"{len(config.target_modules)} target modules per layer"
    )
    rows = [("trainable", count.trainable, PAPER_TRAINABLE), ("active", count.active, PAPER_ACTIVE)]
    print(f"{'':10} {'ours':>10}" + (f" {'paper':>10} {'ours/paper':>10}" if paper else ""))
    for name, ours, reported in rows:
        line = f"{name:10} {ours / 1e6:>9.1f}M"
        if paper:
            line += f" {reported / 1e6:>9.1f}M {ours / reported:>10.2f}"
        print(line)
    if match is not None:
        print(
            f"matched to {args.match} ({match.target / 1e6:.2f}M trainable): ranks=[{match.rank}] gives "
            f"{match.trainable / 1e6:.2f}M, {match.ratio:.3f}x"
        )
    return 0


def _runs(counts: list[int]) -> str:
    """[2, 2, 2, 8, 8] -> 'layers 0-2: 2, layers 3-4: 8'."""
    parts, start = [], 0
    for index in range(1, len(counts) + 1):
        if index == len(counts) or counts[index] != counts[start]:
            span = f"{start}" if start == index - 1 else f"{start}-{index - 1}"
            parts.append(f"layers {span}: {counts[start]}")
            start = index
    return ", ".join(parts)
