"""Routing specialisation by depth: does a layer send different tasks to different experts?

    python -m medmoelora_eval.mechanisms.routing asymmetric=results/train/med_moe_lora/seed0/routing_stats.json \
        uniform=results/train/alloc_uniform/seed0/routing_stats.json --out routing_specialisation.csv

From a training run's routing_stats.json (``by_task``: per task and adapted module, the share of the task's
tokens whose top-1 expert is expert e, and the task's token count), per module:

    P(t) = tokens_t / sum_t tokens_t,     P(e | t) = top1_share_t[e],     P(e) = sum_t P(t) P(e | t)
    routing entropy        H(E)     = -sum_e P(e) ln P(e)                                    (nats)
    mutual information     I(T; E)  = sum_t P(t) sum_e P(e | t) ln (P(e | t) / P(e))          (nats)

H(E) measures how evenly the layer uses its experts (at most ln N: all used equally); I(T; E) how much the
expert choice tells about the task (0: every task routed alike; at most min(H(T), ln N): each task to its
own experts). Estimated from a few examples per task, I(T; E) is biased upward by about
``chance_information`` = (T - 1)(N - 1) / (2 n) nats (n tokens; tokens of one sequence are not independent,
so the true bias is larger), which grows with N: compare layers by I(T; E) above it. The table has one
row per module (and allocation and seed); `by_layer` gives a layer's value, the mean over its modules and
the seeds. Upper layers that "use their extra experts for different tasks" show a higher I(T; E) above
chance than lower ones.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmoelora import atomic
from medmoelora.errors import UserError, command_main

MODULE_COLUMNS = ["allocation", "seed", "layer", "module", "num_experts", "mutual_information", "chance_information"]
MODULE_COLUMNS += ["routing_entropy", "max_entropy", "tasks", "tokens"]


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


def chance_information(tasks: int, experts: int, tokens: float) -> float:
    """The plug-in I(T; E) expected from ``tokens`` samples when routing is independent of the task: the
    Miller-Madow bias (T - 1)(N - 1) / (2 n) nats. It grows with N, so a layer with more experts shows more
    mutual information by chance alone; the depth verdict compares I(T; E) above it."""
    return (tasks - 1) * (experts - 1) / (2.0 * tokens)


def module_specialisation(by_task: Mapping[str, Mapping[str, Any]], path: str) -> dict[str, float]:
    """Mutual information and routing entropy of one module, from routing_stats.json's ``by_task``."""
    tasks = [task for task, stats in by_task.items() if path in stats["modules"]]
    entries = [by_task[task]["modules"][path] for task in tasks]
    weights = np.array([entry["tokens"] for entry in entries], dtype=float)  # (T,)
    choices = np.array([entry["top1_share"] for entry in entries], dtype=float)  # (T, N)
    choices /= choices.sum(axis=1, keepdims=True)  # the shares are means over tokens: sums of 1 up to round-off
    return {
        "num_experts": choices.shape[1],
        "mutual_information": mutual_information(weights, choices),
        "chance_information": chance_information(len(tasks), choices.shape[1], weights.sum()),
        "routing_entropy": entropy((weights / weights.sum()) @ choices),
        "max_entropy": math.log(choices.shape[1]),
        "tasks": len(tasks),
        "tokens": int(weights.sum()),
    }


def module_table(stats: Mapping[str, Any]) -> pd.DataFrame:
    """One row per soft-routed module (columns `MODULE_COLUMNS` less allocation and seed)."""
    by_task = stats.get("by_task") or {}
    paths = {path: entry for task in by_task.values() for path, entry in task["modules"].items()}
    rows = [
        {"layer": int(entry["layer"]), "module": path, **module_specialisation(by_task, path)}
        for path, entry in sorted(paths.items(), key=lambda item: (int(item[1]["layer"]), item[0]))
        if entry.get("routing") == "soft" and len(entry["top1_share"]) > 1
    ]
    return pd.DataFrame(rows, columns=MODULE_COLUMNS[2:])


def specialisation_table(sources: Sequence[tuple[str, Path]]) -> pd.DataFrame:
    """Every module of every (allocation, routing_stats.json), stacked; a file's seed is its position among
    its allocation's files (one per training seed)."""
    frames = []
    seen: dict[str, int] = defaultdict(int)
    for label, path in sources:
        table = module_table(read_stats(path))
        if table.empty:
            raise UserError(f"{path}: no soft-routed module with routing statistics by task; give a MoE run's file")
        frames.append(table.assign(allocation=label, seed=seen[label]))
        seen[label] += 1
    return pd.concat(frames, ignore_index=True)[MODULE_COLUMNS]


def by_layer(table: pd.DataFrame) -> pd.DataFrame:
    """Per allocation and decoder layer: the mean over modules and seeds (mutual information and entropy are
    the same under any relabelling of the experts, so seeds average)."""
    grouped = table.groupby(["allocation", "layer"], sort=False)
    means = grouped[["mutual_information", "chance_information", "routing_entropy", "max_entropy"]].mean()
    return means.join(grouped["num_experts"].max()).reset_index()


def read_stats(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"{path}: {error.strerror}; give a training run's routing_stats.json") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error.msg}); re-run the training run that wrote it") from None


def labelled_paths(items: list[str]) -> list[tuple[str, Path]]:
    """``label=path`` arguments, in order (a label given again: another seed of that allocation)."""
    sources = []
    for item in items:
        label, equals, path = item.partition("=")
        if not equals or not label or not path:
            raise UserError(f"{item!r} is not LABEL=PATH (e.g. asymmetric=results/train/RUN/routing_stats.json)")
        sources.append((label, Path(path)))
    return sources


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="LABEL=routing_stats.json, per allocation and seed")
    parser.add_argument("--out", type=Path, required=True, help="the per-module CSV")
    args = parser.parse_args(argv)
    table = specialisation_table(labelled_paths(args.sources))
    atomic.write_text(args.out, table.to_csv(index=False, float_format="%.6g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
