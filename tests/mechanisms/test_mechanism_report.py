"""The depth and separation verdicts, and the report's Mechanisms section built from results/mechanisms."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmoelora_eval.mechanisms.ablation import ablation_tables, load_variants
from medmoelora_eval.mechanisms.report import mechanisms_section
from medmoelora_eval.mechanisms.verdicts import depth_verdict, difference_of_means, separation_verdict
from medmoelora_eval.stats import CONTRADICTED, INCONCLUSIVE, SUPPORTED
from tests.stats.synthetic import write_run

RNG = np.random.default_rng(0)


def _routing(upper_mi: float, lower_mi: float, modules: int = 12) -> pd.DataFrame:
    """An asymmetric allocation: 2 experts in layers 0-3, 8 in layers 4-5, noisy per-module values."""
    rows = []
    for layer in range(6):
        experts, mi = (8, upper_mi) if layer >= 4 else (2, lower_mi)
        for module in range(modules):
            rows.append(
                {"allocation": "asymmetric", "seed": 0, "layer": layer, "module": f"{layer}.{module}",
                 "num_experts": experts, "mutual_information": mi + 0.01 * RNG.normal(),
                 "chance_information": 0.01 * (experts - 1), "routing_entropy": 0.5, "max_entropy": np.log(experts),
                 "tasks": 4, "tokens": 150}
            )  # fmt: skip
    return pd.DataFrame(rows)


def _angles(base_specialist: float, among_specialists: float) -> pd.DataFrame:
    rows = []
    for module in range(20):
        for pair, angle in (("base-specialist", base_specialist), ("specialist-specialist", among_specialists)):
            for side in ("output", "input"):
                rows.append(
                    {"seed": 0, "layer": module % 4, "module": str(module), "pair": pair, "side": side,
                     "mean_angle": angle + 0.01 * RNG.normal(), "overlap": 0.1, "chance_angle": 1.5, "pairs": 1}
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_difference_of_means_covers_the_true_difference() -> None:
    difference, lo, hi = difference_of_means(np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0]))
    assert difference == pytest.approx(1.5) and lo <= 1.5 <= hi
    assert difference_of_means(np.full(5, 2.0), np.full(5, 1.0))[1:] == pytest.approx((1.0, 1.0))


def test_depth_verdict_follows_the_rule() -> None:
    assert depth_verdict(_routing(0.5, 0.1))["verdict"] == SUPPORTED
    assert depth_verdict(_routing(0.1, 0.5))["verdict"] == CONTRADICTED
    # More mutual information in the upper layers, but only as much more as their chance level (0.07 with 8
    # experts, 0.01 with 2) explains.
    assert depth_verdict(_routing(0.36, 0.3))["verdict"] == INCONCLUSIVE
    assert depth_verdict(_routing(0.3, 0.3))["verdict"] == CONTRADICTED
    uniform = _routing(0.3, 0.3).assign(num_experts=4)
    assert (
        depth_verdict(uniform)["verdict"] == INCONCLUSIVE and "no asymmetric layers" in depth_verdict(uniform)["note"]
    )


def test_separation_verdict_follows_the_rule() -> None:
    assert separation_verdict(_angles(1.5, 1.0))["verdict"] == SUPPORTED
    assert separation_verdict(_angles(1.0, 1.5))["verdict"] == CONTRADICTED
    found = separation_verdict(_angles(1.2, 1.2))
    assert found["verdict"] == INCONCLUSIVE and found["chance"] == pytest.approx(1.5)


def write_mechanisms(mechanisms: Path, scratch: Path) -> None:
    """results/mechanisms/'s tables from synthetic runs with a planted dual path, depth effect and no separation."""
    mechanisms.mkdir(parents=True)
    write_run(scratch, "all", 2.0, 2.0, seeds=[0])
    write_run(scratch, "no_base", 2.0, -1.0, seeds=[0])
    write_run(scratch, "no_specialists", -1.0, 2.0, seeds=[0])
    variants = {"all_experts": "all", "without_base": "no_base", "without_specialists": "no_specialists"}
    table, dual = ablation_tables(load_variants({v: scratch / r for v, r in variants.items()}), 500)
    table.to_csv(mechanisms / "ablation.csv", index=False)
    dual.to_csv(mechanisms / "dual_path.csv", index=False)
    _routing(0.5, 0.1).to_csv(mechanisms / "routing_specialisation.csv", index=False)
    _angles(1.0, 1.5).to_csv(mechanisms / "subspace_overlap.csv", index=False)


def test_the_section_states_each_mechanism_with_its_verdict_and_figures(tmp_path: Path) -> None:
    mechanisms = tmp_path / "results" / "mechanisms"
    write_mechanisms(mechanisms, tmp_path / "eval")
    text = "\n".join(mechanisms_section(mechanisms, tmp_path / "results"))
    assert text.startswith("## Mechanisms\n")
    sections = text.split("\n### ")[1:]
    assert [section.split("\n")[0][:2] for section in sections] == ["1.", "2.", "3."]
    assert f"**{SUPPORTED}** (accuracy)" in sections[0] and "Supported when its 95% interval" in sections[0]
    assert re.search(r"\| without base +\| general +\| accuracy \(points\) +\| 8\.8 \[", sections[0])
    assert re.search(
        r"\| specialists +\| accuracy \(points\) +\| medical +\| \+69\.8 / -0\.0 .*\| supported", sections[0]
    )
    assert f"**{SUPPORTED}**. Asymmetric allocation" in sections[1]
    assert "![routing by depth](mechanisms/routing_by_depth.png)" in sections[1]
    assert f"**{CONTRADICTED}**. Mean principal angle" in sections[2]
    assert "![subspace overlap by depth](mechanisms/subspace_by_depth.png)" in sections[2]
