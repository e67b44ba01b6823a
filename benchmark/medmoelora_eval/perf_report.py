"""results/perf.csv and its figure from the layer and model benchmarks, checked against the targets.

    python -m medmoelora_eval.perf_report --layer results/perf/layer.csv --model results/perf/model.csv \
        --out results/perf.csv --figure results/figures/perf.png
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
from medmoelora.errors import UserError, command_main

# The speed targets the suite sets itself (README.md, Performance): (what, measured column, comparison, bound)
TARGETS = (
    ("fused layer vs per-expert loop at N = 8 (speed-up)", "loop_over_fused_n8", ">=", 2.0),
    ("fused vs loop at N = 8, adapter path alone (speed-up)", "adapter_loop_over_fused_n8", ">=", 2.0),
    ("med_moe_lora training step / lora's", "med_moe_lora_train_over_lora", "<=", 1.3),
    ("med_moe_lora evaluation throughput / base model's", "med_moe_lora_eval_over_base", ">=", 0.85),
    ("med_moe_lora measured / FLOP-predicted overhead", "med_moe_lora_measured_over_predicted", "<=", 1.5),
)


def summarize(layer: pd.DataFrame, model: pd.DataFrame) -> pd.DataFrame:
    """One row per target: the measured ratio, the bound, and whether it is met."""
    med = model.set_index("method").loc["med_moe_lora"]
    measured = {
        "loop_over_fused_n8": layer.loc[layer.num_experts == 8, "loop_over_fused"].median(),
        "adapter_loop_over_fused_n8": layer.loc[layer.num_experts == 8, "adapter_loop_over_fused"].median(),
        "med_moe_lora_train_over_lora": med["train_step_over_lora"],
        "med_moe_lora_eval_over_base": med["eval_throughput_over_base"],
        "med_moe_lora_measured_over_predicted": med["measured_over_predicted"],
    }
    rows = []
    for what, key, comparison, bound in TARGETS:
        value = float(measured[key])
        met = value >= bound if comparison == ">=" else value <= bound
        rows.append({"target": what, "measured": round(value, 3), "bound": f"{comparison} {bound}", "met": met})
    return pd.DataFrame(rows)


def figure(layer: pd.DataFrame, model: pd.DataFrame, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for (d_in, d_out), group in layer[layer["rank"] == 16].groupby(["d_in", "d_out"]):
        left.plot(group.num_experts, group.loop_over_fused, marker="o", label=f"loop / fused, {d_in}->{d_out}")
        left.plot(
            group.num_experts,
            group.fused_over_peft,
            marker="x",
            linestyle="--",
            label=f"fused / PEFT LoRA, {d_in}->{d_out}",
        )
    left.axhline(2.0, color="grey", linewidth=0.8, linestyle=":")
    left.set(
        xscale="log",
        xlabel="experts N (rank 16 each)",
        ylabel="time ratio (fwd + bwd, 2048 tokens)",
        title="Layer: fused vs per-expert loop vs PEFT",
    )
    left.set_xticks(sorted(layer.num_experts.unique()), labels=[str(n) for n in sorted(layer.num_experts.unique())])
    left.legend(fontsize=7)
    positions = range(len(model))
    right.bar([p - 0.2 for p in positions], model.train_step_over_lora, width=0.4, label="train step / LoRA's")
    right.bar(
        [p + 0.2 for p in positions], model.eval_throughput_over_base, width=0.4, label="eval throughput / base's"
    )
    right.axhline(1.3, color="C0", linewidth=0.8, linestyle=":")
    right.axhline(0.85, color="C1", linewidth=0.8, linestyle=":")
    right.set_xticks(list(positions), labels=list(model.method))
    right.set(ylabel="ratio", title="End to end (dotted: targets)")
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="results/perf.csv: every measured row")
    parser.add_argument("--figure", type=Path, required=True)
    parser.add_argument("--targets", type=Path, help="CSV of the targets, measured against their bounds")
    args = parser.parse_args(argv)
    for path in (args.layer, args.model):
        if not path.is_file():
            raise UserError(f"{path} not found; run python -m medmoelora_eval.perf_layer / perf_model first")
    layer, model = pd.read_csv(args.layer), pd.read_csv(args.model)
    combined = pd.concat([layer.assign(benchmark="layer"), model.assign(benchmark="model")], ignore_index=True)
    atomic.write_text(args.out, combined.to_csv(index=False, float_format="%.4f"))
    figure(layer, model, args.figure)
    targets = summarize(layer, model)
    if args.targets:
        atomic.write_text(args.targets, targets.to_csv(index=False))
    print(targets.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
