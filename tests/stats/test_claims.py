"""The claims table from synthetic per-document results with planted, reversed and absent effects."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from medmoelora.errors import UserError
from medmoelora_eval import claims
from medmoelora_eval.claims_report import render_claims
from medmoelora_eval.inference import holm
from medmoelora_eval.samples import load_samples
from medmoelora_eval.stats import CONTRADICTED, INCONCLUSIVE, SUPPORTED
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
CLAIM_VERDICTS = {
    "C1": SUPPORTED,
    "C2": CONTRADICTED,
    "C3": INCONCLUSIVE,
    "C4": SUPPORTED,
    "C5": CONTRADICTED,
    "C6": CONTRADICTED,  # contradicted by tau 2, whatever the others say
    "C7": SUPPORTED,
}
PRIMARY_VERDICTS = {
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


def test_one_verdict_per_claim_first_then_its_rows(table):
    assert list(table.columns) == list(claims.COLUMNS)
    for claim, verdict in CLAIM_VERDICTS.items():
        rows = table[table["claim"] == claim]
        assert rows["row"].iloc[0] == "claim" and (rows["row"] == "claim").sum() == 1
        assert rows["verdict"].iloc[0] == verdict, claim
    primaries = table[table["row"] == "primary"]
    found = {(row.claim, row.comparison): row.verdict for row in primaries.itertuples(index=False)}
    assert found == PRIMARY_VERDICTS
    assert set(primaries["n_seeds"]) == {"2/2"} and set(primaries["about"]) == {"the methods"}
    assert primaries["method"].str.startswith("random-effects t").all()
    assert (table["resamples"] == RESAMPLES).all()


def test_holm_adjusts_the_seven_claims_each_direction_apart(table):
    rows = table[table["row"] == "claim"]
    assert list(rows["claim"]) == [f"C{i}" for i in range(1, 8)]
    assert rows["p_adjusted"].tolist() == pytest.approx(holm(rows["p_value"].tolist()).tolist())
    assert rows["p_contradict_adjusted"].tolist() == pytest.approx(holm(rows["p_contradict"].tolist()).tolist())
    assert (rows["p_adjusted"] >= rows["p_value"]).all()
    decided = rows[rows["verdict"] == SUPPORTED]
    assert (decided["p_adjusted"] < 0.025).all()


def test_no_effect_rows_have_a_zero_difference_and_a_detectable_effect(table):
    none = table[(table["row"] == "primary") & table["comparison"].eq("med_moe_lora vs uniform_moe")]
    assert (none["difference"].abs() < 1e-9).all()
    assert (none["ci_lo"] < 0).all() and (none["ci_hi"] > 0).all()
    assert (none["p_value"] > 0.4).all()
    assert (none["mde_80"] > 0).all() and (none["n_discordant"] >= 10).all()


def test_primary_endpoints_are_accuracy_and_secondaries_never_decide(table):
    primaries = table[table["row"].isin(["claim", "primary"]) & table["claim"].ne("C8")]
    assert set(primaries["metric"]) == {"accuracy"}
    c2 = table[table["claim"] == "C2"].set_index("row")
    assert c2.loc["claim", "paper_effect"] == pytest.approx(4.5) and c2.loc["claim", "scope"] == "medqa"
    assert sorted(c2.loc["secondary", "metric"]) == ["brier", "gold_logprob"]
    c4 = table[(table["claim"] == "C4") & (table["row"] == "claim")]
    assert c4["paper_effect"].tolist() == [pytest.approx(2.7)]
    assert c4["n_documents"].tolist() == [SIZES["medqa"] + SIZES["pubmedqa"] + 6 * MMLU_PER_SUBJECT]
    secondaries = table[table["row"] == "secondary"]
    assert set(secondaries["verdict"]) <= {claims.CONSISTENT, claims.NOT_CONSISTENT}
    assert secondaries["p_value"].isna().all() and (secondaries["method"] == "two-way bootstrap, descriptive").all()


def test_c6_is_an_intersection_union_test_with_an_absolute_margin(table):
    c6 = table[table["claim"] == "C6"]
    claim_row = c6[c6["row"] == "claim"].iloc[0]
    primaries = c6[c6["row"] == "primary"]
    assert (c6.loc[c6["row"] != "secondary", "margin"] == claims.DEFAULT_MARGINS["accuracy"]).all()
    assert claim_row["p_value"] == pytest.approx(primaries["p_value"].max())
    assert claim_row["p_contradict"] == pytest.approx(min(1.0, 3 * primaries["p_contradict"].min()))
    assert "each of 3 comparisons must be supported" in claim_row["note"]


def test_c7_tests_gsm8k_and_reports_every_forgetting_measure(table):
    c7 = table[table["claim"] == "C7"]
    assert list(zip(c7["row"], c7["scope"], c7["metric"], strict=True)) == [
        ("claim", "gsm8k", "accuracy"),
        ("primary", "gsm8k", "accuracy"),
        ("secondary", "mmlu_general", "accuracy"),
        ("secondary", "mmlu_general", "gold_logprob"),
        ("secondary", "general_text", "bits_per_byte"),
    ]
    assert c7["paper_effect"].tolist()[0] == pytest.approx(3.3)
    rows = c7[c7["row"] != "claim"]
    assert rows["note"].str.match(r"change vs base: med_moe_lora [+-][\d.]+, lora [+-][\d.]+").all()
    bits = c7[c7["metric"] == "bits_per_byte"].iloc[0]
    assert bits["difference"] < 0 and bits["ci_hi"] < 0  # lower is better: Med-MoE-LoRA's is lower
    assert bits["verdict"] == claims.CONSISTENT


def test_c8_is_a_check_with_the_largest_expert_share(table):
    c8 = table[table["claim"] == "C8"].iloc[0]
    assert c8["row"] == "check" and c8["verdict"] == claims.CHECK_PASSED
    assert c8["difference"] == pytest.approx(0.62)
    assert "model.layers.5.mlp.up_proj (layer 5), expert 0, in seed0" in c8["note"]


def test_c8_fails_on_a_collapsed_expert_in_any_seed():
    routing = {
        "seed0": routing_stats({"model.layers.1.mlp.up_proj": [0.5, 0.5]}),
        "seed1": routing_stats({"model.layers.9.self_attn.q_proj": [0.02, 0.95, 0.03]}),
    }
    row = claims.collapse_row(routing)
    assert row["verdict"] == claims.CHECK_FAILED
    assert row["difference"] == pytest.approx(0.95)
    assert row["note"].startswith("model.layers.9.self_attn.q_proj (layer 9), expert 1, in seed1")


def test_c8_needs_a_soft_routed_run():
    with pytest.raises(UserError, match="no soft-routed module in lora"):
        claims.collapse_row({"lora": {"by_task": {}, "overall": {"layers": {}, "modules": {}}}})
    task_routed = routing_stats({"model.layers.1.mlp.up_proj": [0.0, 1.0]}, routing="task")
    with pytest.raises(UserError, match="no soft-routed module"):
        claims.collapse_row({"multi_lora": task_routed})
    assert claims.collapse_row({})["verdict"] == claims.NOT_EVALUATED


def test_claims_without_their_runs_are_not_evaluated_and_stay_in_the_family(eval_dir):
    runs = {"med_moe_lora": "med_moe_lora", "lora": "lora"}
    table = claims.claims_table(load_samples(eval_dir, runs.values()), runs, resamples=200)
    verdicts = table[table["row"].isin(["claim", "check"])].set_index("claim")["verdict"].to_dict()
    assert verdicts["C1"] == SUPPORTED
    for claim in ("C2", "C3", "C4", "C5", "C6", "C8"):
        assert verdicts[claim] == claims.NOT_EVALUATED
    assert "no run for role multi_lora" in table.loc[table["claim"] == "C2", "note"].iloc[0]
    c1 = table[(table["claim"] == "C1") & (table["row"] == "claim")].iloc[0]
    assert c1["p_adjusted"] == pytest.approx(min(1.0, 7 * c1["p_value"]))  # a family of 7 whatever was run


def test_runs_on_different_documents_are_refused(tmp_path):
    write_run(tmp_path, "med_moe_lora", 2.0, 1.0, tasks=("medqa", "pubmedqa", "mmlu"))
    write_run(tmp_path, "lora", 0.5, 1.0, tasks=("medqa", "pubmedqa", "mmlu"))
    lines = (tmp_path / "lora" / "medqa.samples.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "lora" / "medqa.samples.jsonl").write_text("".join(lines[:-1]))
    runs = {"med_moe_lora": "med_moe_lora", "lora": "lora"}
    with pytest.raises(UserError, match=r"C1 \(med_moe_lora vs lora\): the two runs hold different medqa documents"):
        claims.claims_table(load_samples(tmp_path, runs.values()), runs, resamples=10)


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory):
    """med_moe_lora against LoRA and fixed tau 1, one seed each."""
    root = tmp_path_factory.mktemp("one_seed")
    for run in ("base", "med_moe_lora", "lora", "tau_1"):
        write_run(root, run, *SKILLS[run])
    return root


def test_one_seed_tests_documents_and_says_its_verdicts_are_about_these_models(one_seed):
    runs = {run: run for run in ("base", "med_moe_lora", "lora", "tau_1")}
    table = claims.claims_table(load_samples(one_seed, runs.values()), runs, resamples=200)
    c1 = table[(table["claim"] == "C1") & (table["row"] == "primary")].iloc[0]
    assert c1["method"] == "exact McNemar" and c1["about"] == "these trained models"
    tau_1 = table[(table["row"] == "primary") & (table["comparison"] == "med_moe_lora vs tau_1")].iloc[0]
    assert tau_1["method"] == "Tango score test" and tau_1["verdict"] == SUPPORTED
    section = render_claims(table)
    assert "verdict (about these trained models)" in section
    assert "so a verdict is about these trained models, not about the methods" in section


def test_a_learned_tau_next_to_a_fixed_one_is_not_tested(one_seed):
    runs = {run: run for run in ("med_moe_lora", "tau_1")}
    samples = load_samples(one_seed, runs.values())
    table = claims.claims_table(samples, runs, learned_tau=1.03, resamples=50)
    tau_1 = table[(table["row"] == "primary") & (table["comparison"] == "med_moe_lora vs tau_1")].iloc[0]
    assert tau_1["verdict"] == claims.NOT_TESTED and pd.isna(tau_1["p_value"])
    assert tau_1["note"].startswith("learned tau 1.030 is within 5% of the fixed 1")
    c6 = table[(table["claim"] == "C6") & (table["row"] == "claim")].iloc[0]
    assert c6["verdict"] != SUPPORTED and c6["p_value"] == 1.0
    moved = claims.claims_table(samples, runs, learned_tau=1.2, resamples=50)
    moved_tau_1 = moved[(moved["row"] == "primary") & (moved["comparison"] == "med_moe_lora vs tau_1")].iloc[0]
    assert moved_tau_1["verdict"] != claims.NOT_TESTED and "learned tau 1.200 vs fixed 1" in moved_tau_1["note"]


def test_runs_with_one_seed_against_several_are_not_tested(tmp_path):
    write_run(tmp_path, "med_moe_lora", 2.0, 1.8, seeds=[0, 1], tasks=("medqa", "pubmedqa", "mmlu"))
    write_run(tmp_path, "lora", 0.5, 0.5, seeds=[0], tasks=("medqa", "pubmedqa", "mmlu"))
    runs = {"med_moe_lora": "med_moe_lora", "lora": "lora"}
    table = claims.claims_table(load_samples(tmp_path, runs.values()), runs, resamples=20)
    c1 = table[(table["claim"] == "C1") & (table["row"] == "primary")].iloc[0]
    assert c1["verdict"] == claims.NOT_TESTED and "train both with the same number of seeds" in c1["note"]


def test_markdown_leads_with_the_verdicts_then_the_rows_and_the_check(table):
    section = render_claims(table)
    assert section.startswith("## Claims\n")
    assert "docs/analysis-plan.md" in section
    assert "verdict (about the methods)" in section
    assert section.index("| C1 ") < section.index("### What each verdict rests on") < section.index("### Check")
    assert f"({RESAMPLES} resamples, numpy seed 0)" in section
    assert re.search(r"- passed: largest share 0\.62; model\.layers\.5", section)
    c3 = section.split("- C3 (")[1].split("\n")[0]
    assert "would find a true difference of" in c3 and "probability 80%" in c3


def test_markdown_gives_no_detectable_effect_when_few_documents_differ():
    row = {
        "claim": "C2", "row": "claim", "comparison": "a vs b", "scope": "medqa", "metric": "accuracy",
        "paper_effect": 4.5, "difference": 10.0, "ci_lo": -12.0, "ci_hi": 30.0, "p_value": 0.2,
        "p_adjusted": 1.0, "mde_80": float("nan"), "power_at_margin": float("nan"), "n_documents": 30,
        "n_discordant": 4, "n_seeds": "1/1", "about": "these trained models", "verdict": INCONCLUSIVE, "note": "",
    }  # fmt: skip
    rows = [row, row | {"row": "primary", "p_adjusted": float("nan")}]
    table = pd.DataFrame.from_records(rows).reindex(columns=claims.COLUMNS).assign(resamples=9, seed=0)
    section = render_claims(table)
    sentence = section.split("- C2 (a vs b)")[1].split("\n")[0]
    assert "fewer than 10 documents differ (30 (4))" in sentence
    assert "rules out only effects outside it" in sentence and "would find" not in sentence
    assert re.search(r"\| 10\.0 \[-12\.0, 30\.0\] +\| 0\.200 +\| 1\.000 ", section)  # our rounding, kept


def test_cli_writes_the_table_and_the_section(tmp_path):
    eval_dir = tmp_path / "eval"
    write_run(eval_dir, "med_moe_lora", 2.0, 1.8, tasks=("medqa", "pubmedqa", "mmlu"))
    write_run(eval_dir, "lora", 0.5, 0.5, tasks=("medqa", "pubmedqa", "mmlu"))
    routing = tmp_path / "routing_stats.json"
    routing.write_text(json.dumps(routing_stats({"model.layers.2.mlp.up_proj": [0.5, 0.5]})))
    out, markdown = tmp_path / "claims.csv", tmp_path / "claims.md"
    runs = ["med_moe_lora=med_moe_lora", "lora=lora"]
    argv = ["--eval-dir", str(eval_dir), "--runs", *runs, "--routing", str(routing), "--out", str(out)]
    assert claims.main([*argv, "--markdown", str(markdown), "--resamples", "200", "--margins", "accuracy=2"]) == 0
    written = pd.read_csv(out)
    assert set(written["claim"]) == {f"C{i}" for i in range(1, 9)}
    assert written.loc[written["claim"] == "C1", "verdict"].iloc[0] == SUPPORTED
    assert written.loc[written["claim"] == "C6", "margin"].iloc[0] == 2.0
    assert written.loc[written["claim"] == "C8", "verdict"].iloc[0] == claims.CHECK_PASSED
    assert markdown.read_text().startswith("## Claims")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--runs", "med_moe_lora=med_moe_lora", "lorra=lora"],
            "error: unknown role 'lorra'; valid: .* Did you mean 'lora'",
        ),
        (["--runs", "med_moe_lora"], "error: --runs 'med_moe_lora': expected KEY=VALUE"),
        (["--runs", "lora=lora", "--routing", "missing.json"], "error: --routing missing.json: No such file"),
        (["--runs", "lora=nothing"], "error: no evaluation results for run 'nothing'"),
        (["--runs", "lora=lora", "--resamples", "0"], "error: --resamples 0: must be at least 1"),
        (["--runs", "lora=lora", "--margins", "acuracy=1"], "error: unknown metric in the margins 'acuracy'"),
        (["--runs", "lora=lora", "--margins", "accuracy=-1"], "error: margin of accuracy is -1.0: must be > 0"),
        (["--runs", "lora=lora", "--margins", "accuracy=one"], "error: --margins accuracy=one: the margin must be a"),
        (["--runs", "lora=lora", "--learned-tau", "missing.safetensors"], "error: missing.safetensors: cannot read"),
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
    # so "at least as good" is not tested, never supported (the old shifted sign-flip test gave p = 2/64)
    for run in ("med_moe_lora", "tau_1"):
        write_run(tmp_path, run, 2.0, 1.8, tasks=("medqa", "pubmedqa", "mmlu"))
    runs = {"med_moe_lora": "med_moe_lora", "tau_1": "tau_1"}
    table = claims.claims_table(load_samples(tmp_path, runs.values()), runs, resamples=200)
    c6 = table[(table["claim"] == "C6") & (table["comparison"] == "med_moe_lora vs tau_1")]
    primary = c6[c6["row"] == "primary"].iloc[0]
    assert primary["verdict"] == claims.NOT_TESTED
    assert primary["note"].startswith("no document differs between the runs")
    assert SUPPORTED not in set(table.loc[table["claim"] == "C6", "verdict"])
