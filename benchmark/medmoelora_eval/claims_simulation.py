"""How often the claims pipeline says "supported" when it should not, and how often when it should.

    python -m medmoelora_eval.claims_simulation --datasets 2000

Synthetic per-document accuracy with a known truth goes through `medmoelora_eval.claims.claims_table`,
the code that writes results/claims.csv. Every claim compares the Med-MoE-LoRA run (the reference) with
another run, so a star design plants each claim's true difference exactly: given the reference's
answer on a document, the other run's answer flips with the probabilities that give the planted
accuracy difference ``delta`` and discordance ``psi`` (the share of documents on which the runs differ).

Scenarios (one seed per run, documents as the default design: 30 MedQA, 30 PubMedQA, 30 MMLU-medical,
30 GSM8K):

- ``null``: C1-C5 and C7 have no effect; C6's three comparisons sit at the non-inferiority boundary
  (learnable tau truly one margin worse) with sparse disagreement (4% of documents). Every "supported"
  is false: per claim, and family-wise (any claim).
- ``power``: C1 has the planted effect the analysis plan gives as detectable with 80% power after
  Holm's correction (`planned_effect`), the others none.

And for seeds as the unit of a method claim (`seed_coverage`): documents drawn from a population of
difficulties, three seeds per method each shifting the method's logit, and how often the random-effects
t interval of `medmoelora_eval.endpoints` covers the method-level truth.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import norm

from medmoelora.errors import command_main
from medmoelora.tasks import EVAL_GSM8K, EVAL_TASKS
from medmoelora_eval.claims import CLAIMS, DEFAULT_MARGINS, claims_table
from medmoelora_eval.endpoints import ALPHA, POWER, accuracy_test
from medmoelora_eval.samples import Stratum
from medmoelora_eval.stats import SUPPORTED

REFERENCE = "med_moe_lora"
OTHER_RUNS = ("lora", "multi_lora", "uniform_moe", "alloc_uniform", "alloc_inverted", "tau_0p5", "tau_1", "tau_2")
ROLES = {role: role for role in (REFERENCE, *OTHER_RUNS)}
MEDICAL = tuple(task.name for task in EVAL_TASKS.values() if task.domain == "medical")  # the medical average
DOCUMENTS = dict.fromkeys([*MEDICAL, EVAL_GSM8K.name], 30)  # the default design's draw
REFERENCE_ACCURACY = 0.4
DISCORDANCE = 0.3  # share of documents two trained runs answer differently (superiority scenarios)
SPARSE = 0.04  # C6 at the boundary: 4% of documents differ
FAMILY = len(CLAIMS)


def planned_effect(documents: int = 90, discordance: float = DISCORDANCE, family: int = FAMILY) -> float:
    """The accuracy difference (points) a single true effect needs for 80% power at the first Holm step
    (one-sided alpha / family), on ``documents`` paired documents of which ``discordance`` differ."""
    z = norm.ppf(1 - ALPHA / family) + norm.ppf(POWER)
    return 100.0 * z * math.sqrt(discordance / documents)


def _answers(rng: np.random.Generator, reference: np.ndarray, delta: float, psi: float) -> np.ndarray:
    """Another run's answers (1 correct) whose difference to ``reference`` has mean ``delta`` (reference
    minus it, a proportion) and discordance ``psi``: right-for-reference documents turn wrong with
    probability (psi + delta) / (2 p), wrong ones turn right with (psi - delta) / (2 (1 - p))."""
    p = REFERENCE_ACCURACY
    lose, gain = (psi + delta) / (2 * p), (psi - delta) / (2 * (1 - p))
    if not (0 <= lose <= 1 and 0 <= gain <= 1):
        raise ValueError(f"delta {delta} and psi {psi} are not a paired table at accuracy {p}")
    flip = rng.random(len(reference))
    return np.where(reference == 1, flip >= lose, flip < gain).astype(int)


def simulate_samples(rng: np.random.Generator, effects: Mapping[str, tuple[float, float]]) -> pd.DataFrame:
    """Per-document results in `load_samples`' layout (accuracy only): ``effects`` maps each other run
    to (delta in points, reference minus it, on the medical tasks; discordance), on the default design's
    documents. GSM8K's delta is 0 for every run: C7 is null in every scenario."""
    columns: dict[str, list[np.ndarray]] = {"run": [], "file": [], "task": [], "doc_id": [], "correct": []}
    for file, count in DOCUMENTS.items():
        reference = (rng.random(count) < REFERENCE_ACCURACY).astype(int)
        runs = {REFERENCE: reference}
        for run, (delta, psi) in effects.items():
            planted = delta if file in MEDICAL else 0.0  # GSM8K (C7's endpoint) has no planted effect
            runs[run] = _answers(rng, reference, planted / 100.0, psi)
        for run, correct in runs.items():
            for column, values in (("run", run), ("file", file), ("task", EVAL_TASKS[file].lm_eval_task)):
                columns[column].append(np.full(count, values, dtype=object))
            columns["doc_id"].append(np.arange(count))
            columns["correct"].append(correct)
    frame = pd.DataFrame({column: np.concatenate(parts) for column, parts in columns.items()})
    return frame.assign(seed=0, gold=np.nan, loglikelihoods=None, loglikelihood=np.nan, bytes=np.nan)


def scenario_effects(name: str, margin: float = DEFAULT_MARGINS["accuracy"]) -> dict[str, tuple[float, float]]:
    """Each other run's (delta, discordance) in a scenario (module docstring)."""
    effects = {run: (0.0, DISCORDANCE) for run in OTHER_RUNS}
    effects |= {run: (-margin, SPARSE) for run in ("tau_0p5", "tau_1", "tau_2")}  # at the boundary
    if name == "power":
        effects["lora"] = (planned_effect(), DISCORDANCE)
    elif name != "null":
        raise ValueError(f"unknown scenario {name!r}; use null or power")
    return effects


def supported_rates(name: str, datasets: int, seed: int = 0) -> dict[str, float]:
    """Per claim, and ``any`` over C1-C7, the share of simulated datasets whose claim row says supported."""
    rng = np.random.default_rng(seed)
    effects = scenario_effects(name)
    counts = dict.fromkeys([claim.id for claim in CLAIMS] + ["any"], 0)
    for _ in range(datasets):
        table = claims_table(simulate_samples(rng, effects), ROLES, resamples=1)
        supported = set(table.loc[(table["row"] == "claim") & (table["verdict"] == SUPPORTED), "claim"])
        for claim in supported:
            counts[claim] += 1
        counts["any"] += bool(supported)
    return {claim: count / datasets for claim, count in counts.items()}


def seed_coverage(
    datasets: int,
    seeds: int = 3,
    documents: int = 90,
    seed_sd: float = 0.3,
    difference: float = 0.0,
    seed: int = 0,
) -> dict[str, float]:
    """How often the random-effects t interval (95%) covers the method-level truth, and how often a
    superiority test says supported when ``difference`` (logit shift of A over B) is 0.

    Documents have logit difficulties N(-0.4, 1); a seed shifts its method's logit by N(0, ``seed_sd``).
    The truth, E over documents and seeds of P(A right) - P(B right), is a Monte Carlo integral."""
    rng = np.random.default_rng(seed)
    population = rng.normal(-0.4, 1.0, 400_000)
    shifts = rng.normal(0.0, seed_sd, (2, 400_000))
    truth = 100.0 * float(np.mean(expit(population + difference + shifts[0]) - expit(population + shifts[1])))
    covered = supported = 0
    for _ in range(datasets):
        difficulty = rng.normal(-0.4, 1.0, documents)
        a = rng.random((seeds, documents)) < expit(difficulty + difference + rng.normal(0, seed_sd, (seeds, 1)))
        b = rng.random((seeds, documents)) < expit(difficulty + rng.normal(0, seed_sd, (seeds, 1)))
        test = accuracy_test(_stratum(a), _stratum(b))
        covered += bool(test.lo <= truth <= test.hi)
        supported += bool(test.p_support < ALPHA)
    return {"truth": truth, "coverage": covered / datasets, "supported": supported / datasets}


def _stratum(correct: np.ndarray) -> Stratum:
    documents = tuple(("sim", i) for i in range(correct.shape[1]))
    return Stratum("sim", 100.0 * correct.astype(float), np.ones(correct.shape), documents)


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medmoelora_eval.claims_simulation", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--datasets", type=int, default=2000, help="simulated datasets per scenario")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.datasets < 1:
        parser.error(f"--datasets {args.datasets}: must be at least 1")
    rows = []
    for name in ("null", "power"):
        rates = supported_rates(name, args.datasets, args.seed)
        rows += [{"scenario": name, "claim": claim, "supported": rate} for claim, rate in rates.items()]
    print(pd.DataFrame.from_records(rows).pivot(index="claim", columns="scenario", values="supported").to_markdown())
    print(f"\nplanned effect (power scenario, C1): {planned_effect():.1f} points; nominal rate {ALPHA}")
    for seed_sd in (0.0, 0.3, 0.6):
        result = seed_coverage(args.datasets, seed_sd=seed_sd, seed=args.seed)
        print(
            f"3 seeds, 90 documents, seed sd {seed_sd}: coverage of the method-level truth "
            f"{result['coverage']:.3f}, false supported {result['supported']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
