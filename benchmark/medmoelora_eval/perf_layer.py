"""Layer microbenchmark: the fused MoE-LoRA layer against the anchors' per-expert loop and PEFT's LoRA.

Forward + backward of one adapted linear layer (base included, input requiring grad as inside a model),
fp32, 2048 tokens, at SmolLM2-135M's shapes. The implementations and the frozen base layer alone are
timed side by side in each repetition (interleaved, `timing.paired`); each reported ratio is the median over
repetitions of the paired ratio, with its distribution-free interval (`timing.median_interval`: 96% at the
default 9 repetitions), for the whole layer and for the adapter path alone (layer minus base).

With ``--top-k-out``, also top-k routing's two paths side by side: the dense fused matmul pair (every
expert's rank slots computed, the unchosen ones zeroed) and tokens grouped by expert (only the chosen
experts computed), forward alone (evaluation) and forward + backward (training), across N, k and rank.

    python -m medmoelora_eval.perf_layer --out results/perf/layer.csv --top-k-out results/perf/top_k.csv
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from medmoelora import atomic
from medmoelora.errors import command_main
from medmoelora.layer import MoELoRALinear, RoutingContext
from medmoelora_eval.timing import (
    each_from_text,
    median_interval,
    paired,
    paired_ratios,
    pooled_median,
    require_counts,
)

SHAPES = ((576, 576), (576, 1536), (1536, 576))  # SmolLM2-135M: attention, MLP up/gate, MLP down
NUM_EXPERTS = (1, 2, 4, 8, 16)
RANKS = (8, 16, 32)
TOKENS = 2048


class PerExpertLoop(nn.Module):
    """The anchors' way (MOELoRA, LoRAMoE, MoLA, MixLoRA): one nn.Linear pair per expert, a Python loop."""

    def __init__(self, base: nn.Linear, num_experts: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleList(nn.Linear(base.in_features, rank, bias=False) for _ in range(num_experts))
        self.lora_B = nn.ModuleList(nn.Linear(rank, base.out_features, bias=False) for _ in range(num_experts))
        self.router = nn.Linear(base.in_features, num_experts, bias=False)
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # (B, T, d_out)
        gates = torch.softmax(self.router(x), dim=-1)  # (B, T, N)
        for i, (lora_A, lora_B) in enumerate(zip(self.lora_A, self.lora_B, strict=True)):
            result = result + gates[..., i : i + 1] * self.scaling * lora_B(lora_A(x))  # (B, T, d_out)
        return result


def peft_lora(base: nn.Linear, rank: int, alpha: float) -> nn.Module:
    """PEFT's own LoRA layer around ``base`` (the reference plain LoRA)."""
    from peft import LoraConfig, get_peft_model

    holder = nn.Sequential()
    holder.add_module("proj", base)
    model = get_peft_model(holder, LoraConfig(r=rank, lora_alpha=alpha, target_modules=["proj"]))
    return model.base_model.model.proj


def build(kind: str, d_in: int, d_out: int, num_experts: int, rank: int) -> nn.Module:
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out, bias=False).requires_grad_(False)
    alpha = 2.0 * rank
    if kind == "base":  # the frozen layer alone: the part every implementation shares
        return base
    if kind == "fused":
        routing = "none" if num_experts == 1 else "soft"
        layer = MoELoRALinear(base, [rank] * num_experts, [alpha] * num_experts, RoutingContext(), routing=routing)
    elif kind == "loop":
        layer = PerExpertLoop(base, num_experts, rank, alpha)
    else:  # PEFT LoRA at the same total rank
        layer = peft_lora(base, num_experts * rank, 2.0 * num_experts * rank)
    for parameter in layer.parameters():
        nn.init.normal_(parameter, std=0.02) if parameter.requires_grad else None
    return layer


def step_timer(layer: nn.Module, d_in: int, d_out: int) -> Callable[[], float]:
    x = torch.randn(1, TOKENS, d_in, requires_grad=True)
    grad = torch.randn(1, TOKENS, d_out)

    def step() -> float:
        started = time.perf_counter()
        layer(x).backward(grad)
        elapsed = time.perf_counter() - started
        layer.zero_grad(set_to_none=True)
        x.grad = None
        return elapsed

    return step


def adapter_ratios(samples: dict[str, list[float]], a: str, b: str) -> list[float]:
    """The adapter path alone: (time(a) - time(base)) / (time(b) - time(base)) of each repetition."""
    pairs = zip(samples[a], samples[b], samples["base"], strict=True)
    return [(x - base) / max(y - base, 1e-9) for x, y, base in pairs]


def ratio_columns(name: str, ratios: list[float]) -> dict[str, float | str]:
    """``name``: the median of the per-repetition ``ratios``; ``name``_low / _high: its interval
    (`timing.median_interval`), whose coverage (``interval_coverage``) depends on the repetitions alone;
    ``name``_each: the ratios themselves, space-separated, so that perf_report can pool repetitions across
    shapes."""
    low, high, coverage = median_interval(ratios)
    return {
        name: statistics.median(ratios),
        f"{name}_low": low,
        f"{name}_high": high,
        f"{name}_each": " ".join(f"{ratio:.4f}" for ratio in ratios),
        "interval_coverage": coverage,
    }


def run(repeats: int, warmup: int, experts: tuple[int, ...] = NUM_EXPERTS) -> pd.DataFrame:
    rows = []
    for d_in, d_out in SHAPES:
        for num_experts in experts:
            for rank in RANKS:
                timers = {
                    kind: step_timer(build(kind, d_in, d_out, num_experts, rank), d_in, d_out)
                    for kind in ("base", "fused", "loop", "peft")
                }
                samples = paired(timers, repeats, warmup)
                rows.append(
                    {
                        "d_in": d_in,
                        "d_out": d_out,
                        "num_experts": num_experts,
                        "rank": rank,
                        "total_rank": num_experts * rank,
                        "fused_ms": 1e3 * statistics.median(samples["fused"]),
                        "loop_ms": 1e3 * statistics.median(samples["loop"]),
                        "peft_ms": 1e3 * statistics.median(samples["peft"]),
                        "base_ms": 1e3 * statistics.median(samples["base"]),
                        **ratio_columns("loop_over_fused", paired_ratios(samples, "loop", "fused")),
                        **ratio_columns("adapter_loop_over_fused", adapter_ratios(samples, "loop", "fused")),
                        **ratio_columns("fused_over_peft", paired_ratios(samples, "fused", "peft")),
                        "repeats": repeats,
                    }
                )
                print(
                    f"{d_in}->{d_out} N={num_experts:2d} r={rank:2d}: fused {rows[-1]['fused_ms']:7.2f} ms, "
                    f"loop {rows[-1]['loop_ms']:7.2f} ms ({rows[-1]['loop_over_fused']:.2f}x; adapter path "
                    f"{rows[-1]['adapter_loop_over_fused']:.2f}x), "
                    f"peft {rows[-1]['peft_ms']:7.2f} ms",
                    flush=True,
                )
    return pd.DataFrame(rows)


# Top-k: (N, k) pairs and ranks, at the MLP up-projection's shape (the most common adapted shape)
TOP_K_SHAPE = (576, 1536)
TOP_K_ROUTING = ((4, 1), (4, 2), (8, 1), (8, 2), (16, 1), (16, 2))
TOP_K_RANKS = (8, 32)


def top_k_layers(num_experts: int, top_k: int, rank: int) -> dict[str, MoELoRALinear]:
    """The same top-k layer (same weights) twice: on the dense fused path and on the grouped one."""
    layers = {}
    for path in ("dense", "grouped"):
        torch.manual_seed(0)
        base = nn.Linear(*TOP_K_SHAPE, bias=False).requires_grad_(False)
        experts = [rank] * num_experts
        layer = MoELoRALinear(base, experts, [2.0 * rank] * num_experts, RoutingContext(), top_k=top_k)
        for parameter in layer.adapter_params().values():
            nn.init.normal_(parameter, std=0.02) if parameter.requires_grad else None
        layer.use_grouped_top_k(path == "grouped")
        layers[path] = layer
    return layers


def forward_timer(layer: nn.Module, d_in: int) -> Callable[[], float]:
    x = torch.randn(1, TOKENS, d_in)

    @torch.no_grad()
    def step() -> float:
        started = time.perf_counter()
        layer(x)
        return time.perf_counter() - started

    return step


def run_top_k(repeats: int, warmup: int) -> pd.DataFrame:
    rows = []
    d_in, d_out = TOP_K_SHAPE
    for num_experts, top_k in TOP_K_ROUTING:
        for rank in TOP_K_RANKS:
            layers = top_k_layers(num_experts, top_k, rank)
            timers = {
                **{f"{path}_forward": forward_timer(layer, d_in) for path, layer in layers.items()},
                **{f"{path}_train": step_timer(layer, d_in, d_out) for path, layer in layers.items()},
            }
            samples = paired(timers, repeats, warmup)
            row = {"d_in": d_in, "d_out": d_out, "num_experts": num_experts, "top_k": top_k, "rank": rank}
            for phase in ("forward", "train"):
                row[f"dense_{phase}_ms"] = 1e3 * statistics.median(samples[f"dense_{phase}"])
                row[f"grouped_{phase}_ms"] = 1e3 * statistics.median(samples[f"grouped_{phase}"])
                ratios = paired_ratios(samples, f"dense_{phase}", f"grouped_{phase}")
                row.update(ratio_columns(f"dense_over_grouped_{phase}", ratios))
            row["repeats"] = repeats
            rows.append(row)
            print(
                f"top-{top_k} of N={num_experts:2d} r={rank:2d}: dense / grouped forward "
                f"{row['dense_over_grouped_forward']:.2f}x, train {row['dense_over_grouped_train']:.2f}x",
                flush=True,
            )
    return pd.DataFrame(rows)


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument(
        "--repeats", type=int, default=9, help="paired repetitions (median reported, with its 96%% interval at 9)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top-k-out", type=Path, help="CSV to write: top-k's dense and grouped paths")
    parser.add_argument("--experts", type=int, nargs="+", help=f"expert counts N to time (default {NUM_EXPERTS})")
    args = parser.parse_args(argv)
    require_counts(("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0))
    if args.top_k_out:
        atomic.write_text(args.top_k_out, run_top_k(args.repeats, args.warmup).to_csv(index=False, float_format="%.4f"))
    table = run(args.repeats, args.warmup, tuple(args.experts or NUM_EXPERTS))
    atomic.write_text(args.out, table.to_csv(index=False, float_format="%.4f"))
    at_eight = table[table.num_experts == 8]
    if len(at_eight):
        whole = pooled_median(each_from_text(at_eight.loop_over_fused_each))
        adapter = pooled_median(each_from_text(at_eight.adapter_loop_over_fused_each))
        print(
            f"fused vs loop at N = 8, pooled over shapes and ranks: whole layer {whole[0]:.2f}x "
            f"[{whole[1]:.2f}, {whole[2]:.2f}], adapter path {adapter[0]:.2f}x [{adapter[1]:.2f}, {adapter[2]:.2f}] "
            f"({whole[3]:.0%} intervals)"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
