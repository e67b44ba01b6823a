"""results/perf.csv and its figure from the layer, model and lm-eval benchmarks, checked against the targets.

    python -m medmoelora_eval.perf_report --layer results/perf/layer.csv --model results/perf/model.csv \
        --lm-eval results/perf/lm_eval.csv --top-k results/perf/top_k.csv --out results/perf.csv \
        --figure results/figures/perf.png --targets results/perf/targets.csv \
        [--table1-wall results/perf/table1_wall.csv] [--readme README.md]

``--readme`` rewrites the README's table of targets (between its ``perf-targets`` markers) from the
measured targets, so that the published figures are the ones this run measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from medmoelora import atomic
from medmoelora.config import METHODS
from medmoelora.errors import UserError, command_main
from medmoelora_eval.timing import each_from_text, pooled_median

# The speed targets the suite sets itself (README.md, Performance): (what, measured key, comparison, bound).
# A bound of None is a figure reported for what it shows (the machine's limit), not a target.
TARGETS: tuple[tuple[str, str, str, float | None], ...] = (
    ("lora: --model medmoelora / --model hf throughput (lm-eval loglikelihood, merged)", "lm:lora", ">=", 0.98),
    ("multi_lora: --model medmoelora / --model hf throughput (merged per expert group)", "lm:multi_lora", ">=", 0.98),
    ("med_moe_lora: --model medmoelora / --model hf throughput (soft routing)", "lm:med_moe_lora", ">=", 0.92),
    *(
        (f"{method}: measured / FLOP-predicted forward overhead (unmerged)", f"flops:{method}", "<=", 1.3)
        for method in METHODS
    ),
    ("med_moe_lora training step / lora's", "train:med_moe_lora", "<=", 1.2),
    ("fused layer vs per-expert loop at N = 8, whole layer (speed-up)", "layer:whole", ">=", 2.0),
    ("fused vs loop at N = 8, adapter path alone (speed-up)", "layer:adapter", ">=", 2.0),
    ("make table1 wall time after / before the performance work, table1.csv unchanged", "dag:table1", "<=", 0.5),
    ("top-k: dense / grouped path, fwd + bwd, best shape measured (> 1: a crossover exists)", "top_k:best", "", None),
    # The reference, PEFT's own LoRA: what one GEMM pair costs in the field's implementation
    ("fused layer / PEFT's LoRA at the same total rank, N = 8, whole layer (1: one GEMM pair)", "layer:peft", "", None),
    ("PEFT's LoRA: measured / FLOP-predicted forward overhead (unmerged)", "flops:peft_lora", "", None),
    ("PEFT's LoRA training step / lora's (ours)", "train:peft_lora", "", None),
    ("--model hf request phase / plain forward of its batches (the machine's limit)", "floor:hf", "", None),
    ("med_moe_lora request phase / plain forward of the base model's batches", "floor:med_moe_lora", "", None),
    # --model medmoelora scores with the LM head at the continuation's positions only; HFLM at every position.
    ("base model: scored-logits request loop / --model hf throughput (what that loop saves)", "lm:hf_scored", "", None),
    *(
        (
            f"{method}: --model medmoelora / the base in the same scored-logits loop (the adapter's own cost)",
            f"lm_scored:{method}",
            "",
            None,
        )
        for method in METHODS
    ),
)


def measured_values(
    layer: pd.DataFrame,
    model: pd.DataFrame,
    lm_eval: pd.DataFrame,
    table1_wall: pd.DataFrame | None = None,
    top_k: pd.DataFrame | None = None,
) -> dict[str, float]:
    at_eight = layer[layer.num_experts == 8]
    by_method, by_path = model.set_index("method"), lm_eval.set_index("path")
    values: dict[str, float] = {}
    for key, column in (
        ("layer:whole", "loop_over_fused"),
        ("layer:adapter", "adapter_loop_over_fused"),
        ("layer:peft", "fused_over_peft"),
    ):
        if f"{column}_each" in at_eight.columns:  # pooled over shapes and ranks, repetition by repetition
            values[key], values[f"{key}:low"], values[f"{key}:high"], _ = pooled_median(
                each_from_text(at_eight[f"{column}_each"])
            )
        elif column in at_eight.columns:  # files of revisions before the intervals: the median over shapes
            values[key] = at_eight[column].median()

    def with_interval(key: str, row: pd.Series, column: str) -> None:
        """The median and, where the benchmark wrote one (files of revisions before it have none), its interval."""
        values[key] = row[column]
        if f"{column}_low" in row.index:
            values[f"{key}:low"], values[f"{key}:high"] = row[f"{column}_low"], row[f"{column}_high"]

    for method, row in by_method.iterrows():
        with_interval(f"flops:{method}", row, "measured_over_predicted")
        with_interval(f"train:{method}", row, "train_step_over_lora")
    for path, row in by_path.iterrows():
        with_interval(f"lm:{path}", row, "throughput_over_hf")
        values[f"floor:{path}"] = by_path.loc[path, "throughput_over_floor"]
        if "throughput_over_hf_scored" in by_path.columns:  # absent from files of revisions before it
            values[f"lm_scored:{path}"] = by_path.loc[path, "throughput_over_hf_scored"]
    if top_k is not None:  # the shape where grouping gains most, with that shape's interval where written
        with_interval("top_k:best", top_k.loc[top_k.dense_over_grouped_train.idxmax()], "dense_over_grouped_train")
    if table1_wall is not None:
        # perf_table1: a faster table 1 counts only with the same table (same seeds, same documents)
        (wall,) = table1_wall.itertuples()
        values["dag:table1"] = wall.after_over_before
        values["dag:table1:unchanged"] = bool(wall.table1_unchanged)
    return values


def summarize(
    layer: pd.DataFrame,
    model: pd.DataFrame,
    lm_eval: pd.DataFrame,
    table1_wall: pd.DataFrame | None = None,
    top_k: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per target: the measured ratio, its interval where it has one, the bound, and the verdict
    ('' for a reported figure).

    The verdict rule: a median over paired repetitions comes with a distribution-free interval
    (`timing.median_interval`, 96% at 9 repetitions); the target is met when the whole interval is within the
    bound, missed when the whole interval is outside it, and "unresolved" when the interval straddles it (the
    run cannot tell). The layer's figures at N = 8 pool its shapes and ranks repetition by repetition
    (`timing.pooled_median`: per repetition the median over shapes, then their median and its interval). A
    figure without an interval (make table1's one pair of runs, files written before the intervals) is
    judged on its value. Without ``table1_wall`` (perf_table1's CSV) or ``top_k`` (perf_layer's) their rows
    are left out.
    """
    measured = measured_values(layer, model, lm_eval, table1_wall, top_k)
    rows = []
    for what, key, comparison, bound in TARGETS:
        if key not in measured:
            continue
        value = float(measured[key])
        low, high = measured.get(f"{key}:low"), measured.get(f"{key}:high")
        interval = "" if low is None else f"[{low:.3f}, {high:.3f}]"
        row = {"target": what, "measured": round(value, 3), "interval": interval, "bound": "", "met": ""}
        if bound is not None:
            met = verdict(value, low, high, comparison, bound)
            if met is True and not measured.get(f"{key}:unchanged", True):
                met = False
            row.update(bound=f"{comparison} {bound}", met=met)
        rows.append(row)
    return pd.DataFrame(rows)


UNRESOLVED = "unresolved"  # the interval straddles the bound


def verdict(value: float, low: float | None, high: float | None, comparison: str, bound: float) -> bool | str:
    """True (met), False (missed) or UNRESOLVED: on the interval where there is one, else on the value."""

    def within(x: float) -> bool:
        return x >= bound if comparison == ">=" else x <= bound

    if low is None or high is None:
        return within(value)
    if within(low) and within(high):
        return True
    if not within(low) and not within(high):
        return False
    return UNRESOLVED


def figure(layer: pd.DataFrame, model: pd.DataFrame, lm_eval: pd.DataFrame, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for (d_in, d_out), group in layer[layer["rank"] == 16].groupby(["d_in", "d_out"]):
        left.errorbar(
            group.num_experts,
            group.loop_over_fused,
            yerr=_error_bars(group, "loop_over_fused"),
            marker="o",
            capsize=2,
            label=f"loop / fused, {d_in}->{d_out}",
        )
        left.errorbar(
            group.num_experts,
            group.fused_over_peft,
            yerr=_error_bars(group, "fused_over_peft"),
            marker="x",
            linestyle="--",
            capsize=2,
            label=f"fused / PEFT LoRA, {d_in}->{d_out}",
        )
    left.axhline(2.0, color="grey", linewidth=0.8, linestyle=":")
    left.set(
        xscale="log",
        xlabel="experts N (rank 16 each)",
        ylabel="time ratio (fwd + bwd, 2048 tokens)",
        title=f"Layer: fused vs per-expert loop vs PEFT{_bars_caption(layer)}",
    )
    left.set_xticks(sorted(layer.num_experts.unique()), labels=[str(n) for n in sorted(layer.num_experts.unique())])
    left.legend(fontsize=7)
    positions = range(len(model))
    by_path = lm_eval.set_index("path").reindex(model.method)  # same order as the bars
    train_error = _error_bars(model, "train_step_over_lora")
    throughput_error = _error_bars(by_path, "throughput_over_hf")
    right.bar(
        [p - 0.2 for p in positions],
        model.train_step_over_lora,
        width=0.4,
        yerr=train_error,
        capsize=3,
        label="train step / LoRA's",
    )
    right.bar(
        [p + 0.2 for p in positions],
        by_path.throughput_over_hf,
        width=0.4,
        yerr=throughput_error,
        capsize=3,
        label="lm-eval throughput / --model hf",
    )
    right.axhline(1.2, color="C0", linewidth=0.8, linestyle=":")
    right.axhline(0.92, color="C1", linewidth=0.8, linestyle=":")
    right.axhline(0.98, color="C1", linewidth=0.8, linestyle="--")
    right.set_xticks(list(positions), labels=list(model.method), rotation=20)
    right.set(ylabel="ratio", title="End to end (bars: 96% interval; dotted/dashed: targets)")
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def _bars_caption(table: pd.DataFrame) -> str:
    """`` (bars: 96% interval)`` from the table's ``interval_coverage``; empty where it has none."""
    if "interval_coverage" not in table.columns or table["interval_coverage"].isna().all():
        return ""
    return f" (bars: {table['interval_coverage'].min():.0%} interval)"


def _error_bars(table: pd.DataFrame, column: str) -> list[list[float]] | None:
    """matplotlib's yerr (distances below and above) from ``column``'s _low / _high interval; None without one."""
    if f"{column}_low" not in table.columns:
        return None
    below = (table[column] - table[f"{column}_low"]).fillna(0.0).clip(lower=0.0)
    above = (table[f"{column}_high"] - table[column]).fillna(0.0).clip(lower=0.0)
    return [below.tolist(), above.tolist()]


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--lm-eval", type=Path, required=True)
    parser.add_argument("--top-k", type=Path, help="perf_layer's top-k table, added to --out")
    parser.add_argument("--out", type=Path, required=True, help="results/perf.csv: every measured row")
    parser.add_argument("--figure", type=Path, required=True)
    parser.add_argument("--targets", type=Path, help="CSV of the targets, measured against their bounds")
    parser.add_argument("--table1-wall", type=Path, help="perf_table1's CSV: make table1 before / after")
    parser.add_argument("--readme", type=Path, help="a README whose perf-targets table to rewrite from the targets")
    args = parser.parse_args(argv)
    for path in (args.layer, args.model, args.lm_eval):
        if not path.is_file():
            raise UserError(f"{path} not found; run python -m medmoelora_eval.perf_layer / perf_model first")
    layer, model, lm_eval = pd.read_csv(args.layer), pd.read_csv(args.model), pd.read_csv(args.lm_eval)
    parts = [layer.assign(benchmark="layer"), model.assign(benchmark="model"), lm_eval.assign(benchmark="lm_eval")]
    top_k = None
    if args.top_k:
        if not args.top_k.is_file():
            raise UserError(f"{args.top_k} not found; run python -m medmoelora_eval.perf_layer --top-k-out first")
        top_k = pd.read_csv(args.top_k)
        parts.append(top_k.assign(benchmark="top_k"))
    table1_wall = None
    if args.table1_wall:
        if not args.table1_wall.is_file():
            raise UserError(f"{args.table1_wall} not found; run python -m medmoelora_eval.perf_table1 first")
        table1_wall = pd.read_csv(args.table1_wall)
        parts.append(table1_wall.assign(benchmark="table1_wall"))
    atomic.write_text(args.out, pd.concat(parts, ignore_index=True).to_csv(index=False, float_format="%.4f"))
    figure(layer, model, lm_eval, args.figure)
    targets = summarize(layer, model, lm_eval, table1_wall, top_k)
    if args.readme:
        atomic.write_text(args.readme, readme_with_targets(args.readme.read_text(encoding="utf-8"), targets))
    if args.targets:
        atomic.write_text(args.targets, targets.to_csv(index=False))
    print(targets.to_markdown(index=False))
    return 0


START, END = "<!-- perf-targets:start (perf_report --readme writes this table) -->", "<!-- perf-targets:end -->"


def readme_with_targets(readme: str, targets: pd.DataFrame) -> str:
    """``readme`` with the table between the perf-targets markers replaced by ``targets``."""
    if START not in readme or END not in readme:
        raise UserError(f"the README has no perf-targets markers ({START} ... {END}) to write the table between")
    shown = targets.assign(met=[{True: "met", False: "missed"}.get(met, met) for met in targets.met])
    table = shown.to_markdown(index=False, floatfmt=".3f")
    head, rest = readme.split(START, 1)
    return f"{head}{START}\n{table}\n{END}{rest.split(END, 1)[1]}"


if __name__ == "__main__":
    sys.exit(main())
