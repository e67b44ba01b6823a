"""results/report.md: the claims first, then every table with its intervals, the mechanism analyses (with
``--mechanisms``), training health, the precision of this configuration, and the figures.

    python -m medmoelora_eval.report --tables results/table*.csv --claims results/claims.csv \
        --figures results/figures/*.png --reported results/paper/reported.csv --runs lora med_moe_lora ... \
        --seeds 0 1 2 --model smollm2-135m --out results/report.md [--paper-base-model]

Like is compared with like: the paper's absolute figures (``reported.csv``: ``table,row,column,value,note``
in the units of our tables) are set beside ours only with ``--paper-base-model``, i.e. when the base
model is the paper's; on any other model they would differ for that reason alone, and the report
compares effects instead (the claims table sets the paper's effect beside our paired difference).

Training health, per trained run: the held-out loss per training task at the end against the base
model's (``train_metrics.json`` ``heldout``; "not measured" where training did not record it), the
largest expert share per layer (``routing_stats.json``), and the router temperatures the adapter ends
with (``adapter_model.safetensors``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medmoelora import atomic
from medmoelora.errors import UserError, command_main
from medmoelora.routing_stats import COLLAPSE_THRESHOLD
from medmoelora_eval.claims import expert_shares
from medmoelora_eval.claims_report import render_claims
from medmoelora_eval.mechanisms.report import mechanisms_section
from medmoelora_eval.precision import expected_precision
from medmoelora_eval.samples import load_samples
from medmoelora_eval.stats import INTERVAL_METHOD, RESAMPLES, SEED
from medmoelora_eval.tables import HIGH, LOW, decimals, markdown_cells, score_labels

TITLES = {
    "table1": (
        "Table 1: main results (accuracy in percent, its change in points against the base model; gold "
        "log-prob in nats and Brier score averaged over the medical tasks; general LM in bits per byte, lower "
        "is better)"
    ),
    "table2": "Table 2: expert allocation across layers",
    "table3": "Table 3: router temperature tau",
    "table4": "Table 4: forgetting of general skills, on data no method trains on",
    "table5": "Table 5: parameters and training cost (timings depend on the machine)",
}


def comparison(table: pd.DataFrame, reported: pd.DataFrame) -> pd.DataFrame:
    """The paper's cells of one table beside ours (with our interval where the cell has one)."""
    key = table.columns[0]
    ours = table.set_index(key)
    with_interval = set(score_labels(table))
    rows = []
    for item in reported.itertuples(index=False):
        present = item.row in ours.index and item.column in ours.columns
        scale, unit = (1e6, " (M)") if "params" in item.column else (1.0, "")
        value = float(ours.at[item.row, item.column]) / scale if present else None
        shown, inside = "" if value is None else f"{value:.2f}", ""
        if present and item.column in with_interval:
            lo, hi = (float(ours.at[item.row, item.column + suffix]) for suffix in (LOW, HIGH))
            shown += f" [{lo:.2f}, {hi:.2f}]"
            inside = "yes" if lo <= item.value <= hi else "no"
        rows.append(
            {
                "row": item.row,
                "column": item.column + unit,
                "ours [95% interval]": shown,
                "paper": f"{item.value / scale:.2f}",
                "difference": "" if value is None else f"{value - item.value / scale:+.2f}",
                "paper inside our interval": inside,
                "note": item.note,
            }
        )
    return pd.DataFrame.from_records(rows)


def header(model: str, seeds: Sequence[int], documents: dict[str, int]) -> list[str]:
    counts = ", ".join(f"{task} {count}" for task, count in documents.items())
    return [
        "# Med-MoE-LoRA reproduction report",
        "",
        f"Base model `{model}`; training seeds {', '.join(map(str, seeds))} ({len(seeds)} seed"
        f"{'s' if len(seeds) != 1 else ''}: every trained run is trained and evaluated once per seed, the "
        "untouched base model once). Documents per task, the same for every run: "
        f"{counts}. The paper (arXiv 2601.07935) used Llama-3-8B.",
        "",
    ]


def tables_section(tables: Sequence[Path], reported: pd.DataFrame, paper_base_model: bool, model: str) -> list[str]:
    lines = [
        "## Tables",
        "",
        "Every score is the estimate over all seeds and documents with its 95% interval in brackets, "
        "`31.2 [27.0, 35.5]`; a change is the run minus the base model on the same documents, with the "
        "interval of that paired difference. The CSVs hold the same numbers, the bounds in `_lo` / `_hi` "
        f"columns. {INTERVAL_METHOD.format(resamples=RESAMPLES, seed=SEED)} A score of 0 or 100% gets an "
        "interval of zero width (every resample of its documents scores the same): read it with its document "
        "count (section Precision).",
        "",
    ]
    if not paper_base_model:
        lines += [
            f"The base model here is `{model}`, not the paper's Llama-3-8B, so the paper's absolute figures are "
            "not set beside ours: they would differ for that reason alone. The paper's effects stand beside "
            "our paired differences in the Claims section (column `paper`).",
            "",
        ]
    for path in tables:
        name = path.stem
        table = pd.read_csv(path, converters={0: str})  # row labels stay text ("1.0" for tau)
        lines += [
            f"### {TITLES.get(name, name)}",
            "",
            markdown_cells(table).to_markdown(index=False, disable_numparse=True),
            "",
        ]
        paper = reported[reported["table"] == name]
        if paper_base_model and len(paper):
            lines += [
                "Against the paper (same base model):",
                "",
                comparison(table, paper).to_markdown(index=False, disable_numparse=True),
                "",
            ]
    return lines


# ---- training health -----------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"{path}: {error.strerror}; train that run first") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not JSON ({error.msg}); re-run that training") from None


def heldout_rows(train_dir: Path, runs: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    """Per run and training task: the base model's held-out loss, the run's at the end (mean over seeds),
    and in how many seeds it ended below the base model's; "not measured" where no seed recorded it."""
    rows = []
    for run in runs:
        per_seed = [_read_json(train_dir / run / f"seed{seed}" / "train_metrics.json").get("heldout") for seed in seeds]
        if not all(per_seed):
            rows.append(
                {"run": run, "task": "", "base model": "not measured", "end": "", "change": "", "below base": ""}
            )
            continue
        for task in per_seed[0]:
            start = float(np.mean([seed[task]["loss_start"] for seed in per_seed]))
            ends = [seed[task]["loss_end"] for seed in per_seed]
            below = sum(seed[task]["loss_end"] < seed[task]["loss_start"] for seed in per_seed)
            rows.append(
                {
                    "run": run,
                    "task": task,
                    "base model": f"{start:.3f}",
                    "end": f"{np.mean(ends):.3f}",
                    "change": f"{np.mean(ends) - start:+.3f}",
                    "below base": f"{below}/{len(per_seed)} seeds",
                }
            )
    return pd.DataFrame.from_records(rows)


def expert_share_rows(train_dir: Path, runs: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    """Layers x soft-routed runs: the largest share of the routing weight any one expert takes in any of
    the layer's modules, over the run's seeds."""
    columns = {}
    for run in runs:
        shares = [expert_shares(_read_json(train_dir / run / f"seed{seed}" / "routing_stats.json")) for seed in seeds]
        merged = pd.concat(shares, ignore_index=True)
        if not merged.empty:
            columns[run] = merged.groupby("layer")["share"].max()
    if not columns:
        return pd.DataFrame()
    table = pd.DataFrame(columns).sort_index()
    shown = table.map(
        lambda share: "" if pd.isna(share) else f"{share:.2f}" + (" !" if share > COLLAPSE_THRESHOLD else "")
    )
    return shown.rename_axis("layer").reset_index()


def base_share_rows(train_dir: Path, runs: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    """Layers x runs with base experts: the base experts' share of the routing weight of general tokens
    and of medical tokens (routing_stats.json ``base_expert_share``), each the mean over seeds."""
    columns = {}
    for run in runs:
        shares = [
            _read_json(train_dir / run / f"seed{seed}" / "routing_stats.json").get("base_expert_share")
            for seed in seeds
        ]
        if not all(shares):
            continue
        layers = {
            int(layer): (
                float(np.mean([seed["layers"][layer]["general"] for seed in shares])),
                float(np.mean([seed["layers"][layer]["medical"] for seed in shares])),
            )
            for layer in shares[0]["layers"]
        }
        columns[f"{run} (general / medical)"] = {layer: f"{g:.2f} / {m:.2f}" for layer, (g, m) in layers.items()}
    if not columns:
        return pd.DataFrame()
    return pd.DataFrame(columns).sort_index().fillna("").rename_axis("layer").reset_index()


def temperature_rows(train_dir: Path, runs: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    """Per soft-routed run: the routers' tau at the end (mean, min, max over routers and seeds)."""
    from medmoelora_eval.temperatures import read_temperatures

    rows = []
    for run in runs:
        try:
            taus = pd.concat(
                [read_temperatures(train_dir / run / f"seed{seed}" / "adapter_model.safetensors") for seed in seeds]
            )["tau"]
        except UserError:  # LoRA and Multi-LoRA have no router
            continue
        rows.append(
            {"run": run, "routers": len(taus) // len(seeds), "tau mean": f"{taus.mean():.3f}",
             "min": f"{taus.min():.3f}", "max": f"{taus.max():.3f}"}
        )  # fmt: skip
    return pd.DataFrame.from_records(rows)


def health_section(train_dir: Path, runs: Sequence[str], seeds: Sequence[int]) -> list[str]:
    lines = [
        "## Training health",
        "",
        "### Held-out loss against the base model",
        "",
        "Mean loss per answer token on each training task's held-out records (never trained on), for the "
        "base model (the adapters off) and at the end of training; a run that learned ends below the base "
        "model.",
        "",
        heldout_rows(train_dir, runs, seeds).to_markdown(index=False, disable_numparse=True),
        "",
        "### Largest expert share per layer",
        "",
        f"The largest mean gate any one expert takes in any module of the layer, over seeds; `!` marks a share "
        f"above {COLLAPSE_THRESHOLD:.0%}, the paper's sign of expert collapse. Runs without soft routing "
        "(LoRA, Multi-LoRA) have none.",
        "",
    ]
    shares = expert_share_rows(train_dir, runs, seeds)
    lines += [shares.to_markdown(index=False, disable_numparse=True) if not shares.empty else "No soft-routed run.", ""]
    base = base_share_rows(train_dir, runs, seeds)
    lines += [
        "### Base experts: general vs medical tokens",
        "",
        "The share of the routing weight that the base experts get from general-domain tokens and from "
        "medical tokens, per layer (mean over seeds): knowledge preservation works where the general share "
        "is the larger.",
        "",
        base.to_markdown(index=False, disable_numparse=True)
        if not base.empty
        else "Not measured: no run's routing_stats.json holds `base_expert_share`.",
        "",
    ]
    taus = temperature_rows(train_dir, runs, seeds)
    lines += [
        "### Router temperature",
        "",
        "tau = exp(log_temperature) of every router at the end of training (fixed-tau runs keep their value; a "
        "learnable tau starts at 1).",
        "",
        taus.to_markdown(index=False, disable_numparse=True) if not taus.empty else "No run with a router.",
        "",
    ]
    return lines


# ---- precision ------------------------------------------------------------------------------------------------
def precision_section(documents: dict[str, int], table1: pd.DataFrame | None) -> list[str]:
    lines = [
        "## Precision of this configuration",
        "",
        "Accuracy at these document counts, before looking at any result: the half-width of a 95% interval "
        "on one run's score and the smallest difference between two runs that a test at 5% finds with 80% "
        "power, in points, from the binomial variance at p = 0.5 (`python -m medmoelora_eval.precision`). "
        "Pairing on the same documents narrows differences by as much as two runs agree; several seeds add "
        "their spread. The claims table gives each comparison's own detectable effect.",
        "",
        expected_precision(documents).to_markdown(index=False, disable_numparse=True),
        "",
    ]
    if table1 is not None:
        observed = {
            label: float(((table1[label + HIGH] - table1[label + LOW]) / 2).median())
            for label in score_labels(table1)
            if not label.endswith(" change")
        }
        shown = ", ".join(f"{label} {width:.{decimals(label)}f}" for label, width in observed.items())
        lines += [f"Measured median half-widths in table 1 (over its rows): {shown}.", ""]
    return lines


def document_counts(eval_dir: Path, base: str) -> dict[str, int]:
    """Documents per task file, from the base model's per-document results."""
    samples = load_samples(eval_dir, [base])
    return {str(task): int(count) for task, count in samples.groupby("file", sort=False).size().items()}


def render(args: argparse.Namespace, reported: pd.DataFrame) -> str:
    documents = document_counts(args.eval_dir, args.base)
    text_columns = ("row", "comparison", "scope", "metric", "method", "n_seeds", "about", "verdict", "note")
    claims = pd.read_csv(args.claims, dtype=dict.fromkeys(text_columns, str))
    if "row" not in claims:
        raise UserError(f"--claims {args.claims}: no 'row' column (an older claims.csv); re-run the claims rule")
    table1 = next((pd.read_csv(path, converters={0: str}) for path in args.tables if path.stem == "table1"), None)
    lines = header(args.model, args.seeds, documents)
    lines += [render_claims(claims)]
    lines += tables_section(args.tables, reported, args.paper_base_model, args.model)
    if args.mechanisms is not None:  # results/mechanisms: the expert ablation, routing by depth, subspaces
        lines += mechanisms_section(args.mechanisms, args.out.parent)
    lines += health_section(args.train_dir, args.runs, args.seeds)
    lines += precision_section(documents, table1)
    lines += ["## Figures", ""]
    out = args.out
    for figure in args.figures:
        relative = Path(*figure.parts[len(out.parent.parts) :]) if figure.is_relative_to(out.parent) else figure
        lines += [f"![{figure.stem}]({relative.as_posix()})", ""]
    return "\n".join(lines)


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medmoelora_eval.report", description=__doc__.split("\n")[0])
    parser.add_argument("--tables", type=Path, nargs="+", required=True)
    parser.add_argument("--claims", type=Path, required=True, help="results/claims.csv")
    parser.add_argument("--figures", type=Path, nargs="*", default=[])
    parser.add_argument("--reported", type=Path, required=True, help="the paper's figures (results/paper)")
    parser.add_argument("--runs", nargs="+", required=True, help="trained runs for the training-health section")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (seed<k>/)")
    parser.add_argument("--base", default="base", help="the base model's run under --eval-dir")
    parser.add_argument("--model", required=True, help="the base model, as the config names it")
    parser.add_argument(
        "--paper-base-model",
        action="store_true",
        help="the base model is the paper's: set our absolute figures beside the paper's",
    )
    parser.add_argument("--mechanisms", type=Path, help="results/mechanisms: adds the Mechanisms section")
    parser.add_argument("--eval-dir", type=Path, default=Path("results/eval"))
    parser.add_argument("--train-dir", type=Path, default=Path("results/train"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    for path in [*args.tables, args.claims, *args.figures, args.reported]:
        if not path.is_file():
            raise UserError(f"{path} not found; build it first (`snakemake all` makes every input of the report)")
    reported = pd.read_csv(args.reported, comment="#").fillna({"note": ""})
    atomic.write_text(args.out, render(args, reported))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
