"""`lm_eval --model medmoelora` in the stock CLI (subprocesses started by the `cli_runs` fixture)."""

from __future__ import annotations

import re
from concurrent.futures import Future
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import torch

from tests.lm_eval.helpers import (
    last_line,
    read_results,
    read_samples,
    request,
    sample_loglikelihoods,
    sample_requests,
)

pytestmark = pytest.mark.slow
Runs = dict[str, tuple[Path, Future[CompletedProcess[str]]]]


def finished(cli_runs: Runs, name: str) -> Path:
    out, future = cli_runs[name]
    run = future.result()
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_multi_lora_runs_both_kinds_of_task_and_writes_results(cli_runs: Runs) -> None:
    results = read_results(finished(cli_runs, "multi_lora"))
    assert results["config"]["model"] == "medmoelora"
    assert "acc,none" in results["results"]["medmoe_pubmedqa"]
    assert "exact_match,strict-match" in results["results"]["medmoe_gsm8k"]
    assert results["config"]["model_args"]["adapter"].endswith("multi_lora")
    generations = read_samples(finished(cli_runs, "multi_lora"), "medmoe_gsm8k")
    strict = [record for record in generations if record["filter"] == "strict-match"]
    assert len(strict) == 3 and all(isinstance(record["resps"][0][0], str) for record in strict)


def test_multi_lora_routes_each_task_to_its_expert(cli_runs: Runs, multi_lora_reference: tuple[Any, Any]) -> None:
    """The CLI's pubmedqa loglikelihoods are the pubmedqa expert's, computed directly, not another's."""
    records = read_samples(finished(cli_runs, "multi_lora"), "medmoe_pubmedqa")
    adapted, reference = multi_lora_reference
    task_names = adapted.adapter_config.task_names
    requests = [request("medmoe_pubmedqa", pair) for record in records for pair in sample_requests(record)]
    by_expert = {}
    for expert in ("pubmedqa", "general_instruct"):
        with adapted.routing(task_ids=[task_names.index(expert)]):
            by_expert[expert] = torch.tensor([loglikelihood for loglikelihood, _ in reference.loglikelihood(requests)])
    from_cli = torch.tensor([value for record in records for value in sample_loglikelihoods(record)])
    torch.testing.assert_close(from_cli, by_expert["pubmedqa"], rtol=1e-5, atol=1e-5)
    assert (from_cli - by_expert["general_instruct"]).abs().max() > 1e-3


def test_lora_matches_peft_export_under_model_hf(cli_runs: Runs) -> None:
    """Same LoRA, two ways in: our adapter under --model medmoelora, its PEFT export under --model hf."""
    ours = read_samples(finished(cli_runs, "lora"), "medmoe_pubmedqa")
    peft = read_samples(finished(cli_runs, "peft"), "medmoe_pubmedqa")
    assert [record["doc_hash"] for record in ours] == [record["doc_hash"] for record in peft]
    torch.testing.assert_close(
        torch.tensor([sample_loglikelihoods(record) for record in ours]),
        torch.tensor([sample_loglikelihoods(record) for record in peft]),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad_path", "error: adapter directory .*no_such_adapter does not exist"),
        ("wrong_base", "error: adapter .*wrong_base was made for .* 6 decoder layers, but this base model has 4"),
    ],
)
def test_bad_adapter_fails_with_one_line(cli_runs: Runs, name: str, message: str) -> None:
    run = cli_runs[name][1].result()
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert re.match(message, last_line(run.stderr)), run.stderr[-2000:]
