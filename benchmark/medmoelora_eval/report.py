"""results/report.md: every table as markdown, each beside the paper's figures, and the figures.

    python -m medmoelora_eval.report --tables results/table*.csv --figures results/figures/*.png \
        --reported results/paper/reported.csv --out results/report.md

``reported.csv`` has one paper figure a line: ``table,row,column,value,note``, in the units of our
tables (percent, percentage points, parameter counts). Each table is followed by a comparison of the
cells the paper reports: ours, paper, difference (ours - paper).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from medmoelora import atomic
from medmoelora.errors import UserError, command_main

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
    """The paper's cells of one table beside ours, with the difference."""
    key = table.columns[0]
    ours = table.set_index(key)
    rows = []
    for item in reported.itertuples(index=False):
        value = ours.at[item.row, item.column] if item.row in ours.index and item.column in ours.columns else None
        scale, unit = (1e6, " (M)") if "params" in item.column else (1.0, "")
        value = None if value is None else float(value) / scale
        rows.append(
            {
                "row": item.row,
                "column": item.column + unit,
                "ours": value,
                "paper": item.value / scale,
                "difference": None if value is None else value - item.value / scale,
                "note": item.note,
            }
        )
    return pd.DataFrame.from_records(rows)


def render(tables: list[Path], figures: list[Path], reported: pd.DataFrame, out: Path) -> str:
    lines = [
        "# Med-MoE-LoRA reproduction report",
        "",
        "Our results beside the paper's (arXiv 2601.07935, Llama-3-8B; `results/paper/reported.csv`). The model,",
        "data budget and evaluation limits are those of the workflow config used, so differences from the paper",
        "are expected at small scale; the comparison shows where each number stands.",
        "",
    ]
    for path in tables:
        name = path.stem
        table = pd.read_csv(path, converters={0: str})  # row labels stay text ("1.0" for tau)
        lines += [f"## {TITLES.get(name, name)}", "", table.to_markdown(index=False, floatfmt=".2f"), ""]
        paper = reported[reported["table"] == name]
        if len(paper):
            lines += ["Against the paper:", "", comparison(table, paper).to_markdown(index=False, floatfmt=".2f"), ""]
    lines += ["## Figures", ""]
    for figure in figures:
        relative = Path(*figure.parts[len(out.parent.parts) :]) if figure.is_relative_to(out.parent) else figure
        lines += [f"![{figure.stem}]({relative.as_posix()})", ""]
    return "\n".join(lines)


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medmoelora_eval.report", description=__doc__.split("\n")[0])
    parser.add_argument("--tables", type=Path, nargs="+", required=True)
    parser.add_argument("--figures", type=Path, nargs="*", default=[])
    parser.add_argument("--reported", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    for path in [*args.tables, *args.figures, args.reported]:
        if not path.is_file():
            raise UserError(f"{path} not found; build it first (`snakemake all` makes every input of the report)")
    reported = pd.read_csv(args.reported, comment="#").fillna({"note": ""})
    atomic.write_text(args.out, render(args.tables, args.figures, reported, args.out))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
