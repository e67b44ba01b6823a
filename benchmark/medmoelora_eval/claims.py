"""The paper's claims as data, each tested on its pre-registered primary endpoint (docs/analysis-plan.md).

    python -m medmoelora_eval.claims --eval-dir results/eval \
        --runs base=base lora=lora multi_lora=multi_lora uniform_moe=uniform_moe med_moe_lora=med_moe_lora \
               alloc_uniform=alloc_uniform alloc_inverted=alloc_inverted tau_0p5=tau_0p5 tau_1=tau_1 tau_2=tau_2 \
        --routing results/train/med_moe_lora/seed0/routing_stats.json \
        --learned-tau results/train/med_moe_lora/seed0/adapter_model.safetensors --out results/claims.csv

``--runs`` maps the claims' roles (`ROLES`) to run names (directories under ``--eval-dir``);
``alloc_asymmetric`` and ``tau_learnable`` default to the ``med_moe_lora`` run. A claim whose roles
are not all given is "not evaluated". ``--routing`` takes the Med-MoE-LoRA run's routing_stats.json
files (one per seed) for the collapse check C8; ``--learned-tau`` the learnable-tau run's adapters, for
C6's manipulation check.

The table (`COLUMNS`) has, per claim, one ``claim`` row with the verdict, then its ``primary`` rows (one
per comparison; C6 has three) and its ``secondary`` rows, and last C8's ``check`` row:

- a primary row tests accuracy on the claim's scope (`medmoelora_eval.endpoints`), one-sided at 0.025;
- the claim row combines its primary rows ("each fixed tau": the largest p, an intersection-union test;
  contradicted if any is, Bonferroni within the claim) and carries Holm's adjusted p over the family
  C1-C7; its verdict follows the adjusted p;
- a secondary row (gold log-probability, Brier score, MMLU-general, bits per byte) is a descriptive
  difference with its two-way bootstrap interval, "consistent" or "not consistent" with the primary; it
  never supports a claim on its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medmoelora import atomic
from medmoelora.errors import UserError, command_main, unknown_name
from medmoelora.routing_stats import COLLAPSE_THRESHOLD
from medmoelora.tasks import EVAL_GSM8K, EVAL_MEDQA
from medmoelora_eval.endpoints import ALPHA, accuracy_test, pooled
from medmoelora_eval.inference import holm
from medmoelora_eval.samples import MEDICAL_AVERAGE, METRICS, MMLU_GENERAL, Stratum, has_metric, load_samples, strata
from medmoelora_eval.stats import (
    AT_LEAST_AS_GOOD,
    BEATS,
    CONFIDENCE,
    CONTRADICTED,
    INCONCLUSIVE,
    RESAMPLES,
    SEED,
    SUPPORTED,
    bootstrap,
    check_paired,
    estimate,
    percentile_interval,
)
from medmoelora_eval.temperatures import read_temperatures

ROLES = {
    "base": "the untrained base model",
    "lora": "LoRA",
    "multi_lora": "Multi-LoRA",
    "uniform_moe": "uniform MoE-LoRA (4 experts per layer, fixed tau 1)",
    "med_moe_lora": "Med-MoE-LoRA",
    "alloc_asymmetric": "Med-MoE-LoRA with the asymmetric (top-heavy) allocation",
    "alloc_uniform": "Med-MoE-LoRA with a uniform allocation",
    "alloc_inverted": "Med-MoE-LoRA with the inverted (bottom-heavy) allocation",
    "tau_learnable": "Med-MoE-LoRA with learnable tau",
    "tau_0p5": "Med-MoE-LoRA with fixed tau 0.5",
    "tau_1": "Med-MoE-LoRA with fixed tau 1",
    "tau_2": "Med-MoE-LoRA with fixed tau 2",
}
ROLE_FALLBACKS = {"alloc_asymmetric": "med_moe_lora", "tau_learnable": "med_moe_lora"}
FIXED_TAUS = {"tau_0p5": 0.5, "tau_1": 1.0, "tau_2": 2.0}
TAU_EPSILON = 0.05  # C6's manipulation check: a learned tau within 5% of a fixed one does not test learning it
ROLLING = "*rolling"  # stands for every task whose documents carry loglikelihood and bytes
NOT_EVALUATED, NOT_TESTED = "not evaluated", "not tested"
CONSISTENT, NOT_CONSISTENT = "consistent", "not consistent"
CHECK_PASSED, CHECK_FAILED = "passed", "failed"
# "No worse" per metric, in the metric's units: the margins of an "at least as good" claim. Accuracy's is
# the primary endpoint's; the others judge whether a secondary metric is consistent with it.
DEFAULT_MARGINS = {"accuracy": 1.0, "gold_logprob": 0.02, "brier": 0.01, "bits_per_byte": 0.01}
COLUMNS = (
    "claim",
    "row",
    "comparison",
    "scope",
    "metric",
    "paper_effect",
    "margin",
    "difference",
    "ci_lo",
    "ci_hi",
    "p_value",
    "p_adjusted",
    "p_contradict",
    "p_contradict_adjusted",
    "method",
    "mde_80",
    "power_at_margin",
    "n_documents",
    "n_discordant",
    "n_seeds",
    "about",
    "verdict",
    "note",
    "resamples",
    "seed",
)


@dataclass(frozen=True)
class Measure:
    """A metric on a scope; ``paper_effect`` in the metric's units (favoured run minus the other)."""

    scope: str
    metric: str
    paper_effect: float | None = None


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    comparisons: tuple[tuple[str, str], ...]  # (role the paper favours, role it is compared with)
    primary: Measure  # accuracy on the scope the paper names
    secondaries: tuple[Measure, ...]  # reported where the results hold them; never support on their own
    kind: str = BEATS
    against_base: bool = False  # a difference in differences against the base run (the note gives both changes)


def _medical_secondaries(scope: str) -> tuple[Measure, ...]:
    return (Measure(scope, "gold_logprob"), Measure(scope, "brier"))


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "C1",
        "Med-MoE-LoRA beats LoRA on the medical average",
        (("med_moe_lora", "lora"),),
        Measure(MEDICAL_AVERAGE, "accuracy"),
        _medical_secondaries(MEDICAL_AVERAGE),
    ),
    Claim(
        "C2",
        "Med-MoE-LoRA beats Multi-LoRA on MedQA (paper: 65.8 vs 61.3)",
        (("med_moe_lora", "multi_lora"),),
        Measure(EVAL_MEDQA.name, "accuracy", round(65.8 - 61.3, 1)),
        _medical_secondaries(EVAL_MEDQA.name),
    ),
    Claim(
        "C3",
        "Med-MoE-LoRA beats the uniform MoE-LoRA on the medical average",
        (("med_moe_lora", "uniform_moe"),),
        Measure(MEDICAL_AVERAGE, "accuracy"),
        _medical_secondaries(MEDICAL_AVERAGE),
    ),
    Claim(
        "C4",
        "Asymmetric allocation beats uniform allocation on the medical average (paper: 59.5 vs 56.8)",
        (("alloc_asymmetric", "alloc_uniform"),),
        Measure(MEDICAL_AVERAGE, "accuracy", round(59.5 - 56.8, 1)),
        _medical_secondaries(MEDICAL_AVERAGE),
    ),
    Claim(
        "C5",
        "Top-heavy allocation beats the inverted, bottom-heavy one on the medical average",
        (("alloc_asymmetric", "alloc_inverted"),),
        Measure(MEDICAL_AVERAGE, "accuracy"),
        _medical_secondaries(MEDICAL_AVERAGE),
    ),
    Claim(
        "C6",
        "Learnable tau is at least as good as each fixed tau in {0.5, 1, 2} on the medical average",
        (("tau_learnable", "tau_0p5"), ("tau_learnable", "tau_1"), ("tau_learnable", "tau_2")),
        Measure(MEDICAL_AVERAGE, "accuracy"),
        _medical_secondaries(MEDICAL_AVERAGE),
        kind=AT_LEAST_AS_GOOD,
    ),
    Claim(
        "C7",
        "Med-MoE-LoRA loses less general skill than LoRA (paper: GSM8K -0.3 vs -3.6)",
        (("med_moe_lora", "lora"),),
        Measure(EVAL_GSM8K.name, "accuracy", round(-0.3 - -3.6, 1)),
        (Measure(MMLU_GENERAL, "accuracy"), Measure(MMLU_GENERAL, "gold_logprob"), Measure(ROLLING, "bits_per_byte")),
        against_base=True,
    ),
)
COLLAPSE_CLAIM = Claim(
    "C8",
    f"No expert collapse: no expert takes more than {COLLAPSE_THRESHOLD:.0%} of the routing weight in any layer",
    (),
    Measure("routing", "largest_expert_share"),
    (),
)


class Results:
    """Per-document results, looked up by (run, scope, metric) with each lookup done once (runs recur)."""

    def __init__(self, samples: pd.DataFrame) -> None:
        self._by_run = dict(tuple(samples.groupby("run", sort=False)))  # one run's rows: cheaper to filter
        self.rolling = sorted(set(samples.loc[samples["bytes"].notna(), "file"]))  # rolling-loglikelihood tasks

    @functools.cache  # noqa: B019 (one Results per table: the cache dies with it)
    def has(self, run: str, scope: str, metric: str) -> bool:
        return run in self._by_run and has_metric(self._by_run[run], run, scope, metric)

    @functools.cache  # noqa: B019
    def values(self, run: str, scope: str, metric: str) -> list[Stratum]:
        if run not in self._by_run:
            raise UserError(f"no per-document results for run {run!r}; evaluate it first")
        return strata(self._by_run[run], run, scope, metric)


def resolve_roles(runs: Mapping[str, str]) -> dict[str, str]:
    """Check the role names and fill the roles that default to another role's run."""
    for role in runs:
        if role not in ROLES:
            raise unknown_name("role", role, ROLES)
    resolved = dict(runs)
    for role, fallback in ROLE_FALLBACKS.items():
        if role not in resolved and fallback in resolved:
            resolved[role] = resolved[fallback]
    return resolved


def check_margins(margins: Mapping[str, float]) -> dict[str, float]:
    """Every metric's margin, from ``margins`` over `DEFAULT_MARGINS`; each must be a known metric and > 0."""
    for metric, margin in margins.items():
        if metric not in METRICS:
            raise unknown_name("metric in the margins", metric, METRICS)
        if not margin > 0:
            raise UserError(f"margin of {metric} is {margin}: must be > 0, in the metric's units (e.g. accuracy=1)")
    return {**DEFAULT_MARGINS, **margins}


def claims_table(
    samples: pd.DataFrame,
    runs: Mapping[str, str],
    routing: Mapping[str, Mapping] | None = None,
    learned_tau: float | None = None,
    margins: Mapping[str, float] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> pd.DataFrame:
    """The claims table (`COLUMNS`) from per-document results (`load_samples`).

    ``runs`` maps roles to run names; ``routing`` maps a label (e.g. the file) to a routing_stats.json
    content of the Med-MoE-LoRA run, for C8; ``learned_tau`` is the learnable-tau run's mean tau, for
    C6's manipulation check (None: no check); ``resamples`` and ``seed`` drive the secondary rows'
    bootstrap (the primary tests are exact or analytic).
    """
    runs = resolve_roles(runs)
    margins = check_margins(margins or {})
    results = Results(samples)
    blocks = [_claim_rows(claim, results, runs, learned_tau, margins, resamples, seed) for claim in CLAIMS]
    _adjust([block[0] for block in blocks])
    rows = [row for block in blocks for row in block] + [collapse_row(routing or {})]
    return pd.DataFrame.from_records(rows, columns=list(COLUMNS)).assign(resamples=resamples, seed=seed)


def _claim_rows(
    claim: Claim,
    results: Results,
    runs: Mapping[str, str],
    learned_tau: float | None,
    margins: Mapping[str, float],
    resamples: int,
    seed: int,
) -> list[dict]:
    """[the claim row, its primary rows, its secondary rows]."""
    margin = margins["accuracy"] if claim.kind == AT_LEAST_AS_GOOD else None
    primaries, secondaries = [], []
    for favoured, other in claim.comparisons:
        missing = [role for role in (favoured, other) if role not in runs]
        if missing:
            primaries.append(_row(claim, "primary", f"{favoured} vs {other}", claim.primary, margin=margin))
            primaries[-1] |= {"verdict": NOT_EVALUATED, "note": f"no run for role {', '.join(missing)}"}
            continue
        primary = _primary(claim, results, runs, favoured, other, margin, learned_tau)
        primaries.append(primary)
        for measure in _secondaries(claim, results, runs[favoured], runs[other]):
            secondaries.append(
                _secondary(claim, measure, primary, results, runs, favoured, other, margins, resamples, seed)
            )
    return [_combine(claim, primaries, margin), *primaries, *secondaries]


def _row(claim: Claim, role: str, comparison: str, measure: Measure, **values) -> dict:
    return {
        "claim": claim.id,
        "row": role,
        "comparison": comparison,
        "scope": measure.scope,
        "metric": measure.metric,
        "paper_effect": measure.paper_effect,
        **values,
    }


def _primary(
    claim: Claim,
    results: Results,
    runs: Mapping[str, str],
    favoured: str,
    other: str,
    margin: float | None,
    learned_tau: float | None,
) -> dict:
    run_a, run_b = runs[favoured], runs[other]
    comparison = f"{run_a} vs {run_b}"
    if not all(results.has(run, claim.primary.scope, "accuracy") for run in (run_a, run_b)):
        row = _row(claim, "primary", comparison, claim.primary, margin=margin, verdict=NOT_EVALUATED)
        return row | {"note": f"{claim.primary.scope} accuracy is not in both runs' results"}
    a = results.values(run_a, claim.primary.scope, "accuracy")
    b = results.values(run_b, claim.primary.scope, "accuracy")
    _check_same_documents(claim, a, b, run_a, run_b)
    test = accuracy_test(pooled(a), pooled(b), margin)
    notes = []
    if claim.against_base and "base" in runs:
        notes.append(_changes_against_base(claim, claim.primary, results, runs, run_a, run_b, a, b))
    why_untested = test.why_untested
    if other in FIXED_TAUS and learned_tau is not None:  # the manipulation check
        fixed = FIXED_TAUS[other]
        if abs(learned_tau - fixed) <= TAU_EPSILON * fixed:
            why_untested = f"learned tau {learned_tau:.3f} is within {TAU_EPSILON:.0%} of the fixed {fixed:g}"
        else:
            notes.append(f"learned tau {learned_tau:.3f} vs fixed {fixed:g}")
    if why_untested:
        notes.insert(0, why_untested)
        verdict = NOT_TESTED
        test = dataclasses.replace(test, p_support=float("nan"), p_contradict=float("nan"))
    elif test.p_support < ALPHA:
        verdict = SUPPORTED
    elif test.p_contradict < ALPHA:
        verdict = CONTRADICTED
    else:
        verdict = INCONCLUSIVE
    return _row(
        claim,
        "primary",
        comparison,
        claim.primary,
        margin=margin,
        difference=test.difference,
        ci_lo=test.lo,
        ci_hi=test.hi,
        p_value=test.p_support,
        p_contradict=test.p_contradict,
        method=test.method,
        mde_80=test.mde,
        power_at_margin=test.power_at_margin,
        n_documents=test.n_documents,
        n_discordant=test.n_discordant,
        n_seeds=test.n_seeds,
        about=_about(test.n_seeds),
        verdict=verdict,
        note="; ".join(notes),
    )


def _about(n_seeds: str) -> str:
    """What a verdict is about: these trained models (one seed per run) or the methods (several)."""
    return "these trained models" if "1" in n_seeds.split("/") else "the methods"


def _combine(claim: Claim, primaries: list[dict], margin: float | None) -> dict:
    """The claim row: supported only if every primary row could be (the largest p), contradicted if any
    is (the smallest p, times the rows: Bonferroni); before Holm's adjustment across claims (`_adjust`)."""
    comparison = " / ".join(row["comparison"] for row in primaries)
    row = _row(claim, "claim", comparison, claim.primary, margin=margin)
    if all(p["verdict"] == NOT_EVALUATED for p in primaries):
        return row | {"verdict": NOT_EVALUATED, "note": "; ".join(p["note"] for p in primaries)}
    tested = [p for p in primaries if p["verdict"] not in (NOT_EVALUATED, NOT_TESTED)]
    untested = [p for p in primaries if p not in tested]
    notes = [f"{p['comparison']}: {p['verdict']} ({p['note']})" for p in untested]
    support = max(p["p_value"] for p in tested) if tested and not untested else 1.0
    contradict = min(1.0, len(primaries) * min(p["p_contradict"] for p in tested)) if tested else 1.0
    if len(primaries) == 1:  # the claim's figures are its one comparison's (a difference even when untested)
        keep = ("difference", "ci_lo", "ci_hi", "method", "mde_80", "power_at_margin", "n_documents", "n_discordant")
        row |= {key: primaries[0].get(key) for key in keep}
    if len(primaries) > 1:
        notes.append(f"each of {len(primaries)} comparisons must be supported: p is their largest")
    seeds = sorted({p["n_seeds"] for p in tested})
    return row | {
        "p_value": support,
        "p_contradict": contradict,
        "n_seeds": ", ".join(seeds),
        "about": _about(seeds[0]) if seeds else "",
        "verdict": NOT_TESTED if not tested else INCONCLUSIVE,
        "note": "; ".join(notes),
    }


def _adjust(claim_rows: list[dict]) -> None:
    """Holm's step-down over the family C1-C7, each direction its own family; an untested or not
    evaluated claim stays in it with p = 1, so the family is the same whatever the results."""
    for p_key, verdict_if_rejected in (("p_value", SUPPORTED), ("p_contradict", CONTRADICTED)):
        adjusted = holm([row.get(p_key, 1.0) if pd.notna(row.get(p_key)) else 1.0 for row in claim_rows])
        for row, p in zip(claim_rows, adjusted, strict=True):
            row[f"{p_key.replace('p_value', 'p')}_adjusted"] = p
            if row["verdict"] == INCONCLUSIVE and p < ALPHA:
                row["verdict"] = verdict_if_rejected


def _secondaries(claim: Claim, results: Results, run_a: str, run_b: str) -> list[Measure]:
    rolling = results.rolling
    expanded = [
        Measure(task, m.metric, m.paper_effect) if m.scope == ROLLING else m
        for m in claim.secondaries
        for task in (rolling if m.scope == ROLLING else [m.scope])
    ]
    return [m for m in expanded if all(results.has(run, m.scope, m.metric) for run in (run_a, run_b))]


def _secondary(
    claim: Claim,
    measure: Measure,
    primary: dict,
    results: Results,
    runs: Mapping[str, str],
    favoured: str,
    other: str,
    margins: Mapping[str, float],
    resamples: int,
    seed: int,
) -> dict:
    """A descriptive difference (document-weighted, two-way bootstrap interval) and whether it points the
    way the primary does: on the same side of the claim's threshold (0, or -margin for "at least as good")."""
    run_a, run_b = runs[favoured], runs[other]
    a = [pooled(results.values(run_a, measure.scope, measure.metric))]
    b = [pooled(results.values(run_b, measure.scope, measure.metric))]
    _check_same_documents(claim, a, b, run_a, run_b)
    difference = estimate(a) - estimate(b)
    lo, hi = percentile_interval(bootstrap(a, b, resamples, seed), CONFIDENCE)
    sign = 1.0 if METRICS[measure.metric].higher_is_better else -1.0
    margin = margins[measure.metric] if claim.kind == AT_LEAST_AS_GOOD else None
    threshold = -(margin or 0.0)
    notes = []
    if pd.isna(primary.get("difference")):
        verdict = NOT_TESTED
    else:
        primary_side = primary["difference"] >= -(primary["margin"] if pd.notna(primary["margin"]) else 0.0)
        verdict = CONSISTENT if (sign * difference >= threshold) == primary_side else NOT_CONSISTENT
    if claim.against_base and "base" in runs:
        notes.append(_changes_against_base(claim, measure, results, runs, run_a, run_b, a, b))
    return _row(
        claim,
        "secondary",
        f"{run_a} vs {run_b}",
        measure,
        margin=margin,
        difference=difference,
        ci_lo=lo,
        ci_hi=hi,
        method="two-way bootstrap, descriptive",
        n_documents=a[0].numerator.shape[1],
        n_seeds=f"{a[0].seeds}/{b[0].seeds}",
        verdict=verdict,
        note="; ".join(notes),
    )


def _check_same_documents(claim: Claim, a: Sequence[Stratum], b: Sequence[Stratum], run_a: str, run_b: str) -> None:
    try:
        check_paired(a, b)
    except UserError as error:
        raise UserError(f"{claim.id} ({run_a} vs {run_b}): {error}") from None


def _changes_against_base(
    claim: Claim,
    measure: Measure,
    results: Results,
    runs: Mapping[str, str],
    run_a: str,
    run_b: str,
    a: Sequence[Stratum],
    b: Sequence[Stratum],
) -> str:
    """(a - base) - (b - base) = a - b on the same documents: the note gives each run's change."""
    base_strata = results.values(runs["base"], measure.scope, measure.metric)
    base = [pooled(base_strata)] if len(a) == 1 and len(base_strata) > 1 else base_strata
    if [s.documents for s in base] != [s.documents for s in a]:
        raise UserError(
            f"{claim.id}: the base run {runs['base']!r} was evaluated on other {measure.scope} documents than "
            f"{run_a!r}; evaluate both on the same documents"
        )
    score = estimate(base)
    return f"change vs base: {run_a} {estimate(a) - score:+.3g}, {run_b} {estimate(b) - score:+.3g}"


def expert_shares(stats: Mapping) -> pd.DataFrame:
    """Per soft-routed module with several experts: its layer, the expert with the largest mean gate, and
    that expert's share of the routing weight (routing_stats.json's ``overall``, or a `routing_stats` result)."""
    modules = stats.get("overall", stats).get("modules", {})
    records = [
        {
            "module": path,
            "layer": entry["layer"],
            "expert": int(np.argmax(entry["mean_gate"])),
            "share": float(max(entry["mean_gate"])),
        }
        for path, entry in modules.items()
        if entry.get("routing") == "soft" and len(entry["mean_gate"]) > 1
    ]
    return pd.DataFrame.from_records(records, columns=["module", "layer", "expert", "share"])


def collapse_row(routing: Mapping[str, Mapping], threshold: float = COLLAPSE_THRESHOLD) -> dict:
    """C8, a check and not a test: the largest expert share over every routing_stats.json given; passed
    when none exceeds ``threshold``."""
    claim = COLLAPSE_CLAIM
    comparison = f"largest expert share vs {threshold:.2f}"
    if not routing:
        row = _row(claim, "check", comparison, claim.primary, verdict=NOT_EVALUATED)
        return row | {"note": "no routing_stats.json given (--routing)"}
    shares = pd.concat(
        [expert_shares(stats).assign(source=label) for label, stats in routing.items()], ignore_index=True
    )
    if shares.empty:
        raise UserError(
            f"C8: no soft-routed module in {', '.join(routing)}; give the Med-MoE-LoRA run's routing_stats.json"
        )
    largest = shares.loc[shares["share"].idxmax()]
    return _row(
        claim,
        "check",
        comparison,
        claim.primary,
        difference=float(largest["share"]),
        n_seeds=str(len(routing)),
        verdict=CHECK_PASSED if largest["share"] <= threshold else CHECK_FAILED,
        note=f"{largest['module']} (layer {largest['layer']}), expert {largest['expert']}, in {largest['source']}",
    )


def mean_learned_tau(adapters: Sequence[Path]) -> float | None:
    """The mean tau over every router of the learnable-tau run's adapters (one per seed); None: none given."""
    if not adapters:
        return None
    return float(pd.concat([read_temperatures(path) for path in adapters], ignore_index=True)["tau"].mean())


def _parse_pairs(pairs: Sequence[str], option: str, example: str) -> dict[str, str]:
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise UserError(f"{option} {pair!r}: expected KEY=VALUE, e.g. {example}")
        parsed[key] = value
    return parsed


def _parse_margins(pairs: Sequence[str]) -> dict[str, float]:
    margins = {}
    for metric, value in _parse_pairs(pairs, "--margins", "accuracy=1").items():
        try:
            margins[metric] = float(value)
        except ValueError:
            raise UserError(f"--margins {metric}={value}: the margin must be a number in {metric}'s units") from None
    return check_margins(margins)


def _read_routing(paths: Sequence[Path]) -> dict[str, dict]:
    routing = {}
    for path in paths:
        try:
            routing[str(path)] = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise UserError(f"--routing {path}: {error.strerror}; give the run's routing_stats.json") from None
        except json.JSONDecodeError as error:
            raise UserError(f"--routing {path}: not JSON ({error.msg}); re-run the training that wrote it") from None
    return routing


@command_main
def main(argv: list[str] | None = None) -> int:
    from medmoelora_eval.claims_report import render_claims  # the report's section; not needed to test

    parser = argparse.ArgumentParser(prog="python -m medmoelora_eval.claims", description=__doc__.split("\n")[0])
    parser.add_argument("--eval-dir", type=Path, default=Path("results/eval"))
    parser.add_argument("--runs", nargs="+", required=True, metavar="ROLE=RUN", help=f"roles: {', '.join(ROLES)}")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds to pool (seed<k>/); default: all")
    parser.add_argument("--routing", type=Path, nargs="*", default=[], help="Med-MoE-LoRA routing_stats.json files")
    parser.add_argument(
        "--learned-tau", type=Path, nargs="*", default=[], help="the learnable-tau run's adapter_model.safetensors"
    )
    parser.add_argument(
        "--margins", nargs="*", default=[], metavar="METRIC=M", help=f"non-inferiority margins; {DEFAULT_MARGINS}"
    )
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples (secondary rows)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the bootstrap draws")
    parser.add_argument("--out", type=Path, required=True, help="claims CSV")
    parser.add_argument("--markdown", type=Path, help="also write the report's Claims section here")
    args = parser.parse_args(argv)
    if args.resamples < 1:
        raise UserError(f"--resamples {args.resamples}: must be at least 1 (10000 is the default)")
    runs = resolve_roles(_parse_pairs(args.runs, "--runs", "med_moe_lora=med_moe_lora"))
    margins = _parse_margins(args.margins)
    samples = load_samples(args.eval_dir, runs.values(), args.seeds)
    routing, learned_tau = _read_routing(args.routing), mean_learned_tau(args.learned_tau)
    table = claims_table(samples, runs, routing, learned_tau, margins, args.resamples, args.seed)
    section = render_claims(table)
    atomic.write_text(args.out, table.to_csv(index=False, lineterminator="\n", float_format="%.6g"))
    if args.markdown:
        atomic.write_text(args.markdown, section)
    print(f"wrote {args.out} ({len(table)} rows)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
