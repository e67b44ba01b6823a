"""Helpers for the lm-eval tests: saved adapters, requests, a reference HFLM, the stock CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
FIXTURE_DATA = REPO / "tests" / "eval" / "fixtures" / "processed"
LM_EVAL = Path(sys.executable).with_name("lm_eval")


def load_base(base_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()


def save_random_adapter(model: torch.nn.Module, out: Path, preset: str, seed: int = 1, **overrides: Any) -> Path:
    """Inject a preset adapter into ``model``, randomise its weights (so that it changes outputs), save it."""
    from medmoelora import AdapterConfig, inject_adapter, save_adapter
    from tests.tiny import randomize_adapter

    adapted = inject_adapter(model, AdapterConfig.from_preset(preset, **overrides))
    randomize_adapter(adapted, seed=seed, scale=0.2)
    return save_adapter(adapted, out)


def request(task: str, arguments: tuple[Any, ...], kind: str = "loglikelihood", doc_id: int = 0) -> Any:
    """An lm-eval request as the evaluator builds it, with a prepared record's training task id."""
    from lm_eval.api.instance import Instance

    doc = {"task_id": task.removeprefix("medmoe_")}
    return Instance(request_type=kind, doc=doc, arguments=arguments, idx=0, metadata=(task, doc_id, 1))


def reference_lm(model: torch.nn.Module, base_dir: Path) -> Any:
    """Stock HFLM around an already adapted model, one sequence a batch, so that a routing block with one
    task id applies to every forward."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=str(base_dir), batch_size=1)


# ---- the stock CLI in a subprocess --------------------------------------------------------------------------
def lm_eval_command(model: str, model_args: str, tasks: Sequence[str], out: Path, *extra: str) -> list[str]:
    """The stock lm_eval console script on our tasks: CPU, 3 documents, fixed batch size."""
    command = [str(LM_EVAL), "--model", model, "--model_args", model_args, "--include_path", "benchmark/tasks"]
    command += ["--tasks", ",".join(tasks), "--limit", "3", "--device", "cpu", "--batch_size", "2"]
    return [*command, "--output_path", str(out), *extra]


def model_load_command(model_args: str) -> list[str]:
    """What the CLI does with ``--model medmoelora --model_args ARGS`` before any task runs, minus the ~10 s it
    spends indexing lm-eval's built-in tasks first."""
    code = "import sys; from lm_eval.api.registry import get_model; "
    code += "get_model('medmoelora').create_from_arg_string(sys.argv[1], {'device': 'cpu'})"
    return [sys.executable, "-c", code, model_args]


def run_lm_eval(command: Sequence[str], data_dir: Path = FIXTURE_DATA) -> subprocess.CompletedProcess[str]:
    # One thread each: the CLI runs go side by side on a 2-core machine.
    env = {**os.environ, "MEDMOE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    return subprocess.run(list(command), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def read_samples(out: Path, task: str) -> list[dict[str, Any]]:
    """The ``--log_samples`` records of one task, by doc id."""
    (path,) = out.glob(f"*/samples_{task}_*.jsonl")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return sorted(records, key=lambda record: record["doc_id"])


def sample_loglikelihoods(record: dict[str, Any]) -> list[float]:
    """One float per answer choice of a multiple-choice sample."""
    return [float(loglikelihood) for loglikelihood, _greedy in record["filtered_resps"]]


def sample_requests(record: dict[str, Any]) -> list[tuple[str, str]]:
    """The (context, continuation) pairs a multiple-choice sample asked for."""
    return [(args["arg_0"], args["arg_1"]) for args in record["arguments"].values()]


def read_results(out: Path) -> dict[str, Any]:
    (path,) = out.glob("*/results_*.json")
    return json.loads(path.read_text(encoding="utf-8"))


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
