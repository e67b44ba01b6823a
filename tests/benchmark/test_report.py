"""results/report.md: claims first, tables with intervals, like-with-like comparison, training health."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medmoelora_eval import claims, report, tables
from medmoelora_eval.samples import load_samples
from tests.benchmark.synthetic_runs import write_eval, write_train
from tests.stats.synthetic import routing_stats

RESAMPLES = 200
SEEDS = [0, 1]
HELDOUT = {
    "medqa": {"source": "train", "examples": 8, "tokens": 8, "loss_start": 2.0, "loss_end": 1.5, "loss_change": -0.5},
    "gsm8k": {"source": "train", "examples": 8, "tokens": 90, "loss_start": 1.0, "loss_end": 1.25, "loss_change": 0.25},
}  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/ of a synthetic run: eval and train outputs, table1, table4 and claims.csv."""
    root = tmp_path_factory.mktemp("report")
    eval_dir, train_dir = root / "eval", root / "train"
    write_eval(eval_dir, "base", 0.0, 2.0, None)
    for run, medical, general in (("lora", 0.5, 0.5), ("med_moe_lora", 2.0, 1.8)):
        write_eval(eval_dir, run, medical, general, SEEDS)
    write_train(train_dir, "lora", SEEDS, taus=())  # no router: LoRA
    write_train(train_dir, "med_moe_lora", SEEDS, largest_share=0.95, heldout=HELDOUT)
    common = ["--eval-dir", str(eval_dir), "--train-dir", str(train_dir), "--seeds", "0", "1"]
    common += ["--resamples", str(RESAMPLES)]
    rows = ["--rows", "base", "lora", "med_moe_lora", "--base", "base"]
    assert tables.main(["main", *rows, *common, "--out", str(root / "table1.csv")]) == 0
    rows = ["--rows", "lora", "med_moe_lora", "--base", "base"]
    assert tables.main(["forgetting", *rows, *common, "--out", str(root / "table4.csv")]) == 0
    roles = {"base": "base", "lora": "lora", "med_moe_lora": "med_moe_lora"}
    routing = {"seed0": routing_stats({"model.layers.1.mlp.up_proj": [0.95, 0.05]})}
    table = claims.claims_table(load_samples(eval_dir, roles.values()), roles, routing, resamples=RESAMPLES)
    table.to_csv(root / "claims.csv", index=False)
    (root / "reported.csv").write_text(
        "table,row,column,value,note\ntable1,med_moe_lora,MedQA,65.8,Med-MoE-LoRA MedQA\n"
        "table1,lora,GSM8K change,-3.6,LoRA\n"
    )
    return root


def build(workdir: Path, *extra: str) -> str:
    out = workdir / "report.md"
    argv = [
        "--tables",
        str(workdir / "table1.csv"),
        str(workdir / "table4.csv"),
        "--claims",
        str(workdir / "claims.csv"),
    ]
    argv += ["--reported", str(workdir / "reported.csv"), "--runs", "lora", "med_moe_lora", "--seeds", "0", "1"]
    argv += ["--model", "smollm2-135m", "--eval-dir", str(workdir / "eval"), "--train-dir", str(workdir / "train")]
    assert report.main([*argv, *extra, "--out", str(out)]) == 0
    return out.read_text()


def section(text: str, title: str) -> str:
    """The text of one '## ' section."""
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_claims_come_first_and_every_score_shows_its_interval(workdir: Path) -> None:
    text = build(workdir)
    assert re.findall(r"^## (.+)$", text, re.M) == [
        "Claims", "Tables", "Training health", "Precision of this configuration", "Figures"
    ]  # fmt: skip
    assert "| C1 " in section(text, "Claims") and "Verdict rule" in section(text, "Claims")
    assert "Base model `smollm2-135m`; training seeds 0, 1 (2 seeds" in text
    table1 = section(text, "Tables").split("### Table 1")[1].split("###")[0]
    assert len(re.findall(r"-?\d+\.\d \[-?\d+\.\d, -?\d+\.\d\]", table1)) == 3 * 8  # rows x accuracy cells
    header = next(line for line in table1.splitlines() if line.startswith("| run"))
    assert "MedQA" in header and "_lo" not in header and "_hi" not in header  # the bounds are in the cells


def test_absolute_figures_only_beside_the_papers_own_base_model(workdir: Path) -> None:
    other = section(build(workdir), "Tables")
    assert "Against the paper" not in other and "not the paper's Llama-3-8B" in other
    same = section(build(workdir, "--paper-base-model"), "Tables")
    assert "Against the paper (same base model)" in same and "not the paper's Llama-3-8B" not in same
    row = next(line for line in same.splitlines() if line.startswith("| med_moe_lora | MedQA"))
    assert re.search(r"\| -?\d+\.\d\d \[-?\d+\.\d\d, -?\d+\.\d\d\] +\| 65\.80 +\| [+-]\d+\.\d\d +\| (yes|no) ", row), (
        row
    )


def test_training_health_reports_heldout_loss_expert_shares_and_tau(workdir: Path) -> None:
    health = section(build(workdir), "Training health")
    lines = health.splitlines()
    assert any(re.match(r"\| lora +\| +\| not measured", line) for line in lines), health
    medqa = next(line for line in lines if line.startswith("| med_moe_lora | medqa"))
    assert "| 2.000 " in medqa and "| 1.500 " in medqa and "2/2 seeds" in medqa
    gsm8k = next(line for line in lines if line.startswith("| med_moe_lora | gsm8k"))
    assert "0/2 seeds" in gsm8k
    # largest share per layer over seeds: 0.95 - 0.1 * layer; above 90% marked
    largest = health.split("### Largest expert share")[1].split("###")[0].splitlines()
    shares = [line for line in largest if re.match(r"\| +\d +\|", line)]
    assert [line.split("|")[2].strip() for line in shares] == ["0.95 !", "0.85", "0.75"]
    base = health.split("### Base experts")[1].split("###")[0].splitlines()
    assert [line.split("|")[2].strip() for line in base if re.match(r"\| +\d +\|", line)] == ["0.55 / 0.20"] * 3
    assert "med_moe_lora (general / medical)" in health and "lora (general" not in health.replace("moe_lora", "")
    taus = health.split("### Router temperature")[1].splitlines()
    (tau,) = [line for line in taus if line.startswith("| med_moe_lora")]  # lora has no router
    assert "2.250" in tau  # taus 1 and 2, doubled in seed 1: mean 2.25


def test_mechanisms_section_follows_the_tables_when_asked(workdir: Path) -> None:
    from tests.mechanisms.test_mechanism_report import write_mechanisms

    mechanisms = workdir / "mechanisms"
    write_mechanisms(mechanisms, workdir / "mechanism_runs")
    text = build(workdir, "--mechanisms", str(mechanisms))
    assert re.findall(r"^## (.+)$", text, re.M)[:3] == ["Claims", "Tables", "Mechanisms"]
    assert "![routing by depth](mechanisms/routing_by_depth.png)" in section(text, "Mechanisms")
    assert "## Mechanisms" not in build(workdir)
