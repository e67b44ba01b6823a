"""The paper's figures from the workflow's results (matplotlib, Agg backend: no display needed).

python -m medmoelora_eval.figures routing results/train/med_moe_lora/seed0/routing_stats.json --out heatmap.png
python -m medmoelora_eval.figures forgetting results/table4.csv --out forgetting.png
python -m medmoelora_eval.figures temperature results/train/med_moe_lora/seed*/adapter_model.safetensors --out tau.png
python -m medmoelora_eval.figures claims results/claims.csv --out claims.png
python -m medmoelora_eval.figures probe results/train/*/seed*/train_metrics.json --out general_probe.png

Every figure that shows a score or a change draws its 95% interval (the ``_lo`` / ``_hi`` columns of the
tables, ``ci_lo`` / ``ci_hi`` of the claims) as an error bar.
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
from medmoelora_eval.samples import METRICS, scope_label
from medmoelora_eval.stats import CONTRADICTED, INCONCLUSIVE, SUPPORTED
from medmoelora_eval.tables import decimals
from medmoelora_eval.temperatures import read_temperatures

VERDICT_COLOURS = {SUPPORTED: "tab:green", CONTRADICTED: "tab:red", INCONCLUSIVE: "tab:grey"}
LAYER = re.compile(r"layers\.(\d+)\.")


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


def interval_error(values: pd.Series, lo: pd.Series, hi: pd.Series) -> np.ndarray:
    """(2, N) distances from each value down to its interval's low end and up to its high end (yerr)."""
    return np.vstack([values - lo, hi - values])


def unit(label: str) -> str:
    """The unit of a continuous column: nats for a log-probability, bits per byte, or the measure's name."""
    if "logprob" in label:
        return "nats"
    if "bits" in label:
        return "bits/byte"
    return label.removesuffix(" change")


def forgetting_bars(table: pd.DataFrame) -> plt.Figure:
    """Every general score's change against the base model with its 95% interval, one bar group per run:
    accuracies in one panel (percentage points), each continuous measure in a panel of its own unit."""
    changes = [c for c in table.columns if c.endswith(" change") and f"{c}_lo" in table.columns]
    if not changes:
        raise UserError("no ' change' column with _lo / _hi interval columns; pass the forgetting table (table4.csv)")
    accuracy = [c for c in changes if decimals(c) == 1]
    panels = [accuracy] * bool(accuracy) + [[c] for c in changes if c not in accuracy]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False, layout="constrained")
    positions = np.arange(len(table))
    for ax, columns in zip(axes[0], panels, strict=True):
        width = 0.8 / len(columns)
        for index, column in enumerate(columns):
            error = interval_error(table[column], table[f"{column}_lo"], table[f"{column}_hi"])
            offset = (index - (len(columns) - 1) / 2) * width
            ax.bar(positions + offset, table[column], width=width, yerr=error, capsize=3, label=column)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set(xticks=positions, ylabel=f"change vs base ({'points' if columns is accuracy else unit(columns[0])})")
        ax.set_xticklabels(table["run"])
        ax.legend(fontsize="small")
    fig.suptitle("Forgetting of general skills (95% intervals)")
    return fig


def claims_plot(claims: pd.DataFrame) -> plt.Figure:
    """Each claim's primary tests: the paired difference (favoured run minus the other) with its 95%
    interval, coloured by its unadjusted verdict; the paper's effect, where it states one, as a cross."""
    if "row" not in claims:
        raise UserError("the claims table has no 'row' column (an older claims.csv); re-run the claims rule")
    measured = claims[claims["row"].eq("primary") & claims["ci_lo"].notna() & claims["metric"].isin(list(METRICS))]
    if measured.empty:
        raise UserError("no claim with an interval in the claims table; pass results/claims.csv of a run")
    metrics = list(dict.fromkeys(measured["metric"]))
    height = 0.45 * len(measured) / len(metrics) + 1.5
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), height), squeeze=False, layout="constrained")
    for ax, metric in zip(axes[0], metrics, strict=True):
        rows = measured[measured["metric"] == metric].reset_index(drop=True)
        positions = np.arange(len(rows))[::-1]  # the first claim on top
        colours = [VERDICT_COLOURS.get(verdict, "grey") for verdict in rows["verdict"]]
        error = interval_error(rows["difference"], rows["ci_lo"], rows["ci_hi"])
        for y, x, low, high, colour in zip(positions, rows["difference"], *error, colours, strict=True):
            ax.errorbar(x, y, xerr=[[low], [high]], fmt="o", color=colour, capsize=3)
        stated = rows["paper_effect"].notna()
        ax.scatter(
            rows.loc[stated, "paper_effect"], positions[stated.to_numpy()], marker="x", color="black", label="paper"
        )
        ax.axvline(0, color="black", linewidth=0.8)
        labels = [f"{r.claim} {scope_label(r.scope)}: {r.comparison}" for r in rows.itertuples(index=False)]
        ax.set(yticks=positions, xlabel=f"difference, {METRICS[metric].label}")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
        ax.set_yticklabels(labels, fontsize="small")
        if stated.any():
            ax.legend(fontsize="small")
    fig.suptitle(
        "Claims' primary tests: our difference with its 95% interval (green supported, red contradicted, "
        "grey inconclusive; before Holm's adjustment, the claims table has the verdicts)"
    )
    return fig


def temperature_plot(taus: pd.DataFrame) -> plt.Figure:
    """Every router's tau by layer (points; of every seed's adapter) and the layer mean (line)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter(taus["layer"], taus["tau"], s=10, alpha=0.5, label="router")
    means = taus.groupby("layer")["tau"].mean()
    ax.plot(means.index, means.values, color="black", label="layer mean")
    ax.set(xlabel="layer", ylabel="tau", title="Router temperature after training")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend()
    return fig


def read_probe(metrics: Path) -> pd.DataFrame:
    """The general-skill monitor's checks of one training (``train_metrics.json`` ``general_probe``): step
    and relative change of the probe loss against step 0, the base model; run and seed from the path
    (results/train/<run>/seed<k>/train_metrics.json)."""
    probe = json.loads(metrics.read_text(encoding="utf-8")).get("general_probe")
    if not probe or not probe.get("history"):
        raise UserError(
            f"{metrics} has no general_probe history (training.monitor_steps: 0?); train with the monitor on"
        )
    rows = pd.DataFrame.from_records(probe["history"])[["step", "change"]]
    return rows.assign(run=metrics.parent.parent.name, seed=metrics.parent.name)


def probe_plot(checks: pd.DataFrame) -> plt.Figure:
    """The general probe's loss change against the base model over training steps, one colour per run (a
    line per seed); the paper's 1% threshold dashed. Above 0: the run forgets general-domain text."""
    fig, ax = plt.subplots(figsize=(6, 3.8), layout="constrained")
    for index, (run, rows) in enumerate(checks.groupby("run", sort=False)):
        colour = f"C{index % 10}"
        for seed_index, (_, seed_rows) in enumerate(rows.groupby("seed", sort=True)):
            ax.plot(seed_rows["step"], 100 * seed_rows["change"], marker="o", markersize=3, color=colour,
                    label=run if seed_index == 0 else None)  # fmt: skip
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(1, color="grey", linestyle="--", linewidth=0.8, label="1% threshold")
    ax.set(xlabel="optimizer step", ylabel="general probe loss change vs base (%)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    fig.suptitle("General-skill monitor during training")
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
    parser.add_argument("figure", choices=("routing", "forgetting", "temperature", "claims", "probe"))
    parser.add_argument(
        "source",
        type=Path,
        nargs="+",
        help="routing_stats.json, table4.csv, claims.csv, adapter_model.safetensors (one per seed), or "
        "train_metrics.json (probe: one per run and seed, results/train/<run>/seed<k>/)",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    missing = [path for path in args.source if not path.is_file()]
    if missing:
        raise UserError(f"{missing[0]} not found; pass the {args.figure} figure's input (see --help)")
    if args.figure == "temperature":
        fig = temperature_plot(pd.concat([read_temperatures(path) for path in args.source], ignore_index=True))
    elif args.figure == "probe":
        fig = probe_plot(pd.concat([read_probe(path) for path in args.source], ignore_index=True))
    elif len(args.source) != 1:
        raise UserError(f"the {args.figure} figure takes one input file, got {len(args.source)}")
    elif args.figure == "routing":
        fig = routing_heatmap(json.loads(args.source[0].read_text(encoding="utf-8")))
    elif args.figure == "forgetting":
        fig = forgetting_bars(pd.read_csv(args.source[0]))
    else:
        fig = claims_plot(pd.read_csv(args.source[0]))
    save(fig, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
