"""The whole workflow (`all`) end to end on config/tiny.yaml and the real raw data, in a scratch directory.

- results/table1.csv matches the committed golden file: parameter counts exactly, scores and their
  interval bounds within SCORE_TOLERANCE percentage points (equal at the CSV's 4 decimals; a different CPU
  or torch build can flip a near-tied answer of the random tiny model: regenerate with
  MEDMOE_UPDATE_GOLDEN=1 and review).
- Intervals: every score and change of tables 1-4 has `_lo` / `_hi` columns with lo <= score <= hi.
- Claims: results/claims.csv has a verdict for every claim of the paper, and results/report.md opens
  with them; `snakemake --report results/report.html` builds Snakemake's own report of the same run.
- Mechanisms: results/mechanisms/ holds the expert-ablation table (the med_moe_lora run re-evaluated on
  the same documents without base experts and without specialists), the routing and subspace tables and
  their figures, and the report states a verdict for each mechanism. None of it changes table1 or the
  fingerprint (the ablations are evaluated into results/mechanisms/eval/).
- The method's fingerprint (tests/workflow/fingerprint.py) matches golden/fingerprint.json: every
  document's loglikelihood per choice, per run; each trained run's losses and aux losses per step, final
  loss, expert shares per layer and learned tau per layer. table1.csv cannot see the method (four to 57
  documents, rounded to percentages: med_moe_lora with its aux losses off, its router frozen, or a
  fixed tau gives the same table); the fingerprint can, and the mutation tests below show it.
- Per-document results: each <task>.samples.jsonl has the task's documents, and its mean `correct` is
  the task's score.
- Determinism: the table rule rerun on the same eval outputs gives a byte-identical table1.csv, and a
  second, complete run of a cheap subset from scratch (data, model, LoRA training, its evaluation)
  gives byte-identical eval outputs. (A second full run would double the test's time.)
- Failure: a failing rule leaves no output behind, and rerunning continues from the completed jobs.
- Mutations: med_moe_lora retrained (in this process, two steps, from its recorded train_config.json)
  unchanged matches the golden fingerprint; with its aux losses off, its router's gradient cut, or tau
  fixed, it does not.

Tolerances (fingerprint.TOLERANCES), from what was measured here against one complete run:
- variation: a second complete run, jobs at one or at two threads, and med_moe_lora retrained in the
  test process at one or two threads are bit-identical (timing columns aside). Kernels of another CPU,
  emulated with ATEN_CPU_CAPABILITY=avx2 or default and MKL_ENABLE_INSTRUCTIONS=AVX2 or SSE4_2, move
  the logged losses by up to 9.5e-7 (1e-7 relative), the final loss by 4.8e-7, expert shares by 3e-9,
  tau not at all, and loglikelihoods by up to 1.9e-6 (one to two float32 steps at -11; batch size 1
  instead of 8: 9.5e-7).
- loglikelihood, 1e-4 nats: 50 times that. Aux losses off or the router's gradient cut move every
  multiple-choice document (median 1.8e-4, up to 1.0e-3); fixed tau moves them by 6e-6 at most, below
  any safe tolerance after two steps: learned tau shows it instead.
- logged values and final loss, 1e-5 relative: 100 times the 1e-7 measured; logged values also 1e-7
  absolute, for the near-zero ones: CI's CPU moved aux_base_l2 (1.5e-4 at step 2, a sum of squares) by
  3e-9, 2e-5 of it. The router's gradient cut
  moves the grad norm and the balance loss by 1e-3 relative; fixed tau moves the logged mean tau by
  1e-3; aux losses off drops the aux loss columns and moves the final loss by 1e-3 relative.
- expert shares per layer, 1e-6: 300 times the 3e-9 measured. The router's gradient cut moves them by
  3e-4 to 1.2e-3 per layer, aux losses off by 4e-4 to 1.4e-3.
- learned tau per layer, 1e-5: none measured; a hundred float32 steps at 1. Fixed tau is 8e-4 to
  1.4e-3 away, aux losses off 8e-4 to 1.4e-3.

Regenerate the golden files after an intended change, then review their diff:

    MEDMOE_UPDATE_GOLDEN=1 pytest tests/workflow/test_workflow_tiny_dag.py

About 6 minutes on 2 CPU cores (9 trained runs, 10 evaluations, one seed; several seeds are covered by
a dry run in test_workflow_static.py and by tests/benchmark/test_tables.py on synthetic results), plus the
two ablated evaluations of results/mechanisms (78 and 84 s each here, measured on a busy machine).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from medmoelora_eval import claims as claims_module
from medmoelora_eval.stats import CONTRADICTED, INCONCLUSIVE, SUPPORTED
from medmoelora_eval.tables import score_labels
from tests.workflow.fingerprint import compare, fingerprint, quantity, read_jsonl, train_fingerprint
from tests.workflow.helpers import GOLDEN, RAW_DATA, snakemake, workflow_copy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not RAW_DATA.is_dir(), reason=f"raw benchmark data not found at {RAW_DATA}"),
]
TINY = ("--configfile", "config/tiny.yaml", "--cores", "2")
SCORE_TOLERANCE = 0.01  # percentage points
PARAMETER_COLUMNS = ["Trainable params", "Active params"]
RUNS = ["base", "lora", "multi_lora", "uniform_moe", "med_moe_lora"]  # table1's rows
TASKS = ["medqa", "pubmedqa", "gsm8k", "mmlu", "mmlu_medical", "mmlu_general", "general_lm"]
CLAIMS = ["C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8"]


def eval_dir(run: str) -> str:
    """A run's evaluation directory: the base model once, a trained run per seed (tiny.yaml: seed 0)."""
    return f"results/eval/{run}" if run == "base" else f"results/eval/{run}/seed0"


UPDATE_GOLDEN = bool(os.environ.get("MEDMOE_UPDATE_GOLDEN"))
DAG_TIMEOUT = 2400  # seconds: the whole DAG, about 6 minutes on 2 idle cores, several times that on busy ones


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = workflow_copy(tmp_path_factory.mktemp("tiny"))
    result = snakemake(workdir, "all", *TINY, timeout=DAG_TIMEOUT)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


def test_table1_matches_golden(tiny_run: Path) -> None:
    table = pd.read_csv(tiny_run / "results/table1.csv")
    if UPDATE_GOLDEN:
        GOLDEN.mkdir(exist_ok=True)
        shutil.copyfile(tiny_run / "results/table1.csv", GOLDEN / "table1.csv")
    golden = pd.read_csv(GOLDEN / "table1.csv")
    assert list(table.columns) == list(golden.columns)
    assert list(table["run"]) == RUNS
    pd.testing.assert_frame_equal(table[PARAMETER_COLUMNS], golden[PARAMETER_COLUMNS])
    scores = [column for column in table.columns if column not in ["run", *PARAMETER_COLUMNS]]
    pd.testing.assert_frame_equal(table[scores], golden[scores], check_exact=False, rtol=0, atol=SCORE_TOLERANCE)


def golden_fingerprint() -> dict[str, Any]:
    return json.loads((GOLDEN / "fingerprint.json").read_text(encoding="utf-8"))


def test_method_fingerprint_matches_golden(tiny_run: Path) -> None:
    found = fingerprint(tiny_run, RUNS)
    if UPDATE_GOLDEN:
        GOLDEN.mkdir(exist_ok=True)
        (GOLDEN / "fingerprint.json").write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    problems = compare(golden_fingerprint(), found)
    assert not problems, f"{len(problems)} differences from golden/fingerprint.json:\n" + "\n".join(problems[:40])


def test_per_document_results_make_the_scores(tiny_run: Path) -> None:
    drawn = json.loads((tiny_run / "results/eval/samples.json").read_text(encoding="utf-8"))
    for run in RUNS:
        for task in TASKS:
            result = json.loads((tiny_run / eval_dir(run) / f"{task}.json").read_text(encoding="utf-8"))
            documents = read_jsonl(tiny_run / eval_dir(run) / f"{task}.samples.jsonl")
            assert len(documents) == result["n"] == sum(len(drawn[leaf]) for leaf in {d["task"] for d in documents})
            if task == "general_lm":  # bits per byte over all documents: -sum(loglikelihood) / sum(bytes) / ln 2
                value = -sum(d["loglikelihood"] for d in documents) / sum(d["bytes"] for d in documents) / math.log(2)
            else:
                value = sum(d["correct"] for d in documents) / len(documents)
            assert value == pytest.approx(result["score"], rel=1e-12, abs=1e-12)
            assert "stderr" in result


def test_every_score_and_change_has_its_interval(tiny_run: Path) -> None:
    for number in (1, 2, 3, 4):
        table = pd.read_csv(tiny_run / f"results/table{number}.csv")
        scores = score_labels(table)
        assert "Medical avg" in scores or "GSM8K change" in scores, (number, list(table.columns))
        if number in (1, 4):
            assert [label for label in scores if label.endswith(" change")], number
        for label in scores:
            low, point, high = table[f"{label}_lo"], table[label], table[f"{label}_hi"]
            assert (low <= point).all() and (point <= high).all(), (number, label)


def test_claims_have_a_verdict_each_and_open_the_report(tiny_run: Path) -> None:
    claims = pd.read_csv(tiny_run / "results/claims.csv")
    assert list(claims.columns) == list(claims_module.COLUMNS)
    assert sorted(set(claims["claim"])) == CLAIMS
    verdicts = claims[claims["row"] == "claim"].set_index("claim")["verdict"]
    assert list(verdicts.index) == CLAIMS[:-1]  # one verdict per claim, C8 being a check
    outcomes = {SUPPORTED, CONTRADICTED, INCONCLUSIVE, claims_module.NOT_TESTED}
    assert set(verdicts) <= outcomes  # every role has a run
    assert claims.loc[claims["claim"] == "C8", "row"].tolist() == ["check"]
    assert claims.loc[claims["row"] == "claim", "p_adjusted"].notna().all()
    measured = claims[claims["row"].isin(["primary", "secondary"]) & claims["ci_lo"].notna()]
    assert (measured["ci_lo"] <= measured["difference"]).all() and (measured["difference"] <= measured["ci_hi"]).all()
    assert set(claims.loc[claims["claim"] == "C2", "paper_effect"].dropna()) == {4.5}
    assert (claims.loc[claims["row"] == "primary", "about"] == "these trained models").all()  # one seed
    report = (tiny_run / "results/report.md").read_text(encoding="utf-8")
    assert report.split("\n## ")[1].startswith("Claims\n")
    assert "verdict (about these trained models)" in report
    assert "not the paper's Llama-3-8B" in report and "Against the paper" not in report


def test_mechanisms_are_built_and_the_report_states_each(tiny_run: Path) -> None:
    mechanisms = tiny_run / "results/mechanisms"
    ablation = pd.read_csv(mechanisms / "ablation.csv")
    assert set(ablation["variant"]) == {"all_experts", "without_base", "without_specialists"}
    assert set(ablation["domain"]) == {"medical", "general"} and "accuracy" in set(ablation["metric"])
    assert (ablation["score_lo"] <= ablation["score"]).all() and (ablation["score"] <= ablation["score_hi"]).all()
    ablated = ablation[ablation["variant"] != "all_experts"]
    assert ablated["change"].notna().all() and (ablated["change_lo"] <= ablated["change_hi"]).all()
    # The ablations evaluated the same documents as the run itself, and changed its outputs.
    for ablation_dir in ("without_base", "without_specialists"):
        ablated_docs = read_jsonl(mechanisms / "eval" / ablation_dir / "seed0" / "medqa.samples.jsonl")
        own_docs = read_jsonl(tiny_run / eval_dir("med_moe_lora") / "medqa.samples.jsonl")
        assert [d["doc_id"] for d in ablated_docs] == [d["doc_id"] for d in own_docs]
        assert [d["loglikelihoods"] for d in ablated_docs] != [d["loglikelihoods"] for d in own_docs]
    dual = pd.read_csv(mechanisms / "dual_path.csv")
    assert set(dual["verdict"]) <= {SUPPORTED, CONTRADICTED, INCONCLUSIVE} and len(dual) >= 2
    routing = pd.read_csv(mechanisms / "routing_specialisation.csv")
    assert set(routing["allocation"]) == {"uniform", "asymmetric", "inverted"}
    assert (routing["mutual_information"] >= 0).all() and (
        routing["routing_entropy"] <= routing["max_entropy"] + 1e-9
    ).all()
    angles = pd.read_csv(mechanisms / "subspace_overlap.csv")
    assert set(angles["pair"]) == {"base-specialist", "specialist-specialist"}
    assert angles["mean_angle"].between(0, math.pi / 2 + 1e-9).all()
    for figure in ("routing_by_depth.png", "subspace_by_depth.png"):
        assert (mechanisms / figure).read_bytes()[:4] == b"\x89PNG"
    report = (tiny_run / "results/report.md").read_text(encoding="utf-8")
    section = report.split("\n## Mechanisms\n")[1].split("\n## ")[0]
    for number in ("1. Dual path", "2. Deeper layers", "3. General and domain knowledge"):
        part = section.split(f"### {number}")[1].split("\n### ")[0]
        assert any(f"**{verdict}**" in part for verdict in (SUPPORTED, CONTRADICTED, INCONCLUSIVE)), number


def test_snakemake_builds_its_own_report(tiny_run: Path) -> None:
    result = snakemake(tiny_run, "--report", "results/report.html", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    page = (tiny_run / "results/report.html").read_text(encoding="utf-8")
    shown = ("claims.csv", *(f"table{n}.csv" for n in range(1, 6)), "forgetting.png", "claims.png", "report.md")
    for name in (*shown, "ablation.csv", "routing_by_depth.png", "subspace_by_depth.png"):
        assert name in page, name
    assert "Forgetting of general skills: each run" in page  # a caption from workflow/report/


def test_table_rule_is_byte_identical_on_rerun(tiny_run: Path) -> None:
    first = (tiny_run / "results/table1.csv").read_bytes()
    result = snakemake(tiny_run, "results/table1.csv", "--forcerun", "table1", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tiny_run / "results/table1.csv").read_bytes() == first


def test_second_run_from_scratch_is_identical(tiny_run: Path, tmp_path: Path) -> None:
    workdir = workflow_copy(tmp_path / "again")
    outputs = [f"{eval_dir('lora')}/{task}{suffix}" for task in TASKS for suffix in (".json", ".samples.jsonl")]
    result = snakemake(workdir, *outputs, *TINY)
    assert result.returncode == 0, result.stderr[-5000:]
    for output in [*outputs, "results/train/lora/seed0/adapter_model.safetensors", "results/eval/samples.json"]:
        assert (workdir / output).read_bytes() == (tiny_run / output).read_bytes(), output


def test_failed_rule_leaves_no_output_and_rerun_continues(tiny_run: Path) -> None:
    table1 = tiny_run / "results/table1.csv"
    expected = table1.read_bytes()
    score = tiny_run / eval_dir("lora") / "medqa.samples.jsonl"
    good, times = score.read_bytes(), os.stat(score)
    adapter_time = os.stat(tiny_run / "results/train/lora/seed0/adapter_model.safetensors").st_mtime_ns

    score.write_text("{not json")  # newer than table1.csv: the table rule reruns and fails
    failed = snakemake(tiny_run, "results/table1.csv", *TINY)
    assert failed.returncode != 0
    assert "table1" in failed.stdout + failed.stderr
    assert not table1.exists(), "a failed job must not leave its output"
    assert not list(table1.parent.glob(".table1.csv*")), "no temporary file either"

    score.write_bytes(good)
    os.utime(score, ns=(times.st_atime_ns, times.st_mtime_ns))
    resumed = snakemake(tiny_run, "results/table1.csv", *TINY)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "rule table1:" in log and "rule train:" not in log and "rule eval:" not in log, log
    assert os.stat(tiny_run / "results/train/lora/seed0/adapter_model.safetensors").st_mtime_ns == adapter_time
    assert table1.read_bytes() == expected


# ---- mutations of med_moe_lora: each must fail the golden fingerprint ------------------------------------------
def cut_router_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every router's logits are detached before the softmax, whichever path computed them (the router's own
    GEMM or its rows in A's): W_g gets no gradient (tau still does)."""
    from medmoelora.layer import MoELoRALinear

    router_probs = MoELoRALinear.router_probs

    def router_probs_with_cut(self: MoELoRALinear, x: torch.Tensor, router_logits: Any = None) -> torch.Tensor:
        logits = self.router(x.float()) if router_logits is None else router_logits
        return router_probs(self, x, logits.detach())

    monkeypatch.setattr(MoELoRALinear, "router_probs", router_probs_with_cut)


# mutation -> (adapter overrides, patch, the fingerprint quantities that must show it)
MUTATIONS = {
    "unchanged": ({}, None, set()),
    "aux_losses_off": (
        {"balance_weight": 0.0, "preservation_weight": 0.0, "base_l2_weight": 0.0},
        None,
        {"log", "final_loss", "routing", "tau"},
    ),
    "router_gradient_cut": ({}, cut_router_gradient, {"log", "routing"}),
    "fixed_tau": ({"learn_temperature": False}, None, {"log", "tau"}),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_mutated_method_fails_the_fingerprint(
    tiny_run: Path, mutation: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medmoelora.training.config import build_run_config
    from medmoelora.training.run import train

    overrides, patch, expected = MUTATIONS[mutation]
    if patch is not None:
        patch(monkeypatch)
    recorded = json.loads((tiny_run / "results/train/med_moe_lora/seed0/train_config.json").read_text(encoding="utf-8"))
    adapter = {**recorded["adapter"], **overrides}
    config = build_run_config(adapter["method"], {"adapter": adapter, "training": recorded["training"]})
    train(tiny_run / "resources/models/tiny", tiny_run / "data/processed", tmp_path / "run", config)

    problems = compare(golden_fingerprint()["med_moe_lora"]["train"], train_fingerprint(tmp_path / "run"))
    shown = {quantity(problem.split(":")[0]) for problem in problems}
    print(f"{mutation} at {torch.get_num_threads()} threads:", *problems, sep="\n  ")
    if expected:
        assert expected <= shown, f"{mutation} does not show in {sorted(expected - shown)}:\n" + "\n".join(problems)
    else:
        assert not problems, "the unchanged method differs from golden/fingerprint.json:\n" + "\n".join(problems)
