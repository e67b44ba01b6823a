"""The paper's figures from the workflow's results (matplotlib, Agg backend: no display needed).

python -m medmoelora_eval.figures routing results/train/med_moe_lora/routing_stats.json --out heatmap.png
python -m medmoelora_eval.figures forgetting results/table4.csv --out forgetting.png
python -m medmoelora_eval.figures temperature results/train/med_moe_lora/adapter_model.safetensors --out tau.png
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from medmoelora import atomic
from medmoelora.errors import UserError, command_main
from medmoelora.tasks import EVAL_TASKS

LAYER = re.compile(r"layers\.(\d+)\.")
TEMPERATURE_KEY = ".router.log_temperature"


def routing_heatmap(stats: dict) -> plt.Figure:
    """Mean gate of every expert (columns) in every layer (rows), one panel per training task."""
    tasks = sorted(stats["by_task"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 5), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        layers = stats["by_task"][task]["layers"]
        width = max(entry["num_experts"] for entry in layers.values())
        grid = np.full((len(layers), width), np.nan)
        for row, key in enumerate(sorted(layers, key=int)):
            gates = layers[key]["mean_gate"]
            grid[row, : len(gates)] = gates
        image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
        ax.set(title=task, xlabel="expert")
    axes[0][0].set_ylabel("layer")
    axes[0][0].yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.colorbar(image, ax=axes[0].tolist(), label="mean gate")
    fig.suptitle("Med-MoE-LoRA expert utilisation by task")
    return fig


def forgetting_bars(table: pd.DataFrame) -> plt.Figure:
    """Every general score's change against the base model, one bar group per run: accuracies in
    percentage points, and each score of another unit (the general LM probe's bits per byte: a rise is
    forgetting) in a panel of its own."""
    general = [task for task in EVAL_TASKS.values() if task.domain == "general" and task.in_tables]
    panels = [([f"{task.label} change" for task in general if task.percent], "change vs base (points)")]
    panels += [([f"{task.label} change"], f"change vs base ({task.label})") for task in general if not task.percent]
    panels = [(columns, ylabel) for columns, ylabel in panels if columns and set(columns) <= set(table.columns)]
    positions = np.arange(len(table))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, (columns, ylabel) in zip(axes[0], panels, strict=True):
        width = 0.8 / len(columns)
        for index, column in enumerate(columns):
            ax.bar(positions + (index - (len(columns) - 1) / 2) * width, table[column], width=width, label=column)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set(ylabel=ylabel)
        ax.set_xticks(positions, table["run"], rotation=30, ha="right")
        ax.legend()
    fig.suptitle("Forgetting of general skills")
    fig.tight_layout()
    return fig


def read_temperatures(adapter: Path) -> pd.DataFrame:
    """tau = exp(log_temperature) of every router in an adapter, with its module path and layer."""
    from safetensors.numpy import load_file

    tensors = load_file(str(adapter))
    rows = [
        {"module": key.removesuffix(TEMPERATURE_KEY), "layer": int(LAYER.search(key).group(1)), "tau": float(np.exp(t))}
        for key, t in sorted(tensors.items())
        if key.endswith(TEMPERATURE_KEY)
    ]
    if not rows:
        raise UserError(f"{adapter} has no {TEMPERATURE_KEY} tensors (LoRA or Multi-LoRA?); pass a soft-routed adapter")
    return pd.DataFrame.from_records(rows)


def temperature_plot(taus: pd.DataFrame) -> plt.Figure:
    """Every router's tau by layer (points) and the layer mean (line)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter(taus["layer"], taus["tau"], s=10, alpha=0.5, label="router")
    means = taus.groupby("layer")["tau"].mean()
    ax.plot(means.index, means.values, color="black", label="layer mean")
    ax.set(xlabel="layer", ylabel="tau", title="Router temperature after training")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend()
    return fig


def save(fig: plt.Figure, out: Path) -> None:
    """PNG without a timestamp in its metadata, written atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    atomic.write_bytes(out, buffer.getvalue())


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medmoelora_eval.figures", description=__doc__.split("\n")[0])
    parser.add_argument("figure", choices=("routing", "forgetting", "temperature"))
    parser.add_argument("source", type=Path, help="routing_stats.json, table4.csv, or adapter_model.safetensors")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.source.is_file():
        raise UserError(f"{args.source} not found; pass the {args.figure} figure's input (see --help)")
    if args.figure == "routing":
        fig = routing_heatmap(json.loads(args.source.read_text(encoding="utf-8")))
    elif args.figure == "forgetting":
        fig = forgetting_bars(pd.read_csv(args.source))
    else:
        fig = temperature_plot(read_temperatures(args.source))
    save(fig, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
