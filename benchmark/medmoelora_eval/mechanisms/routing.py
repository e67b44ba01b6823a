"""Routing specialisation by depth: does a layer send different tasks to different experts?

    python -m medmoelora_eval.mechanisms.routing asymmetric=results/train/med_moe_lora/routing_stats.json \
        uniform=results/train/alloc_uniform/routing_stats.json --out routing_specialisation.csv

From a training run's routing_stats.json (``by_task``: per task and adapted module, the share of the task's
tokens whose top-1 expert is expert e, and the task's token count), per module:

    P(t) = tokens_t / sum_t tokens_t,     P(e | t) = top1_share_t[e],     P(e) = sum_t P(t) P(e | t)
    routing entropy        H(E)     = -sum_e P(e) ln P(e)                                    (nats)
    mutual information     I(T; E)  = sum_t P(t) sum_e P(e | t) ln (P(e | t) / P(e))          (nats)

H(E) measures how evenly the layer uses its experts (at most ln N: all used equally); I(T; E) how much the
expert choice tells about the task (0: every task routed alike; at most min(H(T), ln N): each task to its
own experts). A layer's value is the mean over its adapted modules. Upper layers that "use their extra
experts for different tasks" show a higher I(T; E) than lower ones.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmoelora import atomic
from medmoelora.errors import UserError, command_main

COLUMNS = ["allocation", "layer", "num_experts", "mutual_information", "routing_entropy", "max_entropy", "tasks"]


def entropy(distribution: np.ndarray) -> float:
    """Shannon entropy in nats of a probability vector (0 ln 0 = 0)."""
    p = distribution[distribution > 0]
    return float(-(p * np.log(p)).sum())


def mutual_information(task_weights: np.ndarray, choice_given_task: np.ndarray) -> float:
    """I(T; E) in nats from P(t) (T,) (any positive weights, normalised here) and P(e | t) (T, N), rows summing
    to 1: H(E) - H(E | T)."""
    p_task = task_weights / task_weights.sum()  # (T,)
    p_choice = p_task @ choice_given_task  # (N,)
    conditional = sum(w * entropy(row) for w, row in zip(p_task, choice_given_task, strict=True))
    return max(entropy(p_choice) - conditional, 0.0)  # clip float round-off below 0


def module_specialisation(by_task: Mapping[str, Mapping[str, Any]], path: str) -> dict[str, float]:
    """Mutual information and routing entropy of one module, from routing_stats.json's ``by_task``."""
    tasks = [task for task, stats in by_task.items() if path in stats["modules"]]
    entries = [by_task[task]["modules"][path] for task in tasks]
    weights = np.array([entry["tokens"] for entry in entries], dtype=float)  # (T,)
    choices = np.array([entry["top1_share"] for entry in entries], dtype=float)  # (T, N)
    choices /= choices.sum(axis=1, keepdims=True)  # the shares are means over tokens: sums of 1 up to round-off
    return {
        "mutual_information": mutual_information(weights, choices),
        "routing_entropy": entropy((weights / weights.sum()) @ choices),
        "num_experts": choices.shape[1],
        "tasks": len(tasks),
    }


def layer_specialisation(stats: Mapping[str, Any]) -> pd.DataFrame:
    """One row per decoder layer (the mean over its soft-routed modules): layer, num_experts,
    mutual_information, routing_entropy, max_entropy (ln N), tasks."""
    by_task = stats.get("by_task") or {}
    per_layer: dict[int, list[dict[str, float]]] = defaultdict(list)
    paths = {path: entry for task in by_task.values() for path, entry in task["modules"].items()}
    for path, entry in sorted(paths.items()):
        if entry.get("routing") == "soft" and len(entry["top1_share"]) > 1:
            per_layer[int(entry["layer"])].append(module_specialisation(by_task, path))
    rows = []
    for layer, modules in sorted(per_layer.items()):
        frame = pd.DataFrame(modules)
        num_experts = int(frame["num_experts"].max())
        rows.append(
            {
                "layer": layer,
                "num_experts": num_experts,
                "mutual_information": frame["mutual_information"].mean(),
                "routing_entropy": frame["routing_entropy"].mean(),
                "max_entropy": math.log(num_experts),
                "tasks": int(frame["tasks"].max()),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS[1:])


def specialisation_table(sources: Mapping[str, Path]) -> pd.DataFrame:
    """The per-layer table of every allocation (label -> routing_stats.json), stacked."""
    frames = []
    for label, path in sources.items():
        table = layer_specialisation(read_stats(path))
        if table.empty:
            raise UserError(f"{path}: no soft-routed module with routing statistics by task; give a MoE run's file")
        frames.append(table.assign(allocation=label))
    return pd.concat(frames, ignore_index=True)[COLUMNS]


def read_stats(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"{path}: {error.strerror}; give a training run's routing_stats.json") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error.msg}); re-run the training run that wrote it") from None


def labelled_paths(items: list[str]) -> dict[str, Path]:
    """``label=path`` arguments, in order."""
    sources = {}
    for item in items:
        label, equals, path = item.partition("=")
        if not equals or not label or not path:
            raise UserError(f"{item!r} is not LABEL=PATH (e.g. asymmetric=results/train/RUN/routing_stats.json)")
        sources[label] = Path(path)
    return sources


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="LABEL=routing_stats.json, one per allocation")
    parser.add_argument("--out", type=Path, required=True, help="the per-layer CSV")
    args = parser.parse_args(argv)
    table = specialisation_table(labelled_paths(args.sources))
    atomic.write_text(args.out, table.to_csv(index=False, float_format="%.6g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
