"""The claims table from synthetic per-document results with planted, reversed and absent effects."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from medmoelora.errors import UserError
from medmoelora_eval import claims
from medmoelora_eval.samples import load_samples
from medmoelora_eval.stats import CONTRADICTED, INCONCLUSIVE, SUPPORTED, VERDICT_RULE
from tests.stats.synthetic import MMLU_PER_SUBJECT, SIZES, routing_stats, write_run

RESAMPLES = 500
SEEDS = [0, 1]
ROLES = {role: role for role in claims.ROLES if role not in claims.ROLE_FALLBACKS}

# Run -> (medical skill, general skill); "rolled" runs copy med_moe_lora's results onto other documents:
# the same score, no effect. Planted: C1, C4, C6 vs tau 1, C7; reversed: C2, C5, C6 vs tau 2; none: C3, C6 vs tau 0.5.
SKILLS = {
    "base": (0.0, 2.0),
    "lora": (0.5, 0.5),
    "med_moe_lora": (2.0, 1.8),
    "multi_lora": (3.5, 1.0),
    "alloc_uniform": (0.5, 1.8),
    "alloc_inverted": (3.5, 1.8),
    "tau_1": (0.0, 1.8),
    "tau_2": (3.5, 1.8),
}
ROLLED = ("uniform_moe", "tau_0p5")
EXPECTED = {
    ("C1", "med_moe_lora vs lora"): SUPPORTED,
    ("C2", "med_moe_lora vs multi_lora"): CONTRADICTED,
    ("C3", "med_moe_lora vs uniform_moe"): INCONCLUSIVE,
    ("C4", "med_moe_lora vs alloc_uniform"): SUPPORTED,
    ("C5", "med_moe_lora vs alloc_inverted"): CONTRADICTED,
    ("C6", "med_moe_lora vs tau_0p5"): INCONCLUSIVE,
    ("C6", "med_moe_lora vs tau_1"): SUPPORTED,
    ("C6", "med_moe_lora vs tau_2"): CONTRADICTED,
    ("C7", "med_moe_lora vs lora"): SUPPORTED,
}


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    for run, (medical, general) in SKILLS.items():
        write_run(root, run, medical, general, seeds=None if run == "base" else SEEDS)
    for run in ROLLED:
        write_run(root, run, *SKILLS["med_moe_lora"], seeds=SEEDS, roll=True)
    return root


@pytest.fixture(scope="module")
def table(eval_dir):
    routing = {"seed0": routing_stats({"model.layers.5.mlp.up_proj": [0.62, 0.2, 0.18]})}
    return claims.claims_table(load_samples(eval_dir, ROLES.values()), ROLES, routing, resamples=RESAMPLES)


def test_every_claim_gets_its_planted_verdict_on_every_measure(table):
    tested = table[table["claim"] != "C8"]
    found = tested.groupby(["claim", "comparison"])["verdict"].unique().map(list).to_dict()
    assert found == {key: [verdict] for key, verdict in EXPECTED.items()}
    assert list(table.columns) == list(claims.COLUMNS)
    assert set(tested["n_seeds"]) == {"2/2"}
    assert (tested["resamples"] == RESAMPLES).all()


def test_no_effect_rows_have_a_zero_difference_and_a_detectable_effect(table):
    none = table[table["comparison"].isin(["med_moe_lora vs uniform_moe", "med_moe_lora vs tau_0p5"])]
    assert (none["difference"].abs() < 1e-9).all()
    assert (none["ci_lo"] < 0).all() and (none["ci_hi"] > 0).all()
    assert (none["p_value"] > 0.5).all()
    assert (none["mde_80"] > 0).all()


def test_c1_to_c6_use_accuracy_and_gold_log_probability_with_the_papers_effects(table):
    c2 = table[table["claim"] == "C2"].set_index("metric")
    assert list(c2.index) == ["accuracy", "gold_logprob"]
    assert c2.loc["accuracy", "paper_effect"] == pytest.approx(4.5)
    assert pd.isna(c2.loc["gold_logprob", "paper_effect"])
    assert (c2["scope"] == "medqa").all()
    c4 = table[(table["claim"] == "C4") & (table["metric"] == "accuracy")]
    assert c4["paper_effect"].tolist() == [pytest.approx(2.7)]
    assert c4["n_documents"].tolist() == [
        SIZES["medqa"] + SIZES["pubmedqa"] + 6 * MMLU_PER_SUBJECT
    ]  # medical average: the three tasks


def test_c6_states_its_tolerance(table):
    c6 = table[table["claim"] == "C6"]
    assert c6["note"].str.match(r"tolerance m = [\d.]+, p at -m (<0\.001|= [\d.]+)$").all()


def test_c7_covers_every_forgetting_measure_against_the_base_model(table):
    c7 = table[table["claim"] == "C7"]
    assert list(zip(c7["scope"], c7["metric"], strict=True)) == [
        ("gsm8k", "accuracy"),
        ("mmlu_general", "accuracy"),
        ("mmlu_general", "gold_logprob"),
        ("general_text", "bits_per_byte"),
    ]
    assert c7["paper_effect"].tolist()[0] == pytest.approx(3.3)
    assert c7["note"].str.match(r"change vs base: med_moe_lora [+-][\d.]+, lora [+-][\d.]+").all()
    bits = c7[c7["metric"] == "bits_per_byte"].iloc[0]
    assert bits["difference"] < 0 and bits["ci_hi"] < 0  # lower is better: Med-MoE-LoRA's is lower


def test_c8_reports_the_largest_expert_share(table):
    c8 = table[table["claim"] == "C8"].iloc[0]
    assert c8["verdict"] == SUPPORTED
    assert c8["difference"] == pytest.approx(0.62)
    assert "model.layers.5.mlp.up_proj (layer 5), expert 0, in seed0" in c8["note"]


def test_c8_is_contradicted_by_a_collapsed_expert_in_any_seed():
    routing = {
        "seed0": routing_stats({"model.layers.1.mlp.up_proj": [0.5, 0.5]}),
        "seed1": routing_stats({"model.layers.9.self_attn.q_proj": [0.02, 0.95, 0.03]}),
    }
    row = claims.collapse_row(routing)
    assert row["verdict"] == CONTRADICTED
    assert row["difference"] == pytest.approx(0.95)
    assert row["note"].startswith("model.layers.9.self_attn.q_proj (layer 9), expert 1, in seed1")


def test_c8_needs_a_soft_routed_run():
    with pytest.raises(UserError, match="no soft-routed module in lora"):
        claims.collapse_row({"lora": {"by_task": {}, "overall": {"layers": {}, "modules": {}}}})
    task_routed = routing_stats({"model.layers.1.mlp.up_proj": [0.0, 1.0]}, routing="task")
    with pytest.raises(UserError, match="no soft-routed module"):
        claims.collapse_row({"multi_lora": task_routed})
    assert claims.collapse_row({})["verdict"] == claims.NOT_EVALUATED


def test_claims_without_their_runs_are_listed_as_not_evaluated(eval_dir):
    runs = {"med_moe_lora": "med_moe_lora", "lora": "lora"}
    table = claims.claims_table(load_samples(eval_dir, runs.values()), runs, resamples=200)
    verdicts = table.groupby("claim")["verdict"].unique().map(list).to_dict()
    assert verdicts["C1"] == [SUPPORTED]
    for claim in ("C2", "C3", "C4", "C5", "C6", "C8"):
        assert verdicts[claim] == [claims.NOT_EVALUATED]
    assert "no run for role multi_lora" in table.loc[table["claim"] == "C2", "note"].iloc[0]


def test_runs_on_different_documents_are_refused(tmp_path):
    write_run(tmp_path, "med_moe_lora", 2.0, 1.0, tasks=("medqa", "pubmedqa", "mmlu"))
    write_run(tmp_path, "lora", 0.5, 1.0, tasks=("medqa", "pubmedqa", "mmlu"))
    lines = (tmp_path / "lora" / "medqa.samples.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "lora" / "medqa.samples.jsonl").write_text("".join(lines[:-1]))
    runs = {"med_moe_lora": "med_moe_lora", "lora": "lora"}
    with pytest.raises(UserError, match=r"C1 \(med_moe_lora vs lora\): the two runs hold different medqa documents"):
        claims.claims_table(load_samples(tmp_path, runs.values()), runs, resamples=10)


def test_markdown_section_states_the_rule_and_what_the_run_could_see(table):
    section = claims.render_claims(table)
    assert section.startswith("## Claims\n")
    assert VERDICT_RULE in section
    assert f"({RESAMPLES} resamples, numpy seed 0)" in section
    assert "| C2 " in section and "| contradicted " in section
    for row in table[table["paper_effect"].notna()].itertuples():
        expected = "too small to see the paper's effect" if row.mde_80 > row.paper_effect else "large enough"
        assert f"- {row.claim} (" in section
        assert expected in section.split(f"- {row.claim} (")[1].split("\n")[0]


def test_markdown_says_when_a_run_is_too_small_for_the_papers_effect():
    rows = pd.DataFrame.from_records(
        [
            {"claim": "C2", "comparison": "a vs b", "scope": "medqa", "metric": "accuracy", "paper_effect": 4.5,
             "difference": 1.0, "ci_lo": -10.0, "ci_hi": 12.0, "p_value": 0.8, "mde_80": 12.3, "n_documents": 25,
             "n_seeds": "1/1", "verdict": INCONCLUSIVE, "note": ""},
            {"claim": "C4", "comparison": "a vs c", "scope": "medical_average", "metric": "accuracy",
             "paper_effect": 2.7, "difference": 3.0, "ci_lo": 1.0, "ci_hi": 5.0, "p_value": 0.01, "mde_80": 2.0,
             "n_documents": 900, "n_seeds": "3/3", "verdict": SUPPORTED, "note": ""},
        ]
    ).assign(resamples=100, seed=0)  # fmt: skip
    section = claims.render_claims(rows)
    assert (
        "C2 (MedQA accuracy (points), a vs b): this run is too small to see the paper's effect (4.5 points)" in section
    )
    assert "differences of about 12.3 points or more" in section
    assert (
        "C4 (Medical avg accuracy (points), a vs c): this run is large enough to see the paper's effect (2.7 points;"
        in section
    )
    assert re.search(r"\| 1\.0 \[-10\.0, 12\.0\] +\| 0\.800 +\| 12\.3 ", section)  # our rounding, kept


def test_cli_writes_the_table_and_the_section(tmp_path):
    eval_dir = tmp_path / "eval"
    write_run(eval_dir, "med_moe_lora", 2.0, 1.8, tasks=("medqa", "pubmedqa", "mmlu"))
    write_run(eval_dir, "lora", 0.5, 0.5, tasks=("medqa", "pubmedqa", "mmlu"))
    routing = tmp_path / "routing_stats.json"
    routing.write_text(json.dumps(routing_stats({"model.layers.2.mlp.up_proj": [0.5, 0.5]})))
    out, markdown = tmp_path / "claims.csv", tmp_path / "claims.md"
    runs = ["med_moe_lora=med_moe_lora", "lora=lora"]
    argv = ["--eval-dir", str(eval_dir), "--runs", *runs, "--routing", str(routing), "--out", str(out)]
    assert claims.main([*argv, "--markdown", str(markdown), "--resamples", "200"]) == 0
    written = pd.read_csv(out).set_index("claim")
    assert set(written.index) == {f"C{i}" for i in range(1, 9)}
    assert written.loc["C1", "verdict"].tolist() == [SUPPORTED, SUPPORTED]
    assert written.loc["C8", "verdict"] == SUPPORTED
    assert markdown.read_text().startswith("## Claims")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--runs", "med_moe_lora=med_moe_lora", "lorra=lora"],
            "error: unknown role 'lorra'; valid: .* Did you mean 'lora'",
        ),
        (["--runs", "med_moe_lora"], "error: --runs 'med_moe_lora': expected ROLE=RUN"),
        (["--runs", "lora=lora", "--routing", "missing.json"], "error: --routing missing.json: No such file"),
        (["--runs", "lora=nothing"], "error: no evaluation results for run 'nothing'"),
        (["--runs", "lora=lora", "--resamples", "0"], "error: --resamples 0: must be at least 1"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(eval_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "claims.csv"
    assert claims.main(["--eval-dir", str(eval_dir), *argv, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    assert re.match(message, error)
    assert not out.exists()


def test_c7_needs_the_base_run_on_the_same_documents(tmp_path):
    for run, (medical, general) in (("base", (0.0, 2.0)), ("med_moe_lora", (2.0, 1.8)), ("lora", (0.5, 0.5))):
        write_run(tmp_path, run, medical, general, tasks=("medqa", "pubmedqa", "mmlu", "gsm8k"))
    lines = (tmp_path / "base" / "gsm8k.samples.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "base" / "gsm8k.samples.jsonl").write_text("".join(lines[1:]))
    runs = {"base": "base", "med_moe_lora": "med_moe_lora", "lora": "lora"}
    with pytest.raises(UserError, match=r"C7: the base run 'base' was evaluated on other gsm8k documents"):
        claims.claims_table(load_samples(tmp_path, runs.values()), runs, resamples=10)


def test_identical_runs_are_never_supported_as_at_least_as_good(tmp_path):
    # tau_1 answers every document as the learnable-tau run does (a tau that did not move): no variance,
    # so "at least as good" is untested, not supported (the shifted sign-flip test gave p = 2/64 here)
    for run in ("med_moe_lora", "tau_1"):
        write_run(tmp_path, run, 2.0, 1.8, tasks=("medqa", "pubmedqa", "mmlu"))
    runs = {"med_moe_lora": "med_moe_lora", "tau_1": "tau_1"}
    table = claims.claims_table(load_samples(tmp_path, runs.values()), runs, resamples=200)
    c6 = table[(table["claim"] == "C6") & (table["comparison"] == "med_moe_lora vs tau_1")]
    assert len(c6) == 2 and set(c6["verdict"]) == {INCONCLUSIVE}
    assert c6["note"].str.contains("no document differs between the runs: inconclusive").all()
