"""The paper's claims as data, each measured as a paired difference between two runs with a verdict.

    python -m medmoelora_eval.claims --eval-dir results/eval \
        --runs base=base lora=lora multi_lora=multi_lora uniform_moe=uniform_moe med_moe_lora=med_moe_lora \
               alloc_uniform=alloc_uniform alloc_inverted=alloc_inverted tau_0p5=tau_0p5 tau_1=tau_1 tau_2=tau_2 \
        --routing results/train/med_moe_lora/routing_stats.json --out results/claims.csv --markdown claims.md

``--runs`` maps the claims' roles (`ROLES`) to run names (directories under ``--eval-dir``);
``alloc_asymmetric`` and ``tau_learnable`` default to the ``med_moe_lora`` run. A claim whose roles
are not all given is listed as "not evaluated". ``--routing`` takes the Med-MoE-LoRA run's
routing_stats.json files (one per seed) for C8.

C1-C6 are measured on accuracy and on the gold answer's log-probability (the continuous metric of the
same requests, which usually separates methods with fewer documents than accuracy). The medical average
is the mean of the MedQA, PubMedQA and MMLU-medical scores, each task counting once whatever its size;
its interval resamples documents within each task independently (`medmoelora_eval.stats`).

C7 ("loses less general skill") is a difference in differences against the base model, paired on
documents, on every forgetting measure the results hold: GSM8K accuracy, MMLU's non-medical subjects
(accuracy, gold log-probability) and bits per byte on every rolling-loglikelihood task. On the same
documents (A - base) - (B - base) = A - B, so its interval is that of A - B; the note gives each run's
change against the base model. C8 is a check, not a test: the largest expert share in any soft-routed
module, against the paper's collapse threshold.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medmoelora import atomic
from medmoelora.errors import UserError, command_main, unknown_name
from medmoelora.routing_stats import COLLAPSE_THRESHOLD
from medmoelora.tasks import EVAL_GSM8K, EVAL_MEDQA
from medmoelora_eval.samples import (
    MEDICAL_AVERAGE,
    METRICS,
    MMLU_GENERAL,
    Stratum,
    has_metric,
    load_samples,
    scope_label,
    strata,
)
from medmoelora_eval.stats import (
    AT_LEAST_AS_GOOD,
    BEATS,
    CONFIDENCE,
    CONTRADICTED,
    INCONCLUSIVE,
    INTERVAL_METHOD,
    MDE_METHOD,
    NONINFERIORITY_FRACTION,
    RESAMPLES,
    SEED,
    SUPPORTED,
    VERDICT_RULE,
    estimate,
    paired_comparison,
    sign_flip_p_value,
    verdict,
)

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
ROLLING = "*rolling"  # stands for every task whose documents carry loglikelihood and bytes
NOT_EVALUATED = "not evaluated"
COLUMNS = (
    "claim",
    "comparison",
    "scope",
    "metric",
    "paper_effect",
    "difference",
    "ci_lo",
    "ci_hi",
    "p_value",
    "mde_80",
    "n_documents",
    "n_seeds",
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
    measures: tuple[Measure, ...]
    kind: str = BEATS
    only_where_available: bool = False  # measures missing from the results are left out, not an error
    against_base: bool = False  # a difference in differences against the base run (the note gives both changes)


def _medical(scope: str, paper_effect: float | None = None) -> tuple[Measure, ...]:
    return (Measure(scope, "accuracy", paper_effect), Measure(scope, "gold_logprob"))


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "C1", "Med-MoE-LoRA beats LoRA on the medical average", (("med_moe_lora", "lora"),), _medical(MEDICAL_AVERAGE)
    ),
    Claim(
        "C2",
        "Med-MoE-LoRA beats Multi-LoRA on MedQA (paper: 65.8 vs 61.3)",
        (("med_moe_lora", "multi_lora"),),
        _medical(EVAL_MEDQA.name, round(65.8 - 61.3, 1)),
    ),
    Claim(
        "C3",
        "Med-MoE-LoRA beats the uniform MoE-LoRA on the medical average",
        (("med_moe_lora", "uniform_moe"),),
        _medical(MEDICAL_AVERAGE),
    ),
    Claim(
        "C4",
        "Asymmetric allocation beats uniform allocation on the medical average (paper: 59.5 vs 56.8)",
        (("alloc_asymmetric", "alloc_uniform"),),
        _medical(MEDICAL_AVERAGE, round(59.5 - 56.8, 1)),
    ),
    Claim(
        "C5",
        "Top-heavy allocation beats the inverted, bottom-heavy one on the medical average",
        (("alloc_asymmetric", "alloc_inverted"),),
        _medical(MEDICAL_AVERAGE),
    ),
    Claim(
        "C6",
        "Learnable tau is at least as good as each fixed tau in {0.5, 1, 2} on the medical average",
        (("tau_learnable", "tau_0p5"), ("tau_learnable", "tau_1"), ("tau_learnable", "tau_2")),
        _medical(MEDICAL_AVERAGE),
        kind=AT_LEAST_AS_GOOD,
    ),
    Claim(
        "C7",
        "Med-MoE-LoRA loses less general skill than LoRA (paper: GSM8K -0.3 vs -3.6), on every forgetting measure",
        (("med_moe_lora", "lora"),),
        (
            Measure(EVAL_GSM8K.name, "accuracy", round(-0.3 - -3.6, 1)),
            Measure(MMLU_GENERAL, "accuracy"),
            Measure(MMLU_GENERAL, "gold_logprob"),
            Measure(ROLLING, "bits_per_byte"),
        ),
        only_where_available=True,
        against_base=True,
    ),
)
COLLAPSE_CLAIM = Claim(
    "C8",
    f"No expert collapse: no expert takes more than {COLLAPSE_THRESHOLD:.0%} of the routing weight in any layer",
    (),
    (),
)


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


def claims_table(
    samples: pd.DataFrame,
    runs: Mapping[str, str],
    routing: Mapping[str, Mapping] | None = None,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> pd.DataFrame:
    """One row per claim, comparison and measure (`COLUMNS`), from per-document results (`load_samples`).

    ``runs`` maps roles to run names; ``routing`` maps a label (e.g. the file) to a routing_stats.json
    content of the Med-MoE-LoRA run, for C8.
    """
    runs = resolve_roles(runs)
    cached = functools.cache(lambda run, scope, metric: strata(samples, run, scope, metric))  # runs recur
    rows = []
    for claim in CLAIMS:
        for favoured, other in claim.comparisons:
            missing = [role for role in (favoured, other) if role not in runs]
            if missing:
                rows.append(_not_evaluated(claim, favoured, other, f"no run for role {', '.join(missing)}"))
                continue
            measures = _measures(claim, samples, runs[favoured], runs[other])
            if not measures:
                rows.append(_not_evaluated(claim, favoured, other, "none of its measures is in both runs' results"))
            for measure in measures:
                rows.append(_compare(claim, measure, cached, runs, favoured, other, confidence, resamples, seed))
    rows.append(collapse_row(routing or {}))
    return pd.DataFrame.from_records(rows, columns=list(COLUMNS)).assign(resamples=resamples, seed=seed)


def _measures(claim: Claim, samples: pd.DataFrame, run_a: str, run_b: str) -> list[Measure]:
    rolling = sorted(set(samples.loc[samples["bytes"].notna(), "file"]))
    expanded = [
        Measure(task, m.metric, m.paper_effect) if m.scope == ROLLING else m
        for m in claim.measures
        for task in (rolling if m.scope == ROLLING else [m.scope])
    ]
    if not claim.only_where_available:
        return expanded
    return [m for m in expanded if all(has_metric(samples, run, m.scope, m.metric) for run in (run_a, run_b))]


def _compare(
    claim: Claim,
    measure: Measure,
    values_of: Callable[[str, str, str], list[Stratum]],
    runs: Mapping[str, str],
    favoured: str,
    other: str,
    confidence: float,
    resamples: int,
    seed: int,
) -> dict:
    run_a, run_b = runs[favoured], runs[other]
    strata_a = values_of(run_a, measure.scope, measure.metric)
    strata_b = values_of(run_b, measure.scope, measure.metric)
    try:
        result = paired_comparison(strata_a, strata_b, confidence, resamples, seed)
    except UserError as error:
        raise UserError(f"{claim.id} ({run_a} vs {run_b}): {error}") from None
    higher_is_better = METRICS[measure.metric].higher_is_better
    notes = []
    tolerance, p_threshold = 0.0, result.p_value
    if claim.kind == AT_LEAST_AS_GOOD:  # the threshold is -m in the paper's direction
        tolerance = NONINFERIORITY_FRACTION * abs(estimate(strata_b))
        threshold = -tolerance if higher_is_better else tolerance
        p_threshold = sign_flip_p_value(strata_a, strata_b, resamples, seed, null_difference=threshold)
        notes.append(f"tolerance m = {tolerance:.3g}, p at -m {_p_text(p_threshold, '= ')}")
    if claim.against_base and "base" in runs:  # (a - base) - (b - base) = a - b: the changes are context
        strata_base = values_of(runs["base"], measure.scope, measure.metric)
        if [s.documents for s in strata_base] != [s.documents for s in strata_a]:
            raise UserError(
                f"{claim.id}: the base run {runs['base']!r} was evaluated on other {measure.scope} documents than "
                f"{run_a!r}; evaluate both on the same documents"
            )
        base = estimate(strata_base)
        notes.append(
            f"change vs base: {run_a} {estimate(strata_a) - base:+.3g}, {run_b} {estimate(strata_b) - base:+.3g}"
        )
    no_variance = np.isnan(result.mde)
    if no_variance:  # nothing to estimate a variance from: no test, whatever the interval says
        notes.append("no document differs between the runs: inconclusive")
    return {
        "claim": claim.id,
        "comparison": f"{run_a} vs {run_b}",
        "scope": measure.scope,
        "metric": measure.metric,
        "paper_effect": measure.paper_effect,
        "difference": result.difference,
        "ci_lo": result.lo,
        "ci_hi": result.hi,
        "p_value": result.p_value,
        "mde_80": result.mde,
        "n_documents": result.n_documents,
        "n_seeds": f"{result.n_seeds_a}/{result.n_seeds_b}",
        "verdict": INCONCLUSIVE
        if no_variance
        else verdict(
            result.lo, result.hi, p_threshold, higher_is_better=higher_is_better, kind=claim.kind, tolerance=tolerance
        ),
        "note": "; ".join(notes),
    }


def _not_evaluated(claim: Claim, favoured: str, other: str, why: str) -> dict:
    return {"claim": claim.id, "comparison": f"{favoured} vs {other}", "verdict": NOT_EVALUATED, "note": why}


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
    """C8: the largest expert share over every routing_stats.json given; supported when none exceeds ``threshold``."""
    claim = COLLAPSE_CLAIM
    if not routing:
        return _not_evaluated(claim, "med_moe_lora", "threshold", "no routing_stats.json given (--routing)")
    shares = pd.concat(
        [expert_shares(stats).assign(source=label) for label, stats in routing.items()], ignore_index=True
    )
    if shares.empty:
        raise UserError(
            f"C8: no soft-routed module in {', '.join(routing)}; give the Med-MoE-LoRA run's routing_stats.json"
        )
    largest = shares.loc[shares["share"].idxmax()]
    return {
        "claim": claim.id,
        "comparison": f"largest expert share vs {threshold:.2f}",
        "scope": "routing",
        "metric": "largest_expert_share",
        "difference": float(largest["share"]),
        "n_seeds": str(len(routing)),
        "verdict": SUPPORTED if largest["share"] <= threshold else CONTRADICTED,
        "note": f"{largest['module']} (layer {largest['layer']}), expert {largest['expert']}, in {largest['source']}",
    }


def _p_text(p_value: float, equals: str = "") -> str:
    return "<0.001" if p_value < 0.001 else f"{equals}{p_value:.3f}"


def _number(value: float, metric: str) -> str:
    return "" if pd.isna(value) else f"{value:.1f}" if metric == "accuracy" else f"{value:.3f}"


def render_claims(table: pd.DataFrame) -> str:
    """The report's "Claims" section: the table, the verdict rule, how intervals are computed, the
    smallest detectable effects and, per claim with a stated effect, whether this run could see it."""
    shown = []
    for row in table.itertuples(index=False):
        metric = row.metric if isinstance(row.metric, str) else ""
        if metric in METRICS:
            measure = f"{scope_label(row.scope)} {METRICS[metric].label}"
        else:  # C8's check
            measure = metric.replace("_", " ") + " (routing weight)" if metric else ""
        ours = _number(row.difference, metric)
        if not pd.isna(row.ci_lo):
            ours += f" [{_number(row.ci_lo, metric)}, {_number(row.ci_hi, metric)}]"
        shown.append(
            {
                "claim": row.claim,
                "comparison": row.comparison,
                "measure": measure,
                "paper": _number(row.paper_effect, metric),
                "ours [95% interval]": ours,
                "p": "" if pd.isna(row.p_value) else _p_text(row.p_value),
                "MDE (80%)": _number(row.mde_80, metric),
                "documents": "" if pd.isna(row.n_documents) else str(int(row.n_documents)),
                "seeds": row.n_seeds if isinstance(row.n_seeds, str) else "",
                "verdict": row.verdict,
                "note": row.note if isinstance(row.note, str) else "",
            }
        )
    resamples, seed = int(table["resamples"].iloc[0]), int(table["seed"].iloc[0])
    lines = [
        "## Claims",
        "",
        "Each claim of the paper as our paired difference (the run the paper favours minus the other, same "
        "documents, seeds pooled) with its 95% interval and a verdict. Accuracy is in points; gold "
        "log-probability in nats per document.",
        "",
        pd.DataFrame.from_records(shown).to_markdown(index=False, disable_numparse=True),  # keep our rounding
        "",
        *[f"- {claim.id}: {claim.statement}." for claim in (*CLAIMS, COLLAPSE_CLAIM)],
        "",
        f"**Verdict rule.** {VERDICT_RULE} C8 is a check, not a test: supported when no expert of any "
        f"soft-routed module takes more than {COLLAPSE_THRESHOLD:.0%} of its routing weight, contradicted "
        "otherwise; the largest share is shown.",
        "",
        f"**How intervals are computed.** {INTERVAL_METHOD.format(resamples=resamples, seed=seed)} C7 is a "
        "difference in differences against the base model, paired on documents; on the same documents it "
        "equals the difference between the two runs (the note gives each run's change).",
        "",
        f"**Smallest detectable effect.** {MDE_METHOD}",
        "",
        *_power_sentences(table),
    ]
    return "\n".join(lines) + "\n"


def _power_sentences(table: pd.DataFrame) -> list[str]:
    """A plain sentence per measure where the paper states an effect: could this run have seen it?"""
    sentences = []
    for row in table[table["paper_effect"].notna()].itertuples(index=False):
        what = f"{row.claim} ({scope_label(row.scope)} {METRICS[row.metric].label}, {row.comparison})"
        unit = " points" if row.metric == "accuracy" else ""
        effect = f"{abs(row.paper_effect):.1f}{unit}"
        if pd.isna(row.mde_80):
            sentences.append(f"- {what}: no document differs between the runs, so this run says nothing about it.")
        elif row.mde_80 > abs(row.paper_effect):
            sentences.append(
                f"- {what}: this run is too small to see the paper's effect ({effect}): it detects only "
                f"differences of about {row.mde_80:.1f}{unit} or more, so an inconclusive verdict here does not "
                "speak against the paper."
            )
        else:
            sentences.append(
                f"- {what}: this run is large enough to see the paper's effect ({effect}; detectable "
                f"from about {row.mde_80:.1f}{unit})."
            )
    sentences += [
        "",
        "The paper's effects were measured on Llama-3-8B; on another model they indicate a size, not a "
        "prediction. Where the paper states no effect, the MDE column is the smallest difference the "
        "comparison could see: an inconclusive verdict rules out only effects larger than about that.",
    ]
    return sentences


def _parse_runs(pairs: Sequence[str]) -> dict[str, str]:
    runs = {}
    for pair in pairs:
        role, sep, run = pair.partition("=")
        if not sep or not role or not run:
            raise UserError(f"--runs {pair!r}: expected ROLE=RUN, e.g. med_moe_lora=med_moe_lora")
        runs[role] = run
    return runs


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
    parser = argparse.ArgumentParser(prog="python -m medmoelora_eval.claims", description=__doc__.split("\n")[0])
    parser.add_argument("--eval-dir", type=Path, default=Path("results/eval"))
    parser.add_argument("--runs", nargs="+", required=True, metavar="ROLE=RUN", help=f"roles: {', '.join(ROLES)}")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds to pool (seed<k>/); default: all")
    parser.add_argument("--routing", type=Path, nargs="*", default=[], help="Med-MoE-LoRA routing_stats.json files")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap and permutation resamples")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the bootstrap and permutation draws")
    parser.add_argument("--out", type=Path, required=True, help="claims CSV")
    parser.add_argument("--markdown", type=Path, help="also write the report's Claims section here")
    args = parser.parse_args(argv)
    if args.resamples < 1:
        raise UserError(f"--resamples {args.resamples}: must be at least 1 (10000 is the default)")
    runs = resolve_roles(_parse_runs(args.runs))
    samples = load_samples(args.eval_dir, runs.values(), args.seeds)
    table = claims_table(samples, runs, _read_routing(args.routing), CONFIDENCE, args.resamples, args.seed)
    section = render_claims(table)
    atomic.write_text(args.out, table.to_csv(index=False, lineterminator="\n", float_format="%.6g"))
    if args.markdown:
        atomic.write_text(args.markdown, section)
    print(f"wrote {args.out} ({len(table)} rows)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
