"""The mechanism figures across depth, from the per-module tables of `routing` and `subspace`.

python -m medmoelora_eval.mechanisms.figures routing routing_specialisation.csv --out routing_by_depth.png
python -m medmoelora_eval.mechanisms.figures subspace subspace_overlap.csv --out subspace_by_depth.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from medmoelora.errors import UserError, command_main
from medmoelora_eval.figures import save
from medmoelora_eval.mechanisms import routing, subspace


def routing_by_depth(modules: pd.DataFrame) -> plt.Figure:
    """Per layer, one line per allocation: I(T; E) in nats, and the routing entropy as a share of ln N."""
    fig, (mi_ax, entropy_ax) = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for allocation, rows in routing.by_layer(modules).groupby("allocation", sort=False):
        line = mi_ax.plot(rows["layer"], rows["mutual_information"], marker="o", label=allocation)
        mi_ax.plot(rows["layer"], rows["chance_information"], ls=":", color=line[0].get_color())
        entropy_ax.plot(rows["layer"], rows["routing_entropy"] / rows["max_entropy"], marker="o", label=allocation)
    mi_ax.set(
        xlabel="decoder layer", ylabel="I(task; top-1 expert) (nats)", title="Routing specialisation (dotted: chance)"
    )
    entropy_ax.set(xlabel="decoder layer", ylabel="H(top-1 expert) / ln N", title="Routing entropy", ylim=(0, 1.05))
    mi_ax.legend(title="allocation")
    mi_ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    return fig


def subspace_by_depth(modules: pd.DataFrame) -> plt.Figure:
    """Per layer, one panel per side: the mean principal angle of each pair kind, and the chance angle."""
    table = subspace.by_layer(modules)
    fig, axes = plt.subplots(1, len(subspace.SIDES), figsize=(10, 4), sharey=True)
    for ax, side in zip(axes, subspace.SIDES, strict=True):
        rows = table[table["side"] == side]
        for pair, of_pair in rows.groupby("pair", sort=False):
            line = ax.plot(of_pair["layer"], np.degrees(of_pair["mean_angle"]), marker="o", label=pair)
            ax.plot(of_pair["layer"], np.degrees(of_pair["chance_angle"]), ls=":", color=line[0].get_color())
        ax.set(xlabel="decoder layer", title=f"{side} subspaces (dotted: random subspaces)", ylim=(0, 92))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0].set_ylabel("mean principal angle (degrees)")
    axes[0].legend(title="experts compared")
    return fig


FIGURES = {
    "routing": (routing_by_depth, routing.MODULE_COLUMNS),
    "subspace": (subspace_by_depth, subspace.MODULE_COLUMNS),
}


def read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise UserError(f"cannot read {path} ({error}); re-run the step that wrote it") from None
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)}; give the table its command wrote")
    return table


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=FIGURES)
    parser.add_argument("table", type=Path, help="the per-module CSV of that analysis")
    parser.add_argument("--out", type=Path, required=True, help="the PNG")
    args = parser.parse_args(argv)
    draw, columns = FIGURES[args.kind]
    save(draw(read_table(args.table, columns)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
