"""The report's Mechanisms section, from the files the workflow writes into results/mechanisms/.

`medmoelora_eval.report --mechanisms results/mechanisms` calls `mechanisms_section`; the files are
ablation.csv and dual_path.csv (`ablation`), routing_specialisation.csv (`routing`), subspace_overlap.csv
(`subspace`), routing_by_depth.png and subspace_by_depth.png (`figures`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from medmoelora.errors import UserError
from medmoelora_eval.mechanisms.ablation import AVERAGE, DUAL_PATH_RULE, overall_verdict
from medmoelora_eval.mechanisms.verdicts import DEPTH_RULE, SEPARATION_RULE, depth_verdict, separation_verdict
from medmoelora_eval.samples import METRICS

FILES = ("ablation.csv", "dual_path.csv", "routing_specialisation.csv", "subspace_overlap.csv")
FIGURES = ("routing_by_depth.png", "subspace_by_depth.png")


def _read(directory: Path, name: str) -> pd.DataFrame:
    path = directory / name
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise UserError(f"cannot read {path} ({error}); build results/mechanisms first") from None


def _cell(value: float, lo: float, hi: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _digits(metric: str) -> int:
    return 1 if metric == "accuracy" else 3


def ablation_lines(table: pd.DataFrame, dual: pd.DataFrame) -> list[str]:
    table = table[table["scope"] == AVERAGE].reset_index(drop=True)  # each task's rows: ablation.csv
    shown = pd.DataFrame(
        {
            "experts": table["variant"].str.replace("_", " "),
            "domain": table["domain"],
            "metric": table["metric"].map(lambda name: METRICS[name].label),
            "score [95% interval]": [
                f"{row.score:.{_digits(row.metric)}f} [{row.score_lo:.{_digits(row.metric)}f}, "
                f"{row.score_hi:.{_digits(row.metric)}f}]"
                for row in table.itertuples()
            ],
            "change vs all experts": [
                _cell(row.change, row.change_lo, row.change_hi, _digits(row.metric)) for row in table.itertuples()
            ],
            "p": table["p_value"].map(lambda p: "" if pd.isna(p) else f"{p:.3g}"),
        }
    )
    tests = pd.DataFrame(
        {
            "removed": dual["ablation"].map({"without_base": "base experts", "without_specialists": "specialists"}),
            "metric": dual["metric"].map(lambda name: METRICS[name].label),
            "predicted to harm": dual["predicted_domain"],
            "harm there / elsewhere": [
                f"{row.harm_predicted:+.{_digits(row.metric)}f} / {row.harm_other:+.{_digits(row.metric)}f}"
                for row in dual.itertuples()
            ],
            "difference [95% interval]": [
                _cell(row.difference, row.difference_lo, row.difference_hi, _digits(row.metric))
                for row in dual.itertuples()
            ],
            "verdict": dual["verdict"],
        }
    )
    verdict = overall_verdict(dual) if len(dual) else "not evaluated"
    return [
        "### 1. Dual path: base experts hold general skills, specialists the domain",
        "",
        f"**{verdict}** (accuracy). The Med-MoE-LoRA run evaluated with all experts, without its base experts "
        "(`disable_experts=base`) and without its specialists (`disable_experts=specialists`), the router "
        "renormalised over the remaining experts; scores by domain (the mean of its tasks; each task's own rows "
        f"are in ablation.csv), each change paired against all experts (same documents and seeds). {DUAL_PATH_RULE}",
        "",
        shown.to_markdown(index=False, disable_numparse=True),
        "",
        tests.to_markdown(index=False, disable_numparse=True) if len(tests) else "No metric scored in both domains.",
        "",
    ]


def depth_lines(routing: pd.DataFrame, figure: str) -> list[str]:
    found = depth_verdict(routing)
    if "note" in found:
        summary = f"**{found['verdict']}**: {found['note']}."
    else:
        summary = (
            f"**{found['verdict']}**. Asymmetric allocation: I(task; expert) above chance {found['upper']:.3f} nats "
            f"in the layers with {found['upper_experts']} experts, {found['lower']:.3f} in those with "
            f"{', '.join(map(str, found['lower_experts']))}; difference "
            f"{_cell(found['difference'], found['lo'], found['hi'], 3)}."
        )
    columns = ["mutual_information", "chance_information", "routing_entropy"]
    per_allocation = routing.groupby("allocation", sort=False)[columns].mean()
    means = "; ".join(
        f"{name}: I {row.mutual_information:.3f} (chance {row.chance_information:.3f}), H {row.routing_entropy:.3f}"
        for name, row in per_allocation.iterrows()
    )
    return [
        "### 2. Deeper layers use their extra experts for different tasks",
        "",
        f"{summary} {DEPTH_RULE} Means over all modules, in nats: {means}. Mutual information and entropy per layer "
        "for the three allocations:",
        "",
        f"![routing by depth]({figure})",
        "",
    ]


def separation_lines(angles: pd.DataFrame, figure: str) -> list[str]:
    found = separation_verdict(angles)
    if "note" in found:
        summary = f"**{found['verdict']}**: {found['note']}."
    else:
        degrees = {key: np.degrees(found[key]) for key in ("base_specialist", "specialist_specialist", "chance")}
        summary = (
            f"**{found['verdict']}**. Mean principal angle between output subspaces: base expert vs specialist "
            f"{degrees['base_specialist']:.1f} degrees, specialist vs specialist "
            f"{degrees['specialist_specialist']:.1f}, "
            f"random subspaces of the same sizes {degrees['chance']:.1f}; difference (radians) "
            f"{_cell(found['difference'], found['lo'], found['hi'], 3)}."
        )
    return [
        "### 3. General and domain knowledge occupy separable low-rank subspaces",
        "",
        f"{summary} {SEPARATION_RULE} Per layer, both sides:",
        "",
        f"![subspace overlap by depth]({figure})",
        "",
    ]


def mechanisms_section(directory: Path, relative_to: Path) -> list[str]:
    """The report lines; figure links relative to ``relative_to`` (the report's folder)."""
    ablation, dual, routing, angles = (_read(directory, name) for name in FILES)
    figures = [
        (directory / name).relative_to(relative_to).as_posix()
        if (directory / name).is_relative_to(relative_to)
        else (directory / name).as_posix()
        for name in FIGURES
    ]
    return [
        "## Mechanisms",
        "",
        "Why Med-MoE-LoRA would work, tested on this run's adapter rather than assumed (docs/mechanisms.md). "
        "Each verdict follows the rule stated with it.",
        "",
        *ablation_lines(ablation, dual),
        *depth_lines(routing, figures[0]),
        *separation_lines(angles, figures[1]),
    ]
