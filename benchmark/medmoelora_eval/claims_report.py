"""The report's "Claims" section from the claims table (`medmoelora_eval.claims.claims_table`): one verdict
per claim first, then the rows it rests on, the collapse check, and what the run could have seen."""

from __future__ import annotations

import pandas as pd

from medmoelora.routing_stats import COLLAPSE_THRESHOLD
from medmoelora_eval.claims import CLAIMS, COLLAPSE_CLAIM, TAU_EPSILON
from medmoelora_eval.endpoints import ALPHA, MIN_DISCORDANT, POWER
from medmoelora_eval.samples import METRICS, scope_label

PLAN = "docs/analysis-plan.md"
SECONDARY_INTERVALS = (
    "95% percentile bootstrap ({resamples} resamples, numpy seed {seed}): documents are drawn with "
    "replacement, one draw for both runs (the pairing), and each run's training seeds are drawn with "
    "replacement too (seeds and documents crossed, Owen's two-way bootstrap). The medical average weighs "
    "every document alike, as the primary tests do; bits per byte is a ratio of sums, resampled as a ratio. "
    "These intervals describe; they test nothing."
)
STATEMENTS = {claim.id: claim.statement for claim in (*CLAIMS, COLLAPSE_CLAIM)}


def _p_text(p_value: float) -> str:
    return "" if pd.isna(p_value) else "<0.001" if p_value < 0.001 else f"{p_value:.3f}"


def _number(value: float, metric: str) -> str:
    return "" if pd.isna(value) else f"{value:.1f}" if metric == "accuracy" else f"{value:.3f}"


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _measure(row) -> str:
    return f"{scope_label(row.scope)} {METRICS[row.metric].label}" if row.metric in METRICS else ""


def _with_interval(row) -> str:
    shown = _number(row.difference, row.metric)
    if not pd.isna(row.ci_lo):
        shown += f" [{_number(row.ci_lo, row.metric)}, {_number(row.ci_hi, row.metric)}]"
    return shown


def verdicts_header(table: pd.DataFrame) -> str:
    """The verdict column's heading says what the verdicts are about: these trained models (one seed
    per run) or the methods (several seeds)."""
    about = sorted({a for a in table.loc[table["row"] == "claim", "about"] if isinstance(a, str) and a})
    return f"verdict (about {' / '.join(about)})" if about else "verdict"


def render_claims(table: pd.DataFrame) -> str:
    """Markdown: the verdict per claim, the rows beneath it, C8's check, and the plan's rules."""
    claims = table[table["row"] == "claim"]
    header = verdicts_header(table)
    verdicts = [
        {
            "claim": row.claim,
            "primary endpoint": _measure(row),
            "comparison": row.comparison,
            "paper": _number(row.paper_effect, row.metric),
            "ours [95% interval]": _with_interval(row),
            "p (one-sided)": _p_text(row.p_value),
            "Holm p": _p_text(row.p_adjusted),
            header: row.verdict,
            "note": _text(row.note),
        }
        for row in claims.itertuples(index=False)
    ]
    components = [
        {
            "claim": row.claim,
            "row": row.row,
            "comparison": row.comparison,
            "measure": _measure(row),
            "margin": _number(row.margin, row.metric),
            "ours [95% interval]": _with_interval(row),
            "p (one-sided)": _p_text(row.p_value),
            "method": _text(row.method),
            "documents (differ)": _documents(row),
            "seeds": _text(row.n_seeds),
            "verdict": row.verdict,
            "note": _text(row.note),
        }
        for row in table[table["row"].isin(["primary", "secondary"])].itertuples(index=False)
    ]
    lines = [
        "## Claims",
        "",
        f"Each claim of the paper tested on the primary endpoint the analysis plan ({PLAN}) fixed before any "
        "result was read: accuracy on the scope the paper names, the run the paper favours minus the other, "
        "on the same documents. Accuracy is in points; gold log-probability in nats per document.",
        "",
        _markdown(verdicts),
        "",
        *[f"- {claim.id}: {claim.statement}." for claim in CLAIMS],
        "",
        f"**Verdict rule.** {verdict_rule(table)}",
        "",
        "### What each verdict rests on",
        "",
        "Primary rows are the tests; secondary rows are descriptive (two-way bootstrap intervals, no test) "
        "and say only whether they point the way the primary does.",
        "",
        _markdown(components),
        "",
        f"**How the secondary intervals are computed.** {SECONDARY_INTERVALS.format(**_resampling(table))}",
        "",
        "### What this run could have seen",
        "",
        *_power_sentences(table[table["row"] == "primary"]),
        "",
        *_collapse_check(table[table["row"] == "check"]),
    ]
    return "\n".join(lines) + "\n"


def verdict_rule(table: pd.DataFrame) -> str:
    about = set(table.loc[table["row"] == "claim", "about"].dropna())
    seeds = (
        "With one training seed per run the tests are on documents (exact McNemar for 'beats', Tango's score "
        "test for 'at least as good'), so a verdict is about these trained models, not about the methods. "
        if "these trained models" in about
        else ""
    )
    return (
        f"{seeds}With two or more seeds per run the tests are a random-effects t over seeds and documents, "
        f"and a verdict is about the methods. Every test is one-sided at {ALPHA}. A claim with several "
        "comparisons (C6: each fixed tau) is supported only if all are (its p is their largest) and "
        "contradicted if any is (their smallest p times their number). Holm's step-down over C1-C7 adjusts "
        f"the claims' p-values, each direction its own family: supported when the adjusted p < {ALPHA}, "
        "contradicted when the opposite direction's adjusted p is, inconclusive otherwise. 'At least as "
        "good' means no worse than the margin (accuracy: the margin column, from the config). A comparison "
        f"in which no document differs, or in which the learned tau is within {TAU_EPSILON:.0%} of the fixed "
        "one (C6's manipulation check), is not tested, and a claim with such a comparison is not supported."
    )


def _documents(row) -> str:
    if pd.isna(row.n_documents):
        return ""
    differ = "" if pd.isna(row.n_discordant) else f" ({int(row.n_discordant)})"
    return f"{int(row.n_documents)}{differ}"


def _resampling(table: pd.DataFrame) -> dict[str, int]:
    return {"resamples": int(table["resamples"].iloc[0]), "seed": int(table["seed"].iloc[0])}


def _markdown(records: list[dict]) -> str:
    return pd.DataFrame.from_records(records).to_markdown(index=False, disable_numparse=True)  # keep our rounding


def _power_sentences(primaries: pd.DataFrame) -> list[str]:
    """Per primary test: what its interval rules out, and the smallest effect it could have seen (80%
    power) or its power at the margin, or why the run cannot say."""
    sentences = []
    for row in primaries.itertuples(index=False):
        what = f"- {row.claim} ({row.comparison})"
        interval = f"[{_number(row.ci_lo, 'accuracy')}, {_number(row.ci_hi, 'accuracy')}] points"
        if row.verdict in ("not evaluated", "not tested"):
            sentences.append(f"{what}: {row.verdict}; {_text(row.note) or 'see its rows'}.")
        elif not pd.isna(row.power_at_margin):
            sentences.append(
                f"{what}: its interval {interval} rules out effects outside it; if the runs were truly "
                f"equal, a run of this size would support 'no worse than {row.margin:g} points' with "
                f"probability {row.power_at_margin:.2f} (power at the margin, one comparison)."
            )
        elif not pd.isna(row.mde_80):
            paper = "" if pd.isna(row.paper_effect) else f"; the paper's effect is {row.paper_effect:.1f}"
            sentences.append(
                f"{what}: its interval {interval} rules out effects outside it; a run of this size would "
                f"find a true difference of {row.mde_80:.1f} points with probability {POWER:.0%} (one-sided "
                f"{ALPHA}, before Holm's adjustment){paper}."
            )
        elif pd.isna(row.ci_lo):
            sentences.append(f"{what}: {_text(row.note) or 'no interval'}.")
        else:
            sentences.append(
                f"{what}: fewer than {MIN_DISCORDANT} documents differ ({_documents(row)}), too few to say "
                f"which effects it could have seen; its interval {interval} rules out only effects outside it."
            )
    return [
        *sentences,
        "",
        "The paper's effects were measured on Llama-3-8B; on another model they indicate a size, not a prediction.",
    ]


def _collapse_check(rows: pd.DataFrame) -> list[str]:
    lines = [
        "### Check: expert collapse (C8)",
        "",
        f"{STATEMENTS['C8']}. A check, not a test, and not counted among the claims: passed when no expert "
        f"of any soft-routed module takes more than {COLLAPSE_THRESHOLD:.0%} of its routing weight.",
        "",
    ]
    for row in rows.itertuples(index=False):
        share = "" if pd.isna(row.difference) else f"largest share {row.difference:.2f}; "
        lines.append(f"- {row.verdict}: {share}{_text(row.note)}")
    return lines
