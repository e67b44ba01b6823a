"""Subspace overlap: do the base experts' and the specialists' updates occupy separable low-rank subspaces?

    python -m medmoelora_eval.mechanisms.subspace results/train/med_moe_lora/seed0 --out subspace_overlap.csv

Expert i of a module adds the update Delta W_i = (alpha_i / r_i) B_i A_i ([d_out, d_in], rank <= r_i) to W0.
Its output subspace is the column space of Delta W_i (where it writes, in R^d_out), its input subspace the
row space (what it reads, in R^d_in). Between two subspaces with orthonormal bases U [d, k1] and V [d, k2]
the principal angles are theta_j = arccos(sigma_j(U^T V)), j = 1 .. min(k1, k2): all 0 for identical
subspaces (or one inside the other), all pi/2 for orthogonal ones. For every module, pair kind (a base
expert with a specialist; two specialists) and side, the table has the mean angle and the overlap (mean
cos^2 theta_j) over the module's pairs of that kind; `by_layer` gives a layer's value, the mean over its
modules. For reference, ``chance_angle`` is the mean angle between random subspaces of the same
dimensions (seeded draws): low-rank subspaces of a large space are nearly orthogonal by chance, so an
angle means "separate" only where it is close to that reference or above the angle between specialists.

The bases come from a thin QR of B and of A^T and an SVD of the small core between them, never from the
[d_out, d_in] product. Directions with a singular value below 1e-6 of the largest are dropped; an expert
whose update is zero (never trained) has no subspace and is left out of the pairs.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.torch import load_file

from medmoelora import atomic
from medmoelora.errors import UserError, command_main

RELATIVE_TOLERANCE = 1e-6
CHANCE_DRAWS = 16
CHANCE_SEED = 0
PAIRS = ("base-specialist", "specialist-specialist")
SIDES = ("output", "input")
MODULE_COLUMNS = ["seed", "layer", "module", "pair", "side", "mean_angle", "overlap", "chance_angle", "pairs"]


def principal_angles(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Principal angles in radians, ascending, between span(u) [d, k1] and span(v) [d, k2] (any bases)."""
    qu, _ = np.linalg.qr(u)  # (d, k1) orthonormal
    qv, _ = np.linalg.qr(v)  # (d, k2)
    cosines = np.linalg.svd(qu.T @ qv, compute_uv=False)  # (min(k1, k2),), descending
    return np.arccos(np.clip(cosines, 0.0, 1.0))


def update_subspaces(lora_a: np.ndarray, lora_b: np.ndarray) -> dict[str, np.ndarray]:
    """Orthonormal bases of the output (column) and input (row) spaces of B A, B [d_out, r], A [r, d_in]."""
    qb, rb = np.linalg.qr(lora_b.astype(np.float64))  # (d_out, r), (r, r)
    qa, ra = np.linalg.qr(lora_a.astype(np.float64).T)  # (d_in, r), (r, r)
    left, singular, right_t = np.linalg.svd(rb @ ra.T)  # B A = qb (rb ra^T) qa^T; core (r, r)
    rank = int((singular > RELATIVE_TOLERANCE * singular.max()).sum()) if singular.size and singular.max() > 0 else 0
    return {"output": qb @ left[:, :rank], "input": qa @ right_t[:rank].T}  # (d_out, rank), (d_in, rank)


@functools.cache
def chance_angle(dimension: int, k1: int, k2: int) -> float:
    """Mean principal angle between random k1- and k2-dimensional subspaces of R^dimension (seeded)."""
    rng = np.random.default_rng(CHANCE_SEED)
    draws = [principal_angles(rng.standard_normal((dimension, k1)), rng.standard_normal((dimension, k2))).mean()
             for _ in range(CHANCE_DRAWS)]  # fmt: skip
    return float(np.mean(draws))


def module_pairs(
    experts: list[dict[str, np.ndarray]], base_experts: Iterable[int]
) -> Iterable[tuple[str, str, np.ndarray, np.ndarray]]:
    """(pair kind, side, basis, basis) for every pair of non-empty experts of a module."""
    base = set(base_experts)
    for i, j in itertools.combinations(range(len(experts)), 2):
        if i in base and j in base:
            continue
        kind = "specialist-specialist" if i not in base and j not in base else "base-specialist"
        for side in SIDES:
            u, v = experts[i][side], experts[j][side]
            if u.shape[1] and v.shape[1]:
                yield kind, side, u, v


def module_angles(adapter_dir: Path) -> pd.DataFrame:
    """One row per adapted module, pair kind and side (columns `MODULE_COLUMNS` less seed), from a saved
    adapter: the mean principal angle and overlap over the module's pairs of that kind."""
    header, tensors = read_adapter(adapter_dir)
    rows = []
    for path, spec in header["modules"].items():
        experts = [
            update_subspaces(tensors[f"{path}.experts.{i}.lora_A"], tensors[f"{path}.experts.{i}.lora_B"])
            for i in range(spec["num_experts"])
        ]
        pairs: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
        for kind, side, u, v in module_pairs(experts, spec["base_experts"]):
            angles = principal_angles(u, v)
            chance = chance_angle(u.shape[0], u.shape[1], v.shape[1])
            pairs[(kind, side)].append((angles.mean(), (np.cos(angles) ** 2).mean(), chance))
        for (kind, side), values in pairs.items():
            mean_angle, overlap, chance = np.mean(values, axis=0)
            rows.append(
                {"layer": spec["layer"], "module": path, "pair": kind, "side": side, "mean_angle": mean_angle,
                 "overlap": overlap, "chance_angle": chance, "pairs": len(values)}
            )  # fmt: skip
    if not rows:
        raise UserError(f"{adapter_dir}: no module with two trained experts; subspace overlap needs a mixture")
    return pd.DataFrame(rows, columns=MODULE_COLUMNS[1:]).sort_values(["layer", "module", "pair", "side"])


def subspace_table(adapters: Sequence[Path]) -> pd.DataFrame:
    """`module_angles` of one run's adapters (one per training seed), stacked with a seed column."""
    return pd.concat(
        [module_angles(adapter).assign(seed=seed) for seed, adapter in enumerate(adapters)], ignore_index=True
    )[MODULE_COLUMNS]


def by_layer(table: pd.DataFrame) -> pd.DataFrame:
    """Per decoder layer, pair kind and side: the mean over modules and seeds (angles between base experts and
    specialists, or among specialists, do not depend on how one seed numbers its experts)."""
    grouped = table.groupby(["layer", "pair", "side"], sort=True)
    return grouped[["mean_angle", "overlap", "chance_angle"]].mean().join(grouped["pairs"].sum()).reset_index()


def read_adapter(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """adapter_config.json and adapter_model.safetensors, as float64 numpy arrays (docs/adapter-format.md)."""
    directory = Path(adapter_dir)
    try:
        header = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
        tensors = {
            name: tensor.double().numpy() for name, tensor in load_file(directory / "adapter_model.safetensors").items()
        }  # float64: bfloat16 has no numpy type, and the small SVDs are cheap
    except OSError as error:
        raise UserError(f"{directory}: {error.strerror} ({error.filename}); give a saved adapter directory") from None
    except (json.JSONDecodeError, ValueError) as error:
        raise UserError(f"{directory}: unreadable adapter ({error}); re-run the training run that wrote it") from None
    return header, tensors


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapters", type=Path, nargs="+", help="saved adapter directories: one run, one per seed")
    parser.add_argument("--out", type=Path, required=True, help="the per-module CSV")
    args = parser.parse_args(argv)
    atomic.write_text(args.out, subspace_table(args.adapters).to_csv(index=False, float_format="%.6g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
